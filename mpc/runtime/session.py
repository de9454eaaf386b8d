"""One party's session: the jobs it was given, the values it keeps, and how a job runs.

A job runs in two phases. Offline: the dry run lists the correlations; party 0 fetches
the dealer's corrections for all of them in one stream, every party expands its PRG
parts, then all parties pass a ready barrier. Online: the executor runs with every
correlation already in memory, so it never waits on the dealer. Values named in a plan's `keep` stay for later jobs.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import torch

from mpc import compiler, ring
from mpc.ir import TO_ALL, TO_CALLER, Plan
from mpc.prg import PRG, derive_key
from mpc.protocols import correlations
from mpc.protocols.base import Open
from mpc.runtime.executor import DryRun, Executor, make_exchange
from mpc.runtime.transport import DealerLink, Transport


# The round number of the barrier between the offline and online phases; plans never reach it.
READY_ROUND = (1 << 32) - 1


class JobError(RuntimeError):
    """A job was refused or failed; the message names the cause."""


@dataclass
class JobStats:
    offline_s: float = 0.0
    online_s: float = 0.0
    rounds: int = 0
    bytes_sent: int = 0
    messages_sent: int = 0
    dealer_bytes: int = 0
    n_correlations: int = 0


@dataclass
class JobOutcome:
    shares: dict[int, torch.Tensor] = field(default_factory=dict)  # revealed to the caller
    plaintexts: dict[int, torch.Tensor] = field(default_factory=dict)  # opened to this party
    stats: JobStats = field(default_factory=JobStats)


@dataclass
class _Job:
    plan: Plan
    inputs: dict[int, torch.Tensor]
    dry: DryRun
    started: bool = False


def input_mask(transport: Transport, job: str, node: int, owner: int, shape) -> torch.Tensor:
    """This party's part of the zero-communication input sharing (arithmetic.share_input)."""
    def stream(peer):
        return PRG(derive_key(transport.pairwise_key(peer), "input", job, node)).ring(shape)

    if transport.pid != owner:
        return stream(owner)
    total = torch.zeros(shape, dtype=torch.int64)
    for p in transport.peers:
        total += stream(p)
    return total


class PartySession:
    def __init__(self, transport: Transport, dealer: DealerLink):
        self.transport = transport
        self.dealer = dealer
        self.pid = transport.pid
        self.n_parties = transport.n_parties
        self.store: dict[int, torch.Tensor] = {}
        self.jobs: dict[str, _Job] = {}

    def knows(self, job: str) -> bool:
        return job in self.jobs

    async def submit(self, job: str, plan: Plan, inputs: dict[int, torch.Tensor]) -> DryRun:
        """Check the plan and this party's private inputs, and plan the job's randomness."""
        if job in self.jobs:
            raise JobError(f"job {job} was already submitted to party {self.pid}")
        if plan.n_parties != self.n_parties:
            raise JobError(f"plan is for {plan.n_parties} parties, this cluster has {self.n_parties}")
        compiler.validate(plan, stored=set(self.store))
        nodes = plan.node_map()
        encoded = {}
        for nid, value in inputs.items():
            node = nodes.get(nid)
            if node is None or node.op != "input" or node.attrs["owner"] != self.pid:
                raise JobError(f"party {self.pid} was sent a value for node {nid}, which is not an input it owns")
            if tuple(value.shape) != tuple(node.shape):
                raise JobError(f"input node {nid}: value has shape {tuple(value.shape)}, plan says {tuple(node.shape)}")
            try:
                encoded[nid] = ring.encode(value, plan.frac_bits)
            except ring.RangeError as exc:
                raise JobError(f"input node {nid}: {exc}") from None
        for node in plan.nodes:
            if node.op == "input" and node.attrs["owner"] == self.pid and node.id not in encoded:
                raise JobError(f"party {self.pid} owns input node {node.id} but was given no value for it")
        dry = await Executor(plan, self.pid, store=self.store).dry_run()
        self.jobs[job] = _Job(plan, encoded, dry)
        return dry

    async def run(self, job: str) -> JobOutcome:
        entry = self.jobs.get(job)
        if entry is None:
            raise JobError(f"party {self.pid} has no job {job}")
        if entry.started:
            raise JobError(f"job {job} already ran")
        entry.started = True
        try:
            return await self._run(job, entry)
        finally:
            self.jobs.pop(job, None)
            self.transport.forget(job)

    async def _run(self, job: str, entry: _Job) -> JobOutcome:
        plan, specs = entry.plan, [s for _, _, s in entry.dry.specs]
        outcome = JobOutcome()
        stats = outcome.stats
        stats.n_correlations = len(specs)

        t0 = time.perf_counter()
        pool = await self._offline(job, entry.dry)
        await self._barrier(job)
        t1 = time.perf_counter()
        executor = Executor(plan, self.pid, store=self.store, inputs=entry.inputs)
        values, rounds = await executor.run(
            lambda node, seq, spec: pool[(node, seq)],
            lambda node, req: input_mask(self.transport, job, node, req.owner, req.shape),
            make_exchange(self.transport, job),
        )
        stats.online_s = time.perf_counter() - t1
        stats.offline_s = t1 - t0
        counters = self.transport.counters(job)
        stats.rounds, stats.bytes_sent, stats.messages_sent = counters.rounds, counters.bytes_sent, counters.messages_sent
        stats.dealer_bytes = sum(correlations.correction_nbytes(s) for s in specs) if self.pid == 0 else 0

        for out in plan.outputs:
            if out.to == TO_CALLER:
                outcome.shares[out.node] = values[out.node]
        # Outputs opened to parties share one round.
        if any(out.to != TO_CALLER for out in plan.outputs):
            await self._open_outputs(job, plan, values, rounds, outcome)
        stats.rounds = self.transport.counters(job).rounds
        for nid in plan.keep:
            self.store[nid] = values[nid]
        return outcome

    async def _open_outputs(self, job, plan, values, round_no, outcome) -> None:
        opens = [Open((values[o.node],), to=None if o.to == TO_ALL else o.to)
                 for o in plan.outputs if o.to != TO_CALLER]
        results = await make_exchange(self.transport, job)(round_no, opens)
        for o, (value,) in zip([o for o in plan.outputs if o.to != TO_CALLER], results):
            if value is not None:
                outcome.plaintexts[o.node] = ring.decode(value, plan.frac_bits)

    async def _barrier(self, job: str) -> None:
        """Wait until every party holds its correlations, so the online phase starts together.

        Party 0 fetches the dealer's corrections while the others only expand seeds; without
        this, the others' first online round would include that wait. One empty message to
        each peer, counted as offline traffic (the job's counters restart after it).
        """
        peers = set(self.transport.peers)
        await self.transport.exchange(job, READY_ROUND, {p: b"" for p in peers}, peers)
        self.transport.reset_counters(job)

    async def _offline(self, job: str, dry: DryRun) -> dict:
        specs = [s for _, _, s in dry.specs]
        corr = None
        if self.pid == 0 and specs:
            sizes = [correlations.correction_nbytes(s) for s in specs]
            corr = await self.dealer.corrections(job, specs, sum(sizes))
        return await asyncio.to_thread(self._expand, job, dry, corr)

    def _expand(self, job: str, dry: DryRun, corr) -> dict:
        pool, offset = {}, 0
        seed = self.dealer.seed
        for k, (node, seq, spec) in enumerate(dry.specs):
            prg = PRG(derive_key(seed, "corr", job, k))
            if self.pid == 0:
                n = correlations.correction_nbytes(spec)
                pool[(node, seq)] = correlations.party_part(spec, 0, prg, corr[offset:offset + n])
                offset += n
            else:
                pool[(node, seq)] = correlations.party_part(spec, self.pid, prg)
        return pool
