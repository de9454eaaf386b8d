"""Public-weight specialisation: when the model is declared public, its parameters become
public attributes of the ops that use them.

A product with a public operand is local (each party multiplies its own share) followed
by one truncation: `matmul(x, W)` becomes `matmul_public`, `conv2d(x, W)` becomes
`conv2d_public`, `mul(x, w)` becomes `mul_public`, and the bias `add(y, b)` becomes
`add_public`; linear layers then need no Beaver triple and open only the truncation's
mask. A parameter used any other way (concatenated with a secret, say) stays a private
input of the model owner, which is still correct.
"""

from __future__ import annotations

from mpc.compiler.passes.rewrite import ModelGraph, Rewriter


def apply(graph: ModelGraph) -> ModelGraph:
    def visit(rw: Rewriter, node):
        if len(node.inputs) != 2:
            return None
        a, b = node.inputs
        if rw.is_param(a) == rw.is_param(b):  # both secret, or both plaintext (capture folds those)
            return None
        x, w, param_first = (b, a, True) if rw.is_param(a) else (a, b, False)
        value = rw.value(w)
        if node.op == "matmul":
            return rw.add("matmul_public", [rw[x]], {"value": value, "side": "left" if param_first else "right"}, node)
        if node.op == "conv2d" and not param_first:
            attrs = {k: node.attrs[k] for k in ("stride", "padding", "dilation", "groups")}
            return rw.add("conv2d_public", [rw[x]], {**attrs, "value": value}, node)
        if node.op == "mul":
            return rw.add("mul_public", [rw[x]], {"value": value}, node)
        if node.op == "add":
            return rw.add("add_public", [rw[x]], {"value": value}, node)
        if node.op == "sub":
            if param_first:  # w - x
                return rw.add("add_public", [rw.add("neg", [rw[x]], {}, node)], {"value": value}, node)
            return rw.add("add_public", [rw[x]], {"value": -value}, node)
        return None

    return Rewriter(graph).run(visit)
