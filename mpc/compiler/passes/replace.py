"""The `replace` option: swap costly layers for MPC-friendly ones, as the seeds do.

`{"relu": "square"}` turns every ReLU into x*x (one square-pair opening and a truncation
instead of a comparison's many rounds), `{"relu": "sigmoid"}` into a sigmoid, and
`{"maxpool": "avgpool"}` every max-pool into an average pool of the same window (local
sums and one truncation instead of a max tree of comparisons). This changes the function
the model computes: the accuracy cost must be measured, it is not hidden.
"""

from __future__ import annotations

from mpc.compiler.passes.rewrite import ModelGraph, Rewriter
from mpc.compiler.registry import CompileError

CHOICES = {"relu": ("square", "sigmoid"), "maxpool": ("avgpool",)}


def check(replace: dict | None) -> dict:
    replace = dict(replace or {})
    for key, value in replace.items():
        if key not in CHOICES:
            raise CompileError(f"replace: unknown layer {key!r}; replaceable: {', '.join(CHOICES)}")
        if value not in CHOICES[key]:
            raise CompileError(f"replace: {key!r} can become {' or '.join(map(repr, CHOICES[key]))}, not {value!r}")
    return replace


def apply(graph: ModelGraph, replace: dict | None) -> ModelGraph:
    replace = check(replace)
    if not replace:
        return graph

    def visit(rw: Rewriter, node):
        if node.op == "relu" and "relu" in replace:
            return rw.add(replace["relu"], [rw[node.inputs[0]]], {}, node)
        if node.op == "max_pool2d" and replace.get("maxpool") == "avgpool":
            attrs = {"kernel": node.attrs["kernel"], "stride": node.attrs["stride"],
                     "padding": node.attrs["padding"], "count_include_pad": True, "divisor": 0}
            return rw.add("avg_pool2d", [rw[node.inputs[0]]], attrs, node)
        return None

    return Rewriter(graph).run(visit)
