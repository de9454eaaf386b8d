"""One tensor of a correlation (a `Part`): its dtype and shape as stored and sent, how
many bytes of a PRG stream it takes, and how it is drawn, read back and written; for packed
bits, where each element's bits lie in the stream (protocols/streaming.py reads chunks by it)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mpc.prg import PRG


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
