"""Boolean shares of bits: packing, and one level of a carry tree from masked openings.

Bits are shared by XOR and kept packed, 8 to a byte, as planes: one row of bytes per
variable, so that a level is a few dozen bytewise ANDs and XORs of whole rows.

A level evaluates XOR-polynomials (XORs of monomials) of XOR-shared bits v_1..v_K in
one round, from masks m_k and the dealer's XOR-shares of the mask products
M_T = AND_{k in T} m_k (|T| >= 2); the masks themselves (|T| = 1) are free PRG bits:
  1. open e_k = v_k XOR m_k (one round, one bit per variable);
  2. AND_{k in S} v_k = XOR_{T subset S} (AND_{k in S\\T} e_k) * M_T, with M_{} = 1 added
     by party 0 only: linear in the shares of M_T because every e_k is public.
This is the one-round multi-input AND of "Multi-input AND gates from correlated
randomness" (as in Ishai et al., TCC 2013, one-time truth tables, and ABY2.0, USENIX
Security 2021), which lets a 4-ary carry tree over 16 leaves finish in two rounds.

The carry tree decides [c < r] for a public c and a secret r split into 4-bit chunks:
leaf j holds g_j = [c_j < r_j] and p_j = [c_j == r_j]; four siblings (3 the most
significant) combine to
  G = g3 ^ p3 g2 ^ p3 p2 g1 ^ p3 p2 p1 g0,   P = p3 p2 p1 p0.
In "eq" mode only P is computed (all chunks equal).
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
import torch

# Variable order within a group: g0..g3 then p0..p3 ("lt" mode), or p0..p3 ("eq" mode).
_LT_MONOMIALS = {"G": ((3,), (7, 2), (7, 6, 1), (7, 6, 5, 0)), "P": ((7, 6, 5, 4),)}
_EQ_MONOMIALS = {"P": ((0, 1, 2, 3),)}


@lru_cache(maxsize=None)
def level_polys(mode: str, last: bool) -> tuple[tuple[str, tuple], ...]:
    """The polynomials one tree level computes: (name, monomials) pairs.

    The last level of an "lt" tree needs only G."""
    if mode == "eq":
        return (("P", _EQ_MONOMIALS["P"]),)
    polys = (("G", _LT_MONOMIALS["G"]),) if last else (("G", _LT_MONOMIALS["G"]), ("P", _LT_MONOMIALS["P"]))
    return polys


def n_vars(mode: str) -> int:
    return 4 if mode == "eq" else 8


@lru_cache(maxsize=None)
def mask_products(mode: str, last: bool) -> tuple[tuple[int, ...], ...]:
    """Every mask product M_T with |T| >= 2 that a level needs, in a fixed order."""
    needed = set()
    for _, monomials in level_polys(mode, last):
        for mono in monomials:
            for size in range(2, len(mono) + 1):
                needed.update(tuple(sorted(t)) for t in itertools.combinations(mono, size))
    return tuple(sorted(needed, key=lambda t: (len(t), t)))


def and_rows(planes: torch.Tensor, subsets) -> torch.Tensor:
    """AND over each subset of rows of packed bit planes: (len(subsets), nbytes). Dealer side."""
    out = torch.empty((len(subsets), planes.shape[1]), dtype=torch.uint8)
    for k, t in enumerate(subsets):
        acc = planes[t[0]].clone()
        for row in t[1:]:
            acc &= planes[row]
        out[k] = acc
    return out


def eval_level(mode: str, last: bool, e: torch.Tensor, masks: torch.Tensor, products: torch.Tensor,
               first: bool) -> dict[str, torch.Tensor]:
    """This party's XOR-shares of the level's polynomials, given the opened e = v ^ m.

    Bits are packed planes, one row per variable: e, masks (n_vars, nbytes); products
    (len(mask_products), nbytes). Every step is a bytewise AND or XOR of whole planes."""
    index = {t: k for k, t in enumerate(mask_products(mode, last))}
    out = {}
    for name, monomials in level_polys(mode, last):
        acc = torch.zeros(e.shape[1:], dtype=torch.uint8, device=e.device)
        for mono in monomials:
            for size in range(len(mono) + 1):
                for t in itertools.combinations(mono, size):
                    coef = None
                    for k in mono:
                        if k not in t:
                            coef = e[k].clone() if coef is None else coef.bitwise_and_(e[k])
                    if size == 0:
                        if first:  # the public constant term belongs to party 0
                            acc ^= coef
                        continue
                    share = masks[t[0]] if size == 1 else products[index[tuple(sorted(t))]]
                    acc ^= share if coef is None else (coef & share)
        out[name] = acc
    return out


def pack_rows(bits: torch.Tensor) -> torch.Tensor:
    """(rows, m) 0/1 uint8 into packed planes (rows, ceil(m/8)), little-endian bit order."""
    if bits.device.type == "meta":
        return torch.empty((bits.shape[0], (bits.shape[1] + 7) // 8), dtype=torch.uint8, device="meta")
    return torch.from_numpy(np.packbits(bits.contiguous().numpy(), axis=1, bitorder="little"))


def unpack_rows(planes: torch.Tensor, m: int) -> torch.Tensor:
    """Packed planes (rows, nbytes) back to (rows, m) 0/1 uint8."""
    if planes.device.type == "meta":
        return torch.empty((planes.shape[0], m), dtype=torch.uint8, device="meta")
    return torch.from_numpy(np.unpackbits(planes.contiguous().numpy(), axis=1, count=m, bitorder="little"))


def nibbles(x: torch.Tensor, top_bits: int = 4) -> torch.Tensor:
    """The 16 4-bit chunks of each int64 (least significant first) as uint8 (n, 16),
    read from the little-endian bytes; the top chunk keeps only its low `top_bits` bits."""
    raw = x.reshape(-1).contiguous().view(torch.uint8).view(-1, 8)
    out = torch.stack([raw & 15, raw >> 4], dim=-1).view(-1, 16)
    if top_bits < 4:
        out[:, -1] &= (1 << top_bits) - 1
    return out
