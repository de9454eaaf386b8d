"""BatchNorm folding: an eval-mode BatchNorm is an affine map per channel, y = x*s + t with
s = gamma / sqrt(var + eps) and t = beta - mean * s, and it is folded at compile time into
the layer before it, using the model owner's plaintext parameters.

Before a convolution or linear layer `x -> conv(x, W) + b` the fold gives new parameters
W' = W * s (per output channel) and b' = b * s + t = (b - mean) * s + beta, so the
BatchNorm costs nothing at all. The walk back from the BatchNorm passes through a bias
addition and through reshapes that keep the channel axis (a Conv1d is a conv2d between
two reshapes); every node on the way must have no other user, else folding would
duplicate the layer. A BatchNorm with no foldable predecessor becomes `x * s + t` with
`s` and `t` new per-channel parameter inputs (a product with a secret parameter, or a
public scaling when the model is public).

`apply_secret` is for a trained model whose weights and running statistics are kept at
the parties (a trainable layout, bound to a training job's results): nothing is known in
plaintext to fold, so the BatchNorm is computed on shares, y = (x - mean) s + beta with
the per-channel s = gamma / sqrt(var + eps) (range-reduced 1/sqrt, as in training:
compiler/batch_norm.py), one product over x.
"""

from __future__ import annotations

import torch

from mpc.compiler import batch_norm, train_ops
from mpc.compiler.passes.rewrite import ModelGraph, Rewriter
from mpc.compiler.registry import CompileError


def _affine(rw: Rewriter, bn) -> tuple[torch.Tensor, torch.Tensor]:
    if not all(rw.is_param(i) for i in bn.inputs[1:]):
        raise CompileError(f"{bn.describe()}: BatchNorm statistics computed from the input cannot be folded")
    gamma, beta, mean, var = (rw.value(i) for i in bn.inputs[1:])
    s = gamma / torch.sqrt(var + bn.attrs["eps"])
    return s, beta - mean * s


def _channel_view(vec: torch.Tensor, rank: int) -> torch.Tensor:
    """A per-channel vector shaped to broadcast over axis 1 of a rank-`rank` tensor."""
    return vec.reshape((-1,) + (1,) * (rank - 2))


def _scaled(rw: Rewriter, nid: int, s: torch.Tensor, t: torch.Tensor):
    """New graph nodes computing (old node nid) * s (+ t, where a bias takes it in) over
    channel axis 1, without multiplying anything secret: (new id, whether t is included),
    or None when the node is not of a foldable form."""
    node = rw.old[nid]
    if len(rw.users[nid]) != 1:
        return None
    rank = len(node.shape)
    if node.op == "conv2d" and rank == 4 and rw.is_param(node.inputs[1]):
        w = rw.old[node.inputs[1]]
        new_w = rw.param(rw.value(w.id) * s.reshape(-1, 1, 1, 1), w.name, w.source)
        return rw.add("conv2d", [rw[node.inputs[0]], new_w], node.attrs, node), False
    if node.op == "matmul" and rank == 2 and len(rw.old[node.inputs[1]].shape) == 2 and rw.is_param(node.inputs[1]):
        w = rw.old[node.inputs[1]]
        new_w = rw.param(rw.value(w.id) * s.reshape(1, -1), w.name, w.source)
        return rw.add("matmul", [rw[node.inputs[0]], new_w], node.attrs, node), False
    if node.op == "add":
        for bias, other in (node.inputs, node.inputs[::-1]):
            if not rw.is_param(bias):
                continue
            inner = _scaled(rw, other, s, t)
            if inner is None or inner[1]:
                return None
            b = rw.old[bias]
            # (y + b) * s + t = y * s + (b * s + t): the new bias (b - mean) * s + beta
            new_b = rw.param(rw.value(bias) * _channel_view(s, rank) + _channel_view(t, rank), b.name, b.source)
            return rw.add("add", [inner[0], new_b], {}, node), True
        return None
    if node.op == "reshape":
        src = rw.old[node.inputs[0]]
        if len(src.shape) < 2 or rank < 2 or src.shape[:2] != node.shape[:2]:
            return None
        inner = _scaled(rw, src.id, s, t)
        if inner is None:
            return None
        return rw.add("reshape", [inner[0]], node.attrs, node), inner[1]
    return None


def apply(graph: ModelGraph) -> ModelGraph:
    def visit(rw: Rewriter, node):
        if node.op != "batch_norm":
            return None
        s, t = _affine(rw, node)
        rank = len(node.shape)
        x = node.inputs[0]
        folded = _scaled(rw, x, s, t)
        if folded is not None and folded[1]:
            return folded[0]
        shift = rw.param(_channel_view(t, rank), f"{node.name or 'batch_norm'}.shift", node.source)
        if folded is not None:
            return rw.add("add", [folded[0], shift], {}, node)
        scale = rw.param(_channel_view(s, rank), f"{node.name or 'batch_norm'}.scale", node.source)
        return rw.add("add", [rw.add("mul", [rw[x], scale], {}, node), shift], {}, node)

    return Rewriter(graph).run(visit)


def apply_secret(graph: ModelGraph) -> ModelGraph:
    """Every eval-mode BatchNorm as y = (x - mean) s + beta on shares, s = gamma / sqrt(var + eps)."""
    def visit(rw: Rewriter, node):
        if node.op != "batch_norm":
            return None
        x, gamma, beta, mean, var = (rw[i] for i in node.inputs)
        view = {"shape": (1, node.shape[1]) + (1,) * (len(node.shape) - 2)}
        gain = 2.0 ** -batch_norm.GAIN_BITS
        shifted = rw.add("add_public", [var], {"value": torch.tensor(node.attrs["eps"], dtype=torch.float64)}, node)
        inv = rw.add("inv_sqrt_wide", [shifted], {"gain_bits": batch_norm.GAIN_BITS}, node)  # 2^gain / sqrt(var + eps)
        product = rw.add("mul", [gamma, inv], {"truncate": False}, node)
        s = rw.add("rescale", [product], {"value": gain, "bits": train_ops.factor_bits(gain, rw.new.frac_bits)}, node)
        centred = rw.add("sub", [x, rw.add("reshape", [mean], view, node)], {}, node)
        scaled = rw.add("mul", [centred, rw.add("reshape", [s], view, node)], {}, node)
        return rw.add("add", [scaled, rw.add("reshape", [beta], view, node)], {}, node)

    return Rewriter(graph).run(visit)
