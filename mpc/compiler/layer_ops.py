"""Registry entries for neural-network layers that model capture needs beyond ops.py.

`avg_pool2d` sums each window locally on the shares and scales once by a public factor
(one truncation round); `conv2d_public` convolves a secret input with a public kernel
(a public-weight model's convolution: local, then one truncation, no Beaver triple);
`conv_transpose2d` and `conv2d_weight` are conv2d's gradient products (each one Beaver
product of two secrets; `conv_transpose2d_public` the input gradient of a public kernel);
`square` is x*x from a square pair (one opening instead of a triple's two; the
`replace={"relu": "square"}` option uses it); `batch_norm` exists only between capture and
the BatchNorm-folding pass, which always removes it, so it has a shape rule and a
lowering that refuses to run.
"""

from __future__ import annotations

import torch

from mpc import ring
from mpc.compiler.registry import CompileError, register
from mpc.protocols import arithmetic


def _pair(v) -> tuple[int, int]:
    v = tuple(int(x) for x in v)
    return (v[0], v[0]) if len(v) == 1 else v


def pool_params(a) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    kernel = _pair(a["kernel"])
    stride = _pair(a["stride"]) if a.get("stride") else kernel  # torch: no stride means stride = kernel
    return kernel, stride, _pair(a["padding"])


def _avg_pool2d_shape(a, x):
    if x.dim() not in (3, 4):
        raise ValueError("avg_pool2d expects a 3-d or 4-d input")
    kernel, stride, padding = pool_params(a)
    out = torch.nn.functional.avg_pool2d(torch.empty(x.shape, device="meta"), kernel, stride, padding)
    return out.to(torch.int64)


def avg_pool2d_factor(a, in_hw: tuple[int, int]) -> torch.Tensor:
    """The public factor that turns window sums into averages: 1/(kh*kw) (count_include_pad,
    torch's default), 1/divisor_override, or per output position 1/(window cells inside
    the unpadded input)."""
    (kh, kw), _, (ph, pw) = pool_params(a)
    if a.get("divisor", 0):
        return torch.tensor(1.0 / a["divisor"], dtype=torch.float64)
    if a.get("count_include_pad", True) or (ph == 0 and pw == 0):
        return torch.tensor(1.0 / (kh * kw), dtype=torch.float64)
    ones = torch.ones((1, 1, *in_hw), dtype=torch.float64)
    kernel, stride, padding = pool_params(a)
    counts = torch.nn.functional.avg_pool2d(ones, kernel, stride, padding, divisor_override=1)[0, 0]
    return 1.0 / counts


def _avg_pool2d(ctx, a, x):
    kernel, stride, (ph, pw) = pool_params(a)
    factor = avg_pool2d_factor(a, tuple(x.shape[-2:]))
    if ph or pw:
        x = torch.nn.functional.pad(x, (pw, pw, ph, ph), value=0)  # zero shares: a public zero
    windows = x.unfold(-2, kernel[0], stride[0]).unfold(-2, kernel[1], stride[1])
    sums = windows.sum(dim=(-1, -2))
    return arithmetic.scale_public(ctx, sums, factor)


register("avg_pool2d", 1, _avg_pool2d_shape, _avg_pool2d,
         doc="average pooling: local window sums, one public scaling (one truncation round)")


def conv_params(a):
    return tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), a["groups"]


def _conv2d_public_shape(a, x):
    w = a["value"]
    if x.dim() != 4 or w.dim() != 4:
        raise ValueError("conv2d_public expects a 4-d input and a 4-d kernel")
    return ring.conv2d(x, w.to(device="meta", dtype=torch.int64), *conv_params(a))


def _conv2d_public(ctx, a, x):
    stride, padding, dilation, groups = conv_params(a)
    return arithmetic.scale_public(ctx, x, a["value"],
                                   op=lambda u, v: ring.conv2d(u, v, stride, padding, dilation, groups))


register("conv2d_public", 1, _conv2d_public_shape, _conv2d_public,
         doc="convolution with a public kernel: local, then one truncation")


# conv2d's two adjoints, its gradient products (grads.py): conv_transpose2d(g, w) is the input
# gradient, conv2d_weight(x, g) the kernel gradient, for any stride, padding, dilation and groups.


def _transpose_args(a):
    return tuple(a["stride"]), tuple(a["padding"]), tuple(a["output_padding"]), tuple(a["dilation"]), a["groups"]


def _conv_transpose2d_shape(a, g, w):
    if g.dim() != 4 or w.dim() != 4:
        raise ValueError("conv_transpose2d expects a 4-d gradient and a 4-d kernel")
    return ring.conv_transpose2d(g, w, *_transpose_args(a))


register("conv_transpose2d", 2, _conv_transpose2d_shape,
         lambda ctx, a, g, w: arithmetic.conv_transpose2d(ctx, g, w, *_transpose_args(a),
                                                          scaled=a.get("truncate", True)),
         doc="conv2d's input gradient of a secret g and a secret kernel: one Beaver product")


def _conv_transpose2d_public(ctx, a, g):
    args = _transpose_args(a)
    return arithmetic.scale_public(ctx, g, a["value"], op=lambda u, v: ring.conv_transpose2d(u, v, *args))


register("conv_transpose2d_public", 1,
         lambda a, g: _conv_transpose2d_shape(a, g, a["value"].to(device="meta", dtype=torch.int64)),
         _conv_transpose2d_public, doc="conv2d's input gradient with a public kernel: local, then one truncation")


def _weight_args(a):
    return tuple(a["kernel"]), *conv_params(a)


def _conv2d_weight_shape(a, x, g):
    if x.dim() != 4 or g.dim() != 4:
        raise ValueError("conv2d_weight expects a 4-d input and a 4-d gradient")
    out = ring.conv2d_weight(x, g, *_weight_args(a))
    if tuple(out.shape[-2:]) != tuple(a["kernel"]):
        raise ValueError(f"a gradient of shape {tuple(g.shape)} does not come from a kernel {tuple(a['kernel'])}")
    return out


register("conv2d_weight", 2, _conv2d_weight_shape,
         lambda ctx, a, x, g: arithmetic.conv2d_weight(ctx, x, g, *_weight_args(a), scaled=a.get("truncate", True)),
         doc="conv2d's kernel gradient of a secret input and a secret g: one Beaver product")


def _square(ctx, a, x):
    z = yield from arithmetic.square(ctx, x)
    # attrs["truncate"] = False: revealed at once, the recipient decodes at 2^2f (passes/truncation.py)
    return (yield from arithmetic.truncate(ctx, z)) if a.get("truncate", True) else z


register("square", 1, lambda a, x: x, _square,
         doc="x*x from a square pair: one opening (half a product's bytes), then one truncation")


def _batch_norm_shape(a, x, weight, bias, mean, var):
    if x.dim() < 2:
        raise ValueError("batch_norm expects an input with a channel dimension 1")
    for p in (weight, bias, mean, var):
        if tuple(p.shape) != (x.shape[1],):
            raise ValueError(f"batch_norm parameter of shape {tuple(p.shape)} does not fit {x.shape[1]} channels")
    return x


def _batch_norm(ctx, a, *xs):
    raise CompileError("batch_norm reached a party: the BatchNorm-folding pass must run before extraction")


register("batch_norm", 5, _batch_norm_shape, _batch_norm,
         doc="eval-mode BatchNorm between capture and folding; never lowered")
