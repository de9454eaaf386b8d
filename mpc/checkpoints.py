"""Checkpoints of a training job across the cluster: when to write, and where to resume from.

Every K steps the client asks each party to write its own shares of the weights and
optimizer state (the parties do the writing, atomically: mpc.runtime.checkpoint) into
its own directory, `<directory>/party-<p>`. To resume, each party lists the checkpoints
of this job that pass every check (complete, checksum right, same job hash, its own
party id); training continues from the newest step that EVERY party holds, so a party
that crashed mid-write, or whose file is damaged, makes the others fall back to an
earlier common step instead of mixing steps. No common step is an error that quotes
each party's reasons. Shares only: no plaintext is ever written.
"""

from __future__ import annotations

import os

from mpc.api import MPCError


class ResumeError(MPCError):
    """No checkpoint that every party holds; the message quotes why files were refused."""


class Checkpointer:
    def __init__(self, cluster, directory: str, job_hash: str):
        # Parties on other hosts write under their own data directory (<data>/checkpoints/
        # <client>/NAME/party-K); local ones where the job file says.
        remote = getattr(cluster, "remote", False)
        self.directory = os.path.basename(os.path.normpath(directory)) if remote else os.path.abspath(directory)
        self.cluster, self.job_hash = cluster, job_hash
        self.written: list[int] = []

    def party_dir(self, p: int) -> str:
        return os.path.join(self.directory, f"party-{p}")

    def save(self, step: int, handles: dict[str, int]) -> None:
        for p in range(self.cluster.n_parties):
            self.cluster._save_checkpoint(p, self.party_dir(p), step, self.job_hash, handles)
        self.written.append(step)

    def latest(self) -> tuple[int, list[str]]:
        """The newest step every party can load, and the reasons any files were refused."""
        common, refused = None, []
        for p in range(self.cluster.n_parties):
            steps, why = self.cluster._list_checkpoints(p, self.party_dir(p), self.job_hash)
            refused += [f"party {p}: {w}" for w in why]
            common = set(steps) if common is None else common & set(steps)
        if not common:
            detail = ("; ".join(refused)) if refused else f"no checkpoint files under {self.directory}"
            raise ResumeError(f"cannot resume: no checkpoint of this job that every party holds ({detail})")
        return max(common), refused

    def restore(self, names: list[str]) -> tuple[int, dict[str, int], list[str]]:
        """Load the newest common checkpoint into fresh handles: (step, handles by name, refused)."""
        step, refused = self.latest()
        handles = {name: self.cluster._new_handle() for name in names}
        for p in range(self.cluster.n_parties):
            self.cluster._load_checkpoint(p, self.party_dir(p), step, self.job_hash, handles)
        return step, handles, refused
