"""The interfaces the executor needs from the network: a peer mesh and a dealer link.

Implementations live in mpc.net (gRPC, and in-memory for tests); the runtime depends
only on these. Rounds and bytes are counted here, where messages are actually sent, so
that reported figures cannot drift from the traffic.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from mpc.runtime.offline import Corrections
from mpc.runtime.profile import OFF


class PeerFailure(RuntimeError):
    """A peer (or the dealer) is unreachable, closed its connection, or stopped answering."""

    def __init__(self, who: str, detail: str):
        super().__init__(f"{who}: {detail}")
        self.who = who


class ProtocolViolation(RuntimeError):
    """A peer sent something that does not fit the plan (wrong size, unknown round)."""


class JobAborted(RuntimeError):
    """A peer gave up on a job (its own check or computation failed) and said why."""


class RoundTimeout(RuntimeError):
    """A live peer sent nothing for a round of a job within the deadline: that job fails,
    the connection and the peer's other jobs go on (a dead peer is a PeerFailure)."""


@dataclass
class Counters:
    rounds: int = 0
    bytes_sent: int = 0
    messages_sent: int = 0
    round_sizes: list = field(default_factory=list)  # per round: {peer: bytes sent to it} (the floor replays them)


class Transport(abc.ABC):
    """Point-to-point links from this party to every peer, carrying one message per peer
    per round. Public methods validate, then call the `_`-prefixed hooks."""

    def __init__(self, pid: int, n_parties: int):
        self.pid = pid
        self.n_parties = n_parties
        self._counters: dict[str, Counters] = {}
        self._profiles: dict = {}  # job -> its Profile, for jobs that asked for one

    def set_profile(self, job: str, profile) -> None:
        if profile.enabled:
            self._profiles[job] = profile

    def _timed(self, job: str, phase: str, fn, *args):
        """fn(*args), its time added to `phase` of the job's profile if it has one."""
        profile = self._profiles.get(job, OFF)
        with profile.phase(phase):
            return fn(*args)

    @property
    def peers(self) -> list[int]:
        return [p for p in range(self.n_parties) if p != self.pid]

    def counters(self, job: str) -> Counters:
        return self._counters.setdefault(job, Counters())

    def reset_counters(self, job: str) -> None:
        self._counters[job] = Counters()

    def forget(self, job: str) -> None:
        self._counters.pop(job, None)
        self._profiles.pop(job, None)
        self._forget(job)

    async def exchange(self, job: str, round_no: int, outgoing: dict[int, bytes | memoryview],
                       incoming: set[int]) -> dict[int, memoryview]:
        """Send outgoing[p] to each p and wait for one message from each p in incoming."""
        for p in list(outgoing) + list(incoming):
            if p == self.pid or not 0 <= p < self.n_parties:
                raise ValueError(f"party {self.pid} cannot exchange with {p}")
        c = self.counters(job)
        c.rounds += 1
        c.messages_sent += len(outgoing)
        sizes = {p: len(memoryview(v).cast("B")) for p, v in outgoing.items()}
        c.bytes_sent += sum(sizes.values())
        c.round_sizes.append(sizes)
        return await self._exchange(job, round_no, outgoing, incoming)

    @abc.abstractmethod
    async def _exchange(self, job, round_no, outgoing, incoming) -> dict[int, memoryview]: ...

    @abc.abstractmethod
    def pairwise_key(self, peer: int) -> bytes:
        """A 128-bit key known to this party and `peer` only."""

    def _forget(self, job: str) -> None:
        """Drop buffered messages of a finished job."""

    def abort_job(self, job: str, reason: str) -> None:
        """Tell every peer that this party gave up on `job` and why, so that none waits for
        its next round until a timeout. The in-memory transport fails jobs together already."""


class DealerLink(abc.ABC):
    """This party's view of the dealer: a seed agreed at start-up, the long-lived seed and
    pair keys of reproducible jobs (runtime.reproducible), and (for party 0) the corrections
    of a job's correlations."""

    def __init__(self):
        self.bytes_received = 0

    @property
    @abc.abstractmethod
    def seed(self) -> bytes: ...

    @property
    @abc.abstractmethod
    def repro_seed(self) -> bytes: ...

    @abc.abstractmethod
    def repro_pair(self, peer: int) -> bytes:
        """The long-lived key of this party and `peer` for reproducible input masks."""

    async def corrections(self, job: str, specs: list, nbytes: int, reproduction_key: bytes = b"",
                          into: Corrections | None = None) -> Corrections:
        """Party 0's corrections, written into `into` (a fresh Corrections if not given) as
        they arrive, so that the expansion can use each byte as soon as it is there; with a
        reproduction key, from the long-lived seeds."""
        into = Corrections(specs) if into is None else into
        if into.nbytes != nbytes:
            raise ValueError(f"{nbytes} correction bytes asked for job {job}, its correlations take {into.nbytes}")
        await self._corrections(job, specs, nbytes, reproduction_key, into)
        if into.filled != nbytes:
            raise ProtocolViolation(f"dealer sent {into.filled} correction bytes for job {job}, expected {nbytes}")
        self.bytes_received += nbytes
        return into

    @abc.abstractmethod
    async def _corrections(self, job: str, specs: list, nbytes: int, reproduction_key: bytes,
                           into: Corrections) -> None:
        """Write the dealer's stream into `into` in order; refuse a stream of another size
        before writing anything."""
