"""The compiler: checks a plan's ops and shapes and lowers each node to a protocol."""

from mpc.compiler.ops import OPS, CompileError, infer_shape
from mpc.ir import Plan

__all__ = ["OPS", "CompileError", "infer_shape", "validate"]


def validate(plan: Plan, stored: set[int] = frozenset()) -> None:
    """Raise CompileError unless every node has a known op, known inputs and the shape
    its op gives. `stored` holds ids of values the parties kept from earlier jobs."""
    shapes: dict[int, tuple[int, ...]] = {}
    for node in plan.nodes:
        if node.op == "stored":
            if node.id not in stored:
                raise CompileError(f"node {node.id} refers to a stored value this party does not hold")
            shapes[node.id] = node.shape
            continue
        missing = [i for i in node.inputs if i not in shapes]
        if missing:
            raise CompileError(f"{node.op} at node {node.id} uses node {missing[0]}, which is not computed before it")
        shape = infer_shape(node, [shapes[i] for i in node.inputs])
        if shape != tuple(node.shape):
            raise CompileError(f"{node.op} at node {node.id}: declared shape {tuple(node.shape)}, computed {shape}")
        shapes[node.id] = shape
    for out in plan.outputs:
        if out.node not in shapes:
            raise CompileError(f"output refers to unknown node {out.node}")
        if out.to < -2 or out.to >= plan.n_parties:
            raise CompileError(f"output of node {out.node} addressed to {out.to}, not a party of {plan.n_parties}")
