"""From a graph to a Program: pruning, deferred truncation, and canonical numbering.

Program nodes are renumbered 0..n-1 in topological order, so the same computation on
new inputs gives the same program (and digest) however many nodes the graph holds: a
party that has it cached is sent only the job.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpc.compiler.graph import GraphBuilder
from mpc.compiler.passes.prune import live_nodes
from mpc.compiler.passes.truncation import deferred, mark
from mpc.ir import Node, Program


@dataclass
class Extracted:
    program: Program
    graph_ids: list[int]  # program node id -> graph node id

    def program_id(self) -> dict[int, int]:
        return {g: k for k, g in enumerate(self.graph_ids)}


def extract(builder: GraphBuilder, outputs: list[int], available: set[int] = frozenset(),
            double: set[int] = frozenset(), defer_truncation: bool = True, also: list[int] = ()) -> Extracted:
    """The program computing `outputs`, and the nodes in `also` (values the parties keep
    without revealing them, such as updated weights). Nodes in `available` are values the
    parties hold (they become kept inputs; those in `double` are at scale 2^2f)."""
    nodes = builder.nodes
    order = live_nodes(nodes, list(outputs) + [a for a in also if a not in outputs], available)
    defer = deferred(nodes, order, outputs, available, double) if defer_truncation else set()
    defer -= set(also)  # a kept value is used later: keep it at scale 2^f
    index = {gid: k for k, gid in enumerate(order)}
    program_nodes = []
    for k, gid in enumerate(order):
        n = nodes[gid]
        if gid in available:
            attrs = {"shape": n.shape, "kind": "kept", "truncate": gid in double and gid not in defer}
            program_nodes.append(Node(k, "input", (), attrs, n.shape, n.name, n.source))
        else:
            n = mark(n, gid in defer)
            program_nodes.append(Node(k, n.op, tuple(index[i] for i in n.inputs), n.attrs, n.shape, n.name,
                                      n.source, n.extra_shapes))
    program = Program(tuple(program_nodes), tuple(index[o] for o in outputs),
                      tuple(2 if o in defer else 1 for o in outputs), builder.frac_bits)
    return Extracted(program, order)
