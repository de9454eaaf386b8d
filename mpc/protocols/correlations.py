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
  square  (a, c = a * a)              free a; dependent c             8 B/elem
  matmul  (a, b, c = a @ b)           free a, b; dependent c          8 B/elem of c
  conv2d  (a, b, c = conv2d(a, b))    free a, b; dependent c          8 B/elem of c
  conv_transpose2d, conv2d_weight      the same, c = conv2d's adjoint   8 B/elem of c
          (a gradient product: ring.conv_transpose2d, ring.conv2d_weight)
  bilinear_train (a, b, d, c = B(a, b), free a, b, d; dependent c and  8 B/elem of c, c', c''
          c' = Bx(d, b), c'' = Bw(a, d)) the backward products asked for
                                        (reuse.py: one triple's masks for a layer's forward
                                        and backward products, SecureML §4.2; B matmul or
                                        conv2d, Bx and Bw its gradient products: bilinear.py)
  trunc   (r, R, T, M)                free R, rho; dependent T, M     4 B/elem (k <= 16 bits shifted)
          with sq: also Q = S0^2, D        dependent D, Q                  + 8 B + a word (k bits)
          (S0 = T - R, D = S1^2 - S0^2)   (arithmetic.truncate_square)
  cmp     comparison material          see compare.py                  53 B/elem ("lt"), 47 ("eq"),
                                                                       + 8 B per payload element

Each tensor of a correlation is a `Part`: int64 ring elements (summed), small words, or
bits (uint8 0/1 combined by XOR, packed 8 to a byte on the wire and in the PRG stream).
A party's stream for correlation k holds its free parts, then (parties i > 0) its
dependent parts, each whole and in order; party 0's corrections are its dependent parts
as stored, in order. protocols/streaming.py generates the large elementwise kinds chunk
by chunk into the very same bytes.
"""

from __future__ import annotations

import math

import torch

from mpc import ring
from mpc.prg import PRG
from mpc.protocols import bits as bitops
from mpc.protocols import bilinear
from mpc.protocols.base import Spec
from mpc.protocols.holders import OWNED, base_of, is_member, members_param, owned_triple
from mpc.protocols.parts import Part

_RING_BITS = ring.RING_BITS


# -- spec constructors --------------------------------------------------------------------------


def square_pair(shape) -> Spec:
    return Spec("square", (tuple(shape),))


def mul_triple(shape_a, shape_b) -> Spec:
    return Spec("mul", (tuple(shape_a), tuple(shape_b)))


def owned_mul_triple(shape_a, shape_b, owner_a: int, owner_b: int) -> Spec:
    return owned_triple(mul_triple(shape_a, shape_b), owner_a, owner_b)



def matmul_triple(shape_a, shape_b) -> Spec:
    return Spec("matmul", (tuple(shape_a), tuple(shape_b)))


def bilinear_train_triple(shape_a, shape_b, dx: bool, dw: bool, conv=None) -> Spec:
    """A triple (a, b, c = B(a, b)) with a third mask d shaped like c and the gradient products
    c' = Bx(d, b) (if dx) and c'' = Bw(a, d) (if dw), where B is matmul (conv None) or a conv2d
    with conv = (stride, padding, dilation, groups) (see bilinear.train_forms): a and b are the very
    same draws in the forward product and in the backward products of one layer
    (protocols/reuse.py)."""
    flags = (("conv", int(conv is not None)), ("dw", int(dw)), ("dx", int(dx)))
    params = tuple(sorted(flags + (bilinear.conv_params(*conv) if conv is not None else ())))
    return Spec("bilinear_train", (tuple(shape_a), tuple(shape_b)), params)


def conv2d_triple(shape_x, shape_w, stride, padding, dilation, groups) -> Spec:
    return Spec("conv2d", (tuple(shape_x), tuple(shape_w)), bilinear.conv_params(stride, padding, dilation, groups))


def conv_transpose2d_triple(shape_g, shape_w, stride, padding, output_padding, dilation, groups) -> Spec:
    """c = conv_transpose2d(a, b): the input gradient of a conv2d with these parameters."""
    params = bilinear.conv_params(stride, padding, dilation, groups, out_pad=output_padding)
    return Spec("conv_transpose2d", (tuple(shape_g), tuple(shape_w)), params)


def conv2d_weight_triple(shape_x, shape_g, kernel, stride, padding, dilation, groups) -> Spec:
    """c = conv2d_weight(a, b): the kernel gradient of a conv2d with these parameters."""
    params = bilinear.conv_params(stride, padding, dilation, groups, kernel=kernel)
    return Spec("conv2d_weight", (tuple(shape_x), tuple(shape_g)), params)


def trunc_pair(shape, frac_bits: int, n_parties: int, square: bool = False, members: tuple[int, ...] = ()) -> Spec:
    """Truncation by `frac_bits` bits (any shift from 1 to 62, not only the encoding's f);
    with `square`, also the square of the result's secret part (arithmetic.truncate_square).
    With `members` (party 0 among them), only those parties hold it (see `is_member`)."""
    if members:
        n_parties = len(members)
    params = (("f", frac_bits), ("n", n_parties)) + ((("sq", 1),) if square else ()) + members_param(members)
    return Spec("trunc", (tuple(shape),), tuple(sorted(params)))


def compare_material(shape, mode: str, payload_shapes=(), self_payload: bool = False) -> Spec:
    """For compare.py: mask r, chunk tables, tree masks and products, and the bit s that
    turns the XOR-shared result into arithmetic shares and products with the payloads.
    With `self_payload`, the first payload is the compared value itself: its mask is the
    comparison's own, alpha = -(r + offset), so no party draws one (see compare.py)."""
    params = (("eq", int(mode == "eq")),) + ((("self", 1),) if self_payload else ())
    spec = Spec("cmp", (tuple(shape), *(tuple(p) for p in payload_shapes)), params)
    _cmp_shapes(spec)  # a self payload must have the compared shape
    return spec


def self_payload(spec: Spec) -> bool:
    """Whether a comparison's first payload is the compared value (its mask is -(r + offset))."""
    return dict(spec.params).get("self", 0) == 1


def compare_offset(mode: str) -> int:
    """What party 0 adds to the masked value of a comparison: 2^62 for a sign test ("lt"),
    which moves the valid range [-2^62, 2^62) to [0, 2^63); nothing for a zero test."""
    return 0 if mode == "eq" else 1 << 62


def _combine(part: Part, values: list[torch.Tensor]) -> torch.Tensor:
    """The sum (or XOR) of the parties' tensors, written into the first: the dealer's own
    draws, which nothing reads afterwards (a copy of 10^6 elements is 1-3 ms here)."""
    out = values[0]
    for v in values[1:]:
        if part.xor:
            out ^= v
        else:
            out += v
    return out


# -- the algebra of each kind -------------------------------------------------------------------


def _squared(spec: Spec) -> bool:
    return dict(spec.params).get("sq", 0) == 1


def _word_dtype(bits: int) -> torch.dtype:
    return torch.int16 if bits <= 16 else torch.int32 if bits <= 32 else torch.int64


def _rho_bits(spec: Spec, pid: int) -> int:
    # With N even, party 0 draws one extra bit so that E[floor(sum rho / 2^f)] is an
    # integer (N/2) that party 0 can subtract: the truncation then has zero mean error.
    f, n = spec.param("f"), spec.param("n")
    return f + 1 if (pid == 0 and n % 2 == 0) else f


_CHUNKS = 16  # 4-bit chunks of the 64-bit mask r
_GROUPS = 4  # the first tree level combines 4 groups of 4 chunks


def _cmp_shapes(spec: Spec):
    shape, *payloads = spec.shapes
    mode = "eq" if spec.param("eq") else "lt"
    if self_payload(spec) and (not payloads or tuple(payloads[0]) != tuple(shape)):
        # refused for compare_material's callers and for a request the dealer rebuilds alike
        raise ValueError(f"cmp: a self payload has the compared shape {tuple(shape)}, got payloads "
                         f"{[tuple(p) for p in payloads]}")
    return mode, shape, math.prod(shape), payloads


def free_parts(spec: Spec, pid: int) -> list[Part]:
    if not is_member(spec, pid):
        return []
    if spec.kind == "trunc":
        (shape,) = spec.shapes
        return [Part(shape), Part(shape, nbits=_rho_bits(spec, pid))]
    if spec.kind == "cmp":
        mode, shape, n, payloads = _cmp_shapes(spec)
        nv = bitops.n_vars(mode)
        return [Part(shape), Part((nv, n * _GROUPS), bits=True), Part((nv, n), bits=True), Part((1, n), bits=True),
                *(Part(p) for p in payloads[self_payload(spec):])]  # a self payload's mask is -(r + offset)
    if spec.kind == "square":
        return [Part(spec.shapes[0])]
    if spec.kind == "bilinear_train":
        return [Part(spec.shapes[0]), Part(spec.shapes[1]), Part(bilinear.train_shapes(spec)[0])]
    if spec.kind in OWNED:  # each mask at its owner only
        return [Part(spec.shapes[k]) for k, name in enumerate(("oa", "ob")) if spec.param(name) == pid]
    return [Part(spec.shapes[0]), Part(spec.shapes[1])]


def dependent_parts(spec: Spec) -> list[Part]:
    if spec.kind == "trunc":
        (shape,) = spec.shapes
        dt = _word_dtype(spec.param("f"))
        return [Part(shape, dt), Part(shape, dt), *([Part(shape, dt), Part(shape)] if _squared(spec) else [])]
    if spec.kind == "cmp":
        mode, shape, n, payloads = _cmp_shapes(spec)
        table = Part((n, _CHUNKS), torch.int16, xor_words=True)  # LT ("lt") or EQ ("eq") per chunk
        extra = [] if mode == "eq" else [Part((1, n), bits=True)]  # bit 62 of r
        return [table, *extra,
                Part((len(bitops.mask_products(mode, False)), n * _GROUPS), bits=True),
                Part((len(bitops.mask_products(mode, True)), n), bits=True),
                Part(shape), *(Part(p) for p in payloads)]
    if spec.kind == "square":
        return [Part(spec.shapes[0])]
    if spec.kind == "bilinear_train":
        c, c1, c2 = bilinear.train_shapes(spec)
        return [Part(c), *([Part(c1)] if spec.param("dx") else []), *([Part(c2)] if spec.param("dw") else [])]
    if spec.kind in ("mul", "omul"):  # a broadcast: no meta tensors (80 us a call, and the dealer asks per chunk)
        try:
            return [Part(tuple(torch.broadcast_shapes(*spec.shapes)))]
        except RuntimeError as exc:
            raise ValueError(f"mul of shapes {list(spec.shapes)}: {exc}") from None
    a = torch.empty(spec.shapes[0], dtype=torch.int64, device="meta")
    b = torch.empty(spec.shapes[1], dtype=torch.int64, device="meta")
    try:
        c = bilinear.bilinear(base_of(spec))(a, b)
    except RuntimeError as exc:  # shapes or parameters that do not fit (a dealer refuses the request)
        raise ValueError(f"{spec.kind} of shapes {list(spec.shapes)}: {exc}") from None
    return [Part(tuple(c.shape))]


def _table_words(chunks: torch.Tensor, less: bool) -> torch.Tensor:
    """int16 words whose bit v is [v < r_j] (less) or [v == r_j], for 4-bit chunks r_j."""
    words = torch.ones_like(chunks, dtype=torch.int32).bitwise_left_shift_(chunks)
    if less:
        words.sub_(1)
    return words.to(torch.int16)  # the low 16 bits (a narrowing cast wraps): 8x faster than a where


def _targets(spec: Spec, free: list[torch.Tensor]) -> list[torch.Tensor]:
    """Values the dependent tensors must combine to, given the combined free tensors: fresh
    tensors, none of them a free tensor or another target (correction_values writes into them)."""
    if spec.kind == "trunc":
        f = spec.param("f")
        big_r, rho = free  # rho is an exact small integer sum
        r = big_r * (1 << f) + rho
        q = rho >> f
        t = ring.logical_shift_right(big_r + q, _RING_BITS - f)  # T' mod 2^f
        m = ring.msb(r)
        if not _squared(spec):
            return [t, m]
        # the result's secret part is S0 = T - R (msb(c) = 1) or S1 = S0 + M (msb(c) = 0);
        # S1^2 - S0^2 = M (2 S0 + M) is a multiple of 2^(64 - f): sent as its word m (2 S0 + M)
        top = _RING_BITS - f
        s0 = t * (1 << top) - big_r
        d = m * (2 * s0 + m * (1 << top))
        d &= (1 << f) - 1
        return [t, m, d, s0 * s0]
    if spec.kind == "cmp":
        mode, shape, n, payloads = _cmp_shapes(spec)
        r, m1, m2, s, *alphas = free
        if self_payload(spec):
            alphas = [-(r + compare_offset(mode)), *alphas]
        flat = r.reshape(-1, 1)
        chunks = bitops.nibbles(r, top_bits=2 if mode == "lt" else 4)  # "lt" compares bits 0..61; 62 apart
        out = [_table_words(chunks, less=mode == "lt")]  # parties derive EQ from LT (compare.py)
        if mode == "lt":
            out.append(bitops.pack_rows(((flat[:, 0] >> 62) & 1).to(torch.uint8).view(1, n)))
        out.append(bitops.and_rows(m1, bitops.mask_products(mode, False)))
        out.append(bitops.and_rows(m2, bitops.mask_products(mode, True)))
        s_ring = bitops.unpack_rows(s, n)[0].to(torch.int64).view(shape)
        out.append(s_ring)
        for alpha, p in zip(alphas, payloads):
            out.append(alpha * (s_ring.view(shape + (1,) * (len(p) - len(shape)))))
        return out
    if spec.kind == "square":
        return [free[0] * free[0]]
    if spec.kind in OWNED:
        return [bilinear.bilinear(base_of(spec))(free[0], free[1])]
    if spec.kind == "bilinear_train":
        a, b, d = free
        op, bx, bw = bilinear.train_forms(spec)
        out = [op(a, b)]
        if spec.param("dx"):
            out.append(bx(d, b))
        if spec.param("dw"):
            out.append(bw(a, d))
        return out
    return [bilinear.bilinear(spec)(*free)]


def correction_nbytes(spec: Spec) -> int:
    return sum(p.nbytes() for p in dependent_parts(spec))


def correction_values(spec: Spec, frees: list[list[torch.Tensor]], others: list[list[torch.Tensor]]
                      ) -> list[torch.Tensor]:
    """Party 0's dependent tensors as stored, from every party's free tensors (`frees[i]`)
    and the dependent tensors of the other parties that hold it (`others`, by party), which
    it consumes (party 0's free tensors become the combined ones):
      1. combine the free tensors (sum, or XOR for bits);
      2. compute the values the dependent tensors must combine to (_targets);
      3. take away the other parties' dependent tensors (subtract, or XOR)."""
    if spec.kind in OWNED:  # nothing to combine: each mask is its owner's draw alone
        combined = [frees[spec.param("oa")][0], frees[spec.param("ob")][0]]
    else:
        held = [f for pid, f in enumerate(frees) if is_member(spec, pid)]
        combined = [_combine(part, [f[k] for f in held]) for k, part in enumerate(free_parts(spec, 0))]
    targets = _targets(spec, combined)
    corrections = []
    for k, (part, target) in enumerate(zip(dependent_parts(spec), targets)):
        c = target.to(part.stored_dtype)  # targets are fresh tensors: written in place
        for dep in others:
            if part.xor:
                c ^= dep[k]
            else:
                c -= dep[k]
        corrections.append(c)
    return corrections


def whole_correction(spec: Spec, prgs: list[PRG]) -> list[torch.Tensor]:
    """The dealer's side, whole: expand every party's stream and return party 0's dependent
    tensors as stored. (protocols/streaming.py makes the same bytes chunk by chunk.)"""
    frees = [[part.draw(prg) for part in free_parts(spec, pid)] for pid, prg in enumerate(prgs)]
    others = [[part.draw(prg) for part in dependent_parts(spec)] for pid, prg in enumerate(prgs)
              if pid and is_member(spec, pid)]
    return correction_values(spec, frees, others)


def dealer_correction(spec: Spec, prgs: list[PRG]) -> list[bytes]:
    """Party 0's corrections of one correlation, whole, as bytes."""
    return [part.to_bytes(c) for part, c in zip(dependent_parts(spec), whole_correction(spec, prgs))]


def party_part(spec: Spec, pid: int, prg: PRG, correction: memoryview | None = None) -> tuple[torch.Tensor, ...]:
    """This party's part of the correlation; party 0 passes the dealer's correction bytes."""
    if not is_member(spec, pid):
        return ()
    free = [part.draw(prg) for part in free_parts(spec, pid)]
    deps = dependent_parts(spec)
    if pid == 0:
        dependent, offset = [], 0
        for part in deps:
            n = part.nbytes()
            dependent.append(part.from_bytes(correction[offset:offset + n]))
            offset += n
    else:
        dependent = [part.draw(prg) for part in deps]
    return assemble(spec, free, [finish(spec, d, index=k) for k, d in enumerate(dependent)])


def meta_part(spec: Spec, pid: int = 0) -> tuple[torch.Tensor, ...]:
    """Placeholders with the right shapes (party `pid`'s: an owned triple's differ), for the
    planning dry run."""
    if not is_member(spec, pid):
        return ()
    return assemble(spec, [p.meta() for p in free_parts(spec, pid)],
                    [finish(spec, p.meta(), index=k) for k, p in enumerate(dependent_parts(spec))])


def finishes(spec: Spec, index: int = 0) -> bool:
    """Whether `finish` changes dependent tensor `index` of this kind."""
    return spec.kind == "trunc" and index < 3


def finish(spec: Spec, stored: torch.Tensor, out: torch.Tensor | None = None, index: int = 0) -> torch.Tensor:
    """Dependent tensor `index` as the protocols use it, from the form it is stored and sent
    in: the truncation's words T', M' (and D') scaled to the top of the ring (x * 2^(64 - f)),
    into `out` if given (a slice at a time as the bytes arrive); every other as it is."""
    if not finishes(spec, index):
        return stored
    scale = 1 << (_RING_BITS - spec.param("f"))
    if out is None:
        return stored.to(torch.int64) * scale
    return out.copy_(stored).mul_(scale)


def assemble(spec: Spec, free, dependent) -> tuple[torch.Tensor, ...]:
    """The tuple a protocol receives, from the free tensors and the finished dependent ones."""
    if spec.kind == "trunc":
        f = spec.param("f")
        big_r, rho = free
        return (big_r * (1 << f) + rho, big_r, *dependent)
    if spec.kind == "cmp":
        return (*free, *dependent)
    if spec.kind == "bilinear_train":  # (a, b, d, c, c', c''), an empty tensor for a product not asked for
        empty = dependent[0].new_empty((0,))
        rest = iter(dependent[1:])
        c1 = next(rest) if spec.param("dx") else empty
        c2 = next(rest) if spec.param("dw") else empty
        return (*free, dependent[0], c1, c2)
    return (*free, dependent[0])
