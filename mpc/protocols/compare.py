"""Comparisons of additive shares with the dealer's help: sign and zero tests in 4 rounds.

`compare(z, mode)` returns arithmetic shares of b = [z >= 0] ("ge") or b = [z == 0]
("eq"), as integers 0/1 (not fixed-point), and the products b * w for secret payloads w
given up front, at no extra round. Everything else (relu, max, sign, where ...) is built
on it. Valid for |z| < 2^62 ring units (2^46 at f = 16): the encoding range keeps any
difference of two encoded values well inside.

Protocol (mask-and-open, then a comparison of a public value with a secret mask whose
bits the dealer shares, as in Damgard et al., TCC 2006, and "Rabbit", Makri et al.,
ASIACRYPT 2021; chunk tables are one-time truth tables, Ishai et al., TCC 2013). The
dealer supplies r uniform in Z_2^64 with an XOR-shared 16-entry table per 4-bit chunk r_j
of r, LT_j[v] = [v < r_j] ("eq" mode: EQ_j[v] = [v == r_j]) as one 16-bit word; bit 62
of r; masks and mask products for a two-level 4-ary carry tree (bits.py); a random bit s
as XOR and as additive shares; and for each payload w, a mask alpha with additive shares
of alpha * s.
The dealer need not send EQ_j beside LT_j: LT_j is the thermometer code of r_j and EQ_j
the one-hot code, so EQ_j[v] = [v - 1 < r_j] ^ [v < r_j] = LT_j[v - 1] ^ LT_j[v], with
LT_j[-1] = 1, an affine GF(2) map of LT_j. XOR shares are closed under such maps (each
party applies the linear part to its own share, party 0 adds the constant), so each
party derives its share of EQ_j[c_j] from its share of LT_j alone, with no message
(one shift of the words; sending EQ_j and deriving LT_j, a suffix XOR, takes four).
  1. open c = z + 2^62 + r and d_w = w - alpha (round 1). With z' = z + 2^62 in [0, 2^63),
     z' = c - r mod 2^64, so bit 62 of z' is [z >= 0] = c_62 ^ r_62 ^ [c_lo < r_lo],
     lo = bits 0..61 (in "eq" mode, c = z + r and [z == 0] = [c == r]). A payload that is z
     itself (ReLU, |x|, clamp, max) takes alpha = -(r + 2^62) ("eq": -r), so that d_w = c:
     nothing more is opened: c already is z under a uniform mask, so a second opening of z
     under another mask only cost bytes. The dealer shares alpha s = -(r + 2^62) s instead
     of alpha s for a fresh alpha, and no party draws alpha.
  2. leaves, locally: g_j = LT_j[c_j], p_j = LT_j[c_j] ^ LT_j[c_j - 1] ("eq": EQ_j[c_j]).
  3. two tree levels, one round each (rounds 2 and 3): 16 leaves -> 4 groups -> root,
     each level a one-round 4-input AND from the masked openings (bits.eval_level).
  4. b = c_62 ^ r_62 ^ G_root ("ge") or P_root ("eq"), XOR-shared; open e = b ^ s (round 4).
  5. [b] = e + (1 - 2e)[s], and [b w] = e w + (1 - 2e)(d_w [s] + [alpha s]).
Cost at N parties, per element: 4 rounds; each party sends (N-1) * (8 + 5 + 1/8) bytes
(8 for c, 32 + 8 + 1 bits for the tree and e) plus (N-1) * 8 per payload element other
than z itself: 26.25 B at N = 3 for a ReLU (42.25 when its payload was opened apart).
Dealer: 53 bytes to party 0 ("ge", 32 of them the LT tables; 47 for "eq") plus 8 per
payload element (85 for "ge" when the EQ tables were sent beside the LT tables).
"""

from __future__ import annotations

import torch

from mpc.protocols import bits as bitops
from mpc.protocols import correlations
from mpc.protocols.base import Open, PartyContext, Randomness

_CHUNKS = 16
_GROUPS = 4


def compare(ctx: PartyContext, z: torch.Tensor, mode: str = "ge", payloads: tuple[torch.Tensor, ...] = ()):
    """Shares of b = [z >= 0] (mode "ge") or [z == 0] (mode "eq") as ring integers 0/1,
    and of b * w for each payload w (shape of z, or of z with trailing dimensions). A first
    payload that is z itself (the very tensor) is not opened again; z elsewhere among the
    payloads, or a tensor equal to z, is."""
    if mode not in ("ge", "eq"):
        raise ValueError(f"comparison mode must be 'ge' or 'eq', not {mode!r}")
    lt_mode = "eq" if mode == "eq" else "lt"
    shape = tuple(z.shape)
    for w in payloads:
        if tuple(w.shape[:len(shape)]) != shape:
            raise ValueError(f"payload of shape {tuple(w.shape)} does not extend the compared shape {shape}")
    own = bool(payloads) and payloads[0] is z  # relu, abs, clamp, max: b z rides on c itself
    spec = correlations.compare_material(shape, lt_mode, [tuple(w.shape) for w in payloads], self_payload=own)
    material = yield Randomness(spec)
    r, m1, m2, s_bits, *rest = material
    n_alphas = len(payloads) - own
    alphas, rest = rest[:n_alphas], rest[n_alphas:]
    if lt_mode == "lt":
        table, r62, prod1, prod2, s_arith, *alpha_s = rest
    else:
        table, prod1, prod2, s_arith, *alpha_s = rest
        r62 = None
    n = z.numel()

    # Round 1: the masked value, and the payloads' Beaver-style openings.
    masked = z + r
    offset = correlations.compare_offset(lt_mode)
    if offset and ctx.is_first:
        masked += offset
    c, *ds = yield Open((masked, *(w - a for w, a in zip(payloads[own:], alphas))))
    if own:
        ds.insert(0, c)  # d = z - alpha = z + r + offset = c
    # Rounds 2 and 3: the carry tree.
    root = yield from _carry_tree(ctx, lt_mode, c, table, (m1, prod1), (m2, prod2))
    if lt_mode == "lt":
        b_xor = root ^ r62[0]
        if ctx.is_first:
            b_xor ^= bitops.pack_rows(((c.reshape(1, n) >> 62) & 1).to(torch.uint8))[0]
    else:
        b_xor = root
    # Round 4: to additive shares, and the payload products.
    e_plane = yield from _open_planes((b_xor ^ s_bits[0]).unsqueeze(0))
    e = bitops.unpack_rows(e_plane, n)[0].to(torch.int64).view(shape)
    sign = 1 - 2 * e
    b = sign * s_arith + ctx.public(e)
    products = []
    for w, d, a_s in zip(payloads, ds, alpha_s):
        extra = (1,) * (w.dim() - len(shape))
        e_w, sign_w, s_w = e.view(shape + extra), sign.view(shape + extra), s_arith.view(shape + extra)
        products.append(sign_w * (d * s_w + a_s) + e_w * w)
    return b, tuple(products)


def _carry_tree(ctx: PartyContext, mode: str, c: torch.Tensor, table, level1, level2):
    """XOR-shares of [c_lo < r_lo] ("lt") or [c == r] ("eq") as one packed plane; 2 rounds.

    Leaves come from the chunk tables (local); planes are laid out row = variable,
    column = (element, group)."""
    n = c.numel()
    masks, products = level1
    e1 = yield from _open_planes(_leaves(mode, c, table, ctx.is_first) ^ masks)
    first = bitops.eval_level(mode, False, e1, masks, products, ctx.is_first)
    outputs = ["P"] if mode == "eq" else ["G", "P"]
    v2 = torch.cat([bitops.unpack_rows(first[k].unsqueeze(0), n * _GROUPS).view(n, _GROUPS).t() for k in outputs])
    masks, products = level2
    e2 = yield from _open_planes(bitops.pack_rows(v2) ^ masks)
    root = bitops.eval_level(mode, True, e2, masks, products, ctx.is_first)
    return root["P"] if mode == "eq" else root["G"]


def _leaves(mode: str, c: torch.Tensor, table: torch.Tensor, first: bool) -> torch.Tensor:
    """The leaves as packed planes (n_vars, n * 4 bits): g0..g3 then p0..p3 ("lt"), or
    p0..p3 ("eq"), from this party's share of the chunk tables (int16 words, (n, 16)).

    "lt": g_j = bit c_j of LT_j, and p_j = g_j ^ bit c_j of (LT_j << 1 | 1), the 1 being
    LT_j[-1] (party 0's constant); the XOR is done on the packed planes. The table is
    this comparison's own material: it is shifted in place."""
    n = c.numel()
    chunks = bitops.nibbles(c, top_bits=2 if mode == "lt" else 4).to(torch.int16)
    picked = [(table >> chunks).to(torch.uint8)]
    if mode == "lt":
        table <<= 1  # bit v: LT_j[v - 1]
        if first:
            table |= 1
        picked.append((table >> chunks).to(torch.uint8))
    leaves = torch.cat([p.view(n, _GROUPS, 4).permute(2, 0, 1) for p in picked]).reshape(4 * len(picked), n * _GROUPS)
    leaves &= 1
    planes = bitops.pack_rows(leaves)
    if mode == "lt":
        planes[4:] ^= planes[:4]  # p_j = LT_j[c_j] ^ LT_j[c_j - 1]
    return planes


def _open_planes(planes: torch.Tensor):
    """Open XOR-shared packed bit planes; one round."""
    (opened,) = yield Open((planes,), xor=True)
    return opened
