"""The dealer process: serves seeds and correlation corrections until stopped.

    python -m parties.dealer --listen 127.0.0.1:0 --n-parties 3 --certs DIR [--clients client-a,...]
    python -m parties.dealer --cluster cluster.toml            # what `mpc dealer` runs
prints `LISTENING <port>` once it serves. With --cluster, the number of parties, the
address to bind (the [dealer] table's `listen`, else its address), the certificate and
the clients come from the cluster file; an error there, or a certificate that is not the
dealer's, stops it with status 2 and the reason. With --certs it serves mutual TLS as
"dealer" and knows each caller by its certificate; --insecure (plaintext) is refused off
loopback. Besides seeds and corrections it answers Health (mpc.net.dealer_health) for the
cluster's processes and its clients (--clients, or the file's).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc

from mpc.net import tls
from mpc.net.dealer import DealerService
from mpc.net.dealer_health import DealerHealth
from mpc.net.party_server import SERVER_OPTIONS
from mpc.runtime import reproducible
from parties import _process


async def serve(args, creds) -> None:
    # The long-lived key of reproducible jobs comes from the dealer's own private key, so a
    # restarted dealer serves a resumed training the randomness of the original run.
    master = reproducible.secret_from(creds.key_pem, "dealer-repro-master") if creds else None
    service = DealerService(args.n_parties, authenticated=creds is not None, repro_master=master)
    health = DealerHealth(service, args.clients, authenticated=creds is not None)
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((service.handler(), health.handler()))
    try:
        port = (server.add_secure_port(args.listen, creds.server_credentials()) if creds
                else server.add_insecure_port(args.listen))
    except RuntimeError:  # grpc's "Failed to bind"
        port = 0
    if port == 0:
        print(f"dealer: cannot listen on {args.listen}", file=sys.stderr)
        sys.exit(2)
    await server.start()
    stop = _process.stop_event()
    _process.announce(f"LISTENING {port}")
    await stop.wait()
    await server.stop(grace=0.2)  # nothing in flight is worth more: the parties are stopping too


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="mpc-dealer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster", help="the cluster file: address, parties and certificate come from it")
    parser.add_argument("--listen", default=None, help="address to serve on (port 0: any free port)")
    parser.add_argument("--n-parties", type=int)
    parser.add_argument("--clients", default="", help="without --cluster: the cluster's clients (client-NAME, "
                                                      "comma-separated), who may ask for Health")
    parser.add_argument("--verbose", action="store_true")
    _process.add_tls_arguments(parser)
    args = parser.parse_args(argv)
    if args.cluster:
        if args.n_parties is not None or args.clients:
            parser.error("--cluster takes the number of parties and the clients from the file: drop --n-parties "
                         "and --clients")
        config, creds = _process.cluster_or_exit(args.cluster, tls.DEALER, args.insecure, args.certs)
        _process.reexec_with_runtime_env(["-m", "parties.dealer", *(sys.argv[1:] if argv is None else argv)])
        args.n_parties = config.n_parties
        args.clients = config.clients
        args.listen = args.listen or config.listen_address(tls.DEALER)
    else:
        if args.n_parties is None:
            parser.error("give --cluster FILE, or --n-parties N")
        args.listen = args.listen or "127.0.0.1:0"
        args.clients = tuple(c for c in args.clients.split(",") if c)
        creds = None
    _process.setup("dealer", args.verbose)
    if not args.cluster:
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
