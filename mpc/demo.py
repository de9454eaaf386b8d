"""`mpc demo`: three parties, each holding a third of a real data set, train a model together.

scikit-learn's digits (shipped with the package: nothing is downloaded) is split 80/20;
each of three parties gets a third of the training rows as its own CSV file, and party 0
also holds the test rows. The demo writes those files and a job description, then runs it
as `mpc train` would (mpc.train_job): an MLP 64-32-32-10 trained on secret shares over
gRPC between three party processes and a dealer, the loss revealed every few steps, the
test accuracy at the end beside the same training in plaintext torch (same initial
weights, batches and learning rate), and the loss plot. `--write-files DIR` only writes
the party files (for examples/digits_train.toml).
"""

from __future__ import annotations

import os
import time

import torch

from mpc import data_files

# The demo's job: small enough to train in about a minute on two cores.
JOB = {
    "model": {"factory": "mpc.models:MLP", "kwargs": {"sizes": [64, 32, 32, 10]}, "init_seed": 0, "owner": 0},
    "training": {"loss": "cross_entropy", "classes": 10, "epochs": 12, "batch_size": 64, "seed": 0,
                 "reveal_loss_every": 20, "reveal_accuracy": True},
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    "data": {"split": "rows", "parties": [{"party": p, "file": f"party-{p}.csv", "label": "label"} for p in range(3)]},
    "evaluate": {"party": 0, "file": "test.csv", "label": "label"},
    "output": {"model": "shared", "directory": "."},
}


def load_digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits as sk_load  # ships with scikit-learn, no download

    data = sk_load()
    x = torch.tensor(data.data, dtype=torch.float64) / 16.0
    y = torch.tensor(data.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(y))
    return x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]]


def write_files(directory: str, parties: int = 3) -> list[str]:
    """Each party's third of the training rows, and the test rows, as CSVs with a header."""
    x, y, x_test, y_test = load_digits()
    paths = []
    bounds = [round(k * len(x) / parties) for k in range(parties + 1)]
    for p in range(parties):
        paths.append(os.path.join(directory, f"party-{p}.csv"))
        data_files.write_csv(paths[-1], x[bounds[p]:bounds[p + 1]], y[bounds[p]:bounds[p + 1]], prefix="pixel")
    paths.append(os.path.join(directory, "test.csv"))
    data_files.write_csv(paths[-1], x_test, y_test, prefix="pixel")
    return paths


def run(cluster, out: str, progress: bool = True):
    """Write the party files to `out` and train the demo's job on `cluster` (mpc.train_job)."""
    from mpc import jobfile
    from mpc.train_jobs import train_job

    parties = cluster.n_parties
    write_files(out, parties)
    job = {**JOB, "data": {"split": "rows", "parties": [
        {"party": p, "file": f"party-{p}.csv", "label": "label"} for p in range(parties)]}}
    spec = jobfile.load(job, base=os.path.abspath(out))
    spec.source = os.path.join(out, "digits_train.toml")  # names the metrics and plot files
    return train_job(spec, cluster, progress=progress)


def main(parties: int = 3, crypten: bool = True, out: str = "mpc-demo", only_write: str | None = None) -> int:
    if only_write:
        for path in write_files(only_write, parties):
            print(f"wrote {path}")
        return 0
    from mpc.launcher import LocalCluster

    print(f"digits: {parties} parties each hold a third of the training rows (their files are in {out}/); "
          f"party 0 also holds the test rows.\ntraining an MLP 64-32-32-10 on secret shares; revealed: the loss every "
          f"{JOB['training']['reveal_loss_every']} steps and the final test accuracy, nothing else.", flush=True)
    start = time.perf_counter()
    with LocalCluster(n_parties=parties) as cluster:
        report = run(cluster, out).report
    print(f"total {time.perf_counter() - start:.1f} s (cluster start, sharing, training, plaintext reference)")
    if crypten:
        # A CrypTen twin of this training (hand-built from CrypTensors) would about double the
        # demo's time, past its 3-minute budget: CrypTen stands beside the runtime in `mpc bench`.
        print("CrypTen: not trained here (it would double the demo's time); see `mpc bench`")
    return 0 if report.accuracy is not None else 1
