"""Training programs: forward pass, loss gradient, backward pass and optimizer update, as
one Program that every step of a training job reuses.

`compile_training(model, example, ...)` captures the model with its parameters as
inputs, reads each batch from the kept data set by public row indices, appends the
gradient of the loss (no log needed: softmax - onehot, sigmoid - y, pred - y), runs
reverse-mode differentiation (autodiff.py) and the optimizer's update. The program's
inputs are all kept values (data, weights, optimizer state) plus public per-step values
(batch indices; Adam's bias-corrected step sizes); its updated weights and state are
kept under the same handles, so step after step runs the same program with nothing
recompiled or re-sent. A second variant also reveals the batch loss, for the steps on
which the job asks for it. BatchNorm runs on the batch's statistics and its running
statistics are kept beside the weights, updated by the forward pass (batch_norm.py).

Savings (measured in `mpc bench`, explained in the README):
- ReLU's backward product with its comparison bit needs no truncation (the bit is an
  exact ring integer; relu_bit); labels are shared as exact integers for the same reason.
- The factor lr·c/batch (c = 2 for MSE) folds into the one truncation that the weight
  gradient x^T g needs anyway (`rescale`), as SecureML folds the learning rate.
- A layer's input gradient and weight gradient are independent nodes, so the scheduler
  sends their openings in the same round.
- Within one step, a layer's backward products (matmul or convolution) reuse the masked
  operands x - a and w - b opened by its forward product and open only g - d
  (passes/mask_reuse.py, SecureML §4.2); each step's forward product has fresh masks.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch

from mpc.compiler import autodiff, batch_norm, train_ops
from mpc.compiler.capture import capture
from mpc.compiler.extract import extract
from mpc.compiler.graph import GraphBuilder
from mpc.compiler.passes import mask_reuse
from mpc.compiler.registry import CompileError
from mpc.compiler.validate import validate
from mpc.ir import Program

LOSSES = ("mse", "bce_with_logits", "cross_entropy")
V_SHIFT = 12  # Adam's second moment is kept times 2^V_SHIFT (see _update)
# "bit_products": ReLU's backward product with its 0/1 bit untruncated; "fold_step_size": the
# step size folded into the weight gradient's truncation; "reuse_masks": a layer's backward
# products reuse its forward product's opened masks. `mpc bench` turns each off to measure it.
SAVINGS = frozenset({"bit_products", "fold_step_size", "reuse_masks"})


@dataclass(frozen=True)
class SGD:
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0

    def state_names(self, param: str) -> list[str]:
        return [f"{param}:momentum"] if self.momentum else []


@dataclass(frozen=True)
class Adam:
    """Adam with bias correction folded into per-step public step sizes. In 16-bit fixed
    point the second moment of small gradients underflows, so eps defaults to 1e-2. The
    square root and reciprocal of the update are range-reduced: gradients (of the mean
    loss) up to about 500 in magnitude."""

    lr: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-2

    def state_names(self, param: str) -> list[str]:
        return [f"{param}:m", f"{param}:v"]


def _scalar(v: float) -> torch.Tensor:
    return torch.tensor(float(v), dtype=torch.float64)


@dataclass
class TrainingProgram:
    """A compiled training step (and unrolled groups of steps) and what a job needs to bind
    its inputs and keep its results.

    `program(k, with_loss)` is k consecutive steps in one program (step i+1 reads step
    i's updated weights inside the program), so per-job costs (submission, the ready
    barrier, the dealer's latency) are paid once per k steps while the rounds per step
    stay those of one step. Each variant is built once and reused for every group."""

    params: dict[str, torch.Tensor]  # initial values (the model owner's), by parameter name, buffers included
    state_shapes: dict[str, tuple[int, ...]]  # optimizer state (starts at zero), by name
    loss: str
    optimizer: object
    batch_size: int
    n_rows: int
    x_shape: tuple[int, ...]  # of the whole kept data set
    y_shape: tuple[int, ...]
    frac_bits: int
    model: torch.nn.Module = field(repr=False, default=None)
    graph: object = field(repr=False, default=None)  # the captured forward pass (trainable layout)
    savings: frozenset = SAVINGS  # which training-specific savings are on (all, unless measuring them)
    # names in params that the forward pass updates, not the optimizer (BatchNorm's running statistics)
    buffers: frozenset = frozenset()
    variants: dict[tuple[int, bool], tuple[Program, dict]] = field(default_factory=dict, repr=False)

    @property
    def step(self) -> Program:
        return self.program(1, False)[0]

    @property
    def step_with_loss(self) -> Program:
        return self.program(1, True)[0]

    def program(self, k: int = 1, with_loss: bool = False) -> tuple[Program, dict]:
        """k steps in one program, revealing the last step's loss if `with_loss`; and its
        roles: {"inputs": {name: node}, "updates": {name: node}, "loss": node or None}."""
        if (k, with_loss) not in self.variants:
            self.variants[(k, with_loss)] = _build(self, k, with_loss)
        return self.variants[(k, with_loss)]

    def public_values(self, roles: dict, first_step: int, batches: list[torch.Tensor]) -> dict[int, torch.Tensor]:
        """The public inputs of the steps first_step, first_step + 1, ... reading `batches`."""
        ids = roles["inputs"]
        values = {}
        for i, indices in enumerate(batches):
            values[ids[f"batch[{i}]"]] = indices.to(torch.int64)
            if isinstance(self.optimizer, Adam):
                b1, b2 = self.optimizer.betas
                t = first_step + i + 1
                root_scale = 2.0 ** (V_SHIFT / 2)  # v is kept times 2^V_SHIFT
                values[ids[f"adam.lr[{i}]"]] = _scalar(
                    self.optimizer.lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * root_scale)
                values[ids[f"adam.eps[{i}]"]] = _scalar(self.optimizer.eps * math.sqrt(1 - b2 ** t) * root_scale)
        return values


def _double_product(b: GraphBuilder, nid: int) -> int | None:
    """If gradient node `nid` is a product seen through local reshapes/permutes (each used
    once), the same chain rebuilt with the product untruncated (scale 2^2f); else None."""
    chain, cur = [], b.nodes[nid]
    users: dict[int, int] = {}
    for n in b.nodes.values():
        for i in n.inputs:
            users[i] = users.get(i, 0) + 1
    while cur.op in ("permute", "transpose", "reshape", "sum") and users.get(cur.inputs[0], 0) == 1:
        chain.append(cur)
        cur = b.nodes[cur.inputs[0]]
    if cur.op not in ("matmul", "mul", "conv2d", "conv2d_weight") or cur.attrs.get("truncate") is False:
        return None
    out = b.add(cur.op, cur.inputs, {**cur.attrs, "truncate": False}, name=cur.name, source=cur.source).id
    for n in reversed(chain):
        out = b.add(n.op, (out,), n.attrs, name=n.name, source=n.source).id
    return out


def _scaled(b: GraphBuilder, grad: int, factor: float, name: str, fold: bool = True) -> int:
    """factor * grad, folding the factor into the gradient product's truncation when it can."""
    double = _double_product(b, grad) if fold else None
    if double is not None:
        return b.add("rescale", (double,), {"value": float(factor), "bits": train_ops.factor_bits(factor, b.frac_bits)},
                     name=name, source="").id
    return b.add("mul_public", (grad,), {"value": _scalar(factor)}, name=name, source="").id


def _mul_public(b, x, v, name):
    return b.add("mul_public", (x,), {"value": _scalar(v)}, name=name, source="").id


def _loss_grad(b: GraphBuilder, loss: str, z: int, y: int) -> tuple[int, float]:
    """The gradient of the summed loss with respect to z, up to a public factor c (returned)."""
    if loss == "cross_entropy":
        p = b.add("softmax", (z,), {"dim": 1}, name="loss", source="").id
        y_fixed = _mul_public(b, y, float(1 << b.frac_bits), "loss")  # integer labels to fixed point: exact
        return b.add("sub", (p, y_fixed), name="loss", source="").id, 1.0
    if loss == "bce_with_logits":
        s = b.add("sigmoid", (z,), name="loss", source="").id
        return b.add("sub", (s, y), name="loss", source="").id, 1.0
    return b.add("sub", (z, y), name="loss", source="").id, 2.0


def _loss_value(b: GraphBuilder, loss: str, z: int, y: int, batch: int) -> int:
    if loss == "cross_entropy":  # -sum(onehot * log_softmax) / B; onehot is integer: no truncation
        logp = b.add("log_softmax", (z,), {"dim": 1}, name="loss", source="").id
        picked = b.add("mul", (y, logp), {"truncate": False}, name="loss", source="").id
        total = b.add("sum", (picked,), {"dims": (), "keepdim": False}, name="loss", source="").id
        return _mul_public(b, total, -1.0 / batch, "loss")
    if loss == "mse":
        d = b.add("sub", (z, y), name="loss", source="").id
        sq = b.add("square", (d,), name="loss", source="").id
        return b.add("mean", (sq,), {"dims": (), "keepdim": False}, name="loss", source="").id
    # softplus(z) - z y = relu(z) - z y + log(1 + exp(-|z|))
    relu = b.add("relu", (z,), name="loss", source="").id
    zy = b.add("mul", (z, y), name="loss", source="").id
    na = b.add("neg", (b.add("abs", (z,), name="loss", source="").id,), name="loss", source="").id
    soft = b.add("log", (b.add("add_public", (b.add("exp", (na,), name="loss", source="").id,),
                               {"value": _scalar(1.0)}, name="loss", source="").id,), name="loss", source="").id
    total = b.add("add", (b.add("sub", (relu, zy), name="loss", source="").id, soft), name="loss", source="").id
    return b.add("mean", (total,), {"dims": (), "keepdim": False}, name="loss", source="").id


def _update(b: GraphBuilder, opt, name: str, w: int, grad: int, c_over_b: float, states: dict[str, int],
            scalars: dict[str, int], fold: bool = True) -> dict[str, int]:
    """New values of parameter `name` and of its optimizer state."""
    if isinstance(opt, SGD):
        if not opt.momentum:
            step = _scaled(b, grad, opt.lr * c_over_b, name, fold)
            if opt.weight_decay:
                step = b.add("add", (step, _mul_public(b, w, opt.lr * opt.weight_decay, name)), name=name,
                             source="").id
            return {name: b.add("sub", (w, step), name=name, source="").id}
        v = _scaled(b, grad, c_over_b, name, fold)
        if opt.weight_decay:
            v = b.add("add", (v, _mul_public(b, w, opt.weight_decay, name)), name=name, source="").id
        key = f"{name}:momentum"
        v = b.add("add", (_mul_public(b, states[key], opt.momentum, name), v), name=name, source="").id
        return {key: v, name: b.add("sub", (w, _mul_public(b, v, opt.lr, name)), name=name, source="").id}
    b1, b2 = opt.betas
    d = _scaled(b, grad, c_over_b, name, fold)
    m = b.add("add", (_mul_public(b, states[f"{name}:m"], b1, name), _mul_public(b, d, 1 - b1, name)), name=name,
              source="").id
    # v is kept as v * 2^V_SHIFT: (1 - b2) d^2 of small gradients is below 2^-16 and would vanish.
    # d^2 stays untruncated and (1 - b2) 2^V_SHIFT folds into its one truncation.
    d2 = b.add("square", (d,), {"truncate": False}, name=name, source="").id
    factor = (1 - b2) * (1 << V_SHIFT)
    fresh = b.add("rescale", (d2,), {"value": factor, "bits": train_ops.factor_bits(factor, b.frac_bits)},
                  name=name, source="").id
    v = b.add("add", (_mul_public(b, states[f"{name}:v"], b2, name), fresh), name=name, source="").id
    # sqrt(v) * 2^(V_SHIFT / 2) and 1 / (that + eps_t 2^(V_SHIFT / 2)) with range reduction
    # (protocols/ranges.py): right for v 2^V_SHIFT up to 2^30, i.e. gradients d up to about 500.
    root = b.add("sqrt_wide", (b.add("add_public", (v,), {"value": _scalar(2.0 ** -b.frac_bits)}, name=name,
                                     source="").id,), name=name, source="").id
    shape = b.nodes[w].shape
    eps = b.add("expand", (scalars["adam.eps"],), {"shape": shape}, name=name, source="").id  # eps_t 2^(V_SHIFT/2)
    inv = b.add("reciprocal_wide", (b.add("add", (root, eps), name=name, source="").id,), name=name,
                source="").id
    lr = b.add("expand", (scalars["adam.lr"],), {"shape": shape}, name=name, source="").id  # lr_t 2^(V_SHIFT/2)
    step = b.add("mul", (b.add("mul", (m, inv), name=name, source="").id, lr), name=name, source="").id
    return {f"{name}:m": m, f"{name}:v": v, name: b.add("sub", (w, step), name=name, source="").id}


def compile_training(model: torch.nn.Module, example: torch.Tensor, *, n_rows: int, n_outputs: int,
                     loss: str = "cross_entropy", optimizer=None, batch_size: int = 64,
                     frac_bits: int = 16, savings: frozenset = SAVINGS) -> TrainingProgram:
    """Compile the training step of `model` on batches of `batch_size` rows out of a kept
    data set of `n_rows` rows shaped like `example`'s rows; targets have `n_outputs`
    columns (one-hot classes for cross-entropy)."""
    if loss not in LOSSES:
        raise CompileError(f"unknown loss {loss!r}; supported: {', '.join(LOSSES)}")
    optimizer = optimizer or SGD(lr=0.1)
    if not isinstance(optimizer, (SGD, Adam)):
        raise CompileError(f"unknown optimizer {optimizer!r}: use mpc.SGD or mpc.Adam")
    if not 1 <= batch_size <= n_rows:
        raise CompileError(f"batch size {batch_size} does not fit a data set of {n_rows} rows")
    features = tuple(example.shape[1:])
    captured = capture(model, torch.zeros((batch_size, *features), dtype=example.dtype), frac_bits, trainable=True)
    graph = captured.graph
    if graph.extra_outputs:
        raise CompileError(f"training needs a model with one output, this one has {1 + len(graph.extra_outputs)}")
    buffers = batch_norm.check(model, graph)
    if captured.output_shape != (batch_size, n_outputs):
        raise CompileError(f"the model's output has shape {captured.output_shape}; the targets need "
                           f"({batch_size}, {n_outputs})")
    params = {graph.builder.nodes[nid].name: v for nid, v in graph.params.items()}
    state_shapes = {key: tuple(v.shape) for name, v in params.items() if name not in buffers
                    for key in optimizer.state_names(name)}
    tp = TrainingProgram(params, state_shapes, loss, optimizer, batch_size, n_rows, (n_rows, *features),
                         (n_rows, n_outputs), frac_bits, copy.deepcopy(model), graph, frozenset(savings),
                         frozenset(buffers))
    tp.program(1, False)  # build (and validate) the plain step now: errors surface at compile time
    return tp


def _forward(b: GraphBuilder, tp: TrainingProgram, x: int, weights: dict[str, int],
             exact_bit: bool = True) -> tuple[int, dict[str, int]]:
    """The captured forward pass on input node x with the given weight nodes, and the updated
    buffers by name; relu keeps its comparison bit, max-pooling its one-hot maxima and
    BatchNorm its normalised input for the backward pass."""
    graph = tp.graph
    mapped: dict[int, int] = {}
    buffers: dict[str, int] = {}
    for nid in sorted(graph.builder.nodes):  # ids grow in creation order: inputs first
        node = graph.builder.nodes[nid]
        if nid == graph.input_id:
            mapped[nid] = x
        elif nid in graph.params:
            mapped[nid] = weights[node.name]
        elif node.op == "relu":
            both = b.add("relu_bit", (mapped[node.inputs[0]],), {} if exact_bit else {"exact_bit": False},
                         name=node.name, source=node.source)
            mapped[nid] = b.add("take", (both.id,), {"index": 0}, name=node.name, source=node.source).id
        elif node.op == "max_pool2d":  # keeps the one-hot of each window's maximum for the backward
            both = b.add("max_pool2d_argmax", (mapped[node.inputs[0]],), node.attrs, name=node.name,
                         source=node.source)
            mapped[nid] = b.add("take", (both.id,), {"index": 0}, name=node.name, source=node.source).id
        elif node.op == "batch_norm":  # batch statistics; the running ones are updated beside
            names = tuple(graph.builder.nodes[i].name for i in node.inputs[3:])
            mapped[nid], updated = batch_norm.train_forward(b, node, tp.model, tuple(mapped[i] for i in node.inputs),
                                                            names)
            buffers.update(updated)
        else:
            mapped[nid] = b.add(node.op, tuple(mapped[i] for i in node.inputs), node.attrs, name=node.name,
                                source=node.source).id
    return mapped[graph.output], buffers


def _build(tp: TrainingProgram, k: int, with_loss: bool) -> tuple[Program, dict]:
    b = GraphBuilder(tp.frac_bits)
    data_x = b.input(tp.x_shape, name="data.x", kind="kept", source="").id
    data_y = b.input(tp.y_shape, name="data.y", kind="kept", source="").id
    inputs = {"data.x": data_x, "data.y": data_y}
    current = {}
    for name in [*tp.params, *tp.state_shapes]:
        shape = tuple(tp.params[name].shape) if name in tp.params else tp.state_shapes[name]
        current[name] = inputs[name] = b.input(shape, name=name, kind="kept", source="").id
    loss_node = None
    for i in range(k):
        batch = b.add("input", (), {"shape": (tp.batch_size,), "kind": "public", "index": True}, name=f"batch[{i}]",
                      source="").id
        inputs[f"batch[{i}]"] = batch
        scalars = {}
        if isinstance(tp.optimizer, Adam):
            for key in ("adam.lr", "adam.eps"):
                scalars[key] = inputs[f"{key}[{i}]"] = b.add("input", (), {"shape": (), "kind": "public"},
                                                               name=f"{key}[{i}]", source="").id
        x = b.add("gather_rows", (data_x, batch), name="input", source="").id
        y = b.add("gather_rows", (data_y, batch), name="labels", source="").id
        z, updates = _forward(b, tp, x, current, "bit_products" in tp.savings)  # updates: the buffers'
        g, c = _loss_grad(b, tp.loss, z, y)
        weights = [current[name] for name in tp.params if name not in tp.buffers]
        grads = autodiff.backward(b, {z: g}, weights)
        for name in tp.params:
            if name in tp.buffers:
                continue
            states = {key: current[key] for key in tp.optimizer.state_names(name)}
            updates.update(_update(b, tp.optimizer, name, current[name], grads[current[name]],
                                   c / tp.batch_size, states, scalars, "fold_step_size" in tp.savings))
        current = updates
        if with_loss and i == k - 1:
            loss_node = _loss_value(b, tp.loss, z, y, tp.batch_size)
    roots = [loss_node] if loss_node is not None else []
    if "reuse_masks" in tp.savings:  # node ids keep their meaning: inputs, current and loss_node stand
        b, _ = mask_reuse.apply(b, roots + list(current.values()))
    ex = extract(b, roots, also=list(current.values()))
    validate(ex.program)
    index = ex.program_id()
    roles = {"inputs": {name: index[v] for name, v in inputs.items() if v in index},
             "updates": {name: index[v] for name, v in current.items()},
             "loss": index.get(loss_node) if loss_node is not None else None}
    return ex.program, roles
