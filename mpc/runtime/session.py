"""One party's session: the programs it caches, the values it keeps, and how a job runs.

A program is loaded once (validated, dry-run, cached by digest, at most
MAX_PROGRAMS of them); a job names a cached program, so a second run of the same model
sends and validates no graph. A job runs in two phases. Offline: party 0 fetches the
dealer's corrections for every correlation of the program in one stream, every party
expands its PRG parts, then all parties pass a ready barrier on which they also confirm
that they run the same program. Online: the executor runs with every correlation
already in memory, so it never waits on the dealer. Values a job names in `keep` stay
under their handles for later jobs until a job's `free` drops them.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from mpc import compiler, ring
from mpc.ir import TO_ALL, TO_CALLER, Job, Program
from mpc.prg import PRG, derive_key
from mpc.protocols import correlations
from mpc.protocols.base import Open
from mpc.runtime.executor import DryRun, Executor, make_exchange
from mpc.runtime.profile import OFF, Profile
from mpc.runtime.transport import DealerLink, ProtocolViolation, Transport


# The round number of the barrier between the offline and online phases; programs never reach it.
READY_ROUND = (1 << 32) - 1
MAX_PROGRAMS = 256
# How many freed handles a session remembers, only to say "freed" rather than "unknown" when a
# later job names one: bounded so that a session of millions of jobs stays flat.
REMEMBER_FREED = 65536
# Bounds on a transport floor job (Job.replay): it moves filler bytes, but is a job like any other.
MAX_REPLAY_ROUNDS = 1 << 16
MAX_REPLAY_MESSAGE = 1 << 30


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
    phases: dict = field(default_factory=dict)  # seconds per phase, when the job asked (mpc.runtime.profile)
    round_sizes: list = field(default_factory=list)  # when profiled: per round, bytes sent to each party id


@dataclass
class JobOutcome:
    shares: dict[int, torch.Tensor] = field(default_factory=dict)  # revealed to the caller, by node
    plaintexts: dict[int, torch.Tensor] = field(default_factory=dict)  # opened to this party, by node
    stats: JobStats = field(default_factory=JobStats)


@dataclass
class Loaded:
    program: Program
    dry: DryRun


@dataclass
class _Job:
    job: Job
    loaded: Loaded
    inputs: dict[int, torch.Tensor]
    started: bool = False
    waits: list = field(default_factory=list)  # events of earlier jobs that write what this one reads
    writes: dict = field(default_factory=dict)  # handle -> event set when this job's values are kept


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
        self.kept: dict[int, torch.Tensor] = {}
        self.programs: OrderedDict[str, Loaded] = OrderedDict()
        self.jobs: dict[str, _Job] = {}
        self._seen: set[str] = set()  # every job id submitted in this session: ids are never reused
        # handle -> event of the latest submitted job that keeps a value under it: a job
        # submitted while an earlier one is still running (a pipeline of training steps)
        # runs its offline phase at once but reads those values only once they are kept.
        self._writers: dict[int, asyncio.Event] = {}
        self._freed: OrderedDict[int, None] = OrderedDict()  # recently freed handles, for error messages

    def knows(self, job: str) -> bool:
        return job in self.jobs

    async def load(self, program: Program) -> Loaded:
        """Validate `program`, plan its randomness, and cache it under its digest."""
        loaded = self.programs.get(program.digest)
        if loaded is not None:
            self.programs.move_to_end(program.digest)
            return loaded
        compiler.validate(program)
        dry = await Executor(program, self.pid, self.n_parties).dry_run()
        loaded = self.programs[program.digest] = Loaded(program, dry)
        while len(self.programs) > MAX_PROGRAMS:
            self.programs.popitem(last=False)
        return loaded

    async def submit(self, job: Job, inputs: dict[int, torch.Tensor]) -> DryRun:
        """Check the job against its cached program and this party's private inputs."""
        if job.job_id in self._seen:
            raise JobError(f"job id {job.job_id} was already used at party {self.pid}: job ids are never reused")
        loaded = self.programs.get(job.program)
        if loaded is None:
            raise JobError(f"party {self.pid} has no program {job.program}: load it first")
        self._check(job, loaded.program)
        nodes = loaded.program.nodes
        encoded = {}
        for nid, value in inputs.items():
            if not 0 <= nid < len(nodes) or job.owners.get(nid) != self.pid:
                raise JobError(f"party {self.pid} was sent a value for node {nid}, which is not an input it owns")
            if tuple(value.shape) != tuple(nodes[nid].shape):
                raise JobError(f"input {nodes[nid].describe()}: value has shape {tuple(value.shape)}, "
                               f"the program says {tuple(nodes[nid].shape)}")
            try:
                bits = 0 if nodes[nid].attrs.get("int") else loaded.program.frac_bits
                encoded[nid] = ring.encode(value, bits)
            except ring.RangeError as exc:
                raise JobError(f"input {nodes[nid].describe()}: {exc}") from None
        for nid, owner in job.owners.items():
            if owner == self.pid and nid not in encoded:
                raise JobError(f"party {self.pid} owns input {nodes[nid].describe()} but was given no value for it")
        self._seen.add(job.job_id)
        waits = list({id(e): e for h in job.kept.values() if (e := self._writers.get(h)) is not None}.values())
        writes = {h: asyncio.Event() for h in job.keep.values()}
        self._writers.update(writes)
        self.jobs[job.job_id] = _Job(job, loaded, encoded, waits=waits, writes=writes)
        return loaded.dry

    def _check(self, job: Job, program: Program) -> None:
        private = {n.id for n in program.inputs if n.attrs.get("kind", "private") == "private"}
        kept = {n.id for n in program.inputs if n.attrs.get("kind") == "kept"}
        if set(job.owners) != private:
            raise JobError(f"job {job.job_id} names owners for nodes {sorted(job.owners)}, the program's private "
                           f"inputs are {sorted(private)}")
        bad = {nid: o for nid, o in job.owners.items() if not 0 <= o < self.n_parties}
        if bad:
            raise JobError(f"job {job.job_id}: owner {next(iter(bad.values()))} is not a party of {self.n_parties}")
        if set(job.kept) != kept:
            raise JobError(f"job {job.job_id} binds kept values to nodes {sorted(job.kept)}, the program's kept "
                           f"inputs are {sorted(kept)}")
        for nid, handle in job.kept.items():
            value = self.kept.get(handle)
            if value is None and handle in self._writers:
                continue  # an earlier job, still running, keeps it
            if value is None and handle in self._freed:
                raise JobError(f"{program.nodes[nid].describe()} refers to kept value {handle}, which was freed at "
                               f"party {self.pid} (a free list of an earlier job dropped it)")
            if value is None:
                raise JobError(f"{program.nodes[nid].describe()} refers to kept value {handle}, which party "
                               f"{self.pid} does not hold (never kept, or freed)")
            if tuple(value.shape) != tuple(program.nodes[nid].shape):
                raise JobError(f"kept value {handle} has shape {tuple(value.shape)}, {program.nodes[nid].describe()} "
                               f"needs {tuple(program.nodes[nid].shape)}")
        public = {n.id for n in program.inputs if n.attrs.get("kind") == "public"}
        if set(job.public) != public:
            raise JobError(f"job {job.job_id} gives public values for nodes {sorted(job.public)}, the program's public "
                           f"inputs are {sorted(public)}")
        for nid, value in job.public.items():
            node = program.nodes[nid]
            if tuple(value.shape) != tuple(node.shape):
                raise JobError(f"public value for {node.describe()} has shape {tuple(value.shape)}, the program "
                               f"says {tuple(node.shape)}")
            if node.attrs.get("index") and (value.is_floating_point() or value.numel() and (
                    int(value.min()) < 0)):
                raise JobError(f"public indices for {node.describe()} must be non-negative integers")
        if len(job.recipients) != len(program.outputs):
            raise JobError(f"job {job.job_id} names {len(job.recipients)} recipients for {len(program.outputs)} outputs")
        for to in job.recipients:
            if to not in (TO_CALLER, TO_ALL) and not 0 <= to < self.n_parties:
                raise JobError(f"job {job.job_id}: output addressed to {to}, not a party of {self.n_parties}")
        if job.replay:
            n = self.n_parties
            if program.nodes or len(job.replay) % (n * n) or len(job.replay) // (n * n) > MAX_REPLAY_ROUNDS:
                raise JobError(f"job {job.job_id}: a transport floor needs an empty program and whole rounds of "
                               f"{n}x{n} byte counts, at most {MAX_REPLAY_ROUNDS} rounds")
            if any(b > MAX_REPLAY_MESSAGE or (k % (n * n)) // n == k % n and b for k, b in enumerate(job.replay)):
                raise JobError(f"job {job.job_id}: a transport floor message is over {MAX_REPLAY_MESSAGE} bytes "
                               "or addressed to its sender")
        for nid in job.keep:
            if not 0 <= nid < len(program.nodes) or program.nodes[nid].extra_shapes:
                raise JobError(f"job {job.job_id} keeps node {nid}, which is not a single-output node of the program")

    def free(self, handles) -> None:
        for h in handles:
            if self.kept.pop(h, None) is not None:
                self._freed[h] = None
                while len(self._freed) > REMEMBER_FREED:
                    self._freed.popitem(last=False)

    def kept_stats(self) -> tuple[int, int]:
        """How many values this party keeps, and their bytes (Health reports them)."""
        return len(self.kept), sum(t.numel() * t.element_size() for t in self.kept.values())

    async def run(self, job_id: str) -> JobOutcome:
        entry = self.jobs.get(job_id)
        if entry is None:
            raise JobError(f"party {self.pid} has no job {job_id}")
        if entry.started:
            raise JobError(f"job {job_id} already ran")
        entry.started = True
        try:
            return await self._run(entry)
        finally:
            for handle, event in entry.writes.items():
                event.set()  # also on failure: a later job then fails on what it finds, never waits forever
                if self._writers.get(handle) is event:
                    del self._writers[handle]
            # The caller no longer refers to these handles: drop them even if the job failed.
            self.free(entry.job.free)
            self.jobs.pop(job_id, None)
            self.transport.forget(job_id)

    async def _run(self, entry: _Job) -> JobOutcome:
        job, program, dry = entry.job, entry.loaded.program, entry.loaded.dry
        specs = [s for _, _, s in dry.specs]
        outcome = JobOutcome()
        stats = outcome.stats
        stats.n_correlations = len(specs)
        prof = Profile() if job.profile else OFF
        self.transport.set_profile(job.job_id, prof)

        t0 = time.perf_counter()
        pool = await self._offline(job.job_id, dry, prof)
        t_wait = time.perf_counter()
        for event in entry.waits:
            await event.wait()
        waited = time.perf_counter() - t_wait  # the previous job's online phase: neither ours nor offline
        prof.add("previous_job", waited)
        with prof.phase("barrier"):  # peers finishing their offline phase
            await self._barrier(job.job_id, program.digest)
        t1 = time.perf_counter()
        missing = [h for h in job.kept.values() if h not in self.kept]
        if missing:
            raise JobError(f"job {job.job_id} reads kept value {missing[0]}, which an earlier job did not keep at "
                           f"party {self.pid}")
        kept = {nid: self.kept[h] for nid, h in job.kept.items()}

        def mask(node, req):
            with prof.phase("input_masks"):  # PRG expansion, inside "arithmetic": separated in _phases
                return input_mask(self.transport, job.job_id, node, req.owner, req.shape)

        if job.replay:
            values, rounds = {}, await self._replay(job)
        else:
            executor = Executor(program, self.pid, self.n_parties,
                                {"owners": job.owners, "inputs": entry.inputs, "kept": kept, "public": job.public})
            values, rounds = await executor.run(lambda node, seq, spec: pool[(node, seq)], mask,
                                                make_exchange(self.transport, job.job_id, prof), profile=prof)
        stats.online_s = time.perf_counter() - t1
        stats.offline_s = t1 - t0 - waited
        stats.dealer_bytes = sum(correlations.correction_nbytes(s) for s in specs) if self.pid == 0 else 0

        for nid, to in zip(program.outputs, job.recipients):
            if to == TO_CALLER:
                outcome.shares[nid] = values[nid]
        # Outputs opened to parties share one round.
        if any(to != TO_CALLER for to in job.recipients):
            with prof.phase("open_outputs"):
                await self._open_outputs(job, program, values, rounds, outcome)
        counters = self.transport.counters(job.job_id)
        stats.rounds, stats.bytes_sent, stats.messages_sent = counters.rounds, counters.bytes_sent, counters.messages_sent
        for nid, handle in job.keep.items():
            self.kept[handle] = values[nid]
        if job.profile:
            stats.phases = _phases(prof.finish())
            stats.round_sizes = [[sizes.get(q, 0) for q in range(self.n_parties)] for sizes in counters.round_sizes]
        return outcome

    async def _replay(self, job: Job) -> int:
        """The transport floor: the byte counts of job.replay moved round by round, no arithmetic."""
        n, me = self.n_parties, self.pid
        sizes = job.replay
        filler = memoryview(bytearray(max((sizes[k] for k in range(len(sizes)) if (k % (n * n)) // n == me),
                                          default=0)))  # zeros: the floor measures the transport, not content
        rounds = len(sizes) // (n * n)
        for r in range(rounds):
            base = r * n * n
            outgoing = {q: filler[:sizes[base + me * n + q]] for q in self.transport.peers if sizes[base + me * n + q]}
            incoming = {q for q in self.transport.peers if sizes[base + q * n + me]}
            received = await self.transport.exchange(job.job_id, r, outgoing, incoming)
            for q in incoming:
                if len(received[q]) != sizes[base + q * n + me]:
                    raise ProtocolViolation(f"party {q} sent {len(received[q])} bytes in floor round {r} of job "
                                            f"{job.job_id}, expected {sizes[base + q * n + me]}")
        return rounds

    async def _open_outputs(self, job, program, values, round_no, outcome) -> None:
        opened = [(nid, to, scale) for nid, to, scale in zip(program.outputs, job.recipients, program.output_scales)
                  if to != TO_CALLER]
        opens = [Open((values[nid],), to=None if to == TO_ALL else to) for nid, to, _ in opened]
        results = await make_exchange(self.transport, job.job_id)(round_no, opens)
        for (nid, _, scale), (value,) in zip(opened, results):
            if value is not None:
                outcome.plaintexts[nid] = ring.decode(value, program.frac_bits * scale)

    async def _barrier(self, job: str, digest: str) -> None:
        """Wait until every party holds its correlations, and check all run the same program.

        Party 0 fetches the dealer's corrections while the others only expand seeds; without
        this, the others' first online round would include that wait. One 32-byte message
        (the program digest) to each peer, counted as offline traffic (the job's counters
        restart after it).
        """
        peers = set(self.transport.peers)
        mine = bytes.fromhex(digest)
        received = await self.transport.exchange(job, READY_ROUND, {p: mine for p in peers}, peers)
        for p in sorted(peers):
            if bytes(received[p]) != mine:
                raise ProtocolViolation(f"party {p} runs program {bytes(received[p]).hex()[:16]}… in job {job}, "
                                        f"party {self.pid} runs {digest[:16]}…: the parties were sent different programs")
        self.transport.reset_counters(job)

    async def _offline(self, job: str, dry: DryRun, prof=OFF) -> dict:
        specs = [s for _, _, s in dry.specs]
        corr = None
        if self.pid == 0 and specs:
            sizes = [correlations.correction_nbytes(s) for s in specs]
            with prof.phase("dealer"):  # the dealer generating and sending party 0's corrections
                corr = await self.dealer.corrections(job, specs, sum(sizes))
        with prof.phase("prg_expand"):
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


def _phases(raw: dict[str, float]) -> dict[str, float]:
    """Nested timers made disjoint: input masks out of arithmetic; an exchange's wall time
    split into sending (framing, queueing), reassembly of received chunks, and waiting."""
    out = dict(raw)
    out["arithmetic"] = max(0.0, out.get("arithmetic", 0.0) - out.get("input_masks", 0.0))
    exchange = out.pop("exchange", 0.0)
    out["wait"] = max(0.0, exchange - out.get("send", 0.0) - out.get("reassembly", 0.0))
    return out
