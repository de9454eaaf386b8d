"""Arithmetic on additive shares over Z_2^64: sharing, opening, Beaver products, truncation.

Shares: x = sum_i x_i mod 2^64, party i holding x_i. Fixed-point values carry f
fractional bits; a product of two carries 2f and is truncated back to f.
"""

from __future__ import annotations

import numpy as np
import torch

from mpc import ring
from mpc.protocols import correlations, holders, scatter
from mpc.protocols.base import InputMask, Open, PartyContext, Randomness, SignsOpened

_RING_BITS = ring.RING_BITS


def share_input(ctx: PartyContext, owner: int, encoded: torch.Tensor | None, shape):
    """Share the owner's encoded input with no communication.

    1. Every pair (owner, j) holds a PRG key k_{owner,j} agreed when the mesh came up.
    2. Party j != owner sets x_j = PRG(k_{owner,j}, label) over Z_2^64.
    3. The owner sets x_owner = x - sum_{j != owner} x_j.
    Any N-1 shares are uniform and independent of x.
    """
    mask = yield InputMask(owner, tuple(shape))
    if ctx.pid == owner:
        return encoded - mask
    return mask


def reveal(ctx: PartyContext, x: torch.Tensor, to: int | None = None):
    """Open x to every party (to=None) or to party `to`; others get None. One round."""
    (value,) = yield Open((x,), to=to)
    return value


def truncate(ctx: PartyContext, x: torch.Tensor, bits: int | None = None):
    """Divide a shared value by 2^f with a dealer-supplied mask: one round, never a wrap.

    `bits` shifts by another amount k in [1, max_shift(N)] (61 at N = 2, 3; f is the
    default); read f as k below.

    Requires |x| < 2^(l-2) for the ring size l = 64 (see ring.max_abs_value).
    The dealer provides shares of R (uniform), r = 2^f R + rho with rho = sum_i rho_i,
    rho_i uniform in [0, 2^f), and 2^(l-f)-multiples T, M with
      T = floor((R + q) / 2^(l-f)) mod 2^f,   q = floor(rho / 2^f),   M = msb(r),
    so that floor(r / 2^f) = R + q - 2^(l-f) T exactly.
      1. x' = x + 2^(l-2), so that 0 <= x' < 2^(l-1).
      2. open c = x' + r mod 2^l.
      3. w = msb(r) * (1 - msb(c)) is the wrap bit of x' + r (x' < 2^(l-1) makes it exact),
         linear in the shares of M because c is public.
      4. y = floor(c / 2^f) - R + 2^(l-f) (T + M (1 - msb(c))) - 2^(l-2-f) - floor(N/2).
         The public floor(c / 2^f) may be added by any one party: when a large opening
         splits, each adds it on its own slice, and only msb(c) reaches everyone
         (protocols/scatter.py: a bit an element instead of 64 in the all-gather).
    Then y = floor(x / 2^f) + beta + q - floor(N/2), beta = [c mod 2^f < r mod 2^f] is a
    carry that makes floor(x/2^f) + beta an unbiased stochastic rounding, and floor(N/2)
    is the mean of q. Error bound: |y - x / 2^f| < floor(N/2) + 1 units in the last place
    (below 2 ulp at N = 2, 3), with zero mean. Dealer cost 4 bytes an element (f <= 16).
    Reference: the mask-and-open truncation of Mohassel and Zhang, SecureML (S&P 2017),
    with the wrap made exact by the public msb(c) as in Escudero et al., "Improved
    primitives for MPC over mixed arithmetic-binary circuits" (CRYPTO 2020).
    """
    y, _ = yield from _truncate(ctx, x, bits, False)
    return y


def max_shift(n_parties: int) -> int:
    """The largest truncation shift k at N parties: the dealer's rho = sum_i rho_i, each below
    2^k (party 0's below 2^(k+1) when N is even), must stay below 2^63 in an int64."""
    return 63 - n_parties.bit_length()


def truncate_square(ctx: PartyContext, x: torch.Tensor, bits: int | None = None):
    """(y, y^2): y = truncate(x, bits), and its square, untruncated (at twice y's scale),
    in the truncation's one round: the square costs no round and opens nothing.

    truncate's y is P + S with P public (from c) and S = T - R + M (1 - msb(c)) a secret
    the dealer knows: S0 = T - R or S1 = S0 + M. So y is already "opened" against the mask
    S, as in a square pair (a, a^2) with e = P: given shares of S0^2 and of
    D = S1^2 - S0^2 = M (2 S0 + M) (a multiple of 2^(64-k), sent as a k-bit word),
      y^2 = P^2 + 2 P S + S^2,  S^2 = S0^2 + D (1 - msb(c)),
    every term linear in the shares. The same mask-carrying idea as the masked
    evaluation of ABY2.0 (Patra et al., USENIX Security 2021), here for free because the
    truncation's opening already fixes P. Dealer cost: 8 bytes and a k-bit word an element
    more than truncate (a square pair costs 8 bytes and a round of 8 per peer)."""
    return (yield from _truncate(ctx, x, bits, True))


def _truncate(ctx: PartyContext, x: torch.Tensor, bits: int | None, squared: bool):
    f, n = (bits or ctx.frac_bits), ctx.n_parties
    if not 0 < f <= max_shift(n):
        raise ValueError(f"truncation by {f} bits at {n} parties is outside [1, {max_shift(n)}]")
    r, big_r, t, m, *sq = yield Randomness(correlations.trunc_pair(x.shape, f, n, square=squared))
    offset = 1 << (_RING_BITS - 2)
    masked = x + r
    if ctx.is_first:
        masked += offset
    (c,) = yield Open((masked,), signs=not squared)
    split = isinstance(c, SignsOpened)  # a split round: c on our slice, msb(c) everywhere (scatter.py)
    # all ones where msb(c) = 0, else zero: selecting by bitwise and is 7x faster than masked_fill
    keep = (c.negative if split else torch.bitwise_right_shift(c, _RING_BITS - 1)).bitwise_not_()
    y = torch.sub(t, big_r).add_(torch.bitwise_and(m, keep))  # S = T - R + M (1 - msb(c))
    if split:
        y.view(-1)[c.lo:c.hi] += ring.logical_shift_right(c.part, f)  # floor(c / 2^f), added once
        return (y.sub_((offset >> f) + n // 2) if ctx.is_first else y), None
    if not squared:
        if ctx.is_first:
            y.add_(ring.logical_shift_right(c, f)).sub_((offset >> f) + n // 2)
        return y, None
    d, s0_sq = sq
    p = ring.logical_shift_right(c, f).sub_((offset >> f) + n // 2)  # public: every party has it
    y2 = torch.add(s0_sq, keep.bitwise_and_(d)).addcmul_(p, y, value=2)  # S^2 + 2 P S
    if ctx.is_first:
        y2.addcmul_(p, p)
        y.add_(p)
    return y, y2


def _beaver(ctx: PartyContext, spec, op, x: torch.Tensor, y: torch.Tensor):
    """[op(x, y)] for a bilinear op from a Beaver triple (Beaver, CRYPTO 1991).

    1. obtain [a], [b], [c] = [op(a, b)] from the dealer.
    2. open e = x - a and d = y - b together (one round).
    3. z_i = c_i + op(e, b_i) + op(x_i, d). Summed: op(a, b) + op(e, b) + op(x, d), and
       op(x, d) = op(a, d) + op(e, d), so z = op(a + e, b + d) = op(x, y). Two ring
       products per party instead of the textbook three.
    """
    a, b, c = yield Randomness(spec)
    e, d = yield Open((x - a, y - b))
    if op is torch.mul and c.shape == torch.broadcast_shapes(e.shape, b.shape, x.shape, d.shape):
        return torch.addcmul(torch.addcmul(c, e, b), x, d)  # fused: a third of the passes
    return c + op(e, b) + op(x, d)


def owned_product(ctx: PartyContext, spec, op, x: torch.Tensor, y: torch.Tensor, owner_x: int, owner_y: int,
                  scaled: bool = True):
    """[op(x, y)] for a bilinear op (spec: its ordinary triple) where x is party i's private
    input and y party j's (i != j): one round in which only i and j send, each one message
    to the other.

    x is i's encoded plaintext (elsewhere a placeholder of its shape, a meta tensor), y is
    j's likewise.
      1. obtain a (i only, from i's own seed), b (j only), and [c] = [op(a, b)] from the dealer;
      2. i sends e = x - a to j, j sends f = y - b to i (each mask is uniform and known to
         its owner alone, so each message is uniform to its receiver);
      3. z_i = op(x, f) + c_i, z_j = op(e, b) + c_j, z_k = c_k for every other party k.
         Summed: op(x, y - b) + op(x - a, b) + op(a, b) = op(x, y).
    Against a Beaver product of two shared values (both masked values opened to all), 2 |x|
    cross the network in all, and the dealer draws 2 masks instead of 2 N. The owner-aware
    products of ABY2.0 (Patra et al., USENIX Security 2021) and of SecureML's precomputed
    triples for a data owner's inputs (Mohassel and Zhang, S&P 2017), here with a dealer.

    When party 0 is one of the owners (it takes the dealer's corrections) and N >= 3, c is
    shared between the two owners alone (c_k = 0: the other parties hold, draw and send
    nothing), and so is the truncation (_truncate_pair)."""
    pair = ctx.n_parties >= 3 and 0 in (owner_x, owner_y)
    triple = holders.owned_triple(spec, owner_x, owner_y, pair=pair)
    parts = yield Randomness(triple)
    # i's mask a is not read again: e = x - a is written over it (fresh memory costs more
    # here than the subtraction); j's b is, in op(e, b)
    e_mine = torch.sub(x, parts[0], out=parts[0]) if ctx.pid == owner_x else x
    f_mine = y - parts[0] if ctx.pid == owner_y else y
    (e,), (f,) = yield [Open((e_mine,), to=owner_y, senders=(owner_x,)),
                        Open((f_mine,), to=owner_x, senders=(owner_y,))]
    if ctx.pid in (owner_x, owner_y):
        c = parts[-1]
        elementwise = op is torch.mul and c.shape == torch.broadcast_shapes(x.shape, y.shape)
        u, v = (x, f) if ctx.pid == owner_x else (e, parts[0])
        z = c.addcmul_(u, v) if elementwise else c.add_(op(u, v))  # c is this product's own
    elif pair:  # a share of zero
        shape = correlations.dependent_parts(triple)[0].shape
        z = torch.zeros(shape, dtype=torch.int64, device="meta" if ctx.dry_run else "cpu")
    else:
        z = parts[-1]
    if not scaled:
        return z
    if pair:
        return (yield from _truncate_pair(ctx, z, owner_x, owner_y))
    return (yield from truncate(ctx, z))


def _truncate_pair(ctx: PartyContext, z: torch.Tensor, i: int, j: int):
    """truncate() of a value shared between parties i and j alone (one of them party 0;
    every other party's share is zero and stays zero), opened between the two only.

    The steps of truncate with a mask held by i and j (trunc_pair(..., members=(i, j))):
      1. c = z + 2^(l-2) + r, opened half at i (elements [0, n/2)) and half at j: each sends
         the other the half of its masked share that the other opens (n/2 elements each);
      2. each sends the other the msb of its opened half, a bit an element (below
         scatter.SPLIT_MIN_BYTES instead: each sends its whole masked share, both open all
         of c, and this round is not needed);
      3. y = T - R + M (1 - msb(c)), and each adds floor(c / 2^f) on its own half; party 0
         takes away 2^(l-2-f) + floor(2/2), as truncate does for N = 2.
    Every other party sends and receives nothing and keeps a zero share. What each owner
    sees is what the opening of a two-party truncation shows it (half of c, masked by r,
    and msb(c)). Three parties: 8 bytes an element cross the network instead of truncate's
    16 (a split opening among all three), and the third party does no work."""
    f = ctx.frac_bits
    if not 0 < f <= max_shift(2):
        raise ValueError(f"truncation by {f} bits between two parties is outside [1, {max_shift(2)}]")
    shape = tuple(z.shape)
    n = z.numel()
    # below scatter's threshold the halves' extra round costs more than the bytes they save:
    # each owner opens all of c (its whole masked share to the other, one round, no signs)
    half = n // 2 if n * 8 >= scatter.SPLIT_MIN_BYTES else n
    parts = yield Randomness(correlations.trunc_pair(shape, f, 2, members=tuple(sorted((i, j)))))
    member = ctx.pid in (i, j)
    offset = 1 << (_RING_BITS - 2)

    def meta(count, dtype=torch.int64):
        return torch.empty(count, dtype=dtype, device="meta")

    if member:
        r, big_r, t, m = parts
        masked = z + r
        if ctx.is_first:
            masked += offset
        flat = masked.view(-1)
        lo, hi = (0, half) if ctx.pid == i else (half, n)  # the half this party opens
    to_j = flat[half:] if ctx.pid == i else meta(n - half)
    to_i = flat[:half] if ctx.pid == j else meta(half)
    if half == n:  # whole: i opens everything, and so does j
        lo, hi = 0, n
        to_j = flat if ctx.pid == i else meta(n)
    (got_j,), (got_i,) = yield [Open((to_j,), to=j, senders=(i,)), Open((to_i,), to=i, senders=(j,))]
    opened = None
    if member:
        opened = (got_i if ctx.pid == i else got_j).add_(flat[lo:hi])
    if half == n:
        if not member:
            return z
        if ctx.dry_run:
            return torch.sub(t, big_r)
        keep = torch.bitwise_right_shift(opened, _RING_BITS - 1).bitwise_not_().view(shape)
        y = torch.sub(t, big_r).add_(torch.bitwise_and(m, keep))
        if ctx.is_first:  # floor(c / 2^f), added once
            y.view(-1).add_(ring.logical_shift_right(opened, f)).sub_((offset >> f) + 1)
        return y
    signs_i, signs_j = meta((half + 7) // 8, torch.uint8), meta((n - half + 7) // 8, torch.uint8)
    if member and not ctx.dry_run:
        packed = torch.from_numpy(np.packbits(opened.numpy() < 0, bitorder="little"))
        signs_i, signs_j = (packed, signs_j) if ctx.pid == i else (signs_i, packed)
    (from_i,), (from_j,) = yield [Open((signs_i,), to=j, senders=(i,)), Open((signs_j,), to=i, senders=(j,))]
    if not member:
        return z
    if ctx.dry_run:
        return torch.sub(t, big_r)
    negative = torch.empty(n, dtype=torch.int64)
    torch.bitwise_right_shift(opened, _RING_BITS - 1, out=negative[lo:hi])
    theirs = from_j if ctx.pid == i else from_i
    other_lo, other_hi = (half, n) if ctx.pid == i else (0, half)
    bits = np.unpackbits(theirs.numpy(), count=other_hi - other_lo, bitorder="little")
    negative[other_lo:other_hi].copy_(torch.from_numpy(bits)).neg_()  # 0/1 -> 0/-1
    keep = negative.bitwise_not_().view(shape)  # all ones where msb(c) = 0
    y = torch.sub(t, big_r).add_(torch.bitwise_and(m, keep))  # S = T - R + M (1 - msb(c))
    y.view(-1)[lo:hi] += ring.logical_shift_right(opened, f)  # floor(c / 2^f), on our half
    if ctx.is_first:
        y.sub_((offset >> f) + 1)
    return y


def square(ctx: PartyContext, x: torch.Tensor):
    """[x^2] from a square pair (a, a^2): one opening instead of a triple's two.

    1. open e = x - a (one round);
    2. z_i = (a^2)_i + 2 e a_i, and party 0 adds e^2: the sum is (e + a)^2 = x^2.
    Not truncated (the caller truncates, by whatever shift it needs)."""
    a, a2 = yield Randomness(correlations.square_pair(x.shape))
    (e,) = yield Open((x - a,))
    z = a2 + 2 * e * a
    return z + e * e if ctx.is_first else z


def mul(ctx: PartyContext, x: torch.Tensor, y: torch.Tensor, scaled: bool = True):
    """Elementwise x * y with torch broadcasting; truncated when both are fixed-point."""
    z = yield from _beaver(ctx, correlations.mul_triple(x.shape, y.shape), torch.mul, x, y)
    return (yield from truncate(ctx, z)) if scaled else z


def matmul(ctx: PartyContext, x: torch.Tensor, y: torch.Tensor, scaled: bool = True):
    """x @ y with torch.matmul semantics, truncated once per output element (unless not scaled)."""
    z = yield from _beaver(ctx, correlations.matmul_triple(x.shape, y.shape), ring.matmul, x, y)
    return (yield from truncate(ctx, z)) if scaled else z


def conv2d(ctx: PartyContext, x: torch.Tensor, w: torch.Tensor, stride, padding, dilation, groups: int,
           scaled: bool = True):
    """conv2d(x, w) of a secret input and a secret kernel, truncated per output element
    (unless not scaled)."""
    spec = correlations.conv2d_triple(x.shape, w.shape, stride, padding, dilation, groups)

    def op(u, v):
        return ring.conv2d(u, v, stride, padding, dilation, groups)

    z = yield from _beaver(ctx, spec, op, x, w)
    return (yield from truncate(ctx, z)) if scaled else z


def conv_transpose2d(ctx: PartyContext, g: torch.Tensor, w: torch.Tensor, stride, padding, output_padding, dilation,
                     groups: int, scaled: bool = True):
    """conv2d's input gradient conv_transpose2d(g, w) of a secret g and a secret kernel: one
    Beaver product (ring.conv_transpose2d is bilinear), so only g - a and w - b are opened,
    not the zero-inserted g a stride would make; truncated unless not scaled."""
    spec = correlations.conv_transpose2d_triple(g.shape, w.shape, stride, padding, output_padding, dilation, groups)

    def op(u, v):
        return ring.conv_transpose2d(u, v, stride, padding, output_padding, dilation, groups)

    z = yield from _beaver(ctx, spec, op, g, w)
    return (yield from truncate(ctx, z)) if scaled else z


def conv2d_weight(ctx: PartyContext, x: torch.Tensor, g: torch.Tensor, kernel, stride, padding, dilation,
                  groups: int, scaled: bool = True):
    """conv2d's kernel gradient conv2d_weight(x, g) of a secret input and a secret g: one
    Beaver product (ring.conv2d_weight is bilinear); truncated unless not scaled."""
    spec = correlations.conv2d_weight_triple(x.shape, g.shape, kernel, stride, padding, dilation, groups)

    def op(u, v):
        return ring.conv2d_weight(u, v, kernel, stride, padding, dilation, groups)

    z = yield from _beaver(ctx, spec, op, x, g)
    return (yield from truncate(ctx, z)) if scaled else z


def scale_public(ctx: PartyContext, x: torch.Tensor, factor: torch.Tensor, op=torch.mul):
    """op(x, public factor): exact for integer factors, else encoded and truncated."""
    if ring.is_integral(factor):
        return op(x, factor.to(device=x.device, dtype=torch.int64))
    z = op(x, ring.encode(factor, ctx.frac_bits).to(x.device))
    return (yield from truncate(ctx, z))
