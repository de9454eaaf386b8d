"""One party's session: the programs it caches, the values it keeps, and how a job runs.

A program is loaded once (validated, dry-run, cached by digest, at most
MAX_PROGRAMS of them); a job names a cached program, so a second run of the same model
sends and validates no graph. A job runs in two phases. Offline: party 0 fetches the
dealer's corrections for every correlation of the program in one stream and expands its
parts while they arrive (runtime/offline.py), every other party expands its PRG parts,
then all parties pass a ready barrier on which they also confirm that they run the same
program. Online: the executor runs with every correlation already in memory, so it never
waits on the dealer. Values a job names in `keep` stay under their handles for later jobs
until a job's `free` drops them.

The offline phase up to the barrier starts when the job is submitted, in the background,
and `run` waits for it: a client that submits its next job while the current one is
online (training, step after step) finds its correlations ready. The exception is a
reproducible job with inputs brought to it: its key needs every party's contribution,
exchanged over the mesh, and a peer drops the frames of a job it has not accepted yet;
such a job prepares when it is run (by then every party accepted it). A client may have
MAX_AHEAD jobs submitted and not yet run at a party; a job dropped before it runs
(cancelled, or not run within UNSTARTED_TTL_S) drops its correlations with it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from mpc import compiler, ring
from mpc.compiler.owned import owned_products
from mpc.ir import TO_ALL, TO_CALLER, Job, Program
from mpc.protocols import correlations
from mpc.protocols.base import Open
from mpc.runtime import checkpoint, offline
from mpc.runtime import reproducible as reproducible_
from mpc.runtime.executor import DryRun, Executor, make_exchange
from mpc.runtime.jobs import JobError, JobOutcome, TooManyAhead, job_digest
from mpc.runtime.masks import input_mask, output_mask
from mpc.runtime.profile import OFF, Profile
from mpc.runtime.transport import DealerLink, JobAborted, PeerFailure, ProtocolViolation, Transport


log = logging.getLogger(__name__)

# The round number of the barrier between the offline and online phases; programs never reach it.
READY_ROUND = (1 << 32) - 1
# The round in which a reproducible job's parties exchange their contributions to its key.
KEY_ROUND = READY_ROUND - 1
MAX_PROGRAMS = 256
UNSTARTED_TTL_S = 120.0  # a job submitted but not run within this is dropped (its writes marked failed)
# Jobs one client may have submitted and not yet run at a party: each holds its inputs and,
# once prepared, every correlation it needs, so memory is bounded by this times the largest job.
MAX_AHEAD = 4
# Plans of one program for different owners of its inputs (compiler/owned.py): a training
# job's steps keep theirs, so a few cover every client of a program.
MAX_OWNER_PLANS = 8
WAIT_DEADLINE_S = 900.0  # the longest a job waits for an earlier job's kept values


class _Write:
    """A pending write of a kept value by a submitted job: done when it ends, ok if it kept it.
    Its tag (runtime.reproducible) is known once the job knows its reproduction key, which
    is before its offline phase: a reproducible job reading the value needs only that."""

    def __init__(self, job_id: str, node: int, reproducible: bool):
        self.job_id = job_id
        self.event = asyncio.Event()
        self.ok = False
        self.tagged = asyncio.Event()
        self.tag: bytes | None = None
        if not reproducible:
            self.set_tag(reproducible_.fresh_tag(job_id, node))

    def set_tag(self, tag: bytes | None) -> None:
        if not self.tagged.is_set():
            self.tag = tag
            self.tagged.set()

    def finish(self, ok: bool) -> None:
        self.ok = ok
        self.event.set()
        self.set_tag(None)  # a job that failed before its key tags nothing: readers are told

# How many freed handles a session remembers, only to say "freed" rather than "unknown" when a
# later job names one: bounded so that a session of millions of jobs stays flat.
REMEMBER_FREED = 65536
# Bounds on a transport floor job (Job.replay): it moves filler bytes, but is a job like any other.
MAX_REPLAY_ROUNDS = 1 << 16
MAX_REPLAY_MESSAGE = 1 << 30


@dataclass
class Loaded:
    program: Program
    dry: DryRun  # the plan with no owner-aware product (compiler/owned.py)
    # owned products of a job's owners -> the plan with them, the latest MAX_OWNER_PLANS
    by_owners: OrderedDict = field(default_factory=OrderedDict)


@dataclass
class _Prepared:
    """A job's offline phase at this party, up to the barrier: what the online phase needs."""
    key: bytes  # the reproduction key (b"" for other jobs)
    pool: dict  # (node, seq) -> correlation
    out_masks: dict  # node -> this party's mask of a fresh sharing of zero
    seconds: float  # its own time, from the start of the preparation
    done_at: float  # time.perf_counter() when it ended


@dataclass
class _Job:
    job: Job
    loaded: Loaded
    inputs: dict[int, torch.Tensor]
    dry: DryRun  # the plan for this job's owners
    started: bool = False
    waits: dict = field(default_factory=dict)  # handle -> _Write of the earlier job that keeps what this one reads
    writes: dict = field(default_factory=dict)  # handle -> _Write of this job
    client: str = ""  # who submitted it (MAX_AHEAD counts per client)
    prof: object = OFF
    prepared: asyncio.Future | None = None  # the offline phase, a task from submission (or from run)


def _plan(program: Program, pid: int, n_parties: int, owners: dict[int, int] | None = None) -> DryRun:
    """Validate `program` and dry-run it (its randomness and rounds), in a worker thread;
    with `owners`, as a job of those owners lowers it (products of two parties' inputs)."""
    if owners is None:
        compiler.validate(program)
    return asyncio.run(Executor(program, pid, n_parties, {"owners": owners} if owners else None).dry_run())


class PartySession:
    """`input_salt`: this party's own long-lived secret keying the hash of its inputs in a
    reproducible job's key (runtime.reproducible); fresh if not given."""

    def __init__(self, transport: Transport, dealer: DealerLink, input_salt: bytes | None = None):
        self.transport = transport
        self.dealer = dealer
        self.pid = transport.pid
        self.n_parties = transport.n_parties
        self.input_salt = input_salt or os.urandom(16)
        self.kept: dict[int, torch.Tensor] = {}
        self.tags: dict[int, bytes] = {}  # handle -> the tag of the value kept under it
        self.programs: OrderedDict[str, Loaded] = OrderedDict()
        self.jobs: dict[str, _Job] = {}
        self._seen: set[str] = set()  # every job id submitted in this session: ids are never reused
        # handle -> event of the latest submitted job that keeps a value under it: a job
        # submitted while an earlier one is still running (a pipeline of training steps)
        # runs its offline phase at once but reads those values only once they are kept.
        self._writers: dict[int, _Write] = {}
        self._freed: OrderedDict[int, None] = OrderedDict()  # recently freed handles, for error messages

    def knows(self, job: str) -> bool:
        return job in self.jobs

    async def load(self, program: Program) -> Loaded:
        """Validate `program`, plan its randomness, and cache it under its digest."""
        loaded = self.programs.get(program.digest)
        if loaded is not None:
            self.programs.move_to_end(program.digest)
            return loaded
        # Off the event loop: a large program must not stall this party's rounds of other jobs.
        dry = await asyncio.to_thread(_plan, program, self.pid, self.n_parties)
        loaded = self.programs[program.digest] = Loaded(program, dry)
        while len(self.programs) > MAX_PROGRAMS:
            self.programs.popitem(last=False)
        return loaded

    async def submit(self, job: Job, inputs: dict[int, torch.Tensor], client: str = "") -> DryRun:
        """Check the job against its cached program and this party's private inputs, and
        start its offline phase (see the module docstring). `client`: who submitted it."""
        self._admit(job, client)
        loaded = self.programs.get(job.program)
        if loaded is None:
            raise JobError(f"party {self.pid} has no program {job.program}: load it first")
        self._check(job, loaded.program)
        nodes = loaded.program.nodes
        encoded = {}
        for nid, value in inputs.items():
            if 0 <= nid < len(nodes) and job.owners.get(nid) == TO_CALLER:
                # the caller owns this input and secret-shared it itself: this is our share
                if value.dtype != torch.int64 or tuple(value.shape) != tuple(nodes[nid].shape):
                    raise JobError(f"share for {nodes[nid].describe()}: int64 of shape {tuple(nodes[nid].shape)} "
                                   f"expected, got {value.dtype} {tuple(value.shape)}")
                encoded[nid] = value
                continue
            if not 0 <= nid < len(nodes) or job.owners.get(nid) != self.pid:
                raise JobError(f"party {self.pid} was sent a value for node {nid}, which is not an input it owns")
            if tuple(value.shape) != tuple(nodes[nid].shape):
                raise JobError(f"input {nodes[nid].describe()}: value has shape {tuple(value.shape)}, "
                               f"the program says {tuple(nodes[nid].shape)}")
            try:
                bits = 0 if nodes[nid].attrs.get("int") else loaded.program.frac_bits
                encoded[nid] = ring.encode(value, bits)
            except ring.RangeError as exc:
                # The refusal travels through the coordinator, which must not learn a private
                # value's magnitude: it says which input and why; this party's log says how far.
                log.warning("job %s: input %s: %s", job.job_id, nodes[nid].describe(), exc)
                raise JobError(f"input {nodes[nid].describe()} at party {self.pid}: a value is NaN, infinite or "
                               f"outside the fixed-point range for {bits} fractional bits (the party's log has "
                               f"the detail)") from None
        for nid, owner in job.owners.items():
            if owner in (self.pid, TO_CALLER) and nid not in encoded:
                raise JobError(f"party {self.pid} owns input {nodes[nid].describe()} but was given no value for it")
        dry = await self._plan_for(loaded, job)
        self._admit(job, client)  # again: another submit may have come in during the await
        self._seen.add(job.job_id)
        waits = {h: w for h in job.kept.values() if (w := self._writers.get(h)) is not None}
        writes = {h: _Write(job.job_id, nid, job.reproducible) for nid, h in job.keep.items()}
        self._writers.update(writes)
        entry = self.jobs[job.job_id] = _Job(job, loaded, encoded, dry, waits=waits, writes=writes, client=client,
                                             prof=Profile() if job.profile else OFF)
        self.transport.set_profile(job.job_id, entry.prof)
        if not (job.reproducible and job.owners):  # (those exchange key contributions: prepared when run)
            self._prepare(entry)
        asyncio.get_running_loop().call_later(UNSTARTED_TTL_S, self._unstarted, job.job_id)
        return dry

    def _admit(self, job: Job, client: str) -> None:
        """Refuse a reused job id, and a client over MAX_AHEAD jobs submitted and not run."""
        if job.job_id in self._seen:
            raise JobError(f"job id {job.job_id} was already used at party {self.pid}: job ids are never reused")
        ahead = sum(1 for e in self.jobs.values() if e.client == client and not e.started)
        if ahead >= MAX_AHEAD:
            raise TooManyAhead(f"party {self.pid} holds {ahead} jobs of {client or 'this client'} submitted and not "
                               f"yet run; the limit is {MAX_AHEAD}: run (or cancel) them before submitting more")

    async def _plan_for(self, loaded: Loaded, job: Job) -> DryRun:
        """The program's plan for this job's owners: the loaded one unless some product is
        of two parties' inputs, else one made once per such set of owners and cached."""
        owned = tuple(sorted(owned_products(loaded.program, job.owners).items()))
        if not owned:
            return loaded.dry
        dry = loaded.by_owners.get(owned)
        if dry is not None:
            loaded.by_owners.move_to_end(owned)
        else:
            dry = await asyncio.to_thread(_plan, loaded.program, self.pid, self.n_parties, dict(job.owners))
            loaded.by_owners[owned] = dry
            while len(loaded.by_owners) > MAX_OWNER_PLANS:
                loaded.by_owners.popitem(last=False)
        return dry

    def _prepare(self, entry: _Job) -> asyncio.Future:
        """Start the job's offline phase (once): a task that `run` awaits and a drop cancels."""
        if entry.prepared is None:
            entry.prepared = asyncio.ensure_future(self._offline_phase(entry))
            # a job dropped before it runs never collects the outcome: not news for the log
            entry.prepared.add_done_callback(lambda f: f.cancelled() or f.exception())
        return entry.prepared

    async def _offline_phase(self, entry: _Job) -> _Prepared:
        """Everything of a job that depends on no peer's progress: its reproduction key, every
        correlation (party 0 from the dealer's stream), the masks of outputs to the caller."""
        job, program, prof = entry.job, entry.loaded.program, entry.prof
        t0 = time.perf_counter()
        key = b""
        if job.reproducible:
            with prof.phase("reproduction_key"):
                key = await self._reproduction_key(entry)
        pool = await self._offline(job.job_id, entry.dry, prof, key)
        with prof.phase("output_masks"):  # data-independent: made offline, off the online path
            out_masks = {nid: output_mask(self.transport, job.job_id, nid, program.nodes[nid].shape)
                         for nid, to in zip(program.outputs, job.recipients) if to == TO_CALLER}
        done = time.perf_counter()
        return _Prepared(key, pool, out_masks, done - t0, done)

    def _check(self, job: Job, program: Program) -> None:
        private = {n.id for n in program.inputs if n.attrs.get("kind", "private") == "private"}
        kept = {n.id for n in program.inputs if n.attrs.get("kind") == "kept"}
        if set(job.owners) != private:
            raise JobError(f"job {job.job_id} names owners for nodes {sorted(job.owners)}, the program's private "
                           f"inputs are {sorted(private)}")
        bad = {nid: o for nid, o in job.owners.items() if not (0 <= o < self.n_parties or o == TO_CALLER)}
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
        for nid in job.sources:
            if job.owners.get(nid, TO_CALLER) < 0:
                raise JobError(f"job {job.job_id} reads a data file into node {nid}, which is not an input a party "
                               "owns")
        public = {n.id for n in program.inputs if n.attrs.get("kind") == "public"}
        if set(job.public) != public:
            raise JobError(f"job {job.job_id} gives public values for nodes {sorted(job.public)}, the program's public "
                           f"inputs are {sorted(public)}")
        for nid, value in job.public.items():
            node = program.nodes[nid]
            if tuple(value.shape) != tuple(node.shape):
                raise JobError(f"public value for {node.describe()} has shape {tuple(value.shape)}, the program "
                               f"says {tuple(node.shape)}")
            if node.attrs.get("index"):
                rows = [program.nodes[u.inputs[0]].shape[0] for u in program.nodes
                        if u.op == "gather_rows" and u.inputs[1] == nid]
                bound = min(rows) if rows else 0
                if value.is_floating_point() or (value.numel() and (int(value.min()) < 0 or int(value.max()) >= bound)):
                    raise JobError(f"public indices for {node.describe()} must be integers in [0, {bound})")
            else:
                try:
                    ring.encode(value, 0 if node.attrs.get("int") else program.frac_bits)
                except ring.RangeError as exc:
                    raise JobError(f"public value for {node.describe()}: {exc}") from None
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

    def cancel(self, job_id: str) -> bool:
        """Drop a job submitted but not started (another party refused it, or its client
        will not run it); False if it already started or is unknown."""
        entry = self.jobs.get(job_id)
        if entry is None or entry.started:
            return False
        self._expire(job_id)
        return True

    def _unstarted(self, job_id: str) -> None:
        """UNSTARTED_TTL_S after submission: drop the job if it was not run. A job that waits
        for an earlier job still to keep what it reads (submitted ahead of it) gets the
        time again: its client runs it once that one is done."""
        entry = self.jobs.get(job_id)
        if entry is None or entry.started:
            return
        if any(not w.event.is_set() for w in entry.waits.values()):
            asyncio.get_running_loop().call_later(UNSTARTED_TTL_S, self._unstarted, job_id)
            return
        self._expire(job_id)

    def _expire(self, job_id: str) -> None:
        """Drop a job submitted but never run (another party refused it, or its client went
        away), so that no later job waits on what it would have kept; its offline phase
        stops, and its correlations go with it."""
        entry = self.jobs.get(job_id)
        if entry is not None and not entry.started:
            if entry.prepared is not None:
                entry.prepared.cancel()  # party 0's dealer stream is cancelled, the expansion gives up
                entry.prepared = None
            self._end_writes(entry, ok=False)
            self.jobs.pop(job_id, None)
            # Peers that started it wait for our rounds: tell them it will not run here.
            self.transport.abort_job(job_id, f"party {self.pid}: the job was never run here (cancelled, or "
                                             f"not started within {UNSTARTED_TTL_S:.0f} s)")
            self.transport.forget(job_id)

    def _end_writes(self, entry: _Job, ok: bool) -> None:
        for handle, write in entry.writes.items():
            write.finish(ok)
            if self._writers.get(handle) is write:
                del self._writers[handle]

    def save_checkpoint(self, directory: str, step: int, job_hash: str, handles: dict[str, int]) -> str:
        """Write this party's shares of the named kept values (runtime.checkpoint); the path."""
        missing = [name for name, h in handles.items() if h not in self.kept]
        if missing:
            raise JobError(f"party {self.pid} cannot checkpoint {', '.join(missing[:3])}: not kept here")
        return checkpoint.write(directory, step, job_hash, self.pid, {n: self.kept[h] for n, h in handles.items()},
                                tags={n: self.tags[h] for n, h in handles.items() if h in self.tags})

    def load_checkpoint(self, directory: str, step: int, job_hash: str, handles: dict[str, int]) -> str:
        """Keep the shares of checkpoint `step` under `handles` (by name), after every check."""
        path = os.path.join(directory, checkpoint.file_name(step))
        try:
            values, tags = checkpoint.read(path, job_hash, self.pid, step, with_tags=True)
        except checkpoint.CheckpointError as exc:
            raise JobError(f"party {self.pid}: {exc}") from None
        if set(values) != set(handles):
            raise JobError(f"party {self.pid}: checkpoint {path} holds {sorted(values)[:4]}…, the job needs "
                           f"{sorted(handles)[:4]}…")
        for name, h in handles.items():
            self.kept[h] = values[name]
            # The tag written with the shares: a reproducible job on them repeats the original
            # run's randomness. Without one (an older file), a tag never seen before.
            self.tags[h] = tags.get(name) or os.urandom(32)
        return path

    def list_checkpoints(self, directory: str, job_hash: str) -> tuple[list[int], list[str]]:
        return checkpoint.scan(directory, job_hash, self.pid)

    def free(self, handles) -> None:
        for h in handles:
            self.tags.pop(h, None)
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
        ok = False
        try:
            outcome = await self._run(entry)
            ok = True
            return outcome
        except asyncio.CancelledError:  # its client went away mid-job: the peers must not wait for us
            self.transport.abort_job(job_id, f"party {self.pid}: the job's Run call was cancelled")
            raise
        except Exception as exc:
            if not isinstance(exc, (PeerFailure, JobAborted)):  # those came from a peer: it knows
                self.transport.abort_job(job_id, f"party {self.pid}: {exc}")
            raise
        finally:
            if entry.prepared is not None:
                entry.prepared.cancel()  # a run that failed before its offline phase ended stops it
                entry.prepared = None
            self._end_writes(entry, ok)  # a later job reading these learns whether they were kept
            # The caller no longer refers to these handles: drop them even if the job failed.
            self.free(entry.job.free)
            self.jobs.pop(job_id, None)
            self.transport.forget(job_id)

    async def _run(self, entry: _Job) -> JobOutcome:
        job, program, dry = entry.job, entry.loaded.program, entry.dry
        specs = [s for _, _, s in dry.specs]
        outcome = JobOutcome()
        stats = outcome.stats
        stats.n_correlations = len(specs)
        prof = entry.prof

        arrived = time.perf_counter()
        prepared = await self._prepare(entry)  # started at submission, or now
        entry.prepared = None  # the run holds what it needs; a drop has nothing left to stop
        key, pool, out_masks = prepared.key, prepared.pool, prepared.out_masks
        stats.ready_ahead_s = max(0.0, arrived - prepared.done_at)
        t_wait = time.perf_counter()
        for handle, write in entry.waits.items():
            try:
                await asyncio.wait_for(write.event.wait(), WAIT_DEADLINE_S)
            except asyncio.TimeoutError:
                raise JobError(f"job {job.job_id} waited {WAIT_DEADLINE_S:.0f} s for kept value {handle} from job "
                               f"{write.job_id} at party {self.pid}") from None
            if not write.ok:
                raise JobError(f"job {job.job_id} reads kept value {handle}, which job {write.job_id} was to keep but "
                               f"did not (it failed or never ran) at party {self.pid}")
        waited = time.perf_counter() - t_wait  # the previous job's online phase: neither ours nor offline
        prof.add("previous_job", waited)
        with prof.phase("barrier"):  # peers finishing their offline phase
            digest = job_digest(job)
            if key:  # parties holding different inputs would compute garbage together: compare keys too
                digest = hashlib.sha256(bytes.fromhex(digest) + key).hexdigest()
            t_barrier = time.perf_counter()
            await self._barrier(job.job_id, digest)
        t1 = time.perf_counter()
        # The offline phase: this party's own (wherever it ran) and the wait for its peers'.
        stats.offline_s = prepared.seconds + (t1 - t_barrier)
        # What of it the run waited for: the preparation's rest when it arrived, and the barrier.
        stats.offline_wait_s = (t_wait - arrived) + (t1 - t_barrier)
        for nid, h in job.kept.items():
            value = self.kept.get(h)
            if value is None:
                raise JobError(f"job {job.job_id} reads kept value {h}, which party {self.pid} does not hold")
            if tuple(value.shape) != tuple(program.nodes[nid].shape):
                raise JobError(f"kept value {h} has shape {tuple(value.shape)}, {program.nodes[nid].describe()} needs "
                               f"{tuple(program.nodes[nid].shape)}")
        kept = {nid: self.kept[h] for nid, h in job.kept.items()}

        label, pair_key = reproducible_.input_label(job.job_id, key), (self.dealer.repro_pair if key else None)

        def mask(node, req):
            with prof.phase("input_masks"):  # PRG expansion, inside "arithmetic": separated in _phases
                return input_mask(self.transport, label, node, req.owner, req.shape, pair_key)

        if job.replay:
            values, rounds = {}, await self._replay(job)
        else:
            executor = Executor(program, self.pid, self.n_parties,
                                {"owners": job.owners, "inputs": entry.inputs, "kept": kept, "public": job.public,
                                 "keep": set(job.keep)})
            values, rounds = await executor.run(lambda node, seq, spec: pool[(node, seq)], mask,
                                                make_exchange(self.transport, job.job_id, prof), profile=prof)
        stats.online_s = time.perf_counter() - t1
        stats.dealer_bytes = sum(correlations.correction_nbytes(s) for s in specs) if self.pid == 0 else 0

        for nid, to in zip(program.outputs, job.recipients):
            if to == TO_CALLER and nid not in outcome.shares:  # an output listed twice is masked once
                outcome.shares[nid] = out_masks[nid].add_(values[nid])  # the mask is ours: no new buffer
        # Outputs opened to parties share one round.
        if any(to != TO_CALLER for to in job.recipients):
            with prof.phase("open_outputs"):
                await self._open_outputs(job, program, values, rounds, outcome)
        counters = self.transport.counters(job.job_id)
        stats.rounds, stats.bytes_sent, stats.messages_sent = counters.rounds, counters.bytes_sent, counters.messages_sent
        for nid, handle in job.keep.items():
            self.kept[handle] = values[nid]
            self.tags[handle] = entry.writes[handle].tag
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
        for (nid, to, scale), (value,) in zip(opened, results):
            if value is not None:
                outcome.plaintexts[nid] = ring.decode(value, program.frac_bits * scale)
                outcome.opened_to[nid] = to

    async def _barrier(self, job: str, digest: str) -> None:
        """Wait until every party holds its correlations, and check all run the same job.

        Party 0 fetches the dealer's corrections while the others only expand seeds; without
        this, the others' first online round would include that wait. One 32-byte message
        (job_digest: the program and every binding of the job) to each peer, counted as
        offline traffic (the job's counters restart after it).
        """
        peers = set(self.transport.peers)
        mine = bytes.fromhex(digest)
        received = await self.transport.exchange(job, READY_ROUND, {p: mine for p in peers}, peers)
        for p in sorted(peers):
            if bytes(received[p]) != mine:
                raise ProtocolViolation(f"party {p} runs job {job} as {bytes(received[p]).hex()[:16]}…, party {self.pid} "
                                        f"as {digest[:16]}…: the parties were sent different programs or bindings, or (a "
                                        f"reproducible job) hold different tags or inputs")
        self.transport.reset_counters(job)

    async def _reproduction_key(self, entry: _Job) -> bytes:
        """K of a reproducible job (runtime.reproducible): the tags of its kept inputs (an
        earlier job still running tags them before its offline phase) and every party's
        contribution, exchanged in one round when any input is brought to this job."""
        job = entry.job
        tags = {}
        for nid, h in job.kept.items():
            write = entry.waits.get(h)
            if write is not None:
                try:
                    await asyncio.wait_for(write.tagged.wait(), WAIT_DEADLINE_S)
                except asyncio.TimeoutError:
                    raise JobError(f"job {job.job_id} waited {WAIT_DEADLINE_S:.0f} s for job {write.job_id} to "
                                   f"start at party {self.pid}") from None
                tag = write.tag
            else:
                tag = self.tags.get(h)
            if tag is None:
                raise JobError(f"job {job.job_id} reads kept value {h}, which party {self.pid} does not hold (the "
                               f"job that was to keep it failed)")
            tags[nid] = tag
        contributions = []
        if job.owners:
            owned = {nid: v for nid, v in entry.inputs.items() if job.owners.get(nid) == self.pid}
            shares = {nid: v for nid, v in entry.inputs.items() if job.owners.get(nid) == TO_CALLER}
            mine = reproducible_.contribution(self.input_salt, owned, shares)
            peers = set(self.transport.peers)
            received = await self.transport.exchange(job.job_id, KEY_ROUND, {p: mine for p in peers}, peers)
            for p in sorted(peers):
                if len(received[p]) != len(mine):
                    raise ProtocolViolation(f"party {p} sent a {len(received[p])}-byte contribution to job "
                                            f"{job.job_id}'s reproduction key, expected {len(mine)}")
            contributions = [mine if p == self.pid else bytes(received[p]) for p in range(self.n_parties)]
        key = reproducible_.reproduction_key(job, tags, contributions)
        for nid, h in job.keep.items():
            entry.writes[h].set_tag(reproducible_.kept_tag(key, nid))
        return key

    async def _offline(self, job: str, dry: DryRun, prof=OFF, key: bytes = b"") -> dict:
        """Every correlation of the job at this party (runtime.offline). Party 0 expands in a
        worker thread while the dealer's stream arrives: its `dealer` phase is the wait for
        the stream's last byte, `prg_expand` what is left of the expansion after it."""
        specs = [s for _, _, s in dry.specs]
        # a reproducible job: long-lived seeds, and the key with the spec list in the job id's place
        seed = self.dealer.repro_seed if key else self.dealer.seed
        label = reproducible_.correlation_label(job, key, specs)
        if self.pid != 0 or not specs:
            with prof.phase("prg_expand"):
                parts = await asyncio.to_thread(offline.expand, specs, self.pid, seed, label)
        else:
            corrections = offline.Corrections(specs)
            expanding = asyncio.ensure_future(asyncio.to_thread(offline.expand, specs, 0, seed, label, corrections))
            try:
                with prof.phase("dealer"):  # the dealer generating and sending, party 0 expanding meanwhile
                    await self.dealer.corrections(job, specs, corrections.nbytes, key, into=corrections)
            except BaseException:
                corrections.stop()  # the expansion gives up; its StreamStopped is not the news
                expanding.add_done_callback(lambda f: f.cancelled() or f.exception())
                raise
            with prof.phase("prg_expand"):
                parts = await expanding
        return {(node, seq): part for (node, seq, _), part in zip(dry.specs, parts)}


def _phases(raw: dict[str, float]) -> dict[str, float]:
    """Nested timers made disjoint: input masks out of arithmetic; an exchange's wall time
    split into sending (framing, queueing), reassembly of received chunks, and waiting."""
    out = dict(raw)
    out["arithmetic"] = max(0.0, out.get("arithmetic", 0.0) - out.get("input_masks", 0.0))
    exchange = out.pop("exchange", 0.0)
    out["wait"] = max(0.0, exchange - out.get("send", 0.0) - out.get("reassembly", 0.0))
    return out
