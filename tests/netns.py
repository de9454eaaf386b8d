"""Separate hosts on one machine: a network namespace per host, each with its own address on a
bridge in the root namespace, and traffic shaping on their links. Needs root and `ip`, `tc`."""

from __future__ import annotations

import secrets
import subprocess


class NetnsError(RuntimeError):
    """A namespace, link or address could not be set up."""


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

    def shape(self, rate: str = "100mbit") -> None:
        """Token-bucket limit `rate` on every host's link, both ways (each end's egress)."""
        for name in self.names:
            outer, inner = self.veths[name]
            args = ("root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms")
            _run("tc", "qdisc", "add", "dev", outer, *args)
            self.exec(name, "tc", "qdisc", "add", "dev", inner, *args)

    def unshape(self) -> None:
        for name in self.names:
            outer, inner = self.veths[name]
            _run("tc", "qdisc", "del", "dev", outer, "root")
            self.exec(name, "tc", "qdisc", "del", "dev", inner, "root")
