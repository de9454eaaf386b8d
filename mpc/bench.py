"""`mpc bench`: the workloads of BENCHMARKS.md, ours and CrypTen's, in one run.

Our figures come from the parties' own counters (the transport counts rounds and bytes
as it sends); each is the median over repetitions after a warm-up, start-up excluded,
with the spread (min and max) of the timed repetitions beside it. `wall_s` is the caller's
span from calling reveal() to the decoded tensor in hand (upload, program, offline, online,
outputs); CrypTen's `crypten_wall_s` is the same span of its own (sharing the inputs, the
operation, get_plain_text), and `ratio_wall` the one over the other. Every elementwise workload
runs once untimed before any is timed, so that none is timed on a cold process.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from typing import Callable

import torch

from mpc import bench_models, bench_profile, bench_train, reference
from mpc.bench_train import TRAIN_WORKLOADS
from mpc.bench_models import MODEL_WORKLOADS, summarize
from mpc.launcher import LocalCluster


def _normal(std):
    return lambda gen, shape: torch.randn(shape, generator=gen, dtype=torch.float64) * std


def _uniform(lo, hi):
    return lambda gen, shape: torch.rand(shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo


@dataclass(frozen=True)
class Workload:
    name: str
    op: str  # key of reference.OPS (CrypTen's side)
    shapes: tuple[tuple[int, ...], ...]
    describe: str
    plain: Callable  # float64 torch tensors -> tensor
    secret: Callable  # SecretTensors -> SecretTensor
    draw: Callable = _normal(1.0)  # (generator, shape) -> inputs
    scaling: bool = False  # only with --scaling


def _unary(name, op, n, draw, describe, plain, secret, scaling=False):
    return Workload(name, op, ((n,) if isinstance(n, int) else n,), describe, plain, secret, draw, scaling)


_RELU = dict(plain=lambda x: torch.relu(x), secret=lambda x: x.relu())
_MUL = dict(plain=lambda a, b: a * b, secret=lambda a, b: a * b)

WORKLOADS = {w.name: w for w in [
    Workload("mul_1m", "mul", ((1_000_000,), (1_000_000,)), "elementwise product, 10^6 elements", **_MUL),
    Workload("matmul_256", "matmul", ((256, 256), (256, 256)), "256x256 @ 256x256",
             lambda a, b: a @ b, lambda a, b: a @ b),
    Workload("conv_mnist", "conv2d", ((32, 1, 28, 28), (16, 1, 5, 5)), "conv2d 16 filters 5x5, batch 32 of 1x28x28",
             lambda a, b: torch.nn.functional.conv2d(a, b), lambda a, b: a.conv2d(b)),
    _unary("relu_100k", "relu", 100_000, _normal(2.0), "ReLU, 10^5 elements, N(0, 4)", **_RELU),
    _unary("exp_100k", "exp", 100_000, _uniform(-4, 4), "exp, 10^5 elements, U(-4, 4)", torch.exp, lambda x: x.exp()),
    _unary("sigmoid_100k", "sigmoid", 100_000, _normal(2.0), "sigmoid, 10^5 elements, N(0, 4)",
           torch.sigmoid, lambda x: x.sigmoid()),
    _unary("reciprocal_100k", "reciprocal", 100_000, _uniform(0.5, 10), "1/x, 10^5 elements, U(0.5, 10)",
           torch.reciprocal, lambda x: x.reciprocal()),
    _unary("log_100k", "log", 100_000, _uniform(0.5, 10), "natural log, 10^5 elements, U(0.5, 10)",
           torch.log, lambda x: x.log()),
    _unary("softmax_1k", "softmax", (1000, 10), _normal(2.0), "softmax over rows, 1000x10, N(0, 4)",
           lambda x: torch.softmax(x, -1), lambda x: x.softmax(-1)),
    *(_unary(f"relu_{label}", "relu", n, _normal(2.0), f"ReLU scaling, {n} elements", scaling=True, **_RELU)
      for label, n in [("1k", 1_000), ("10k", 10_000), ("1m", 1_000_000)]),
    *(Workload(f"mul_{label}", "mul", ((n,), (n,)), f"product scaling, {n} elements", scaling=True, **_MUL)
      for label, n in [("1k", 1_000), ("10k", 10_000), ("100k", 100_000)]),
    Workload("mul_1m_used", "mul_add", ((1_000_000,), (1_000_000,)),
             "x * y + 1, 10^6 elements: a product used further, so truncated", lambda a, b: a * b + 1,
             lambda a, b: a * b + 1.0, scaling=True),
]}


def _inputs(w: Workload) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)  # public benchmark data, not secrets
    return [w.draw(gen, s) for s in w.shapes]


def run_ours(cluster: LocalCluster, w: Workload, reps: int) -> dict:
    xs = _inputs(w)
    expected = w.plain(*xs)
    samples = []
    for rep in range(reps + 1):  # the first is this workload's own warm-up
        shared = [cluster.share(x, owner=i % cluster.n_parties) for i, x in enumerate(xs)]
        out = w.secret(*shared)
        start = time.perf_counter()  # reveal() called ... the decoded tensor in hand
        value = out.reveal()
        wall = time.perf_counter() - start
        stats = cluster.last_stats
        del shared, out
        cluster.collect()  # every repetition starts from the same store: last one's values freed
        if rep:
            samples.append({
                "online_s": max(s.online_s for s in stats),
                "total_s": max(s.online_s + s.offline_s for s in stats),
                "wall_s": wall,
                "rounds": max(s.rounds for s in stats),
                "bytes_per_party": max(s.bytes_sent for s in stats),
                "dealer_bytes": sum(s.dealer_bytes for s in stats),
                "max_abs_err": (value - expected).abs().max().item(),
            })
    return summarize(samples)


def warm_up(cluster: LocalCluster, names: list[str], progress=print) -> None:
    """One untimed run of every elementwise workload before any is timed: the processes'
    heaps then hold pages of the largest sizes, so the first workload timed is not also the
    one that pays for fresh memory (each workload still has its own warm-up repetition)."""
    for name in names:
        w = WORKLOADS.get(name)
        if w is not None:
            progress(f"warming up {name}")
            w.secret(*(cluster.share(x, owner=i % cluster.n_parties) for i, x in enumerate(_inputs(w)))).reveal()
    cluster.collect()


def run_crypten(w: Workload, n_parties: int, reps: int, threads: int) -> dict:
    xs = _inputs(w)
    r = reference.run(w.op, xs, world_size=n_parties, reps=reps, threads=threads)
    return {"crypten_s": r["seconds"], "crypten_wall_s": r["wall_seconds"], "crypten_rounds": r["rounds"],
            "crypten_bytes": r["bytes"], "crypten_max_abs_err": (r["value"] - w.plain(*xs)).abs().max().item()}


def machine_info(threads: int) -> dict:
    import grpc

    try:
        crypten_version = reference.import_crypten().__version__
    except Exception:  # reported, not required, when --no-crypten
        crypten_version = None
    return {"nproc": os.cpu_count(), "torch_threads_per_process": threads, "python": platform.python_version(),
            "torch": torch.__version__, "grpcio": grpc.__version__, "crypten": crypten_version,
            "platform": platform.platform()}


# The scaling run of mlp_infer: the same model at these party counts.
SCALING_PARTIES = (2, 3, 4, 5)


def _run_on(cluster, name: str, reps: int) -> dict:
    if name in MODEL_WORKLOADS:
        return bench_models.run_ours(cluster, MODEL_WORKLOADS[name], reps)
    if name in TRAIN_WORKLOADS:
        return bench_train.run_ours(cluster, TRAIN_WORKLOADS[name], reps)
    return run_ours(cluster, WORKLOADS[name], reps)


def _describe(name: str) -> str:
    return (MODEL_WORKLOADS.get(name) or TRAIN_WORKLOADS.get(name) or WORKLOADS[name]).describe


def run(names: list[str], n_parties: int = 3, reps: int = 3, crypten: bool = True, threads: int = 1,
        progress=print, scaling: bool = False, tls: bool = True, profile: bool = False) -> dict:
    known = {**WORKLOADS, **MODEL_WORKLOADS, **TRAIN_WORKLOADS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(known)}")
    results = []
    with LocalCluster(n_parties=n_parties, torch_threads=threads, tls=tls) as cluster:
        warm_up(cluster, names, progress)
        for name in names:
            progress(f"running {name} ({_describe(name)}) on {n_parties} parties")
            results.append({"name": name, "parties": n_parties, **_run_on(cluster, name, reps)})
            if profile and name in WORKLOADS:  # after the timed runs: profiling never slows what they measure
                w = WORKLOADS[name]
                progress(f"profiling {name} and replaying its rounds as the transport floor")
                results[-1].update(bench_profile.profile_workload(cluster, w.secret, _inputs(w), reps))
    if scaling:
        for n in SCALING_PARTIES:
            if n == n_parties:
                continue
            with LocalCluster(n_parties=n, torch_threads=threads, tls=tls) as cluster:
                progress(f"running mlp_infer on {n} parties (scaling)")
                results.append({"name": "mlp_infer", "parties": n, **_run_on(cluster, "mlp_infer", reps)})
    if crypten:
        for row in results:
            progress(f"running {row['name']} in CrypTen with {row['parties']} processes")
            if row["name"] in MODEL_WORKLOADS:
                row.update(bench_models.run_crypten(MODEL_WORKLOADS[row["name"]], row["parties"], reps, threads))
            elif row["name"] in TRAIN_WORKLOADS:
                row.update(bench_train.run_crypten(TRAIN_WORKLOADS[row["name"]], row["parties"], reps, threads))
            else:
                row.update(run_crypten(WORKLOADS[row["name"]], row["parties"], reps, threads))
            row["ratio"] = row["online_s"] / row["crypten_s"]
            row["ratio_total"] = row["total_s"] / row["crypten_s"]
            if "wall_s" in row and "crypten_wall_s" in row:  # reveal() to the result in hand, on both sides
                row["ratio_wall"] = row["wall_s"] / row["crypten_wall_s"]
    return {"machine": machine_info(threads), "results": results}


def format_table(report: dict) -> str:
    cols = ["name", "parties", "online_s", "spread_online_s", "total_s", "spread_total_s", "wall_s", "rounds", "predicted_rounds", "rounds_per_step",
            "crypten_rounds_per_step", "accuracy", "plain_accuracy", "crypten_accuracy", "bytes_per_party", "dealer_bytes", "max_abs_err",
            "crypten_s", "crypten_wall_s", "crypten_rounds", "crypten_bytes", "crypten_max_abs_err", "ratio",
            "ratio_total", "ratio_wall",
            "predictions_per_s", "crypten_predictions_per_s", "floor_s", "online_over_floor"]
    rows = report["results"]
    cols = [c for c in cols if any(c in r for r in rows)]

    def fmt(v):
        if isinstance(v, (list, tuple)):  # a spread: min-max of the timed repetitions
            return "-".join(fmt(x) for x in v)
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.4g}"
        return str(v)

    table = [cols] + [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    text = "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in table)
    profiles = [bench_profile.format_profile(r) for r in rows if "profile" in r]
    return "\n\n".join([text, *profiles])


def write_json(report: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=2)


__all__ = ["WORKLOADS", "run", "format_table", "write_json"]
