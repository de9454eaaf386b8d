"""Op table entries for comparisons, reductions and smooth functions (see ops.py).

Registered on import by ops.py. Shape rules run torch's own function on `meta` tensors
where one exists, so shapes, broadcasting and argument checks follow torch.
"""

from __future__ import annotations

import torch

from mpc import ring
from mpc.compiler.registry import CompileError, register as _register
from mpc.protocols import approx, arithmetic, nonlinear, ranges

_COMPARISONS = ("ge", "gt", "le", "lt", "eq", "ne")


def _same(a, x):
    return x


def _unary(name, fn):
    _register(name, 1, _same, lambda ctx, a, x: fn(ctx, x))


_unary("relu", nonlinear.relu)
_unary("abs", nonlinear.abs_)
_unary("sign", nonlinear.sign)
_unary("exp", approx.exp)
_unary("log", approx.log)
_unary("reciprocal", approx.reciprocal)
_unary("sqrt", approx.sqrt)
_unary("inv_sqrt", approx.inv_sqrt)
_unary("sqrt_wide", ranges.sqrt_wide)  # x in [2^-16, 2^30): range reduction, 7 rounds more than sqrt
_unary("reciprocal_wide", ranges.reciprocal_wide)  # x in [2^-16, 2^16)
# x in [2^-16, 2^30); attrs["gain_bits"] = g returns 2^g / sqrt(x) (more significant bits of a small result)
_register("inv_sqrt_wide", 1, _same, lambda ctx, a, x: ranges.inv_sqrt_wide(ctx, x, a.get("gain_bits", 0)))
_unary("sigmoid", approx.sigmoid)
_unary("tanh", approx.tanh)


def _check_comparison(a):
    if a["cmp"] not in _COMPARISONS:
        raise CompileError(f"unknown comparison {a['cmp']!r}; known: {', '.join(_COMPARISONS)}")


def _cmp_shape(a, x, y):
    _check_comparison(a)
    return x + y


def _cmp(ctx, a, x, y):
    x, y = torch.broadcast_tensors(x, y)
    return nonlinear.compare_op(ctx, x, y, a["cmp"])


_register("cmp", 2, _cmp_shape, _cmp)


def _public_operand(ctx, a, key, like):
    return ctx.public(ring.encode(a[key], ctx.frac_bits).to(like.device)).expand(like.shape)


def _cmp_public_shape(a, x):
    _check_comparison(a)
    return x + a["value"].to(device="meta", dtype=torch.int64)


def _cmp_public(ctx, a, x):
    shape = torch.broadcast_shapes(x.shape, a["value"].shape)
    x = x.expand(shape)
    return nonlinear.compare_op(ctx, x, _public_operand(ctx, a, "value", x), a["cmp"])


_register("cmp_public", 1, _cmp_public_shape, _cmp_public)


def _clamp_shape(a, x):
    for key in ("low", "high"):
        if key in a and a[key].dim() and torch.broadcast_shapes(x.shape, a[key].shape) != x.shape:
            raise ValueError(f"clamp bound of shape {tuple(a[key].shape)} does not fit {tuple(x.shape)}")
    if "low" in a and "high" in a and bool((a["low"] > a["high"]).any()):
        raise CompileError("clamp: low bound above high bound")
    return x


def _clamp(ctx, a, x):
    low = _public_operand(ctx, a, "low", x) if "low" in a else None
    high = _public_operand(ctx, a, "high", x) if "high" in a else None
    return nonlinear.clamp(ctx, x, low, high)


_register("clamp", 1, _clamp_shape, _clamp)


def _where(ctx, a, cond, x, y):
    """where(c, x, y) = y + c (x - y) for a secret fixed-point 0/1 condition c: a product."""
    cond, x, y = torch.broadcast_tensors(cond, x, y)
    return _where_mul(ctx, cond, x, y)


def _where_mul(ctx, cond, x, y):
    z = yield from arithmetic.mul(ctx, cond, x - y)
    return y + z


_register("where", 3, lambda a, c, x, y: c + x + y, _where)
_register("where_public", 2, lambda a, x, y: torch.where(a["cond"].to("meta"), x, y),
          lambda ctx, a, x, y: torch.where(a["cond"].to(x.device), x, y))


def _dim_shape(a, x):
    if x.numel() == 0:
        raise ValueError("reduction of an empty tensor")
    return torch.amax(x, dim=a["dim"], keepdim=a["keepdim"])


_register("max", 1, _dim_shape, lambda ctx, a, x: _first(nonlinear.max_(ctx, x, a["dim"], a["keepdim"], False)))


def _first(gen):
    out, _ = yield from gen
    return out


def _argmax_shape(a, x):
    values = _dim_shape(a, x)
    return x if a["one_hot"] else values


_register("argmax", 1, _argmax_shape,
          lambda ctx, a, x: nonlinear.argmax(ctx, x, a["dim"], a["keepdim"], a["one_hot"]))


def _pool_args(a):
    return tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"])


def _pool_shape(a, x):
    kernel, stride, padding = _pool_args(a)
    return torch.nn.functional.max_pool2d(torch.empty(x.shape, device="meta"), kernel, stride, padding).to(torch.int64)


_register("max_pool2d", 1, _pool_shape, lambda ctx, a, x: nonlinear.max_pool2d(ctx, x, *_pool_args(a)))


def _softmax_shape(a, x):
    if x.numel() == 0:
        raise ValueError("softmax of an empty tensor")
    return torch.softmax(torch.empty(x.shape, device="meta"), a["dim"]).to(torch.int64)


_register("softmax", 1, _softmax_shape, lambda ctx, a, x: approx.softmax(ctx, x, a["dim"] % x.dim()))
_register("log_softmax", 1, _softmax_shape, lambda ctx, a, x: approx.log_softmax(ctx, x, a["dim"] % x.dim()))
_register("div", 2, lambda a, x, y: x + y, lambda ctx, a, x, y: approx.div(ctx, x, y))
