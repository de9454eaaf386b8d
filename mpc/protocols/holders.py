"""Which parties hold a correlation: owned triples and member masks.

An owned triple (kinds in OWNED) is a product's triple whose masks each belong to one
party, its input's owner (arithmetic.owned_product). A correlation with param m, a bit
mask of parties, is held by those parties alone: the others draw nothing and get an empty
tuple, and the dealer expands nothing for them (party 0, which takes the dealer's
corrections, is always among them). correlations.py asks `is_member` wherever it expands a
party's part; the dealer refuses masks it cannot serve with `check_members`.
"""

from __future__ import annotations

from mpc.protocols.base import Spec

# Owned triples: the kind of each, and the product it is a triple for.
OWNED = {"omul": "mul", "omatmul": "matmul", "oconv2d": "conv2d"}


def owned_triple(base: Spec, owner_a: int, owner_b: int, pair: bool = False) -> Spec:
    """The triple of product `base` (mul, matmul or conv2d) whose masks each belong to one
    party: a is party owner_a's alone and b party owner_b's (each from its own seed, the
    other parties draw nothing for them), c = B(a, b) shared among all, or with `pair`
    between the two owners alone (one of them party 0). For the product of two parties'
    private inputs (one round, two messages: arithmetic.owned_product)."""
    if owner_a == owner_b:
        raise ValueError(f"an owned triple needs two different owners, got {owner_a} twice")
    kind = next(k for k, b in OWNED.items() if b == base.kind)
    held = members_param((owner_a, owner_b)) if pair else ()
    return Spec(kind, base.shapes, tuple(sorted(base.params + (("oa", owner_a), ("ob", owner_b)) + held)))


def base_of(spec: Spec) -> Spec:
    """An owned triple's product as an ordinary triple's spec (its bilinear map and shapes)."""
    if spec.kind not in OWNED:
        return spec
    return Spec(OWNED[spec.kind], spec.shapes, tuple(p for p in spec.params if p[0] not in ("oa", "ob", "m")))


def members_param(members: tuple[int, ...]) -> tuple[tuple[str, int], ...]:
    if not members:
        return ()
    if 0 not in members or len(set(members)) != len(members) or len(members) < 2:
        raise ValueError(f"a correlation held by parties {list(members)}: two or more different parties, party 0 "
                         "among them (it takes the dealer's corrections)")
    return (("m", sum(1 << p for p in members)),)


def is_member(spec: Spec, pid: int) -> bool:
    """Whether party `pid` holds a part of `spec`. A correlation with param m (a bit mask of
    parties) is held by those parties alone: the others draw nothing and get an empty tuple,
    and the dealer expands nothing for them."""
    m = dict(spec.params).get("m")
    return m is None or bool((m >> pid) & 1)


def check_members(spec: Spec, n_parties: int) -> None:
    """Refuse a member mask that a dealer of `n_parties` parties cannot serve (ValueError)."""
    m = dict(spec.params).get("m")
    if m is None:
        return
    if spec.kind != "trunc" and spec.kind not in OWNED:
        raise ValueError(f"{spec.kind} held by some parties only: only a truncation or an owned triple may be")
    held = [p for p in range(n_parties) if (m >> p) & 1]
    if m <= 0 or m >> n_parties or not m & 1 or len(held) < 2:
        raise ValueError(f"{spec.kind} held by parties mask {m}: two or more parties of {n_parties}, party 0 among "
                         "them, expected")
    if spec.kind == "trunc" and spec.param("n") != len(held):
        raise ValueError(f"trunc for {spec.param('n')} parties held by {len(held)}")
    if spec.kind in OWNED and m != (1 << spec.param("oa")) | (1 << spec.param("ob")):
        raise ValueError(f"{spec.kind} of owners {spec.param('oa')} and {spec.param('ob')} held by mask {m}")
