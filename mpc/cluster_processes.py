"""The processes of a cluster file on this machine: every party, the dealer and the coordinator
started as `mpc party|dealer|coordinator --cluster FILE`, each optionally behind a command
prefix (`ip netns exec NS`: a host of its own, mpc.netns), waited for until ready, and stopped.

LocalCluster starts its own processes from arguments; this is for a cluster described by a
file, as the hosts of a deployment would run it (the bandwidth bench and the tests).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from mpc.launcher import _Process
from mpc.net.config import ClusterConfig
from mpc.net.tls import party_name

# The directory holding the mpc package: a child started in another namespace, or from
# another working directory, imports this copy and not whatever else is installed.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def child_env(env: dict | None = None) -> dict:
    """`env` (default: this process's) with this package on the path and this process as the
    parent the children die with (parties._process)."""
    env = dict(os.environ if env is None else env)
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT), *(p for p in path if p != str(PACKAGE_ROOT))])
    env["MPC_PARENT_PID"] = str(os.getpid())
    return env


def start(name: str, argv: list[str], prefix: list[str] | None = None, env: dict | None = None) -> _Process:
    """`python -m mpc.cli ARGV`, behind `prefix` (e.g. `ip netns exec NS`)."""
    return _Process(name, [*(prefix or []), sys.executable, "-m", "mpc.cli", *argv], child_env(env))


def start_cluster(path: Path, n_parties: int, prefixes: dict[str, list[str]] | None = None,
                  timeout: float = 60.0, skip: tuple[str, ...] = (), env: dict | None = None) -> dict[str, _Process]:
    """Start every party, then the dealer and the coordinator if the file has one (any order
    works: each waits for the others), and wait until each is ready. `prefixes`: per name
    ("party-K", "dealer", "coordinator") a command prefix."""
    prefixes = prefixes or {}
    procs: dict[str, _Process] = {}
    try:
        for p in range(n_parties):
            if party_name(p) not in skip:
                procs[party_name(p)] = start(party_name(p), ["party", "--cluster", str(path), "--id", str(p)],
                                             prefixes.get(party_name(p)), env)
        if "dealer" not in skip:
            procs["dealer"] = start("dealer", ["dealer", "--cluster", str(path)], prefixes.get("dealer"), env)
        if ClusterConfig.load(path).coordinator and "coordinator" not in skip:
            procs["coordinator"] = start("coordinator", ["coordinator", "--cluster", str(path)],
                                         prefixes.get("coordinator"), env)
        deadline = time.monotonic() + timeout
        for name, proc in procs.items():  # the coordinator prints READY once it reaches the parties
            proc.expect("LISTENING" if name == "dealer" else "READY", deadline)
    except BaseException:
        stop_all(procs)
        raise
    return procs


def stop_all(procs: dict[str, _Process]) -> None:
    """SIGTERM to all first (a party stopped alone would see its peers as lost), then wait."""
    for proc in procs.values():
        if proc.proc.poll() is None:
            proc.proc.terminate()
    for proc in procs.values():
        proc.stop(5.0)


__all__ = ["start", "start_cluster", "stop_all", "child_env"]
