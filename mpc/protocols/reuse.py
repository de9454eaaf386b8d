"""A layer's forward and backward products from one set of Beaver masks (SecureML §4.2).

Training computes, for a layer z = B(x, w) (B a matmul or a convolution of any stride), the
forward product and, in the same step, the backward products dx = Bx(g, w) (g @ w^T for a
matmul) and dw = Bw(x, g) (x^T @ g) with the upstream gradient g. With independent triples
the backward opens w - b', g - d' (for dx) and x - a'', g - d'' (for dw) again, although
x - a and w - b were opened a moment earlier. Mohassel and Zhang (SecureML, IEEE S&P 2017,
§4.2, matrix-multiplication triples) reuse the masked matrices: the dealer makes one
correlation (a, b, d, c = B(a, b), c' = Bx(d, b), c'' = Bw(a, d)) with the *same* a and b
in all three products (correlations.bilinear_train_triple), and the backward opens only
g - d. The same algebra holds for any bilinear B, so convolutions reuse their masks too.
Masks are never reused across steps: each step's forward product is its own node with its
own correlation, so an opened w - b reveals nothing about the update w' - w (reusing b in
the next step would open w' - b and so reveal it).
"""

from __future__ import annotations

import torch

from mpc.protocols import bilinear, correlations
from mpc.protocols.arithmetic import truncate
from mpc.protocols.base import Open, PartyContext, Randomness, gather


def bilinear_keep(ctx: PartyContext, x: torch.Tensor, w: torch.Tensor, dx: bool, dw: bool, conv=None,
                  scaled: bool = True):
    """[B(x, w)] (matmul, or conv2d with conv = (stride, padding, dilation, groups)), keeping
    what the backward products need.

    1. obtain [a], [b], [d], [c] = [B(a, b)], and [c'] = [Bx(d, b)] if dx, [c''] = [Bw(a, d)] if dw.
    2. open e = x - a and f = w - b together (one round).
    3. z_i = c_i + B(e, b_i) + B(x_i, f); the sum is B(a + e, b + f) = B(x, w) (as
       arithmetic._beaver); truncated unless not scaled.
    Returns (z, e, f, a_i, b_i, d_i, c'_i, c''_i): e and f are public (the same at every
    party), the rest this party's shares; c' or c'' not asked for is an empty tensor.
    """
    spec = correlations.bilinear_train_triple(x.shape, w.shape, dx, dw, conv)
    op, _, _ = bilinear.train_forms(spec)
    a, b, d, c, c1, c2 = yield Randomness(spec)
    e, f = yield Open((x - a, w - b))
    z = c + op(e, b) + op(x, f)
    if scaled:
        z = yield from truncate(ctx, z)
    return z, e, f, a, b, d, c1, c2


def bilinear_backward(ctx: PartyContext, g: torch.Tensor, e, f, a, b, d, c1, c2, dx: bool, dw: bool, conv=None,
                      scale_dx: bool = True, scale_dw: bool = True):
    """[Bx(g, w)] (if dx) and [Bw(x, g)] (if dw) from the masks of bilinear_keep, x = a + e,
    w = b + f. Both are bilinear, which is all the steps use:

    1. open h = g - d (one round; nothing else is opened: e and f are known).
    2. dx_i = c'_i + Bx(h, b_i) + Bx(g_i, f); the sum is Bx(d, b) + Bx(h, b) + Bx(d + h, f)
       = Bx(g, w).
    3. dw_i = c''_i + Bw(a_i, h) + Bw(e, g_i); the sum is Bw(a, d) + Bw(a, h) + Bw(e, d + h)
       = Bw(x, g).
    4. truncate each one asked to be scaled; both truncations share one round.
    Returns (dx, dw), an empty tensor for one not asked for.
    """
    _, bx, bw = bilinear.train_forms(correlations.bilinear_train_triple(e.shape, f.shape, dx, dw, conv))
    (h,) = yield Open((g - d,))
    outs, scaled = [], []
    if dx:
        outs.append(c1 + bx(h, b) + bx(g, f))
        scaled.append(scale_dx)
    if dw:
        outs.append(c2 + bw(a, h) + bw(e, g))
        scaled.append(scale_dw)
    pending = [k for k, s in enumerate(scaled) if s]
    if pending:
        done = yield from gather(*(truncate(ctx, outs[k]) for k in pending))
        for k, v in zip(pending, done):
            outs[k] = v
    empty = g.new_empty((0,))
    it = iter(outs)
    return (next(it) if dx else empty), (next(it) if dw else empty)
