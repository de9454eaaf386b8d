"""Functions built on one comparison: relu, sign, abs, comparisons, clamp, max and pooling.

Every function here is a single call of compare.compare (4 rounds), with whatever it
must multiply by the comparison bit passed as a payload, so that the product costs no
round of its own. Results are fixed-point (comparisons give 0.0 / 1.0, as CrypTen does).
Reductions are trees over the reduced dimension, one comparison per level for all pairs
of the level: 4 * ceil(log2 n) rounds. Ties go to the lower index, as in torch.
"""

from __future__ import annotations

import torch

from mpc.protocols.base import PartyContext
from mpc.protocols.compare import compare


def _fixed(ctx: PartyContext, bit: torch.Tensor) -> torch.Tensor:
    return bit * (1 << ctx.frac_bits)


def _one(ctx: PartyContext, like: torch.Tensor) -> torch.Tensor:
    return ctx.public(torch.full_like(like, 1 << ctx.frac_bits))


def relu(ctx: PartyContext, x: torch.Tensor):
    """max(x, 0) = [x >= 0] * x, the product riding on the comparison. 4 rounds."""
    _, (out,) = yield from compare(ctx, x, "ge", (x,))
    return out


def abs_(ctx: PartyContext, x: torch.Tensor):
    """|x| = 2 [x >= 0] x - x. 4 rounds."""
    _, (bx,) = yield from compare(ctx, x, "ge", (x,))
    return 2 * bx - x


def sign(ctx: PartyContext, x: torch.Tensor):
    """torch.sign: [x > 0] - [x < 0] = [x >= 0] - [-x >= 0] (0 at 0; CrypTen gives 1 there).
    Both tests in one comparison of twice the size. 4 rounds."""
    b, _ = yield from compare(ctx, torch.stack([x, -x]), "ge")
    return _fixed(ctx, b[0] - b[1])


def compare_op(ctx: PartyContext, x: torch.Tensor, y: torch.Tensor, op: str):
    """x <op> y for op in ge, gt, le, lt, eq, ne, as fixed-point 0/1. 4 rounds.

    Differences are exact ring integers, so x > y is [y - x < 0] = 1 - [y - x >= 0]."""
    if op in ("eq", "ne"):
        b, _ = yield from compare(ctx, x - y, "eq")
    elif op in ("ge", "lt"):
        b, _ = yield from compare(ctx, x - y, "ge")
    elif op in ("le", "gt"):
        b, _ = yield from compare(ctx, y - x, "ge")
    else:
        raise ValueError(f"unknown comparison {op!r}")
    out = _fixed(ctx, b)
    return _one(ctx, out) - out if op in ("ne", "lt", "gt") else out


def clamp(ctx: PartyContext, x: torch.Tensor, low: torch.Tensor | None, high: torch.Tensor | None):
    """min(max(x, low), high) = low + relu(x - low) - relu(x - high), low <= high
    (shares of the bounds, public or secret). Both ReLUs in one comparison. 4 rounds."""
    zs = []
    if low is not None:
        zs.append(x - low)
    if high is not None:
        zs.append(x - high)
    if not zs:
        return x
    z = torch.stack([t.expand(x.shape) if t.shape != x.shape else t for t in zs])
    _, (r,) = yield from compare(ctx, z, "ge", (z,))
    if low is not None and high is not None:
        return low + r[0] - r[1]
    if low is not None:
        return low + r[0]
    return x - r[0]  # min(x, high) = x - relu(x - high)


def max_(ctx: PartyContext, x: torch.Tensor, dim: int, keepdim: bool, with_argmax: bool, exact: bool = False):
    """Max over `dim` by a tree of pairwise steps max(u, v) = v + [u - v >= 0] (u - v).

    With `with_argmax`, each step also selects one-hot rows: oh = oh_v + b (oh_u - oh_v),
    both products riding on the step's comparison. Returns (max, one-hot or None); the
    one-hot is fixed-point, or with `exact` a 0/1 ring integer (a product with it then
    needs no truncation: the max-pool gradient). Rounds 4 * ceil(log2 n); bytes per
    level 26 (+ 16 n for the one-hot) per pair at N = 3."""
    n = x.shape[dim]
    if n == 0:
        raise ValueError("max over an empty dimension")
    v = x.movedim(dim, -1)
    oh = None
    if with_argmax:
        unit = 1 if exact else 1 << ctx.frac_bits
        eye = ctx.public(torch.eye(n, dtype=torch.int64, device=x.device) * unit)
        oh = eye.expand(v.shape + (n,)).clone()
    while v.shape[-1] > 1:
        m = v.shape[-1]
        pairs = m // 2
        u, w = v[..., 0:2 * pairs:2], v[..., 1:2 * pairs:2]
        z = u - w
        payloads = (z,)
        if oh is not None:
            ou, ow = oh[..., 0:2 * pairs:2, :], oh[..., 1:2 * pairs:2, :]
            payloads = (z, ou - ow)
        _, products = yield from compare(ctx, z, "ge", payloads)
        new_v = w + products[0]
        new_oh = ow + products[1] if oh is not None else None
        if m % 2:
            new_v = torch.cat([new_v, v[..., -1:]], dim=-1)
            if oh is not None:
                new_oh = torch.cat([new_oh, oh[..., -1:, :]], dim=-2)
        v, oh = new_v, new_oh
    out = v.movedim(-1, dim)
    if oh is not None:
        oh = oh[..., 0, :].movedim(-1, dim)  # one-hot along the reduced dimension
    if not keepdim:
        out = out.squeeze(dim)
    return out, oh


def _windows(ctx: PartyContext, x: torch.Tensor, kernel, stride, padding) -> torch.Tensor:
    """The pooling windows of x as (..., oh, ow, kh * kw): a local unfold. Padding holds
    -2^(62-2f), the most negative encodable value, below every input."""
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    if ph or pw:
        pad = torch.nn.functional.pad(x, (pw, pw, ph, ph), value=0)
        if ctx.is_first:  # party 0 holds the public padding value
            inside = torch.nn.functional.pad(torch.ones_like(x, dtype=torch.bool), (pw, pw, ph, ph), value=False)
            pad = torch.where(inside, pad, torch.full_like(pad, -(1 << (62 - ctx.frac_bits))))
        x = pad
    windows = x.unfold(-2, kh, sh).unfold(-2, kw, sw)  # (..., oh, ow, kh, kw)
    return windows.reshape(*windows.shape[:-2], kh * kw)


def max_pool2d(ctx: PartyContext, x: torch.Tensor, kernel, stride, padding):
    """torch.nn.functional.max_pool2d over (N, C, H, W) (or (C, H, W)): windows are a
    local unfold, then a max tree over each window (4 * ceil(log2 kh*kw) rounds)."""
    out, _ = yield from max_(ctx, _windows(ctx, x, kernel, stride, padding), -1, False, False)
    return out


def max_pool2d_argmax(ctx: PartyContext, x: torch.Tensor, kernel, stride, padding):
    """max_pool2d and, from the same comparisons, the one-hot position of each window's
    first maximum as 0/1 ring integers shaped (..., oh, ow, kh * kw): what the gradient
    routes g to (torch's choice among ties, the lowest index). Same rounds as max_pool2d;
    the one-hot adds 8 (kh kw) bytes per pair and level at N = 3 (the tree's payloads)."""
    out, oh = yield from max_(ctx, _windows(ctx, x, kernel, stride, padding), -1, False, True, exact=True)
    return out, oh


def argmax(ctx: PartyContext, x: torch.Tensor, dim: int, keepdim: bool, one_hot: bool):
    """The position of the first maximum: one-hot along `dim` (fixed-point, as CrypTen
    returns it) or the index itself, sum_i i * onehot_i (a local step)."""
    _, oh = yield from max_(ctx, x, dim, True, True)
    if one_hot:
        return oh
    n = x.shape[dim]
    shape = [1] * x.dim()
    shape[dim] = n
    index = (oh * torch.arange(n, dtype=torch.int64, device=x.device).view(shape)).sum(dim=dim, keepdim=keepdim)
    return index
