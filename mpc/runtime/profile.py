"""Per-phase timers of one job at one party, on only when the job asks (`Job.profile`).

A job's time splits into phases, each accumulated in seconds of wall time: the dealer's
corrections as party 0 waits for them (their generation and transfer; party 0 expands its
correlations meanwhile), PRG expansion of the correlations (at party 0, what is left of it
after the stream's last byte), the ready barrier (waiting for peers to finish their offline phase), local
arithmetic (the protocol generators between rounds, input masks included), payload encoding
(a round's values into one buffer), sending (framing it into chunks and queueing them),
waiting for peers (the rest of a round's exchange: the peers' own work and the wire),
reassembly of received chunks, combining the received shares, opening outputs to parties
and encoding outputs for the caller, plus the CPU time of the whole process over the job.
When a job does not ask, the session passes `OFF`, whose timers cost one attribute lookup:
benchmarks without --profile measure the same code they always did.
"""

from __future__ import annotations

import resource
import time
from collections import defaultdict


class _Timer:
    __slots__ = ("profile", "name", "start")

    def __init__(self, profile: "Profile", name: str):
        self.profile, self.name = profile, name

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.profile.phases[self.name] += time.perf_counter() - self.start
        return False


class Profile:
    """Seconds per phase of one job; `cpu()` closes it with the process's CPU time."""

    enabled = True

    def __init__(self):
        self.phases: dict[str, float] = defaultdict(float)
        self._cpu0 = _cpu()

    def phase(self, name: str) -> _Timer:
        return _Timer(self, name)

    def add(self, name: str, seconds: float) -> None:
        self.phases[name] += seconds

    def finish(self) -> dict[str, float]:
        """The phases, with `cpu_s` (user + system time of this process since the job began)."""
        self.phases["cpu_s"] = _cpu() - self._cpu0
        return dict(self.phases)


class _Nothing:
    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NOTHING = _Nothing()


class _Off:
    """The profile of a job that did not ask for one: every timer is a no-op."""

    enabled = False
    phases: dict = {}

    def phase(self, name: str) -> _Nothing:
        return _NOTHING

    def add(self, name: str, seconds: float) -> None:
        pass

    def finish(self) -> dict[str, float]:
        return {}


OFF = _Off()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread: PRG expansion runs in one
    return usage.ru_utime + usage.ru_stime
