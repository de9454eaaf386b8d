"""A party process: serves the Party service, joins the mesh and the dealer, runs jobs.

    python -m parties.party --pid 1 --config cluster.toml      # listens on its configured address
    python -m parties.party --pid 1 --listen 127.0.0.1:0 --config -
The second form (used by `mpc launch`) binds first, prints `LISTENING <port>`, then reads
the cluster config from standard input. It prints `READY` once connected to every peer
and to the dealer; a peer or dealer that cannot be reached within the config's
`connect_timeout` is named on stderr and the process exits with status 2. It exits with
status 3 when a peer is lost later, and 0 on SIGTERM or SIGINT. `--certs DIR` gives it
mutual TLS as "party-K"; `--insecure` (plaintext) is refused unless every address is
loopback (status 2, naming the address).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from mpc.net.config import ClusterConfig, ConfigError
from mpc.net.party_server import PartyServer
from mpc.net.tls import TLSError, party_name
from mpc.runtime.transport import PeerFailure
from parties import _process


async def serve(args, creds) -> int:
    server = PartyServer(args.pid, creds)
    stop = _process.stop_event()
    if args.config == "-":
        port = await server.listen(args.listen)
        _process.announce(f"LISTENING {port}")
        text = await asyncio.to_thread(sys.stdin.read)
        config = ClusterConfig.from_toml(text)
    else:
        with open(args.config) as f:
            config = ClusterConfig.from_toml(f.read())
        if args.pid not in config.parties:
            raise ConfigError(f"party {args.pid} is not in {args.config}")
        host_port = args.listen or config.parties[args.pid]
        await server.listen(host_port)
    try:
        joined = asyncio.ensure_future(server.join(config))
        done, _ = await asyncio.wait([joined, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        if joined not in done:
            joined.cancel()
            return 0
        joined.result()
    except (PeerFailure, TLSError) as exc:
        print(f"party {args.pid}: cannot start: {exc}", file=sys.stderr)
        await server.close()
        return 2
    _process.announce("READY")
    lost = asyncio.ensure_future(server.lost.wait())
    await asyncio.wait([lost, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if server.lost.is_set() and not stop.is_set():
        print(f"party {args.pid}: stopping: {server.lost_reason}", file=sys.stderr)
        code = 3
    await server.close()
    return code


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="mpc-party", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--config", required=True, help="cluster TOML file, or - to read it from stdin after binding")
    parser.add_argument("--listen", default=None, help="address to serve on (default: the config's)")
    parser.add_argument("--verbose", action="store_true")
    _process.add_tls_arguments(parser)
    args = parser.parse_args(argv)
    if args.config == "-" and not args.listen:
        parser.error("--config - needs --listen")
    _process.setup(f"party{args.pid}", args.verbose)
    creds = _process.credentials(parser, args, party_name(args.pid))
    try:
        sys.exit(asyncio.run(serve(args, creds)))
    except (ConfigError, TLSError) as exc:
        print(f"party {args.pid}: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
