"""BatchNorm in training programs: batch statistics in the forward pass, running statistics
kept as the model's buffers.

Capture sees a BatchNorm as the eval-mode `batch_norm` node (x, weight, bias,
running_mean, running_var). In a training step it becomes `batch_norm_train` (the
batch's mean and biased variance, protocols/normalization.py; its gradient rule is in
grads.py), and the running statistics are updated as torch does in train mode:

    running_mean <- (1 - momentum) running_mean + momentum mean
    running_var  <- (1 - momentum) running_var + momentum var m / (m - 1)

(the unbiased variance, m values per channel), two public scalings per statistic. The
running statistics are kept at the parties like the weights, under their state-dict
names, but they are updated by the forward pass, not by the optimizer; the step count
`num_batches_tracked` is public (one per step) and is given back with the revealed
weights. After training, the model in eval mode uses the running statistics
(passes/bn_fold.py: folded for plaintext weights, computed on shares for trained ones).
"""

from __future__ import annotations

import torch

from mpc.compiler.graph import GraphBuilder
from mpc.compiler.registry import CompileError
from mpc.ir import Node

GAIN_BITS = 6  # 1/sqrt(var + eps) is computed times 2^6: a large variance keeps significant bits


def _module(model: torch.nn.Module, node: Node) -> torch.nn.Module:
    try:
        module = model.get_submodule(node.name)
    except AttributeError:
        module = None
    if not isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        raise CompileError(f"{node.describe()}: a batch_norm that is not a BatchNorm module's cannot train "
                           "(use torch.nn.BatchNorm1d/2d)")
    return module


def check(model: torch.nn.Module, graph) -> set[str]:
    """The names of the running statistics of every BatchNorm of the captured `graph`, or a
    CompileError for a BatchNorm that training cannot reproduce as torch runs it."""
    buffers: set[str] = set()
    for node in graph.builder.nodes.values():
        if node.op != "batch_norm":
            continue
        module = _module(model, node)
        if not module.affine:
            raise CompileError(f"{node.describe()}: BatchNorm with affine=False cannot train here (its scale and "
                               "shift would be trained as weights); use affine=True")
        if module.momentum is None:
            raise CompileError(f"{node.describe()}: BatchNorm with momentum=None (a cumulative average) cannot "
                               "train here; give a momentum such as 0.1")
        names = [graph.builder.nodes[i].name for i in node.inputs[1:]]
        if names[:2] != [f"{node.name}.weight", f"{node.name}.bias"]:
            raise CompileError(f"{node.describe()}: its scale and shift are not the module's weight and bias")
        if buffers & set(names[2:]):
            raise CompileError(f"{node.describe()}: a BatchNorm module used twice in one forward pass cannot train "
                               "here (its running statistics would be updated twice)")
        buffers.update(names[2:])
    return buffers


def train_forward(b: GraphBuilder, node: Node, model: torch.nn.Module, inputs: tuple[int, ...],
                  buffer_names: tuple[str, str]) -> tuple[int, dict[str, int]]:
    """The training-mode BatchNorm of captured `node` on mapped `inputs` (x, weight, bias,
    running_mean, running_var): its output node and the updated running statistics by name."""
    x, gamma, beta, running_mean, running_var = inputs
    momentum = float(_module(model, node).momentum)
    both = b.add("batch_norm_train", (x, gamma, beta), {"eps": float(node.attrs["eps"]), "gain_bits": GAIN_BITS},
                 name=node.name, source=node.source).id

    def take(k):
        return b.add("take", (both,), {"index": k}, name=node.name, source=node.source).id

    def scaled(nid, factor):
        return b.add("mul_public", (nid,), {"value": torch.tensor(factor, dtype=torch.float64)}, name=node.name,
                     source=node.source).id

    shape = node.shape
    m = shape[0] * (torch.Size(shape[2:]).numel())
    updates = {}
    for name, old, batch, factor in ((buffer_names[0], running_mean, take(3), momentum),
                                     (buffer_names[1], running_var, take(4), momentum * m / (m - 1))):
        updates[name] = b.add("add", (scaled(old, 1.0 - momentum), scaled(batch, factor)), name=node.name,
                              source=node.source).id
    return take(0), updates


def tracked_batches(model: torch.nn.Module, steps: int) -> dict[str, torch.Tensor]:
    """`num_batches_tracked` of every BatchNorm after `steps` training steps (public: one a step)."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.num_batches_tracked is not None:
            out[f"{name}.num_batches_tracked"] = module.num_batches_tracked.detach().clone() + steps
    return out
