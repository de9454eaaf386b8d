"""Variants of a compiled model's program: weights already held, and batched requests.

`with_kept(program, names)` turns the named private inputs (a model's parameters) into
kept inputs, so that weights shared once serve every later inference without being
shared again. `replicate(program, k, shared)` puts k independent copies of a program in
one program, sharing the named inputs (the weights): the copies run side by side, so
k requests cost the rounds of one.
"""

from __future__ import annotations

from mpc.ir import Node, Program


def with_kept(program: Program, names: set[str]) -> Program:
    nodes = []
    for n in program.nodes:
        if n.op == "input" and n.name in names:
            n = Node(n.id, "input", (), {**n.attrs, "kind": "kept", "truncate": False}, n.shape, n.name, n.source)
        nodes.append(n)
    return Program(tuple(nodes), program.outputs, program.output_scales, program.frac_bits)


def replicate(program: Program, k: int, shared: set[str]) -> Program:
    """k copies; an input node named in `shared` appears once, every other node k times
    (copy i of a private input named "x" is named "x[i]")."""
    if k < 1:
        raise ValueError(f"cannot replicate a program {k} times")
    nodes: list[Node] = []
    shared_ids: dict[int, int] = {}
    for n in program.nodes:
        if n.op == "input" and n.name in shared:
            shared_ids[n.id] = len(nodes)
            nodes.append(Node(len(nodes), n.op, (), n.attrs, n.shape, n.name, n.source))
    outputs, scales = [], []
    for i in range(k):
        index = dict(shared_ids)
        for n in program.nodes:
            if n.id in shared_ids:
                continue
            index[n.id] = len(nodes)
            name = f"{n.name}[{i}]" if n.op == "input" else n.name
            nodes.append(Node(len(nodes), n.op, tuple(index[j] for j in n.inputs), n.attrs, n.shape, name, n.source,
                              n.extra_shapes))
        outputs += [index[o] for o in program.outputs]
        scales += list(program.output_scales)
    return Program(tuple(nodes), tuple(outputs), tuple(scales), program.frac_bits)
