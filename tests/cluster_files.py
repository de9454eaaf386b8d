"""Test helpers: write a cluster file with certificates and data directories, start its
processes with `mpc party|dealer --cluster` (mpc.cluster_processes), and stop them."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from mpc import cluster_processes
from mpc.cluster_processes import stop_all
from mpc.launcher import _Process
from mpc.net.config import ClusterConfig, ProcessEntry
from mpc.net.tls import make_cluster_certs, party_name

ROOT = Path(__file__).resolve().parent.parent


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_cluster(directory: Path, n_parties: int = 3, hosts: list[str] | None = None, dealer_host: str | None = None,
                  ports: list[int] | None = None, connect_timeout: float = 20.0, round_timeout: float = 30.0,
                  certs: bool = True, coordinator: bool = True) -> Path:
    """cluster.toml in `directory` (parties on `hosts`, default loopback), with a CA and the
    certificates of every process in directory/certs and a data directory per party;
    `coordinator`: with a coordinator beside the dealer, accepting jobs from client-local,
    the operator of every party (without one, no client can submit jobs)."""
    hosts = hosts or ["127.0.0.1"] * n_parties
    dealer_host = dealer_host or hosts[0]
    ports = ports or free_ports(n_parties + 2)
    if certs:
        make_cluster_certs(directory / "certs", n_parties, hosts=sorted({*hosts, dealer_host}))
    entries = {}
    for p in range(n_parties):
        (directory / f"data-{p}").mkdir(exist_ok=True)
        entries[party_name(p)] = ProcessEntry(certs="certs" if certs else None, data=f"data-{p}")
    entries["dealer"] = ProcessEntry(certs="certs" if certs else None)
    if coordinator:
        entries["coordinator"] = ProcessEntry(certs="certs" if certs else None)
    config = ClusterConfig(n_parties, f"{dealer_host}:{ports[n_parties]}",
                           {p: f"{hosts[p]}:{ports[p]}" for p in range(n_parties)},
                           connect_timeout=connect_timeout, round_timeout=round_timeout, processes=entries,
                           coordinator=f"{dealer_host}:{ports[n_parties + 1]}" if coordinator else None,
                           clients=("client-local",) if coordinator else (),
                           operators={p: "client-local" for p in range(n_parties)} if coordinator else {})
    path = directory / "cluster.toml"
    path.write_text(config.to_toml())
    return path


def runtime_env_unset() -> dict:
    """This environment without what `mpc party` sets itself, so a test sees it being set."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", "MPC_TORCH_THREADS", "MPC_RUNTIME_ENV_SET", "MPC_PARENT_PID")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def start(name: str, argv: list[str], prefix: list[str] | None = None, env: dict | None = None) -> _Process:
    """`python -m mpc.cli ARGV` (behind `prefix`, e.g. `ip netns exec NS`), in an environment
    without what `mpc party` sets itself."""
    return cluster_processes.start(name, argv, prefix, env or runtime_env_unset())


def start_cluster(path: Path, n_parties: int, prefixes: dict[str, list[str]] | None = None,
                  timeout: float = 60.0, skip: tuple[str, ...] = ()) -> dict[str, _Process]:
    """mpc.cluster_processes.start_cluster, each process without what `mpc party` sets itself."""
    return cluster_processes.start_cluster(path, n_parties, prefixes, timeout, skip, env=runtime_env_unset())
