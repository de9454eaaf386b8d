"""A party's offline phase: its correlations expanded from its seed while, at party 0, the
dealer's corrections arrive and are written straight into the tensors they become.

Party 0's corrections are the stream of every correlation's dependent tensors as stored
(correlations.dependent_parts), one after the other. `Corrections` allocates those tensors
before the first byte, uninitialised (framing.Reassembly checks that the stream covers
them exactly once, in order), the receiver writes each chunk of the stream where it
belongs, and `expand`, in a worker thread, waits only for the bytes it needs next.

Steps at party 0:
  1. allocate every dependent tensor, start the expansion, ask the dealer for the stream;
  2. expansion, correlation by correlation: draw the free tensors from the seed, then
     finish every correlation whose bytes have all arrived, so that the free tensors of
     later correlations are drawn while the dealer is still sending;
  3. once every free tensor is drawn, finish the others as their bytes arrive, a slice
     at a time where a dependent tensor needs work (a truncation's words, scaled to the
     top of the ring), so little is left when the last byte comes.
Parties i > 0 draw every tensor from their seed and never wait for the dealer.
"""

from __future__ import annotations

import threading
from collections import deque

import torch

from mpc.prg import PRG, derive_key
from mpc.protocols import correlations
from mpc.protocols.base import Spec

SLICE = 1 << 16  # elements of a dependent tensor finished at a time as their bytes arrive


class StreamStopped(RuntimeError):
    """The corrections stopped coming (the receiver failed): the expansion gives up."""


class Corrections:
    """Party 0's dependent tensors of a job's correlations, filled in stream order.

    `parts[k]` are correlation k's tensors as stored, `spans[k]` their byte ranges in the
    stream; `filled` bytes have arrived. The receiver writes (framing.Reassembly calls
    `self[start:stop] = payload`); the expansion thread waits (`wait`)."""

    def __init__(self, specs: list[Spec]):
        self.parts = [[p.empty() for p in correlations.dependent_parts(s)] for s in specs]
        self.spans: list[list[tuple[int, int]]] = []
        self._views: list[tuple[int, memoryview]] = []  # (stream offset, bytes) of each tensor
        offset = 0
        for tensors in self.parts:
            spans = []
            for t in tensors:
                size = t.numel() * t.element_size()
                if size:
                    self._views.append((offset, memoryview(t.numpy()).cast("B")))
                spans.append((offset, offset + size))
                offset += size
            self.spans.append(spans)
        self.nbytes = offset
        self.filled = 0
        self._next = 0  # the tensor the next byte goes to
        self._cond = threading.Condition()
        self._stopped = False

    def __len__(self) -> int:
        return self.nbytes

    def end(self, k: int) -> int:
        """Where correlation k's bytes end in the stream."""
        return self.spans[k][-1][1]  # every correlation has a dependent tensor

    def __setitem__(self, where: slice, data) -> None:
        if where.start != self.filled:
            raise ValueError(f"corrections written at byte {where.start}, byte {self.filled} is next")
        self.write(data)

    def write(self, data) -> None:
        """The next bytes of the stream, copied into the tensors they belong to."""
        src = memoryview(data).cast("B")
        if self.filled + len(src) > self.nbytes:
            raise ValueError(f"{self.filled + len(src)} bytes of corrections, {self.nbytes} expected")
        pos = 0
        while pos < len(src):
            start, view = self._views[self._next]
            at = self.filled + pos - start
            n = min(len(view) - at, len(src) - pos)
            view[at:at + n] = src[pos:pos + n]
            pos += n
            if at + n == len(view):
                self._next += 1
        with self._cond:  # after the copy: a waiter that sees `filled` sees the bytes
            self.filled += len(src)
            self._cond.notify_all()

    def stop(self) -> None:
        """No more bytes will come: wake the expansion so that it gives up."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def ready(self, upto: int) -> bool:
        return self.filled >= upto

    def wait(self, upto: int) -> None:
        with self._cond:
            while self.filled < upto:
                if self._stopped:
                    raise StreamStopped(f"the corrections stopped at byte {self.filled} of {self.nbytes}")
                self._cond.wait()


def expand(specs: list[Spec], pid: int, seed: bytes, label: str, corrections: Corrections | None = None) -> list:
    """This party's tuple of every correlation k, expanded from derive_key(seed, "corr",
    label, k); party 0 passes the Corrections its receiver fills (the steps above)."""
    out: list = [None] * len(specs)
    pending: deque = deque()  # party 0: (k, free tensors) of correlations waiting for bytes
    for k, spec in enumerate(specs):
        prg = PRG(derive_key(seed, "corr", label, k))
        if corrections is None:  # every tensor from the seed
            out[k] = correlations.party_part(spec, pid, prg)
            continue
        pending.append((k, [part.draw(prg) for part in correlations.free_parts(spec, pid)]))
        while pending and corrections.ready(corrections.end(pending[0][0])):
            j, free_j = pending.popleft()
            out[j] = _finish(specs[j], corrections, j, free_j)
    while pending:
        j, free_j = pending.popleft()
        out[j] = _finish(specs[j], corrections, j, free_j)
    return out


def _finish(spec: Spec, corrections: Corrections, k: int, free: list[torch.Tensor]) -> tuple:
    dependent = []
    for index, (stored, (start, stop)) in enumerate(zip(corrections.parts[k], corrections.spans[k])):
        if not correlations.finishes(spec, index):
            corrections.wait(stop)
            dependent.append(stored)
            continue
        out = torch.empty(stored.shape, dtype=torch.int64)
        flat, dst, size = stored.view(-1), out.view(-1), stored.element_size()
        for a in range(0, flat.numel(), SLICE):
            b = min(flat.numel(), a + SLICE)
            corrections.wait(start + b * size)
            correlations.finish(spec, flat[a:b], out=dst[a:b], index=index)
        dependent.append(out)
    return correlations.assemble(spec, free, dependent)
