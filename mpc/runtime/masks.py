"""A party's input and output masks from the pairwise keys: the zero-communication input
sharing (arithmetic.share_input) and the fresh zero-sharing that re-randomises every share
sent to the caller."""

from __future__ import annotations

import torch

from mpc.prg import PRG, derive_key
from mpc.runtime.transport import Transport


def output_mask(transport: Transport, job: str, node: int, shape) -> torch.Tensor:
    """This party's part of a fresh sharing of zero, from the pairwise keys.

    z_i = sum_{j > i} R_ij - sum_{j < i} R_ji with R_ij = PRG(k_ij, "output", job, node), so
    sum_i z_i = 0. A share sent to the caller is y_i + z_i: the caller still sums to y, but
    the shares it sees are uniformly random given y, whatever it knows of earlier shares."""
    total = torch.zeros(shape, dtype=torch.int64)
    for p in transport.peers:
        stream = PRG(derive_key(transport.pairwise_key(p), "output", job, node)).ring(shape)
        if transport.pid < p:
            total += stream
        else:
            total -= stream
    return total


def input_mask(transport: Transport, job: str, node: int, owner: int, shape, pair_key=None) -> torch.Tensor:
    """This party's part of the zero-communication input sharing (arithmetic.share_input).
    `pair_key(peer)` replaces the mesh's pairwise keys (a reproducible job's long-lived ones)."""
    pair_key = pair_key or transport.pairwise_key

    def stream(peer):
        return PRG(derive_key(pair_key(peer), "input", job, node)).ring(shape)

    if transport.pid != owner:
        return stream(owner)
    total = torch.zeros(shape, dtype=torch.int64)
    for p in transport.peers:
        total += stream(p)
    return total
