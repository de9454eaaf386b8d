"""Reproducible jobs: randomness keyed by what a job computes, so that a rerun is bit-exact.

A job's randomness normally comes from the dealer session's seeds and the job's fresh id:
rerun the same training step after a crash and its truncations round differently
(stochastic rounding, arithmetic.truncate), so a resumed training drifts from the
uninterrupted one by a few units in the last place per step. A job marked
`reproducible` instead keys its randomness (every correlation and input mask) by its
*reproduction key*

    K = SHA-256(program, owners, sources, recipients, public values,
                tag of each kept input, every party's contribution)

over long-lived seeds that the dealer derives from its own long-lived key (the same in
every session, so also after the dealer or a party restarts):
  - a kept value's tag is SHA-256(K', node) for the reproducible job K' that kept it, or
    SHA-256(job id, node) for any other job (ids are fresh: such a tag is never repeated);
    a checkpoint stores the tags of its values, so values loaded from it keep them;
  - a party's contribution hashes the inputs it brings itself: HMAC(salt, plaintext) for an
    input it owns (the salt is the party's own secret, so the others and the dealer cannot
    test guesses of low-entropy data against it), SHA-256 of the share for an input the
    caller shared. Contributions are exchanged in one small round before the offline phase.

Why reusing randomness this way reveals nothing: two jobs with the same K run the same
program on the same public values and on identical inputs (by induction over the tags: a
tag names the job that computed the value, and that job's K its inputs), so every value
they open is the same value under the same mask: the second run shows the parties exactly
what the first did. Inputs that differ anywhere give another K and fresh randomness. What
the parties do learn is *whether* a reproducible job repeats an earlier one. The dealer
sees K (party 0 names it to get its corrections), never an input. Randomness that never
reaches a value (the re-randomising masks on shares sent to the caller) stays fresh.
"""

from __future__ import annotations

import hashlib
import hmac

import torch

from mpc.prg import derive_key

KEY_BYTES = 32


def long_lived_seed(master: bytes, pid: int) -> bytes:
    """Party `pid`'s seed for reproducible correlations (the dealer knows them all)."""
    return derive_key(master, "repro-seed", pid)


def long_lived_pair(master: bytes, i: int, j: int) -> bytes:
    """The key of the pair (i, j) for reproducible input masks."""
    return derive_key(master, "repro-pair", min(i, j), max(i, j))


def master_commitment(master: bytes) -> bytes:
    """What every party learns of the dealer's long-lived key: enough to check they share one."""
    return hashlib.sha256(b"mpc-repro-master\0" + derive_key(master, "commit")).digest()


def secret_from(key_material: bytes, purpose: str) -> bytes:
    """A 128-bit secret derived from a process's private key (its TLS key): stable across
    restarts of the process, known to nobody else."""
    return hmac.new(key_material, b"mpc-" + purpose.encode(), hashlib.sha256).digest()[:16]


def fresh_tag(job_id: str, node: int) -> bytes:
    return hashlib.sha256(b"mpc-tag-job\0" + job_id.encode() + b"\0" + str(node).encode()).digest()


def kept_tag(key: bytes, node: int) -> bytes:
    return hashlib.sha256(b"mpc-tag-repro\0" + key + str(node).encode()).digest()


def _tensor_bytes(h, nid: int, t: torch.Tensor) -> None:
    t = t.detach().contiguous()
    h.update(f"{nid}:{t.dtype}:{tuple(t.shape)}:".encode())
    h.update(t.numpy().tobytes())


def contribution(salt: bytes, owned: dict[int, torch.Tensor], caller_shares: dict[int, torch.Tensor]) -> bytes:
    """This party's contribution: a keyed hash of the plaintexts it owns, a hash of its shares
    of what the caller shared (uniformly random to everyone else: a hash of one hides it)."""
    mac = hmac.new(salt, b"mpc-owned\0", hashlib.sha256)
    for nid in sorted(owned):
        _tensor_bytes(mac, nid, owned[nid])
    h = hashlib.sha256(b"mpc-contribution\0" + mac.digest())
    for nid in sorted(caller_shares):
        _tensor_bytes(h, nid, caller_shares[nid])
    return h.digest()


def reproduction_key(job, tags: dict[int, bytes], contributions: list[bytes]) -> bytes:
    """K of a job (see the module docstring): `tags` by kept input node, `contributions` by pid."""
    h = hashlib.sha256(b"mpc-reproduction-key-v1\0")
    for part in (job.program, sorted(job.owners.items()), sorted(job.sources.items()), list(job.recipients)):
        h.update(repr(part).encode() + b"\0")
    for nid in sorted(job.public):
        _tensor_bytes(h, nid, job.public[nid])
    for nid in sorted(tags):
        h.update(str(nid).encode() + b":" + tags[nid])
    for c in contributions:
        h.update(c)
    return h.digest()


def specs_digest(specs) -> str:
    """Names a job's list of correlation specs, so that one key never streams two spec lists."""
    return hashlib.sha256(repr([(s.kind, s.shapes, s.params) for s in specs]).encode()).hexdigest()[:32]


def stream_label(key: bytes, specs) -> str:
    """The label that takes the job id's place in the correlation streams' key derivation."""
    return f"repro:{key.hex()}:{specs_digest(specs)}"


def correlation_label(job: str, key: bytes, specs) -> str:
    """What keys a job's correlation streams: its id, or (a reproducible job) its key and specs."""
    return stream_label(key, specs) if key else job


def input_label(job: str, key: bytes) -> str:
    """What keys a job's input masks: its id, or (a reproducible job) its key."""
    return f"repro:{key.hex()}" if key else job
