"""Separate hosts on one machine: a network namespace per host, each with its own address on a
bridge in the root namespace, and traffic shaping on their links. Needs root and `ip`, `tc`.

`Hosts` builds and removes the namespaces; `cluster_file` writes the cluster file (and the
certificates) of a cluster with one process on each host, for mpc.cluster_processes to
start behind `Hosts.prefix`. The bandwidth bench (mpc.bench_bandwidth) and tests/test_netns.py
use both.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from mpc.net.config import ClusterConfig, ProcessEntry
from mpc.net.tls import COORDINATOR, DEALER, make_cluster_certs, party_name


_HZ = 250  # the kernel's timer frequency (CONFIG_HZ of this machine's kernel; 250 is the common default)


class NetnsError(RuntimeError):
    """A namespace, link or address could not be set up."""


def unavailable() -> str | None:
    """Why namespaces cannot be built here (not root, no `ip` or `tc`), or None if they can
    be tried (creating them may still fail: Hosts.create raises NetnsError saying why)."""
    missing = [cmd for cmd in ("ip", "tc") if shutil.which(cmd) is None]
    if os.geteuid() != 0:
        return "network namespaces need root (this process runs as uid %d)" % os.geteuid()
    if missing:
        return f"network namespaces need the {' and '.join(missing)} command{'s' if len(missing) > 1 else ''} " \
               f"(iproute2), not found on PATH"
    return None


def _run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


class Hosts:
    """One namespace per name on a fresh bridge; names are unique per instance (a random tag)
    so that parallel runs do not collide, and the subnet 10.77.N.0/24 is one no link uses yet.

    The root namespace is 10.77.N.1 (the bridge): a client there reaches every host."""

    def __init__(self, names: list[str]):
        self.names = list(names)
        self.tag = secrets.token_hex(2)
        self.bridge = f"mpb{self.tag}"
        self.netns = {name: f"mpc-{self.tag}-{i}" for i, name in enumerate(self.names)}
        self.veths = {name: (f"mpv{self.tag}{i}", f"mpp{self.tag}{i}") for i, name in enumerate(self.names)}
        self.subnet = self._free_subnet()
        self.gateway = f"{self.subnet}.1"
        self.addresses = {name: f"{self.subnet}.{10 + i}" for i, name in enumerate(self.names)}
        self._created: list[tuple[str, str]] = []  # what to remove: ("netns"|"link", name)

    @staticmethod
    def _free_subnet() -> str:
        used = _run("ip", "-o", "-4", "addr", "show")
        for n in [0, *range(1 + secrets.randbelow(200), 255)]:
            if f" 10.77.{n}." not in used:
                return f"10.77.{n}"
        raise NetnsError("no free 10.77.N.0/24 subnet")

    def create(self) -> "Hosts":
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            self._created.append(("link", self.bridge))
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            for name in self.names:
                ns, (outer, inner) = self.netns[name], self.veths[name]
                _run("ip", "netns", "add", ns)
                self._created.append(("netns", ns))
                _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
                self._created.append(("link", outer))  # removing one end removes the pair
                _run("ip", "link", "set", inner, "netns", ns)
                _run("ip", "link", "set", outer, "master", self.bridge)
                _run("ip", "link", "set", outer, "up")
                self.exec(name, "ip", "link", "set", "lo", "up")
                self.exec(name, "ip", "addr", "add", f"{self.addresses[name]}/24", "dev", inner)
                self.exec(name, "ip", "link", "set", inner, "up")
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        """Remove everything created, newest first; go on past failures (a half-built set)."""
        for kind, name in reversed(self._created):
            subprocess.run(["ip", "netns", "del", name] if kind == "netns" else ["ip", "link", "del", name],
                           capture_output=True, timeout=30)
        self._created = []

    def prefix(self, name: str) -> list[str]:
        """The command prefix that runs a program on host `name`."""
        return ["ip", "netns", "exec", self.netns[name]]

    def exec(self, name: str, *argv: str) -> str:
        return _run(*self.prefix(name), *argv)

    def shape(self, rate_mbit: float = 100.0) -> None:
        """Token-bucket limit `rate_mbit` on every host's link, both ways (each end's egress).

        The bucket holds rate / HZ (tc-tbf(8): "the minimum buffer size can be calculated
        by dividing the rate by HZ"; HZ = 250 here, CONFIG_HZ), 50 KB at 100 Mbit/s: a
        smaller one cannot be refilled between timer ticks and the link delivers less than
        its rate (a 4 KB bucket gave mlp_infer 1.35-1.5 x bytes / bandwidth, plain TCP
        sockets too)."""
        burst_kbit = max(32, math.ceil(rate_mbit * 1000 / _HZ))
        for name in self.names:
            outer, inner = self.veths[name]
            args = ("root", "tbf", "rate", f"{rate_mbit:g}mbit", "burst", f"{burst_kbit}kbit", "latency", "400ms")
            _run("tc", "qdisc", "add", "dev", outer, *args)
            self.exec(name, "tc", "qdisc", "add", "dev", inner, *args)

    def unshape(self) -> None:
        for name in self.names:
            outer, inner = self.veths[name]
            _run("tc", "qdisc", "del", "dev", outer, "root")
            self.exec(name, "tc", "qdisc", "del", "dev", inner, "root")

    def __enter__(self) -> "Hosts":
        return self.create()

    def __exit__(self, *exc) -> bool:
        self.destroy()
        return False


def cluster_names(n_parties: int) -> list[str]:
    """The hosts of a cluster: one per party, the dealer's and the coordinator's."""
    return [party_name(p) for p in range(n_parties)] + [DEALER, COORDINATOR]


def cluster_file(directory: Path, hosts: Hosts, n_parties: int, port: int, proxies=None,
                 round_timeout: float = 60.0) -> Path:
    """directory/cluster.toml for a cluster on `hosts` (named by cluster_names): every process
    on `port` at its host's address (reached through a proxy in the root namespace with
    `proxies`, a mpc.net.delay_proxy.ProxyThread), certificates in directory/certs naming every
    host's address, a data directory per party, and client-local as the only client and the
    operator of every party (a client in the root namespace reaches every host)."""
    make_cluster_certs(directory / "certs", n_parties, hosts=[*hosts.addresses.values(), hosts.gateway])
    addresses, entries = {}, {}
    for name in cluster_names(n_parties):
        listen = f"{hosts.addresses[name]}:{port}"
        if proxies is not None:
            addresses[name] = f"{hosts.gateway}:{proxies.add(hosts.gateway, (hosts.addresses[name], port))}"
        else:
            addresses[name] = listen
        data = directory / f"data-{name}"
        data.mkdir(exist_ok=True)
        entries[name] = ProcessEntry(listen=listen, certs=str(directory / "certs"),
                                     data=str(data) if name.startswith("party-") else None)
    config = ClusterConfig(n_parties, addresses[DEALER], {p: addresses[party_name(p)] for p in range(n_parties)},
                           connect_timeout=30.0, round_timeout=round_timeout, processes=entries,
                           coordinator=addresses[COORDINATOR], clients=("client-local",),
                           operators={p: "client-local" for p in range(n_parties)})
    path = directory / "cluster.toml"
    path.write_text(config.to_toml())
    return path


__all__ = ["Hosts", "NetnsError", "unavailable", "cluster_names", "cluster_file"]
