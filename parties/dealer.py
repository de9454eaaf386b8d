"""The dealer process: serves seeds and correlation corrections until stopped.

    python -m parties.dealer --listen 127.0.0.1:0 --n-parties 3
prints `LISTENING <port>` once it serves.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc

from mpc.net.dealer import DealerService
from mpc.net.party_server import SERVER_OPTIONS
from parties import _process


async def serve(args) -> None:
    service = DealerService(args.n_parties)
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((service.handler(),))
    port = server.add_insecure_port(args.listen)
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
    args = parser.parse_args(argv)
    _process.setup("dealer", args.verbose)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
