"""The dealer process: serves seeds and correlation corrections until stopped.

    python -m parties.dealer --listen 127.0.0.1:0 --n-parties 3 --certs DIR
prints `LISTENING <port>` once it serves. With --certs it serves mutual TLS as "dealer"
and knows each caller by its certificate; --insecure (plaintext) is refused off loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc

from mpc.net import tls
from mpc.net.dealer import DealerService
from mpc.net.party_server import SERVER_OPTIONS
from parties import _process


async def serve(args, creds) -> None:
    service = DealerService(args.n_parties, authenticated=creds is not None)
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((service.handler(),))
    port = (server.add_secure_port(args.listen, creds.server_credentials()) if creds
            else server.add_insecure_port(args.listen))
    if port == 0:
        raise SystemExit(f"dealer: cannot listen on {args.listen}")
    await server.start()
    stop = _process.stop_event()
    _process.announce(f"LISTENING {port}")
    await stop.wait()
    await server.stop(grace=1.0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="mpc-dealer", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0", help="address to serve on (port 0: any free port)")
    parser.add_argument("--n-parties", type=int, required=True)
    parser.add_argument("--verbose", action="store_true")
    _process.add_tls_arguments(parser)
    args = parser.parse_args(argv)
    _process.setup("dealer", args.verbose)
    creds = _process.credentials(parser, args, tls.DEALER)
    if creds is None:
        try:
            tls.require_loopback({"dealer (listening)": args.listen})
        except tls.TLSError as exc:
            print(f"dealer: {exc}", file=sys.stderr)
            sys.exit(2)
    asyncio.run(serve(args, creds))


if __name__ == "__main__":
    main()
