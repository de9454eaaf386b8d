"""Lowering: turns a program node into the protocol that one party runs for it."""

from __future__ import annotations

from typing import Callable

import torch

from mpc.compiler import owned as owned_
from mpc.compiler.registry import lookup
from mpc.ir import Program
from mpc.protocols import arithmetic
from mpc.protocols.base import PartyContext


def starter(program: Program, pid: int, n_parties: int, *, dry_run: bool, extras: dict | None = None) -> Callable:
    """A `start(node, input values)` callback for schedule.drive: the node's lowering,
    run in a context keyed by the node id (which keys its PRG streams). With the job's
    owners in `extras["owners"]`, products of two parties' inputs lower owner-aware
    (compiler/owned.py)."""
    extras = extras if extras is not None else {}
    owned = owned_.owned_products(program, extras.get("owners"))
    unshared = owned_.unshared_inputs(program, owned, extras.get("keep", ()))

    def start(node, inputs):
        ctx = PartyContext(pid, n_parties, program.frac_bits, dry_run=dry_run, label=node.id, extras=extras)
        if node.id in unshared:
            return torch.empty(tuple(node.shape), dtype=torch.int64, device="meta")
        if node.id in owned:
            ix, iy, ox, oy = owned[node.id]
            x = owned_.operand(pid, ox, ix, program.nodes[ix].shape, extras, dry_run)
            y = owned_.operand(pid, oy, iy, program.nodes[iy].shape, extras, dry_run)
            spec, op = owned_.product(node, x.shape, y.shape)
            return arithmetic.owned_product(ctx, spec, op, x, y, ox, oy, scaled=node.attrs.get("truncate", True))
        return lookup(node.op, node.describe()).lower(ctx, node.attrs, *inputs)

    return start
