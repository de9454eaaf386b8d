"""The bilinear maps of the product correlations: which ring op each kind's c = B(a, b)
is (matmul, conv2d and its two adjoints), the conv parameters a spec carries, and a
training triple's forward and gradient forms with their shapes."""

from __future__ import annotations

import torch

from mpc import ring
from mpc.protocols.base import Spec


def train_forms(spec: Spec):
    """(B, Bx, Bw) of a bilinear_train spec: the forward product z = B(x, w) and its
    gradient products, bilinear in (g, w) and in (x, g), as grads.py writes them:
      matmul: B = x @ w, Bx(g, w) = g @ w^T, Bw(x, g) = x^T @ g;
      conv2d: B = conv2d(x, w), Bx(g, w) = conv_transpose2d(g, w) (with the output padding
        that gives back x's size), Bw(x, g) = conv2d_weight(x, g), with the forward's
        stride, padding, dilation and groups (ring.py)."""
    def t(m):
        return m.transpose(-2, -1)

    if not spec.param("conv"):
        return ring.matmul, (lambda g, w: ring.matmul(g, t(w))), (lambda x, g: ring.matmul(t(x), g))
    stride, padding, dilation, groups = conv_args(spec)
    kernel = spec.shapes[1][-2:]
    out_pad = ring.conv2d_output_padding(spec.shapes[0][-2:], kernel, stride, padding, dilation)
    return ((lambda x, w: ring.conv2d(x, w, stride, padding, dilation, groups)),
            (lambda g, w: ring.conv_transpose2d(g, w, stride, padding, out_pad, dilation, groups)),
            (lambda x, g: ring.conv2d_weight(x, g, kernel, stride, padding, dilation, groups)))


def conv_params(stride, padding, dilation, groups, **pairs) -> tuple[tuple[str, int], ...]:
    params = {"stride_h": stride[0], "stride_w": stride[1], "pad_h": padding[0], "pad_w": padding[1],
              "dil_h": dilation[0], "dil_w": dilation[1], "groups": groups}
    for name, (h, w) in pairs.items():
        params[f"{name}_h"], params[f"{name}_w"] = h, w
    return tuple(sorted((k, int(v)) for k, v in params.items()))


def conv_args(spec: Spec) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], int]:
    """(stride, padding, dilation, groups) of a spec made with conv_params."""
    p = dict(spec.params)
    return (p["stride_h"], p["stride_w"]), (p["pad_h"], p["pad_w"]), (p["dil_h"], p["dil_w"]), p["groups"]


def bilinear(spec: Spec):
    kind = spec.kind
    if kind == "mul":
        return lambda a, b: a * b
    if kind == "matmul":
        return ring.matmul
    if kind == "conv2d":
        return lambda a, b: ring.conv2d(a, b, *conv_args(spec))
    if kind == "conv_transpose2d":
        stride, padding, dilation, groups = conv_args(spec)
        out_pad = (spec.param("out_pad_h"), spec.param("out_pad_w"))
        return lambda a, b: ring.conv_transpose2d(a, b, stride, padding, out_pad, dilation, groups)
    if kind == "conv2d_weight":
        kernel = (spec.param("kernel_h"), spec.param("kernel_w"))
        return lambda a, b: ring.conv2d_weight(a, b, kernel, *conv_args(spec))
    raise ValueError(f"unknown correlation kind {kind!r}")


def train_shapes(spec: Spec) -> tuple[tuple[int, ...], ...]:
    """Shapes of c = B(a, b) (and of d), of c' = Bx(d, b) and of c'' = Bw(a, d)."""
    dims = 4 if spec.param("conv") else 2
    if len(spec.shapes[0]) < dims or len(spec.shapes[1]) < dims:
        raise ValueError(f"bilinear_train needs operands of at least {dims} dimensions, got {list(spec.shapes)}")
    a = torch.empty(spec.shapes[0], dtype=torch.int64, device="meta")
    b = torch.empty(spec.shapes[1], dtype=torch.int64, device="meta")
    op, bx, bw = train_forms(spec)
    try:
        c = op(a, b)
        return tuple(c.shape), tuple(bx(c, b).shape), tuple(bw(a, c).shape)
    except RuntimeError as exc:  # shapes or parameters that do not fit (a dealer refuses the request)
        raise ValueError(f"bilinear_train of shapes {list(spec.shapes)}: {exc}") from None
