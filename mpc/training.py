"""Secure training on a cluster: data shared once, one compiled step run step after step.

`share_data` has each data owner secret-share only its own rows (horizontal split) or
columns (vertical split, labels from the named label owner), concatenates them at the
parties and optionally normalises the features securely (mean and variance computed on
shares); the parties keep the result. `train` compiles the step program once, shares
the model owner's initial weights (optimizer state starts at zero), then runs one job
per step naming the kept data, weights and state and the public batch indices: the
parties keep the updated weights under the same handles. Batches follow a public order
drawn from the job's seed (a public permutation, not a secret: every party knows which
row indices form a batch, never the rows). The loss is revealed only on the steps asked
for. The trained model stays secret-shared (`TrainResult.shared` serves `cluster.infer`
directly) unless `reveal_model` opens it to the caller or a party.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import torch

from mpc import ring
from mpc.net import party_data
from mpc.data_files import DataError, targets as _targets  # noqa: F401  (DataError: part of this module's API)
from mpc.compiler import batch_norm
from mpc.compiler.model import compile_model
from mpc.compiler.training import TrainingProgram, compile_training
from mpc.inference import SharedModel
from mpc.ir import TO_CALLER, Job, Node, Program


@dataclass
class SharedData:
    """A data set the parties hold as shares: features (n_rows, ...) and targets (n_rows, k)."""

    x_handle: int
    y_handle: int
    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    loss_kind: str  # "classes" (one-hot integers) or "values" (fixed point)


@dataclass
class TrainResult:
    shared: SharedModel  # the trained weights, still secret-shared
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) where revealed
    steps: int = 0
    seconds: float = 0.0  # wall time of all steps, at the caller
    online_s: float = 0.0  # the parties' online phases, summed over the jobs (slowest party each)
    offline_s: float = 0.0  # their offline phases (dealer material), likewise
    rounds_per_step: int = 0
    bytes_per_step: int = 0
    dealer_bytes_per_step: int = 0
    handles: dict[str, int] = field(default_factory=dict)  # weights and optimizer state at the parties (free_model)


def batch_order(n_rows: int, seed: int, epoch: int) -> torch.Tensor:
    """The public row order of one epoch: every party (and the plaintext reference,
    mpc.plain_training) draws the same permutation from the job's seed."""
    return torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


class TrainingMixin:
    def share_data(self, parts: dict[int, tuple[torch.Tensor, torch.Tensor | None]], *, loss: str = "cross_entropy",
                   n_classes: int | None = None, split: str = "rows", label_owner: int | None = None,
                   normalize: bool = False) -> SharedData:
        """Each party p in `parts` secret-shares its own (x_p, y_p). `split="rows"`: parties
        hold different rows, each with its labels. `split="columns"`: parties hold different
        feature columns of the same rows; `label_owner` holds the labels (y is None elsewhere)."""
        if split not in ("rows", "columns"):
            raise DataError(f"split must be 'rows' or 'columns', got {split!r}")
        if loss == "cross_entropy" and not n_classes:
            raise DataError("cross-entropy needs n_classes")
        xs, ys = [], []
        for p in sorted(parts):
            if not 0 <= p < self.n_parties:
                raise DataError(f"data for party {p}, which is not a party of {self.n_parties}")
            x, y = parts[p]
            x = torch.as_tensor(x, dtype=torch.float64)
            if torch.isnan(x).any():
                row, col = (int(v) for v in torch.isnan(x).nonzero()[0][:2])
                raise DataError(f"party {p}'s data: row {row}, column {col}: missing value")
            ring.check_encodable(x, self.frac_bits, what=f"party {p}'s data")
            xs.append((p, x))
            if split == "rows" or p == label_owner:
                if y is None:
                    raise DataError(f"party {p} gives no labels")
                if len(y) != len(x):
                    raise DataError(f"party {p}'s data has {len(x)} rows and {len(y)} labels")
                ys.append((p, _targets(y, loss, n_classes, f"party {p}'s labels")))
        if split == "columns":
            if label_owner is None or not ys:
                raise DataError("a column split needs label_owner, a party that gives the labels")
            rows = {len(x) for _, x in xs}
            if len(rows) != 1:
                raise DataError(f"a column split needs the same rows at every party, got row counts {sorted(rows)}")
        elif len({tuple(x.shape[1:]) for _, x in xs}) != 1:
            raise DataError(f"a row split needs the same columns at every party, got {[tuple(x.shape[1:]) for _, x in xs]}")
        if normalize:
            # The range-reduced 1/sqrt (protocols/ranges.py) is right for variances in
            # [2^-16, 2^30), but the centred squares must stay in range (|x - mean| < 2^15), and
            # the variance is computed at 2^-16: below 0.01 (655 units) its rounding shows in
            # the normalised values. Each owner checks its own columns (its own plaintext) with
            # a margin, or the result would be wrong without any error.
            for p, x in xs:
                var = x.reshape(len(x), -1).var(0, unbiased=False) if len(x) > 1 else torch.ones(1)
                bad = ((var < 1e-2) | (var > 1e6)).nonzero()
                if len(bad):
                    col = int(bad[0])
                    raise DataError(f"party {p}'s data: column {col} has variance {float(var[col]):.3g}; secure "
                                    "normalisation needs variances in [0.01, 1e6]: scale that column first")
        return self._share_parts([(p, x.shape, x, None) for p, x in xs], [(p, y.shape, y, None) for p, y in ys],
                                 loss, split, normalize)

    def share_data_files(self, files: dict[int, tuple[str, str | int | None]], *, loss: str = "cross_entropy",
                         n_classes: int | None = None, split: str = "rows",
                         label_owner: int | None = None) -> SharedData:
        """Like share_data, but each party p reads its own file `files[p] = (name, label
        column)` from its data directory and shares it: the rows never leave their owner,
        not even to this client, which learns only the shapes (mpc.net.party_data)."""
        if split not in ("rows", "columns"):
            raise DataError(f"split must be 'rows' or 'columns', got {split!r}")
        if loss == "cross_entropy" and not n_classes:
            raise DataError("cross-entropy needs n_classes")
        xs, ys = [], []
        for p in sorted(files):
            if not 0 <= p < self.n_parties:
                raise DataError(f"data for party {p}, which is not a party of {self.n_parties}")
            name, label = files[p]
            label = label if split == "rows" or p == label_owner else None
            if (split == "rows" or p == label_owner) and label is None:
                raise DataError(f"party {p} gives no labels (its file's label column)")
            x_shape, y_shape = self._describe_data(p, name, label, loss, n_classes)
            xs.append((p, x_shape, None, party_data.source(name, label, "x", loss, n_classes)))
            if label is not None:
                ys.append((p, y_shape, None, party_data.source(name, label, "y", loss, n_classes)))
        if split == "columns":
            if label_owner is None or not ys:
                raise DataError("a column split needs label_owner, a party that gives the labels")
            if len({s[0] for _, s, _, _ in xs}) != 1:
                raise DataError(f"a column split needs the same rows at every party, got row counts "
                                f"{sorted(s[0] for _, s, _, _ in xs)}")
        elif len({tuple(s[1:]) for _, s, _, _ in xs}) != 1:
            raise DataError(f"a row split needs the same columns at every party, got {[tuple(s[1:]) for _, s, _, _ in xs]}")
        return self._share_parts(xs, ys, loss, split, normalize=False)

    def _describe_data(self, p, name, label, loss, n_classes) -> tuple[tuple[int, ...], tuple[int, ...]]:
        from mpc.api import MPCError  # mpc.api builds on this module

        raise MPCError(f"{type(self).__name__} has no party processes to read their own files: use a "
                       "LocalCluster or a ClusterClient")

    def _share_parts(self, xs, ys, loss, split, normalize) -> SharedData:
        """One job: each (party, shape, value or None, source or None) of xs and ys becomes an
        input its party owns (its value uploaded, or its file read at the party), the parts
        joined by rows or columns, kept for training."""
        as_int = loss == "cross_entropy"
        nodes: list[Node] = []
        inputs: dict[int, dict[int, torch.Tensor]] = {p: {} for p in range(self.n_parties)}
        owners, sources = {}, {}
        for tag, items, integer in (("x", xs, False), ("y", ys, as_int)):
            for p, shape, value, src in items:
                attrs = {"shape": tuple(shape), "kind": "private", **({"int": True} if integer else {})}
                nodes.append(Node(len(nodes), "input", (), attrs, tuple(shape), f"data.{tag}[{p}]"))
                if value is not None:
                    inputs[p][nodes[-1].id] = value
                else:
                    sources[nodes[-1].id] = src
                owners[nodes[-1].id] = p
        x_ids = [n.id for n in nodes if n.name.startswith("data.x")]
        y_ids = [n.id for n in nodes if n.name.startswith("data.y")]

        def cat(ids, dim, name):
            if len(ids) == 1:
                return ids[0]
            shapes = [nodes[i].shape for i in ids]
            shape = list(shapes[0])
            shape[dim] = sum(s[dim] for s in shapes)
            nodes.append(Node(len(nodes), "cat", tuple(ids), {"dim": dim}, tuple(shape), name))
            return nodes[-1].id

        x_id = cat(x_ids, 0 if split == "rows" else 1, "data.x")
        y_id = cat(y_ids, 0, "data.y")
        if normalize:
            x_id = _normalized(nodes, x_id)
        x_handle, y_handle = self._new_handle(), self._new_handle()
        program = Program(tuple(nodes), (), (), self.frac_bits)
        # Reproducible (runtime.reproducible): the same rows shared again (a resumed training)
        # come out as the very same shares, so the steps on them repeat bit for bit.
        job = Job(uuid.uuid4().hex, program.digest, owners=owners, keep={x_id: x_handle, y_id: y_handle},
                  sources=sources, reproducible=True)
        self._execute(program, job, inputs)
        return SharedData(x_handle, y_handle, nodes[x_id].shape, nodes[y_id].shape,
                          "classes" if as_int else "values")

    def train(self, model: torch.nn.Module, data: SharedData, *, loss: str = "cross_entropy", optimizer=None,
              epochs: int = 1, batch_size: int = 64, seed: int = 0, model_owner: int = 0,
              reveal_loss_every: int = 0, steps_per_job: int = 10, on_step: Callable | None = None,
              program: TrainingProgram | None = None, resume: tuple[int, dict[str, int]] | None = None,
              checkpoint_every: int = 0, on_checkpoint: Callable | None = None,
              stop_after: int | None = None, prefetch: bool = True) -> TrainResult:
        """Train `model` (its current weights are the model owner's starting point) on `data`.

        Steps run `steps_per_job` at a time in one job (an unrolled program): the rounds
        per step are unchanged, the per-job overheads are paid once per group. The loss
        is revealed on the last step of every group that contains a multiple of
        `reveal_loss_every` (0: never).

        `resume=(step, handles)` continues after `step` completed steps from weights and
        optimizer state the parties already keep under `handles` (by name: see
        mpc.checkpoints); the batch order depends only on the seed and the epoch, so the
        remaining steps read the same rows as an uninterrupted run. Groups also end at every
        multiple of `checkpoint_every`, where `on_checkpoint(step, handles)` is called;
        `stop_after` ends the run after that many steps in total (an interruption, for tests).

        `prefetch`: each job is submitted while the one before it is online, so that the
        parties prepare its correlations meanwhile (with checkpoints, it is run only after
        the checkpoint before it is written); False runs one job at a time. The randomness of
        every step is keyed by what it computes (runtime.reproducible): the weights are the
        same bit for bit either way."""
        n_rows = data.x_shape[0]
        tp = program or compile_training(model, torch.zeros((1, *data.x_shape[1:])), n_rows=n_rows,
                                         n_outputs=data.y_shape[1], loss=loss, optimizer=optimizer,
                                         batch_size=batch_size, frac_bits=self.frac_bits)
        start_step, handles = resume if resume else (0, self._share_initial(tp, model_owner))
        batches = []
        for epoch in range(epochs):
            order = batch_order(n_rows, seed, epoch)
            batches += [(epoch, order[k * tp.batch_size:(k + 1) * tp.batch_size])
                        for k in range(n_rows // tp.batch_size)]
        end = len(batches) if stop_after is None else min(stop_after, len(batches))
        result = TrainResult(self._trained_model(tp, handles), handles=dict(handles))
        k = max(1, int(steps_per_job))
        groups, step = [], start_step
        while step < end:
            last = min(step + k, end)
            if checkpoint_every:  # a checkpoint needs a job boundary at its step
                last = min(last, (step // checkpoint_every + 1) * checkpoint_every)
            groups.append((step, batches[step:last]))
            step = last

        def wants_loss(first, group):
            return bool(reveal_loss_every) and any(s % reveal_loss_every == 0
                                                   for s in range(first + 1, first + len(group) + 1))

        items = (self._step_job(tp, data, handles, first, [b for _, b in group], wants_loss(first, group))
                 for first, group in groups)
        # With checkpoints, a job is run only when asked for (hold): a checkpoint must save the
        # weights of its step before the next job overwrites them; that job is prepared meanwhile.
        runs = (self._execute_many_with_items(items, hold=bool(checkpoint_every)) if prefetch
                else ((item, self._execute(*item)) for item in items))
        start = time.perf_counter()
        try:
            self._train_groups(result, groups, runs, start_step, on_step, checkpoint_every, on_checkpoint, handles)
        finally:
            runs.close()  # a job submitted ahead of a failed one is dropped at the parties, not left to expire
        result.seconds = time.perf_counter() - start
        return result

    def _train_groups(self, result, groups, runs, start_step, on_step, checkpoint_every, on_checkpoint, handles):
        """train's loop: each group's outcomes into `result`, step by step."""
        from mpc.api import MPCError  # mpc.api builds on this module

        step = start_step
        for first, group in groups:
            try:
                (program, job, _), outcomes = next(runs)
            except MPCError as exc:  # a lost party, dealer or coordinator: say where training stopped
                raise MPCError(f"training stopped at steps {first + 1}-{first + len(group)} (epoch {group[0][0] + 1}; "
                               f"{first} steps done): {exc}") from exc
            stats = [o.stats for o in outcomes]
            self.last_program, self.last_job, self.last_stats = program, job, stats
            result.online_s += max(s.online_s for s in stats)
            result.offline_s += max(s.offline_s for s in stats)
            if first == start_step:
                result.rounds_per_step = max(s.rounds for s in stats) / len(group)
                result.bytes_per_step = max(s.bytes_sent for s in stats) / len(group)
                result.dealer_bytes_per_step = stats[0].dealer_bytes / len(group)
            step = first + len(group)
            value = None
            if program.outputs:
                nid, scale = program.outputs[0], program.output_scales[0]
                value = float(outcomes.value(nid, self.frac_bits * scale))
                result.losses.append((step, value))
            if on_step:
                on_step(group[-1][0], step, value)
            if checkpoint_every and on_checkpoint and step % checkpoint_every == 0:
                try:
                    on_checkpoint(step, handles)
                except MPCError as exc:
                    if type(exc) is not MPCError:  # a refusal of its own kind (a resume, a divergence)
                        raise
                    raise MPCError(f"training stopped writing the checkpoint of step {step} (epoch "
                                   f"{group[-1][0] + 1}; {step} steps done): {exc}") from exc
        result.steps = step

    def _share_initial(self, tp: TrainingProgram, owner: int) -> dict[str, int]:
        """Share the initial weights from `owner` and zero optimizer state; handles by name."""
        items = [(name, value) for name, value in tp.params.items()]
        items += [(name, torch.zeros(shape, dtype=torch.float64)) for name, shape in tp.state_shapes.items()]
        nodes = tuple(Node(k, "input", (), {"shape": tuple(v.shape), "kind": "private"}, tuple(v.shape), name)
                      for k, (name, v) in enumerate(items))
        handles = {name: self._new_handle() for name, _ in items}
        program = Program(nodes, (), (), self.frac_bits)
        job = Job(uuid.uuid4().hex, program.digest, owners={n.id: owner for n in nodes},
                  keep={n.id: handles[n.name] for n in nodes}, reproducible=True)
        inputs = {p: ({n.id: v for n, (_, v) in zip(nodes, items)} if p == owner else {}) for p in range(self.n_parties)}
        self._execute(program, job, inputs)
        return handles

    def _execute_many_with_items(self, items, hold: bool = False):
        """Pairs of (item, outcomes), in order; items are made as the pipeline needs them."""
        taken = []

        def tap():
            for item in items:
                taken.append(item)
                yield item

        runs = self._execute_many(tap(), hold=hold)
        try:
            for outcomes in runs:
                yield taken.pop(0), outcomes
        finally:
            runs.close()

    def _step_job(self, tp: TrainingProgram, data: SharedData, handles: dict[str, int], first: int,
                  batches: list[torch.Tensor], with_loss: bool):
        """The (program, job, inputs) of the steps first, first + 1, ... on `batches`."""
        program, roles = tp.program(len(batches), with_loss)
        kept = {}
        for name, nid in roles["inputs"].items():
            if name == "data.x":
                kept[nid] = data.x_handle
            elif name == "data.y":
                kept[nid] = data.y_handle
            elif name in handles:
                kept[nid] = handles[name]
        keep = {nid: handles[name] for name, nid in roles["updates"].items()}
        job = Job(uuid.uuid4().hex, program.digest, kept=kept, recipients=tuple(TO_CALLER for _ in program.outputs),
                  keep=keep, public=tp.public_values(roles, first, batches), reproducible=True)
        return program, job, {p: {} for p in range(self.n_parties)}

    def _trained_model(self, tp: TrainingProgram, handles: dict[str, int]) -> SharedModel:
        """The trained weights as a SharedModel that `infer` can run (compiled lazily per
        input shape through `TrainedModel`)."""
        return SharedModel(_TrainedLayout(tp), -1, {name: handles[name] for name in tp.params})

    def reveal_model(self, result: TrainResult, to: int | None = None) -> dict[str, torch.Tensor] | None:
        """Open the trained weights to the caller (a state dict, BatchNorm's running statistics and
        step counters included) or to party `to` (None here)."""
        handles = result.shared.handles
        names = list(handles)
        shapes = {name: tuple(v.shape) for name, v in result.shared.compiled.params.items()}
        nodes = tuple(Node(k, "input", (), {"shape": shapes[n], "kind": "kept"}, shapes[n], n)
                      for k, n in enumerate(names))
        program = Program(nodes, tuple(range(len(nodes))), (), self.frac_bits)
        recipient = TO_CALLER if to is None else int(to)
        job = Job(uuid.uuid4().hex, program.digest, kept={k: handles[n] for k, n in enumerate(names)},
                  recipients=tuple(recipient for _ in nodes))
        outcomes = self._execute(program, job, {p: {} for p in range(self.n_parties)})
        if recipient != TO_CALLER:
            return None
        state = {n: outcomes.value(k, self.frac_bits).to(torch.float32) for k, n in enumerate(names)}
        return {**state, **public_buffers(result)}


def public_buffers(result: TrainResult) -> dict[str, torch.Tensor]:
    """The trained model's state that is public: BatchNorm's step counters (one a step)."""
    layout = result.shared.compiled
    return batch_norm.tracked_batches(layout.tp.model, result.steps) if isinstance(layout, _TrainedLayout) else {}


class _TrainedLayout:
    """What SharedModel needs of a compiled model, for trained weights: a program per
    input shape whose parameter inputs are named and shaped as in the state dict."""

    def __init__(self, tp: TrainingProgram):
        self.tp = tp
        self.params = tp.params
        self._compiled = {}

    def shared_for(self, shape: tuple[int, ...], handles: dict[str, int]) -> SharedModel:
        if shape not in self._compiled:
            compiled = compile_model(self.tp.model, torch.zeros(shape), trainable=True,
                                     frac_bits=self.tp.frac_bits)
            self._compiled[shape] = SharedModel(compiled, -1, handles)
        return self._compiled[shape]


def _normalized(nodes: list[Node], x_id: int) -> int:
    """(x - mean) / sqrt(var + 1e-5) per column, computed on shares: appended to `nodes`."""
    shape = nodes[x_id].shape
    cols = shape[1:]

    def add(op, inputs, attrs, out_shape):
        nodes.append(Node(len(nodes), op, tuple(inputs), attrs, tuple(out_shape), "normalize"))
        return nodes[-1].id

    # precise_mean: the mean is subtracted from every value, so its factor 1/m needs more
    # significant bits than f gives (normalization.mean_of)
    mean = add("precise_mean", (x_id,), {"dims": (0,), "keepdim": True, "bits": 24}, (1, *cols))
    centred = add("sub", (x_id, mean), {}, shape)
    var = add("precise_mean", (add("square", (centred,), {}, shape),), {"dims": (0,), "keepdim": True, "bits": 16},
              (1, *cols))
    eps = add("add_public", (var,), {"value": torch.tensor(1e-5, dtype=torch.float64)}, (1, *cols))
    # 1/sqrt(var) of a large variance is small: computed times 2^6 (more significant bits at
    # scale 2^-f), and the 2^6 divided out after the product, exactly (a power of two)
    gain = 6
    inv = add("inv_sqrt_wide", (eps,), {"gain_bits": gain}, (1, *cols))
    scaled = add("mul", (centred, inv), {}, shape)
    return add("mul_public", (scaled,), {"value": torch.tensor(2.0 ** -gain, dtype=torch.float64)}, shape)
