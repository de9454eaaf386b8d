"""A layer's forward and backward products from one set of Beaver masks (SecureML §4.2).

Training computes, for a layer z = x @ w, the forward product and, in the same step, the
backward products dx = g @ w^T and dw = x^T @ g with the upstream gradient g. With
independent triples the backward opens w^T - b', g - d' (for dx) and x^T - a'', g - d''
(for dw) again, although x - a and w - b were opened a moment earlier. Mohassel and
Zhang (SecureML, IEEE S&P 2017, §4.2, matrix-multiplication triples) reuse the masked
matrices: the dealer makes one correlation (a, b, d, c = a b, c' = d b^T, c'' = a^T d)
with the *same* a and b in all three products (correlations.matmul_train_triple), and the
backward opens only g - d. Masks are never reused across steps: each step's forward
product is its own node with its own correlation, so an opened w - b reveals nothing
about the update w' - w (reusing b in the next step would open w' - b and so reveal it).
"""

from __future__ import annotations

import torch

from mpc import ring
from mpc.protocols import correlations
from mpc.protocols.arithmetic import truncate
from mpc.protocols.base import Open, PartyContext, Randomness, gather


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-2, -1)


def matmul_keep(ctx: PartyContext, x: torch.Tensor, w: torch.Tensor, dx: bool, dw: bool, scaled: bool = True):
    """[x @ w], keeping what the backward products need.

    1. obtain [a], [b], [d], [c] = [a b], and [c'] = [d b^T] if dx, [c''] = [a^T d] if dw.
    2. open e = x - a and f = w - b together (one round).
    3. z_i = c_i + e b_i + x_i f; the sum is (a + e)(b + f) = x w (as arithmetic._beaver);
       truncated unless not scaled.
    Returns (z, e, f, a_i, b_i, d_i, c'_i, c''_i): e and f are public (the same at every
    party), the rest this party's shares; c' or c'' not asked for is an empty tensor.
    """
    a, b, d, c, c1, c2 = yield Randomness(correlations.matmul_train_triple(x.shape, w.shape, dx, dw))
    e, f = yield Open((x - a, w - b))
    z = c + ring.matmul(e, b) + ring.matmul(x, f)
    if scaled:
        z = yield from truncate(ctx, z)
    return z, e, f, a, b, d, c1, c2


def matmul_backward(ctx: PartyContext, g: torch.Tensor, e, f, a, b, d, c1, c2, dx: bool, dw: bool,
                    scale_dx: bool = True, scale_dw: bool = True):
    """[g @ w^T] (if dx) and [x^T @ g] (if dw) from the masks of matmul_keep, x = a + e, w = b + f.

    1. open h = g - d (one round; nothing else is opened: e and f are known).
    2. dx_i = c'_i + h b_i^T + g_i f^T; the sum is d b^T + h b^T + (d + h) f^T = g w^T.
    3. dw_i = c''_i + a_i^T h + e^T g_i; the sum is a^T d + a^T h + e^T (d + h) = x^T g.
    4. truncate each one asked to be scaled; both truncations share one round.
    Returns (dx, dw), an empty tensor for one not asked for.
    """
    (h,) = yield Open((g - d,))
    outs, scaled = [], []
    if dx:
        outs.append(c1 + ring.matmul(h, _t(b)) + ring.matmul(g, _t(f)))
        scaled.append(scale_dx)
    if dw:
        outs.append(c2 + ring.matmul(_t(a), h) + ring.matmul(_t(e), g))
        scaled.append(scale_dw)
    pending = [k for k, s in enumerate(scaled) if s]
    if pending:
        done = yield from gather(*(truncate(ctx, outs[k]) for k in pending))
        for k, v in zip(pending, done):
            outs[k] = v
    empty = g.new_empty((0,))
    it = iter(outs)
    return (next(it) if dx else empty), (next(it) if dw else empty)
