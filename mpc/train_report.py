"""What a finished training job tells its user: the summary table, the metrics JSON, the loss plot.

The summary sets the secure run beside the same training in plaintext torch
(mpc.plain_training): the loss at the steps where it was revealed, test accuracy where
it was asked for, and the cost per step. The metrics JSON holds the same figures for
scripts; the PNG draws the loss curves (secure points over the plaintext line) and, when
accuracy was measured, plaintext accuracy per epoch with the secure end point. Plots use
matplotlib's Agg backend: no display is needed.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field


@dataclass
class TrainReport:
    job: str
    job_hash: str
    n_parties: int
    epochs: int
    batch_size: int
    steps: int
    seconds: float
    rounds_per_step: int
    bytes_per_step: int
    losses: list[tuple[int, float]] = field(default_factory=list)  # secure, where revealed
    plain_losses: list[tuple[int, float]] = field(default_factory=list)
    accuracy: float | None = None  # secure, on the test data, where asked for
    plain_accuracy: float | None = None
    plain_accuracy_by_epoch: list[tuple[int, float]] = field(default_factory=list)
    resumed_from: int | None = None
    checkpoints: list[int] = field(default_factory=list)
    model: str = "shared"  # where the trained model went
    files: dict[str, str] = field(default_factory=dict)


def summary(r: TrainReport) -> str:
    plain = dict(r.plain_losses)
    lines = [f"trained {r.steps} steps ({r.epochs} epochs of batch {r.batch_size}) on {r.n_parties} parties "
             f"in {r.seconds:.1f} s: {r.rounds_per_step:g} rounds and {r.bytes_per_step / 1e6:.2f} MB per party "
             "per step" + (f"; resumed after step {r.resumed_from}" if r.resumed_from is not None else "")]
    lines.append(f"{'':22}{'final loss':>11}  {'test accuracy':>13}")
    last = r.losses[-1] if r.losses else None
    secure_loss = f"{last[1]:11.4f}" if last else f"{'(hidden)':>11}"
    acc = f"{r.accuracy:13.4f}" if r.accuracy is not None else f"{'(hidden)':>13}"
    lines.append(f"{'mpc (secret shares)':22}{secure_loss}  {acc}")
    plain_loss = plain.get(last[0]) if last else (r.plain_losses[-1][1] if r.plain_losses else None)
    pl = f"{plain_loss:11.4f}" if plain_loss is not None else f"{'-':>11}"
    pa = f"{r.plain_accuracy:13.4f}" if r.plain_accuracy is not None else f"{'-':>13}"
    lines.append(f"{'plaintext torch':22}{pl}  {pa}")
    if last:
        lines.append(f"(loss of the batch at step {last[0] + 1}; plaintext trained from the same weights, "
                     "batches and learning rate)")
    lines.append(f"trained model: {r.model}")
    for what, path in r.files.items():
        lines.append(f"{what}: {path}")
    return "\n".join(lines)


def write_metrics(r: TrainReport, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(asdict(r), f, indent=1)
        f.write("\n")


def plot(r: TrainReport, path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    with_acc = r.plain_accuracy_by_epoch or r.accuracy is not None
    fig, axes = plt.subplots(1, 2 if with_acc else 1, figsize=(11 if with_acc else 6.5, 4.2), squeeze=False)
    ax = axes[0][0]
    if r.plain_losses:
        steps, values = zip(*r.plain_losses)
        ax.plot([s + 1 for s in steps], values, color="#9aa5b1", lw=1, label="plaintext torch (every batch)")
        window = max(1, len(values) // 40)
        if window > 1:
            smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                      for i in range(len(values))]
            ax.plot([s + 1 for s in steps], smooth, color="#3e4c59", lw=1.5, label=f"plaintext, mean of {window}")
    if r.losses:
        steps, values = zip(*r.losses)
        ax.plot([s + 1 for s in steps], values, "o-", color="#d64545", ms=3, lw=1.2, label="mpc (revealed steps)")
    if r.resumed_from is not None:
        ax.axvline(r.resumed_from, color="#f0b429", ls="--", lw=1, label=f"resumed after step {r.resumed_from}")
    ax.set_xlabel("step")
    ax.set_ylabel("batch loss")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if with_acc:
        ax = axes[0][1]
        if r.plain_accuracy_by_epoch:
            epochs, values = zip(*r.plain_accuracy_by_epoch)
            ax.plot([e + 1 for e in epochs], values, "s-", color="#3e4c59", ms=4, label="plaintext torch")
        if r.accuracy is not None:
            ax.plot([r.epochs], [r.accuracy], "o", color="#d64545", ms=8, label=f"mpc: {r.accuracy:.4f}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy")
        ax.set_title("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
