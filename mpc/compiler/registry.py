"""The op registry: one entry per IR op, with its shape rule, lowering and gradient rule.

Both paths into the compiler use this one table: `SecretTensor` methods (and, through
`__torch_function__`, torch functions) and model capture from `torch.export`. An entry:

- `shape(attrs, *meta inputs) -> meta tensor` (or a tuple, for ops with several outputs):
  runs on `meta` tensors, so broadcasting and argument checks follow torch exactly;
- `lower(ctx, attrs, *shares) -> shares | protocol generator`: what one party runs;
- `grad`: the reverse-mode rule, `(builder, node, grad_outputs) -> grad_inputs`; left
  empty until training fills it;
- `n_outputs`: an op may return several values (ReLU with its comparison bit, max-pool
  with its argmax); consumers select one with the `take` op.

Cost is not a separate hand-written rule per op: the cost model (cost.py) runs each
lowering symbolically on `meta` tensors, so the predicted rounds and bytes are those of
the protocol code that will run, by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


class CompileError(ValueError):
    """A plan or an operation that cannot be compiled: unknown op, bad shapes or attrs."""


@dataclass(frozen=True)
class OpDef:
    name: str
    arity: int | None  # None: any number of inputs
    shape: Callable
    lower: Callable
    grad: Callable | None = None
    n_outputs: int = 1
    doc: str = ""


OPS: dict[str, OpDef] = {}


def register(name: str, arity: int | None, shape: Callable, lower: Callable, *, n_outputs: int = 1,
             doc: str = "") -> OpDef:
    if name in OPS:
        raise ValueError(f"op {name!r} is registered twice")
    OPS[name] = OpDef(name, arity, shape, lower, None, n_outputs, doc)
    return OPS[name]


def local(name: str, arity: int | None, fn: Callable, doc: str = "") -> OpDef:
    """An op that each party applies to its own shares: linear, no communication."""
    return register(name, arity, fn, lambda ctx, attrs, *xs: fn(attrs, *xs), doc=doc)


def set_grad(name: str, rule: Callable) -> None:
    """Attach the reverse-mode rule of op `name` (used by the training compiler)."""
    op = OPS[name]
    OPS[name] = OpDef(op.name, op.arity, op.shape, op.lower, rule, op.n_outputs, op.doc)


def lookup(op: str, where: str) -> OpDef:
    opdef = OPS.get(op)
    if opdef is None:
        raise CompileError(f"unknown op '{op}' at {where}; supported: {', '.join(sorted(OPS))}")
    return opdef


def infer_shapes(op: str, attrs: dict, input_shapes: list[tuple[int, ...]], where: str) -> tuple[tuple[int, ...], ...]:
    """The output shapes of op on inputs of `input_shapes`, or a CompileError naming the
    op, `where` (the node) and both shapes."""
    opdef = lookup(op, where)
    if opdef.arity is not None and len(input_shapes) != opdef.arity:
        raise CompileError(f"{op} at {where} takes {opdef.arity} inputs, got {len(input_shapes)}")
    metas = [torch.empty(s, dtype=torch.int64, device="meta") for s in input_shapes]
    try:
        out = opdef.shape(attrs, *metas)
    except CompileError as exc:
        raise CompileError(f"{op} at {where}: {exc}") from None
    except (RuntimeError, ValueError, IndexError, TypeError, KeyError) as exc:
        shapes = " and ".join(str(tuple(s)) for s in input_shapes) or "no inputs"
        raise CompileError(f"{op} at {where}: shapes {shapes} do not fit: {exc}") from None
    outs = out if isinstance(out, tuple) else (out,)
    if len(outs) != opdef.n_outputs:
        raise CompileError(f"{op} at {where}: shape rule gave {len(outs)} outputs, op has {opdef.n_outputs}")
    return tuple(tuple(o.shape) for o in outs)
