"""Range reduction: sqrt, 1/sqrt and 1/x over wide ranges, by scaling x into the range where the
iterations of approx.py are accurate and scaling the result back.

approx.sqrt and approx.inv_sqrt are accurate for x in [0.1, 100] and
approx.reciprocal_positive for x in [0.01, 256]; Adam's second moment and its square root
leave those ranges as soon as gradients grow, and so do the variances of raw features. As
in Catrina and Saxena ("Secure computation with fixed-point numbers", FC 2010), x is normalised to a fixed interval, the iteration runs there, and the scale is
undone; instead of their bit decomposition (the exact power of two), coarse bands of a
factor 2^8 are found with one batched comparison, since the iterations tolerate an
interval of that width:

  1. one comparison (4 rounds) of x against every public threshold t_k = low 2^(8k),
     k = k_min + 1 .. k_max (and 2^-f, below which x counts as 0), with z_k = x - t_k as
     its own payload: bits b_k = [x >= t_k] and products b_k x = b_k z_k + t_k b_k, no
     round and no opening of their own;
  2. the band of x as a one-hot o_k = b_k - b_(k+1) (b_(k_min) = 1, b_(k_max + 1) = 0) and
     x o_k, both linear in what step 1 gave; x' = x 2^(-8k) = sum_k x o_k 2^(8 (k_max - k))
     / 2^(8 k_max): public integer factors and one truncation (1 round), x' in
     [low, 2^8 low) (the outer bands reach further: see each function's range);
  3. the iteration on x';
  4. the scale back, f(x) = f(x') c^k, as one product with the ring integer
     K = sum_k o_k c^(k - k_min) (exact: no truncation of its own) and one truncation by
     the bits of c^(-k_min) that K carries too many (2 rounds).
"""

from __future__ import annotations

import torch

from mpc.protocols import approx, correlations
from mpc.protocols.arithmetic import _beaver, truncate
from mpc.protocols.base import PartyContext
from mpc.protocols.compare import compare

BAND_BITS = 8  # each band spans a factor 2^8: within the iterations' accurate ranges


def _bands(ctx: PartyContext, x: torch.Tensor, low: float, k_min: int, k_max: int):
    """(o, x'): the one-hot band o (k_max - k_min + 2, *x.shape) of x as ring integers, and
    x' = x 2^(-8k) at scale f for its band k. Steps 1 and 2 above: 5 rounds.

    Band 0 of o holds x <= 0 (one more threshold, at one unit in the last place): there
    x' = low, a harmless value, and the callers scale back by 0. Rounding can leave a
    value that is 0 in exact arithmetic a unit below it, and x 2^(-8 k_min) of such an x
    would send the iterations far outside their range."""
    if not k_min < 0 < k_max:
        raise ValueError(f"bands {k_min}..{k_max} must straddle 0")
    f = ctx.frac_bits
    units = [1] + [round(low * 2.0 ** (BAND_BITS * k + f)) for k in range(k_min + 1, k_max + 1)]
    thresholds = torch.stack([ctx.public(torch.full_like(x, u)) for u in units])
    z = x.unsqueeze(0) - thresholds
    # b x = b z + b t: z rides on the comparison's own opening, and t is public (shares of b
    # times the ring integer t are shares of b t), so x need not be opened beside z
    b, (bz,) = yield from compare(ctx, z, "ge", (z,))
    b = b.view(z.shape)
    bx = bz + b * torch.tensor(units, dtype=torch.int64, device=x.device).view((-1,) + (1,) * x.dim())
    one, zero = ctx.public(torch.ones_like(x)).unsqueeze(0), torch.zeros_like(x).unsqueeze(0)
    onehot = torch.cat([one, b]) - torch.cat([b, zero])  # [x <= 0], then bands k_min .. k_max
    x_band = (torch.cat([x.unsqueeze(0), bx]) - torch.cat([bx, zero]))[1:]  # x o_k, k = k_min .. k_max
    shape = (-1,) + (1,) * x.dim()
    up = torch.tensor([1 << (BAND_BITS * (k_max - k)) for k in range(k_min, k_max + 1)], dtype=torch.int64,
                      device=x.device).view(shape)
    scaled = (x_band * up).sum(0) + onehot[0] * round(low * 2.0 ** (f + BAND_BITS * k_max))
    x_prime = yield from truncate(ctx, scaled, BAND_BITS * k_max)
    return onehot, x_prime


def _scale_back(ctx: PartyContext, y: torch.Tensor, onehot: torch.Tensor, factors: list[int], shift: int):
    """y * sum_k o_k factors[k] (a ring integer: exact), truncated by `shift` bits. 2 rounds."""
    shape = (-1,) + (1,) * y.dim()
    k = (onehot * torch.tensor(factors, dtype=torch.int64, device=y.device).view(shape)).sum(0)
    z = yield from _beaver(ctx, correlations.mul_triple(y.shape, k.shape), torch.mul, y, k)
    return (yield from truncate(ctx, z, shift)) if shift else z


def sqrt_wide(ctx: PartyContext, x: torch.Tensor):
    """sqrt(x) for x in [2^-16, 2^30) (every positive encodable value at f = 16); 0 for x <= 0.

    Bands k = -2..3 with x' = x 2^(-8k) in [0.2, 51.2) ([1, 51.2) for the lowest band,
    whose x >= 2^-16; [0.2, 64) for the highest, whose x < 2^30), inside approx.sqrt's
    [0.1, 100]; sqrt(x) = sqrt(x') 16^k = sqrt(x') K / 16^2 with K = sum_k o_k 16^(k + 2).
    Rounds 5 + 46 + 2 = 53 (approx.sqrt alone: 46)."""
    k_min, k_max = -2, 3
    onehot, x_prime = yield from _bands(ctx, x, 0.2, k_min, k_max)
    root = yield from approx.sqrt(ctx, x_prime)
    half = BAND_BITS // 2
    factors = [0] + [1 << (half * (k - k_min)) for k in range(k_min, k_max + 1)]
    return (yield from _scale_back(ctx, root, onehot, factors, half * -k_min))


def reciprocal_wide(ctx: PartyContext, x: torch.Tensor):
    """1/x for x in [2^-16, 2^16); 0 for x <= 0 (no blow-up: see _bands).

    Bands k = -2..1 with x' = x 2^(-8k) in [0.5, 128) ([1, 128) for the lowest band;
    [0.5, 256) for the highest), inside approx.reciprocal_positive's [0.01, 256], which
    returns 1/x' at scale 2^-24 so that multiplying it by up to 2^16 loses no bits;
    1/x = (1/x') 2^(-8k) = (1/x') K / 2^8 with K = sum_k o_k 2^(8 (1 - k)).
    Rounds 5 + 58 + 2 = 65 (approx.reciprocal_positive alone: 58)."""
    k_min, k_max = -2, 1
    onehot, x_prime = yield from _bands(ctx, x, 0.5, k_min, k_max)
    scale = 24
    inv = yield from approx.reciprocal_positive(ctx, x_prime, out_scale=scale)
    factors = [0] + [1 << (BAND_BITS * (k_max - k)) for k in range(k_min, k_max + 1)]
    return (yield from _scale_back(ctx, inv, onehot, factors, scale - ctx.frac_bits + BAND_BITS * k_max))


def inv_sqrt_wide(ctx: PartyContext, x: torch.Tensor, gain_bits: int = 0):
    """2^gain_bits / sqrt(x) for x in [2^-16, 2^30); 0 for x <= 0.

    Bands as sqrt_wide (x' in [0.2, 64)), inside approx.inv_sqrt's [0.1, 100], which
    returns 1/sqrt(x') at scale 2^-24; 1/sqrt(x) = (1/sqrt(x')) 16^(-k) = (1/sqrt(x')) K / 16^3
    with K = sum_k o_k 16^(3 - k). A gain keeps significant bits of a small result (a
    large x) that the scale 2^-f would round away; the caller divides it out after its
    product. Rounds 5 + 44 + 2 = 51 (approx.inv_sqrt alone: 44)."""
    k_min, k_max = -2, 3
    onehot, x_prime = yield from _bands(ctx, x, 0.2, k_min, k_max)
    scale = 24
    inv = yield from approx.inv_sqrt(ctx, x_prime, out_scale=scale)
    half = BAND_BITS // 2
    factors = [0] + [1 << (half * (k_max - k)) for k in range(k_min, k_max + 1)]
    return (yield from _scale_back(ctx, inv, onehot, factors, scale - ctx.frac_bits + half * k_max - gain_bits))
