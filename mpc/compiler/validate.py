"""What a party checks in a program it is sent, before it caches or runs it."""

from __future__ import annotations

from mpc.compiler.registry import CompileError, infer_shapes
from mpc.ir import Program

MAX_NODES = 1_000_000
# A party allocates what a program declares: bound it before any allocation, so a program
# cannot exhaust a party's memory (2 GiB of int64 shares a node, 16 GiB over the program).
MAX_NODE_ELEMENTS = 1 << 28
MAX_PROGRAM_ELEMENTS = 1 << 31


def validate(program: Program) -> None:
    """Raise CompileError unless nodes are numbered 0..n-1 in topological order, every op
    is known, every declared shape is the one its op gives, and outputs exist. A program may have no
    outputs: a job that only shares values for the parties to keep (a model's weights)."""
    if len(program.nodes) > MAX_NODES:
        raise CompileError(f"program has {len(program.nodes)} nodes, more than the limit of {MAX_NODES}")
    if not 1 <= program.frac_bits <= 30:
        raise CompileError(f"frac_bits must be between 1 and 30, got {program.frac_bits}")
    total = 0
    for k, node in enumerate(program.nodes):
        for shape in (node.shape, *node.extra_shapes):
            n = 1
            for d in shape:
                n *= d
            if n > MAX_NODE_ELEMENTS or any(d < 0 for d in shape):
                raise CompileError(f"{node.describe()} declares shape {tuple(shape)}: at most {MAX_NODE_ELEMENTS} "
                                   "elements a node")
            total += n
        if total > MAX_PROGRAM_ELEMENTS:
            raise CompileError(f"program declares more than {MAX_PROGRAM_ELEMENTS} elements by {node.describe()}")
        if node.id != k:
            raise CompileError(f"{node.describe()} is at position {k}: program nodes must be numbered in order")
        for i in node.inputs:
            if not 0 <= i < k:
                raise CompileError(f"{node.describe()} uses node {i}, which is not computed before it")
            if program.nodes[i].extra_shapes and node.op != "take":
                raise CompileError(f"{node.describe()} uses multi-output {program.nodes[i].describe()} without take")
        if node.op == "take":
            src = program.nodes[node.inputs[0]] if len(node.inputs) == 1 else None
            outs = (src.shape, *src.extra_shapes) if src else ()
            k_out = node.attrs.get("index")
            if src is None or not isinstance(k_out, int) or not 0 <= k_out < len(outs):
                raise CompileError(f"{node.describe()} selects an output that does not exist")
            shapes = (outs[k_out],)
        else:
            shapes = infer_shapes(node.op, node.attrs, [program.nodes[i].shape for i in node.inputs], node.describe())
        if node.op == "gather_rows":
            idx = program.nodes[node.inputs[1]]
            if idx.op != "input" or idx.attrs.get("kind") != "public" or not idx.attrs.get("index"):
                raise CompileError(f"{node.describe()} takes its row indices from {idx.describe()}, which is not a "
                                   "public index input")
        if (tuple(node.shape), *map(tuple, node.extra_shapes)) != shapes:
            raise CompileError(f"{node.describe()}: declared shape {tuple(node.shape)}, computed {shapes[0]}")
    if len(program.output_scales) != len(program.outputs) or any(s not in (1, 2) for s in program.output_scales):
        raise CompileError(f"output scales {program.output_scales} do not fit {len(program.outputs)} outputs")
    for nid in program.outputs:
        if not 0 <= nid < len(program.nodes):
            raise CompileError(f"output refers to unknown node {nid}")
        if program.nodes[nid].extra_shapes:
            raise CompileError(f"output {program.nodes[nid].describe()} has several outputs: select one with take")
