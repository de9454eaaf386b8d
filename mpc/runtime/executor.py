"""Runs a program on one party: the shared schedule, driven over a real exchange.

The schedule (mpc.compiler.schedule) advances every ready protocol generator together
and hands out each round's Opens at once; here every Open of a round goes to a peer as
one message (round fusion). `Randomness` requests are answered from correlations
fetched in the offline phase; `InputMask` from pairwise PRG keys.

The dry run drives the same schedule on `meta` tensors to list, before any data moves,
which correlations the program needs (so the dealer can make them all ahead) and how
many rounds it takes; parties cache it with the program.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from mpc.compiler import schedule
from mpc.compiler.lower import starter
from mpc.ir import Program
from mpc.protocols import scatter
from mpc.protocols.base import Open, SignsOpened, Spec
from mpc.protocols.correlations import meta_part
from mpc.runtime.profile import OFF
from mpc.runtime.transport import ProtocolViolation, Transport


@dataclass
class DryRun:
    """What a program needs: its correlations in request order, and its online rounds."""

    specs: list[tuple[int, int, Spec]] = field(default_factory=list)
    rounds: int = 0


class Executor:
    def __init__(self, program: Program, pid: int, n_parties: int, extras: dict | None = None):
        self.program = program
        self.pid = pid
        self.n_parties = n_parties
        self.extras = extras if extras is not None else {}

    async def run(self, answer_randomness: Callable, answer_mask: Callable, exchange: Callable,
                  dry_run: bool = False, profile=OFF) -> tuple[dict[int, torch.Tensor], int]:
        """Execute the program; returns every node's share and the number of rounds."""
        start = starter(self.program, self.pid, self.n_parties, dry_run=dry_run, extras=self.extras)
        gen = schedule.drive(self.program, start, answer_randomness, answer_mask)
        rounds, reply = 0, None
        while True:
            try:
                with profile.phase("arithmetic"):  # the protocols' local work up to their next Open
                    round_ = gen.send(reply)
            except StopIteration as stop:
                return stop.value, rounds
            reply = await exchange(rounds, round_.opens)
            rounds += scatter.rounds_of(round_.opens, self.n_parties)  # a split opening takes two

    async def dry_run(self) -> DryRun:
        result = DryRun()

        def randomness(node, seq, spec):
            result.specs.append((node, seq, spec))
            return meta_part(spec, self.pid)

        def mask(node, request):
            return torch.empty(request.shape, dtype=torch.int64, device="meta")

        async def exchange(round_no, opens):
            split = scatter.splits(opens, self.n_parties)
            return [scatter.dry_reply(op, self.pid, self.n_parties, split) for op in opens]

        _, result.rounds = await self.run(randomness, mask, exchange, dry_run=True)
        return result


# -- opening over a transport ---------------------------------------------------------------------


_NUMPY_DTYPES = {torch.int64: np.int64, torch.int32: np.int32, torch.int16: np.int16, torch.int8: np.int8,
                 torch.uint8: np.uint8}


def _layout(values: list[tuple[torch.Tensor, bool]]) -> list[int]:
    """Wire order of a round's values: widest dtype first, so every slice is aligned."""
    return sorted(range(len(values)), key=lambda k: -values[k][0].element_size())


def _payload(values: list[tuple[torch.Tensor, bool]]) -> memoryview | bytes:
    """The bytes of `values` in wire order, with no copy when there is one value."""
    order = _layout(values)
    if len(order) == 1:
        return memoryview(values[0][0].reshape(-1).numpy()).cast("B")
    return b"".join(memoryview(values[k][0].reshape(-1).numpy()).cast("B") for k in order)


def make_exchange(transport: Transport, job: str, profile=OFF):
    """An `exchange` callback for Executor.run that opens values over `transport`.

    Peers' buffers are combined in place (the first peer's buffer becomes the result), so
    a round costs one pass over each received byte beyond the network's own copies.
    """
    pid = transport.pid

    async def exchange(round_no: int, opens: list[Open]):
        if scatter.splits(opens, transport.n_parties):
            return await _split_exchange(transport, job, round_no, opens, profile)
        if any(op.senders is not None for op in opens):
            return await _directed_exchange(transport, job, round_no, opens, profile)
        outgoing_values: dict[int, list] = {p: [] for p in transport.peers}
        for op in opens:
            for p in transport.peers:
                if op.to is None or op.to == p:
                    outgoing_values[p].extend((v, op.xor) for v in op.values)
        mine = [(v, op.xor) for op in opens if op.to is None or op.to == pid for v in op.values]
        incoming = set(transport.peers) if mine else set()
        with profile.phase("encode"):
            if all(op.to is None for op in opens):
                payload = _payload(mine) if transport.peers else b""
                outgoing = {p: payload for p in transport.peers}
            else:
                outgoing = {p: _payload(vs) for p, vs in outgoing_values.items() if vs}
        with profile.phase("exchange"):  # split into send, reassembly and waiting by the session
            received = await transport.exchange(job, round_no, outgoing, incoming)
        with profile.phase("combine"):
            return _combine(transport, job, round_no, opens, mine, incoming, received)

    return exchange


async def _split_exchange(transport, job, round_no, opens, profile):
    """Open every value to all as a reduce-scatter (round_no) then an all-gather (round_no + 1):
    protocols/scatter.py. Received slices are summed in the received buffers, and each
    opened value is assembled once, into a buffer of its own. A value opened for its signs
    (Open(signs=True)) gathers packed sign bits, after every whole slice (alignment), and
    comes back as a SignsOpened."""
    pid, n, peers = transport.pid, transport.n_parties, transport.peers
    values = [(v.reshape(-1), op.xor) for op in opens for v in op.values]
    signs = [op.signs for op in opens for _ in op.values]
    order = [k for k in _layout(values) if not signs[k]]
    signed = [k for k in range(len(values)) if signs[k]]

    def sliced(j):
        return [(v[slice(*scatter.bounds(v.numel(), n, j))], xor) for v, xor in values]

    with profile.phase("encode"):
        outgoing = {p: _payload(sliced(p)) for p in peers}
    with profile.phase("exchange"):
        received = await transport.exchange(job, round_no, outgoing, set(peers))
    with profile.phase("combine"):
        opened_own = _sum_received(job, round_no, sliced(pid), received)
    with profile.phase("encode"):
        pieces = [memoryview(opened_own[k].numpy()).cast("B") for k in order]
        pieces += [np.packbits(opened_own[k].numpy() < 0, bitorder="little").data for k in signed]
        mine = pieces[0] if len(pieces) == 1 else b"".join(pieces)
    with profile.phase("exchange"):
        gathered = await transport.exchange(job, round_no + 1, {p: mine for p in peers}, set(peers))
    with profile.phase("combine"):
        out = {k: torch.empty_like(values[k][0]) for k in order}
        negative = {k: torch.empty_like(values[k][0]) for k in signed}
        own = {}
        for k in order:
            out[k][slice(*scatter.bounds(values[k][0].numel(), n, pid))] = opened_own[k]
        for k in signed:
            lo, hi = scatter.bounds(values[k][0].numel(), n, pid)
            own[k] = (lo, hi)
            torch.bitwise_right_shift(opened_own[k], 63, out=negative[k][lo:hi])
        for p in peers:
            theirs = sliced(p)
            expected = sum(theirs[k][0].numel() * theirs[k][0].element_size() for k in order)
            expected += sum(scatter.sign_nbytes(*scatter.bounds(values[k][0].numel(), n, p)) for k in signed)
            _check_sizes(job, round_no + 1, {p: gathered[p]}, expected)
            offset = 0
            for k in order:
                t = theirs[k][0]
                lo, hi = scatter.bounds(values[k][0].numel(), n, p)
                out[k][lo:hi] = torch.from_numpy(np.frombuffer(gathered[p], dtype=_NUMPY_DTYPES[t.dtype],
                                                               count=t.numel(), offset=offset))
                offset += t.numel() * t.element_size()
            for k in signed:
                lo, hi = scatter.bounds(values[k][0].numel(), n, p)
                size = scatter.sign_nbytes(lo, hi)
                bits = np.unpackbits(np.frombuffer(gathered[p], dtype=np.uint8, count=size, offset=offset),
                                     count=hi - lo, bitorder="little")
                negative[k][lo:hi].copy_(torch.from_numpy(bits)).neg_()  # 0/1 -> 0/-1
                offset += size
    results, k = [], 0
    for op in opens:
        if op.signs:
            (v,) = op.values
            lo, hi = own[k]
            results.append((SignsOpened(lo, hi, opened_own[k], negative[k].view(v.shape)),))
        else:
            results.append(tuple(out[k + i].view(v.shape) for i, v in enumerate(op.values)))
        k += len(op.values)
    return results


async def _directed_exchange(transport, job, round_no, opens, profile):
    """A round in which some openings come from some parties only (Open.senders): each peer
    is sent what it receives from us, and each sender's message is read value by value in
    the order that sender lays it out (the program fixes both, so every party agrees)."""
    pid, peers = transport.pid, transport.peers
    out: dict[int, list] = {p: [] for p in peers}
    expect: dict[int, list] = {p: [] for p in peers}  # peer -> [(open index, value index)]
    for k, op in enumerate(opens):
        for p in peers:
            if op.sends(pid) and op.receives(p):
                out[p].extend((v, op.xor) for v in op.values)
            if op.sends(p) and op.receives(pid):
                expect[p].extend((k, i) for i in range(len(op.values)))
    with profile.phase("encode"):
        outgoing = {p: _payload(vs) for p, vs in out.items() if vs}
    incoming = {p for p, keys in expect.items() if keys}
    with profile.phase("exchange"):
        received = await transport.exchange(job, round_no, outgoing, incoming)
    with profile.phase("combine"):
        sums: dict[tuple[int, int], torch.Tensor] = {}
        for p in sorted(incoming):
            items = [(opens[k].values[i], opens[k].xor) for k, i in expect[p]]
            _check_sizes(job, round_no, {p: received[p]}, sum(v.numel() * v.element_size() for v, _ in items))
            offset = 0
            for idx in _layout(items):
                v, xor = items[idx]
                view = torch.from_numpy(np.frombuffer(received[p], dtype=_NUMPY_DTYPES[v.dtype], count=v.numel(),
                                                      offset=offset)).view(v.shape)
                offset += v.numel() * v.element_size()
                key = expect[p][idx]
                if key in sums:
                    (torch.Tensor.bitwise_xor_ if xor else torch.Tensor.add_)(sums[key], view)
                else:
                    sums[key] = view
        results = []
        for k, op in enumerate(opens):
            if not op.receives(pid):
                results.append(tuple(None for _ in op.values))
                continue
            opened = []
            for i, v in enumerate(op.values):
                acc = sums.get((k, i))
                if op.sends(pid):
                    acc = v.clone() if acc is None else (acc.bitwise_xor_(v) if op.xor else acc.add_(v))
                opened.append(acc)
            results.append(tuple(opened))
    return results


def _check_sizes(job, round_no, received, expected: int) -> None:
    for p, buf in received.items():
        if len(buf) != expected:
            raise ProtocolViolation(f"party {p} sent {len(buf)} bytes in round {round_no} of job {job}, "
                                    f"expected {expected}")


def _sum_received(job, round_no, own, received) -> dict[int, torch.Tensor]:
    """Each of our flat (value, xor) with the peers' shares of it (checked for size) summed,
    or XORed, into their received buffers, which are ours: no new buffer. By position in `own`."""
    _check_sizes(job, round_no, received, sum(t.numel() * t.element_size() for t, _ in own))
    opened, offset = {}, 0
    peers = sorted(received)
    for k in _layout(own):
        t, xor = own[k]
        views = [torch.from_numpy(np.frombuffer(received[p], dtype=_NUMPY_DTYPES[t.dtype], count=t.numel(),
                                                offset=offset)) for p in peers]
        combine = torch.Tensor.bitwise_xor_ if xor else torch.Tensor.add_
        acc = views[0]
        for other in views[1:]:
            combine(acc, other)
        combine(acc, t)
        opened[k] = acc
        offset += t.numel() * t.element_size()
    return opened


def _combine(transport, job, round_no, opens, mine, incoming, received):
    """The opened values: the received shares (checked for size) summed with ours."""
    pid = transport.pid
    summed = _sum_received(job, round_no, [(v.reshape(-1), xor) for v, xor in mine], {p: received[p] for p in incoming})
    opened = {k: acc.view(mine[k][0].shape) for k, acc in summed.items()}
    results, k = [], 0
    for op in opens:
        if op.to is None or op.to == pid:
            results.append(tuple(opened[k + i] for i in range(len(op.values))))
            k += len(op.values)
        else:
            results.append(tuple(None for _ in op.values))
    return results
