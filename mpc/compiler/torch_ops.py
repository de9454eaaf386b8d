"""Registry entries that the torch vocabulary of secret tensors needs: square and sum-pooling.

`square` opens one masked value (a square pair) where `x * x` through `mul` would open two
(a triple), so `x ** 2`, `x.square()`, `var`, `std` and `norm` send half the bytes of a
product in the same 2 rounds (opening, then truncation). `sum_pool2d` is the local half of
`F.avg_pool2d`: every party sums its own shares over each window (a convolution with a
kernel of integer ones, which needs no truncation); the caller multiplies by the public
1/(kh*kw), one truncation. Registered on import by mpc.compiler.
"""

from __future__ import annotations

import torch

from mpc import ring
from mpc.compiler.registry import local, register
from mpc.protocols import arithmetic


def _square(ctx, a, x):
    z = yield from arithmetic.square(ctx, x)
    # attrs["truncate"] = False: revealed at once, the recipient decodes at 2^2f (passes/truncation.py)
    return (yield from arithmetic.truncate(ctx, z)) if a.get("truncate", True) else z


register("square", 1, lambda a, x: x, _square, doc="x * x from a square pair: 2 rounds")


def _pool_args(a):
    return tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"])


def _sum_pool2d(a, x):
    """Window sums over the last two dims of a (N, C, H, W) or (C, H, W) tensor: a grouped
    convolution with ones, so each channel is pooled on its own, exactly (integer kernel)."""
    if x.dim() not in (3, 4):
        raise ValueError(f"avg_pool2d expects a 3-d or 4-d input, got {x.dim()}-d")
    kernel, stride, padding = _pool_args(a)
    if any(2 * p > k for p, k in zip(padding, kernel)):
        raise ValueError(f"padding {padding} should be at most half of kernel size {kernel}")
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, *x.shape[-2:])
    ones = torch.ones((1, 1, *kernel), dtype=torch.int64, device=x.device)
    out = ring.conv2d(flat, ones, stride, padding)
    return out.reshape(*lead, *out.shape[-2:])


local("sum_pool2d", 1, _sum_pool2d, doc="window sums (avg_pool2d before its 1/k^2): local, no rounds")
