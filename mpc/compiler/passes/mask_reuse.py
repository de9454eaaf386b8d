"""Mask reuse: a layer's backward products reuse the masked operands of its forward product.

Rewrites, in a training graph after reverse-mode differentiation, every secret product
z = x @ w whose gradient products are there,

    gx = g @ transpose(w)        gw = transpose(x) @ g        (either or both, same g),

into z = matmul_keep(x, w) and (gx, gw) = matmul_backward(g, masks of matmul_keep): the
forward opens x - a and w - b as before, the backward opens only g - d instead of
(g - d', w^T - b') for gx and (x^T - a'', g - d'') for gw, with one dealer correlation
holding the same a and b for all three products (protocols/reuse.py; Mohassel and Zhang,
SecureML, S&P 2017, §4.2). Per layer and step that saves |g| + |x| + |w| opened elements
when both gradients are needed, |x| when only gw is (the first layer); rounds and dealer
material are unchanged.

Why it is safe: the rewrite computes g @ w^T and x^T @ g exactly for any g shaped like z
(each truncation flag of the gradient products is kept), so it needs no knowledge that g
is a gradient. It requires g to depend on z, so that x, w (before z) cannot depend on the
gradient products (after g) and the graph stays acyclic. Masks stay fresh: each forward
product node has its own correlation, so unrolled steps use new masks every step.

Node ids keep their meaning: the replaced nodes' ids become `take`s of the new nodes, so
callers' handles (inputs, updated weights, the loss) need no remapping.
"""

from __future__ import annotations

import dataclasses

from mpc.compiler.graph import GraphBuilder
from mpc.compiler.passes.prune import live_nodes
from mpc.ir import Node, ancestors


def _is_transpose_of(node: Node, src: int, ndim: int) -> bool:
    if node.op != "transpose" or node.inputs != (src,):
        return False
    dims = {node.attrs["dim0"] % ndim, node.attrs["dim1"] % ndim}
    return dims == {ndim - 2, ndim - 1}


def _gradient_products(nodes: dict[int, Node], users: dict[int, list[int]], m: Node):
    """(gx node, gw node, g) for forward product m, or None when the pattern is not exact."""
    x, w = m.inputs
    gx, gw = [], []
    for t in users.get(w, []):
        if _is_transpose_of(nodes[t], w, len(nodes[w].shape)):
            gx += [u for u in users.get(t, []) if nodes[u].op == "matmul" and nodes[u].inputs[1] == t]
    for t in users.get(x, []):
        if _is_transpose_of(nodes[t], x, len(nodes[x].shape)):
            gw += [u for u in users.get(t, []) if nodes[u].op == "matmul" and nodes[u].inputs[0] == t]
    if len(gx) > 1 or len(gw) > 1 or not (gx or gw):
        return None
    gs = {nodes[gx[0]].inputs[0]} if gx else set()
    gs |= {nodes[gw[0]].inputs[1]} if gw else set()
    if len(gs) != 1:
        return None
    (g,) = gs
    if tuple(nodes[g].shape) != tuple(m.shape):
        return None
    if m.id not in ancestors([g], lambda i: nodes[i].inputs, lambda i: False):
        return None
    return (gx[0] if gx else None), (gw[0] if gw else None), g


def apply(b: GraphBuilder, roots: list[int]) -> tuple[GraphBuilder, int]:
    """A copy of `b` with every matching layer rewritten (the nodes `roots` need are
    searched); returns it and the number of products rewritten. `b` is not changed."""
    out = GraphBuilder(b.frac_bits)
    out.nodes = dict(b.nodes)
    out._ids = b._ids  # shares the counter: new ids never collide with the caller's
    nodes = out.nodes
    live = live_nodes(nodes, roots)
    users: dict[int, list[int]] = {}
    for nid in live:
        for i in nodes[nid].inputs:
            users.setdefault(i, []).append(nid)
    count = 0
    for nid in live:
        m = nodes[nid]
        if m.op != "matmul" or min(len(nodes[i].shape) for i in m.inputs) < 2:
            continue
        found = _gradient_products(nodes, users, m)
        if found is None:
            continue
        gx, gw, g = found
        flags = {"dx": gx is not None, "dw": gw is not None}
        keep = out.add("matmul_keep", m.inputs, {**flags, "truncate": m.attrs.get("truncate", True)}, name=m.name,
                       source=m.source)
        masks = [out.add("take", (keep.id,), {"index": k}, name=m.name, source=m.source).id for k in range(1, 8)]
        attrs = {**flags, "truncate_dx": nodes[gx].attrs.get("truncate", True) if gx else True,
                 "truncate_dw": nodes[gw].attrs.get("truncate", True) if gw else True}
        back = out.add("matmul_backward", (g, *masks), attrs, name=(nodes[gw or gx]).name, source="")
        _rebind(out, nid, keep.id, 0)
        if gx is not None:
            _rebind(out, gx, back.id, 0)
        if gw is not None:
            _rebind(out, gw, back.id, 1)
        count += 1
    return out, count


def _rebind(b: GraphBuilder, old: int, src: int, index: int) -> None:
    """Node id `old` becomes output `index` of node `src` (same shape, name and source)."""
    before = b.nodes[old]
    take = b.add("take", (src,), {"index": index}, name=before.name, source=before.source)
    del b.nodes[take.id]
    b.nodes[old] = dataclasses.replace(take, id=old)
