"""Owner-aware lowering: products of two parties' private inputs, known once a job names owners.

A program holds no party ids, so its lowering of `x * y` is a Beaver product of two shared
values. A job says who owns each private input; when both operands of a `mul`, `matmul` or
`conv2d` are private inputs of two different parties, the product needs no sharing of
either: `arithmetic.owned_product` sends one masked value each way between the two owners
and nothing else. An input then used by such products only is never shared at all (no
input mask is expanded for it): its node yields a shape-only placeholder.

The choice depends on the job's owners, so the parties' plan (correlations and rounds) is
made per (program, `owned_products`) and cached (runtime.session); the cost model takes the
owners too (compiler.cost.estimate).
"""

from __future__ import annotations

import torch

from mpc import ring
from mpc.ir import Node, Program
from mpc.protocols import correlations

PRODUCTS = ("mul", "matmul", "conv2d")

# node id -> (input node of x, input node of y, owner of x, owner of y)
Owned = dict[int, tuple[int, int, int, int]]


def _private_input(program: Program, nid: int) -> bool:
    node = program.nodes[nid]
    return node.op == "input" and node.attrs.get("kind", "private") == "private"


def owned_products(program: Program, owners: dict[int, int] | None) -> Owned:
    """The product nodes of `program` whose operands are private inputs of two different parties."""
    if not owners:
        return {}
    found: Owned = {}
    for node in program.nodes:
        if node.op not in PRODUCTS or len(node.inputs) != 2:
            continue
        ix, iy = node.inputs
        if not (_private_input(program, ix) and _private_input(program, iy)):
            continue
        ox, oy = owners.get(ix, -1), owners.get(iy, -1)
        if ox >= 0 and oy >= 0 and ox != oy:
            found[node.id] = (ix, iy, ox, oy)
    return found


def unshared_inputs(program: Program, owned: Owned, keep=()) -> set[int]:
    """Input nodes whose shares nothing reads: every user is an owned product, and the
    node is neither an output nor kept by the job."""
    if not owned:
        return set()
    users = program.consumers()
    operands = {i for ix, iy, _, _ in owned.values() for i in (ix, iy)}
    return {nid for nid in operands
            if all(u in owned for u in users[nid]) and nid not in program.outputs and nid not in keep}


def operand(pid: int, owner: int, nid: int, shape, extras: dict, dry_run: bool) -> torch.Tensor:
    """An owned product's operand at party `pid`: the owner's encoded plaintext, elsewhere
    (and in a dry run) a meta tensor that gives only its shape."""
    if pid == owner and not dry_run:
        return extras["inputs"][nid]
    return torch.empty(tuple(shape), dtype=torch.int64, device="meta")


def product(node: Node, shape_x, shape_y):
    """(the ordinary triple's spec, the ring's bilinear map) of product node `node`."""
    if node.op == "mul":
        return correlations.mul_triple(shape_x, shape_y), torch.mul
    if node.op == "matmul":
        return correlations.matmul_triple(shape_x, shape_y), ring.matmul
    a = node.attrs
    conv = tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), a["groups"]
    return correlations.conv2d_triple(shape_x, shape_y, *conv), lambda u, v: ring.conv2d(u, v, *conv)
