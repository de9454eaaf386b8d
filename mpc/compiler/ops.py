"""Registry entries for linear algebra and data movement: local ops, products, inputs.

A lowering takes (ctx, attrs, *input shares) and returns shares, or a protocol
generator (see registry.py). Comparisons and smooth functions are in nonlinear_ops.py.
"""

from __future__ import annotations

import torch

from mpc import ring
from mpc.compiler.registry import OPS, CompileError, local, register
from mpc.ir import TO_CALLER
from mpc.protocols import arithmetic, normalization

_register = register
_local = local


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


def _precise_mean(ctx, a, x):
    s = x.sum(dim=a["dims"], keepdim=a["keepdim"]) if a["dims"] else x.sum()
    return normalization.mean_of(ctx, s, round(1 / _mean_factor(a, x.shape)), a.get("bits", normalization.MEAN_BITS))


# `mean` encodes 1/m with f bits: f - log2(m) significant ones (0.7% off at m = 1000), fine for a
# loss, not for a statistic subtracted from every value (a mean of 100 would be 0.7 off).
_register("precise_mean", 1, OPS["sum"].shape, _precise_mean,
          doc="a mean whose factor 1/m keeps `bits` significant bits (normalization.mean_of; 2 rounds)")


# -- leaves ----------------------------------------------------------------------------------------------


def _input(ctx, a):
    """A private input shared by its owner (no message), a value kept from an earlier job,
    or a public value that the job gives every party alike (batch indices, step sizes)."""
    shape = tuple(a["shape"])
    kind = a.get("kind", "private")
    if kind == "kept":
        value = torch.empty(shape, dtype=torch.int64, device="meta") if ctx.dry_run else ctx.extras["kept"][ctx.label]
        if a.get("truncate", False):  # kept at scale 2^2f by a reveal that absorbed its truncation
            return arithmetic.truncate(ctx, value)
        return value
    if kind == "public":
        if ctx.dry_run:
            return torch.empty(shape, dtype=torch.int64, device="meta")
        value = ctx.extras["public"][ctx.label]
        if a.get("index", False):  # row indices: plain integers, the same at every party
            return value.to(torch.int64)
        return ctx.public(ring.encode(value, 0 if a.get("int") else ctx.frac_bits))
    if ctx.dry_run:
        return arithmetic.share_input(ctx, -1, torch.empty(shape, dtype=torch.int64, device="meta"), shape)
    owner = ctx.extras["owners"][ctx.label]
    enc = ctx.extras["inputs"].get(ctx.label)
    if owner == TO_CALLER:  # shared by the caller itself: each party was sent its share
        return enc
    if ctx.pid == owner and enc is None:
        raise CompileError(f"party {ctx.pid} owns input node {ctx.label} but was given no value for it")
    return arithmetic.share_input(ctx, owner, enc, shape)


def _input_shape(a):
    if a.get("kind", "private") not in ("private", "kept", "public"):
        raise CompileError(f"input kind {a.get('kind')!r}: must be 'private', 'kept' or 'public'")
    return torch.empty(a["shape"], dtype=torch.int64, device="meta")


_register("input", 0, _input_shape, _input)


def _take_shape(a, x):
    raise CompileError("take selects an output of a multi-output node; its shape comes from that node")


# `take` picks output k of a multi-output node; graph.py gives it that output's shape.
_register("take", 1, _take_shape, lambda ctx, a, xs: xs[a["index"]])
