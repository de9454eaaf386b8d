"""The model graph that capture produces and passes transform, and the copy-and-replace
walk that every model pass is written with.

A `ModelGraph` is a GraphBuilder graph plus what only the compiler knows about it: which
input node is the user's input, which input nodes are the model owner's parameters and
their plaintext values (float64), and the output node. A pass never edits nodes in place
(they are immutable and may be shared): `Rewriter` copies the graph in node order into a
fresh builder, asking the pass's `visit` for each node whether to replace it. Nodes that
a replacement leaves unused are dropped later by pruning in `extract`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from mpc.compiler.graph import GraphBuilder
from mpc.ir import Node


@dataclass
class ModelGraph:
    builder: GraphBuilder
    input_id: int
    output: int
    params: dict[int, torch.Tensor] = field(default_factory=dict)  # param input node -> plaintext value
    extra_outputs: tuple[int, ...] = ()  # the other outputs of a model with several (heads)

    @property
    def outputs(self) -> list[int]:
        return [self.output, *self.extra_outputs]

    def users(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {nid: [] for nid in self.builder.nodes}
        for node in self.builder.nodes.values():
            for i in node.inputs:
                out[i].append(node.id)
        return out


class Rewriter:
    """Copies `graph` node by node into a new builder; `visit(rw, node)` may build a
    replacement (returning its new id) or return None to copy the node unchanged."""

    def __init__(self, graph: ModelGraph):
        self.graph = graph
        self.old = graph.builder.nodes
        self.new = GraphBuilder(graph.builder.frac_bits)
        self.mapped: dict[int, int] = {}
        self.params: dict[int, torch.Tensor] = {}
        self.users = graph.users()

    def __getitem__(self, old_id: int) -> int:
        return self.mapped[old_id]

    def is_param(self, old_id: int) -> bool:
        return old_id in self.graph.params

    def value(self, old_id: int) -> torch.Tensor:
        return self.graph.params[old_id]

    def add(self, op: str, inputs, attrs: dict, like: Node) -> int:
        """A new node with the name and source line of the node `like` it stands for."""
        return self.new.add(op, tuple(inputs), attrs, name=like.name, source=like.source).id

    def param(self, value: torch.Tensor, name: str, source: str = "") -> int:
        node = self.new.input(tuple(value.shape), name=name, kind="private", source=source)
        self.params[node.id] = value
        return node.id

    def copy(self, node: Node) -> int:
        if node.op == "input":
            new = self.new.add("input", (), node.attrs, name=node.name, source=node.source).id
            if node.id in self.graph.params:
                self.params[new] = self.graph.params[node.id]
            return new
        return self.add(node.op, (self.mapped[i] for i in node.inputs), node.attrs, node)

    def run(self, visit: Callable[["Rewriter", Node], int | None]) -> ModelGraph:
        for nid in sorted(self.old):  # ids grow in creation order: inputs come first
            node = self.old[nid]
            new = visit(self, node)
            self.mapped[nid] = self.copy(node) if new is None else new
        return ModelGraph(self.new, self.mapped[self.graph.input_id], self.mapped[self.graph.output], self.params,
                          tuple(self.mapped[o] for o in self.graph.extra_outputs))
