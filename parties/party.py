"""A party process: serves the Party service, joins the mesh and the dealer, runs jobs.

    python -m parties.party --cluster cluster.toml --id 1      # what `mpc party` runs
    python -m parties.party --pid 1 --config cluster.toml --certs DIR
    python -m parties.party --pid 1 --listen 127.0.0.1:0 --config -
The first form takes everything from the cluster file: where to bind (the entry's
`listen`, else its address), its certificate, CA and key, its data directory; it refuses
to start (status 2, saying why) when the file has an error, does not list party 1, or
names a certificate that is not party-1's; it sets the runtime environment
(parties._process.RUNTIME_ENV) and re-executes itself once if it was missing. The last
form (used by `mpc launch`) binds first, prints `LISTENING <port>`, then reads the
cluster config from standard input. It prints `READY` once connected to every peer
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
    data_dir = args.data or (args.loaded.entry(party_name(args.pid)).data if args.loaded is not None else None)
    server = PartyServer(args.pid, creds, data_dir=data_dir)
    stop = _process.stop_event()
    if args.config == "-":
        port = await server.listen(args.listen)
        _process.announce(f"LISTENING {port}")
        text = await asyncio.to_thread(sys.stdin.read)
        config = ClusterConfig.from_toml(text)
    else:
        config = args.loaded if args.loaded is not None else ClusterConfig.load(args.config)
        if args.pid not in config.parties:
            raise ConfigError(f"party {args.pid} is not in {args.config}")
        host_port = args.listen or config.listen_address(party_name(args.pid))
        try:
            await server.listen(host_port)
        except RuntimeError as exc:  # grpc's "Failed to bind": say which address
            raise ConfigError(f"cannot listen on {host_port}: {exc}") from None
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
    parser.add_argument("--cluster", help="the cluster file: everything this party needs (with --id)")
    parser.add_argument("--id", type=int, dest="cluster_id", help="this party's pid in the cluster file")
    parser.add_argument("--pid", type=int)
    parser.add_argument("--config", help="cluster TOML file, or - to read it from stdin after binding")
    parser.add_argument("--listen", default=None, help="address to serve on (default: the config's)")
    parser.add_argument("--data", default=None, help="this party's data directory (default: the cluster file's)")
    parser.add_argument("--verbose", action="store_true")
    _process.add_tls_arguments(parser)
    args = parser.parse_args(argv)
    args.loaded = None
    if args.cluster:
        if args.cluster_id is None or args.pid is not None or args.config:
            parser.error("--cluster takes --id K (and neither --pid nor --config)")
        args.pid, args.config = args.cluster_id, args.cluster
        args.loaded, creds = _process.cluster_or_exit(args.cluster, party_name(args.pid), args.insecure, args.certs)
        _process.reexec_with_runtime_env(["-m", "parties.party", *(sys.argv[1:] if argv is None else argv)])
    elif args.pid is None or not args.config:
        parser.error("give --cluster FILE --id K, or --pid K --config FILE")
    if args.config == "-" and not args.listen:
        parser.error("--config - needs --listen")
    _process.setup(f"party{args.pid}", args.verbose)
    if args.loaded is None:
        creds = _process.credentials(parser, args, party_name(args.pid))
    try:
        sys.exit(asyncio.run(serve(args, creds)))
    except (ConfigError, TLSError) as exc:
        print(f"party {args.pid}: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
