"""`mpc bench`'s training workloads: secure training beside plaintext torch and CrypTen.

`logreg_train`, `mlp_train` and `digits_train` of BENCHMARKS.md. The data set is shared
once and the step program compiled and sent once (a warm-up group of steps loads it at
the parties), then the timed run trains from the same initial weights as plaintext torch
and CrypTen (built by hand from CrypTensors, reference.TRAIN_OPS), in the same batch
order. Each training-specific saving is also turned off in turn and its effect on one
step reported from the cost model (`saves_*`: rounds, bytes per party, dealer bytes;
the cost model equals the measured counters, tests/test_cost.py). Reported per run: wall seconds of all steps (`total_s`: what a user waits,
offline work included), the parties' online seconds summed over the jobs, rounds,
bytes and dealer bytes per step, and accuracy beside plaintext.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable

import torch

from mpc import reference
from mpc.compiler import estimate
from mpc.compiler.training import SGD, compile_training
from mpc.plain_training import train_plaintext
from mpc.training import batch_order


@dataclass(frozen=True)
class TrainWorkload:
    name: str
    describe: str
    data: Callable  # () -> (x_train, y_train, x_test, y_test)
    model: Callable  # () -> nn.Module with fixed initial weights
    loss: str
    lr: float
    epochs: int
    batch_size: int
    crypten_op: str
    scaling: bool = False


def _synthetic():
    gen = torch.Generator().manual_seed(0)  # public benchmark data, not secrets
    x = torch.randn(1000, 20, generator=gen, dtype=torch.float64)
    w = torch.randn(20, generator=gen, dtype=torch.float64)
    y = (x @ w + 0.5 * torch.randn(1000, generator=gen, dtype=torch.float64) > 0).long()
    return x, y, x, y


def _digits():
    from mpc.demo import load_digits

    return load_digits()


def _seeded(factory):
    def build():
        torch.manual_seed(0)
        return factory()
    return build


def _mlp(sizes):
    layers = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


TRAIN_WORKLOADS = {w.name: w for w in [
    TrainWorkload("logreg_train", "logistic regression, 1000x20, 10 epochs, batch 100, SGD lr 0.5", _synthetic,
                  _seeded(lambda: torch.nn.Linear(20, 1)), "bce_with_logits", 0.5, 10, 100, "train_logreg"),
    TrainWorkload("mlp_train", "MLP 20-32-2 ReLU, softmax cross-entropy, 1 epoch, batch 100, SGD lr 0.5", _synthetic,
                  _seeded(lambda: _mlp((20, 32, 2))), "cross_entropy", 0.5, 1, 100, "train_mlp"),
    TrainWorkload("digits_train", "digits 1797x64 (rows split over the parties), MLP 64-32-10, 5 epochs, batch 64",
                  _digits, _seeded(lambda: _mlp((64, 32, 10))), "cross_entropy", 0.5, 5, 64, "train_mlp"),
]}


def _split(x, y, n_parties):
    cuts = torch.linspace(0, len(x), n_parties + 1).long().tolist()
    return {p: (x[cuts[p]:cuts[p + 1]], y[cuts[p]:cuts[p + 1]]) for p in range(n_parties)}


def _targets(w, y):
    return y.double().view(-1, 1) if w.loss == "bce_with_logits" else torch.nn.functional.one_hot(y).double()


def _accuracy(w, logits, y) -> float:
    pred = (logits.view(-1) > 0).long() if w.loss == "bce_with_logits" else logits.argmax(1)
    return (pred == y).double().mean().item()


def _batches(w, n_rows):
    out = []
    for epoch in range(w.epochs):
        order = batch_order(n_rows, 0, epoch)
        out += [order[k * w.batch_size:(k + 1) * w.batch_size] for k in range(n_rows // w.batch_size)]
    return out


def plain_train(w, x, y) -> torch.nn.Module:
    """The same training in float64 torch (mpc.plain_training: same weights, order, update)."""
    return train_plaintext(w.model(), x, y, loss=w.loss, optimizer=SGD(w.lr), epochs=w.epochs,
                           batch_size=w.batch_size, seed=0).model


def run_ours(cluster, w: TrainWorkload, reps: int = 1) -> dict:
    x, y, x_test, y_test = w.data()
    n_classes = None if w.loss == "bce_with_logits" else int(y.max()) + 1
    data = cluster.share_data(_split(x, y, cluster.n_parties), loss=w.loss, n_classes=n_classes)
    tp = compile_training(w.model(), x[:1], n_rows=len(x), n_outputs=1 if n_classes is None else n_classes,
                          loss=w.loss, optimizer=SGD(w.lr), batch_size=w.batch_size, frac_bits=cluster.frac_bits)
    steps_per_job = 10
    cluster.train(w.model(), data, program=tp, epochs=1, steps_per_job=steps_per_job)  # warm-up: loads the programs
    start = time.perf_counter()
    result = cluster.train(w.model(), data, program=tp, epochs=w.epochs, steps_per_job=steps_per_job)
    wall = time.perf_counter() - start
    logits = cluster.infer(result.shared, x_test)
    plain_model = plain_train(w, x, y)
    with torch.no_grad():
        plain = plain_model(x_test)
    savings = {}
    full = estimate(tp.program(1)[0], cluster.n_parties)
    for saving in sorted(tp.savings):  # each one off in turn: what it saves per step (exact cost model)
        without = estimate(dataclasses.replace(tp, savings=tp.savings - {saving}, variants={}).program(1)[0],
                           cluster.n_parties)
        savings[f"saves_{saving}"] = {"rounds": without.rounds - full.rounds,
                                      "bytes_per_party": max(without.bytes_sent) - max(full.bytes_sent),
                                      "dealer_bytes": without.dealer_bytes - full.dealer_bytes}
    return {**savings, "total_s": wall, "online_s": result.online_s, "offline_s": result.offline_s, "steps": result.steps,
            "rounds_per_step": result.rounds_per_step, "bytes_per_step": result.bytes_per_step,
            "dealer_bytes_per_step": result.dealer_bytes_per_step, "accuracy": _accuracy(w, logits, y_test),
            "plain_accuracy": _accuracy(w, plain, y_test), "max_abs_err": (logits - plain).abs().max().item()}


def run_crypten(w: TrainWorkload, n_parties: int, reps: int, threads: int) -> dict:
    x, y, x_test, y_test = w.data()
    model = w.model()
    weights = [p.detach().double() for p in model.parameters()]
    batches = _batches(w, len(x))
    owners = [0, 0] + [1] * len(weights)
    r = reference.train(w.crypten_op, [x, _targets(w, y), *weights], batches, w.lr, owners=owners,
                        world_size=n_parties, threads=threads)
    flat, k = r["value"], 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(flat[k:k + p.numel()].view(p.shape))
            k += p.numel()
        logits = model.double()(x_test)
    steps = len(batches)
    return {"crypten_s": r["seconds"], "crypten_rounds": r["rounds"], "crypten_rounds_per_step": r["rounds"] / steps,
            "crypten_bytes": r["bytes"], "crypten_accuracy": _accuracy(w, logits, y_test)}
