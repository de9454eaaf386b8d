"""The coordinator process: clients submit programs and jobs here, it forwards them to the parties.

    python -m parties.coordinator --cluster cluster.toml                # what `mpc coordinator` runs
    python -m parties.coordinator --config cluster.toml --certs DIR     # serves the config's address
    python -m parties.coordinator --listen 127.0.0.1:0 --config - --certs DIR
The second form (used by LocalCluster) binds first, prints `LISTENING <port>`, then reads
the cluster config from standard input. It prints `READY` once every party answers as
joined; a party that does not within the config's `connect_timeout` is named on stderr and
the process exits with status 2. It exits 0 on SIGTERM or SIGINT. With --certs it serves
mutual TLS as "coordinator" and accepts jobs only from the clients the config lists;
--insecure (plaintext) is refused unless every address is loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc

from mpc.net import tls
from mpc.net.config import ClusterConfig, ConfigError
from mpc.net.coordinator import CoordinatorService
from mpc.net.party_server import SERVER_OPTIONS
from parties import _process


async def serve(args, creds) -> int:
    stop = _process.stop_event()
    server = grpc.aio.server(options=SERVER_OPTIONS)
    config = args.loaded
    if config is None and args.config != "-":
        config = ClusterConfig.load(args.config)
    if config is not None and not (args.listen or config.coordinator):
        raise ConfigError(f"{args.config} has no [coordinator] address and no --listen was given")
    listen = args.listen or (config.listen_address(tls.COORDINATOR) if args.loaded else config.coordinator)
    if creds is None:
        tls.require_loopback({"coordinator (listening)": listen})
    service = CoordinatorService(creds)
    server.add_generic_rpc_handlers((service.handler(),))
    port = server.add_secure_port(listen, creds.server_credentials()) if creds else server.add_insecure_port(listen)
    if port == 0:
        raise ConfigError(f"cannot listen on {listen}")
    await server.start()  # calls before the parties are reached are answered UNAVAILABLE
    if config is None:
        _process.announce(f"LISTENING {port}")
        config = ClusterConfig.from_toml(await asyncio.to_thread(sys.stdin.read))
    if creds is None:
        tls.require_loopback({f"party {p}": a for p, a in config.parties.items()})
    try:
        connected = asyncio.ensure_future(service.connect(config))
        done, _ = await asyncio.wait([connected, asyncio.ensure_future(stop.wait())],
                                     return_when=asyncio.FIRST_COMPLETED)
        if connected not in done:
            connected.cancel()
            return 0
        connected.result()
    except ConnectionError as exc:
        print(f"coordinator: cannot start: {exc}", file=sys.stderr)
        await service.close()
        await server.stop(grace=0.5)
        return 2
    _process.announce("READY")
    await stop.wait()
    await service.close()
    await server.stop(grace=1.0)
    return 0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="mpc-coordinator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster", help="the cluster file: everything the coordinator needs")
    parser.add_argument("--config", help="cluster TOML file, or - to read it from stdin after binding")
    parser.add_argument("--listen", default=None, help="address to serve on (default: the config's [coordinator])")
    parser.add_argument("--verbose", action="store_true")
    _process.add_tls_arguments(parser)
    args = parser.parse_args(argv)
    args.loaded = None
    if args.cluster:
        if args.config:
            parser.error("--cluster takes neither --config nor --listen")
        args.config = args.cluster
        args.loaded, creds = _process.cluster_or_exit(args.cluster, tls.COORDINATOR, args.insecure, args.certs)
        _process.reexec_with_runtime_env(["-m", "parties.coordinator", *(sys.argv[1:] if argv is None else argv)])
    elif not args.config:
        parser.error("give --cluster FILE, or --config FILE (or - with --listen)")
    if args.config == "-" and not args.listen:
        parser.error("--config - needs --listen")
    _process.setup("coordinator", args.verbose)
    if args.loaded is None:
        creds = _process.credentials(parser, args, tls.COORDINATOR)
    try:
        sys.exit(asyncio.run(serve(args, creds)))
    except (ConfigError, tls.TLSError, OSError) as exc:
        print(f"coordinator: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
