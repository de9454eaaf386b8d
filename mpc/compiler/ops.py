"""The op table: for every IR op, its shape rule and its lowering to a protocol.

Shape rules run the op on `meta` tensors, so shapes and broadcasting follow torch
exactly; a mismatch is reported with both shapes before anything is sent. A lowering
takes (ctx, attrs, *input shares) and returns shares, or a protocol generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from mpc import ring
from mpc.ir import Node
from mpc.protocols import arithmetic


class CompileError(ValueError):
    """A plan or an operation that cannot be compiled: unknown op, bad shapes or attrs."""


@dataclass(frozen=True)
class OpDef:
    name: str
    arity: int | None  # None: any number of inputs
    shape: Callable  # (attrs, *meta tensors) -> meta tensor
    lower: Callable  # (ctx, attrs, *shares) -> shares or generator


OPS: dict[str, OpDef] = {}


def _register(name, arity, shape, lower):
    OPS[name] = OpDef(name, arity, shape, lower)


def _local(name, arity, fn):
    """An op that each party applies to its own shares: linear, no communication."""
    _register(name, arity, fn, lambda ctx, attrs, *xs: fn(attrs, *xs))


# -- index encoding: getitem keys as flat int tuples ---------------------------------------------

_NONE = -(2**63)


def encode_index(key) -> tuple[int, ...]:
    """Flatten a basic-indexing key (ints, slices, None, Ellipsis) into ints."""
    if not isinstance(key, tuple):
        key = (key,)
    out: list[int] = []
    for k in key:
        if isinstance(k, bool) or not isinstance(k, (int, slice, type(None), type(Ellipsis))):
            if isinstance(k, torch.Tensor) and k.dim() == 0 and not k.is_floating_point():
                k = int(k)
            else:
                raise CompileError(f"unsupported index {k!r}: use ints, slices, None or ...")
        if isinstance(k, int):
            out += [0, k]
        elif isinstance(k, slice):
            out += [1] + [_NONE if v is None else int(v) for v in (k.start, k.stop, k.step)]
        elif k is None:
            out += [2]
        else:
            out += [3]
    return tuple(out)


def decode_index(flat) -> tuple:
    key, i = [], 0
    while i < len(flat):
        tag = flat[i]
        if tag == 0:
            key.append(flat[i + 1])
            i += 2
        elif tag == 1:
            key.append(slice(*(None if v == _NONE else v for v in flat[i + 1:i + 4])))
            i += 4
        elif tag == 2:
            key.append(None)
            i += 1
        elif tag == 3:
            key.append(Ellipsis)
            i += 1
        else:
            raise CompileError(f"malformed index encoding {tuple(flat)}")
    return tuple(key)


# -- local ops ---------------------------------------------------------------------------------------

_local("add", 2, lambda a, x, y: x + y)
_local("sub", 2, lambda a, x, y: x - y)
_local("neg", 1, lambda a, x: -x)
_local("reshape", 1, lambda a, x: x.reshape(a["shape"]))
_local("transpose", 1, lambda a, x: x.transpose(a["dim0"], a["dim1"]))
_local("permute", 1, lambda a, x: x.permute(*a["dims"]))
_local("expand", 1, lambda a, x: x.expand(*a["shape"]))
_local("getitem", 1, lambda a, x: x[decode_index(a["index"])])
_local("cat", None, lambda a, *xs: torch.cat(xs, dim=a["dim"]))
_local("stack", None, lambda a, *xs: torch.stack(xs, dim=a["dim"]))
_local("sum", 1, lambda a, x: x.sum(dim=a["dims"], keepdim=a["keepdim"]) if a["dims"] else x.sum())


def _add_public_shape(a, x):
    return x + a["value"].to(device="meta", dtype=torch.int64)


def _add_public(ctx, a, x):
    return x + ctx.public(ring.encode(a["value"], ctx.frac_bits)).to(x.device)


_register("add_public", 1, _add_public_shape, _add_public)

# -- ops that communicate ------------------------------------------------------------------------------


def _mul_public_shape(a, x):
    return x * a["value"].to(device="meta", dtype=torch.int64)


_register("mul_public", 1, _mul_public_shape, lambda ctx, a, x: arithmetic.scale_public(ctx, x, a["value"]))


def _matmul_public_shape(a, x):
    v = a["value"].to(device="meta", dtype=torch.int64)
    return x @ v if a["side"] == "right" else v @ x


def _matmul_public(ctx, a, x):
    if a["side"] == "right":
        return arithmetic.scale_public(ctx, x, a["value"], op=ring.matmul)
    return arithmetic.scale_public(ctx, x, a["value"], op=lambda u, v: ring.matmul(v, u))


_register("matmul_public", 1, _matmul_public_shape, _matmul_public)

# attrs["truncate"] = False leaves a product at scale 2^2f, for a caller that decodes it so.
_register("mul", 2, lambda a, x, y: x * y,
          lambda ctx, a, x, y: arithmetic.mul(ctx, x, y, scaled=a.get("truncate", True)))
_register("matmul", 2, lambda a, x, y: x @ y,
          lambda ctx, a, x, y: arithmetic.matmul(ctx, x, y, scaled=a.get("truncate", True)))


def _conv_args(a):
    return tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), a["groups"]


def _conv2d_shape(a, x, w):
    if x.dim() != 4 or w.dim() != 4:
        raise ValueError("conv2d expects a 4-d input and a 4-d kernel")
    return ring.conv2d(x, w, *_conv_args(a))


_register("conv2d", 2, _conv2d_shape,
          lambda ctx, a, x, w: arithmetic.conv2d(ctx, x, w, *_conv_args(a), scaled=a.get("truncate", True)))


def _mean_factor(a, shape) -> float:
    dims = a["dims"] or tuple(range(len(shape)))
    count = 1
    for d in dims:
        count *= shape[d]
    return 1.0 / count


def _mean(ctx, a, x):
    s = x.sum(dim=a["dims"], keepdim=a["keepdim"]) if a["dims"] else x.sum()
    return arithmetic.scale_public(ctx, s, torch.tensor(_mean_factor(a, x.shape), dtype=torch.float64))


_register("mean", 1, OPS["sum"].shape, _mean)


# -- leaves ----------------------------------------------------------------------------------------------


def _input(ctx, a):
    enc = ctx.extras.get("inputs", {}).get(ctx.label)
    if ctx.dry_run:
        enc = torch.empty(a["shape"], dtype=torch.int64, device="meta")
    elif ctx.pid == a["owner"] and enc is None:
        raise CompileError(f"party {ctx.pid} owns input node {ctx.label} but was given no value for it")
    return arithmetic.share_input(ctx, a["owner"], enc, a["shape"])


_register("input", 0, lambda a: torch.empty(a["shape"], dtype=torch.int64, device="meta"), _input)


# -- checking ------------------------------------------------------------------------------------------


def infer_shape(node: Node, input_shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The output shape of `node`, or a CompileError naming the op, the node and the shapes."""
    opdef = OPS.get(node.op)
    if opdef is None:
        raise CompileError(f"unknown op '{node.op}' at node {node.id}")
    if opdef.arity is not None and len(input_shapes) != opdef.arity:
        raise CompileError(f"{node.op} at node {node.id} takes {opdef.arity} inputs, got {len(input_shapes)}")
    metas = [torch.empty(s, dtype=torch.int64, device="meta") for s in input_shapes]
    try:
        out = opdef.shape(node.attrs, *metas)
    except CompileError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError, KeyError) as exc:
        shapes = " and ".join(str(tuple(s)) for s in input_shapes) or "no inputs"
        raise CompileError(f"{node.op} at node {node.id}: shapes {shapes} do not fit: {exc}") from None
    return tuple(out.shape)


from mpc.compiler import nonlinear_ops  # noqa: E402,F401  (registers its ops into OPS)
