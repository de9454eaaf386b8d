"""The lazy secret tensor API and the clusters that run it.

Operations on SecretTensor only build a graph (shapes are checked at once, before anything
is sent); `reveal()` compiles what the requested outputs need into a plan and the parties
execute it, so independent operations share rounds. Inputs and revealed results stay at
the parties as shares, so a later reveal reuses them instead of recomputing.

    with mpc.LocalCluster(n_parties=3) as cluster:      # dealer + 3 party processes, gRPC
        x = cluster.share(torch.randn(4, 5), owner=0)
        w = cluster.share(torch.randn(5, 2), owner=1)
        y = (x @ w) * 2 + x.sum()
        print(y.reveal())

`InMemoryCluster` runs the same parties in this process over an in-memory transport.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import torch

from mpc import ring
from mpc import torch_api
from mpc.api_functions import FunctionsMixin
from mpc.api_methods import TensorMethodsMixin
from mpc.compiler import CompileError, GraphBuilder, extract
from mpc.compiler.ops import encode_index
from mpc.compiler.owned import owned_products, unshared_inputs
from mpc.inference import InferenceMixin, SharedModel
from mpc.lifetimes import FreedError, LifetimesMixin
from mpc.training import TrainingMixin
from mpc.ir import TO_ALL, TO_CALLER, Job, Node, Program
from mpc.net.memory import MemoryNetwork
from mpc.net.outputs import Outcomes, sum_shares
from mpc.runtime.jobs import JobError, JobStats
from mpc.runtime.session import PartySession

Public = torch.Tensor | float | int


class MPCError(RuntimeError):
    """A job failed at one or more parties; the message says which and why."""


@dataclass
class _Pending:
    owner: int
    value: torch.Tensor


class SecretTensor(TensorMethodsMixin, FunctionsMixin):
    """A secret-shared tensor: a node in the cluster's graph. Ops follow torch semantics."""

    __array_priority__ = 1000  # let our reflected operators win over numpy's

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        """torch.*, torch.nn.functional.* and tensor methods given a secret tensor anywhere
        in their arguments: see mpc.torch_api (an unsupported one raises TypeError)."""
        return torch_api.dispatch(func, args, kwargs or {})

    def __init__(self, cluster: "_Cluster", node: Node):
        self._cluster = cluster
        self._node = node
        self._known: torch.Tensor | None = None  # the plaintext of cluster.public(): cheap checks use it
        self._cell = cluster._track(self, node.id)  # its node, and what the node needs, live as long as this tensor

    def __copy__(self):
        # through __init__, so that the copy is tracked too: its node then lives as long as it does
        out = SecretTensor(self._cluster, self._node)
        out._known = self._known
        return out

    def __deepcopy__(self, memo):
        return self.__copy__()  # a node is immutable: a copy may share it

    # -- introspection ---------------------------------------------------------------------------

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self._node.shape)

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return len(self._node.shape)

    def numel(self) -> int:
        return self.shape.numel()

    def __repr__(self) -> str:
        return f"SecretTensor(shape={tuple(self.shape)}, node={self._node.id}, op={self._node.op})"

    # -- building ----------------------------------------------------------------------------------

    def _new(self, op: str, inputs: tuple["SecretTensor", ...], **attrs) -> "SecretTensor":
        for t in inputs:
            if t._cluster is not self._cluster:
                raise ValueError("secret tensors from different clusters cannot be combined")
        node = self._cluster._builder.add(op, tuple(t._node.id for t in inputs), attrs)
        return SecretTensor(self._cluster, node)

    def __bool__(self):
        raise TypeError("the truth value of a SecretTensor is secret: Python `if`/`while`/`and` cannot branch on it. "
                        "Use torch.where(cond, a, b) (or x.where(cond, y)) to select without revealing, or "
                        "reveal() the condition if it may be made public")

    @staticmethod
    def _public(value: Public) -> torch.Tensor:
        t = torch.as_tensor(value, dtype=torch.float64) if not isinstance(value, torch.Tensor) else value.to(torch.float64)
        ring.check_encodable(t, what="public operand")
        return t

    def __add__(self, other):
        if isinstance(other, SecretTensor):
            return self._new("add", (self, other))
        return self._new("add_public", (self,), value=self._public(other))

    __radd__ = __add__

    def __sub__(self, other):
        if isinstance(other, SecretTensor):
            return self._new("sub", (self, other))
        return self._new("add_public", (self,), value=-self._public(other))

    def __rsub__(self, other):
        return (-self) + other

    def __neg__(self):
        return self._new("neg", (self,))

    def __mul__(self, other):
        if isinstance(other, SecretTensor):
            return self._new("mul", (self, other))
        return self._new("mul_public", (self,), value=self._public(other))

    __rmul__ = __mul__

    def __matmul__(self, other):
        if isinstance(other, SecretTensor):
            return self._new("matmul", (self, other))
        return self._new("matmul_public", (self,), value=self._public(other), side="right")

    def __rmatmul__(self, other):
        return self._new("matmul_public", (self,), value=self._public(other), side="left")

    def sum(self, dim=None, keepdim: bool = False):
        return self._new("sum", (self,), dims=self._dims(dim), keepdim=keepdim)

    def mean(self, dim=None, keepdim: bool = False):
        return self._new("mean", (self,), dims=self._dims(dim), keepdim=keepdim)

    def _dims(self, dim) -> tuple[int, ...]:
        if dim is None:
            return ()
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
        return tuple(d % self.dim() if self.dim() else d for d in dims)

    def reshape(self, *shape):
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)) else shape
        return self._new("reshape", (self,), shape=tuple(int(s) for s in shape))

    view = reshape

    def flatten(self, start_dim: int = 0, end_dim: int = -1):
        meta = torch.empty(self.shape, device="meta").flatten(start_dim, end_dim)
        return self.reshape(meta.shape)

    def unsqueeze(self, dim: int):
        return self.reshape(torch.empty(self.shape, device="meta").unsqueeze(dim).shape)

    def squeeze(self, dim: int | None = None):
        meta = torch.empty(self.shape, device="meta")
        return self.reshape((meta.squeeze() if dim is None else meta.squeeze(dim)).shape)

    def transpose(self, dim0: int, dim1: int):
        return self._new("transpose", (self,), dim0=dim0, dim1=dim1)

    @property
    def T(self):
        return self.permute(*reversed(range(self.dim())))

    def permute(self, *dims):
        dims = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        return self._new("permute", (self,), dims=tuple(dims))

    def expand(self, *shape):
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)) else shape
        return self._new("expand", (self,), shape=tuple(shape))

    def __getitem__(self, key):
        return self._new("getitem", (self,), index=encode_index(key))

    def conv2d(self, weight, stride=1, padding=0, dilation=1, groups: int = 1):
        return conv2d(self, weight, stride=stride, padding=padding, dilation=dilation, groups=groups)

    # -- revealing -----------------------------------------------------------------------------------

    def reveal(self, to: int | str | None = None) -> torch.Tensor | None:
        """The plaintext, to the caller (default), to party `to`, or to "all" parties."""
        return self._cluster.reveal(self, to=to)[0]


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def conv2d(x: SecretTensor, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1) -> SecretTensor:
    """torch.nn.functional.conv2d on a secret input with a secret (or public) kernel."""
    attrs = dict(stride=_pair(stride), padding=_pair(padding), dilation=_pair(dilation), groups=groups)
    if not isinstance(weight, SecretTensor):
        weight = x._cluster.public(weight)
    out = x._new("conv2d", (x, weight), **attrs)
    if bias is not None:
        out = out + (bias.reshape(1, -1, 1, 1) if isinstance(bias, SecretTensor) else torch.as_tensor(bias).reshape(1, -1, 1, 1))
    return out


def cat(tensors, dim: int = 0) -> SecretTensor:
    tensors = list(tensors)
    return tensors[0]._new("cat", tuple(tensors), dim=dim)


def stack(tensors, dim: int = 0) -> SecretTensor:
    tensors = list(tensors)
    return tensors[0]._new("stack", tuple(tensors), dim=dim)


# -- clusters -----------------------------------------------------------------------------------------


class _Cluster(InferenceMixin, TrainingMixin, LifetimesMixin):
    """What both clusters share: the graph, sharing, and turning outcomes into plaintexts.

    Graph node ids double as handles of the values the parties keep: inputs and revealed
    results stay at the parties, so a later reveal reuses them instead of recomputing."""

    def __init__(self, n_parties: int, frac_bits: int, defer_truncation: bool = True):
        if not 2 <= n_parties:
            raise ValueError(f"a cluster needs at least 2 parties, got {n_parties}")
        self.n_parties = n_parties
        self.frac_bits = frac_bits
        self.defer_truncation = defer_truncation  # see compiler.passes.truncation
        self._builder = GraphBuilder(frac_bits)
        self._available: set[int] = set()  # graph nodes whose shares the parties keep
        self._double: set[int] = set()  # of those, kept untruncated at scale 2^2f
        self._pending: dict[int, _Pending] = {}  # private inputs not yet shared
        self.last_stats: list[JobStats] = []
        self.last_program: Program | None = None
        self.last_job: Job | None = None  # its owners, for compiler.estimate(..., owners=...)
        self._shared_models: dict[tuple, SharedModel] = {}
        self._init_lifetimes()
        self.profiling = False  # when set, jobs of reveal() time their phases at every party (JobStats.phases)

    def _new_handle(self) -> int:
        """A fresh id for a value the parties keep (graph node ids are handles too)."""
        return self._builder.new_id()

    def share(self, value: torch.Tensor, owner: int = 0) -> SecretTensor:
        """Secret-share `value`, owned by party `owner`. Only that party ever receives it."""
        if not 0 <= owner < self.n_parties:
            raise ValueError(f"owner must be a party id in 0..{self.n_parties - 1}, got {owner}")
        value = torch.as_tensor(value)
        ring.check_encodable(value, self.frac_bits, what=f"input owned by party {owner}")
        node = self._builder.input(value.shape)
        self._pending[node.id] = _Pending(owner, value.detach().to(torch.float64, copy=True))  # its value now, in one copy
        return SecretTensor(self, node)

    def public(self, value: Public) -> SecretTensor:
        """A public tensor as a (trivial) sharing: party 0 adds it to a zero share."""
        value = torch.as_tensor(value, dtype=torch.float64)
        zero = self._builder.input(value.shape)
        self._pending[zero.id] = _Pending(0, torch.zeros_like(value))
        out = SecretTensor(self, zero) + value
        out._known = value
        return out

    def reveal(self, *tensors: SecretTensor, to: int | str | None = None) -> list[torch.Tensor | None]:
        """Reveal several tensors in one job (their rounds are shared)."""
        recipient = TO_CALLER if to is None else TO_ALL if to == "all" else int(to)
        if recipient >= self.n_parties or recipient < TO_ALL:
            raise ValueError(f"cannot reveal to party {recipient} of {self.n_parties}")
        for t in tensors:
            if t._cluster is not self:
                raise ValueError("cannot reveal a secret tensor of another cluster")
        self._sweep()
        self._check_not_freed([t._node.id for t in tensors])
        extracted = extract(self._builder, [t._node.id for t in tensors], self._available, self._double,
                            self.defer_truncation)
        program, graph_ids = extracted.program, extracted.graph_ids
        job, inputs = self._job(program, graph_ids, recipient)
        job.free = self._take_drop()  # values no live tensor reaches: dropped by the parties after this job
        outcomes = self._run_with_drop(lambda: self._execute(program, job, inputs), job.free)
        self.last_program, self.last_job = program, job
        self.last_stats = [o.stats for o in outcomes]
        kept = {graph_ids[k] for k in job.keep}
        self._available |= kept
        self._double -= kept
        self._double |= {graph_ids[k] for k, scale in zip(program.outputs, program.output_scales) if scale == 2}
        for g in kept:
            self._pending.pop(g, None)
        results, start = [], time.perf_counter()
        for k, scale in zip(program.outputs, program.output_scales):
            if recipient == TO_CALLER:  # the parties' shares, summed as they came: decoded in place
                results.append(outcomes.value(k, self.frac_bits * scale))
            else:
                holder = 0 if recipient == TO_ALL else recipient
                results.append(outcomes[holder].plaintexts.get(k))
        self.last_decode_s = time.perf_counter() - start  # the caller decoding the summed shares
        return results

    def _job(self, program: Program, graph_ids: list[int], recipient: int) -> tuple[Job, dict]:
        """The job running `program` on this cluster's inputs and kept values; each private
        input's value goes to its owner only."""
        owners, kept, keep = {}, {}, {}
        inputs: dict[int, dict[int, torch.Tensor]] = {p: {} for p in range(self.n_parties)}
        for node in program.inputs:
            g = graph_ids[node.id]
            if node.attrs["kind"] == "kept":
                kept[node.id] = g
                if node.attrs.get("truncate"):
                    keep[node.id] = g  # the truncated share replaces the one at 2^2f
            else:
                pending = self._pending[g]
                owners[node.id] = pending.owner
                inputs[pending.owner][node.id] = pending.value
                keep[node.id] = g
        # An input that only products of two parties' inputs read is never shared (compiler/owned.py):
        # nothing to keep; if a later job uses it, that job shares it from its owner again.
        for nid in unshared_inputs(program, owned_products(program, owners)):
            keep.pop(nid, None)
        for k in program.outputs:
            keep[k] = graph_ids[k]
        job = Job(uuid.uuid4().hex, program.digest, owners, kept, tuple(recipient for _ in program.outputs), keep,
                  profile=self.profiling)
        return job, inputs

    def _execute(self, program: Program, job: Job, inputs) -> Outcomes:
        """Run the job; every party's outcome, and the sums of the shares revealed to the caller."""
        raise NotImplementedError

    def _execute_many(self, items, depth: int = 2, hold: bool = False):
        """Run (program, job, inputs) items in order, yielding each one's outcomes. Here one
        after the other; a ClusterClient overlaps each job's offline phase with the previous
        job's online phase (`depth`, `hold`: see ClusterClient._execute_many)."""
        for program, job, inputs in items:
            yield self._execute(program, job, inputs)


class InMemoryCluster(_Cluster):
    """N parties in this process over the in-memory transport (for fast tests)."""

    def __init__(self, n_parties: int = 3, frac_bits: int = ring.DEFAULT_FRAC_BITS, *,
                 defer_truncation: bool = True):
        super().__init__(n_parties, frac_bits, defer_truncation)
        net = MemoryNetwork(n_parties)
        self.sessions = [PartySession(net.transport(p), net.dealer(p)) for p in range(n_parties)]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def _execute(self, program, job, inputs):
        async def go():
            for s in self.sessions:
                await s.load(program)
            await asyncio.gather(*(s.submit(job, inputs[p]) for p, s in enumerate(self.sessions)))
            return await asyncio.gather(*(s.run(job.job_id) for s in self.sessions))

        return sum_shares(asyncio.run(go()))

    # Checkpoints: each session reads and writes only its own shares, as a party process does.
    def _save_checkpoint(self, p, directory, step, job_hash, handles):
        return self.sessions[p].save_checkpoint(directory, step, job_hash, handles)

    def _load_checkpoint(self, p, directory, step, job_hash, handles):
        try:
            return self.sessions[p].load_checkpoint(directory, step, job_hash, handles)
        except JobError as exc:
            raise MPCError(str(exc)) from None

    def _list_checkpoints(self, p, directory, job_hash):
        return self.sessions[p].list_checkpoints(directory, job_hash)


__all__ = ["SecretTensor", "InMemoryCluster", "MPCError", "CompileError", "FreedError", "conv2d", "cat", "stack"]
