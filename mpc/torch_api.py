"""The torch namespace on secret tensors: what `SecretTensor.__torch_function__` dispatches.

torch calls `__torch_function__` when a `torch.*`, `torch.nn.functional.*` or tensor
method is given a secret tensor anywhere in its arguments (lists included), so
`torch.relu(x)`, `F.linear(x, w)`, `torch.cat([x, public])` and `public @ x` all arrive
here. `TABLE` maps each supported torch callable to an implementation with torch's
signature that accepts secret and public tensors in any position: it lifts a public
operand only where the op needs a secret one (a trivial sharing, no communication) and
otherwise keeps it public, which is cheaper (x @ public is a local product and one
truncation). The implementations call SecretTensor methods, which add nodes through the
op registry, so a captured model and this API share every op. A callable not in the
table raises TypeError naming it and the nearest supported names.
"""

from __future__ import annotations

import difflib

import torch
import torch.nn.functional as F

from mpc.api_functions import FunctionsMixin, max_pool2d, where
from mpc.api_methods import IN_PLACE

TABLE: dict = {}


def _is_secret(v) -> bool:
    return isinstance(v, FunctionsMixin)  # SecretTensor's base: no import of mpc.api (it imports us)


def _name(func) -> str:
    return torch.overrides.resolve_name(func) or f"{getattr(func, '__module__', '?')}.{func.__qualname__}"


def supported() -> list[str]:
    """Every supported torch name, sorted (what the error for an unsupported one searches)."""
    return sorted({_name(f) for f in TABLE})


def dispatch(func, args, kwargs):
    impl = TABLE.get(func)
    if impl is None:
        name = _name(func)
        near = difflib.get_close_matches(name, supported(), n=5, cutoff=0.6)
        raise TypeError(f"{name} is not supported on secret tensors. Nearest supported: "
                        f"{', '.join(near) if near else '(none close)'}. All: mpc.torch_api.supported(); "
                        "or reveal() the value first if it may be made public")
    return impl(*args, **kwargs)


def _bind(names, impl, spaces=(torch, torch.Tensor)):
    for name in names.split():
        for space in spaces:
            f = getattr(space, name, None)
            if f is not None:
                TABLE[f] = impl


def _secret_first(name):
    """An op whose first argument must be the secret one: the SecretTensor method `name`."""
    def impl(input, *args, **kwargs):
        if not _is_secret(input):
            raise TypeError(f"torch.{name}: only its first argument (input) may be a secret tensor here, "
                            f"got {type(input).__name__}")
        return getattr(input, name)(*args, **kwargs)

    return impl


def _lift(v, anchor):
    """A secret view of v: v itself if secret, else a trivial sharing of a public value."""
    return v if _is_secret(v) else anchor._cluster.public(torch.as_tensor(v, dtype=torch.float64))


def _anchor(values):
    for v in values:
        if _is_secret(v):
            return v
    raise TypeError("no secret tensor among the arguments")


def _plus(a, b):
    return a + b if _is_secret(a) else b + a


# -- elementwise arithmetic, either operand secret ---------------------------------------------------------

def add(input, other, *, alpha=1):
    return _plus(input, other if alpha == 1 else other * alpha)


def sub(input, other, *, alpha=1):
    return _plus(input, -(other if alpha == 1 else other * alpha))


def rsub(input, other, *, alpha=1):
    return sub(other, input, alpha=alpha)


def mul(input, other):
    return input * other if _is_secret(input) else other * input


def div(input, other, *, rounding_mode=None):
    if _is_secret(input):
        return input.div(other, rounding_mode=rounding_mode)
    if rounding_mode is not None:
        raise TypeError(f"div(rounding_mode={rounding_mode!r}) is not supported on secret tensors")
    return other.__rtruediv__(input)


def matmul(input, other):
    return input @ other if _is_secret(input) else other.__rmatmul__(input)


def power(input, exponent):
    if _is_secret(exponent) and not _is_secret(input):
        return exponent.__rpow__(input)
    if _is_secret(exponent):
        raise TypeError("secret ** secret is not supported: for x > 0 write (x.log() * e).exp()")
    return input ** exponent


_bind("add __add__ __radd__", add)
_bind("sub subtract __sub__", sub)
_bind("rsub __rsub__", rsub)
_bind("mul multiply __mul__ __rmul__", mul)
_bind("div divide true_divide __truediv__", div)
TABLE[torch.Tensor.__rtruediv__] = lambda input, other: div(other, input)
_bind("matmul __matmul__", matmul)
_bind("mm", lambda input, other: input.mm(other) if _is_secret(input) else matmul(input, other))
_bind("bmm", matmul)
TABLE[torch.Tensor.__rmatmul__] = lambda input, other: matmul(other, input)
_bind("pow __pow__", power)
TABLE[torch.Tensor.__rpow__] = lambda input, other: power(other, input)
_bind("neg negative __neg__", lambda input: -input)


def _compare(op, swapped):
    def impl(input, other):
        return getattr(input, op)(other) if _is_secret(input) else getattr(other, swapped)(input)

    return impl


for _op, _swapped in (("gt", "lt"), ("ge", "le"), ("lt", "gt"), ("le", "ge"), ("eq", "eq"), ("ne", "ne")):
    _bind(_op, _compare(_op, _swapped), spaces=(torch,))
    if _op in ("eq", "ne"):
        # `public == secret` reaches Tensor.eq: NotImplemented lets `==` keep Python's identity
        # meaning, as `secret == anything` does; torch.eq(a, b) compares elementwise.
        _bind(f"{_op} __{_op}__", lambda *a, **k: NotImplemented, spaces=(torch.Tensor,))
    else:
        _bind(f"{_op} __{_op}__", _compare(_op, _swapped), spaces=(torch.Tensor,))

# -- methods whose input is the secret tensor ------------------------------------------------------------------

for _method in ("relu sigmoid tanh exp log sqrt rsqrt reciprocal sign abs square clamp clip argmax argmin amax amin "
                "var std norm t clone detach flatten reshape view expand transpose swapaxes swapdims permute squeeze "
                "unsqueeze numel softmax log_softmax").split():
    _bind(_method, _secret_first(_method))
for _method in IN_PLACE:
    _bind(_method + "_", _secret_first(_method + "_"))


_bind("sum", lambda input, dim=None, keepdim=False, *, dtype=None: _secret_first("sum")(input, dim, keepdim))
_bind("mean", lambda input, dim=None, keepdim=False, *, dtype=None: _secret_first("mean")(input, dim, keepdim))


def _extreme(name, pairwise):
    """torch.max / torch.min: all elements, (values, indices) over a dim, or elementwise with a tensor."""
    def impl(input, dim=None, keepdim=False):
        if isinstance(dim, (torch.Tensor, FunctionsMixin)):
            return pairwise(input, dim)
        if dim is None:
            return _secret_first(name)(input)
        values = getattr(input, name)(dim, keepdim)
        indices = getattr(input, "arg" + name)(dim, keepdim)  # pruned unless revealed: free if unused
        return getattr(torch.return_types, name)((values, indices))

    return impl


def maximum(input, other):
    """max(a, b) = a + relu(b - a): one comparison and one product."""
    return _plus(input, sub(other, input).relu())


def minimum(input, other):
    return _plus(input, -sub(input, other).relu())


_bind("maximum", maximum)
_bind("minimum", minimum)
_bind("max", _extreme("max", maximum))
_bind("min", _extreme("min", minimum))


def _where(condition, input=None, other=None):
    if input is None:
        raise TypeError("torch.where(condition) with one argument (nonzero) reveals positions: not supported")
    return where(condition, input, other)


TABLE[torch.where] = _where
TABLE[torch.Tensor.where] = lambda input, condition, other: where(condition, input, other)


def _join(op):
    def impl(tensors, dim=0):
        tensors = list(tensors)
        anchor = _anchor(tensors)
        return anchor._new(op, tuple(_lift(t, anchor) for t in tensors), dim=dim)

    return impl


_bind("cat concat concatenate", _join("cat"), spaces=(torch,))
_bind("stack", _join("stack"), spaces=(torch,))


def _clamp(input, min=None, max=None):
    """Public bounds: one clamp node (2 comparisons); a secret bound: maximum/minimum."""
    if _is_secret(input) and not _is_secret(min) and not _is_secret(max):
        return input.clamp(min, max)
    out = input if min is None else maximum(input, min)
    return out if max is None else minimum(out, max)


def _amax(name):
    def impl(input, dim=(), keepdim=False):
        dims = (dim,) if isinstance(dim, int) else tuple(dim or ())
        if len(dims) > 1:
            raise TypeError(f"torch.{name} over several dims {dims}: reshape so that they are one dim first")
        return _secret_first(name)(input, dims[0] if dims else None, keepdim)

    return impl


_bind("clamp clip", _clamp)
_bind("amax", _amax("amax"))
_bind("amin", _amax("amin"))
_bind("norm", lambda input, p="fro", dim=None, keepdim=False, out=None, dtype=None:
      _secret_first("norm")(input, p, dim, keepdim))
TABLE[torch.linalg.vector_norm] = lambda input, ord=2, dim=None, keepdim=False, *, dtype=None: \
    _secret_first("norm")(input, ord, dim, keepdim)

# -- torch.nn.functional ------------------------------------------------------------------------------------


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _only_secret(input, name):
    if not _is_secret(input):
        raise TypeError(f"{name}: the input must be the secret tensor, got {type(input).__name__}")
    return input


def _softmax(name):
    def impl(input, dim=None, _stacklevel=3, dtype=None):
        if dim is None:
            raise TypeError(f"{name} of a secret tensor needs dim= (torch's implicit dim is deprecated)")
        if dtype not in (None, torch.float64):
            raise TypeError(f"{name}(dtype={dtype}): a secret tensor reveals as float64")
        return getattr(_only_secret(input, name), name)(dim)

    return impl


_bind("softmax", _softmax("softmax"), spaces=(torch, torch.Tensor, F))
_bind("log_softmax", _softmax("log_softmax"), spaces=(torch, torch.Tensor, F))
TABLE[F.sigmoid] = lambda input: input.sigmoid()  # F.sigmoid and F.tanh call the method themselves
TABLE[F.tanh] = lambda input: input.tanh()
TABLE[F.relu] = lambda input, inplace=False: (_only_secret(input, "F.relu").relu_() if inplace else input.relu())
TABLE[F.hardtanh] = lambda input, min_val=-1.0, max_val=1.0, inplace=False: _clamp(input, min_val, max_val)


def leaky_relu(input, negative_slope=0.01, inplace=False):
    """slope * x + (1 - slope) * relu(x): one ReLU (a comparison and a product) and a scaling."""
    x = _only_secret(input, "F.leaky_relu")
    out = x.relu() * (1.0 - negative_slope) + x * negative_slope
    return x._rebind(out) if inplace else out


def dropout(input, p=0.5, training=True, inplace=False):
    if training and p > 0:
        raise TypeError("F.dropout(training=True) on a secret tensor: a secret random mask is not supported; "
                        "call it with training=False (model.eval()) for inference")
    return input


def linear(input, weight, bias=None):
    """input @ weight.T + bias; a public weight makes it a local product and one truncation."""
    out = matmul(input, weight.t())
    return out if bias is None else add(out, bias)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    if isinstance(padding, str):
        raise TypeError(f"F.conv2d(padding={padding!r}) on secret tensors: give the padding as ints")
    anchor = _anchor((input, weight))
    x = _lift(input, anchor)
    batched = x.dim() == 4
    x = x if batched else x.unsqueeze(0)
    attrs = dict(stride=_pair(stride), padding=_pair(padding), dilation=_pair(dilation), groups=groups)
    if _is_secret(weight):
        out = anchor._new("conv2d", (x, weight), **attrs)
    else:  # a public kernel: local convolution and one truncation, no triple
        out = x._new("conv2d_public", (x,), value=torch.as_tensor(weight, dtype=torch.float64), **attrs)
    if bias is not None:
        out = add(out, bias.reshape(1, -1, 1, 1))
    return out if batched else out.squeeze(0)


def max_pool2d_(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    if dilation not in (1, (1, 1)) or ceil_mode or return_indices:
        raise TypeError("F.max_pool2d on a secret tensor supports kernel_size, stride and padding only "
                        "(no dilation, ceil_mode or return_indices)")
    return max_pool2d(_only_secret(input, "F.max_pool2d"), kernel_size, stride if stride else None, padding)


def _max_pool2d_with_indices(*args, **kwargs):
    raise TypeError("F.max_pool2d(..., return_indices=True) on a secret tensor: pooling indices are not "
                    "supported; call it without return_indices")


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """The registry's avg_pool2d (the op model capture uses): local window sums, one public
    scaling (one truncation round)."""
    if ceil_mode:
        raise TypeError("F.avg_pool2d on a secret tensor needs ceil_mode=False")
    x, kernel = _only_secret(input, "F.avg_pool2d"), _pair(kernel_size)
    return x._new("avg_pool2d", (x,), kernel=kernel, stride=_pair(stride) if stride else kernel,
                  padding=_pair(padding), count_include_pad=bool(count_include_pad), divisor=int(divisor_override or 0))


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    if size_average is not None or reduce is not None or weight is not None:
        raise TypeError("F.mse_loss on secret tensors takes reduction= only (no size_average, reduce, weight)")
    d = sub(input, target)
    d = d.square() if _is_secret(d) else d * d
    if reduction == "none":
        return d
    return d.sum() if reduction == "sum" else d.mean()


TABLE[F.leaky_relu] = leaky_relu
TABLE[F.dropout] = dropout
TABLE[F.linear] = linear
TABLE[torch.conv2d] = conv2d  # also F.conv2d: the same builtin
TABLE[F.max_pool2d] = max_pool2d_
TABLE[torch.max_pool2d] = max_pool2d_
TABLE[F.max_pool2d_with_indices] = _max_pool2d_with_indices
TABLE[F.avg_pool2d] = avg_pool2d
TABLE[F.mse_loss] = mse_loss
