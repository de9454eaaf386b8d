"""The bandwidth run of `mpc bench --bandwidth [MBIT]`: mlp_infer, mlp_train and mul_1m (or
any elementwise workload of `mpc bench`) with every host's link unshaped, then limited to
MBIT (100) Mbit/s, where the bytes show.

Each party, the dealer and the coordinator run in a network namespace of their own
(mpc.netns: their own address on a bridge, as separate hosts), started from one cluster
file over mutual TLS; the client runs in the root namespace. Shaping is a token bucket
(`tc tbf`) on both ends of every host's link, so a party's traffic each way passes at most
MBIT. Unshaped and shaped repetitions alternate, after one warm-up of each workload; the
figures are medians (the JSON gives the spread). Each row states the bound of issue 9:
online time at most 1.3 x bytes / bandwidth plus its online time unshaped, where bytes are
what the busiest party sends (its link carries at least that much; the protocols are
symmetric, so it receives about as much).

Needs root and the ip and tc commands; BandwidthUnavailable says why where they are missing.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mpc import netns
from mpc.bench import WORKLOADS, _inputs, machine_info, write_json
from mpc.bench_models import MODEL_WORKLOADS, _input
from mpc.bench_train import TRAIN_WORKLOADS, _split
from mpc.cluster_processes import start_cluster, stop_all
from mpc.compiler.model import compile_model
from mpc.compiler.training import SGD, compile_training
from mpc.remote import RemoteCluster

RATE_MBIT = 100.0
SLACK = 1.3
NAMES = ("mlp_infer", "mlp_train", "mul_1m")
PORT = 50051  # every process on its own host: one port for all


class BandwidthUnavailable(RuntimeError):
    """Network namespaces cannot be built here; the message says why."""


@dataclass
class Sample:
    online_s: float
    bytes_per_party: float
    rounds: float


def _last(cluster) -> Sample:
    stats = cluster.last_stats
    return Sample(max(s.online_s for s in stats), max(s.bytes_sent for s in stats), max(s.rounds for s in stats))


def _mlp_infer(cluster, train_steps: int) -> Callable[[], Sample]:
    w = MODEL_WORKLOADS["mlp_infer"]
    x = _input(w)
    compiled = compile_model(w.build(), x)
    cluster.share_model(compiled, owner=0)

    def run():
        cluster.infer(compiled, x, model_owner=0, data_owner=1)
        return _last(cluster)
    return run


def _mlp_train(cluster, train_steps: int) -> Callable[[], Sample]:
    """`train_steps` steps in one job; figures per step."""
    tw = TRAIN_WORKLOADS["mlp_train"]
    tx, ty, _, _ = tw.data()
    n_classes = int(ty.max()) + 1
    data = cluster.share_data(_split(tx, ty, cluster.n_parties), loss=tw.loss, n_classes=n_classes)
    program = compile_training(tw.model(), tx[:1], n_rows=len(tx), n_outputs=n_classes, loss=tw.loss,
                               optimizer=SGD(tw.lr), batch_size=tw.batch_size, frac_bits=cluster.frac_bits)

    def run():
        result = cluster.train(tw.model(), data, program=program, epochs=1, stop_after=train_steps,
                               steps_per_job=train_steps)
        return Sample(result.online_s / result.steps, result.bytes_per_step, result.rounds_per_step)
    return run


def _elementwise(name: str):
    """An elementwise workload of `mpc bench` (mul_1m, ...): the inputs shared once (before any
    shaping); each run computes and reveals."""
    w = WORKLOADS[name]

    def prepare(cluster, train_steps: int) -> Callable[[], Sample]:
        shared = [cluster.share(x, owner=i % cluster.n_parties) for i, x in enumerate(_inputs(w))]

        def run():
            w.secret(*shared).reveal()
            sample = _last(cluster)
            cluster.collect()  # the result's shares, dropped before the next run
            return sample
        return run
    return prepare


PREPARE = {"mlp_infer": _mlp_infer, "mlp_train": _mlp_train, **{name: _elementwise(name) for name in WORKLOADS}}
PER_STEP = {"mlp_train"}


def run_bandwidth(rate_mbit: float = RATE_MBIT, names=NAMES, n_parties: int = 3, reps: int = 3,
                  train_steps: int = 4, progress=print) -> list[dict]:
    """One row per workload: its online time unshaped and at `rate_mbit`, and the bound."""
    unknown = [n for n in names if n not in PREPARE]
    if unknown:
        raise ValueError(f"the bandwidth run has no workload {', '.join(unknown)} (it runs mlp_infer, mlp_train "
                         f"and the elementwise workloads: {', '.join(WORKLOADS)})")
    why = netns.unavailable()
    if why:
        raise BandwidthUnavailable(why)
    try:
        hosts = netns.Hosts(netns.cluster_names(n_parties)).create()
    except netns.NetnsError as exc:
        raise BandwidthUnavailable(f"network namespaces cannot be created here: {exc}") from None
    try:
        with tempfile.TemporaryDirectory(prefix="mpc-bandwidth-") as tmp:
            path = netns.cluster_file(Path(tmp), hosts, n_parties, PORT)
            progress(f"starting {n_parties} parties, the dealer and the coordinator, each in a network namespace")
            procs = start_cluster(path, n_parties, {n: hosts.prefix(n) for n in hosts.names}, timeout=180)
            try:
                with RemoteCluster.from_file(str(path), str(Path(tmp) / "certs"), ready_timeout=60) as cluster:
                    return _rows(cluster, hosts, rate_mbit, names, reps, train_steps, progress)
            finally:
                stop_all(procs)
    finally:
        hosts.destroy()


def _rows(cluster, hosts: netns.Hosts, rate_mbit: float, names, reps: int, train_steps: int, progress) -> list[dict]:
    runs = {name: PREPARE[name](cluster, train_steps) for name in names}
    for name in names:
        progress(f"warming up {name}")
        runs[name]()
    samples: dict[tuple[str, bool], list[Sample]] = {(name, shaped): [] for name in names for shaped in (False, True)}
    # Unshaped and shaped alternate, repetition by repetition: other work on the machine then
    # slows both alike, instead of whichever ran while it was busy.
    for rep in range(reps):
        for shaped in (False, True):
            progress(f"repetition {rep + 1} of {reps}: {', '.join(names)}, "
                     + (f"at {rate_mbit:g} Mbit/s" if shaped else "unshaped"))
            if shaped:
                hosts.shape(rate_mbit)
            try:
                for name in names:
                    samples[name, shaped].append(runs[name]())
            finally:
                if shaped:
                    hosts.unshape()
    rows = []
    for name in names:
        base, slow = [s.online_s for s in samples[name, False]], [s.online_s for s in samples[name, True]]
        last = samples[name, True][-1]
        floor = last.bytes_per_party * 8 / (rate_mbit * 1e6)
        unshaped, online = statistics.median(base), statistics.median(slow)
        rows.append({"name": name, "rate_mbit": rate_mbit, "rounds": last.rounds,
                     "bytes_per_party": last.bytes_per_party, "unshaped_online_s": unshaped,
                     "spread_unshaped_online_s": [min(base), max(base)], "online_s": online,
                     "spread_online_s": [min(slow), max(slow)], "bandwidth_floor_s": floor,
                     "bound_s": SLACK * floor + unshaped, "within_bound": online <= SLACK * floor + unshaped,
                     **({"per": "step"} if name in PER_STEP else {})})
    return rows


def format_bandwidth(rows: list[dict]) -> str:
    lines = [f"{'workload':>10} {'Mbit/s':>6} {'rounds':>6} {'MB/party':>9} {'unshaped_s':>10} {'online_s':>9} "
             f"{'floor_s':>8} {'bound_s':>8}  within"]
    for r in rows:
        lines.append(f"{r['name']:>10} {r['rate_mbit']:>6g} {r['rounds']:>6g} {r['bytes_per_party'] / 1e6:>9.3f} "
                     f"{r['unshaped_online_s']:>10.3f} {r['online_s']:>9.3f} {r['bandwidth_floor_s']:>8.3f} "
                     f"{r['bound_s']:>8.3f}  {r['within_bound']}"
                     + ("  (per training step)" if r.get("per") == "step" else ""))
    lines.append(f"bound: {SLACK} x bytes / bandwidth + online time unshaped (bytes: the busiest party's, "
                 f"floor_s = bytes / bandwidth)")
    return "\n".join(lines)


def command(args) -> int:
    """`mpc bench --bandwidth [MBIT]` (the rest of `mpc bench`'s arguments in `args`): the
    table, and status 1 saying why where namespaces cannot be built."""
    names = args.only.split(",") if args.only else list(NAMES)
    try:
        rows = run_bandwidth(args.bandwidth, names, n_parties=args.parties, reps=args.reps,
                             progress=lambda m: print(m, file=sys.stderr, flush=True))
    except ValueError as exc:
        print(f"mpc bench --bandwidth: {exc}", file=sys.stderr)
        return 2
    except BandwidthUnavailable as exc:
        print(f"mpc bench --bandwidth: not run: {exc}; it puts every process in a network namespace of its "
              f"own and shapes their links with tc", file=sys.stderr)
        return 1
    print(format_bandwidth(rows))
    if args.json:
        write_json({"machine": machine_info(args.threads), "bandwidth": rows}, args.json)
    return 0


__all__ = ["run_bandwidth", "format_bandwidth", "command", "BandwidthUnavailable", "RATE_MBIT", "NAMES"]
