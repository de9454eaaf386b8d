"""Pruning: keep only the nodes that the requested outputs need."""

from __future__ import annotations

from mpc.ir import Node, ancestors


def live_nodes(nodes: dict[int, Node], outputs: list[int], available: set[int] = frozenset()) -> list[int]:
    """Ids of the nodes `outputs` depend on, inputs first; a node in `available` (a value
    the parties already hold) is a leaf: nothing below it is recomputed."""
    return ancestors(list(outputs), lambda i: nodes[i].inputs, lambda i: i in available)
