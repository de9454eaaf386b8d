"""AES-128-CTR pseudorandom generator: the only source of randomness for anything secret.

Keys are 128-bit; `derive_key` labels sub-streams (per job, per correlation, per pair of
parties) with SHA-256 so that parties holding the same seed expand identical streams.
`update_into` on a preallocated buffer runs at several GB/s here, faster than torch.randint.
Counter mode can start at any block, so a stream can also be read from any byte offset
(`PRG(key, offset=...)`): the dealer draws a large correlation chunk by chunk that way.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY_BYTES = 16
_BLOCK = 16
_PIECE = 1 << 20  # bytes encrypted per call: the zeros it encrypts are allocated once
_ZEROS = memoryview(bytes(_PIECE))


def new_seed() -> bytes:
    """A fresh 128-bit seed from the operating system's CSPRNG."""
    return os.urandom(KEY_BYTES)


def derive_key(seed: bytes, *labels: str | int | bytes) -> bytes:
    """A 128-bit key for the sub-stream named by `labels` (SHA-256 of seed and labels)."""
    h = hashlib.sha256()
    h.update(len(seed).to_bytes(2, "little") + seed)
    for label in labels:
        if isinstance(label, int):
            label = b"i" + label.to_bytes(8, "little", signed=True)
        elif isinstance(label, str):
            label = b"s" + label.encode()
        h.update(len(label).to_bytes(4, "little") + label)
    return h.digest()[:KEY_BYTES]


class PRG:
    """A deterministic stream of uniform bytes: AES-128 in counter mode over zeros.

    `offset`: start at that byte of the stream (the counter starts at block offset // 16,
    and the bytes before the offset within that block are skipped), so that
    PRG(key, offset=k) yields exactly what PRG(key) yields after its first k bytes."""

    def __init__(self, key: bytes, offset: int = 0):
        if len(key) != KEY_BYTES:
            raise ValueError(f"PRG key must be {KEY_BYTES} bytes, got {len(key)}")
        if offset < 0:
            raise ValueError(f"a PRG stream starts at byte 0 or later, not {offset}")
        block, skip = divmod(offset, _BLOCK)
        self._enc = Cipher(algorithms.AES(key), modes.CTR(block.to_bytes(_BLOCK, "big"))).encryptor()
        if skip:
            self._enc.update(bytes(skip))

    def fill(self, out) -> None:
        """Write the next len(out) bytes of the stream into `out` (a writable buffer: a
        bytearray, a numpy array, a contiguous tensor's .numpy()), allocating nothing of
        its size. Older `cryptography` releases want one block of room beyond the input:
        every call but the last leaves 16 bytes of `out` after it, the last goes via a
        block-sized scratch buffer."""
        view = memoryview(out).cast("B")
        n, pos = len(view), 0
        while n - pos > _BLOCK:
            size = min(_PIECE, n - pos - _BLOCK)
            done = self._enc.update_into(_ZEROS[:size], view[pos:pos + size + _BLOCK - 1])
            assert done == size
            pos += size
        if pos < n:
            tail = bytearray(2 * _BLOCK)
            done = self._enc.update_into(_ZEROS[:n - pos], tail)
            assert done == n - pos
            view[pos:] = tail[:n - pos]

    def _tensor(self, shape, dtype: torch.dtype, np_dtype) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        arr = np.empty(count, dtype=np_dtype)  # not zero-filled: fill() writes every byte
        self.fill(arr)
        return torch.from_numpy(arr).view(shape) if count else torch.empty(shape, dtype=dtype)

    def ring(self, shape) -> torch.Tensor:
        """int64 tensor uniform over the whole ring Z_2^64."""
        return self._tensor(shape, torch.int64, np.int64)

    def words(self, shape, bits: int) -> torch.Tensor:
        """int64 tensor uniform over [0, 2^bits), bits <= 32 (drawn 32 bits at a time)."""
        if not 0 < bits <= 32:
            raise ValueError(f"words() draws 1 to 32 bits, not {bits}")
        w = self._tensor(shape, torch.int32, np.int32).to(torch.int64)
        return w & ((1 << bits) - 1)

    def short(self, shape) -> torch.Tensor:
        """int16 tensor uniform over Z_2^16."""
        return self._tensor(shape, torch.int16, np.int16)

    def bytes(self, n: int) -> torch.Tensor:
        """uint8 tensor of n uniform bytes."""
        return self._tensor((n,), torch.uint8, np.uint8)
