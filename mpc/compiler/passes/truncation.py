"""Deferred truncation: a product that is only revealed skips its truncation.

The recipient sums shares of x*y at scale 2^2f and decodes them exactly, which saves the
truncation's round and a third of the bytes, and is more accurate. A product used
further in the same program must be truncated. A value kept untruncated for a later
program is truncated there, on first use (its input node has `truncate=True`).
"""

from __future__ import annotations

from mpc.ir import Node

# Products whose lowering reads attrs["truncate"].
DEFERRABLE = ("mul", "matmul", "conv2d", "conv_transpose2d", "conv2d_weight", "square")


def deferred(nodes: dict[int, Node], order: list[int], outputs: list[int], available: set[int],
             double: set[int]) -> set[int]:
    """The outputs that can be left at scale 2^2f: used by no other node of `order`, and
    either a deferrable product computed here or an available value already at 2^2f."""
    used = {i for nid in order if nid not in available for i in nodes[nid].inputs}
    out = set()
    for nid in outputs:
        if nid in used:
            continue
        if (nid in available and nid in double) or (nid not in available and nodes[nid].op in DEFERRABLE):
            out.add(nid)
    return out


def mark(node: Node, defer: bool) -> Node:
    """The node with its truncation left to the recipient."""
    if not defer:
        return node
    return Node(node.id, node.op, node.inputs, {**node.attrs, "truncate": False}, node.shape, node.name,
                node.source, node.extra_shapes)
