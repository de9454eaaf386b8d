"""Smooth functions by iteration: exp, reciprocal, log, inv_sqrt, sqrt, sigmoid, tanh,
softmax and log_softmax, from products, truncations and (for signs) one comparison.

Two things make these cheaper and more accurate than CrypTen's versions of the same
iterations (CrypTen: crypten/common/functions/approximations.py):
  - a product costs 2 rounds here (Beaver, then truncation), against about 3 there;
  - intermediate values live at a higher fixed-point scale where their range allows
    (up to 2^-30 instead of 2^-16), and truncation takes any shift, so scaling by
    powers of two and the final rescale fold into truncations that happen anyway.
Valid input ranges are stated per function; outside them results are wrong, not
errors (a secret value cannot be checked without a comparison). Rounds are for f = 16.
"""

from __future__ import annotations

import math

import torch

from mpc.protocols import correlations
from mpc.protocols.arithmetic import _beaver, square, truncate, truncate_square
from mpc.protocols.base import PartyContext, gather
from mpc.protocols.compare import compare
from mpc.protocols.nonlinear import max_

_HIGH = 30  # the highest internal scale: a product of two such values stays below 2^62
_RECIP_SCALE = 24  # scale of Newton iterates for 1/x; y * e < 2^14 keeps products in range
EXP_MAX = 20.0  # e^20 < 2^30, the largest encodable value
EXP_MIN = -256.0


def _const(ctx: PartyContext, like: torch.Tensor, value: float, scale: int) -> torch.Tensor:
    return ctx.public(torch.full_like(like, round(value * (1 << scale))))


def _rescale(ctx: PartyContext, x: torch.Tensor, src: int, dst: int):
    """Move x from scale 2^src to 2^dst: exact shift up, truncation (1 round) down."""
    if dst >= src:
        return x * (1 << (dst - src))
    return (yield from truncate(ctx, x, src - dst))


def _mul(ctx: PartyContext, x: torch.Tensor, y: torch.Tensor, shift: int):
    """x * y, then a truncation by `shift` bits (none when 0): 2 rounds (1 without).
    A square (x is y) opens one masked value instead of two."""
    if x is y:
        z = yield from square(ctx, x)
    else:
        z = yield from _beaver(ctx, correlations.mul_triple(x.shape, y.shape), torch.mul, x, y)
    if shift:
        z = yield from truncate(ctx, z, shift)
    return z


def _scale_public(ctx: PartyContext, x: torch.Tensor, factor: float, src: int, dst: int):
    """factor * x from scale src to dst, in one truncation."""
    bits = src + 16 - dst
    return (yield from truncate(ctx, x * round(factor * (1 << 16)), bits)) if bits else x * round(factor * (1 << 16))


def exp_scales(iters: int, x_max: float, frac_bits: int) -> list[int]:
    """Scale of the value entering each squaring step, and the output scale last.

    Step j squares v_j = e^{x / 2^(iters-j)}; the square of a value below 2^m at scale s
    stays below 2^62 when 2s + 2m <= 61, so early steps (values near 1) keep 30
    fractional bits and later ones fewer: their rounding errors are squared fewer times."""
    scales = []
    for j in range(iters):
        log2_v = max(x_max, 0.0) * 2.0 ** (j - iters) * math.log2(math.e)
        scales.append(min(_HIGH, int((61 - 2 * log2_v) // 2)))
    return scales + [frac_bits]


def exp(ctx: PartyContext, x: torch.Tensor, iters: int = 8, x_max: float = EXP_MAX, taps: tuple[int, ...] = (),
        out_scale: int | None = None):
    """e^x = p(x / 2^n)^(2^n), p(y) = 1 + y + y^2 / 2, n = 8 squarings.

    Valid for x in [-256, 20] (x_max lowers the top of the range for more precision);
    relative error below (x/256)^3 / 6 * 256 + 2^-14 (about 1e-4 at x = 4, where
    CrypTen's (1 + x/256)^256 is off by 3%); for x < -256, p(y) stops falling and the
    result is wrong. Rounds 2 + n = 10 (CrypTen: 27).
      1. x^2 by a square pair (round 1);
      2. p(y) = (2^(2f+2n+1) + 2^(f+n+1) x + x^2) / 2^k at the first step's scale s0 (k =
         2f + 2n + 1 - s0), one truncation that also gives p(y)^2 (truncate_square, round 2);
      3. n steps, each truncating the previous square to the next step's scale
         (exp_scales) and squaring it for free in the same round; the last only truncates.
    With taps, also returns {m: (e^(x / 2^m), its scale)} for each m in taps (1 <= m <= n),
    the intermediate powers the squarings pass through: a sum of terms e^(c x / 2^m) costs
    one exp. out_scale (f if not given)
    is the result's scale: a finer one keeps small results' relative precision.
    """
    f = ctx.frac_bits
    scales = exp_scales(iters, x_max, out_scale or f)
    s0 = scales[0]
    k = 2 * f + 2 * iters + 1 - s0
    if k < 1:
        raise ValueError(f"exp with {iters} squarings at f = {f}: the first scale 2^{s0} is too fine")
    x2 = yield from square(ctx, x)
    poly = x2 + x * (1 << (f + iters + 1))  # |x| <= 256: each term below 2^(2f + 2n + 1) = 2^49
    if ctx.is_first:
        poly += 1 << (2 * f + 2 * iters + 1)
    v, v2 = yield from truncate_square(ctx, poly, k)
    tapped = {iters: (v, scales[0])} if iters in taps else {}
    for j in range(iters):
        shift = 2 * scales[j] - scales[j + 1]
        if j < iters - 1:
            v, v2 = yield from truncate_square(ctx, v2, shift)
            if iters - 1 - j in taps:
                tapped[iters - 1 - j] = (v, scales[j + 1])
        else:
            v = yield from truncate(ctx, v2, shift)
    if taps:
        if set(taps) - set(tapped):
            raise ValueError(f"exp taps {sorted(set(taps) - set(tapped))} are not among 1..{iters}")
        return v, tapped
    return v


def _scaled_trunc(ctx: PartyContext, x: torch.Tensor, ratio: float, src: int, dst: int):
    """ratio * x from scale src to dst in one truncation, the ratio encoded with about 20
    significant bits (x * c must stay below 2^62: callers keep |x| * 2^src below 2^41)."""
    k = 20 - math.floor(math.log2(ratio))
    return (yield from truncate(ctx, x * round(ratio * (1 << k)), src + k - dst))


def exp_neg16(ctx: PartyContext, x: torch.Tensor):
    """e^x for x in [-16, 0] (sigmoid's e^-|x|): p(x / 16)^16 with p the degree-4 Taylor
    polynomial, 4 squarings instead of exp's 8. Absolute error below 4e-6 + rounding.
    Rounds 4 + 4 = 8 (exp: 10).
      1. open x - a of a square pair for x^2, and y/3 = x/48 by one truncation (round 1);
      2. y^2/2 and y^2/12 from x^2 by two truncations (round 2);
      3. y^3/6 = (y/3)(y^2/2) and y^4/24 = (y^2/2)(y^2/12), untruncated products (round 3);
      4. p = 1 + y + y^2/2 + y^3/6 + y^4/24, the products' truncation, squared in the
         same round (truncate_square, round 4);
      5. four steps, each truncating the previous square and squaring it (one round each).
    """
    f, s0, n = ctx.frac_bits, _HIGH, 4
    y = x * (1 << (s0 - f - n))  # x / 16 at scale 2^30: exact
    x2, y_3 = yield from gather(square(ctx, x), _scaled_trunc(ctx, x, 1 / 48, f, s0))
    h2, y2_12 = yield from gather(_scaled_trunc(ctx, x2, 1 / 512, 2 * f, s0),
                                  _scaled_trunc(ctx, x2, 1 / 3072, 2 * f, s0))
    p3, p4 = yield from gather(_beaver(ctx, correlations.mul_triple(y_3.shape, h2.shape), torch.mul, y_3, h2),
                               _beaver(ctx, correlations.mul_triple(h2.shape, y2_12.shape), torch.mul, h2, y2_12))
    low = _const(ctx, x, 1.0, s0) + y + h2  # at scale s0; lifted to 2 s0 exactly below
    v, v2 = yield from truncate_square(ctx, low * (1 << s0) + p3 + p4, s0)
    scales = exp_scales(n, 0.0, f)
    for j in range(n):
        shift = 2 * scales[j] - scales[j + 1]
        if j < n - 1:
            v, v2 = yield from truncate_square(ctx, v2, shift)
        else:
            v = yield from truncate(ctx, v2, shift)
    return v


def _newton_reciprocal(ctx: PartyContext, d: torch.Tensor, y: torch.Tensor, iters: int, out_scale: int):
    """Newton's y <- y (2 - d y) = y + y e, e = 1 - d y, from y (at _RECIP_SCALE) near 1/d.
    d is at scale f. The relative error squares each iteration. 4 rounds an iteration."""
    f, s = ctx.frac_bits, _RECIP_SCALE
    for k in range(iters):
        dy = yield from _mul(ctx, d, y, f)  # scale s
        e = _const(ctx, d, 1.0, s) - dy
        ye = yield from _beaver(ctx, correlations.mul_triple(y.shape, e.shape), torch.mul, y, e)  # scale 2s
        last = k == iters - 1
        y = yield from truncate(ctx, y * (1 << s) + ye, 2 * s - (out_scale if last else s))
    return y


def reciprocal_positive(ctx: PartyContext, x: torch.Tensor, out_scale: int | None = None):
    """1/x for x in [0.01, 256]: Newton from y0 = 3 e^(0.5 - x) + 0.003 (CrypTen's guess),
    10 iterations at scale 2^-24. Error about 2 units in the last place over
    [0.5, 10]. Rounds 10 + 40 = 50 (CrypTen's reciprocal: 104)."""
    f, s = ctx.frac_bits, _RECIP_SCALE
    t = yield from exp(ctx, _const(ctx, x, 0.5, f) - x, x_max=0.5)
    y0 = t * 3 * (1 << (s - f)) + _const(ctx, x, 0.003, s)
    return (yield from _newton_reciprocal(ctx, x, y0, 10, out_scale or f))


def reciprocal(ctx: PartyContext, x: torch.Tensor):
    """1/x for |x| in [0.01, 256], either sign: |x| and the sign bit b from one comparison,
    then 1/|x| and (2b - 1) / |x| = 2 b q - q (one product of a bit). Rounds 4 + 50 + 1 = 55."""
    b, (bx,) = yield from compare(ctx, x, "ge", (x,))
    q = yield from reciprocal_positive(ctx, 2 * bx - x)
    bq = yield from _beaver(ctx, correlations.mul_triple(b.shape, q.shape), torch.mul, b, q)
    return 2 * bq - q


def div(ctx: PartyContext, x: torch.Tensor, y: torch.Tensor):
    """x / y = x * (1 / y); the range of reciprocal applies to y. Rounds 57."""
    q = yield from reciprocal(ctx, y)
    return (yield from _mul(ctx, x, q, ctx.frac_bits))


def sigmoid(ctx: PartyContext, x: torch.Tensor):
    """1 / (1 + e^-x) for any x in the encoding range.

      1. one comparison of (x, x - 16, -16 - x) against 0, with payloads, gives
         b = [x >= 0] and a = |clamp(x, -16, 16)| (sigmoid(16) is within 2^-23 of 1);
      2. t = e^-a in (0, 1] (exp_neg16: a degree-4 polynomial and 4 squarings);
      3. q = 1 / (1 + t), 1 + t in [1, 2]: Newton from the minimax line 24/17 - 8/17 (1 + t)
         (relative error 1/17, after 2 iterations (1/17)^4 < 2^-16);
      4. sigmoid(x) = q for x >= 0 and 1 - q below: (1 - b) + 2 b q - q.
    Rounds 4 + 8 + 1 + 8 + 1 = 22 (CrypTen: 59)."""
    f, s = ctx.frac_bits, _RECIP_SCALE
    sixteen = _const(ctx, x, 16.0, f)
    z = torch.stack([x, x - sixteen, -sixteen - x])
    b, (bw,) = yield from compare(ctx, z, "ge", (z,))  # z itself: not opened again (compare.py)
    bw[1].neg_()  # the payloads (x, 16 - x, -16 - x): row 1 is -z[1]
    clamped = x + bw[1] + bw[2]
    a = 2 * (bw[0] + bw[1]) - clamped  # b x + [x >= 16](16 - x) = b * clamped
    t = yield from exp_neg16(ctx, -a)
    d = _const(ctx, x, 1.0, f) + t
    y0 = _const(ctx, x, 24 / 17, s) - (yield from _scale_public(ctx, d, 8 / 17, f, s))
    q = yield from _newton_reciprocal(ctx, d, y0, 2, f)
    bq = yield from _beaver(ctx, correlations.mul_triple(b[0].shape, q.shape), torch.mul, b[0], q)
    return ctx.public(torch.full_like(x, 1 << f)) - b[0] * (1 << f) + 2 * bq - q


def tanh(ctx: PartyContext, x: torch.Tensor):
    """tanh(x) = 2 sigmoid(2x) - 1. Rounds 22 (CrypTen: 59)."""
    s = yield from sigmoid(ctx, 2 * x)
    return 2 * s - _const(ctx, x, 1.0, ctx.frac_bits)


# log's start y0 = b + a x + c0 e^(-2x) + c5 e^(-x/16): a minimax fit of log x on [0.04, 120]
# (linear programming over 6000 log-spaced points), off by at most 0.31 there; both
# exponentials come from one exp(-2x), e^(-x/16) = e^(-2x/2^5) being one of its squarings.
_LOG_START = (3.239661, 0.015462, -3.84488, -2.610179)  # b, a, c0, c5
_LOG_TAP = 5
_LOG_EXP_MAX = 4.5  # -y0 < -log(0.04) + 0.31 < 3.6


def log(ctx: PartyContext, x: torch.Tensor):
    """Natural log for x in [0.05, 100] (and up to 128, where -2x leaves exp's range): one
    exp gives a start within 0.31 of log x, and one Householder step of order 8 finishes.
    Rounds 10 + 1 + 10 + 7 = 28 (CrypTen: 109; CrypTen's start, 3 + x/120 - 20 e^(-2x-1),
    is off by up to 2.2 and needs two steps).
      1. e^(-2x) and, from the same squarings, e^(-x/16) (exp with a tap, rounds 1-10);
      2. y0 = b + a x + c0 e^(-2x) + c5 e^(-x/16) at scale 2^44, truncated to f (round 11);
         then |h| = |1 - x e^(-y0)| < 0.41 and the step leaves |h|^9 / 9 < 1.1e-5;
      3. h = 1 - x e^(-y0) and y = y0 - sum_{k<=8} h^k / k (a Householder step of order 8):
         e^(-y0) (10 rounds), x e^(-y0) by a Beaver product (round 1), truncated with its
         square (round 2), so h = 1 - xe and h^2 = 1 - 2 xe + xe^2 need no round of their
         own; h2 = h^2 truncated with its square h^4 (round 3); h3 = h2 h (Beaver, round 4;
         truncated in round 5) beside h4 = h^4 truncated with its square h^8 (round 4);
         h^5, h^6 = h4 (h, h2) (Beaver, round 5) and h^7 = h4 h3 (round 6), left at scale
         2f; the weighted sum of every power, lifted to scale 3f, in one truncation (round 7).
    Reference for the Householder iteration: CrypTen (crypten/common/functions/log.py).
    """
    f, wide_scale = ctx.frac_bits, 44
    t, taps = yield from exp(ctx, -2 * x, x_max=0.0, taps=(_LOG_TAP,))
    tap, tap_scale = taps[_LOG_TAP]
    b, a, c0, c5 = _LOG_START
    start = (x * round(a * (1 << (wide_scale - f))) + t * round(c0 * (1 << (wide_scale - f)))
             + tap * round(c5 * (1 << (wide_scale - tap_scale))) + _const(ctx, x, b, wide_scale))
    y = yield from truncate(ctx, start, wide_scale - f)  # every term below 2^47
    return (yield from _householder_log_step(ctx, x, y))


def _householder_log_step(ctx: PartyContext, x: torch.Tensor, y: torch.Tensor):
    """y - sum_{k<=8} h^k / k with h = 1 - x e^(-y): log's step of order 8 (17 rounds)."""
    f = ctx.frac_bits
    one, one2 = _const(ctx, x, 1.0, f), _const(ctx, x, 1.0, 2 * f)
    # e^(-y) near 1/x at scale 2^30 (x e^(-y) < 2^(7+16+5+30)): at scale f, its relative
    # error at x = 100 would be 2^-16 * 100 = 1.5e-3, and so would log's
    e = yield from exp(ctx, -y, x_max=_LOG_EXP_MAX, out_scale=_HIGH)
    xe_wide = yield from _beaver(ctx, correlations.mul_triple(x.shape, e.shape), torch.mul, x, e)
    xe, xe_sq = yield from truncate_square(ctx, xe_wide, _HIGH)
    h = one - xe
    h2, h4_wide = yield from truncate_square(ctx, one2 - xe * (2 << f) + xe_sq, f)
    h3_wide, (h4, h8_wide) = yield from gather(
        _beaver(ctx, correlations.mul_triple(h2.shape, h.shape), torch.mul, h2, h),
        truncate_square(ctx, h4_wide, f))
    h3, h5_wide, h6_wide = yield from gather(
        truncate(ctx, h3_wide, f),
        _beaver(ctx, correlations.mul_triple(h4.shape, h.shape), torch.mul, h4, h),
        _beaver(ctx, correlations.mul_triple(h4.shape, h2.shape), torch.mul, h4, h2))
    h7_wide = yield from _beaver(ctx, correlations.mul_triple(h4.shape, h3.shape), torch.mul, h4, h3)
    # |h| < 1 once y is within reach of log x: every term stays far below 2^62 at scale 3f
    narrow = sum(p * ((1 << f) * round((1 << f) / k)) for k, p in enumerate((h, h2, h3, h4), start=1))
    wide = sum(p * round((1 << f) / k) for k, p in enumerate((h5_wide, h6_wide, h7_wide, h8_wide), start=5))
    return y - (yield from truncate(ctx, narrow + wide, 2 * f))


def inv_sqrt(ctx: PartyContext, x: torch.Tensor, out_scale: int | None = None):
    """1 / sqrt(x) for x in [0.1, 100]: CrypTen's start y0 = 2.2 e^-(x/2 + 0.2) + 0.2 - x/1024,
    then 4 Newton steps y <- y (3 - x y^2) / 2 (the halving folds into a truncation);
    CrypTen stops at 3, which leaves 0.3% relative error at x = 10. The iterates live at
    scale 2^-24 (y <= 3.2 and x y^2 <= 300 keep every product below 2^52), so the
    rounding of one step is not multiplied by x in the next; the last step truncates
    straight to `out_scale`. Every y but the last comes out of truncate_square, so y^2
    costs one truncation, not a product. Rounds 1 + 10 + 1 + 4 * 5 = 32 (CrypTen: 66)."""
    f, s = ctx.frac_bits, _RECIP_SCALE
    half = yield from truncate(ctx, x, 1)
    t = yield from exp(ctx, -half - _const(ctx, x, 0.2, f), x_max=0.0)
    wide = s + 8  # y0 at scale 2^(s+8), truncated by 8 bits together with its square
    y0 = t * round(2.2 * (1 << (wide - f))) - x * (1 << (wide - f - 10)) + _const(ctx, x, 0.2, wide)
    y, y_sq = yield from truncate_square(ctx, y0, wide - s)
    steps = 4
    for k in range(steps):
        y2 = yield from truncate(ctx, y_sq, s)
        xy2 = yield from _mul(ctx, x, y2, f)
        z = yield from _beaver(ctx, correlations.mul_triple(y.shape, xy2.shape), torch.mul, y,
                               _const(ctx, x, 3.0, s) - xy2)
        if k == steps - 1:
            y = yield from truncate(ctx, z, 2 * s + 1 - (out_scale or f))
        else:
            y, y_sq = yield from truncate_square(ctx, z, s + 1)
    return y


def sqrt(ctx: PartyContext, x: torch.Tensor):
    """sqrt(x) = x / sqrt(x) for x in [0.1, 100], with 1/sqrt(x) kept at scale 2^-24 for
    the last product. Rounds 34 (CrypTen: 69)."""
    r = yield from inv_sqrt(ctx, x, out_scale=_RECIP_SCALE)
    return (yield from _mul(ctx, x, r, _RECIP_SCALE))


def _softmax_parts(ctx: PartyContext, x: torch.Tensor, dim: int):
    m, _ = yield from max_(ctx, x, dim, True, False)
    z = x - m  # <= 0, and 0 at the maximum, so the sum below is in [1, n]
    e = yield from exp(ctx, z, x_max=0.0)
    return z, e, e.sum(dim=dim, keepdim=True)


def softmax(ctx: PartyContext, x: torch.Tensor, dim: int):
    """e^(x - max) / sum e^(x - max) over `dim`. Valid while max - min <= 256 along dim.

    The sum s lies in [1, n], so Newton for 1/s starts from the public 2 / (n + 1)
    (relative error at most (n-1)/(n+1)) and needs no exp of its own.
    Rounds 4 ceil(log2 n) + 10 + 4 k + 2 with k = ceil(log2(26 ln 2 / -ln((n-1)/(n+1))))
    Newton steps: 56 for n = 10 (CrypTen: 216)."""
    n = x.shape[dim]
    z, e, s = yield from _softmax_parts(ctx, x, dim)
    q = yield from _newton_reciprocal(ctx, s, _const(ctx, s, 2 / (n + 1), _RECIP_SCALE),
                                      _newton_steps(n), _RECIP_SCALE)
    return (yield from _mul(ctx, e, q.expand(e.shape), _RECIP_SCALE))


def _newton_steps(n: int) -> int:
    if n <= 1:
        return 1
    ratio = (n - 1) / (n + 1)
    return max(1, math.ceil(math.log2(26 * math.log(2) / -math.log(ratio))))


def log_softmax(ctx: PartyContext, x: torch.Tensor, dim: int):
    """(x - max) - log(sum e^(x - max)); the sum is in [1, n], inside log's range for
    n <= 100. Rounds 4 ceil(log2 n) + 10 + 28 (54 for n = 10; CrypTen: 235)."""
    z, _, s = yield from _softmax_parts(ctx, x, dim)
    return z - (yield from log(ctx, s))

