"""Large openings as a reduce-scatter then an all-gather: fewer bytes for one more round.

Opening a value x = sum_i x_i to every party the plain way, each party sends its whole
share to each of the N - 1 others: (N - 1) |x| bytes a party. Split instead:
  1. reduce-scatter: cut every value into N slices; party i sends slice j of its share to
     party j, and sums the slice i it receives from everyone with its own: x[i], opened;
  2. all-gather: party i sends x[i] to every other party; each now holds every slice.
That is 2 (N - 1) / N |x| bytes a party (21 MB instead of 32 for a million-element product
at N = 3), in two rounds. Nothing more is revealed: slice i of the opened value is what
every party learns anyway, and what party j sees of a share in step 1 is a slice of what
the plain opening sends it whole. The technique is the bandwidth-optimal all-reduce of
collective communication (Patarasuk and Yuan, "Bandwidth optimal all-reduce algorithms
for clusters of workstations", JPDC 2009), here over additive shares.

A truncation needs less of its opened value c = x + r: floor(c / 2^f) is public and any one
party may add it to its share, so each party adds it on its own slice, and only msb(c),
which every party's share of the wrap term needs, must reach everyone. Such an opening
(`Open(signs=True)`) gathers one bit an element instead of 64: 5.4 MB a party instead of
10.7 for a million elements at N = 3, in the same two rounds.

A round splits when every opening in it goes from all parties to all, there are at least three
parties (at two the bytes are the same) and its payload is at least SPLIT_MIN_BYTES: the
extra round must cost less than the bytes it saves: from 1 MiB a split round saves at N = 3
a third of 2 MiB, 56 ms of a 100 Mbit/s link, and on loopback it was faster too (mlp_infer,
whose first round opens 1.2 MB to each peer: 43-52 ms online against 58-66 ms with a 4 MiB
threshold; at 100 Mbit/s 0.309 s against 0.453). The executor, the dry run
and the cost model all decide with `splits`, so `explain` predicts the rounds and bytes
that a run measures.
"""

from __future__ import annotations

import torch

from mpc.protocols.base import SignsOpened

SPLIT_MIN_BYTES = 1 << 20


def payload_bytes(opens) -> int:
    return sum(v.numel() * v.element_size() for op in opens for v in op.values)


def splits(opens, n_parties: int) -> bool:
    """Whether a round of `opens` runs as a reduce-scatter and an all-gather."""
    return (n_parties >= 3 and bool(opens) and all(op.to is None and op.senders is None for op in opens)
            and payload_bytes(opens) >= SPLIT_MIN_BYTES)


def rounds_of(opens, n_parties: int) -> int:
    """Transport rounds a round of `opens` takes."""
    return 2 if splits(opens, n_parties) else 1


def bounds(n: int, n_parties: int, j: int) -> tuple[int, int]:
    """Slice j of a flat value of n elements: [j n / N, (j + 1) n / N)."""
    return j * n // n_parties, (j + 1) * n // n_parties


def sign_nbytes(lo: int, hi: int) -> int:
    """Bytes of the packed signs of slice [lo, hi)."""
    return (hi - lo + 7) // 8


def bytes_sent(opens, pid: int, n_parties: int) -> int:
    """What party `pid` sends in a split round: every other party's slices, then its own
    opened slice (or its signs) to everyone."""
    total = 0
    for op in opens:
        for v in op.values:
            lo, hi = bounds(v.numel(), n_parties, pid)
            gathered = sign_nbytes(lo, hi) if op.signs else (hi - lo) * v.element_size()
            total += (v.numel() - (hi - lo)) * v.element_size() + (n_parties - 1) * gathered
    return total


def dry_reply(op, pid: int, n_parties: int, split: bool):
    """What a planning run (meta tensors) receives for `op`."""
    if op.to not in (None, pid):
        return tuple(None for _ in op.values)
    if split and op.signs:
        (v,) = op.values
        lo, hi = bounds(v.numel(), n_parties, pid)
        return (SignsOpened(lo, hi, torch.empty(hi - lo, dtype=v.dtype, device="meta"),
                            torch.empty(v.shape, dtype=v.dtype, device="meta")),)
    return tuple(torch.empty(v.shape, dtype=v.dtype, device="meta") for v in op.values)
