"""Correlated randomness from the dealer: Beaver triples and truncation masks.

Every correlation consists of *free* tensors, which every party (party 0 included)
expands from the PRG seed it shares with the dealer, and *dependent* tensors, which
parties i > 0 also expand from their seeds while party 0 receives a correction from the
dealer so that the shares sum to the right value. A triple therefore costs one tensor on
the wire instead of 3N (the TTP trick of CrypTen, with AES-CTR instead of torch.Generator).

Dependent tensors that only matter modulo 2^f (the truncation's high-bit terms) are
shared over Z_2^16 (or Z_2^32 when f > 16) and cost party 0 two (four) bytes an element.

Kinds:
  mul     (a, b, c = a * b)           free a, b; dependent c          8 B/elem of c
  matmul  (a, b, c = a @ b)           free a, b; dependent c          8 B/elem of c
  conv2d  (a, b, c = conv2d(a, b))    free a, b; dependent c          8 B/elem of c
  trunc   (r, R, T, M)                free R, rho; dependent T, M     4 B/elem (f <= 16)
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mpc import ring
from mpc.prg import PRG, derive_key
from mpc.protocols.base import Spec

_RING_BITS = ring.RING_BITS


# -- spec constructors --------------------------------------------------------------------------


def mul_triple(shape_a, shape_b) -> Spec:
    return Spec("mul", (tuple(shape_a), tuple(shape_b)))


def matmul_triple(shape_a, shape_b) -> Spec:
    return Spec("matmul", (tuple(shape_a), tuple(shape_b)))


def conv2d_triple(shape_x, shape_w, stride, padding, dilation, groups) -> Spec:
    params = (("stride_h", stride[0]), ("stride_w", stride[1]), ("pad_h", padding[0]), ("pad_w", padding[1]),
              ("dil_h", dilation[0]), ("dil_w", dilation[1]), ("groups", groups))
    return Spec("conv2d", (tuple(shape_x), tuple(shape_w)), params)


def trunc_pair(shape, frac_bits: int, n_parties: int) -> Spec:
    return Spec("trunc", (tuple(shape),), (("f", frac_bits), ("n", n_parties)))


# -- the algebra of each kind -------------------------------------------------------------------


def _bilinear(spec: Spec):
    kind = spec.kind
    if kind == "mul":
        return lambda a, b: a * b
    if kind == "matmul":
        return ring.matmul
    if kind == "conv2d":
        p = dict(spec.params)
        return lambda a, b: ring.conv2d(a, b, (p["stride_h"], p["stride_w"]), (p["pad_h"], p["pad_w"]),
                                        (p["dil_h"], p["dil_w"]), p["groups"])
    raise ValueError(f"unknown correlation kind {kind!r}")


def _word_dtype(frac_bits: int) -> torch.dtype:
    return torch.int16 if frac_bits <= 16 else torch.int32


def _rho_bits(spec: Spec, pid: int) -> int:
    # With N even, party 0 draws one extra bit so that E[floor(sum rho / 2^f)] is an
    # integer (N/2) that party 0 can subtract: the truncation then has zero mean error.
    f, n = spec.param("f"), spec.param("n")
    return f + 1 if (pid == 0 and n % 2 == 0) else f


def _free(spec: Spec, pid: int, prg: PRG) -> tuple[torch.Tensor, ...]:
    if spec.kind == "trunc":
        (shape,) = spec.shapes
        return prg.ring(shape), prg.words(shape, _rho_bits(spec, pid))
    shape_a, shape_b = spec.shapes
    return prg.ring(shape_a), prg.ring(shape_b)


def _dependent_meta(spec: Spec) -> list[tuple[tuple[int, ...], torch.dtype]]:
    """Shapes and wire dtypes of the dependent tensors."""
    if spec.kind == "trunc":
        (shape,) = spec.shapes
        dt = _word_dtype(spec.param("f"))
        return [(shape, dt), (shape, dt)]
    a = torch.empty(spec.shapes[0], dtype=torch.int64, device="meta")
    b = torch.empty(spec.shapes[1], dtype=torch.int64, device="meta")
    return [(tuple(_bilinear(spec)(a, b).shape), torch.int64)]


def _draw_dependent(spec: Spec, prg: PRG) -> list[torch.Tensor]:
    out = []
    for shape, dt in _dependent_meta(spec):
        if dt == torch.int64:
            out.append(prg.ring(shape))
        elif dt == torch.int16:
            out.append(prg.short(shape))
        else:
            out.append(prg.words(shape, 32).to(torch.int32))
    return out


def _targets(spec: Spec, free_sums: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Values the dependent tensors must sum to, given the sums of the free tensors."""
    if spec.kind == "trunc":
        f = spec.param("f")
        big_r, rho = free_sums  # rho is an exact small integer sum
        r = big_r * (1 << f) + rho
        q = rho >> f
        t = ring.logical_shift_right(big_r + q, _RING_BITS - f)  # T' mod 2^f
        m = ring.msb(r)
        dt = _word_dtype(f)
        return [t.to(dt), m.to(dt)]
    return [_bilinear(spec)(*free_sums)]


def correction_nbytes(spec: Spec) -> int:
    return sum(math.prod(shape) * torch.empty((), dtype=dt).element_size() for shape, dt in _dependent_meta(spec))


def dealer_correction(spec: Spec, prgs: list[PRG]) -> list[np.ndarray]:
    """The dealer's side: expand every party's stream and return party 0's corrections."""
    frees = [_free(spec, pid, prg) for pid, prg in enumerate(prgs)]
    sums = tuple(sum(parts) for parts in zip(*frees))
    targets = _targets(spec, sums)
    others = [_draw_dependent(spec, prg) for prg in prgs[1:]]
    corrections = []
    for k, target in enumerate(targets):
        c = target.clone()
        for dep in others:
            c -= dep[k]
        corrections.append(c.contiguous().numpy())
    return corrections


def dealer_stream(seeds: list[bytes], job: str, specs: list[Spec]):
    """All of the dealer's work for one job: party 0's corrections, spec by spec, as bytes.
    Correlation k of a job is expanded from derive_key(seed_i, "corr", job, k)."""
    for k, spec in enumerate(specs):
        prgs = [PRG(derive_key(seed, "corr", job, k)) for seed in seeds]
        for arr in dealer_correction(spec, prgs):
            yield arr.tobytes()


def party_part(spec: Spec, pid: int, prg: PRG, correction: memoryview | None = None) -> tuple[torch.Tensor, ...]:
    """This party's part of the correlation; party 0 passes the dealer's correction bytes."""
    free = _free(spec, pid, prg)
    if pid == 0:
        dependent, offset = [], 0
        for shape, dt in _dependent_meta(spec):
            n = math.prod(shape) * torch.empty((), dtype=dt).element_size()
            chunk = correction[offset:offset + n]
            dependent.append(torch.frombuffer(bytearray(chunk), dtype=dt).view(shape) if n else torch.empty(shape, dtype=dt))
            offset += n
    else:
        dependent = _draw_dependent(spec, prg)
    return _assemble(spec, free, dependent)


def meta_part(spec: Spec) -> tuple[torch.Tensor, ...]:
    """Placeholders with the right shapes, for the planning dry run."""
    free = tuple(torch.empty(s, dtype=torch.int64, device="meta") for s in (spec.shapes * 2)[:2])
    dependent = [torch.empty(s, dtype=dt, device="meta") for s, dt in _dependent_meta(spec)]
    return _assemble(spec, free, dependent)


def _assemble(spec: Spec, free, dependent) -> tuple[torch.Tensor, ...]:
    if spec.kind == "trunc":
        f = spec.param("f")
        big_r, rho = free
        t, m = (d.to(torch.int64) * (1 << (_RING_BITS - f)) for d in dependent)
        return big_r * (1 << f) + rho, big_r, t, m
    return (*free, dependent[0])
