"""Raw frames: a small protobuf header and a payload, chunked, and their reassembly.

Layout of one gRPC message: [u32 little-endian header length][FrameHeader][payload chunk].
Payloads are split into chunks of at most `chunk_bytes` (1 MiB by default: the fastest
size measured on grpc.aio here; the hard limit is MAX_CHUNK_BYTES). Received chunks are
written into one preallocated buffer per message, with no join.

Before a receiver allocates anything, a frame's declared size is checked against the
receiver's limit (FrameTooLarge) and against its chunk count, and the first chunk's
length must account for the chunk count: an 18-byte frame cannot reserve gigabytes.
"""

from __future__ import annotations

import struct

import numpy as np

from mpc.net.proto import mpc_pb2 as pb

DEFAULT_CHUNK_BYTES = 1 << 20
MAX_CHUNK_BYTES = 4 << 20
# gRPC's message limit on both ends: one chunk plus room for the header.
MAX_MESSAGE_BYTES = MAX_CHUNK_BYTES + (64 << 10)
# Largest payload one frame sequence may announce (a receiver preallocates it).
MAX_PAYLOAD_BYTES = 8 << 30

_LEN = struct.Struct("<I")


class FrameError(ValueError):
    """A frame that cannot be parsed or does not fit what the receiver expects."""


class FrameTooLarge(FrameError):
    """A frame, or what a peer has buffered, over the receiver's limits."""


class FrameMalformed(FrameError):
    """Bytes that are not a frame, or chunks that do not make up their payload: the stream
    that carries them cannot be trusted further."""


def encode_frames(payload, chunk_bytes: int = DEFAULT_CHUNK_BYTES, **header):
    """Yield the messages that carry `payload` (bytes-like) with the given header fields."""
    if not 0 < chunk_bytes <= MAX_CHUNK_BYTES:
        raise ValueError(f"chunk size must be in (0, {MAX_CHUNK_BYTES}], got {chunk_bytes}")
    view = memoryview(payload).cast("B")
    total = len(view)
    n_chunks = max(1, -(-total // chunk_bytes))
    for k in range(n_chunks):
        piece = view[k * chunk_bytes:(k + 1) * chunk_bytes]
        hdr = pb.FrameHeader(chunk=k, n_chunks=n_chunks, total_bytes=total, **header).SerializeToString()
        yield b"".join((_LEN.pack(len(hdr)), hdr, piece))  # the payload's only copy


class StreamEncoder:
    """Frames for a payload whose size is known up front but whose bytes come in pieces
    (the dealer's corrections, chunk by chunk), so the whole payload is never held at once.
    Pieces are held, not copied, until their frame is full, then copied once into it:
    a piece must not change after it is fed."""

    def __init__(self, total: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES, **header):
        if not 0 < chunk_bytes <= MAX_CHUNK_BYTES:
            raise ValueError(f"chunk size must be in (0, {MAX_CHUNK_BYTES}], got {chunk_bytes}")
        self.total, self.chunk_bytes, self.header = total, chunk_bytes, header
        self.n_chunks = max(1, -(-total // chunk_bytes))
        self._pending: list[memoryview] = []
        self._pending_bytes = 0
        self._next = 0
        self._sent = 0

    def _frame(self, pieces) -> bytes:
        size = sum(len(p) for p in pieces)
        if self._next >= self.n_chunks or self._sent + size > self.total:
            raise ValueError(f"pieces exceed the announced {self.total} bytes")
        hdr = pb.FrameHeader(chunk=self._next, n_chunks=self.n_chunks, total_bytes=self.total,
                             **self.header).SerializeToString()
        self._next += 1
        self._sent += size
        return b"".join((_LEN.pack(len(hdr)), hdr, *pieces))  # the payload's only copy

    def feed(self, piece) -> list[bytes]:
        """The frames completed by `piece`; a partial chunk waits for the next piece."""
        view = memoryview(piece).cast("B")
        frames = []
        while len(view):
            take = min(len(view), self.chunk_bytes - self._pending_bytes)
            self._pending.append(view[:take])
            self._pending_bytes += take
            view = view[take:]
            if self._pending_bytes == self.chunk_bytes:
                frames.append(self._frame(self._pending))
                self._pending, self._pending_bytes = [], 0
        return frames

    def finish(self) -> list[bytes]:
        frames = [self._frame(self._pending)] if self._pending or self._next == 0 else []
        if self._next != self.n_chunks or self._sent != self.total:
            raise ValueError(f"pieces came to {self._sent} bytes, {self.total} were announced")
        return frames


def decode_frame(msg: bytes, max_payload: int = MAX_PAYLOAD_BYTES) -> tuple[pb.FrameHeader, memoryview]:
    """Header and payload of one message; the declared size is checked, nothing allocated."""
    if len(msg) < _LEN.size:
        raise FrameMalformed(f"frame of {len(msg)} bytes is shorter than its length prefix")
    (n,) = _LEN.unpack_from(msg, 0)
    if n > len(msg) - _LEN.size:
        raise FrameMalformed(f"frame header length {n} exceeds the frame ({len(msg)} bytes)")
    header = pb.FrameHeader()
    try:
        header.ParseFromString(msg[_LEN.size:_LEN.size + n])
    except Exception as exc:  # protobuf raises DecodeError, a bare Exception subclass
        raise FrameMalformed(f"frame header does not parse: {exc}") from None
    payload = memoryview(msg)[_LEN.size + n:]
    if header.n_chunks == 0 or header.chunk >= header.n_chunks:
        raise FrameMalformed(f"chunk {header.chunk} of {header.n_chunks} is not a valid chunk index")
    total, n = header.total_bytes, header.n_chunks
    if total > max_payload:
        raise FrameTooLarge(f"frame declares {total} bytes, over the limit of {max_payload} bytes")
    if not max(1, -(-total // MAX_CHUNK_BYTES)) <= n <= max(1, total):
        raise FrameMalformed(f"frame declares {total} bytes in {n} chunks, which no chunking of at most "
                         f"{MAX_CHUNK_BYTES} bytes gives")
    return header, payload


class Reassembly:
    """Collects the chunks of one payload, in order, into a preallocated buffer.

    A stream delivers in order, so chunk k must come k-th; all but the last have the
    first chunk's size and the last ends the payload exactly. The buffer is therefore
    covered once, with no gap and no overlap, before it is handed on."""

    def __init__(self, header: pb.FrameHeader, first: memoryview | None = None, into=None):
        """With `first` (the first chunk's payload), the chunk count is checked against the
        declared size before the buffer is allocated. `into`: where the chunks go instead
        of a buffer of their own (anything of the declared length that takes
        `into[start:stop] = chunk`, such as party 0's runtime.offline.Corrections)."""
        if first is not None:
            total, n = header.total_bytes, header.n_chunks
            expected = 1 if total == 0 else (-(-total // len(first)) if len(first) else 0)
            if header.chunk != 0 or n != expected:
                raise FrameMalformed(f"a first chunk of {len(first)} bytes cannot carry {total} bytes in {n} chunks")
        if into is not None and len(into) != header.total_bytes:
            raise FrameMalformed(f"frame declares {header.total_bytes} bytes where {len(into)} are expected")
        # Not bytearray(n): zero-filling 16 MiB of fresh pages cost 17 ms a round, and
        # the checks below guarantee that every byte is overwritten.
        self.buffer = into if into is not None else memoryview(np.empty(header.total_bytes, dtype=np.uint8))
        self.n_chunks = header.n_chunks
        self.chunk_bytes = 0
        self.received = 0

    def add(self, header: pb.FrameHeader, payload: memoryview) -> bool:
        """Store one chunk; True once every chunk has arrived."""
        if header.n_chunks != self.n_chunks or header.total_bytes != len(self.buffer):
            raise FrameMalformed("chunk disagrees with the first chunk on the payload's size")
        if header.chunk != self.received:
            raise FrameMalformed(f"chunk {header.chunk} arrived where chunk {self.received} was due")
        if header.chunk == 0:
            self.chunk_bytes = len(payload)
        start = header.chunk * self.chunk_bytes
        last = header.chunk == self.n_chunks - 1
        if (len(payload) != self.chunk_bytes and not last) or start + len(payload) > len(self.buffer) or (
                last and start + len(payload) != len(self.buffer)):
            raise FrameMalformed(f"chunk {header.chunk} of {len(payload)} bytes does not fit the "
                             f"{len(self.buffer)}-byte payload")
        self.buffer[start:start + len(payload)] = payload
        self.received += 1
        return self.received == self.n_chunks
