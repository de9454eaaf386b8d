"""Lowering: turns a program node into the protocol that one party runs for it."""

from __future__ import annotations

from typing import Callable

from mpc.compiler.registry import lookup
from mpc.ir import Program
from mpc.protocols.base import PartyContext


def starter(program: Program, pid: int, n_parties: int, *, dry_run: bool, extras: dict | None = None) -> Callable:
    """A `start(node, input values)` callback for schedule.drive: the node's lowering,
    run in a context keyed by the node id (which keys its PRG streams)."""
    extras = extras if extras is not None else {}

    def start(node, inputs):
        ctx = PartyContext(pid, n_parties, program.frac_bits, dry_run=dry_run, label=node.id, extras=extras)
        return lookup(node.op, node.describe()).lower(ctx, node.attrs, *inputs)

    return start
