"""The graph IR: nodes of named ops, the compiled Program, and the Job that runs it.

A `Node` names an op, its input nodes, public attributes, its output shape (and the
shapes of any further outputs), the user-facing name of what it computes (a layer such as
"fc1", or a tensor's name) and the user's source line. Attributes are ints, floats,
strings, bools, int tuples or public tensors, so that a program serializes without pickle.

A `Program` is what the compiler produces and the parties cache: nodes numbered 0..n-1
in topological order, which of them are outputs and at which scale. It holds no data and
no party ids, so one program serves every run of a model; its `digest` (SHA-256 of a
canonical encoding) names it on the wire. A `Job` is one run: a fresh id, the program's
digest, who owns each private input, which kept values feed the kept inputs, who
receives each output, and which values the parties keep afterwards.

Input nodes (op "input") say how they get their value: `kind="private"` (shared by its
owner in this job) or `kind="kept"` (a value the parties kept from an earlier job; with
`truncate=True` it was kept untruncated at scale 2^2f and is truncated on first use) or
`kind="public"` (a value the job gives every party: batch indices with `index=True`,
or a public number such as a step size). A private input with `int=True` is shared as
an exact integer (a 0/1 label or mask), so products with it need no truncation.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from functools import cached_property
from typing import Union

import torch

Attr = Union[int, float, str, bool, tuple, torch.Tensor]

# Output recipients besides a party id.
TO_CALLER = -1
TO_ALL = -2


@dataclass(frozen=True)
class Node:
    id: int
    op: str
    inputs: tuple[int, ...]
    attrs: dict = field(default_factory=dict, hash=False, compare=False)
    shape: tuple[int, ...] = ()
    name: str = ""
    source: str = ""
    extra_shapes: tuple[tuple[int, ...], ...] = ()  # outputs 1.. of a multi-output op

    def describe(self) -> str:
        what = f"node {self.id} ({self.op}"
        if self.name:
            what += f" '{self.name}'"
        what += ")"
        return f"{what} at {self.source}" if self.source else what


def _canonical(value, out: list[bytes]) -> None:
    """Append an unambiguous encoding of an attribute value (type tag, length, bytes)."""
    if isinstance(value, bool):
        out.append(b"b" + bytes([value]))
    elif isinstance(value, int):
        out.append(b"i" + struct.pack("<q", value))
    elif isinstance(value, float):
        out.append(b"f" + struct.pack("<d", value))
    elif isinstance(value, str):
        data = value.encode()
        out.append(b"s" + struct.pack("<I", len(data)) + data)
    elif isinstance(value, (tuple, list)):
        out.append(b"t" + struct.pack("<I", len(value)))
        for v in value:
            _canonical(int(v), out)
    elif isinstance(value, torch.Tensor):
        t = value.detach().contiguous().cpu()
        data = t.numpy().tobytes()
        _canonical(str(t.dtype), out)
        _canonical(tuple(t.shape), out)
        out.append(struct.pack("<Q", len(data)) + data)
    else:
        raise TypeError(f"attribute value {value!r} of type {type(value).__name__} is not IR data")


@dataclass(frozen=True)
class Program:
    """A compiled computation: reusable, hashable, free of data and party ids."""

    nodes: tuple[Node, ...]
    outputs: tuple[int, ...]
    output_scales: tuple[int, ...] = ()  # per output: 1, or 2 for a product left untruncated
    frac_bits: int = 16

    def __post_init__(self):
        if not self.output_scales:
            object.__setattr__(self, "output_scales", tuple(1 for _ in self.outputs))

    @cached_property
    def digest(self) -> str:
        parts: list[bytes] = []
        _canonical(self.frac_bits, parts)
        for n in self.nodes:
            _canonical((n.id, *n.inputs), parts)
            for v in (n.op, n.name, n.source, tuple(n.shape), len(n.extra_shapes)):
                _canonical(v, parts)
            for s in n.extra_shapes:
                _canonical(tuple(s), parts)
            _canonical(len(n.attrs), parts)
            for key in sorted(n.attrs):
                _canonical(key, parts)
                _canonical(n.attrs[key], parts)
        _canonical(self.outputs, parts)
        _canonical(self.output_scales, parts)
        return hashlib.sha256(b"".join(parts)).hexdigest()

    @cached_property
    def inputs(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.op == "input")

    def node(self, nid: int) -> Node:
        return self.nodes[nid]

    def consumers(self) -> dict[int, list[int]]:
        users: dict[int, list[int]] = {n.id: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                users[i].append(n.id)
        return users


@dataclass
class Job:
    """One run of a program: ids of parties and kept values, never plaintext."""

    job_id: str
    program: str  # Program.digest
    owners: dict[int, int] = field(default_factory=dict)  # private input node -> owner pid
    kept: dict[int, int] = field(default_factory=dict)  # kept input node -> handle
    recipients: tuple[int, ...] = ()  # per program output: TO_CALLER, TO_ALL or a pid
    keep: dict[int, int] = field(default_factory=dict)  # node -> handle the parties keep it under
    free: tuple[int, ...] = ()  # handles the parties drop after this job
    public: dict[int, torch.Tensor] = field(default_factory=dict)  # public input node -> its value, for all
    profile: bool = False  # time the phases of this job (JobStats.phases)
    replay: tuple[int, ...] = ()  # a transport floor (empty program): bytes per round, sender, receiver
    sources: dict[int, str] = field(default_factory=dict)  # input node -> a file its owner reads (JSON)
    reproducible: bool = False  # randomness keyed by the inputs, not the id (runtime.reproducible)
    granted: dict[int, int] = field(default_factory=dict)  # kept input node -> id of a grant to the submitter


def ancestors(roots: list[int], inputs_of, stop) -> list[int]:
    """Ids reachable from `roots` through `inputs_of`, not descending below `stop(id)`,
    in topological order (inputs before users)."""
    order: list[int] = []
    seen: set[int] = set()
    stack = [(r, False) for r in reversed(roots)]
    while stack:
        nid, expanded = stack.pop()
        if expanded:
            order.append(nid)
            continue
        if nid in seen:
            continue
        seen.add(nid)
        stack.append((nid, True))
        if not stop(nid):
            for i in reversed(inputs_of(nid)):
                if i not in seen:
                    stack.append((i, False))
    return order
