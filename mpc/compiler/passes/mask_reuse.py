"""Mask reuse: a layer's backward products reuse the masked operands of its forward product.

Rewrites, in a training graph after reverse-mode differentiation, every secret product
z = x @ w whose gradient products are there (as grads.py builds them),

    gx = g @ transpose(w)        gw = transpose(x) @ g        (either or both, same g),

and likewise every convolution z = conv2d(x, w) (any stride, padding, dilation, groups) with

    gx = conv_transpose2d(g, w)        gw = conv2d_weight(x, g)        (the same parameters),

into z = bilinear_keep(x, w) and (gx, gw) = bilinear_backward(g, masks of bilinear_keep):
the forward opens x - a and w - b as before, the backward opens only g - d instead of
(g - d', w - b') for gx and (x - a'', g - d'') for gw, with one dealer correlation holding
the same a and b for all three products (protocols/reuse.py; Mohassel and Zhang, SecureML,
S&P 2017, §4.2). Per layer and step that saves |g| + |x| + |w| opened elements when both
gradients are needed, |x| when only gw is (the first layer); rounds and dealer material
are unchanged.

Why it is safe: the rewrite computes the two gradient products exactly for any g shaped
like z (each truncation flag of the gradient products is kept), so it needs no knowledge
that g is a gradient. It requires g to depend on z, so that x, w (before z) cannot depend
on the gradient products (after g) and the graph stays acyclic. Masks stay fresh: each
forward product node has its own correlation, so unrolled steps use new masks every step.

Node ids keep their meaning: the replaced nodes' ids become `take`s of the new nodes, so
callers' handles (inputs, updated weights, the loss) need no remapping.
"""

from __future__ import annotations

import dataclasses

from mpc.compiler.graph import GraphBuilder
from mpc.compiler.passes.prune import live_nodes
from mpc.ir import Node, ancestors


def _swaps(node: Node, src: int, dims: set[int]) -> bool:
    """Whether node is transpose(src) of exactly `dims` (negative dims read from the end)."""
    if node.op != "transpose" or node.inputs != (src,):
        return False
    return {node.attrs["dim0"] % len(node.shape), node.attrs["dim1"] % len(node.shape)} == dims


def _matmul_candidates(nodes, users, m: Node):
    """gx = g @ transpose(w) and gw = transpose(x) @ g: lists of (node, g)."""
    x, w = m.inputs
    last2 = lambda i: {len(nodes[i].shape) - 2, len(nodes[i].shape) - 1}  # noqa: E731
    gx, gw = [], []
    for t in users.get(w, []):
        if _swaps(nodes[t], w, last2(w)):
            gx += [(u, nodes[u].inputs[0]) for u in users.get(t, [])
                   if nodes[u].op == "matmul" and nodes[u].inputs[1] == t]
    for t in users.get(x, []):
        if _swaps(nodes[t], x, last2(x)):
            gw += [(u, nodes[u].inputs[1]) for u in users.get(t, [])
                   if nodes[u].op == "matmul" and nodes[u].inputs[0] == t]
    return gx, gw


_CONV_KEYS = ("stride", "padding", "dilation", "groups")


def _same_conv(n: Node, m: Node) -> bool:
    """Whether gradient product n has the stride, padding, dilation and groups of conv m."""
    return all(n.attrs.get(k) == m.attrs[k] if k == "groups" else tuple(n.attrs.get(k, ())) == tuple(m.attrs[k])
               for k in _CONV_KEYS)


def _conv_candidates(nodes, users, m: Node):
    """gx = conv_transpose2d(g, w) shaped like x, gw = conv2d_weight(x, g): lists of (node, g)."""
    x, w = m.inputs
    gx = [(u, nodes[u].inputs[0]) for u in users.get(w, []) if nodes[u].op == "conv_transpose2d"
          and nodes[u].inputs[1] == w and _same_conv(nodes[u], m) and nodes[u].shape == nodes[x].shape]
    gw = [(u, nodes[u].inputs[1]) for u in users.get(x, []) if nodes[u].op == "conv2d_weight"
          and nodes[u].inputs[0] == x and _same_conv(nodes[u], m)]
    return gx, gw


def _gradient_products(nodes: dict[int, Node], users: dict[int, list[int]], m: Node):
    """(gx node, gw node, g) for forward product m, or None when the pattern is not exact."""
    if m.op == "matmul" and min(len(nodes[i].shape) for i in m.inputs) >= 2:
        gx, gw = _matmul_candidates(nodes, users, m)
    elif m.op == "conv2d" and len(nodes[m.inputs[1]].shape) == 4:
        gx, gw = _conv_candidates(nodes, users, m)
    else:
        return None
    if len(gx) > 1 or len(gw) > 1 or not (gx or gw):
        return None
    gs = {g for _, g in gx + gw}
    if len(gs) != 1:
        return None
    (g,) = gs
    if tuple(nodes[g].shape) != tuple(m.shape):
        return None
    if m.id not in ancestors([g], lambda i: nodes[i].inputs, lambda i: False):
        return None
    return (gx[0][0] if gx else None), (gw[0][0] if gw else None), g


def apply(b: GraphBuilder, roots: list[int]) -> tuple[GraphBuilder, int]:
    """A copy of `b` with every matching layer rewritten (the nodes `roots` need are
    searched); returns it and the number of products rewritten. `b`'s nodes are not
    changed (the copy draws new ids from the same counter, so they never collide)."""
    out = GraphBuilder(b.frac_bits)
    out.nodes = dict(b.nodes)
    out._ids = b._ids
    nodes = out.nodes
    live = live_nodes(nodes, roots)
    users: dict[int, list[int]] = {}
    for nid in live:
        for i in nodes[nid].inputs:
            users.setdefault(i, []).append(nid)
    count = 0
    for nid in live:
        m = nodes[nid]
        found = _gradient_products(nodes, users, m)
        if found is None:
            continue
        gx, gw, g = found
        conv = m.op == "conv2d"
        form = {"dx": gx is not None, "dw": gw is not None, "conv": conv}
        if conv:
            form.update({k: m.attrs[k] for k in _CONV_KEYS})
        keep = out.add("bilinear_keep", m.inputs, {**form, "truncate": m.attrs.get("truncate", True)}, name=m.name,
                       source=m.source)
        masks = [out.add("take", (keep.id,), {"index": k}, name=m.name, source=m.source).id for k in range(1, 8)]
        attrs = {**form, "truncate_dx": nodes[gx].attrs.get("truncate", True) if gx else True,
                 "truncate_dw": nodes[gw].attrs.get("truncate", True) if gw else True}
        back = out.add("bilinear_backward", (g, *masks), attrs, name=nodes[gw or gx].name, source="")
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
