"""Running a training job file on a cluster: `mpc train job.toml` and `mpc.train_job(path, cluster)`.

Reads the job (mpc.jobfile), reads and checks each party's own data file (mpc.data_files:
in local mode the launcher reads each file on its owner's behalf, as that party's
client; against remote parties each would read its own), has every owner secret-share
its part, builds the model from its factory with the job's seed, and trains with a
per-epoch progress bar (tqdm: steps, loss where revealed, time). Every K steps the
parties checkpoint their shares; `resume=True` continues from the newest checkpoint that
every party holds. Then: the same training in plaintext torch beside it, the trained
model where the job sends it, accuracy if asked for, the metrics JSON and the loss plot.
"""

from __future__ import annotations

import json
import math
import os
import sys
import uuid
from dataclasses import dataclass

import torch

from mpc import data_files, jobfile, model_files, plain_training, ring, train_report
from mpc.api import MPCError
from mpc.checkpoints import Checkpointer
from mpc.compiler.training import compile_training
from mpc.ir import Job, Node, Program
from mpc.training import DataError, public_buffers


@dataclass
class JobRun:
    report: train_report.TrainReport
    result: object  # mpc.training.TrainResult: `result.shared` serves cluster.infer
    state: dict | None  # the trained weights, when revealed to the caller


def load_parts(spec: jobfile.JobSpec, frac_bits: int) -> dict[int, tuple[torch.Tensor, torch.Tensor | None]]:
    """Each party's (x, y) from its own file, all checked before anything is shared."""
    parts = {}
    for src in spec.parties:
        label = src.label if spec.split == "rows" or src.party == spec.label_owner else None
        d = data_files.load(src.file, label, n_classes=spec.n_classes if spec.loss == "cross_entropy" else None,
                            frac_bits=frac_bits)
        parts[src.party] = (d.x, d.y)
    return parts


def build_model(spec: jobfile.JobSpec) -> torch.nn.Module:
    """The model owner's starting point: the factory's model with the job's init seed."""
    torch.manual_seed(spec.init_seed)
    try:
        model = model_files.load_factory(spec.factory, json.dumps(spec.kwargs))
    except model_files.ModelFileError as exc:
        raise jobfile.JobFileError(f"{spec.source}: [model] factory: {exc}") from None
    except TypeError as exc:
        raise jobfile.JobFileError(f"{spec.source}: [model] kwargs: the factory refused them: {exc}") from None
    return model.train()


class DivergenceError(MPCError):
    """The revealed loss says the run diverged or left the fixed-point range."""


# A loss this close to the fixed-point range (1/64 of it) means its squares and products
# already left it: no healthy run reports one, even as its first revealed loss.
CEILING = ring.max_abs_value() / 64


class _DivergenceCheck:
    """Stop on a revealed loss that no healthy run produces: not finite, negative (these
    losses cannot be: a value wrapped around the ring), above max(100, 10x the first
    revealed loss), or above CEILING. It looks only at losses the job already reveals: it
    reveals nothing more, and with the loss never revealed there is nothing to check."""

    def __init__(self, source: str, progress, checkpoints):
        self.source, self.progress, self.checkpoints, self.first = source, progress, checkpoints, None

    def __call__(self, epoch: int, step: int, loss: float | None) -> None:
        self.progress(epoch, step, loss)
        if loss is None:
            return
        self.first = loss if self.first is None else self.first
        if not math.isfinite(loss) or loss < -1e-3 or loss > min(max(100.0, 10 * self.first), CEILING):
            self.progress.close()
            last = f"the last checkpoint is step {self.checkpoints.written[-1]}" if self.checkpoints and \
                self.checkpoints.written else "no checkpoint was written"
            raise DivergenceError(
                f"{self.source}: stopped at step {step}: the revealed loss is {loss:.6g} (the first revealed loss was "
                f"{self.first:.6g}): the training diverged or a value left the fixed-point range (|x| < 2^30 at 16 "
                f"fractional bits). Lower [optimizer] lr, or set [data] normalize = true; {last}")


class _Progress:
    """One tqdm bar per epoch: steps done, the last revealed loss, elapsed and remaining time.
    Training reports after each job (a group of steps that may cross an epoch's end)."""

    def __init__(self, epochs: int, per_epoch: int, enabled: bool, first_step: int = 0):
        from tqdm import tqdm

        self.tqdm, self.epochs, self.per_epoch, self.enabled = tqdm, epochs, per_epoch, enabled
        self.bar, self.epoch, self.loss, self.done = None, None, None, first_step

    def __call__(self, epoch: int, step: int, loss: float | None) -> None:
        if not self.enabled:
            return
        if loss is not None:
            self.loss = loss
        while self.done < step:
            epoch = self.done // self.per_epoch
            if epoch != self.epoch:
                self.close()
                self.epoch = epoch
                self.bar = self.tqdm(total=self.per_epoch, initial=self.done - epoch * self.per_epoch,
                                     desc=f"epoch {epoch + 1}/{self.epochs}", unit="step", file=sys.stderr,
                                     dynamic_ncols=True, leave=True)
            n = min(step, (epoch + 1) * self.per_epoch) - self.done
            if self.loss is not None:
                self.bar.set_postfix_str(f"loss {self.loss:.4f}", refresh=False)
            self.bar.update(n)
            self.done += n

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def train_job(job, cluster, *, resume: bool = False, progress: bool = True, out=None,
              stop_after: int | None = None, plaintext: bool = True, party_files: bool = False) -> JobRun:
    """Run job `job` (a TOML path, or a dict with the same tables) on `cluster`. `stop_after`
    ends after that many steps (an interruption, for tests); `out` gets the summary.
    `party_files`: each party reads its file (by name) from its own data directory, and this
    client never sees a row (so there is no plaintext run to compare with)."""
    spec = job if isinstance(job, jobfile.JobSpec) else jobfile.load(job)
    jobfile.check_parties(spec, cluster.n_parties)
    out = out or sys.stdout
    if party_files and spec.normalize:
        raise DataError(f"{spec.source}: [data] normalize: not available when the parties read their own files "
                        "(each owner checks its columns' range on its plaintext first): normalise the files")
    parts = None if party_files else load_parts(spec, cluster.frac_bits)
    plaintext = plaintext and not party_files
    test = None
    if spec.evaluate is not None:
        d = data_files.load(spec.evaluate.file, spec.evaluate.label, frac_bits=cluster.frac_bits,
                            n_classes=spec.n_classes if spec.loss == "cross_entropy" else None)
        test = (d.x, d.y)
    model = build_model(spec)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        if party_files:
            files = {src.party: (os.path.basename(src.file),
                                 src.label if spec.split == "rows" or src.party == spec.label_owner else None)
                     for src in spec.parties}
            data = cluster.share_data_files(files, loss=spec.loss, n_classes=spec.n_classes, split=spec.split,
                                            label_owner=spec.label_owner)
        else:
            data = cluster.share_data(parts, loss=spec.loss, n_classes=spec.n_classes, split=spec.split,
                                      label_owner=spec.label_owner, normalize=spec.normalize)
    except DataError as exc:
        raise DataError(f"{spec.source}: {exc}") from None
    if test is not None and test[0].shape[1:] != data.x_shape[1:]:
        raise DataError(f"test data {spec.evaluate.file} has {test[0].shape[1]} columns, the training data "
                        f"{data.x_shape[1]}")
    tp = compile_training(model, torch.zeros((1, *data.x_shape[1:])), n_rows=data.x_shape[0],
                          n_outputs=data.y_shape[1], loss=spec.loss, optimizer=spec.optimizer,
                          batch_size=spec.batch_size, frac_bits=cluster.frac_bits)
    digest = spec.digest
    ckpt = Checkpointer(cluster, spec.checkpoint_dir, digest) if spec.checkpoint_dir else None
    restored = None
    if resume:
        if ckpt is None:
            raise jobfile.JobFileError(f"{spec.source}: [checkpoint] directory: --resume needs the job's "
                                       "checkpoint directory")
        step, handles, refused = ckpt.restore(list(tp.params) + list(tp.state_shapes))
        for why in refused:
            print(f"note: {why}; using the checkpoint of step {step}", file=sys.stderr)
        restored = (step, handles)
        print(f"resuming after step {step} (the newest checkpoint every party holds)", file=sys.stderr)
    per_epoch = data.x_shape[0] // spec.batch_size
    bar = _Progress(spec.epochs, per_epoch, progress, restored[0] if restored else 0)
    try:
        result = cluster.train(model, data, loss=spec.loss, optimizer=spec.optimizer, epochs=spec.epochs,
                               batch_size=spec.batch_size, seed=spec.seed, model_owner=spec.model_owner,
                               reveal_loss_every=spec.reveal_loss_every, on_step=_DivergenceCheck(spec.source, bar, ckpt),
                               program=tp, resume=restored,
                               checkpoint_every=spec.checkpoint_every if ckpt else 0,
                               on_checkpoint=ckpt.save if ckpt else None, stop_after=stop_after)
    finally:
        bar.close()
    report = train_report.TrainReport(
        spec.source, digest, cluster.n_parties, spec.epochs, spec.batch_size, result.steps, result.seconds,
        result.rounds_per_step, result.bytes_per_step,
        [(count - 1, value) for count, value in result.losses],  # by step index, like the plaintext's
        resumed_from=restored[0] if restored else None, checkpoints=list(ckpt.written) if ckpt else [])
    if plaintext:
        x, y = plain_training.assemble(parts, spec.split, spec.label_owner, spec.normalize)
        reference = model_files.load_factory(spec.factory, json.dumps(spec.kwargs))
        reference.load_state_dict(initial)
        plain = plain_training.train_plaintext(
            reference, x, y, loss=spec.loss, optimizer=spec.optimizer, epochs=spec.epochs,
            batch_size=spec.batch_size, seed=spec.seed, frac_bits=cluster.frac_bits, steps=result.steps,
            evaluate=test if test is not None and spec.loss == "cross_entropy" and not spec.normalize else None)
        report.plain_losses = plain.losses
        report.plain_accuracy_by_epoch = plain.accuracy
        report.plain_accuracy = plain.accuracy[-1][1] if plain.accuracy else None
    if spec.reveal_accuracy and test is not None:
        # The caller sees the test logits (and so the accuracy): see the README on what this reveals.
        logits = cluster.infer(result.shared, test[0], data_owner=spec.evaluate.party)
        report.accuracy = float((logits.argmax(1) == test[1].long()).double().mean())
    state = None
    os.makedirs(spec.output_dir, exist_ok=True)
    if spec.model_to == "caller":
        state = cluster.reveal_model(result)
        path = os.path.join(spec.output_dir, "model.pt")
        torch.save(state, path)
        report.model, report.files["model"] = "revealed to the caller", path
    elif isinstance(spec.model_to, int):
        path = os.path.join(spec.output_dir, f"party-{spec.model_to}", "model.pt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save(reveal_to_party(cluster, result, spec.model_to), path)
        report.model = f"revealed to party {spec.model_to} only"
        report.files[f"party {spec.model_to}'s model"] = path
    else:
        report.model = "kept secret-shared (cluster.infer(result.shared, x) runs on it); nothing written"
    base = os.path.splitext(os.path.basename(spec.source))[0] if spec.source != "<job dict>" else "job"
    metrics, png = (os.path.join(spec.output_dir, f"{base}.{ext}") for ext in ("metrics.json", "png"))
    report.files["metrics"], report.files["plot"] = metrics, png
    train_report.write_metrics(report, metrics)
    train_report.plot(report, png, title=f"{base}: {cluster.n_parties} parties, secret-shared training")
    print(train_report.summary(report), file=out)
    return JobRun(report, result, state)


def reveal_to_party(cluster, result, party: int) -> dict[str, torch.Tensor]:
    """Open the trained weights to `party` only. In local mode the launcher is that party's
    client and hands it the plaintext it received (to write into the party's own folder)."""
    handles = result.shared.handles
    names = list(handles)
    shapes = {name: tuple(v.shape) for name, v in result.shared.compiled.params.items()}
    nodes = tuple(Node(k, "input", (), {"shape": shapes[n], "kind": "kept"}, shapes[n], n) for k, n in enumerate(names))
    program = Program(nodes, tuple(range(len(nodes))), (), cluster.frac_bits)
    job = Job(uuid.uuid4().hex, program.digest, kept={k: handles[n] for k, n in enumerate(names)},
              recipients=tuple(party for _ in nodes))
    outcomes = cluster._execute(program, job, {p: {} for p in range(cluster.n_parties)})
    state = {n: outcomes[party].plaintexts[k].to(torch.float32) for k, n in enumerate(names)}
    return {**state, **public_buffers(result)}
