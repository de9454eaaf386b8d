"""Reverse-mode differentiation over the IR: the backward pass is more nodes of the same kinds.

`backward(b, seeds, wrt)` walks the graph from the seeded outputs back to the nodes in
`wrt`, in reverse topological order, and asks each op's gradient rule (grads.py, in the
op registry) for its inputs' gradients; gradients reaching a node along several paths
are added. Only nodes on a path to `wrt` get gradients, so nothing is computed for the
data. Multi-output ops receive one gradient per output (those selected with `take`).
Because the result is ordinary graph nodes, the scheduler lets independent gradients
share rounds: a layer's input gradient and weight gradient go out together.
"""

from __future__ import annotations

from mpc.compiler import grads  # noqa: F401  (attaches the rules)
from mpc.compiler.graph import GraphBuilder
from mpc.compiler.registry import OPS, CompileError
from mpc.ir import ancestors


def backward(b: GraphBuilder, seeds: dict[int, int], wrt: list[int]) -> dict[int, int]:
    """Gradient node of each node in `wrt`, given the gradient node of each seeded output."""
    order = ancestors(list(seeds), lambda i: b.nodes[i].inputs, lambda i: False)
    wanted = set(wrt)
    reaches: set[int] = set()  # nodes with a node of `wrt` among their ancestors (or in it)
    for nid in order:
        if nid in wanted or any(i in reaches for i in b.nodes[nid].inputs):
            reaches.add(nid)
    grads: dict[tuple[int, int], int] = {}

    def accumulate(nid: int, k: int, g: int) -> None:
        have = grads.get((nid, k))
        grads[(nid, k)] = g if have is None else b.add("add", (have, g), name=b.nodes[nid].name, source="").id

    for nid, g in seeds.items():
        accumulate(nid, 0, g)
    for nid in reversed(order):
        node = b.nodes[nid]
        if nid not in reaches or node.op == "input":
            continue
        if node.op == "take":
            g = grads.get((nid, 0))
            if g is not None:
                accumulate(node.inputs[0], node.attrs["index"], g)
            continue
        gouts = tuple(grads.get((nid, k)) for k in range(OPS[node.op].n_outputs))
        if all(g is None for g in gouts):
            continue
        rule = OPS[node.op].grad
        if rule is None:
            raise CompileError(f"no gradient rule for op '{node.op}' at {node.describe()}; ops with one: "
                               f"{', '.join(sorted(op for op, d in OPS.items() if d.grad))}")
        needs = tuple(i in reaches for i in node.inputs)
        try:
            gins = rule(b, node, gouts, needs)
        except NotImplementedError as exc:
            raise CompileError(f"cannot differentiate {node.describe()}: {exc}") from None
        for i, gi, need in zip(node.inputs, gins, needs):
            if need and gi is not None:
                accumulate(i, 0, gi)
    missing = [w for w in wrt if (w, 0) not in grads]
    if missing:
        raise CompileError(f"{b.nodes[missing[0]].describe()} does not influence the loss: it gets no gradient")
    return {w: grads[(w, 0)] for w in wrt}
