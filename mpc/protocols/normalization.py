"""Batch normalisation in training mode: a batch's statistics and the normalised values, on shares.

BatchNorm (Ioffe and Szegedy, "Batch normalization", ICML 2015, Algorithm 1) normalises
each channel (dim 1) of x with the mean and the biased variance of its m = numel / C
values in the batch, then applies a learnt scale gamma and shift beta. The backward pass
(compiler/grads.py) needs the normalised x_hat and 1/sqrt(var + eps) again, so the
protocol returns them beside y; the training compiler updates the running statistics
from the returned mean and variance.

Two precision points, both measured against torch in tests/test_batch_norm.py:
- a mean over m values is sum / m, but 1/m encoded with f bits (scale_public) has only
  f - log2(m) significant bits: at m = 576 the factor is 0.2% off. `mean_of` first
  shifts the sum right by floor(log2 m) bits, then multiplies by 2^j / m in (1/2, 1]
  encoded with 24 significant bits (16 for a variance): for any m, the mean of 576 values
  around 100 is within 4 units in the last place.
- 1/sqrt(var + eps) uses the range-reduced inverse square root (ranges.inv_sqrt_wide,
  Catrina and Saxena's normalisation, FC 2010), right for var + eps in [2^-16, 2^30),
  with a gain of 2^gain_bits so that a large variance's small result keeps its bits, as
  the secure normalisation of shared data does (mpc/training.py `_normalized`).
"""

from __future__ import annotations

import torch

from mpc import ring
from mpc.protocols import arithmetic, ranges
from mpc.protocols.arithmetic import truncate
from mpc.protocols.base import PartyContext

# Significant bits of the public factor 2^j / m in mean_of: a mean is subtracted from every
# value (its absolute error counts: 24 bits, 2^-24 relative), a variance only scales them (its
# relative error counts: 16 bits leave variances up to 2^29, inv_sqrt_wide's range).
MEAN_BITS, VAR_BITS = 24, 16


def mean_of(ctx: PartyContext, s: torch.Tensor, m: int, bits: int):
    """s / m for a sum s of m values (public m >= 1). 2 rounds (none for m = 1; 1 when m is a
    power of two, where the shift is the whole division).

    1. truncate s by j = floor(log2 m) bits: s' = s 2^-j, with |s'| < 2 |s / m|;
    2. multiply by the integer F = round(2^(j + bits) / m) in [2^(bits - 1), 2^bits] and
       truncate by `bits`.
    The error is 2^-bits of the mean plus 2 units in the last place (the truncations). Step 1
    keeps step 2 inside the truncation's range (|s' F| < 2^62) for means below 2^(61 - f -
    bits) in magnitude whatever m; one truncation of s times F would need |s| = m |mean| below
    that instead."""
    j = m.bit_length() - 1
    if j:
        s = yield from truncate(ctx, s, j)
    factor = round((1 << (j + bits)) / m)
    if factor == 1 << bits:
        return s
    return (yield from truncate(ctx, s * factor, bits))


def batch_norm_train(ctx: PartyContext, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float,
                     gain_bits: int):
    """(y, x_hat, inv, mean, var) of BatchNorm in training mode on shares of x (N, C, ...),
    gamma and beta (C,): mean and var (biased) over every dim but 1, x_hat = (x - mean) /
    sqrt(var + eps), y = gamma x_hat + beta, inv = 2^gain_bits / sqrt(var + eps).

    1. mean = mean_of(sum of x over the m values of each channel) (local sum; 2 rounds);
    2. xc = x - mean (local); var = mean_of(sum of xc^2) (square pair and its truncation,
       then mean_of: 4 rounds);
    3. inv = 2^gain / sqrt(var + eps) (ranges.inv_sqrt_wide: 51 rounds);
    4. x_hat = xc inv, one Beaver product truncated once by f + gain (2 rounds);
    5. y = gamma x_hat + beta (one product and its truncation: 2 rounds).
    Valid at f = 16 while |mean| < 2^21 (mean_of), |x - mean| < 2^15 (the squares'
    truncation needs xc^2 2^2f < 2^62) and var + eps lies in [2^-16, 2^29) (mean_of with 16
    bits, and inv_sqrt_wide); where var + eps rounds to 0, inv = 0 and so x_hat = 0, as
    xc = 0 there."""
    c = x.shape[1]
    dims = (0, *range(2, x.dim()))
    m = x.numel() // c
    view = (1, c) + (1,) * (x.dim() - 2)
    mean = yield from mean_of(ctx, x.sum(dims), m, MEAN_BITS)
    xc = x - mean.view(view)
    sq = yield from arithmetic.square(ctx, xc)
    sq = yield from truncate(ctx, sq)
    var = yield from mean_of(ctx, sq.sum(dims), m, VAR_BITS)
    shifted = var + ctx.public(ring.encode(torch.tensor(eps, dtype=torch.float64), ctx.frac_bits)).to(var.device)
    inv = yield from ranges.inv_sqrt_wide(ctx, shifted, gain_bits)
    z = yield from arithmetic.mul(ctx, xc, inv.view(view), scaled=False)
    x_hat = yield from truncate(ctx, z, ctx.frac_bits + gain_bits)
    y = yield from arithmetic.mul(ctx, x_hat, gamma.view(view))
    return y + beta.view(view), x_hat, inv, mean, var
