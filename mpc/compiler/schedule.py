"""Scheduling: which protocol steps of a program share each communication round.

Every node's lowering is a protocol generator. `drive` advances all of them together
until each is blocked on an `Open`, hands the round's Opens out as one `Round` (round
fusion: independent branches, such as a residual block's two paths, share rounds), then
resumes them with the opened values. Local work that becomes ready inside a round runs
in the same round. The order depends only on the program, so every party, the executor
and the cost model see the same schedule.

`drive` is a plain generator, so the executor runs it over a network (awaiting each
round) and the cost model runs it on `meta` tensors at compile time, with no cluster.
"""

from __future__ import annotations

import inspect
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from mpc.ir import Program
from mpc.protocols.base import InputMask, Open, Randomness


@dataclass
class Round:
    """The Opens of one round, each with the node whose protocol asked for it."""

    opens: list[Open] = field(default_factory=list)
    nodes: list[int] = field(default_factory=list)


@dataclass
class _Task:
    node: int
    gen: object
    seq: int = 0


def drive(program: Program, start: Callable, answer_randomness: Callable, answer_mask: Callable):
    """Run `program`; a generator that yields each `Round` and receives its opened values.

    start(node, input values) returns the node's value or a protocol generator;
    answer_randomness(node, seq, spec) and answer_mask(node, request) answer the
    protocols' other requests. Returns every node's value (a tuple for multi-output ops).
    """
    users = program.consumers()
    waiting = {n.id: len(n.inputs) for n in program.nodes}
    values: dict[int, object] = {}
    runnable: deque = deque()

    def begin(nid):
        out = start(program.nodes[nid], [values[i] for i in program.nodes[nid].inputs])
        runnable.append((_Task(nid, out) if inspect.isgenerator(out) else (nid, out), None))

    def finish(nid, value):
        values[nid] = value
        for user in users[nid]:
            waiting[user] -= 1
            if waiting[user] == 0:
                begin(user)

    for nid, count in waiting.items():
        if count == 0:
            begin(nid)
    while True:
        blocked: list[tuple[_Task, object]] = []
        while runnable:
            task, reply = runnable.popleft()
            if not isinstance(task, _Task):  # finished without a generator
                finish(*task)
                continue
            try:
                request = task.gen.send(reply)
                while not isinstance(request, (Open, list)):
                    if isinstance(request, Randomness):
                        reply = answer_randomness(task.node, task.seq, request.spec)
                        task.seq += 1
                    elif isinstance(request, InputMask):
                        reply = answer_mask(task.node, request)
                    else:
                        raise TypeError(f"protocol at node {task.node} yielded {type(request).__name__}")
                    request = task.gen.send(reply)
                blocked.append((task, request))
            except StopIteration as stop:
                finish(task.node, stop.value)
        if not blocked:
            return values
        round_ = Round()
        for task, req in blocked:
            for op in (req if isinstance(req, list) else [req]):
                round_.opens.append(op)
                round_.nodes.append(task.node)
        opened = iter((yield round_))
        for task, req in blocked:  # a list of Opens (from protocols.base.gather) gets a list back
            runnable.append((task, [next(opened) for _ in req] if isinstance(req, list) else next(opened)))
