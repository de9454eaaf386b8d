"""Registry entries that training needs: ReLU with its comparison bit, rows by public
index, and a product rescaled by a public factor in the same truncation.

- `relu_bit` returns (relu(x), [x >= 0]) from one comparison (4 rounds): the bit is an
  exact 0/1 ring integer, so the backward product g * bit needs no truncation.
- `max_pool2d_argmax` returns (max_pool2d(x), one-hot of each window's maximum) from the
  same comparisons; the one-hot is 0/1 ring integers, so the backward product g * onehot
  needs no truncation, and `unpool2d` (local) sums each window's cells back to their
  input positions (the adjoint of the window unfold).
- `gather_rows(x, idx)`: rows of a kept data set picked by public indices (a batch):
  local, no communication.
- `bilinear_keep(x, w)` and `bilinear_backward(g, masks of bilinear_keep)`: a layer's
  forward product (matmul or conv2d) keeps its Beaver masks, and its backward
  products (g w^T and x^T g for a matmul) open only g - d (SecureML's reuse of the masked
  matrices within a step; protocols/reuse.py, placed by passes/mask_reuse.py).
- `batch_norm_train(x, gamma, beta)`: BatchNorm with the batch's statistics, returning
  (y, x_hat, 2^g / sqrt(var + eps), mean, var): the backward rule reuses x_hat and the
  inverse square root, the training compiler updates the running statistics from mean
  and var (protocols/normalization.py).
- `rescale(x)`: x is an untruncated product (scale 2^2f); multiply by the public factor
  c encoded with k bits and truncate once by f + k bits. The learning rate and 1/batch
  fold into the truncation that the weight gradient needed anyway (Mohassel and Zhang,
  SecureML, S&P 2017, fold the learning rate into the truncation the same way).
"""

from __future__ import annotations

import math

import torch

from mpc.compiler.registry import CompileError, local, register
from mpc.protocols import arithmetic, bilinear, correlations, nonlinear, normalization, reuse

RESCALE_BITS = 20  # bits of the public factor of `rescale`; see factor_bits


def _relu_bit(ctx, a, x):
    bit, (out,) = yield from nonlinear.compare(ctx, x, "ge", (x,))
    return out, bit.view(x.shape)


register("relu_bit", 1, lambda a, x: (x, x.to(torch.int64)), _relu_bit, n_outputs=2,
         doc="(relu(x), [x >= 0] as a 0/1 ring integer) from one comparison")


def _gather_shape(a, x, idx):
    if idx.dim() != 1:
        raise ValueError(f"row indices must be 1-d, got shape {tuple(idx.shape)}")
    return x.index_select(0, idx)


register("gather_rows", 2, _gather_shape, lambda ctx, a, x, idx: x.index_select(0, idx),
         doc="x[idx] for public row indices: local")


def _scatter(a, g):
    """The adjoint of basic indexing: zeros shaped like the indexed tensor, g at the index."""
    from mpc.compiler.ops import decode_index

    out = torch.zeros(a["shape"], dtype=g.dtype, device=g.device)
    out[decode_index(a["index"])] = g
    return out


register("scatter", 1, lambda a, g: _scatter(a, g), lambda ctx, a, g: _scatter(a, g),
         doc="zeros with g at a basic index (getitem's gradient): local")


HEADROOM_BITS = 16  # `rescale` keeps the untruncated product's magnitude up to 2^16 clear of the ring


def factor_bits(value: float, frac_bits: int) -> int:
    """Bits k with which `value` is encoded for `rescale`: up to 20 significant bits, but
    never so many that the encoded factor F = value 2^k exceeds 2^(62 - 2f - HEADROOM_BITS):
    the truncation needs |x F| < 2^62 for x at scale 2^2f, so values (batch-summed
    gradients) up to 2^HEADROOM_BITS in magnitude stay exact. At f = 16 that leaves the
    factor 14 bits (relative error below 2^-14) whatever the step size."""
    if value == 0:
        return 1
    top = math.floor(math.log2(abs(value)))
    k = RESCALE_BITS - top - 1
    cap = 62 - 2 * frac_bits - HEADROOM_BITS - top - 1
    return max(1, min(k, cap))


def _rescale(ctx, a, x):
    k = a["bits"]
    factor = round(a["value"] * (1 << k))
    if factor == 0:
        raise CompileError(f"rescale factor {a['value']} is below 2^-{k}")
    return arithmetic.truncate(ctx, x * factor, bits=ctx.frac_bits + k)


register("rescale", 1, lambda a, x: x, _rescale,
         doc="(untruncated product) * public factor, truncated once by f + k bits")


def _meta(shape) -> torch.Tensor:
    return torch.empty(shape, dtype=torch.int64, device="meta")


def _conv(a):
    """None for a matmul; (stride, padding, dilation, groups) for a conv2d."""
    if not a["conv"]:
        return None
    return tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), a["groups"]


def _forms(a, x, w):
    spec = correlations.bilinear_train_triple(x.shape, w.shape, a["dx"], a["dw"], _conv(a))
    return bilinear.train_forms(spec)


def _keep_shape(a, x, w):
    """(z, e, f, a, b, d, c', c''): z = B(x, w), c' shaped like dx = Bx(d, b), c'' like dw = Bw(a, d)."""
    dims = 4 if a["conv"] else 2
    if x.dim() < dims or w.dim() < dims:
        raise ValueError(f"bilinear_keep needs operands of at least {dims} dimensions")
    op, bx, bw = _forms(a, x, w)
    z = op(x, w)
    c1 = bx(z, w) if a["dx"] else _meta((0,))
    c2 = bw(x, z) if a["dw"] else _meta((0,))
    return z, x, w, x, w, z, c1, c2


register("bilinear_keep", 2, _keep_shape,
         lambda ctx, a, x, w: reuse.bilinear_keep(ctx, x, w, a["dx"], a["dw"], _conv(a),
                                                  scaled=a.get("truncate", True)),
         n_outputs=8, doc="a matmul or conv2d from a triple whose masks the backward products reuse "
                          "(with them)")


def _backward_shape(a, g, e, f, ma, mb, d, c1, c2):
    if tuple(g.shape) != tuple(d.shape):
        raise ValueError(f"the gradient's shape {tuple(g.shape)} is not the forward product's {tuple(d.shape)}")
    _, bx, bw = _forms(a, e, f)
    return (bx(g, f) if a["dx"] else _meta((0,))), (bw(e, g) if a["dw"] else _meta((0,)))


register("bilinear_backward", 8, _backward_shape,
         lambda ctx, a, g, *masks: reuse.bilinear_backward(ctx, g, *masks, a["dx"], a["dw"], _conv(a),
                                                           a.get("truncate_dx", True), a.get("truncate_dw", True)),
         n_outputs=2, doc="the gradient products of bilinear_keep's product, reusing its masks: opens only g - d")


def _pool_args(a):
    return tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"])


def _pool_argmax_shape(a, x):
    kernel, stride, padding = _pool_args(a)
    out = torch.nn.functional.max_pool2d(torch.empty(x.shape, device="meta"), kernel, stride, padding)
    return out.to(torch.int64), _meta((*out.shape, kernel[0] * kernel[1]))


register("max_pool2d_argmax", 1, _pool_argmax_shape,
         lambda ctx, a, x: nonlinear.max_pool2d_argmax(ctx, x, *_pool_args(a)), n_outputs=2,
         doc="(max_pool2d(x), one-hot of each window's maximum as 0/1 ring integers) from one max tree")


def _unpool2d(a, w):
    """Window cells (..., oh, ow, kh * kw) summed back into an input of shape a["shape"]:
    the adjoint of the pooling windows' unfold (overlapping windows add up; padding is cut)."""
    (kh, kw), (sh, sw), (ph, pw) = _pool_args(a)
    shape = tuple(a["shape"])
    oh, ow = w.shape[-3], w.shape[-2]
    if w.shape[-1] != kh * kw or tuple(w.shape[:-3]) != shape[:-2]:
        raise ValueError(f"windows of shape {tuple(w.shape)} do not fit an input {shape} with kernel {(kh, kw)}")
    h, wd = shape[-2:]
    out = torch.zeros((*shape[:-2], h + 2 * ph, wd + 2 * pw), dtype=w.dtype, device=w.device)
    cells = w.reshape(*w.shape[:-1], kh, kw)
    for i in range(kh):
        for j in range(kw):
            out[..., i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] += cells[..., i, j]
    return out[..., ph:ph + h, pw:pw + wd]


local("unpool2d", 1, _unpool2d, doc="pooling-window cells summed back to their input positions: local")


def _batch_norm_train_shape(a, x, gamma, beta):
    if x.dim() < 2:
        raise ValueError("batch_norm_train expects an input with a channel dimension 1")
    c = x.shape[1]
    for p in (gamma, beta):
        if tuple(p.shape) != (c,):
            raise ValueError(f"batch_norm_train parameter of shape {tuple(p.shape)} does not fit {c} channels")
    if x.numel() // c < 2:
        raise ValueError(f"batch_norm_train needs more than one value per channel, input shape {tuple(x.shape)}")
    stat = _meta((c,))
    return x, x, stat, stat, stat


register("batch_norm_train", 3, _batch_norm_train_shape,
         lambda ctx, a, x, gamma, beta: normalization.batch_norm_train(ctx, x, gamma, beta, a["eps"], a["gain_bits"]),
         n_outputs=5, doc="BatchNorm with batch statistics: (y, x_hat, 2^g/sqrt(var + eps), mean, biased var)")
