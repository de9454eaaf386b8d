"""Every conversion between protobuf messages and runtime objects, as x_to_proto / x_from_proto.

Servicers and clients call these and nothing else touches message fields. Decoding
checks what it reads (dtype names, sizes, attribute kinds) and raises SerdeError, so a
malformed message is refused with a reason instead of crashing a server.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from mpc.ir import Job, Node, Program
from mpc.net.proto import mpc_pb2 as pb
from mpc.protocols.base import Spec
from mpc.runtime.jobs import JobStats

_DTYPES = {"int64": torch.int64, "float64": torch.float64, "float32": torch.float32,
           "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
           "bool": torch.bool}


class SerdeError(ValueError):
    """A message that does not decode to a valid object."""


def tensor_to_proto(t: torch.Tensor) -> pb.TensorProto:
    t = t.detach().cpu().contiguous()
    name = str(t.dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise SerdeError(f"tensors of dtype {t.dtype} cannot be sent")
    return pb.TensorProto(shape=list(t.shape), dtype=name, data=t.numpy().tobytes())


def tensor_from_proto(msg: pb.TensorProto) -> torch.Tensor:
    dtype = _DTYPES.get(msg.dtype)
    if dtype is None:
        raise SerdeError(f"unknown tensor dtype {msg.dtype!r}")
    shape = tuple(msg.shape)
    if any(s < 0 for s in shape):
        raise SerdeError(f"negative dimension in tensor shape {shape}")
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(msg.data) != math.prod(shape) * itemsize:
        raise SerdeError(f"tensor of shape {shape} and dtype {msg.dtype} needs {math.prod(shape) * itemsize} bytes, "
                         f"got {len(msg.data)}")
    if math.prod(shape) == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(msg.data), dtype=dtype).reshape(shape)


def _attr_to_proto(value) -> pb.Attr:
    if isinstance(value, bool):
        return pb.Attr(b=value)
    if isinstance(value, int):
        return pb.Attr(i=value)
    if isinstance(value, float):
        return pb.Attr(f=value)
    if isinstance(value, str):
        return pb.Attr(s=value)
    if isinstance(value, (tuple, list)):
        return pb.Attr(ints=pb.IntList(values=[int(v) for v in value]))
    if isinstance(value, torch.Tensor):
        return pb.Attr(tensor=tensor_to_proto(value))
    raise SerdeError(f"attribute value {value!r} of type {type(value).__name__} cannot be serialized")


def _attr_from_proto(msg: pb.Attr):
    kind = msg.WhichOneof("value")
    if kind is None:
        raise SerdeError("empty attribute")
    if kind == "ints":
        return tuple(msg.ints.values)
    if kind == "tensor":
        return tensor_from_proto(msg.tensor)
    return getattr(msg, kind)


MAX_PROGRAM_NODES = 1_000_000


def program_to_proto(program: Program) -> pb.ProgramProto:
    return pb.ProgramProto(
        nodes=[pb.NodeProto(id=n.id, op=n.op, inputs=list(n.inputs), shape=list(n.shape), name=n.name, source=n.source,
                            extra_shapes=[pb.IntList(values=list(s)) for s in n.extra_shapes],
                            attrs={k: _attr_to_proto(v) for k, v in n.attrs.items()}) for n in program.nodes],
        outputs=list(program.outputs), output_scales=list(program.output_scales), frac_bits=program.frac_bits)


def _shape(values, what: str) -> tuple[int, ...]:
    shape = tuple(values)
    if any(d < 0 for d in shape):
        raise SerdeError(f"negative dimension in {what} {shape}")
    return shape


def program_from_proto(msg: pb.ProgramProto) -> Program:
    if not 1 <= msg.frac_bits <= 30:
        raise SerdeError(f"frac_bits must be between 1 and 30, got {msg.frac_bits}")
    if len(msg.nodes) > MAX_PROGRAM_NODES:
        raise SerdeError(f"program has {len(msg.nodes)} nodes, more than the limit of {MAX_PROGRAM_NODES}")
    nodes = tuple(Node(n.id, n.op, tuple(n.inputs), {k: _attr_from_proto(v) for k, v in n.attrs.items()},
                       _shape(n.shape, f"shape of node {n.id}"), n.name, n.source,
                       tuple(_shape(s.values, f"shape of node {n.id}") for s in n.extra_shapes)) for n in msg.nodes)
    if len(msg.output_scales) != len(msg.outputs):
        raise SerdeError(f"{len(msg.output_scales)} output scales for {len(msg.outputs)} outputs")
    return Program(nodes, tuple(msg.outputs), tuple(msg.output_scales), msg.frac_bits)


def spec_to_proto(spec: Spec) -> pb.CorrelationSpec:
    return pb.CorrelationSpec(kind=spec.kind, shapes=[pb.IntList(values=list(s)) for s in spec.shapes],
                              params=dict(spec.params))


def spec_from_proto(msg: pb.CorrelationSpec) -> Spec:
    shapes = tuple(tuple(s.values) for s in msg.shapes)
    if any(d < 0 for s in shapes for d in s):
        raise SerdeError(f"negative dimension in correlation shapes {shapes}")
    return Spec(msg.kind, shapes, tuple(sorted(msg.params.items())))


def stats_to_proto(s: JobStats) -> pb.JobStatsProto:
    return pb.JobStatsProto(offline_s=s.offline_s, online_s=s.online_s, rounds=s.rounds, bytes_sent=s.bytes_sent,
                            messages_sent=s.messages_sent, dealer_bytes=s.dealer_bytes, n_correlations=s.n_correlations,
                            phases=s.phases, round_bytes=[b for row in s.round_sizes for b in row],
                            ready_ahead_s=s.ready_ahead_s, offline_wait_s=s.offline_wait_s)


def stats_from_proto(m: pb.JobStatsProto, n_parties: int = 0) -> JobStats:
    sizes = list(m.round_bytes)
    if sizes and (not n_parties or len(sizes) % n_parties):
        raise SerdeError(f"{len(sizes)} round byte counts are not whole rounds of {n_parties} parties")
    rows = [sizes[k:k + n_parties] for k in range(0, len(sizes), n_parties)] if sizes else []
    return JobStats(m.offline_s, m.online_s, m.rounds, m.bytes_sent, m.messages_sent, m.dealer_bytes, m.n_correlations,
                    dict(m.phases), rows, m.ready_ahead_s, m.offline_wait_s)


class OutputInfo(NamedTuple):
    """Run's description of one output, sent before its bytes (mpc.net.outputs)."""
    node: int
    plaintext: bool  # opened to the sending party; otherwise its share for the caller
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int


def output_event(node: int, plaintext: bool, t: torch.Tensor) -> pb.JobEvent:
    name = str(t.dtype).removeprefix("torch.")
    return pb.JobEvent(output=pb.OutputInfo(node=node, plaintext=plaintext, dtype=name, shape=list(t.shape),
                                            total_bytes=t.numel() * t.element_size()))


def stats_event(stats: JobStats) -> pb.JobEvent:
    return pb.JobEvent(stats=stats_to_proto(stats))


def error_event(message: str) -> pb.JobEvent:
    return pb.JobEvent(error=message)


def job_event_from_bytes(data, n_parties: int = 0) -> tuple[str, OutputInfo | JobStats | str]:
    """("output", OutputInfo), ("stats", JobStats) or ("error", message) from a serialized
    JobEvent; an output's size must be what its dtype and shape need."""
    msg = pb.JobEvent()
    try:
        msg.ParseFromString(bytes(data))
    except Exception as exc:  # protobuf raises DecodeError, a bare Exception subclass
        raise SerdeError(f"job event does not parse: {exc}") from None
    kind = msg.WhichOneof("event")
    if kind == "error":
        return kind, msg.error
    if kind == "stats":
        return kind, stats_from_proto(msg.stats, n_parties)
    if kind != "output":
        raise SerdeError("empty job event")
    o = msg.output
    dtype = _DTYPES.get(o.dtype)
    if dtype is None:
        raise SerdeError(f"output node {o.node} has unknown dtype {o.dtype!r}")
    shape = _shape(o.shape, f"shape of output node {o.node}")
    need = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if o.total_bytes != need:
        raise SerdeError(f"output node {o.node} declares {o.total_bytes} bytes; {o.dtype} of shape {shape} is {need}")
    return kind, OutputInfo(o.node, o.plaintext, dtype, shape, need)


def job_to_proto(job: Job, inputs: dict[int, torch.Tensor] | None = None) -> pb.JobRequest:
    return pb.JobRequest(job_id=job.job_id, program=job.program, owners=job.owners, kept=job.kept,
                         recipients=list(job.recipients), keep=job.keep, free=list(job.free),
                         inputs={k: tensor_to_proto(v) for k, v in (inputs or {}).items()},
                         public={k: tensor_to_proto(v) for k, v in job.public.items()},
                         profile=job.profile, replay=list(job.replay), sources=job.sources,
                         reproducible=job.reproducible, granted=job.granted)


def job_from_proto(m: pb.JobRequest) -> tuple[Job, dict[int, torch.Tensor]]:
    if not m.job_id:
        raise SerdeError("job request without a job id")
    if len(m.program) != 64:
        raise SerdeError(f"job {m.job_id} names program {m.program!r}, not a SHA-256 digest")
    job = Job(m.job_id, m.program, dict(m.owners), dict(m.kept), tuple(m.recipients), dict(m.keep), tuple(m.free),
              {k: tensor_from_proto(v) for k, v in m.public.items()}, m.profile, tuple(m.replay), dict(m.sources),
              m.reproducible, dict(m.granted))
    return job, {k: tensor_from_proto(v) for k, v in m.inputs.items()}


def inputs_from_uploads(program: Program, uploads: dict[int, bytearray], shares: set[int] = frozenset()
                        ) -> dict[int, torch.Tensor]:
    """Uploaded payloads as tensors shaped as the program's input nodes: float64 plaintext
    for an input this party owns, int64 for a share of an input the caller shared itself."""
    out = {}
    for nid, buf in uploads.items():
        node = program.nodes[nid] if 0 <= nid < len(program.nodes) else None
        if node is None or node.op != "input":
            raise SerdeError(f"upload for node {nid}, which is not an input of the program")
        if len(buf) != math.prod(node.shape) * 8:
            raise SerdeError(f"upload for input node {nid} has {len(buf)} bytes; shape {node.shape} needs "
                             f"{math.prod(node.shape) * 8}")
        dtype = torch.int64 if nid in shares else torch.float64
        out[nid] = torch.frombuffer(buf, dtype=dtype).reshape(node.shape) if buf else torch.empty(node.shape, dtype=dtype)
    return out


def checkpoint_request_to_proto(directory: str, step: int, job_hash: str, handles: dict[str, int]) -> pb.CheckpointRequest:
    return pb.CheckpointRequest(directory=directory, step=step, job_hash=job_hash, handles=handles)


def checkpoint_request_from_proto(m: pb.CheckpointRequest) -> tuple[str, int, str, dict[str, int]]:
    if not m.directory:
        raise SerdeError("checkpoint request without a directory")
    if len(m.job_hash) != 64:
        raise SerdeError(f"checkpoint request names job {m.job_hash!r}, not a SHA-256 digest")
    return m.directory, int(m.step), m.job_hash, dict(m.handles)


def checkpoint_query_to_proto(directory: str, job_hash: str) -> pb.CheckpointQuery:
    return pb.CheckpointQuery(directory=directory, job_hash=job_hash)


def checkpoint_query_from_proto(m: pb.CheckpointQuery) -> tuple[str, str]:
    if not m.directory:
        raise SerdeError("checkpoint query without a directory")
    return m.directory, m.job_hash


def checkpoint_list_to_proto(steps: list[int], refused: list[str]) -> pb.CheckpointList:
    return pb.CheckpointList(steps=steps, refused=refused)


def checkpoint_list_from_proto(m: pb.CheckpointList) -> tuple[list[int], list[str]]:
    return list(m.steps), list(m.refused)
