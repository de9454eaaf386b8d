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
                                        conv2d, Bx and Bw its gradient products: train_forms)
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
from dataclasses import dataclass

import torch

from mpc import ring
from mpc.prg import PRG
from mpc.protocols import bits as bitops
from mpc.protocols.base import Spec

_RING_BITS = ring.RING_BITS


# -- spec constructors --------------------------------------------------------------------------


def square_pair(shape) -> Spec:
    return Spec("square", (tuple(shape),))


def mul_triple(shape_a, shape_b) -> Spec:
    return Spec("mul", (tuple(shape_a), tuple(shape_b)))


def matmul_triple(shape_a, shape_b) -> Spec:
    return Spec("matmul", (tuple(shape_a), tuple(shape_b)))


def bilinear_train_triple(shape_a, shape_b, dx: bool, dw: bool, conv=None) -> Spec:
    """A triple (a, b, c = B(a, b)) with a third mask d shaped like c and the gradient products
    c' = Bx(d, b) (if dx) and c'' = Bw(a, d) (if dw), where B is matmul (conv None) or a conv2d
    with conv = (stride, padding, dilation, groups) (see train_forms): a and b are the very
    same draws in the forward product and in the backward products of one layer
    (protocols/reuse.py)."""
    flags = (("conv", int(conv is not None)), ("dw", int(dw)), ("dx", int(dx)))
    params = tuple(sorted(flags + (_conv_params(*conv) if conv is not None else ())))
    return Spec("bilinear_train", (tuple(shape_a), tuple(shape_b)), params)


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


def _conv_params(stride, padding, dilation, groups, **pairs) -> tuple[tuple[str, int], ...]:
    params = {"stride_h": stride[0], "stride_w": stride[1], "pad_h": padding[0], "pad_w": padding[1],
              "dil_h": dilation[0], "dil_w": dilation[1], "groups": groups}
    for name, (h, w) in pairs.items():
        params[f"{name}_h"], params[f"{name}_w"] = h, w
    return tuple(sorted((k, int(v)) for k, v in params.items()))


def conv_args(spec: Spec) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], int]:
    """(stride, padding, dilation, groups) of a spec made with _conv_params."""
    p = dict(spec.params)
    return (p["stride_h"], p["stride_w"]), (p["pad_h"], p["pad_w"]), (p["dil_h"], p["dil_w"]), p["groups"]


def conv2d_triple(shape_x, shape_w, stride, padding, dilation, groups) -> Spec:
    return Spec("conv2d", (tuple(shape_x), tuple(shape_w)), _conv_params(stride, padding, dilation, groups))


def conv_transpose2d_triple(shape_g, shape_w, stride, padding, output_padding, dilation, groups) -> Spec:
    """c = conv_transpose2d(a, b): the input gradient of a conv2d with these parameters."""
    params = _conv_params(stride, padding, dilation, groups, out_pad=output_padding)
    return Spec("conv_transpose2d", (tuple(shape_g), tuple(shape_w)), params)


def conv2d_weight_triple(shape_x, shape_g, kernel, stride, padding, dilation, groups) -> Spec:
    """c = conv2d_weight(a, b): the kernel gradient of a conv2d with these parameters."""
    params = _conv_params(stride, padding, dilation, groups, kernel=kernel)
    return Spec("conv2d_weight", (tuple(shape_x), tuple(shape_g)), params)


def trunc_pair(shape, frac_bits: int, n_parties: int, square: bool = False) -> Spec:
    """Truncation by `frac_bits` bits (any shift from 1 to 62, not only the encoding's f);
    with `square`, also the square of the result's secret part (arithmetic.truncate_square)."""
    params = (("f", frac_bits), ("n", n_parties)) + ((("sq", 1),) if square else ())
    return Spec("trunc", (tuple(shape),), params)


def compare_material(shape, mode: str, payload_shapes=()) -> Spec:
    """For compare.py: mask r, chunk tables, tree masks and products, and the bit s that
    turns the XOR-shared result into arithmetic shares and products with the payloads."""
    return Spec("cmp", (tuple(shape), *(tuple(p) for p in payload_shapes)), (("eq", int(mode == "eq")),))


# -- parts: the tensors a correlation consists of ----------------------------------------------


@dataclass(frozen=True)
class Part:
    """One tensor of a correlation. With `bits`, shape is (rows, m) bits held as packed
    planes: uint8 (rows, ceil(m / 8)), XOR-combined, drawn and sent as they are."""

    shape: tuple[int, ...]
    dtype: torch.dtype = torch.int64
    bits: bool = False
    nbits: int = 0  # for int64 parts: uniform in [0, 2^nbits) instead of the whole ring
    xor_words: bool = False  # whole words combined by XOR (bit tables)

    @property
    def xor(self) -> bool:
        return self.bits or self.xor_words

    @property
    def stored_shape(self) -> tuple[int, ...]:
        if self.bits:
            rows, m = self.shape
            return (rows, (m + 7) // 8)
        return self.shape

    @property
    def stored_dtype(self) -> torch.dtype:
        return torch.uint8 if self.bits else self.dtype

    def nbytes(self) -> int:
        return math.prod(self.stored_shape) * self.stored_dtype.itemsize

    @property
    def stream_itemsize(self) -> int:
        """PRG bytes per stored element: as PRG.ring, PRG.words (32 bits for up to 32) and
        PRG.short draw them; packed bits are drawn as the bytes they are stored in."""
        if self.bits or self.dtype in (torch.int16, torch.int32):
            return self.stored_dtype.itemsize
        if self.dtype == torch.int64:
            return 4 if 0 < self.nbits <= 32 else 8
        raise ValueError(f"cannot draw {self.dtype}")

    def stream_nbytes(self) -> int:
        """How many bytes of the PRG stream this part takes."""
        return math.prod(self.stored_shape) * self.stream_itemsize

    def draw(self, prg: PRG) -> torch.Tensor:
        raw = torch.empty(self.stream_nbytes(), dtype=torch.uint8)
        prg.fill(raw.numpy())
        return self.from_stream(raw)

    def from_stream(self, raw: torch.Tensor) -> torch.Tensor:
        """The part from its stream_nbytes() bytes of PRG output (uint8, one dimension)."""
        if self.bits:
            return raw.view(self.stored_shape)
        if self.dtype == torch.int64 and 0 < self.nbits <= 32:
            v = raw.view(torch.int32).to(torch.int64).view(self.shape)
            v &= (1 << self.nbits) - 1
            return v
        v = raw.view(self.dtype).view(self.shape)
        if self.dtype == torch.int64 and 0 < self.nbits < 64:
            v &= (1 << self.nbits) - 1
        return v

    def stream_ranges(self, n: int, lo: int, hi: int) -> list[tuple[int, int]]:
        """The bytes of this part's stream that hold elements [lo, hi) of a correlation
        elementwise over n elements: one range, or one per plane of packed bits (whose
        rows hold a fixed number of bits per element; lo must fall on a byte)."""
        if self.bits:
            rows, m = self.shape
            per, row_bytes = m // n, (m + 7) // 8
            if per * n != m or lo * per % 8:
                raise ValueError(f"bit planes {self.shape} do not split at element {lo} of {n}")
            a, b = lo * per // 8, (hi * per + 7) // 8
            return [(r * row_bytes + a, r * row_bytes + b) for r in range(rows)]
        per = math.prod(self.shape) // n
        if per * n != math.prod(self.shape):
            raise ValueError(f"a part of shape {self.shape} is not elementwise over {n} elements")
        size = per * self.stream_itemsize
        return [(lo * size, hi * size)]

    def empty(self) -> torch.Tensor:
        """Uninitialised storage for the part as stored (for bytes about to arrive)."""
        return torch.empty(self.stored_shape, dtype=self.stored_dtype)

    def to_bytes(self, value: torch.Tensor) -> bytes:
        return value.to(torch.uint8 if self.bits else self.dtype).contiguous().numpy().tobytes()

    def from_bytes(self, buf) -> torch.Tensor:
        dtype = torch.uint8 if self.bits else self.dtype
        if not self.nbytes():
            return torch.empty(self.stored_shape, dtype=dtype)
        return torch.frombuffer(bytearray(buf), dtype=dtype).view(self.stored_shape)

    def meta(self) -> torch.Tensor:
        return torch.empty(self.stored_shape, dtype=torch.uint8 if self.bits else self.dtype, device="meta")


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


def _bilinear(spec: Spec):
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


def _train_shapes(spec: Spec) -> tuple[tuple[int, ...], ...]:
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
    return mode, shape, math.prod(shape), payloads


def free_parts(spec: Spec, pid: int) -> list[Part]:
    if spec.kind == "trunc":
        (shape,) = spec.shapes
        return [Part(shape), Part(shape, nbits=_rho_bits(spec, pid))]
    if spec.kind == "cmp":
        mode, shape, n, payloads = _cmp_shapes(spec)
        nv = bitops.n_vars(mode)
        return [Part(shape), Part((nv, n * _GROUPS), bits=True), Part((nv, n), bits=True), Part((1, n), bits=True),
                *(Part(p) for p in payloads)]
    if spec.kind == "square":
        return [Part(spec.shapes[0])]
    if spec.kind == "bilinear_train":
        return [Part(spec.shapes[0]), Part(spec.shapes[1]), Part(_train_shapes(spec)[0])]
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
        c, c1, c2 = _train_shapes(spec)
        return [Part(c), *([Part(c1)] if spec.param("dx") else []), *([Part(c2)] if spec.param("dw") else [])]
    if spec.kind == "mul":  # a broadcast: no meta tensors (80 us a call, and the dealer asks per chunk)
        try:
            return [Part(tuple(torch.broadcast_shapes(*spec.shapes)))]
        except RuntimeError as exc:
            raise ValueError(f"mul of shapes {list(spec.shapes)}: {exc}") from None
    a = torch.empty(spec.shapes[0], dtype=torch.int64, device="meta")
    b = torch.empty(spec.shapes[1], dtype=torch.int64, device="meta")
    try:
        c = _bilinear(spec)(a, b)
    except RuntimeError as exc:  # shapes or parameters that do not fit (a dealer refuses the request)
        raise ValueError(f"{spec.kind} of shapes {list(spec.shapes)}: {exc}") from None
    return [Part(tuple(c.shape))]


def _table_words(chunks: torch.Tensor, less: bool) -> torch.Tensor:
    """int16 words whose bit v is [v < r_j] (less) or [v == r_j], for 4-bit chunks r_j."""
    one = torch.ones_like(chunks, dtype=torch.int32) << chunks.to(torch.int32)
    words = one - 1 if less else one
    return torch.where(words >= 32768, words - 65536, words).to(torch.int16)


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
    if spec.kind == "bilinear_train":
        a, b, d = free
        op, bx, bw = train_forms(spec)
        out = [op(a, b)]
        if spec.param("dx"):
            out.append(bx(d, b))
        if spec.param("dw"):
            out.append(bw(a, d))
        return out
    return [_bilinear(spec)(*free)]


def correction_nbytes(spec: Spec) -> int:
    return sum(p.nbytes() for p in dependent_parts(spec))


def correction_values(spec: Spec, frees: list[list[torch.Tensor]], others: list[list[torch.Tensor]]
                      ) -> list[torch.Tensor]:
    """Party 0's dependent tensors as stored, from every party's free tensors (`frees[i]`)
    and the dependent tensors of parties i > 0 (`others[i - 1]`), which it consumes (party
    0's free tensors become the combined ones):
      1. combine the free tensors (sum, or XOR for bits);
      2. compute the values the dependent tensors must combine to (_targets);
      3. take away the other parties' dependent tensors (subtract, or XOR)."""
    combined = [_combine(part, [f[k] for f in frees]) for k, part in enumerate(free_parts(spec, 0))]
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
    others = [[part.draw(prg) for part in dependent_parts(spec)] for prg in prgs[1:]]
    return correction_values(spec, frees, others)


def dealer_correction(spec: Spec, prgs: list[PRG]) -> list[bytes]:
    """Party 0's corrections of one correlation, whole, as bytes."""
    return [part.to_bytes(c) for part, c in zip(dependent_parts(spec), whole_correction(spec, prgs))]


def party_part(spec: Spec, pid: int, prg: PRG, correction: memoryview | None = None) -> tuple[torch.Tensor, ...]:
    """This party's part of the correlation; party 0 passes the dealer's correction bytes."""
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


def meta_part(spec: Spec) -> tuple[torch.Tensor, ...]:
    """Placeholders with the right shapes, for the planning dry run."""
    return assemble(spec, [p.meta() for p in free_parts(spec, 0)],
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
