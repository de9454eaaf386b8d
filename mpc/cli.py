"""The `mpc` command: launch a local cluster, train from a job file, run the demo, run the benchmarks,
make certificates; run one process of a cluster from its cluster file (party, dealer, coordinator)
and show the state of every process (status)."""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import sys
import tempfile
import threading


def _launch(args) -> int:
    from mpc.launcher import LocalCluster

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with LocalCluster(n_parties=args.parties, frac_bits=args.frac_bits, verbose=args.verbose,
                      tls=not args.insecure) as cluster:
        for name, address in cluster.addresses.items():
            print(f"{name:>8}  {address}")
        if cluster.certs_dir is not None:
            print(f"certificates (mutual TLS; clients use client-local): {cluster.certs_dir.name}")
            where = cluster.certs_dir.name
        else:
            print("plaintext gRPC on loopback (--insecure): anyone on this machine can connect")
            where = tempfile.mkdtemp(prefix="mpc-cluster-")
            atexit.register(shutil.rmtree, where, True)
        config = os.path.join(where, "cluster.toml")
        with open(config, "w") as f:
            f.write(cluster.config.to_toml())
        print(f"cluster file: {config}")
        print(f"{args.parties} parties, the dealer and the coordinator are running; Ctrl-C stops them.", flush=True)
        while not stop.wait(0.5):
            dead = [p.name for p in cluster.processes if p.proc.poll() is not None]
            if dead:
                print(f"stopping: {', '.join(dead)} exited", file=sys.stderr)
                return 1
    print("stopped.")
    return 0


def _bench(args) -> int:
    from mpc import bench

    modes = [flag for flag, on in (("--latency", args.latency), ("--bandwidth", args.bandwidth is not None),
                                   ("--tls", args.tls)) if on]
    if len(modes) > 1:
        print(f"mpc bench: {' and '.join(modes)} are separate runs: give one", file=sys.stderr)
        return 2
    if args.tls:
        from mpc import bench_tls

        if args.profile or args.scaling:
            print("mpc bench: --tls times the workloads alone: no --profile or --scaling beside it", file=sys.stderr)
            return 2
        args.reps = bench_tls.PAIRS if args.reps is None else args.reps
        return bench_tls.command(args)
    args.reps = 3 if args.reps is None else args.reps
    if args.bandwidth is not None:
        from mpc import bench_bandwidth

        return bench_bandwidth.command(args)
    if args.latency:
        from mpc import bench_network

        try:
            delays = [float(d) for d in args.delays.split(",")]
        except ValueError:
            print(f"mpc bench: --delays takes milliseconds separated by commas, got {args.delays!r}", file=sys.stderr)
            return 2
        rows = bench_network.run_latency(n_parties=args.parties, reps=args.reps, delays_ms=delays,
                                         progress=lambda m: print(m, file=sys.stderr, flush=True))
        print(bench_network.format_latency(rows))
        if args.json:
            bench.write_json({"machine": bench.machine_info(args.threads), "latency": rows}, args.json)
        return 0
    names = args.only.split(",") if args.only else [n for n, w in {**bench.WORKLOADS, **bench.MODEL_WORKLOADS,
                                                                     **bench.TRAIN_WORKLOADS}.items()
                                                      if args.scaling or not w.scaling]
    try:
        report = bench.run(names, n_parties=args.parties, reps=args.reps, crypten=not args.no_crypten,
                           threads=args.threads, progress=lambda m: print(m, file=sys.stderr, flush=True),
                           scaling=args.scaling, profile=args.profile)
    except ValueError as exc:
        print(f"mpc bench: {exc}", file=sys.stderr)
        return 2
    print(bench.format_table(report))
    if args.json:
        bench.write_json(report, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _compiled(args):
    """The model of --model (a factory), with --state-dict loaded, compiled for --input-shape
    or the shape of --input."""
    import torch

    from mpc import model_files
    from mpc.compiler.model import check_state_dict, compile_model

    model = model_files.load_factory(args.model, args.kwargs)
    if args.state_dict:
        state = model_files.load_state_dict(args.state_dict)
        check_state_dict(model, state)
        model.load_state_dict(state)
    if getattr(args, "input", None):
        example = model_files.load_input(args.input)
    else:
        example = torch.zeros(tuple(int(d) for d in args.input_shape.split(",")))
    replace = dict(item.split("=", 1) for item in args.replace.split(",")) if args.replace else None
    return compile_model(model, example, public=args.public, replace=replace), example


def _model_arguments(p, input_required: bool) -> None:
    p.add_argument("--model", required=True, help="model factory, package.module:function")
    p.add_argument("--kwargs", help="keyword arguments of the factory, as JSON")
    p.add_argument("--state-dict", help="weights: a torch.save'd state dict")
    p.add_argument("--public", action="store_true", help="weights known to every party: linear layers run locally")
    p.add_argument("--replace", help="MPC-friendly layers, e.g. relu=square,maxpool=avgpool")
    p.add_argument("--parties", type=int, default=3)
    if input_required:
        p.add_argument("--input", required=True, help="the input, .pt or .npy")
    else:
        p.add_argument("--input-shape", required=True, help="the input shape, e.g. 64,784")


def _compiled_or_report(args, command: str):
    """_compiled, or None after printing why the model, weights or input were refused."""
    from mpc.compiler.registry import CompileError
    from mpc.model_files import ModelFileError

    try:
        return _compiled(args)
    except (CompileError, ModelFileError) as exc:
        print(f"mpc {command}: {exc}", file=sys.stderr)
        return None


def _explain(args) -> int:
    result = _compiled_or_report(args, "explain")
    if result is None:
        return 2
    print(result[0].explain(n_parties=args.parties))
    return 0


def _remote_arguments(p) -> None:
    p.add_argument("--cluster", help="run on the running cluster of this cluster file instead of local processes")
    p.add_argument("--certs", help="with --cluster: directory with ca.pem and this client's certificate and key")
    p.add_argument("--as", dest="as_identity", default="client-local",
                   help="with --cluster: this client's identity (default client-local)")


def _cluster(args, n_parties: int, frac_bits: int | None = None, state_dir: str | None = None):
    """A RemoteCluster on --cluster's processes, or LocalCluster's own N parties and dealer."""
    if getattr(args, "cluster", None):
        from mpc.remote import RemoteCluster

        cluster = RemoteCluster.from_file(args.cluster, args.certs, args.as_identity)
        if frac_bits is not None and cluster.frac_bits != frac_bits:
            from mpc.net.config import ConfigError

            raise ConfigError(f"--frac-bits {frac_bits}: the cluster of {args.cluster} runs with {cluster.frac_bits}")
        return cluster
    from mpc.launcher import LocalCluster

    return LocalCluster(n_parties=n_parties, state_dir=state_dir,
                        **({} if frac_bits is None else {"frac_bits": frac_bits}))


def _infer(args) -> int:
    import numpy as np

    result = _compiled_or_report(args, "infer")
    if result is None:
        return 2
    compiled, x = result
    from mpc.api import MPCError
    from mpc.net.config import ConfigError
    from mpc.net.tls import TLSError

    try:
        with _cluster(args, args.parties) as cluster:
            out = cluster.infer(compiled, x, model_owner=args.model_owner, data_owner=args.data_owner)
            stats = cluster.last_stats
    except (ConfigError, TLSError, MPCError) as exc:
        print(f"mpc infer: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, MPCError) else 2
    print(f"output {tuple(out.shape)}: online {max(s.online_s for s in stats) * 1e3:.1f} ms, "
          f"{max(s.rounds for s in stats)} rounds, {max(s.bytes_sent for s in stats) / 1e6:.2f} MB/party")
    if out.dim() == 2:
        print("classes:", " ".join(str(int(c)) for c in out.argmax(1)[:32]) + (" ..." if len(out) > 32 else ""))
    if args.output:
        np.save(args.output, out.numpy(), allow_pickle=False)
        print(f"wrote {args.output}")
    return 0


def _demo(args) -> int:
    from mpc import demo

    return demo.main(parties=args.parties, crypten=not args.no_crypten, out=args.out, only_write=args.write_files)


def _train(args) -> int:
    from mpc import jobfile
    from mpc.api import MPCError
    from mpc.compiler.registry import CompileError
    from mpc.net.config import ConfigError
    from mpc.net.tls import TLSError
    from mpc.train_jobs import train_job
    from mpc.training import DataError

    try:
        spec = jobfile.load(args.job)
        jobfile.check_parties(spec, _cluster_size(args) if args.cluster else args.local)
        from mpc.train_jobs import load_parts

        if not args.cluster:  # on a cluster, each party reads (and checks) its own file
            load_parts(spec, args.frac_bits)  # every data file checked before any process starts
    except (jobfile.JobFileError, DataError, ConfigError) as exc:
        print(f"mpc train: {exc}", file=sys.stderr)
        return 2
    try:
        # With checkpoints, local parties keep their keys beside them: a --resume on a new
        # local cluster then repeats the interrupted run's randomness (runtime/reproducible.py).
        state = os.path.join(spec.checkpoint_dir, "local-cluster") if spec.checkpoint_dir else None
        with _cluster(args, args.local, args.frac_bits, state_dir=state) as cluster:
            train_job(spec, cluster, resume=args.resume, progress=not args.no_progress, stop_after=args.stop_after,
                      party_files=bool(args.cluster))
    except (ConfigError, TLSError) as exc:
        print(f"mpc train: {exc}", file=sys.stderr)
        return 2
    except (jobfile.JobFileError, DataError, CompileError, MPCError) as exc:
        print(f"mpc train: {exc}", file=sys.stderr)
        return 2 if not isinstance(exc, MPCError) else 1
    return 0


def _cluster_size(args) -> int:
    from mpc.net.config import ClusterConfig

    return ClusterConfig.load(args.cluster).n_parties


def _certs(args) -> int:
    from mpc.net import tls

    try:
        tls.make_cluster_certs(args.out, args.parties, hosts=args.host or (), clients=args.client or ("local",))
        if args.split:
            tls.split_by_identity(args.out)
    except (tls.TLSError, OSError) as exc:
        print(f"mpc certs: {exc}", file=sys.stderr)
        return 2
    print(f"wrote a CA and certificates for {args.parties} parties, the dealer, the coordinator and "
          f"client(s) {', '.join(args.client or ['local'])} to {args.out} (keep ca.key offline)")
    if args.split:
        print(f"and one directory per process, {args.out}/IDENTITY/ (ca.pem, IDENTITY.pem, IDENTITY.key): "
              f"give each host only its own")
    return 0


def _serve(args) -> int:
    """`mpc party|dealer|coordinator --cluster FILE`: check this process's entry (status 2 and
    the reason if it is wrong), set the runtime environment, then run the process."""
    from mpc.net import tls
    from parties import _process

    identity = {"party": tls.party_name(args.id) if args.command == "party" else None,
                "dealer": tls.DEALER, "coordinator": tls.COORDINATOR}[args.command]
    config, _ = _process.cluster_or_exit(args.cluster, identity, args.insecure)
    _process.reexec_with_runtime_env(["-m", "mpc.cli", *args.argv])
    extra = (["--insecure"] if args.insecure else []) + (["--verbose"] if args.verbose else [])
    if args.command == "party":
        from parties import party

        party.main(["--cluster", args.cluster, "--id", str(args.id), *extra])
    elif args.command == "dealer":
        from parties import dealer

        dealer.main(["--cluster", args.cluster, *extra])
    else:
        from parties import coordinator

        coordinator.main(["--cluster", args.cluster, *extra])
    return 0


def _status(args) -> int:
    from mpc import status

    return status.main(args.cluster, timeout=args.timeout, identity=args.as_identity, certs=args.certs,
                       only=args.only, local=args.local)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="mpc", description="Multi-party computation runtime for machine learning.")
    from mpc.net import VERSION  # the installed distribution's (what Health replies report)

    parser.add_argument("--version", action="version", version=f"mpc {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("launch", help="start a dealer and N parties on loopback until Ctrl-C")
    p.add_argument("--parties", type=int, default=3)
    p.add_argument("--frac-bits", type=int, default=16)
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--insecure", action="store_true", help="plaintext gRPC on loopback instead of mutual TLS")
    p.set_defaults(fn=_launch)

    p = sub.add_parser("bench", help="run the benchmark workloads beside CrypTen")
    p.add_argument("--only", help="comma-separated workload names")
    p.add_argument("--no-crypten", action="store_true", help="skip the CrypTen reference")
    p.add_argument("--scaling", action="store_true", help="also the scaling runs (relu, mul at 10^3..10^6)")
    p.add_argument("--latency", action="store_true",
                   help="instead: mlp_infer and mlp_train with --delays ms added per message (a delaying proxy)")
    p.add_argument("--delays", default="0,1,10,50", help="with --latency: milliseconds per message")
    p.add_argument("--bandwidth", nargs="?", type=float, const=100.0, metavar="MBIT",
                   help="instead: mlp_infer, mlp_train and mul_1m (or --only: these and the elementwise workloads) "
                        "unshaped and at MBIT (100) Mbit/s, each process in a network namespace of its own (needs "
                        "root, ip and tc)")
    p.add_argument("--parties", type=int, default=3)
    p.add_argument("--tls", action="store_true",
                   help="instead: what mutual TLS costs, mul_1m and relu_100k (or --only) on a TLS and a plaintext "
                        "cluster at once, alternating, with the AES-GCM floor")
    p.add_argument("--reps", type=int, default=None,
                   help="timed repetitions after one warm-up (median reported; default 3, with --tls 15 a side)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process, both sides")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--profile", action="store_true",
                   help="also time each phase per party and for the caller, and the transport floor (elementwise workloads)")
    p.set_defaults(fn=_bench)

    p = sub.add_parser("explain", help="compile a model and print its cost per layer (no cluster needed)")
    _model_arguments(p, input_required=False)
    p.set_defaults(fn=_explain)

    p = sub.add_parser("infer", help="private inference of a saved model on an input file, on local parties")
    _model_arguments(p, input_required=True)
    p.add_argument("--model-owner", type=int, default=0)
    p.add_argument("--data-owner", type=int, default=1)
    p.add_argument("--output", help="write the output here (.npy)")
    _remote_arguments(p)
    p.set_defaults(fn=_infer)

    p = sub.add_parser("demo", help="three parties train an MLP on the digits data set they hold in thirds")
    p.add_argument("--parties", type=int, default=3)
    p.add_argument("--no-crypten", action="store_true")
    p.add_argument("--out", default="mpc-demo", help="where the party files, metrics and plot go")
    p.add_argument("--write-files", metavar="DIR", help="only write the parties' CSV files (and test.csv) to DIR")
    p.set_defaults(fn=_demo)

    p = sub.add_parser("train", help="run a training job file (TOML) on parties that each hold their own data")
    p.add_argument("job", help="the job description, TOML (see examples/digits_train.toml)")
    p.add_argument("--local", type=int, default=3, metavar="N",
                   help="start N local parties and a dealer; the launcher reads each party's file on its behalf")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint every party holds")
    p.add_argument("--frac-bits", type=int, default=16)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--stop-after", type=int, metavar="STEPS", help="stop after this many steps (as if interrupted)")
    _remote_arguments(p)
    p.set_defaults(fn=_train)

    p = sub.add_parser("certs", help="make a cluster CA and a key and certificate for every process")
    p.add_argument("--out", required=True, help="directory to write ca.pem, ca.key, IDENTITY.pem and IDENTITY.key")
    p.add_argument("--parties", type=int, default=3)
    p.add_argument("--host", action="append", help="extra DNS name or IP for every certificate's SANs (repeatable)")
    p.add_argument("--client", action="append",
                   help="client name: a certificate client-NAME (repeatable; default local)")
    p.add_argument("--split", action="store_true",
                   help="also copy each process's files (ca.pem, its certificate and key) into OUT/IDENTITY/")
    p.set_defaults(fn=_certs)

    for name, what in [("party", "run party K of a cluster file (on the host of its address)"),
                       ("dealer", "run the dealer of a cluster file"),
                       ("coordinator", "run the coordinator of a cluster file")]:
        p = sub.add_parser(name, help=what)
        p.add_argument("--cluster", required=True, help="the cluster file (TOML), the same on every host")
        if name == "party":
            p.add_argument("--id", type=int, required=True, help="this party's pid in the cluster file")
        p.add_argument("--insecure", action="store_true", help="plaintext (every address must be loopback)")
        p.add_argument("--verbose", action="store_true")
        p.set_defaults(fn=_serve)

    p = sub.add_parser("status", help="every process of a cluster: reachable, ready, certificate expiry, ...")
    p.add_argument("--cluster", required=True, help="the cluster file (TOML)")
    p.add_argument("--certs", help="directory with this caller's certificate (default: the file's client or "
                                   "coordinator entry)")
    p.add_argument("--as", dest="as_identity", help="identity to connect as (default: the first certificate found)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for each process")
    p.add_argument("--only", action="append", metavar="IDENTITY", help="only this process (repeatable)")
    p.add_argument("--local", action="store_true",
                   help="dial 127.0.0.1 at each process's port (a readiness probe on the process's own host)")
    p.set_defaults(fn=_status)

    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    sys.exit(args.fn(args))


if __name__ == "__main__":
    main()
