"""The ATen handlers of model capture: one function per core ATen op that may touch a
secret value, building registry ops through the capture context.

A handler receives the capture context and the node's arguments, in which exported
nodes were replaced by their values (`Secret`, `Owned`, Python scalars; see capture.py),
and returns the node's value. Ops whose inputs are all plaintext never reach a handler:
capture computes them eagerly. Shapes come from the exported node (`cx.shape`), so
view-like ops all become one `reshape`.
"""

from __future__ import annotations

import math

import torch

from mpc.compiler.capture import Owned, Secret, Unavailable, module_path
from mpc.compiler.ops import encode_index
from mpc.compiler.registry import CompileError

HANDLERS: dict[str, object] = {}


def handles(*names):
    def register(fn):
        for name in names:
            HANDLERS[name] = fn
        return fn
    return register


def _scalar(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _public(c) -> torch.Tensor:
    return torch.tensor(float(c), dtype=torch.float64)


def _reshape(cx, v, shape):
    shape = tuple(int(s) for s in shape)
    if isinstance(v, Owned):
        return Owned(v.value.reshape(shape), v.name)
    return cx.add("reshape", [v], {"shape": shape})


# -- arithmetic ------------------------------------------------------------------------------------


def binary(cx, op: str, a, b):
    """a op b for op in add/sub/mul/div, where either side is secret, owned or a scalar."""
    if not isinstance(a, Secret) and not isinstance(b, Secret):
        return _plain_binary(op, a, b)
    if op == "add" and not isinstance(a, Secret):
        a, b = b, a
    if op == "mul" and not isinstance(a, Secret):
        a, b = b, a
    if isinstance(a, Secret):
        if isinstance(b, Secret):
            return cx.add(op, [a, b])
        if _scalar(b):
            if op == "add":
                return cx.add("add_public", [a], {"value": _public(b)})
            if op == "sub":
                return cx.add("add_public", [a], {"value": _public(-b)})
            return cx.add("mul_public", [a], {"value": _public(b if op == "mul" else 1.0 / b)})
        if op == "div":  # x / w = x * (1/w): the reciprocal of a plaintext is computed here
            return cx.add("mul", [a, Owned(1.0 / b.value, b.name)])
        return cx.add(op, [a, b])
    # b is secret and a is not: c - x, c / x
    if op == "sub":
        if _scalar(a):
            return cx.add("add_public", [cx.add("neg", [b])], {"value": _public(a)})
        return cx.add("sub", [a, b])
    inverse = cx.add("reciprocal", [b])
    return binary(cx, "mul", inverse, a)


def _plain_binary(op, a, b):
    fn = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}[op]
    names = [v.name for v in (a, b) if isinstance(v, Owned)]
    out = fn(torch.as_tensor(a.value if isinstance(a, Owned) else a, dtype=torch.float64),
             b.value if isinstance(b, Owned) else b)
    return Owned(out, "+".join(names)) if names else out.item()


@handles("aten.add.Tensor", "aten.add.Scalar")
def _add(cx, a, b, alpha=1):
    return binary(cx, "add", a, b if alpha == 1 else binary(cx, "mul", b, alpha))


@handles("aten.sub.Tensor", "aten.sub.Scalar")
def _sub(cx, a, b, alpha=1):
    return binary(cx, "sub", a, b if alpha == 1 else binary(cx, "mul", b, alpha))


@handles("aten.rsub.Scalar", "aten.rsub.Tensor")
def _rsub(cx, a, b, alpha=1):
    return binary(cx, "sub", b, a if alpha == 1 else binary(cx, "mul", a, alpha))


@handles("aten.mul.Tensor", "aten.mul.Scalar")
def _mul(cx, a, b):
    return binary(cx, "mul", a, b)


@handles("aten.div.Tensor", "aten.div.Scalar")
def _div(cx, a, b, rounding_mode=None):
    if rounding_mode is not None:
        raise CompileError(f"division with rounding_mode={rounding_mode!r} at {cx.where()} is not supported")
    return binary(cx, "div", a, b)


@handles("aten.neg.default")
def _neg(cx, x):
    return cx.add("neg", [x])


_UNARY = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "exp": "exp", "abs": "abs", "sqrt": "sqrt",
          "rsqrt": "inv_sqrt", "log": "log", "reciprocal": "reciprocal", "sign": "sign"}
for _aten, _op in _UNARY.items():
    HANDLERS[f"aten.{_aten}.default"] = (lambda op: lambda cx, x: cx.add(op, [x]))(_op)


@handles("aten.leaky_relu.default")
def _leaky_relu(cx, x, slope=0.01):
    """leaky_relu(x) = (1 - a) relu(x) + a x: one comparison, like ReLU."""
    return binary(cx, "add", binary(cx, "mul", cx.add("relu", [x]), 1.0 - slope), binary(cx, "mul", x, slope))


@handles("aten.clamp.default", "aten.hardtanh.default")
def _clamp(cx, x, low=None, high=None):
    attrs = {k: _public(v) for k, v in (("low", low), ("high", high)) if v is not None}
    return cx.add("clamp", [x], attrs)


@handles("aten._softmax.default")
def _softmax(cx, x, dim, half_to_float=False):
    return cx.add("softmax", [x], {"dim": int(dim)})


@handles("aten._log_softmax.default")
def _log_softmax(cx, x, dim, half_to_float=False):
    return cx.add("log_softmax", [x], {"dim": int(dim)})


# -- products ---------------------------------------------------------------------------------------


@handles("aten.mm.default", "aten.bmm.default", "aten.matmul.default", "aten.mv.default", "aten.dot.default")
def _matmul(cx, a, b):
    return cx.add("matmul", [a, b])


@handles("aten.addmm.default")
def _addmm(cx, bias, a, b, beta=1, alpha=1):
    product = cx.add("matmul", [a, b])
    if alpha != 1:
        product = binary(cx, "mul", product, alpha)
    return binary(cx, "add", product, bias if beta == 1 else binary(cx, "mul", bias, beta))


@handles("aten.convolution.default")
def _convolution(cx, x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
    if transposed:
        raise CompileError(f"transposed convolution at {cx.where()} is not supported")
    w_dim = len(w.value.shape) if isinstance(w, Owned) else len(cx.builder.nodes[cx.node(w)].shape)
    if w_dim == 3:  # conv1d: a conv2d over an inserted axis of height 1
        x_shape = cx.builder.nodes[cx.node(x)].shape
        x4 = _reshape(cx, x, (*x_shape[:-1], 1, x_shape[-1]))
        w_shape = w.value.shape if isinstance(w, Owned) else cx.builder.nodes[cx.node(w)].shape
        w4 = _reshape(cx, w, (*w_shape[:-1], 1, w_shape[-1]))
        attrs = {"stride": (1, stride[0]), "padding": (0, padding[0]), "dilation": (1, dilation[0]),
                 "groups": int(groups)}
        y = _with_bias(cx, cx.add("conv2d", [x4, w4], attrs), bias)
        return _reshape(cx, y, cx.shape)
    if w_dim != 4:
        raise CompileError(f"convolution with a {w_dim}-d kernel at {cx.where()} is not supported (Conv1d, Conv2d)")
    attrs = {"stride": tuple(stride), "padding": tuple(padding), "dilation": tuple(dilation), "groups": int(groups)}
    return _with_bias(cx, cx.add("conv2d", [x, w], attrs), bias)


def _with_bias(cx, y, bias):
    """y + bias over the channel axis (-3 of a (N, C, H, W) or (C, H, W) result)."""
    if bias is None:
        return y
    return binary(cx, "add", y, _reshape(cx, bias, (-1, 1, 1)))


# -- data movement ----------------------------------------------------------------------------------


@handles("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default", "aten.squeeze.dim",
         "aten.squeeze.dims", "aten.squeeze.default", "aten.unsqueeze.default", "aten.flatten.using_ints",
         "aten.view_copy.default")
def _view(cx, x, *args):
    return cx.add("reshape", [x], {"shape": cx.shape})


@handles("aten.expand.default")
def _expand(cx, x, *args, **kwargs):
    return cx.add("expand", [x], {"shape": cx.shape})


@handles("aten.repeat.default")
def _repeat(cx, x, repeats):
    """x.repeat(r): tiles as reshape to (1, s1, 1, s2, ..) -> expand to (r1, s1, r2, s2, ..) -> reshape."""
    shape = cx.builder.nodes[cx.node(x)].shape
    shape = (1,) * (len(repeats) - len(shape)) + tuple(shape)
    interleaved = tuple(v for s in shape for v in (1, s))
    tiled = tuple(v for r, s in zip(repeats, shape) for v in (int(r), s))
    y = cx.add("reshape", [x], {"shape": interleaved})
    y = cx.add("expand", [y], {"shape": tiled})
    return cx.add("reshape", [y], {"shape": cx.shape})


@handles("aten.permute.default")
def _permute(cx, x, dims):
    return cx.add("permute", [x], {"dims": tuple(int(d) for d in dims)})


@handles("aten.transpose.int")
def _transpose(cx, x, dim0, dim1):
    return cx.add("transpose", [x], {"dim0": int(dim0), "dim1": int(dim1)})


@handles("aten.t.default")
def _t(cx, x):
    return cx.add("reshape", [x], {"shape": cx.shape}) if len(cx.shape) < 2 else \
        cx.add("transpose", [x], {"dim0": 0, "dim1": 1})


# Identity in eval mode or for a fixed-point value: copies, aliases.
@handles("aten.clone.default", "aten.alias.default", "aten.detach.default", "aten.lift_fresh_copy.default",
         "aten.contiguous.default", "aten.dropout.default")
def _identity(cx, x, *args, **kwargs):
    return x


@handles("aten._assert_tensor_metadata.default")
def _metadata_check(cx, x, *args, **kwargs):
    return None  # export's own check of a dtype or shape, already true of the captured graph


@handles("aten._to_copy.default")
def _to_copy(cx, x, dtype=None, **kwargs):
    if dtype is not None and not dtype.is_floating_point:  # a fixed-point value has no integer form here
        raise CompileError(f"conversion of a secret value to {dtype} at {cx.where()} is not supported")
    return x


@handles("aten.slice.Tensor")
def _slice(cx, x, dim=0, start=None, end=None, step=1):
    rank = len(cx.builder.nodes[cx.node(x)].shape)
    key = (slice(None),) * (dim % rank) + (slice(start, min(end, 2**62) if end is not None else None, step),)
    return cx.add("getitem", [x], {"index": encode_index(key)})


@handles("aten.select.int")
def _select(cx, x, dim, index):
    rank = len(cx.builder.nodes[cx.node(x)].shape)
    return cx.add("getitem", [x], {"index": encode_index((slice(None),) * (dim % rank) + (int(index),))})


@handles("aten.cat.default")
def _cat(cx, tensors, dim=0):
    return cx.add("cat", list(tensors), {"dim": int(dim)})


@handles("aten.stack.default")
def _stack(cx, tensors, dim=0):
    return cx.add("stack", list(tensors), {"dim": int(dim)})


@handles("getitem")
def _getitem(cx, values, index):
    if not isinstance(values, (tuple, list)):
        raise CompileError(f"{cx.where()} indexes a value that has a single output")
    return values[index]


# -- reductions and pooling --------------------------------------------------------------------------


def _dims(dims) -> tuple[int, ...]:
    return tuple(int(d) for d in dims) if dims else ()


@handles("aten.sum.dim_IntList", "aten.sum.default")
def _sum(cx, x, dims=None, keepdim=False, dtype=None):
    return cx.add("sum", [x], {"dims": _dims(dims), "keepdim": bool(keepdim)})


@handles("aten.mean.dim", "aten.mean.default")
def _mean(cx, x, dims=None, keepdim=False, dtype=None):
    return cx.add("mean", [x], {"dims": _dims(dims), "keepdim": bool(keepdim)})


@handles("aten.max.dim")
def _max_dim(cx, x, dim, keepdim=False):
    return cx.add("max", [x], {"dim": int(dim), "keepdim": bool(keepdim)}), Unavailable("the indices of max")


@handles("aten.amax.default")
def _amax(cx, x, dims=(), keepdim=False):
    if len(dims) != 1:
        raise CompileError(f"amax over {len(dims)} dimensions at {cx.where()}: only one dimension is supported")
    return cx.add("max", [x], {"dim": int(dims[0]), "keepdim": bool(keepdim)})


@handles("aten.avg_pool2d.default")
def _avg_pool2d(cx, x, kernel, stride=(), padding=(0, 0), ceil_mode=False, count_include_pad=True,
                divisor_override=None):
    if ceil_mode:
        raise CompileError(f"avg_pool2d with ceil_mode=True at {cx.where()} is not supported")
    attrs = {"kernel": tuple(kernel), "stride": tuple(stride), "padding": tuple(padding),
             "count_include_pad": bool(count_include_pad), "divisor": int(divisor_override or 0)}
    return cx.add("avg_pool2d", [x], attrs)


@handles("aten._adaptive_avg_pool2d.default")
def _adaptive_avg_pool2d(cx, x, output_size):
    in_h, in_w = cx.builder.nodes[cx.node(x)].shape[-2:]
    out_h, out_w = (int(s) for s in output_size)
    if in_h % out_h or in_w % out_w:
        raise CompileError(f"AdaptiveAvgPool2d from {in_h}x{in_w} to {out_h}x{out_w} at {cx.where()}: supported "
                           "only when the output size divides the input size")
    kernel = (in_h // out_h, in_w // out_w)
    attrs = {"kernel": kernel, "stride": kernel, "padding": (0, 0), "count_include_pad": True, "divisor": 0}
    return cx.add("avg_pool2d", [x], attrs)


@handles("aten.max_pool2d_with_indices.default")
def _max_pool2d(cx, x, kernel, stride=(), padding=(0, 0), dilation=(1, 1), ceil_mode=False):
    if ceil_mode or any(d != 1 for d in dilation):
        raise CompileError(f"max_pool2d with ceil_mode or dilation at {cx.where()} is not supported")
    kernel = tuple(kernel) if len(kernel) == 2 else (kernel[0],) * 2
    stride = (tuple(stride) if len(stride) == 2 else (stride[0],) * 2) if stride else kernel
    padding = tuple(padding) if len(padding) == 2 else (padding[0],) * 2
    out = cx.add("max_pool2d", [x], {"kernel": kernel, "stride": stride, "padding": padding})
    return out, Unavailable("the indices of max_pool2d")


@handles("aten._native_batch_norm_legit_no_training.default")
def _batch_norm(cx, x, weight, bias, mean, var, momentum, eps):
    channels = cx.shape[1]
    name = module_path(cx.fx_node) or "batch_norm"
    weight = weight if weight is not None else Owned(torch.ones(channels, dtype=torch.float64), f"{name}.weight")
    bias = bias if bias is not None else Owned(torch.zeros(channels, dtype=torch.float64), f"{name}.bias")
    if not math.isfinite(eps) or eps < 0:
        raise CompileError(f"batch_norm eps={eps} at {cx.where()} is not a non-negative number")
    out = cx.add("batch_norm", [x, weight, bias, mean, var], {"eps": float(eps)})
    return out, Unavailable("the saved mean of batch_norm"), Unavailable("the saved variance of batch_norm")
