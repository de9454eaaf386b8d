"""What a job reports: its errors, its statistics and outcome at one party, and the digest
that binds everything a job names (parties compare it before the online phase)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from mpc.ir import Job


class JobError(RuntimeError):
    """A job was refused or failed; the message names the cause."""


class TooManyAhead(JobError):
    """A client already has MAX_AHEAD jobs submitted and not yet run at this party."""


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
    # The offline phase runs from submission: how long its correlations were in hand before
    # the job was run (0 if they were not), and how long the run waited for them (0 if not).
    ready_ahead_s: float = 0.0
    offline_wait_s: float = 0.0


@dataclass
class JobOutcome:
    shares: dict[int, torch.Tensor] = field(default_factory=dict)  # revealed to the caller, by node
    plaintexts: dict[int, torch.Tensor] = field(default_factory=dict)  # opened to this party, by node
    opened_to: dict[int, int] = field(default_factory=dict)  # node of each plaintext -> its recipient (or TO_ALL)
    stats: JobStats = field(default_factory=JobStats)


def job_digest(job: Job) -> str:
    """SHA-256 of everything a job binds: program, owners, kept values (and grants), recipients,
    what is kept and freed, public values. Parties compare it before the online phase."""
    h = hashlib.sha256()
    for part in (job.job_id, job.program, sorted(job.owners.items()), sorted(job.kept.items()), list(job.recipients),
                 sorted(job.keep.items()), sorted(job.free), sorted(job.sources.items()), job.reproducible,
                 *((sorted(job.granted.items()),) if job.granted else ())):
        h.update(repr(part).encode())
    for nid in sorted(job.public):
        t = job.public[nid].detach().contiguous()
        h.update(f"{nid}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()
