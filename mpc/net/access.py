"""Who may ask a party for what: the access rules of the Party service, in one place.

Identities come from verified certificates (mpc.net.tls.peer_identity), never from a
request field. Under mutual TLS a party serves

- the coordinator: LoadProgram and Submit (each job names its submitter, a client the
  coordinator authenticated and the cluster file lists);
- a listed client: Upload of its own inputs, Run and Cancel of its own jobs (outputs addressed to
  "the caller" reach only the job's submitter, as a fresh re-randomised sharing; outputs
  revealed to party k reach a client only when it is party k's operator), checkpoints of
  its own kept values, Health;
- a peer party: Exchange only (mpc.net.mesh checks its id against its certificate).

A party reads its own data files (mpc.net.party_data) only for jobs of its operator.

Kept values live in one namespace per submitter: a job can read, free or checkpoint only
values its own submitter's jobs kept, so no client can reveal another's stored shares.
Without TLS (loopback only, asked for explicitly) nobody is authenticated and every rule
here is off: that mode is for one trusted machine.
"""

from __future__ import annotations

import hashlib
import logging

import grpc

from mpc.net import tls
from mpc.net.config import ClusterConfig

log = logging.getLogger(__name__)

COORDINATOR = tls.COORDINATOR
HANDLE_BITS = 62  # room below 2**63 for the proto's uint64 and for torch's int64 keys


class AccessDenied(Exception):
    """A request from an identity that may not make it; the message says who and why."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def cluster_member(identity: str, n_parties: int, clients) -> bool:
    """A process of the cluster (party-K for K < n_parties, the dealer, the coordinator) or
    one of the clients its file lists: who may ask any process for its Health."""
    pid = tls.party_id(identity)
    return (pid is not None and pid < n_parties) or identity in (tls.DEALER, COORDINATOR) or identity in clients


def kept_handle(submitter: str, handle: int) -> int:
    """The party-wide key of `handle` in `submitter`'s namespace; the same at every party,
    so the parties' job digests still agree."""
    digest = hashlib.sha256(f"{submitter}\x00{handle}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - HANDLE_BITS)


class Access:
    def __init__(self, pid: int, secure: bool):
        self.pid = pid
        self.secure = secure
        self.config: ClusterConfig | None = None  # known once the party has joined

    def identity(self, context) -> str:
        """The caller's certified identity; "" without TLS."""
        return (tls.peer_identity(context) or "") if self.secure else ""

    def _deny(self, who: str, what: str, why: str) -> AccessDenied:
        message = f"party {self.pid} refuses {what} from {who or 'an unauthenticated caller'}: {why}"
        log.warning("%s", message)
        return AccessDenied(grpc.StatusCode.PERMISSION_DENIED, message)

    def coordinator(self, context, what: str) -> None:
        """Programs and jobs come from the coordinator only."""
        who = self.identity(context)
        if self.secure and who != COORDINATOR:
            raise self._deny(who, what, f"only the {COORDINATOR} submits programs and jobs")

    def client(self, context, what: str) -> str:
        """A client the cluster file lists; returns its identity."""
        who = self.identity(context)
        if not self.secure:
            return who
        clients = set(self.config.clients) if self.config else set()
        if who not in clients:  # (which clients are listed is not said: that is nobody else's business)
            raise self._deny(who, what, "not a client of this cluster")
        return who

    def submitter(self, context, submitter: str, job_id: str, what: str) -> None:
        """Only the client that submitted a job may run it and receive its outputs (the
        refusal does not say whose it is)."""
        who = self.identity(context)
        if self.secure and who != submitter:
            raise self._deny(who, what, f"job {job_id} was not submitted by {who}")

    def canceller(self, context, submitter: str | None, job_id: str) -> None:
        """A job not yet run is dropped by the coordinator (another party refused it) or by the
        client that submitted it (`submitter`, None if this party has no such job)."""
        who = self.identity(context)
        if self.secure and who != COORDINATOR and (submitter is None or who != submitter):
            raise self._deny(who, f"a cancel of job {job_id}", "only the coordinator and the job's submitter "
                                                               "cancel it")

    def member(self, context, what: str) -> str:
        """Any process of this cluster (a party, the dealer, the coordinator, a listed client)."""
        who = self.identity(context)
        if not self.secure or self.config is None:
            return who
        if cluster_member(who, self.config.n_parties, self.config.clients):
            return who
        raise self._deny(who, what, "not a process or client of this cluster")

    def check_submitter(self, submitter: str) -> None:
        """A job the coordinator forwards must name a client the cluster file lists."""
        if self.secure and submitter not in (self.config.clients if self.config else ()):
            raise AccessDenied(grpc.StatusCode.PERMISSION_DENIED,
                               f"party {self.pid} refuses a job for {submitter or 'no submitter'}: "
                               "not a client of this cluster")

    def reads_files_for(self, identity: str, what: str) -> None:
        """This party reads its own data files (and, without a data directory, writes
        checkpoints) only for its operator: whoever submits a job on its files can reveal
        what it computes from them, so only the client the party's operator entry names may
        (without TLS, anyone: one trusted machine)."""
        if not self.secure:
            return
        operator = (self.config.operators if self.config else {}).get(self.pid)
        if identity != operator:
            raise self._deny(identity, what, f"party {self.pid} uses its own files only for its operator "
                                             f"({operator or 'none named in the cluster file'})")

    def operator_of(self, identity: str) -> set[int]:
        """The parties whose revealed outputs `identity` may receive."""
        if not self.secure:
            return set(range(self.config.n_parties)) if self.config else set()
        ops = self.config.operators if self.config else {}
        return {pid for pid, op in ops.items() if op == identity}
