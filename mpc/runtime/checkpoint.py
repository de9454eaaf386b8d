"""One party's checkpoint files: its own shares of named values, written atomically, read back checked.

A checkpoint holds only this party's shares (raw little-endian int64 ring elements,
never plaintext, never pickled) and a small JSON header: format, party id, step, the
job's hash, each tensor's name and shape, its tag (runtime.reproducible: what computed
it, so that a resumed run repeats the original's randomness), and the SHA-256 of the
payload. It is written
to a temporary file in the same directory, flushed and fsynced, then renamed over its
final name (and the directory fsynced), so a crash leaves either the whole file or none.
Reading checks everything in the header against the file and against what the caller
expects (job hash, party, step); a file that fails any check is reported, never loaded.
The newest KEEP checkpoints are kept, so a damaged newest one leaves an older one to use.

    [8 bytes b"MPCCKPT1"][u32 LE header length][header JSON][payload]
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct

import torch

MAGIC = b"MPCCKPT1"
KEEP = 3
_NAME = re.compile(r"^step-(\d{9})\.ckpt$")
MAX_HEADER = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint that must not be used; the message names the file and what is wrong."""


def file_name(step: int) -> str:
    return f"step-{step:09d}.ckpt"


def write(directory: str, step: int, job_hash: str, party: int, tensors: dict[str, torch.Tensor],
          tags: dict[str, bytes] | None = None) -> str:
    """Write this party's shares (and their tags) atomically; return the final path."""
    os.makedirs(directory, exist_ok=True)
    payload = hashlib.sha256()
    entries = []
    for name, t in tensors.items():
        if t.dtype != torch.int64:
            raise CheckpointError(f"checkpoint value {name!r} is {t.dtype}, not int64 ring shares")
        entries.append([name, list(t.shape)])
    blobs = [t.contiguous().numpy().astype("<i8", copy=False).tobytes() for t in tensors.values()]
    for b in blobs:
        payload.update(b)
    header = json.dumps({"format": 1, "party": party, "step": step, "job": job_hash, "tensors": entries,
                         "tags": {n: t.hex() for n, t in (tags or {}).items()},
                         "sha256": payload.hexdigest()}, sort_keys=True).encode()
    final = os.path.join(directory, file_name(step))
    tmp = f"{final}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<I", len(header)) + header)
        for b in blobs:
            f.write(b)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself must survive a crash
    finally:
        os.close(dir_fd)
    _prune(directory, job_hash)
    return final


def _job_of(path: str) -> str | None:
    """The job a checkpoint file says it belongs to (None if it says nothing readable)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if head[:8] != MAGIC or len(head) < 12:
                return None
            return str(json.loads(f.read(min(struct.unpack("<I", head[8:12])[0], 1 << 20)))["job"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _prune(directory: str, job_hash: str) -> None:
    """Keep this job's newest KEEP checkpoints; never touch another job's files."""
    steps = sorted(int(m.group(1)) for n in os.listdir(directory) if (m := _NAME.match(n))
                   and _job_of(os.path.join(directory, n)) == job_hash)
    for step in steps[:-KEEP]:
        try:
            os.remove(os.path.join(directory, file_name(step)))
        except FileNotFoundError:
            pass


def read(path: str, job_hash: str, party: int, step: int | None = None, with_tags: bool = False):
    """This party's shares from `path`, after every check (and, `with_tags`, their tags by
    name as a second result); CheckpointError otherwise."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read: {exc}") from None
    if data[:8] != MAGIC or len(data) < 12:
        raise CheckpointError(f"checkpoint {path}: not a checkpoint file (bad magic bytes)")
    (n,) = struct.unpack("<I", data[8:12])
    if n > MAX_HEADER or 12 + n > len(data):
        raise CheckpointError(f"checkpoint {path}: truncated header")
    try:
        header = json.loads(data[12:12 + n])
        entries = [(str(name), tuple(int(d) for d in shape)) for name, shape in header["tensors"]]
        found = (header["job"], int(header["party"]), int(header["step"]), header["sha256"])
        tags = {str(n): bytes.fromhex(t) for n, t in header.get("tags", {}).items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: malformed header: {exc}") from None
    if found[0] != job_hash:
        raise CheckpointError(f"checkpoint {path} belongs to another job (or another client), not this job "
                              "(the job file changed: start without --resume, or restore the old job file)")
    if found[1] != party:
        raise CheckpointError(f"checkpoint {path} holds party {found[1]}'s shares, not party {party}'s")
    if step is not None and found[2] != step:
        raise CheckpointError(f"checkpoint {path} says step {found[2]}, its name says step {step}")
    payload = memoryview(data)[12 + n:]
    sizes = [8 * _numel(shape) for _, shape in entries]
    if len(payload) != sum(sizes):
        raise CheckpointError(f"checkpoint {path}: payload has {len(payload)} bytes, the header needs {sum(sizes)} "
                              "(half-written or truncated)")
    if hashlib.sha256(payload).hexdigest() != found[3]:
        raise CheckpointError(f"checkpoint {path}: payload checksum does not match (the file is damaged)")
    out, offset = {}, 0
    for (name, shape), size in zip(entries, sizes):
        out[name] = torch.frombuffer(bytearray(payload[offset:offset + size]), dtype=torch.int64).reshape(shape) \
            if size else torch.zeros(shape, dtype=torch.int64)
        offset += size
    return (out, tags) if with_tags else out


def _numel(shape) -> int:
    n = 1
    for d in shape:
        if d < 0:
            raise CheckpointError(f"negative dimension in shape {shape}")
        n *= d
    return n


def scan(directory: str, job_hash: str, party: int) -> tuple[list[int], list[str]]:
    """Steps of the complete, valid checkpoints in `directory`, and why others were refused."""
    if not os.path.isdir(directory):
        return [], []
    steps, refused = [], []
    for name in sorted(os.listdir(directory)):
        m = _NAME.match(name)
        if not m:
            continue
        try:
            read(os.path.join(directory, name), job_hash, party, int(m.group(1)))
            steps.append(int(m.group(1)))
        except CheckpointError as exc:
            refused.append(str(exc))
    return steps, refused
