"""Lifetimes of the values the parties keep: freed at every party when nothing refers to them.

A value the parties keep (an input or a revealed result of the SecretTensor API, a model's
weights, a training state, a shared data set) lives as long as something on the caller's side
refers to it. For SecretTensors that is tracked by reference counts per graph node: every
SecretTensor registers a `weakref.finalize` that, when the tensor is garbage-collected, queues
its node id (the callback only appends to a deque, so it is safe wherever the collector runs;
an in-place op that rebinds a tensor to a new node moves its count).
A sweep, run before every job of the API and by `collect()`, keeps the graph nodes that a live
tensor can still reach (descending through inputs, but not below values the parties hold,
since a later job reads those instead of recomputing them) and drops the rest from the
graph builder; the kept values among the dropped ones go on the drop list, sent to the parties
as `Job.free` with the next job (they drop them after that job). So the graph builder and
every party's store stay bounded by what live tensors can still use. `free(*tensors)` and
`free_model(...)` free at once (a job with no nodes carries the list); a tensor freed
explicitly while the caller still holds it, or anything computed from it, refuses to be
revealed and names the freed node.
"""

from __future__ import annotations

import collections
import uuid
import weakref

from mpc.ir import Job, Program, ancestors


class FreedError(RuntimeError):
    """A job would read a value that was freed."""


class LifetimesMixin:
    """Mixed into the clusters: needs `_builder`, `_available`, `_double`, `_pending`, `_execute`."""

    def _init_lifetimes(self) -> None:
        self._refs: dict[int, int] = {}  # graph node -> live SecretTensors on it
        self._dead: collections.deque = collections.deque()  # node ids of collected tensors, not yet counted
        self._drop: list[int] = []  # handles the parties drop with the next job
        self._freed: dict[int, str] = {}  # node -> description, freed by free() while tensors still refer to it

    def _track(self, tensor, nid: int) -> list[int]:
        """Count `tensor` as a reference to node `nid`; returns the cell holding its node id
        (an in-place op rebinds a tensor to a new node: `_retrack` moves the count)."""
        cell = [nid]
        self._refs[nid] = self._refs.get(nid, 0) + 1
        # The callback holds only the deque and the cell: a tensor must not keep its cluster's
        # state alive longer, and at its death the cell names the node it refers to by then.
        weakref.finalize(tensor, self._dead.append, cell).atexit = False
        return cell

    def _retrack(self, cell: list[int], nid: int) -> None:
        self._dead.append([cell[0]])  # the old node loses this reference (counted at the next sweep)
        self._refs[nid] = self._refs.get(nid, 0) + 1
        cell[0] = nid

    def _inputs_of(self, nid: int):
        return self._builder.nodes[nid].inputs

    def _sweep(self) -> None:
        """Drop graph nodes no live tensor can reach; queue their kept values for freeing."""
        while self._dead:
            nid = self._dead.popleft()[0]
            left = self._refs.get(nid, 0) - 1
            if left > 0:
                self._refs[nid] = left
            else:
                self._refs.pop(nid, None)
        stop = self._holds_or_freed
        needed = set(ancestors(list(self._refs), self._inputs_of, stop))
        unused = self._available - needed
        self._drop.extend(sorted(unused))
        self._available -= unused
        self._double &= self._available
        nodes = self._builder.nodes
        for nid in [n for n in nodes if n not in needed]:
            del nodes[nid]
            self._pending.pop(nid, None)
            self._freed.pop(nid, None)

    def _holds_or_freed(self, nid: int) -> bool:
        return nid in self._available or nid in self._freed

    def _check_not_freed(self, roots: list[int]) -> None:
        """Refuse a reveal that would need a value freed by free() (it cannot be recomputed
        safely: its private inputs may be gone, and the caller asked for it to be gone)."""
        if not self._freed:
            return
        for nid in ancestors(roots, self._inputs_of, self._holds_or_freed):
            if nid in self._freed:
                raise FreedError(f"{self._freed[nid]} was freed by cluster.free(): it cannot be used by a later job")

    def _take_drop(self) -> tuple[int, ...]:
        drop, self._drop = tuple(self._drop), []
        return drop

    def _run_with_drop(self, run, drop: tuple[int, ...]):
        """Run a job that carries `drop` as its free list; if it fails, the handles are sent
        again with the next job (freeing twice is harmless, never freeing is a leak)."""
        try:
            return run()
        except BaseException:
            self._drop[:0] = drop
            raise

    # -- what users call ---------------------------------------------------------------------------------

    def collect(self) -> int:
        """Free now, at every party, the kept values that no live SecretTensor can reach (a job
        with no nodes carries the list); returns how many handles were freed."""
        self._sweep()
        return self._flush()

    def free(self, *tensors) -> int:
        """Free these tensors' values at every party now, even if the caller still holds the
        tensors: using one of them (or anything computed from it) later raises FreedError."""
        for t in tensors:
            nid = t._node.id
            if t._cluster is not self:
                raise ValueError("cannot free a secret tensor of another cluster")
            if nid in self._available:
                self._available.discard(nid)
                self._double.discard(nid)
                self._drop.append(nid)
            self._pending.pop(nid, None)
            self._freed[nid] = f"SecretTensor node {nid} ({self._builder.nodes[nid].op}, shape {tuple(t.shape)})"
        return self.collect()

    def free_model(self, model) -> int:
        """Free a SharedModel's weights, a TrainResult's weights and optimizer state, or a
        SharedData's features and labels at every party now."""
        handles = set()
        for attr in ("handles", "x_handle", "y_handle"):
            value = getattr(model, attr, None)
            handles |= set(value.values()) if isinstance(value, dict) else {value} if value is not None else set()
        shared = getattr(model, "shared", None)
        if shared is not None:
            handles |= set(shared.handles.values())
            model = shared
        for key in [k for k, v in self._shared_models.items() if v is model]:
            del self._shared_models[key]
        self._drop.extend(sorted(handles))
        return self._flush()

    def _flush(self) -> int:
        if not self._drop:
            return 0
        drop = self._take_drop()
        program = Program((), (), (), self.frac_bits)
        job = Job(uuid.uuid4().hex, program.digest, free=drop)
        inputs = {p: {} for p in range(self.n_parties)}
        self._run_with_drop(lambda: self._execute(program, job, inputs), drop)
        return len(drop)
