"""Run's outputs, both ends: a party's outcome as raw frames, and the caller's reassembly.

A party answers Run with raw frames (mpc.net.framing), not protobuf messages: per output a
FRAME_EVENT whose JobEvent describes it (serde.OutputInfo: node, share or plaintext, dtype,
shape, bytes), then the output's bytes as FRAME_OUTPUT frames; last a FRAME_EVENT with the
job's stats, or one with an error. The party frames a tensor with one copy (the frame) and
no protobuf message ever holds an output's bytes.

The caller (JobOutputs) checks each description against the job before allocating: a share
must be one the job reveals to the caller, int64 of the program's shape; a plaintext one the
job opens to that party, float64 of its shape. Each output revealed to the caller then has
one int64 buffer for all the parties: a chunk's bytes that no party has reached yet are
copied in, the rest added in place (wrapping modulo 2^64), so that after the last party the
buffer holds the sum of the N re-randomised shares with one pass over each party's bytes and
no buffer per party, and ring.decode_ turns it into the float64 result in the same memory.
A party's chunks must come in order (framing.Reassembly): a gap, an overlap, an overrun, a
chunk that splits an element, a short output or a missing share is refused with an error
naming the party and the output.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from mpc import ring
from mpc.ir import TO_CALLER
from mpc.net import framing, serde
from mpc.net.proto import mpc_pb2 as pb
from mpc.runtime.jobs import JobOutcome

RUN_METHOD = "/mpc.net.proto.Party/Run"
MAX_EVENT_BYTES = 64 << 20  # one JobEvent (stats with per-round byte counts, an error message)


class OutputError(ValueError):
    """A party's Run stream that ended the job: the party's own error, or frames that do not
    make up the outputs the job gives the caller."""


# -- the party's side ---------------------------------------------------------------------------


def event_frames(event: pb.JobEvent) -> list[bytes]:
    return list(framing.encode_frames(event.SerializeToString(), tag=pb.FRAME_EVENT))


def outcome_to_frames(o: JobOutcome, chunk_bytes: int = framing.DEFAULT_CHUNK_BYTES):
    """A job's outputs as Run's frames, then its stats (in a profiled job with the time spent
    framing the outputs: the time between yields is the transport's)."""
    encoding = 0.0
    for plaintext, table in ((False, o.shares), (True, o.plaintexts)):
        for nid, t in table.items():
            t0 = time.perf_counter()
            t = t.detach().contiguous()
            frames = event_frames(serde.output_event(nid, plaintext, t))
            data = t.numpy().reshape(-1) if t.numel() else b""
            for frame in (*frames, *framing.encode_frames(data, chunk_bytes, tag=pb.FRAME_OUTPUT, round=nid)):
                encoding += time.perf_counter() - t0
                yield frame
                t0 = time.perf_counter()
    if o.stats.phases:
        o.stats.phases["output_encode"] = encoding
    yield from event_frames(serde.stats_event(o.stats))


# -- the caller's side --------------------------------------------------------------------------


def run_call(channel):
    """Party.Run on `channel` as the caller reads it: a JobRef out, raw frames back."""
    return channel.unary_stream(RUN_METHOD, request_serializer=pb.JobRef.SerializeToString,
                                response_deserializer=None)


class Outcomes(list):
    """Every party's JobOutcome of one job, in party order (stats, and plaintexts opened to a
    party the caller operates), and `totals`: per output revealed to the caller, the sum of
    all the parties' shares, int64, in a buffer of the caller's own."""

    def __init__(self, outcomes, totals: dict[int, torch.Tensor]):
        super().__init__(outcomes)
        self.totals = totals
        self._values: dict[int, torch.Tensor] = {}

    def value(self, nid: int, frac_bits: int) -> torch.Tensor:
        """The plaintext of output `nid`: its total decoded in place; asked again (an output
        listed twice), a copy, so that no two results share memory."""
        if nid in self._values:
            return self._values[nid].clone()
        value = self._values[nid] = ring.decode_(self.totals.pop(nid), frac_bits)
        return value


def sum_shares(outcomes: list[JobOutcome]) -> Outcomes:
    """Outcomes of parties run in this process (their shares in hand): each total is a fresh
    buffer, so the parties' shares stay as they are."""
    totals = {}
    for nid in outcomes[0].shares if outcomes else ():
        total = totals[nid] = outcomes[0].shares[nid].clone()
        for o in outcomes[1:]:
            total += o.shares[nid]
    return Outcomes(outcomes, totals)


@dataclass
class _Sum:
    """One output revealed to the caller: the sum so far of what the parties sent of it.
    Parties fill it from the front, each in order, so bytes [0, filled) hold at least one
    party's share and the rest nothing yet."""

    array: np.ndarray  # int64, flat
    filled: int = 0

    def put(self, start: int, payload) -> None:
        stop = start + len(payload)
        data = np.frombuffer(payload, dtype=np.int64)
        added = (min(stop, max(start, self.filled)) - start) // 8  # elements some party has written
        target = self.array[start // 8:stop // 8]
        if added:
            np.add(target[:added], data[:added], out=target[:added])
        if added < len(data):
            target[added:] = data[added:]
        self.filled = max(self.filled, stop)


class _Adding:
    """A _Sum as one party's framing.Reassembly target: `into[start:stop] = chunk` adds it."""

    def __init__(self, total: _Sum):
        self.total = total

    def __len__(self) -> int:
        return self.total.array.nbytes

    def __setitem__(self, where: slice, payload) -> None:
        if where.start % 8 or len(payload) % 8:
            raise framing.FrameMalformed(f"a chunk of {len(payload)} bytes at byte {where.start} splits int64 elements")
        self.total.put(where.start, payload)


@dataclass
class _Receiving:
    """The output a party is sending: described, its bytes not all in yet."""

    info: serde.OutputInfo
    into: object  # what framing.Reassembly writes: an _Adding, or a plaintext's own buffer
    buffer: np.ndarray | None = None  # a plaintext's
    part: framing.Reassembly | None = None

    def describe(self) -> str:
        kind = "plaintext" if self.info.plaintext else "share"
        got = self.part.received if self.part else 0
        return f"output node {self.info.node} ({kind}, {self.info.nbytes} bytes, {got} chunks in)"


@dataclass
class _Party:
    """What one party's Run stream has delivered."""

    pid: int
    stats: object = None  # JobStats once the stream ended well
    declared: set = field(default_factory=set)  # (plaintext, node) of every output described
    plaintexts: dict = field(default_factory=dict)
    receiving: _Receiving | None = None
    event: framing.Reassembly | None = None  # an event longer than one chunk, in progress


class JobOutputs:
    """The caller's side of one job's Run streams, one per party (see the module docstring).

        received = JobOutputs.for_job(program, job, n_parties)
        ... for every message of party p's stream: if received.feed(p, msg): break
        outcomes = received.finish()   # Outcomes: per-party stats and plaintexts, and totals
    """

    def __init__(self, n_parties: int, shares: dict[int, tuple], opened: dict[int, tuple], parties=None,
                 limit: int = framing.MAX_PAYLOAD_BYTES):
        """`shares`: node -> shape of each output revealed to the caller (every party sends
        its share); `opened`: node -> shape of each output opened to a party (that party may
        send it, if the caller operates it); `parties`: whose streams come here (default all
        n_parties; one alone gives that party's own shares as `totals`); `limit`: the largest
        output accepted."""
        self.n_parties = n_parties
        self.parties = {p: _Party(p) for p in (range(n_parties) if parties is None else parties)}
        self.shares, self.opened, self.limit = shares, opened, limit
        self._sums: dict[int, _Sum] = {}

    @classmethod
    def for_job(cls, program, job, n_parties: int, parties=None) -> "JobOutputs":
        shares, opened = {}, {}
        for nid, to in zip(program.outputs, job.recipients):
            (shares if to == TO_CALLER else opened)[nid] = tuple(program.nodes[nid].shape)
        return cls(n_parties, shares, opened, parties)

    def feed(self, p: int, msg: bytes) -> bool:
        """Take one message of party p's stream; True once its stats came (its last message).
        Raises OutputError with the party's error, or naming what is wrong with its frames."""
        party = self.parties[p]
        try:
            return self._feed(party, msg)
        except (framing.FrameError, serde.SerdeError) as exc:
            where = party.receiving.describe() if party.receiving else "its Run stream"
            raise OutputError(f"party {p} sent outputs that cannot be used ({where}): {exc}") from None

    def _feed(self, party: _Party, msg: bytes) -> bool:
        header, payload = framing.decode_frame(msg, self.limit)
        if party.stats is not None:
            raise framing.FrameMalformed("a frame after the job's stats")
        if header.tag == pb.FRAME_OUTPUT:
            self._output(party, header, payload)
            return False
        if header.tag != pb.FRAME_EVENT:
            raise framing.FrameMalformed(f"a frame tagged {header.tag}, neither an event nor an output's bytes")
        if party.event is None:
            if header.total_bytes > MAX_EVENT_BYTES:
                raise framing.FrameTooLarge(f"an event of {header.total_bytes} bytes, over {MAX_EVENT_BYTES}")
            party.event = framing.Reassembly(header, payload)
        if not party.event.add(header, payload):
            return False
        data, party.event = party.event.buffer, None
        kind, value = serde.job_event_from_bytes(data, self.n_parties)
        if kind == "error":
            raise OutputError(value)  # the party's own words: they name it and the cause
        if party.receiving is not None:
            raise framing.FrameMalformed("an event before the output's last chunk")
        if kind == "output":
            self._describe(party, value)
            return False
        missing = sorted(n for n in self.shares if (False, n) not in party.declared)
        if missing:
            raise framing.FrameMalformed(f"the job's stats, but no share of output node(s) {missing}")
        party.stats = value
        return True

    def _describe(self, party: _Party, info: serde.OutputInfo) -> None:
        """Check an output's description against the job, then make room for its bytes."""
        kind = "plaintext" if info.plaintext else "share"
        expected = (self.opened if info.plaintext else self.shares).get(info.node)
        if expected is None:
            whose = "opens to a party" if info.plaintext else "reveals to the caller"
            raise framing.FrameMalformed(f"a {kind} of output node {info.node}, which the job never {whose}")
        dtype = torch.float64 if info.plaintext else torch.int64
        if info.shape != expected or info.dtype != dtype:
            raise framing.FrameMalformed(f"a {kind} of output node {info.node} declared as {info.dtype} {info.shape}; "
                                         f"the job's is {dtype} {expected}")
        if (info.plaintext, info.node) in party.declared:
            raise framing.FrameMalformed(f"the {kind} of output node {info.node} twice")
        if info.nbytes > self.limit:
            raise framing.FrameTooLarge(f"output node {info.node} of {info.nbytes} bytes, over {self.limit}")
        party.declared.add((info.plaintext, info.node))
        numel = math.prod(info.shape)
        if info.plaintext:
            buffer = np.empty(numel, dtype=np.float64)
            party.receiving = _Receiving(info, memoryview(buffer).cast("B") if numel else bytearray(), buffer)
        else:
            total = self._sums.get(info.node)
            if total is None:
                total = self._sums[info.node] = _Sum(np.empty(numel, dtype=np.int64))
            party.receiving = _Receiving(info, _Adding(total))

    def _output(self, party: _Party, header: pb.FrameHeader, payload: memoryview) -> None:
        r = party.receiving
        if r is None or header.round != r.info.node:
            raise framing.FrameMalformed(f"bytes of output node {header.round}, which no description announced")
        if r.part is None:
            r.part = framing.Reassembly(header, payload, into=r.into)  # the declared size must be the description's
        if r.part.add(header, payload):
            if r.info.plaintext:
                party.plaintexts[r.info.node] = torch.from_numpy(r.buffer).reshape(r.info.shape)
            party.receiving = None

    def finish(self) -> Outcomes:
        """Every party's outcome and the totals; every party's stream must have ended well."""
        unfinished = sorted(p for p, party in self.parties.items() if party.stats is None)
        if unfinished:
            raise OutputError(f"party {unfinished[0]} has not sent all its outputs and stats")
        outcomes = [JobOutcome(plaintexts=party.plaintexts, stats=party.stats) for party in self.parties.values()]
        totals = {nid: torch.from_numpy(s.array).reshape(self.shares[nid]) for nid, s in self._sums.items()}
        return Outcomes(outcomes, totals)


def events(messages) -> list[pb.JobEvent]:
    """The JobEvents among a Run stream's messages (outputs' bytes skipped): for tools and tests."""
    found, part = [], None
    for msg in messages:
        header, payload = framing.decode_frame(msg)
        if header.tag != pb.FRAME_EVENT:
            continue
        part = part or framing.Reassembly(header, payload)
        if part.add(header, payload):
            found.append(pb.JobEvent.FromString(bytes(part.buffer)))
            part = None
    return found
