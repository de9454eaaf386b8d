"""The cost model: rounds, bytes and dealer material of a program, known at compile time.

`estimate` runs the program's schedule symbolically on `meta` tensors, once per party,
answering every `Randomness` request with placeholders and every `Open` with nothing.
Because it runs the very lowerings the parties run, the prediction is exact: rounds on
the critical path, bytes each party sends (an Open to all costs its size once per peer;
an Open to party k costs each other party its size once; an Open from some parties only
costs only them) and the dealer's correction bytes. Each is also attributed to the node
whose protocol caused it, and `explain` groups nodes into layers. A job adds one round
for outputs opened to parties.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from mpc.compiler import schedule
from mpc.compiler.lower import starter
from mpc.ir import TO_CALLER, Program
from mpc.protocols import correlations, scatter
from mpc.protocols.base import Spec
from mpc.protocols.holders import OWNED

_PRODUCTS = ("mul", "matmul", "conv2d", "conv_transpose2d", "conv2d_weight", "square", *OWNED)


@dataclass
class NodeCost:
    rounds: set[int] = field(default_factory=set)  # the rounds in which this node opens something
    bytes_sent: list[int] = field(default_factory=list)  # per party
    dealer_bytes: int = 0
    products: int = 0  # secure multiplications (elements of Beaver products)
    comparisons: int = 0  # compared elements


@dataclass
class Cost:
    n_parties: int
    rounds: int = 0  # online rounds of the program on the critical path
    bytes_sent: list[int] = field(default_factory=list)  # per party, online
    dealer_bytes: int = 0  # what the dealer sends (to party 0) in all
    specs: list[tuple[int, int, Spec]] = field(default_factory=list)  # correlations in request order
    per_node: dict[int, NodeCost] = field(default_factory=dict)
    output_round: bool = False  # one more round opens outputs addressed to parties

    @property
    def total_rounds(self) -> int:
        return self.rounds + int(self.output_round)

    @property
    def products(self) -> int:
        return sum(c.products for c in self.per_node.values())

    @property
    def comparisons(self) -> int:
        return sum(c.comparisons for c in self.per_node.values())


def _open_bytes(op, pid: int, n_parties: int) -> int:
    if not op.sends(pid):
        return 0
    size = sum(v.numel() * v.element_size() for v in op.values)
    if op.to is None:
        return size * (n_parties - 1)
    return 0 if op.to == pid else size


def _run(program: Program, pid: int, n_parties: int, cost: Cost, owners: dict[int, int] | None) -> None:
    specs: list[tuple[int, int, Spec]] = []

    def randomness(node, seq, spec):
        specs.append((node, seq, spec))
        return correlations.meta_part(spec, pid)

    def mask(node, request):
        return torch.empty(request.shape, dtype=torch.int64, device="meta")

    start = starter(program, pid, n_parties, dry_run=True, extras={"owners": owners} if owners else None)
    gen = schedule.drive(program, start, randomness, mask)
    rounds, reply = 0, None
    try:
        while True:
            round_ = gen.send(reply)
            split = scatter.splits(round_.opens, n_parties)  # two rounds, fewer bytes (protocols/scatter.py)
            for op, nid in zip(round_.opens, round_.nodes):
                node_cost = cost.per_node[nid]
                node_cost.rounds.update(range(rounds, rounds + (2 if split else 1)))
                node_cost.bytes_sent[pid] += scatter.bytes_sent([op], pid, n_parties) if split \
                    else _open_bytes(op, pid, n_parties)
            reply = [scatter.dry_reply(op, pid, n_parties, split) for op in round_.opens]
            rounds += 2 if split else 1
    except StopIteration:
        pass
    if pid == 0:
        cost.rounds, cost.specs = rounds, specs
        for nid, _, spec in specs:
            node_cost = cost.per_node[nid]
            node_cost.dealer_bytes += correlations.correction_nbytes(spec)
            if spec.kind in _PRODUCTS:
                node_cost.products += math.prod(correlations.dependent_parts(spec)[0].shape)
            elif spec.kind == "bilinear_train":  # a layer's forward product and its backward products
                node_cost.products += sum(math.prod(p.shape) for p in correlations.dependent_parts(spec))
            elif spec.kind == "cmp":
                node_cost.comparisons += math.prod(spec.shapes[0])
        cost.dealer_bytes = sum(c.dealer_bytes for c in cost.per_node.values())
    elif rounds != cost.rounds or [s for _, _, s in specs] != [s for _, _, s in cost.specs]:
        raise AssertionError(f"party {pid}'s schedule differs from party 0's: protocols must not branch on pid "
                             "in what they open or request")


def estimate(program: Program, n_parties: int, recipients: tuple[int, ...] | None = None,
             owners: dict[int, int] | None = None) -> Cost:
    """Predicted online cost of one run of `program` with `n_parties` parties; with `owners`
    (private input node -> party), as a job of those owners runs it (compiler/owned.py)."""
    if n_parties < 2:
        raise ValueError(f"a program runs on at least 2 parties, got {n_parties}")
    cost = Cost(n_parties, bytes_sent=[0] * n_parties)
    cost.per_node = {n.id: NodeCost(bytes_sent=[0] * n_parties) for n in program.nodes}
    for pid in range(n_parties):
        _run(program, pid, n_parties, cost, owners)
    if recipients is not None:
        opened = [(nid, to) for nid, to in zip(program.outputs, recipients) if to != TO_CALLER]
        cost.output_round = bool(opened)
        for nid, to in opened:
            size = math.prod(program.nodes[nid].shape) * 8
            for pid in range(n_parties):
                cost.per_node[nid].bytes_sent[pid] += size * (n_parties - 1) if to < 0 else (0 if to == pid else size)
    for pid in range(n_parties):
        cost.bytes_sent[pid] = sum(c.bytes_sent[pid] for c in cost.per_node.values())
    return cost
