"""What every runtime process does at start: logging, torch threads, clean exits."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys


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
