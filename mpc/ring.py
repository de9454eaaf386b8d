"""The ring Z_2^64 on torch.int64 and the fixed-point encoding that maps reals into it.

Ring elements are int64 tensors; addition and multiplication wrap around modulo 2^64
exactly as two's-complement int64 arithmetic does. Reals are encoded with `frac_bits`
fractional bits (16 by default, as in CrypTen). Pure functions, no I/O.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

RING_BITS = 64
DTYPE = torch.int64
DEFAULT_FRAC_BITS = 16


class RangeError(ValueError):
    """A plaintext cannot be encoded: NaN, infinity or outside the fixed-point range."""


def max_abs_value(frac_bits: int = DEFAULT_FRAC_BITS) -> float:
    """Largest magnitude any fixed-point value may reach, intermediates included.

    Truncation after a product needs the double-scale product to satisfy
    |x * 2^(2f)| < 2^(ring-2) (see protocols.arithmetic.truncate), so values and
    products of values must stay below 2^(62 - 2f): 2^30 (about 1.07e9) at f = 16.
    """
    return float(2 ** (RING_BITS - 2 - 2 * frac_bits))


def check_encodable(x: torch.Tensor, frac_bits: int = DEFAULT_FRAC_BITS, what: str = "value") -> None:
    """Raise RangeError if `x` holds NaN, infinities, or values outside the range."""
    if not torch.is_floating_point(x) and x.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool):
        raise RangeError(f"{what}: unsupported dtype {x.dtype}")
    if x.numel() == 0:
        return
    if x.dtype != torch.bool:  # the common case in one pass with no temporary (aminmax propagates NaN)
        lo, hi = (float(v) for v in torch.aminmax(x.detach()))
        if max(-lo, hi) < max_abs_value(frac_bits):  # false for NaN and infinities: found below
            return
    xf = x.detach().to(torch.float64)
    if torch.isnan(xf).any():
        raise RangeError(f"{what} contains NaN at index {tuple(torch.nonzero(torch.isnan(xf))[0].tolist())}")
    if torch.isinf(xf).any():
        raise RangeError(f"{what} contains infinity at index {tuple(torch.nonzero(torch.isinf(xf))[0].tolist())}")
    limit = max_abs_value(frac_bits)
    worst = xf.abs().max().item()
    if worst >= limit:
        raise RangeError(
            f"{what} has magnitude {worst:.6g}, outside the fixed-point range (-{limit:.6g}, {limit:.6g}) "
            f"for {frac_bits} fractional bits"
        )


def encode(x: torch.Tensor | float, frac_bits: int = DEFAULT_FRAC_BITS) -> torch.Tensor:
    """Round x * 2^frac_bits to the nearest ring element (checked: see check_encodable)."""
    x = torch.as_tensor(x)
    check_encodable(x, frac_bits)
    return (x.to(torch.float64) * (1 << frac_bits)).round_().to(DTYPE)  # the product is ours: rounded in place


def decode(x: torch.Tensor, frac_bits: int = DEFAULT_FRAC_BITS) -> torch.Tensor:
    """Interpret ring elements as signed fixed-point numbers, in float64."""
    return x.to(torch.float64) / (1 << frac_bits)


_DECODE_BLOCK = 1 << 16  # elements: a block's temporary stays in cache


def decode_(x: torch.Tensor, frac_bits: int = DEFAULT_FRAC_BITS) -> torch.Tensor:
    """decode(x), bit for bit, written over x's own memory: x (int64, contiguous) is used up
    and the float64 result is a view of its storage, so revealing allocates nothing more.

    Block by block: numpy makes an overlapping ufunc safe by copying its input, so one call
    on the whole tensor would copy it all; per block the copy is a small temporary."""
    if x.dtype != DTYPE or not x.is_contiguous():
        raise ValueError(f"decode_ takes a contiguous int64 tensor, got {x.dtype}"
                         f"{'' if x.is_contiguous() else ' (not contiguous)'}")
    out = x.view(torch.float64)
    ints, floats = x.reshape(-1).numpy(), out.reshape(-1).numpy()
    scale = 2.0 ** -frac_bits  # exact, so multiplying rounds as dividing does
    for i in range(0, len(ints), _DECODE_BLOCK):
        np.multiply(ints[i:i + _DECODE_BLOCK], scale, out=floats[i:i + _DECODE_BLOCK], casting="unsafe")
    return out


def is_integral(x: torch.Tensor) -> bool:
    """True when every element is a (small) integer, so scaling needs no truncation."""
    if not torch.is_floating_point(x):
        return True
    return bool(torch.all(x == torch.round(x))) and (x.numel() == 0 or x.abs().max().item() < 2**31)


def logical_shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """floor(x / 2^bits) with x read as an unsigned 64-bit integer."""
    if bits == 0:
        return x
    return (x >> bits) & ((1 << (RING_BITS - bits)) - 1)


def msb(x: torch.Tensor) -> torch.Tensor:
    """Most significant bit of each element read as unsigned, as int64 0/1."""
    return (x >> (RING_BITS - 1)) & 1


# -- bilinear maps in the ring --------------------------------------------------------------
# torch's CPU kernels for int64 matmul, conv2d and conv_transpose2d accumulate in int64 and
# so wrap modulo 2^64 exactly (tests/test_ring.py checks them against Python integers).


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b mod 2^64, with torch.matmul semantics (batching and broadcasting)."""
    return torch.matmul(a, b)


def conv2d(x: torch.Tensor, w: torch.Tensor, stride=1, padding=0, dilation=1, groups: int = 1) -> torch.Tensor:
    """conv2d(x, w) mod 2^64, without bias."""
    return F.conv2d(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv2d_output_padding(in_hw, kernel, stride, padding, dilation) -> tuple[int, int]:
    """The rows and columns of conv2d's input that no output reads (a strided window that
    floor-divided): conv_transpose2d must add them back to give the input's size."""
    return tuple((h + 2 * p - d * (k - 1) - 1) % s for h, k, s, p, d in
                 zip(in_hw, _pair(kernel), _pair(stride), _pair(padding), _pair(dilation)))


def conv_transpose2d(g: torch.Tensor, w: torch.Tensor, stride=1, padding=0, output_padding=0, dilation=1,
                     groups: int = 1) -> torch.Tensor:
    """conv2d's adjoint in its input, mod 2^64: for z = conv2d(x, w, ...) (w shaped as conv2d's
    kernel), <conv2d(x, w), g> = <x, conv_transpose2d(g, w, ...)> with the input's shape when
    output_padding is conv2d_output_padding. Bilinear in (g, w)."""
    return F.conv_transpose2d(g, w, stride=stride, padding=padding, output_padding=output_padding, groups=groups,
                              dilation=dilation)


def conv2d_weight(x: torch.Tensor, g: torch.Tensor, kernel, stride=1, padding=0, dilation=1,
                  groups: int = 1) -> torch.Tensor:
    """conv2d's adjoint in its kernel, mod 2^64: dw[o, c, i, j] = sum over n, y, x of
    g[n, o, y, x] x_pad[n, group(o) C/G + c, s y + d i, s x + d j]. Bilinear in (x, g).

    One conv2d in which the batch is the summed channel axis: x becomes (C/G, G N, H, W)
    (the batch of each group as that group's channels), g becomes the kernel (O, N, OH, OW),
    and the forward's stride and dilation swap roles; the result (C/G, O, kh', kw') has
    kh' >= kh (the rows past kh read padding that no output used) and is cut to the kernel."""
    n, c, h, wd = x.shape
    kh, kw = _pair(kernel)
    xt = x.reshape(n, groups, c // groups, h, wd).permute(2, 1, 0, 3, 4).reshape(c // groups, groups * n, h, wd)
    out = F.conv2d(xt, g.transpose(0, 1), stride=_pair(dilation), padding=_pair(padding), dilation=_pair(stride),
                   groups=groups)
    return out[:, :, :kh, :kw].transpose(0, 1)
