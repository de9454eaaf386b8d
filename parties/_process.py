"""What every runtime process does at start: logging, torch threads, clean exits, and, for a
process started from a cluster file, its checked entry and the runtime environment."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys


# Serve buffers up to 32 MiB from the heap and keep freed memory: a 16 MiB round buffer
# then reuses pages instead of faulting in fresh ones (about 20 ms a round per party at
# 10^6 elements). LocalCluster sets it for its processes too.
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"
# What LocalCluster sets for the processes it spawns, so that a party started by hand on
# another host runs as fast as a local one. Variables the user set are left as they are.
RUNTIME_ENV = {"GLIBC_TUNABLES": MALLOC_TUNABLES, "MPC_TORCH_THREADS": "1", "PYTHONUNBUFFERED": "1"}
_REEXEC_MARK = "MPC_RUNTIME_ENV_SET"


def reexec_with_runtime_env(args: list[str]) -> None:
    """Re-execute `python ARGS` with RUNTIME_ENV if any of it is missing; return if nothing is.

    glibc reads GLIBC_TUNABLES once, when the interpreter starts: setting it later does
    nothing, hence the re-exec. The mark stops a loop should a variable not survive exec."""
    missing = {k: v for k, v in RUNTIME_ENV.items() if k not in os.environ}
    if not missing or os.environ.get(_REEXEC_MARK):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *args], {**os.environ, **missing, _REEXEC_MARK: "1"})


def cluster_or_exit(path: str, identity: str, insecure: bool = False, certs: str | None = None):
    """The cluster file at `path` and this process's credentials, checked: an error in the
    file, an identity it does not list, a certificate that is unreadable or not this
    identity's, or plaintext off loopback, is printed with the reason and exits with 2."""
    from mpc.net import tls
    from mpc.net.config import ConfigError, ClusterConfig

    try:
        config = ClusterConfig.load(path)
        if certs:  # --certs DIR instead of the file's: the rest of the entry is still checked
            config.check_process(identity, insecure=True)
            creds = tls.Credentials.load(certs, identity)
        else:
            creds = config.check_process(identity, insecure=insecure)
        if insecure:
            tls.require_loopback({name: config.address_of(name) for name in config.identities()})
    except (ConfigError, tls.TLSError) as exc:
        print(f"{identity}: refusing to start: {exc}", file=sys.stderr)
        sys.exit(2)
    return config, creds


def setup(name: str, verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format=f"%(asctime)s {name} %(levelname)s %(message)s", stream=sys.stderr)
    # 3 parties on 2 cores: more than one torch thread a process makes everything slower.
    import torch

    torch.set_num_threads(int(os.environ.get("MPC_TORCH_THREADS", "1")))
    _die_with_parent()


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM when the launching process dies, so none is left behind."""
    if os.environ.get("MPC_PARENT_PID") and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass
        if str(os.getppid()) != os.environ["MPC_PARENT_PID"]:
            sys.exit(0)  # the parent is already gone


def stop_event() -> asyncio.Event:
    """An event set on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def announce(line: str) -> None:
    """A line for the launcher on stdout (LISTENING <port>, READY, ...)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def add_tls_arguments(parser) -> None:
    """--certs DIR (mutual TLS) or --insecure (plaintext, loopback only): one must be chosen."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--certs", help="directory with ca.pem and this process's IDENTITY.pem/.key (`mpc certs`)")
    group.add_argument("--insecure", action="store_true",
                       help="plaintext without authentication; only on loopback addresses")


def credentials(parser, args, identity: str):
    """This process's TLS material, or None when --insecure was asked for; exits 2 otherwise."""
    from mpc.net import tls

    if args.insecure:
        logging.getLogger(__name__).warning("%s runs in plaintext: no peer is authenticated (loopback only)",
                                            identity)
        return None
    if not args.certs:
        parser.error("give --certs DIR (mutual TLS, from `mpc certs`) or --insecure (plaintext, loopback only)")
    try:
        return tls.Credentials.load(args.certs, identity)
    except tls.TLSError as exc:
        print(f"{identity}: {exc}", file=sys.stderr)
        sys.exit(2)
