"""Grants: a client lets another client use one of its kept values in one program.

Kept values live in their submitter's namespace (mpc.net.access), so by default only the
client that kept a value can compute on it. A grant widens that by exactly one use: the
owner of a kept value (say a model's weights) names a grantee (a client identity, from its
certificate) and a program digest (say the model's inference program); the grantee's jobs
of that program may then read the value, and nothing else. What the program outputs goes to
the grantee as any job's outputs do; the grantee cannot free, keep under its own name,
checkpoint or reveal the value itself, unless the granted program does so, and the owner
chose that program by its digest. The owner revokes a grant, or frees the value, to end it.

Each party holds its own copy of the grants the owner sent it (the same id at every party,
chosen by the owner); a job naming a grant a party does not hold is refused there, and so
by the coordinator, before any round.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Callable

from mpc.ir import Job

log = logging.getLogger(__name__)

MAX_GRANTS_PER_OWNER = 1024


class GrantError(ValueError):
    """A grant refused, or a job whose grants do not hold; the message says which and why."""


@dataclass(frozen=True)
class Grant:
    owner: str  # the granting client's certified identity
    key: int  # the kept value's party-wide key, in the owner's namespace
    grantee: str  # the client identity it is granted to
    program: str  # the digest of the only program it may enter


class Grants:
    def __init__(self, pid: int):
        self.pid = pid
        self._by_id: dict[int, Grant] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, grant_id: int, grant: Grant, is_kept: Callable[[int], bool], handle: int) -> None:
        """Record a grant; `is_kept(key)` says whether the value is still held."""
        if not grant_id:
            raise GrantError("a grant needs a non-zero id")
        if not grant.grantee:
            raise GrantError(f"grant {grant_id} names no grantee")
        if len(grant.program) != 64:
            raise GrantError(f"grant {grant_id} names program {grant.program[:20]!r}, not a SHA-256 digest")
        held = self._by_id.get(grant_id)
        if held is not None and held.owner != grant.owner:  # (whose it is, is not said)
            raise GrantError(f"grant id {grant_id} is already in use")
        if not is_kept(grant.key):
            raise GrantError(f"grant {grant_id}: there is no kept value {handle} of yours at party {self.pid}")
        if held is None and sum(g.owner == grant.owner for g in self._by_id.values()) >= MAX_GRANTS_PER_OWNER:
            raise GrantError(f"grant {grant_id}: {MAX_GRANTS_PER_OWNER} grants of yours are held already "
                             "(revoke some first)")
        self._by_id[grant_id] = grant
        log.info("party %d: grant %d of %s to %s for program %s", self.pid, grant_id, grant.owner or "-",
                 grant.grantee, grant.program[:16])

    def revoke(self, grant_id: int, owner: str) -> bool:
        """Withdraw a grant of `owner`'s; whether there was one."""
        held = self._by_id.get(grant_id)
        if held is None or held.owner != owner:
            return False
        del self._by_id[grant_id]
        return True

    def resolve(self, job: Job, submitter: str, secure: bool, is_kept: Callable[[int], bool]) -> Job:
        """The job with each granted input replaced by the kept value it names, after checking
        that every grant is held here, is for this submitter (under TLS) and this program, and
        that its value is still kept."""
        if not job.granted:
            return job
        kept = dict(job.kept)
        for nid, grant_id in sorted(job.granted.items()):
            grant = self._by_id.get(grant_id)
            if grant is None or (secure and grant.grantee != submitter):
                raise GrantError(f"job {job.job_id}: input node {nid} names grant {grant_id}, which party {self.pid} "
                                 f"does not hold for {submitter or 'this client'}")
            if grant.program != job.program:
                raise GrantError(f"job {job.job_id}: grant {grant_id} (input node {nid}) is for program "
                                 f"{grant.program[:16]}…, not for this job's {job.program[:16]}…")
            if nid in kept:
                raise GrantError(f"job {job.job_id}: input node {nid} is named both as a kept value and as a grant")
            if not is_kept(grant.key):
                raise GrantError(f"job {job.job_id}: grant {grant_id} (input node {nid}) names a value its owner "
                                 "no longer keeps (freed)")
            kept[nid] = grant.key
        return replace(job, kept=kept, granted={})
