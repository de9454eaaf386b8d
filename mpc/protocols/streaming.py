"""The dealer's corrections as a stream: large elementwise correlations made chunk by chunk.

A correlation whose every tensor is elementwise over one flat index of n elements (mul of
two equal shapes, square, trunc, cmp whose payloads extend the compared shape) is made in
chunks of elements: elements [lo, hi) of every party's free and dependent tensors are read
from the PRG streams where they lie (AES-CTR starts at any byte: PRG(key, offset)), and
the chunk's corrections are those of the same kind of correlation over hi - lo elements.
The dealer then holds one chunk of every party's streams instead of the whole
correlation, and a chunk's bytes can leave while the next chunk is made.

The stream is byte for byte that of whole generation (correlations.dealer_correction):
each dependent tensor whole, one after the other, correlation after correlation. The
first dependent tensor of a correlation (the only one of mul and square, the truncation's
T', the comparison's first table) leaves chunk by chunk; the chunks of the others wait
for the correlation's last chunk, then leave in stream order. Chunks start on multiples
of 8 elements, so that planes of packed bits (1 or 4 bits an element, 8 to a byte) split
on byte boundaries; only the last chunk may end inside a byte.

One chunk [lo, hi) of a correlation over n elements:
  1. for every party i, the bytes of elements [lo, hi) of each of its free tensors (one
     range, or one per plane of bits) at that tensor's offset in stream i;
  2. for parties i > 0, the same for their dependent tensors, which follow their free ones;
  3. the chunk's corrections, as a correlation of hi - lo elements
     (correlations.correction_values).
Matmul, conv2d and bilinear_train mix elements and are made whole.
"""

from __future__ import annotations

import math

import torch

from mpc.prg import PRG, derive_key
from mpc.protocols import correlations, holders
from mpc.protocols.base import Spec

# Elements per chunk, at most: a correlation of n elements is cut into ceil(n / CHUNK)
# chunks of equal size (a multiple of 8). Measured here (one process, 3 parties' streams,
# the processes' malloc settings), chunks of 2^16 to 2^17 elements cost about what whole
# generation does, and much less than chunks of 2^13 or 2^14 (a chunk of a comparison reads
# some 50 ranges a party, and runs some 40 small ops); a product's chunk is then 1 MiB of
# corrections (one frame), a comparison's about 11 MiB.
CHUNK = 1 << 17


def chunk_size(n: int, most: int = CHUNK) -> int:
    """Elements per chunk for a correlation of n elements: equal chunks of at most `most`."""
    count = -(-n // most)
    if count <= 1:
        return n
    size = -(-n // count)
    return -(-size // 8) * 8


def elements(spec: Spec) -> int | None:
    """n if every tensor of the correlation is elementwise over one flat index of n
    elements, else None."""
    if spec.kind in ("square", "trunc"):
        return math.prod(spec.shapes[0])
    if spec.kind in ("mul", "omul") and tuple(spec.shapes[0]) == tuple(spec.shapes[1]):
        return math.prod(spec.shapes[0])
    if spec.kind == "cmp":
        shape, *payloads = spec.shapes
        if all(tuple(p[:len(shape)]) == tuple(shape) for p in payloads):
            return math.prod(shape)
    return None


def _chunk_spec(spec: Spec, m: int) -> Spec:
    """The same kind of correlation over m elements, flat (payloads keep their trailing dims)."""
    if spec.kind == "cmp":
        shape, *payloads = spec.shapes
        return Spec("cmp", ((m,), *((m, *p[len(shape):]) for p in payloads)), spec.params)
    return Spec(spec.kind, tuple((m,) for _ in spec.shapes), spec.params)


class _Stream:
    """One party's stream of one correlation, read at byte offsets. Chunk c + 1 reads each
    range where chunk c's read of it ended, so the PRG a read leaves there serves the next
    one: a correlation costs one PRG per range (per tensor, or per plane of bits), not one
    per range and chunk (a fresh PRG, AES key schedule and all, is about 10 us)."""

    def __init__(self, key: bytes):
        self.key = key
        self._at: dict[int, PRG] = {}  # PRGs by the stream offset they stand at

    def read(self, start: int, ranges: list[tuple[int, int]]) -> torch.Tensor:
        """The bytes in each range (relative to `start`), one after the other."""
        raw = torch.empty(sum(b - a for a, b in ranges), dtype=torch.uint8)
        out, pos = raw.numpy(), 0
        for a, b in ranges:
            prg = self._at.pop(start + a, None) or PRG(self.key, offset=start + a)
            prg.fill(out[pos:pos + b - a])
            self._at[start + b] = prg
            pos += b - a
        return raw


class _Layout:
    """Where each party's tensors of one correlation lie in its stream, and the streams."""

    def __init__(self, spec: Spec, keys: list[bytes]):
        self.spec = spec
        self.free = [correlations.free_parts(spec, pid) for pid in range(len(keys))]
        self.deps = correlations.dependent_parts(spec)
        self.streams = [_Stream(k) for k in keys]
        self._chunks: dict[int, Spec] = {}

    def chunk_spec(self, m: int) -> Spec:
        if m not in self._chunks:  # every chunk but the last has the same size
            self._chunks[m] = _chunk_spec(self.spec, m)
        return self._chunks[m]

    def draw(self, pid: int, start: int, whole, chunk, n: int, lo: int, hi: int):
        """Elements [lo, hi) of consecutive parts `whole` from byte `start` of party pid's
        stream, as the parts `chunk` of the chunk's correlation; and where they end."""
        out = []
        for part, piece in zip(whole, chunk):
            raw = self.streams[pid].read(start, part.stream_ranges(n, lo, hi))
            assert len(raw) == piece.stream_nbytes()
            out.append(piece.from_stream(raw))
            start += part.stream_nbytes()
        return out, start


def chunk_correction(layout: _Layout, n: int, lo: int, hi: int) -> list[torch.Tensor]:
    """Party 0's dependent tensors, as stored, for elements [lo, hi) (the steps above)."""
    cs = layout.chunk_spec(hi - lo)
    deps = correlations.dependent_parts(cs)
    frees, others = [], []
    for pid in range(len(layout.streams)):
        free, start = layout.draw(pid, 0, layout.free[pid], correlations.free_parts(cs, pid), n, lo, hi)
        frees.append(free)
        if pid and holders.is_member(cs, pid):
            others.append(layout.draw(pid, start, layout.deps, deps, n, lo, hi)[0])
    return correlations.correction_values(cs, frees, others)


def _raw(value: torch.Tensor) -> memoryview:
    """A contiguous tensor's bytes, without a copy (the view keeps the tensor alive)."""
    if not value.numel():  # (an empty tensor's view has a zero in its shape: no cast)
        return memoryview(b"")
    return memoryview(value.contiguous().numpy()).cast("B")


def correction_pieces(spec: Spec, keys: list[bytes], chunk: int | None = None):
    """Party 0's corrections of one correlation as bytes-like pieces, in stream order:
    chunk by chunk if it is elementwise and larger than a chunk, else whole. `keys`: every
    party's key of this correlation; `chunk`: elements per chunk, a multiple of 8 (tests;
    chunk_size(n) if not given)."""
    n = elements(spec)
    chunk = chunk or (chunk_size(n) if n is not None else 0)
    if n is None or n <= chunk:
        for value in correlations.whole_correction(spec, [PRG(k) for k in keys]):
            yield _raw(value)
        return
    if chunk % 8 or chunk <= 0:
        raise ValueError(f"a chunk of {chunk} elements would split a byte of packed bits")
    layout = _Layout(spec, keys)
    first = layout.deps[0]
    streams_first = not first.bits or first.stored_shape[0] == 1  # its chunks are consecutive bytes
    held: list[list[torch.Tensor]] = [[] for _ in layout.deps]
    for lo in range(0, n, chunk):
        values = chunk_correction(layout, n, lo, min(n, lo + chunk))
        for j, value in enumerate(values):
            if j == 0 and streams_first:
                yield _raw(value)
            else:
                held[j].append(value)
    for j, part in enumerate(layout.deps):
        pieces, held[j] = held[j], []  # each tensor's chunks are dropped once sent
        if part.bits:  # planes are stored row by row: each row's chunks in order
            for row in range(part.stored_shape[0]):
                for value in pieces:
                    yield _raw(value[row])
        else:
            for value in pieces:
                yield _raw(value)


def dealer_stream(seeds: list[bytes], label: str, specs: list[Spec], chunk: int | None = None):
    """All of the dealer's work for one job: party 0's corrections, correlation after
    correlation, as bytes-like pieces whose concatenation is the stream. Correlation k
    of a job is expanded from derive_key(seed_i, "corr", label, k) (label: the job id, or
    a reproducible job's stream label)."""
    for k, spec in enumerate(specs):
        yield from correction_pieces(spec, [derive_key(seed, "corr", label, k) for seed in seeds], chunk)
