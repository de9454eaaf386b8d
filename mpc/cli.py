"""The `mpc` command: launch a local cluster, run the demo, run the benchmarks, make certificates."""

from __future__ import annotations

import argparse
import signal
import sys
import threading


def _launch(args) -> int:
    from mpc.launcher import LocalCluster

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with LocalCluster(n_parties=args.parties, frac_bits=args.frac_bits, verbose=args.verbose) as cluster:
        for name, address in cluster.addresses.items():
            print(f"{name:>8}  {address}")
        print(f"{args.parties} parties and the dealer are running; Ctrl-C stops them.", flush=True)
        while not stop.wait(0.5):
            dead = [p.name for p in cluster.processes if p.proc.poll() is not None]
            if dead:
                print(f"stopping: {', '.join(dead)} exited", file=sys.stderr)
                return 1
    print("stopped.")
    return 0


def _bench(args) -> int:
    from mpc import bench

    names = args.only.split(",") if args.only else [n for n, w in bench.WORKLOADS.items()
                                                      if args.scaling or not w.scaling]
    try:
        report = bench.run(names, n_parties=args.parties, reps=args.reps, crypten=not args.no_crypten,
                           threads=args.threads, progress=lambda m: print(m, file=sys.stderr, flush=True))
    except ValueError as exc:
        print(f"mpc bench: {exc}", file=sys.stderr)
        return 2
    print(bench.format_table(report))
    if args.json:
        bench.write_json(report, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _demo(args) -> int:
    from mpc import demo

    return demo.main(parties=args.parties, crypten=not args.no_crypten)


def _certs(args) -> int:
    from mpc.net import tls

    try:
        tls.make_cluster_certs(args.out, args.parties, hosts=args.host or (), clients=args.client or ("local",))
    except (tls.TLSError, OSError) as exc:
        print(f"mpc certs: {exc}", file=sys.stderr)
        return 2
    print(f"wrote a CA and certificates for {args.parties} parties, the dealer, the coordinator and "
          f"client(s) {', '.join(args.client or ['local'])} to {args.out} (keep ca.key offline)")
    return 0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="mpc", description="Multi-party computation runtime for machine learning.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("launch", help="start a dealer and N parties on loopback until Ctrl-C")
    p.add_argument("--parties", type=int, default=3)
    p.add_argument("--frac-bits", type=int, default=16)
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(fn=_launch)

    p = sub.add_parser("bench", help="run the benchmark workloads beside CrypTen")
    p.add_argument("--only", help="comma-separated workload names")
    p.add_argument("--no-crypten", action="store_true", help="skip the CrypTen reference")
    p.add_argument("--scaling", action="store_true", help="also the scaling runs (relu, mul at 10^3..10^6)")
    p.add_argument("--parties", type=int, default=3)
    p.add_argument("--reps", type=int, default=3, help="timed repetitions after one warm-up (median reported)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process, both sides")
    p.add_argument("--json", help="also write the figures to this file")
    p.set_defaults(fn=_bench)

    p = sub.add_parser("demo", help="private inference on the digits data set, beside plaintext and CrypTen")
    p.add_argument("--parties", type=int, default=3)
    p.add_argument("--no-crypten", action="store_true")
    p.set_defaults(fn=_demo)

    p = sub.add_parser("certs", help="make a cluster CA and a key and certificate for every process")
    p.add_argument("--out", required=True, help="directory to write ca.pem, ca.key, IDENTITY.pem and IDENTITY.key")
    p.add_argument("--parties", type=int, default=3)
    p.add_argument("--host", action="append", help="extra DNS name or IP for every certificate's SANs (repeatable)")
    p.add_argument("--client", action="append",
                   help="client name: a certificate client-NAME (repeatable; default local)")
    p.set_defaults(fn=_certs)

    args = parser.parse_args(argv)
    sys.exit(args.fn(args))


if __name__ == "__main__":
    main()
