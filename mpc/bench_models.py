"""`mpc bench`'s inference workloads: compiled models run privately, beside CrypTen.

Each workload compiles a network of mpc.models once (no cluster needed), shares its
weights from party 0 once, then times private inferences on party 1's input: online and
total (offline included) from the parties' own clocks, wall from the caller's. The
figures also carry the compiler's prediction of rounds and bytes, which must equal what
the parties measured, and the per-job overhead of sending the program: paid by the
first job only (`first_program_s`), zero afterwards (`program_s`).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from mpc import compiler, models, reference
from mpc.compiler.model import compile_model


@dataclass(frozen=True)
class ModelWorkload:
    name: str
    describe: str
    build: Callable  # () -> torch.nn.Module with fixed weights
    input_shape: tuple[int, ...]
    scaling: bool = False


def _seeded(factory):
    def build():
        torch.manual_seed(0)  # public benchmark weights, not secrets
        return factory().eval()
    return build


MODEL_WORKLOADS = {w.name: w for w in [
    ModelWorkload("mlp_infer", "MLP 784-128-128-10 ReLU, batch 64; weights P0, input P1", _seeded(models.MLP),
                  (64, 784)),
    ModelWorkload("cnn_infer", "CNN conv-relu-avgpool x2, linear x2, batch 16 of 1x28x28; weights P0, input P1",
                  _seeded(models.CNN), (16, 1, 28, 28)),
    ModelWorkload("mlp_infer_batch", "MLP 784-128-128-10 ReLU, batch 256: predictions per second",
                  _seeded(models.MLP), (256, 784)),
]}


def _input(w: ModelWorkload) -> torch.Tensor:
    return torch.rand(w.input_shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def run_ours(cluster, w: ModelWorkload, reps: int) -> dict:
    model, x = w.build(), _input(w)
    with torch.no_grad():
        expected = model.double()(x)
    compiled = compile_model(model, x)
    cost = compiler.estimate(compiled.program, cluster.n_parties, recipients=(-1,))
    cluster.share_model(compiled, owner=0)
    samples, first_program_s = [], None
    for rep in range(reps + 1):  # the first is a warm-up, and the only one that sends the program
        start = time.perf_counter()
        value = cluster.infer(compiled, x, model_owner=0, data_owner=1)
        wall = time.perf_counter() - start
        stats, overhead = cluster.last_stats, getattr(cluster, "last_overhead", {})
        if rep == 0:
            first_program_s = overhead.get("program_s", 0.0)
            measured = ([s.bytes_sent for s in stats], max(s.rounds for s in stats), stats[0].dealer_bytes)
            predicted = (cost.bytes_sent, cost.total_rounds, cost.dealer_bytes)
            if measured != predicted:
                raise AssertionError(f"{w.name}: measured (bytes per party, rounds, dealer bytes) {measured}, "
                                     f"the compiler predicted {predicted}")
            continue
        samples.append({
            "online_s": max(s.online_s for s in stats),
            "total_s": max(s.online_s + s.offline_s for s in stats),
            "wall_s": wall,
            "program_s": overhead.get("program_s", 0.0),
            "rounds": max(s.rounds for s in stats),
            "bytes_per_party": max(s.bytes_sent for s in stats),
            "dealer_bytes": sum(s.dealer_bytes for s in stats),
            "max_abs_err": (value - expected).abs().max().item(),
        })
    row = summarize(samples)
    row.update(first_program_s=first_program_s, predicted_rounds=cost.total_rounds,
               predicted_bytes_per_party=max(cost.bytes_sent), predicted_dealer_bytes=cost.dealer_bytes,
               accuracy_vs_plain=(value.argmax(-1) == expected.argmax(-1)).double().mean().item())
    if w.name.endswith("_batch"):
        row["predictions_per_s"] = w.input_shape[0] / row["total_s"]
    return row


SPREAD = ("online_s", "total_s", "wall_s")


def summarize(samples: list[dict]) -> dict:
    """The median of every figure over the timed repetitions, and for the times their spread
    (`spread_online_s` = [min, max], ...): on a shared machine one median hides a lot."""
    row = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
    for k in SPREAD:
        if k in samples[0]:
            row[f"spread_{k}"] = [min(s[k] for s in samples), max(s[k] for s in samples)]
    return row


def run_crypten(w: ModelWorkload, n_parties: int, reps: int, threads: int) -> dict:
    model, x = w.build(), _input(w)
    op, weights = models.crypten_args(model)
    r = reference.run(op, [x, *weights], owners=[1] + [0] * len(weights), world_size=n_parties, reps=reps,
                      threads=threads)
    with torch.no_grad():
        expected = model.double()(x)
    row = {"crypten_s": r["seconds"], "crypten_wall_s": r["wall_seconds"], "crypten_rounds": r["rounds"],
           "crypten_bytes": r["bytes"],
           "crypten_max_abs_err": (r["value"] - expected).abs().max().item()}
    if w.name.endswith("_batch"):
        row["crypten_predictions_per_s"] = w.input_shape[0] / r["seconds"]
    return row
