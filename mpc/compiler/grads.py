"""Gradient rules: for each op, how the gradient of its output becomes gradients of its inputs.

A rule is `rule(b, node, gouts, needs) -> tuple of gradient node ids (None where not
needed)`: `b` is the GraphBuilder (rules build nodes like any other code), `gouts` the
gradient node of each output of `node` (None where nothing flows back), `needs[i]`
whether input i needs a gradient. Rules are attached to the op registry with set_grad,
so one table serves capture, SecretTensor and training alike; autodiff.py runs them.

Where a rule multiplies by a 0/1 value it uses an untruncated product (ReLU's bit is an
exact ring integer); weight gradients are ordinary products, which the optimizer may
turn into untruncated ones to fold its step size into their truncation (optim.py).
"""

from __future__ import annotations

import math

import torch

from mpc import ring
from mpc.compiler import layer_ops  # noqa: F401  (its ops must exist before rules attach)
from mpc.compiler import train_ops  # noqa: F401
from mpc.compiler.graph import GraphBuilder
from mpc.compiler.ops import encode_index
from mpc.compiler.registry import set_grad


def _shape(b: GraphBuilder, nid: int) -> tuple[int, ...]:
    return b.nodes[nid].shape


def sum_to(b: GraphBuilder, g: int, shape: tuple[int, ...], name: str = "") -> int:
    """Undo broadcasting: sum g down to `shape` (leading dims, then dims of size 1)."""
    gs = _shape(b, g)
    if gs == tuple(shape):
        return g
    lead = len(gs) - len(shape)
    dims = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape) if s == 1 and gs[lead + i] != 1)
    out = b.add("sum", (g,), {"dims": dims, "keepdim": True}, name=name, source="")
    return b.add("reshape", (out.id,), {"shape": tuple(shape)}, name=name, source="").id


def _add(b, n, gouts, needs):
    (g,) = gouts
    return tuple(sum_to(b, g, _shape(b, i), n.name) if need else None for i, need in zip(n.inputs, needs))


def _sub(b, n, gouts, needs):
    (g,) = gouts
    gx = sum_to(b, g, _shape(b, n.inputs[0]), n.name) if needs[0] else None
    gy = None
    if needs[1]:
        gy = b.add("neg", (sum_to(b, g, _shape(b, n.inputs[1]), n.name),), name=n.name, source="").id
    return gx, gy


def _neg(b, n, gouts, needs):
    return (b.add("neg", (gouts[0],), name=n.name, source="").id,)


def _add_public(b, n, gouts, needs):
    return (sum_to(b, gouts[0], _shape(b, n.inputs[0]), n.name),)


def _mul_public(b, n, gouts, needs):
    g = b.add("mul_public", (gouts[0],), {"value": n.attrs["value"]}, name=n.name, source="").id
    return (sum_to(b, g, _shape(b, n.inputs[0]), n.name),)


def _mul(b, n, gouts, needs):
    (g,) = gouts
    x, y = n.inputs
    out = []
    for need, this, other in ((needs[0], x, y), (needs[1], y, x)):
        out.append(sum_to(b, b.add("mul", (g, other), name=n.name, source="").id, _shape(b, this), n.name)
                   if need else None)
    return tuple(out)


def _square(b, n, gouts, needs):
    two_x = b.add("mul_public", (n.inputs[0],), {"value": torch.tensor(2.0, dtype=torch.float64)},
                  name=n.name, source="")
    return (b.add("mul", (gouts[0], two_x.id), name=n.name, source="").id,)


def _transposed(b, nid, name):
    return b.add("transpose", (nid,), {"dim0": -2, "dim1": -1}, name=name, source="").id


def _matmul(b, n, gouts, needs):
    """z = x @ w: dx = g @ w^T, dw = x^T @ g (both matrices at least 2-d here)."""
    (g,) = gouts
    x, w = n.inputs
    if len(_shape(b, x)) < 2 or len(_shape(b, w)) < 2:
        raise NotImplementedError("matmul gradient of a 1-d operand")
    gx = gw = None
    if needs[0]:
        gx = sum_to(b, b.add("matmul", (g, _transposed(b, w, n.name)), name=n.name, source="").id,
                    _shape(b, x), n.name)
    if needs[1]:
        gw = sum_to(b, b.add("matmul", (_transposed(b, x, n.name), g), name=n.name, source="").id,
                    _shape(b, w), n.name)
    return gx, gw


def _matmul_public(b, n, gouts, needs):
    (g,) = gouts
    value = n.attrs["value"]
    vt = value.transpose(-2, -1) if value.dim() >= 2 else value
    if n.attrs["side"] == "right":  # z = x @ v: dx = g @ v^T
        gx = b.add("matmul_public", (g,), {"value": vt, "side": "right"}, name=n.name, source="").id
    else:  # z = v @ x: dx = v^T @ g
        gx = b.add("matmul_public", (g,), {"value": vt, "side": "left"}, name=n.name, source="").id
    return (sum_to(b, gx, _shape(b, n.inputs[0]), n.name),)


def _reshape(b, n, gouts, needs):
    return (b.add("reshape", (gouts[0],), {"shape": _shape(b, n.inputs[0])}, name=n.name, source="").id,)


def _transpose(b, n, gouts, needs):
    return (b.add("transpose", (gouts[0],), {"dim0": n.attrs["dim0"], "dim1": n.attrs["dim1"]}, name=n.name,
                  source="").id,)


def _permute(b, n, gouts, needs):
    dims = [d % len(n.shape) for d in n.attrs["dims"]]
    inverse = tuple(sorted(range(len(dims)), key=lambda k: dims[k]))
    return (b.add("permute", (gouts[0],), {"dims": inverse}, name=n.name, source="").id,)


def _expand(b, n, gouts, needs):
    return (sum_to(b, gouts[0], _shape(b, n.inputs[0]), n.name),)


def _sum(b, n, gouts, needs):
    """Broadcast g back over the summed dims."""
    shape = _shape(b, n.inputs[0])
    dims = n.attrs["dims"] or tuple(range(len(shape)))
    kept = tuple(1 if d in [k % len(shape) for k in dims] else s for d, s in enumerate(shape)) if shape else ()
    g = b.add("reshape", (gouts[0],), {"shape": kept}, name=n.name, source="").id
    return (b.add("expand", (g,), {"shape": shape}, name=n.name, source="").id,)


def _mean(b, n, gouts, needs):
    (g,) = _sum(b, n, gouts, needs)
    shape = _shape(b, n.inputs[0])
    dims = n.attrs["dims"] or tuple(range(len(shape)))
    count = 1
    for d in dims:
        count *= shape[d]
    return (b.add("mul_public", (g,), {"value": torch.tensor(1.0 / count, dtype=torch.float64)}, name=n.name,
                  source="").id,)


def _relu_bit(b, n, gouts, needs):
    g = gouts[0]
    if g is None:
        return (None,)
    bit = b.add("take", (n.id,), {"index": 1}, name=n.name, source="")
    if n.attrs.get("exact_bit", True):  # an exact 0/1 ring integer: the product needs no truncation
        return (b.add("mul", (g, bit.id), {"truncate": False}, name=n.name, source="").id,)
    # (for measuring that saving: the bit as a fixed-point value, and a truncated product)
    fixed = b.add("mul_public", (bit.id,), {"value": torch.tensor(float(1 << b.frac_bits), dtype=torch.float64)},
                  name=n.name, source="")
    return (b.add("mul", (g, fixed.id), name=n.name, source="").id,)


def _max_pool2d_argmax(b, n, gouts, needs):
    """dx = the window cells g * onehot summed back to their input positions: g goes to each
    window's maximum. The one-hot is an exact 0/1 ring integer: no truncation."""
    g = gouts[0]
    if g is None:
        return (None,)
    onehot = b.add("take", (n.id,), {"index": 1}, name=n.name, source="").id
    column = b.add("reshape", (g,), {"shape": (*n.shape, 1)}, name=n.name, source="").id
    routed = b.add("mul", (column, onehot), {"truncate": False}, name=n.name, source="").id
    attrs = {"kernel": n.attrs["kernel"], "stride": n.attrs["stride"], "padding": n.attrs["padding"],
             "shape": _shape(b, n.inputs[0])}
    return (b.add("unpool2d", (routed,), attrs, name=n.name, source="").id,)


def _max_pool2d(b, n, gouts, needs):
    """Plain max_pool2d keeps no one-hot, so its gradient runs the max tree again with it
    (the training compiler uses max_pool2d_argmax instead, which keeps it from the forward)."""
    both = b.add("max_pool2d_argmax", (n.inputs[0],), n.attrs, name=n.name, source="")
    return _max_pool2d_argmax(b, both, gouts, needs)


def _getitem(b, n, gouts, needs):
    shape = _shape(b, n.inputs[0])
    return (b.add("scatter", (gouts[0],), {"shape": shape, "index": n.attrs["index"]}, name=n.name, source="").id,)


def _relu(b, n, gouts, needs):
    """Plain relu keeps no comparison bit, so its gradient compares again (4 rounds); the
    training compiler uses relu_bit instead, which reuses the forward comparison."""
    bit = b.add("cmp_public", (n.inputs[0],), {"cmp": "ge", "value": torch.tensor(0.0, dtype=torch.float64)},
                name=n.name, source="")
    return (b.add("mul", (gouts[0], bit.id), name=n.name, source="").id,)


def _sigmoid(b, n, gouts, needs):
    """d sigmoid = s (1 - s)."""
    one_minus = b.add("add_public", (b.add("neg", (n.id,), name=n.name, source="").id,),
                      {"value": torch.tensor(1.0, dtype=torch.float64)}, name=n.name, source="")
    ds = b.add("mul", (n.id, one_minus.id), name=n.name, source="")
    return (b.add("mul", (gouts[0], ds.id), name=n.name, source="").id,)


def _tanh(b, n, gouts, needs):
    """d tanh = 1 - t^2."""
    t2 = b.add("square", (n.id,), name=n.name, source="")
    one_minus = b.add("add_public", (b.add("neg", (t2.id,), name=n.name, source="").id,),
                      {"value": torch.tensor(1.0, dtype=torch.float64)}, name=n.name, source="")
    return (b.add("mul", (gouts[0], one_minus.id), name=n.name, source="").id,)


def _cat(b, n, gouts, needs):
    dim = n.attrs["dim"] % len(n.shape)
    out, start = [], 0
    for i, need in zip(n.inputs, needs):
        size = _shape(b, i)[dim]
        if need:
            index = [slice(None)] * dim + [slice(start, start + size)]
            out.append(b.add("getitem", (gouts[0],), {"index": encode_index(tuple(index))}, name=n.name,
                             source="").id)
        else:
            out.append(None)
        start += size
    return tuple(out)


def _avg_pool2d(b, n, gouts, needs):
    """Non-overlapping windows without padding: each input cell gets g of its window / k."""
    kernel, stride, padding = layer_ops.pool_params(n.attrs)
    if kernel != stride or padding != (0, 0) or n.attrs.get("divisor"):
        raise NotImplementedError("avg_pool2d gradient for overlapping or padded windows")
    shape = _shape(b, n.inputs[0])
    (kh, kw), (oh, ow) = kernel, n.shape[-2:]
    if (oh * kh, ow * kw) != tuple(shape[-2:]):
        raise NotImplementedError("avg_pool2d gradient where the windows do not tile the input")
    lead = n.shape[:-2]
    g = b.add("reshape", (gouts[0],), {"shape": (*lead, oh, 1, ow, 1)}, name=n.name, source="").id
    g = b.add("expand", (g,), {"shape": (*lead, oh, kh, ow, kw)}, name=n.name, source="").id
    g = b.add("reshape", (g,), {"shape": shape}, name=n.name, source="").id
    return (b.add("mul_public", (g,), {"value": torch.tensor(1.0 / (kh * kw), dtype=torch.float64)}, name=n.name,
                  source="").id,)


def _conv_attrs(n) -> dict:
    return {"stride": tuple(n.attrs["stride"]), "padding": tuple(n.attrs["padding"]),
            "dilation": tuple(n.attrs["dilation"]), "groups": n.attrs["groups"]}


def _conv_input_grad(b, n, g, kernel_hw, inputs, op: str, extra: dict) -> int:
    """dx = conv_transpose2d(g, w): conv2d's adjoint in its input, for any stride, padding,
    dilation and groups; output_padding gives back the input rows a strided window skipped."""
    attrs = _conv_attrs(n)
    attrs["output_padding"] = ring.conv2d_output_padding(_shape(b, n.inputs[0])[-2:], kernel_hw, attrs["stride"],
                                                         attrs["padding"], attrs["dilation"])
    return b.add(op, inputs, {**attrs, **extra}, name=n.name, source="").id


def _conv2d(b, n, gouts, needs):
    """z = conv2d(x, w): dx = conv_transpose2d(g, w), dw = conv2d_weight(x, g), each one
    Beaver product of two secrets (ring.py has both maps, exact in the ring)."""
    (g,) = gouts
    x, w = n.inputs
    kernel = _shape(b, w)[-2:]
    gx = _conv_input_grad(b, n, g, kernel, (g, w), "conv_transpose2d", {}) if needs[0] else None
    gw = None
    if needs[1]:
        gw = b.add("conv2d_weight", (x, g), {**_conv_attrs(n), "kernel": tuple(kernel)}, name=n.name, source="").id
    return gx, gw


def _conv2d_public(b, n, gouts, needs):
    value = n.attrs["value"]
    return (_conv_input_grad(b, n, gouts[0], value.shape[-2:], (gouts[0],), "conv_transpose2d_public",
                             {"value": value}),)


def _batch_norm_train(b, n, gouts, needs):
    """y = gamma x_hat + beta with the batch's statistics (Ioffe and Szegedy, ICML 2015, §3):
    dbeta = sum g and dgamma = sum g x_hat over every dim but the channel, and

        dx = (1/m) inv_std (m g_hat - sum g_hat - x_hat sum(g_hat x_hat)),   g_hat = g gamma,

    written with gamma taken out of the per-channel sums (sum g_hat = gamma dbeta, sum g_hat
    x_hat = gamma dgamma) as dx = gamma inv_std (g - (dbeta + x_hat dgamma) / m): three
    products in a row (g x_hat, x_hat dgamma, the last), each truncated once; the 1/m
    folds into the second's truncation (rescale) and gamma inv_std is per channel."""
    g, *rest = gouts
    if g is None or any(r is not None for r in rest):
        raise NotImplementedError("a gradient of batch_norm_train's statistics or normalised values")
    gamma = n.inputs[1]
    shape, c = n.shape, n.shape[1]
    dims = (0, *range(2, len(shape)))
    m = math.prod(shape) // c
    view = (1, c) + (1,) * (len(shape) - 2)

    def add(op, inputs, attrs=None):
        return b.add(op, inputs, attrs or {}, name=n.name, source="").id

    x_hat, inv = add("take", (n.id,), {"index": 1}), add("take", (n.id,), {"index": 2})
    dbeta = add("sum", (g,), {"dims": dims, "keepdim": True})
    dgamma = add("sum", (add("mul", (g, x_hat)),), {"dims": dims, "keepdim": True})
    gx = None
    if needs[0]:
        # (dbeta + x_hat dgamma) / m: the product left at 2^2f, dbeta brought there exactly (an
        # integer factor); rescale keeps sums up to 2^16 in magnitude exact (train_ops.factor_bits)
        two_f = torch.tensor(float(1 << b.frac_bits), dtype=torch.float64)
        both = add("add", (add("mul", (x_hat, dgamma), {"truncate": False}),
                           add("mul_public", (dbeta,), {"value": two_f})))
        centred = add("rescale", (both,), {"value": 1.0 / m, "bits": train_ops.factor_bits(1.0 / m, b.frac_bits)})
        gain = 2.0 ** -n.attrs["gain_bits"]  # inv is 2^gain_bits / sqrt(var + eps)
        scale = add("rescale", (add("mul", (add("reshape", (gamma,), {"shape": view}),
                                            add("reshape", (inv,), {"shape": view})), {"truncate": False}),),
                    {"value": gain, "bits": train_ops.factor_bits(gain, b.frac_bits)})
        gx = add("mul", (add("sub", (g, centred)), scale))
    gw = add("reshape", (dgamma,), {"shape": (c,)}) if needs[1] else None
    gb = add("reshape", (dbeta,), {"shape": (c,)}) if needs[2] else None
    return gx, gw, gb


RULES = {
    "conv2d": _conv2d, "conv2d_public": _conv2d_public,
    "add": _add, "sub": _sub, "neg": _neg, "add_public": _add_public, "mul_public": _mul_public, "mul": _mul,
    "square": _square, "matmul": _matmul, "matmul_public": _matmul_public, "reshape": _reshape,
    "transpose": _transpose, "permute": _permute, "expand": _expand, "sum": _sum, "mean": _mean,
    "relu_bit": _relu_bit, "relu": _relu, "getitem": _getitem, "sigmoid": _sigmoid, "tanh": _tanh, "cat": _cat, "avg_pool2d": _avg_pool2d,
    "max_pool2d": _max_pool2d, "max_pool2d_argmax": _max_pool2d_argmax, "batch_norm_train": _batch_norm_train,
}

for _op, _rule in RULES.items():
    set_grad(_op, _rule)

