"""The graph IR: nodes of named ops over secret tensors, and the plan the parties execute.

A node names an op, its input nodes, public attributes and its output shape. Attributes
are ints, floats, strings, bools, int tuples or public tensors, so that a plan can be
serialized without pickle. Node ids are unique within a cluster session: values kept by
the parties after one job are referenced by id in the next (op "stored"). The IR carries
no notion of direction: a backward pass is more nodes of the same kinds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import torch

Attr = Union[int, float, str, bool, tuple, torch.Tensor]

# Output recipients besides a party id.
TO_CALLER = -1
TO_ALL = -2


@dataclass(frozen=True)
class Node:
    id: int
    op: str
    inputs: tuple[int, ...]
    attrs: dict = field(default_factory=dict, hash=False, compare=False)
    shape: tuple[int, ...] = ()

    def describe(self) -> str:
        return f"node {self.id} ({self.op})"


@dataclass(frozen=True)
class Output:
    node: int
    to: int = TO_CALLER  # TO_CALLER, TO_ALL or a party id


@dataclass
class Plan:
    """Nodes in topological order, what to reveal to whom, and what the parties keep."""

    nodes: list[Node]
    outputs: list[Output]
    keep: list[int] = field(default_factory=list)
    frac_bits: int = 16
    n_parties: int = 3

    def node_map(self) -> dict[int, Node]:
        return {n.id: n for n in self.nodes}

    def consumers(self) -> dict[int, list[int]]:
        users: dict[int, list[int]] = {n.id: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                users.setdefault(i, []).append(n.id)
        return users


def ancestors(roots: list[int], inputs_of, stop) -> list[int]:
    """Ids reachable from `roots` through `inputs_of`, not descending below `stop(id)`,
    in topological order (inputs before users)."""
    order: list[int] = []
    seen: set[int] = set()
    stack = [(r, False) for r in reversed(roots)]
    while stack:
        nid, expanded = stack.pop()
        if expanded:
            order.append(nid)
            continue
        if nid in seen:
            continue
        seen.add(nid)
        stack.append((nid, True))
        if not stop(nid):
            for i in reversed(inputs_of(nid)):
                if i not in seen:
                    stack.append((i, False))
    return order
