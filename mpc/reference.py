"""CrypTen 0.4.1 as the reference: the same operation on the same inputs, in N processes.

CrypTen is installed with --no-deps (see scripts/install-crypten.sh) and needs a stand-in
for `torch.onnx._internal.registration`, gone from current torch, before import. Its
`run_multiprocess` starts one process per rank (default provider: party 0 makes the
triples); rank 0 writes the result as .npy and JSON files, so nothing is pickled back.
Values are read exactly (revealed ring element / scale), since CrypTen's get_plain_text
decodes some negative values one unit low.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types

import numpy as np
import torch

OPS = {
    "add": lambda a, b: a + b,
    "mul": lambda a, b: a * b,
    "mul_add": lambda a, b: a * b + 1,
    "matmul": lambda a, b: a.matmul(b),
    "conv2d": lambda a, b: a.conv2d(b),
    "conv2d_s2p1": lambda a, b: a.conv2d(b, stride=2, padding=1),
    "linear": lambda x, w, b: x.matmul(w) + b,
    "relu": lambda a: a.relu(),
    "abs": lambda a: a.abs(),
    "sign": lambda a: a.sign(),
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "eq": lambda a, b: a == b,
    "clamp": lambda a: a.hardtanh(-1.0, 1.0),  # CrypTen has no clamp
    "where": lambda c, a, b: a.where(c, b),  # CrypTen: self.where(condition, y)
    "max": lambda a: a.max(dim=-1)[0],
    "min": lambda a: a.min(dim=-1)[0],
    "argmax": lambda a: a.argmax(dim=-1),
    "max_pool2d": lambda a: a.max_pool2d(2),
    "exp": lambda a: a.exp(),
    "log": lambda a: a.log(),
    "reciprocal": lambda a: a.reciprocal(),
    "div": lambda a, b: a.div(b),
    "sqrt": lambda a: a.sqrt(),
    "inv_sqrt": lambda a: a.inv_sqrt(),
    "sigmoid": lambda a: a.sigmoid(),
    "tanh": lambda a: a.tanh(),
    "softmax": lambda a: a.softmax(-1),
    "log_softmax": lambda a: a.log_softmax(-1),
    # The networks of mpc.models, built by hand from their weights (see models.crypten_args).
    "mlp3": lambda x, w1, b1, w2, b2, w3, b3: _linear(_linear(_linear(x, w1, b1).relu(), w2, b2).relu(), w3, b3),
    "cnn": lambda x, c1, d1, c2, d2, w1, b1, w2, b2: _linear(_linear(
        _conv(_conv(x, c1, d1).relu().avg_pool2d(2), c2, d2).relu().avg_pool2d(2).flatten(1), w1, b1).relu(), w2, b2),
    "rescnn": lambda x, c1, d1, c2, d2, w, b: _rescnn(x, c1, d1, c2, d2, w, b),
    "digits_cnn": lambda x, c, d, w, b: _linear(_conv(x, c, d, padding=1).relu().avg_pool2d(2).flatten(1), w, b),
}


def _train_logreg(x, y, w, b, *, batches, lr):
    """Logistic regression by hand: sigmoid, gradient (p - y) / B, SGD on W (1, d) and b (1,)."""
    for idx in batches:
        xb, yb = x[idx], y[idx]
        g = (_linear(xb, w, b).sigmoid() - yb) * (1.0 / len(idx))
        w = w - g.t().matmul(xb) * lr
        b = b - g.sum(0) * lr
    return _flat(w, b)


def _train_mlp(x, y, w1, b1, w2, b2, *, batches, lr):
    """One hidden ReLU layer, softmax cross-entropy: gradient softmax - onehot, by hand."""
    for idx in batches:
        xb, yb = x[idx], y[idx]
        h = _linear(xb, w1, b1)
        bit = h > 0
        a = h * bit
        g = (_linear(a, w2, b2).softmax(1) - yb) * (1.0 / len(idx))
        dh = g.matmul(w2) * bit
        w2, b2 = w2 - g.t().matmul(a) * lr, b2 - g.sum(0) * lr
        w1, b1 = w1 - dh.t().matmul(xb) * lr, b1 - dh.sum(0) * lr
    return _flat(w1, b1, w2, b2)


def _flat(*ts):
    return crypten_cat([t.flatten() for t in ts])


def crypten_cat(ts):
    import crypten

    return crypten.cat(ts)


# Training by hand in CrypTen: fn(*cryptensors, batches=[LongTensor], lr=float) -> flat weights.
TRAIN_OPS = {"train_logreg": _train_logreg, "train_mlp": _train_mlp}


def _linear(x, w, b):
    """torch.nn.Linear on CrypTensors: x W^T + b."""
    return x.matmul(w.t()) + b


def _conv(x, w, b, padding=0):
    return x.conv2d(w, padding=padding) + b.unsqueeze(-1).unsqueeze(-1)


def _rescnn(x, c1, d1, c2, d2, w, b):
    h = _conv(x, c1, d1, padding=1).relu()
    h = h + _conv(h, c2, d2, padding=1).relu()
    h = h.max_pool2d(2)
    h = h.mean(-1).mean(-1)  # global average pool
    return _linear(h, w, b)


def import_crypten():
    """Import crypten on a current torch (see the module docstring)."""
    name = "torch.onnx._internal.registration"
    if name not in sys.modules:
        shim = types.ModuleType(name)
        shim.registry = None
        sys.modules[name] = shim
    import crypten

    return crypten


def _rank_main(jobs: list[dict], reps: int, threads: int, warmup: bool = True) -> None:
    crypten = import_crypten()
    import crypten.communicator as comm
    from crypten.config import cfg

    torch.set_num_threads(threads)
    cfg.communicator.verbose = True
    rank = comm.get().get_rank()
    for job in jobs:
        plain = [torch.from_numpy(np.load(p)) for p in job["paths"]]
        if job["op"] in TRAIN_OPS:
            batches = [torch.from_numpy(b) for b in np.load(job["batches"])]
            fn = (lambda train, lr: lambda *xs: train(*xs, batches=batches, lr=lr))(TRAIN_OPS[job["op"]], job["lr"])
        else:
            fn = OPS[job["op"]]

        def run_once():
            """(result, seconds of fn, wall seconds, communication stats of fn). The wall is
            our reveal()'s span: sharing the inputs, fn, and get_plain_text (to every rank),
            less the barrier that lines the ranks up for fn's own timing."""
            comm.get().barrier()
            begin = time.perf_counter()
            xs = [crypten.cryptensor(t.float(), src=o) for t, o in zip(plain, job["owners"])]
            comm.get().reset_communication_stats()
            waited = time.perf_counter()
            comm.get().barrier()
            start = time.perf_counter()
            y = fn(*xs)
            seconds = time.perf_counter() - start
            stats = comm.get().get_communication_stats()
            y.get_plain_text()
            return y, seconds, time.perf_counter() - begin - (start - waited), stats

        if warmup:  # timings only: rounds, bytes and values are each run's own
            run_once()
        times, walls, y, stats = [], [], None, None
        for _ in range(reps):
            y, seconds, wall, stats = run_once()
            times.append(seconds)
            walls.append(wall)
        value = (y._tensor.reveal().double() / y._tensor.encoder.scale).numpy()
        if rank == 0:
            out = job["out"]
            np.save(out + ".npy", value, allow_pickle=False)
            with open(out + ".json", "w") as f:
                json.dump({"seconds": statistics.median(times), "wall_seconds": statistics.median(walls),
                           "rounds": stats["rounds"], "bytes": stats["bytes"]}, f)


def _launch(jobs: list[dict], world_size: int, reps: int, threads: int, warmup: bool = True) -> None:
    crypten = import_crypten()
    launcher = crypten.mpc.context.run_multiprocess(world_size=world_size)(_rank_main)
    launcher(jobs, reps, threads, warmup)


def train(op: str, tensors: list[torch.Tensor], batches: list[torch.Tensor], lr: float,
          owners: list[int] | None = None, *, world_size: int = 3, reps: int = 1, threads: int = 1) -> dict:
    """A training run of TRAIN_OPS[op] in CrypTen (same data, initial weights, batch order
    and learning rate as ours); value: the final weights, flattened in argument order."""
    return run_many([(op, tensors, owners, {"batches": torch.stack(batches), "lr": lr})], world_size=world_size,
                    reps=reps, threads=threads)[0]


def run(op: str, tensors: list[torch.Tensor], owners: list[int] | None = None, *, world_size: int = 3,
        reps: int = 3, threads: int = 1) -> dict:
    """Run `op` in CrypTen with `world_size` processes; returns value, seconds (of the op),
    wall_seconds (sharing the inputs, the op, get_plain_text), rounds, bytes."""
    return run_many([(op, tensors, owners)], world_size=world_size, reps=reps, threads=threads)[0]


def run_many(jobs: list[tuple], *, world_size: int = 3, reps: int = 3, threads: int = 1,
             warmup: bool = True) -> list[dict]:
    """Run several (op, tensors, owners) jobs in one set of CrypTen processes, in order.
    Each job runs once untimed first unless warmup is False (tests, which read no time:
    rounds, bytes and the value are every run's own; tests/test_reference.py checks it).

    CrypTen forks its ranks. Forking a process in which gRPC has threads can crash the
    child, so when gRPC is loaded here the ranks are forked from a fresh interpreter."""
    jobs = [tuple(j) + (None,) * (4 - len(j)) for j in jobs]
    for op, _, _, _ in jobs:
        if op not in OPS and op not in TRAIN_OPS:
            raise ValueError(f"no CrypTen reference for op {op!r}; known: {sorted(OPS) + sorted(TRAIN_OPS)}")
    import_crypten()
    with tempfile.TemporaryDirectory() as tmp:
        specs = []
        for k, (op, tensors, owners, training) in enumerate(jobs):
            paths = []
            for i, t in enumerate(tensors):
                paths.append(os.path.join(tmp, f"job{k}_in{i}.npy"))
                np.save(paths[-1], t.detach().to(torch.float64).numpy(), allow_pickle=False)
            owners = owners or [i % world_size for i in range(len(tensors))]
            specs.append(dict(op=op, paths=paths, owners=list(owners), out=os.path.join(tmp, f"job{k}_out")))
            if training:
                specs[-1]["batches"] = os.path.join(tmp, f"job{k}_batches.npy")
                specs[-1]["lr"] = float(training["lr"])
                np.save(specs[-1]["batches"], training["batches"].numpy(), allow_pickle=False)
        args = dict(jobs=specs, world_size=world_size, reps=reps, threads=threads, warmup=warmup)
        if "grpc" in sys.modules:
            subprocess.run([sys.executable, "-m", "mpc.reference", json.dumps(args)], timeout=1800, check=False)
        else:
            _launch(**args)
        results = []
        for spec in specs:
            out = spec["out"]
            if not os.path.exists(out + ".json"):
                raise RuntimeError(f"CrypTen run of {spec['op']} produced no result (a rank failed; see its output above)")
            with open(out + ".json") as f:
                result = json.load(f)
            result["value"] = torch.from_numpy(np.load(out + ".npy", allow_pickle=False))
            results.append(result)
    return results


if __name__ == "__main__":  # the fresh interpreter of run_many(); arguments as JSON, never pickled
    _launch(**json.loads(sys.argv[1]))
