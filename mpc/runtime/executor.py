"""Runs a plan on one party: advances every ready protocol together, one round at a time.

Each node's lowering is a protocol generator. The executor drives all of them until each
is blocked on an `Open`, sends every Open of that round to a peer as one message (round
fusion), then resumes them with the opened values. Local work that becomes ready inside a
round runs in the same round. `Randomness` requests are answered from correlations
fetched in the offline phase; `InputMask` from pairwise PRG keys. A protocol may yield a
list of Opens (several sub-protocols advancing together) and gets a list of results.

The same loop runs as a dry run on `meta` tensors to learn, before any data moves, which
correlations the job needs (so the dealer can make them all ahead) and how many rounds
it takes. Scheduling depends only on the plan, so every party sees the same order.
"""

from __future__ import annotations

import inspect
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from mpc.compiler.ops import OPS, CompileError
from mpc.ir import Plan
from mpc.protocols import arithmetic
from mpc.protocols.base import InputMask, Open, PartyContext, Randomness, Spec
from mpc.protocols.correlations import meta_part
from mpc.runtime.transport import ProtocolViolation, Transport


@dataclass
class _Task:
    node: int
    gen: object
    seq: int = 0


@dataclass
class DryRun:
    """What a plan needs: its correlations in request order, and its online rounds."""

    specs: list[tuple[int, int, Spec]] = field(default_factory=list)
    rounds: int = 0


class Executor:
    def __init__(self, plan: Plan, pid: int, *, store: dict[int, torch.Tensor] | None = None,
                 inputs: dict[int, torch.Tensor] | None = None):
        self.plan = plan
        self.pid = pid
        self.store = store or {}
        self.inputs = inputs or {}

    def _context(self, node_id: int, dry_run: bool) -> PartyContext:
        return PartyContext(self.pid, self.plan.n_parties, self.plan.frac_bits, dry_run=dry_run,
                            label=node_id, extras={"inputs": self.inputs})

    async def run(self, answer_randomness: Callable, answer_mask: Callable, exchange: Callable,
                  dry_run: bool = False) -> tuple[dict[int, torch.Tensor], int]:
        """Execute the plan; returns every node's share and the number of rounds."""
        nodes = self.plan.node_map()
        users = self.plan.consumers()
        waiting = {n.id: len(n.inputs) for n in self.plan.nodes}
        values: dict[int, torch.Tensor] = {}
        runnable: deque = deque((self._start(nid, values, nodes, dry_run), None)
                                for nid, count in waiting.items() if count == 0)
        rounds = 0
        while True:
            blocked: list[tuple[_Task, Open]] = []
            while runnable:
                task, reply = runnable.popleft()
                if not isinstance(task, _Task):  # finished without a generator
                    self._finish(task[0], task[1], values, users, waiting, runnable, nodes, dry_run)
                    continue
                try:
                    request = task.gen.send(reply)
                    while not isinstance(request, (Open, list)):
                        if isinstance(request, Randomness):
                            reply = answer_randomness(task.node, task.seq, request.spec)
                            task.seq += 1
                        elif isinstance(request, InputMask):
                            reply = answer_mask(task.node, request)
                        else:
                            raise TypeError(f"protocol at node {task.node} yielded {type(request).__name__}")
                        request = task.gen.send(reply)
                    blocked.append((task, request))
                except StopIteration as stop:
                    self._finish(task.node, stop.value, values, users, waiting, runnable, nodes, dry_run)
            if not blocked:
                break
            flat = [op for _, req in blocked for op in (req if isinstance(req, list) else [req])]
            opened = iter(await exchange(rounds, flat))
            rounds += 1
            for task, req in blocked:  # a list of Opens (from protocols.base.gather) gets a list back
                runnable.append((task, [next(opened) for _ in req] if isinstance(req, list) else next(opened)))
        return values, rounds

    def _start(self, nid, values, nodes, dry_run):
        node = nodes[nid]
        if node.op == "stored":
            value = self.store[nid]
            value = value.to("meta") if dry_run else value
            if node.attrs.get("truncate"):  # kept at scale 2^2f by a reveal that absorbed the truncation
                return _Task(nid, arithmetic.truncate(self._context(nid, dry_run), value))
            return (nid, value)
        opdef = OPS.get(node.op)
        if opdef is None:
            raise CompileError(f"unknown op '{node.op}' at node {nid}")
        out = opdef.lower(self._context(nid, dry_run), node.attrs, *(values[i] for i in node.inputs))
        if inspect.isgenerator(out):
            return _Task(nid, out)
        return (nid, out)

    def _finish(self, nid, value, values, users, waiting, runnable, nodes, dry_run):
        values[nid] = value
        for user in users.get(nid, ()):
            waiting[user] -= 1
            if waiting[user] == 0:
                runnable.append((self._start(user, values, nodes, dry_run), None))

    # -- the dry run ----------------------------------------------------------------------------

    async def dry_run(self) -> DryRun:
        result = DryRun()

        def randomness(node, seq, spec):
            result.specs.append((node, seq, spec))
            return meta_part(spec)

        def mask(node, request):
            return torch.empty(request.shape, dtype=torch.int64, device="meta")

        async def exchange(round_no, opens):
            return [tuple(v if op.to in (None, self.pid) else None for v in op.values) for op in opens]

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


def make_exchange(transport: Transport, job: str):
    """An `exchange` callback for Executor.run that opens values over `transport`.

    Peers' buffers are combined in place (the first peer's buffer becomes the result), so
    a round costs one pass over each received byte beyond the network's own copies.
    """
    pid = transport.pid

    async def exchange(round_no: int, opens: list[Open]):
        outgoing_values: dict[int, list] = {p: [] for p in transport.peers}
        for op in opens:
            for p in transport.peers:
                if op.to is None or op.to == p:
                    outgoing_values[p].extend((v, op.xor) for v in op.values)
        mine = [(v, op.xor) for op in opens if op.to is None or op.to == pid for v in op.values]
        incoming = set(transport.peers) if mine else set()
        if all(op.to is None for op in opens):
            payload = _payload(mine) if transport.peers else b""
            outgoing = {p: payload for p in transport.peers}
        else:
            outgoing = {p: _payload(vs) for p, vs in outgoing_values.items() if vs}
        received = await transport.exchange(job, round_no, outgoing, incoming)

        expected = sum(v.numel() * v.element_size() for v, _ in mine)
        for p in incoming:
            if len(received[p]) != expected:
                raise ProtocolViolation(f"party {p} sent {len(received[p])} bytes in round {round_no} of job {job}, "
                                        f"expected {expected}")
        opened: dict[int, torch.Tensor] = {}
        offset = 0
        for k in _layout(mine):
            value, xor = mine[k]
            n, width = value.numel(), value.element_size()
            dtype = _NUMPY_DTYPES[value.dtype]
            views = [torch.from_numpy(np.frombuffer(received[p], dtype=dtype, count=n, offset=offset))
                     for p in sorted(incoming)]
            combine = torch.Tensor.bitwise_xor_ if xor else torch.Tensor.add_
            acc = views[0]  # the received buffer is ours: accumulate into it
            for other in views[1:]:
                combine(acc, other)
            combine(acc, value.reshape(-1))
            opened[k] = acc.view(value.shape)
            offset += n * width
        results, k = [], 0
        for op in opens:
            if op.to is None or op.to == pid:
                results.append(tuple(opened[k + i] for i in range(len(op.values))))
                k += len(op.values)
            else:
                results.append(tuple(None for _ in op.values))
        return results

    return exchange
