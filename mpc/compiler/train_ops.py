"""Registry entries that training needs: ReLU with its comparison bit, rows by public
index, and a product rescaled by a public factor in the same truncation.

- `relu_bit` returns (relu(x), [x >= 0]) from one comparison (4 rounds): the bit is an
  exact 0/1 ring integer, so the backward product g * bit needs no truncation.
- `gather_rows(x, idx)`: rows of a kept data set picked by public indices (a batch):
  local, no communication.
- `rescale(x)`: x is an untruncated product (scale 2^2f); multiply by the public factor
  c encoded with k bits and truncate once by f + k bits. The learning rate and 1/batch
  fold into the truncation that the weight gradient needed anyway (Mohassel and Zhang,
  SecureML, S&P 2017, fold the learning rate into the truncation the same way).
"""

from __future__ import annotations

import math

import torch

from mpc.compiler.registry import CompileError, register
from mpc.protocols import arithmetic, nonlinear

RESCALE_BITS = 20  # bits of the public factor of `rescale`; see factor_bits


def _relu_bit(ctx, a, x):
    bit, (out,) = yield from nonlinear.compare(ctx, x, "ge", (x,))
    return out, bit.view(x.shape)


register("relu_bit", 1, lambda a, x: (x, x), _relu_bit, n_outputs=2,
         doc="(relu(x), [x >= 0] as a 0/1 ring integer) from one comparison")


def _gather_shape(a, x, idx):
    if idx.dim() != 1:
        raise ValueError(f"row indices must be 1-d, got shape {tuple(idx.shape)}")
    return x.index_select(0, idx)


register("gather_rows", 2, _gather_shape, lambda ctx, a, x, idx: x.index_select(0, idx),
         doc="x[idx] for public row indices: local")


def _scatter(a, g):
    """The adjoint of basic indexing: zeros shaped like the indexed tensor, g at the index."""
    from mpc.compiler.ops import decode_index

    out = torch.zeros(a["shape"], dtype=g.dtype, device=g.device)
    out[decode_index(a["index"])] = g
    return out


register("scatter", 1, lambda a, g: _scatter(a, g), lambda ctx, a, g: _scatter(a, g),
         doc="zeros with g at a basic index (getitem's gradient): local")


def factor_bits(value: float, frac_bits: int) -> int:
    """Bits k with which `value` is encoded for `rescale`: enough for 20 significant bits,
    capped so that the product's scale 2^(2f + k) keeps clear of the ring (k <= 62 - 2f - 6)."""
    if value == 0:
        return 1
    k = RESCALE_BITS - math.floor(math.log2(abs(value))) - 1
    return max(1, min(k, 62 - 2 * frac_bits - 6))


def _rescale(ctx, a, x):
    k = a["bits"]
    factor = round(a["value"] * (1 << k))
    if factor == 0:
        raise CompileError(f"rescale factor {a['value']} is below 2^-{k}")
    return arithmetic.truncate(ctx, x * factor, bits=ctx.frac_bits + k)


register("rescale", 1, lambda a, x: x, _rescale,
         doc="(untruncated product) * public factor, truncated once by f + k bits")
