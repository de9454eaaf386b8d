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
which the job asks for it.

Savings (measured in `mpc bench`, explained in the README):
- ReLU's backward product with its comparison bit needs no truncation (the bit is an
  exact ring integer; relu_bit); labels are shared as exact integers for the same reason.
- The factor lr·c/batch (c = 2 for MSE) folds into the one truncation that the weight
  gradient x^T g needs anyway (`rescale`), as SecureML folds the learning rate.
- A layer's input gradient and weight gradient are independent nodes, so the scheduler
  sends their openings in the same round.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch

from mpc.compiler import autodiff, train_ops
from mpc.compiler.capture import capture
from mpc.compiler.extract import extract
from mpc.compiler.graph import GraphBuilder
from mpc.compiler.passes.rewrite import Rewriter
from mpc.compiler.registry import CompileError
from mpc.compiler.validate import validate
from mpc.ir import Node, Program

LOSSES = ("mse", "bce_with_logits", "cross_entropy")


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
    point the second moment of small gradients underflows, so eps defaults to 1e-2."""

    lr: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-2

    def state_names(self, param: str) -> list[str]:
        return [f"{param}:m", f"{param}:v"]


def _scalar(v: float) -> torch.Tensor:
    return torch.tensor(float(v), dtype=torch.float64)


@dataclass
class TrainingProgram:
    """A compiled training step and what a job needs to bind its inputs and keep results."""

    step: Program
    step_with_loss: Program
    params: dict[str, torch.Tensor]  # initial values (the model owner's), by parameter name
    state_shapes: dict[str, tuple[int, ...]]  # optimizer state (starts at zero), by name
    loss: str
    optimizer: object
    batch_size: int
    n_rows: int
    x_shape: tuple[int, ...]  # of the whole kept data set
    y_shape: tuple[int, ...]
    model: torch.nn.Module = field(repr=False, default=None)
    # program node ids by role, for each variant: {"inputs": {name: id}, "updates": {name: id}, "loss": id}
    roles: dict[str, dict] = field(default_factory=dict)

    def public_values(self, variant: str, step: int, indices: torch.Tensor) -> dict[int, torch.Tensor]:
        """The public inputs of step number `step` (0-based) reading rows `indices`."""
        ids = self.roles[variant]["inputs"]
        values = {ids["batch"]: indices.to(torch.int64)}
        if isinstance(self.optimizer, Adam):
            b1, b2 = self.optimizer.betas
            t = step + 1
            values[ids["adam.lr"]] = _scalar(self.optimizer.lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t))
            values[ids["adam.eps"]] = _scalar(self.optimizer.eps * math.sqrt(1 - b2 ** t))
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
    if cur.op not in ("matmul", "mul", "conv2d") or cur.attrs.get("truncate") is False:
        return None
    out = b.add(cur.op, cur.inputs, {**cur.attrs, "truncate": False}, name=cur.name, source=cur.source).id
    for n in reversed(chain):
        out = b.add(n.op, (out,), n.attrs, name=n.name, source=n.source).id
    return out


def _scaled(b: GraphBuilder, grad: int, factor: float, name: str) -> int:
    """factor * grad, folding the factor into the gradient product's truncation when it can."""
    double = _double_product(b, grad)
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
            scalars: dict[str, int]) -> dict[str, int]:
    """New values of parameter `name` and of its optimizer state."""
    if isinstance(opt, SGD):
        if not opt.momentum:
            step = _scaled(b, grad, opt.lr * c_over_b, name)
            if opt.weight_decay:
                step = b.add("add", (step, _mul_public(b, w, opt.lr * opt.weight_decay, name)), name=name,
                             source="").id
            return {name: b.add("sub", (w, step), name=name, source="").id}
        v = _scaled(b, grad, c_over_b, name)
        if opt.weight_decay:
            v = b.add("add", (v, _mul_public(b, w, opt.weight_decay, name)), name=name, source="").id
        key = f"{name}:momentum"
        v = b.add("add", (_mul_public(b, states[key], opt.momentum, name), v), name=name, source="").id
        return {key: v, name: b.add("sub", (w, _mul_public(b, v, opt.lr, name)), name=name, source="").id}
    b1, b2 = opt.betas
    d = _scaled(b, grad, c_over_b, name)
    m = b.add("add", (_mul_public(b, states[f"{name}:m"], b1, name), _mul_public(b, d, 1 - b1, name)), name=name,
              source="").id
    d2 = b.add("square", (d,), name=name, source="").id
    v = b.add("add", (_mul_public(b, states[f"{name}:v"], b2, name), _mul_public(b, d2, 1 - b2, name)), name=name,
              source="").id
    root = b.add("sqrt", (b.add("add_public", (v,), {"value": _scalar(2.0 ** -b.frac_bits)}, name=name,
                                source="").id,), name=name, source="").id
    shape = b.nodes[w].shape
    eps = b.add("expand", (scalars["adam.eps"],), {"shape": shape}, name=name, source="").id
    inv = b.add("reciprocal", (b.add("add", (root, eps), name=name, source="").id,), name=name, source="").id
    lr = b.add("expand", (scalars["adam.lr"],), {"shape": shape}, name=name, source="").id
    step = b.add("mul", (b.add("mul", (m, inv), name=name, source="").id, lr), name=name, source="").id
    return {f"{name}:m": m, f"{name}:v": v, name: b.add("sub", (w, step), name=name, source="").id}


def compile_training(model: torch.nn.Module, example: torch.Tensor, *, n_rows: int, n_outputs: int,
                     loss: str = "cross_entropy", optimizer=None, batch_size: int = 64,
                     frac_bits: int = 16) -> TrainingProgram:
    """Compile one training step of `model` on batches of `batch_size` rows out of a kept
    data set of `n_rows` rows shaped like `example`'s rows; targets have `n_outputs`
    columns (one-hot classes for cross-entropy)."""
    if loss not in LOSSES:
        raise CompileError(f"unknown loss {loss!r}; supported: {', '.join(LOSSES)}")
    optimizer = optimizer or SGD(lr=0.1)
    if not 1 <= batch_size <= n_rows:
        raise CompileError(f"batch size {batch_size} does not fit a data set of {n_rows} rows")
    features = tuple(example.shape[1:])
    captured = capture(model, torch.zeros((batch_size, *features), dtype=example.dtype), frac_bits, trainable=True)
    graph = captured.graph
    param_names = {nid: graph.builder.nodes[nid].name for nid in graph.params}
    rw = Rewriter(graph)
    b = rw.new
    data_x = b.input((n_rows, *features), name="data.x", kind="kept", source="")
    data_y = b.input((n_rows, n_outputs), name="data.y", kind="kept", source="")
    batch = b.add("input", (), {"shape": (batch_size,), "kind": "public", "index": True}, name="batch", source="")
    inputs = {"data.x": data_x.id, "data.y": data_y.id, "batch": batch.id}

    def visit(rw, node: Node):
        if node.id == graph.input_id:
            return b.add("gather_rows", (data_x.id, batch.id), name="input", source="").id
        if node.id in graph.params:
            nid = b.input(node.shape, name=node.name, kind="kept", source="").id
            inputs[node.name] = nid
            return nid
        if node.op == "relu":
            both = b.add("relu_bit", (rw[node.inputs[0]],), name=node.name, source=node.source)
            return b.add("take", (both.id,), {"index": 0}, name=node.name, source=node.source).id
        if node.op == "batch_norm":
            raise CompileError(f"{node.describe()}: BatchNorm is not supported in training (eval-mode BatchNorm is "
                               "folded for inference only)")
        return None

    forward = rw.run(visit)
    z = forward.output
    if b.nodes[z].shape != (batch_size, n_outputs):
        raise CompileError(f"the model's output has shape {b.nodes[z].shape}; the targets need "
                           f"({batch_size}, {n_outputs})")
    y = b.add("gather_rows", (data_y.id, batch.id), name="labels", source="").id
    g, c = _loss_grad(b, loss, z, y)
    params = [inputs[name] for name in param_names.values()]
    grads = autodiff.backward(b, {z: g}, params)
    state_shapes, scalars = {}, {}
    if isinstance(optimizer, Adam):
        for key in ("adam.lr", "adam.eps"):
            scalars[key] = inputs[key] = b.add("input", (), {"shape": (), "kind": "public"}, name=key, source="").id
    updates: dict[str, int] = {}
    for name in param_names.values():
        states = {}
        for key in optimizer.state_names(name):
            state_shapes[key] = b.nodes[inputs[name]].shape
            states[key] = inputs[key] = b.input(state_shapes[key], name=key, kind="kept", source="").id
        updates.update(_update(b, optimizer, name, inputs[name], grads[inputs[name]], c / batch_size, states,
                               scalars))
    loss_node = _loss_value(b, loss, z, y, batch_size)
    tp = TrainingProgram(None, None, {param_names[nid]: v for nid, v in graph.params.items()}, state_shapes, loss,
                         optimizer, batch_size, n_rows, (n_rows, *features), (n_rows, n_outputs),
                         copy.deepcopy(model))
    for variant, outputs in (("step", []), ("step_with_loss", [loss_node])):
        ex = extract(b, outputs, also=list(updates.values()))
        index = ex.program_id()
        validate(ex.program)
        setattr(tp, variant, ex.program)
        tp.roles[variant] = {"inputs": {k: index[v] for k, v in inputs.items() if v in index},
                             "updates": {k: index[v] for k, v in updates.items()},
                             "loss": index.get(loss_node)}
    return tp
