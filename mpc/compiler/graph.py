"""The graph builder: the one place where IR nodes are made.

`SecretTensor` (a thin handle on a node) and model capture both build through a
`GraphBuilder`. Every node's shape is checked when it is added, so a shape mismatch is
reported with both shapes, the node and the user's source line before anything is
sent. `extract` turns the part of the graph that some outputs need into a `Program`.
"""

from __future__ import annotations

import itertools
import os
import sys

from mpc.compiler.registry import CompileError, infer_shapes
from mpc.ir import Node

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SKIP = (_PACKAGE_DIR + os.sep, os.path.dirname(os.__file__) + os.sep)


def user_source(depth: int = 2) -> str:
    """`file:line` of the innermost frame outside this package, torch and the stdlib."""
    frame = sys._getframe(depth)
    while frame is not None:
        path = frame.f_code.co_filename
        if not path.startswith(_SKIP) and f"{os.sep}torch{os.sep}" not in path and not path.startswith("<"):
            return f"{os.path.relpath(path) if not path.startswith('..') else path}:{frame.f_lineno}"
        frame = frame.f_back
    return ""


class GraphBuilder:
    """Nodes under construction; ids are unique within the builder."""

    def __init__(self, frac_bits: int = 16):
        self.frac_bits = frac_bits
        self.nodes: dict[int, Node] = {}
        self._ids = itertools.count(1)

    def new_id(self) -> int:
        """A fresh id: for a node, or for anything that must not collide with one."""
        return next(self._ids)

    def add(self, op: str, inputs: tuple[int, ...] = (), attrs: dict | None = None, *, name: str = "",
            source: str | None = None) -> Node:
        attrs = dict(attrs or {})
        inputs = tuple(int(i) for i in inputs)
        nid = self.new_id()
        source = user_source() if source is None else source
        where = Node(nid, op, inputs, attrs, (), name, source).describe()
        for i in inputs:
            if i not in self.nodes:
                raise CompileError(f"{where} uses node {i}, which is not in this graph")
        if op == "take":
            src = self.nodes[inputs[0]]
            outs = (src.shape, *src.extra_shapes)
            k = attrs.get("index")
            if not isinstance(k, int) or not 0 <= k < len(outs):
                raise CompileError(f"{where}: {src.describe()} has {len(outs)} outputs, no output {k!r}")
            shapes = (outs[k],)
        else:
            multi = [self.nodes[i] for i in inputs if self.nodes[i].extra_shapes]
            if multi:
                raise CompileError(f"{where} uses {multi[0].describe()}, which has several outputs: select one "
                                   "with 'take'")
            shapes = infer_shapes(op, attrs, [self.nodes[i].shape for i in inputs], where)
        node = Node(nid, op, inputs, attrs, shapes[0], name, source, shapes[1:])
        self.nodes[nid] = node
        return node

    def input(self, shape, *, name: str = "", kind: str = "private", source: str | None = None) -> Node:
        return self.add("input", (), {"shape": tuple(int(s) for s in shape), "kind": kind}, name=name,
                        source=user_source() if source is None else source)
