"""Model capture: an `nn.Module` and an example input become a ModelGraph of registry ops.

The model is captured with `torch.export.export` and decomposed to the core ATen op set
(`run_decompositions()`). We chose torch.export over torch.fx symbolic tracing because:
core ATen is a small, versioned, documented op set (about 180 ops) into which every
`nn` layer, `torch.nn.functional` call and tensor method is already decomposed, so one
handler per ATen op covers all three forms a user may write (torch.fx traces at the
module/function level, where `F.conv2d`, `nn.Conv2d`, `x.flatten()` and `torch.flatten`
are different call targets); export runs the model on fake tensors, so every node
carries its exact output shape and dtype, its module path (`nn_module_stack`) and the
user's source line (`stack_trace`); parameters and buffers arrive as named graph inputs;
and data-dependent control flow is refused by export with a reason and the user's line,
where fx symbolic tracing stops with a generic error about a Proxy in an `if`. No ONNX:
it is the path that breaks on every torch release.

Values during capture are of three kinds: `Secret` (a graph node that depends on the
user's input), `Owned` (a plaintext tensor computed from the model owner's parameters,
buffers and constants only: computed eagerly, here, with the same ATen op) and Python
scalars. An Owned value becomes a parameter input node (kind "private", named after the
parameter it comes from) only where it meets a secret value; so `permute(fc.weight)` of
a Linear layer costs nothing and the "fc.weight" node holds the transposed weight. The
per-op handlers are in aten_table.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import traceback
import warnings
from dataclasses import dataclass

import torch

from mpc.compiler.graph import GraphBuilder
from mpc.compiler.passes.rewrite import ModelGraph
from mpc.compiler.registry import CompileError

INPUT_NAME = "input"


@dataclass(frozen=True)
class Secret:
    """A graph node computed from the user's input."""

    id: int


@dataclass(eq=False)
class Owned:
    """A plaintext tensor derived only from the model owner's parameters and constants."""

    value: torch.Tensor
    name: str


@dataclass(frozen=True)
class Unavailable:
    """An output of an ATen op that the compiler does not compute (max-pool indices, ...)."""

    what: str


@dataclass
class Captured:
    graph: ModelGraph
    aten_ops: frozenset[str]  # every call target in the exported graph
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


_FRAME = re.compile(r'File "([^"]+)", line (\d+)')
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def source_line(fx_node) -> str:
    """`file:line` of the innermost frame of the node's stack trace outside torch and mpc."""
    for path, line in reversed(_FRAME.findall(fx_node.meta.get("stack_trace") or "")):
        if not _is_user_file(path):
            continue
        rel = os.path.relpath(path)
        return f"{path if rel.startswith('..') else rel}:{line}"
    return ""


def module_path(fx_node) -> str:
    stack = fx_node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return re.sub(r"^L\['self'\]\.?", "", path)


def target_name(target) -> str:
    return "getitem" if getattr(target, "__name__", "") == "getitem" and not hasattr(target, "_schema") else str(target)


class CaptureContext:
    """What an ATen handler sees: the builder, the node being translated, and helpers that
    turn values into graph nodes."""

    def __init__(self, builder: GraphBuilder):
        self.builder = builder
        self.params: dict[int, torch.Tensor] = {}
        # Keyed by the Owned object itself (hashed by identity), which keeps it alive: an id()
        # key could be reused by a later temporary and return the wrong parameter.
        self._materialized: dict[Owned, int] = {}
        self._names: set[str] = {INPUT_NAME}
        self.fx_node = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The exported node's output shape (first output for multi-output ops)."""
        val = self.fx_node.meta["val"]
        return tuple(int(s) for s in (val[0] if isinstance(val, (tuple, list)) else val).shape)

    def where(self) -> str:
        node = self.fx_node
        text = f"graph node '{node.name}'"
        if module_path(node):
            text += f" in module '{module_path(node)}'"
        return text + (f" at {source_line(node)}" if source_line(node) else "")

    def add(self, op: str, inputs, attrs: dict | None = None) -> Secret:
        node = self.builder.add(op, tuple(self.node(v) for v in inputs), attrs or {},
                                name=module_path(self.fx_node), source=source_line(self.fx_node))
        return Secret(node.id)

    def node(self, value) -> int:
        """The graph node of a secret value; an Owned value becomes a parameter input node."""
        if isinstance(value, Secret):
            return value.id
        if isinstance(value, Owned):
            if value not in self._materialized:
                name, k = value.name, 1
                while name in self._names:
                    k += 1
                    name = f"{value.name}#{k}"
                self._names.add(name)
                tensor = value.value.detach().to(torch.float64)
                nid = self.builder.input(tuple(tensor.shape), name=name, kind="private", source="").id
                self._materialized[value] = nid
                self.params[nid] = tensor
            return self._materialized[value]
        if isinstance(value, Unavailable):
            raise CompileError(f"{self.where()} uses {value.what}, which the compiler does not compute")
        raise CompileError(f"{self.where()}: expected a tensor, got {value!r}")


def _plain(value):
    if isinstance(value, Owned):
        return value.value
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _flat(values):
    for v in values:
        if isinstance(v, (list, tuple)):
            yield from _flat(v)
        else:
            yield v


def _eager(fx_node, args, kwargs):
    """Run a node whose inputs are all plaintext (the owner's parameters, constants)."""
    unavailable = [v for v in _flat([*args, *kwargs.values()]) if isinstance(v, Unavailable)]
    if unavailable:
        raise CompileError(f"graph node '{fx_node.name}' uses {unavailable[0].what}, which the compiler does not compute")
    names = [v.name for v in _flat([*args, *kwargs.values()]) if isinstance(v, Owned)]
    name = "+".join(dict.fromkeys(names)) or f"{module_path(fx_node) + '.' if module_path(fx_node) else ''}{fx_node.name}"
    out = fx_node.target(*_plain(args), **{k: _plain(v) for k, v in kwargs.items()})
    if isinstance(out, torch.Tensor):
        return Owned(out.detach().to(torch.float64) if out.is_floating_point() else out.detach(), name)
    if isinstance(out, (tuple, list)):
        return tuple(Owned(o, name) if isinstance(o, torch.Tensor) else o for o in out)
    return out


@contextlib.contextmanager
def _quiet_torch_logs():
    """torch.export logs whole graphs at WARNING when it refuses a model; our error says it."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _data_dependent(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}"
    return any(k in text for k in ("data-dependent", "DataDependent", "GuardOnDataDependent", "control flow"))


def _is_user_file(path: str) -> bool:
    return not (f"{os.sep}torch{os.sep}" in path or path.startswith(_PACKAGE_DIR) or path.startswith("<")
                or os.sep + "site-packages" + os.sep in path or path.startswith(os.path.dirname(os.__file__)))


def _user_frames(text: str) -> list[str]:
    return [f"{path}:{line}" for path, line in _FRAME.findall(text) if _is_user_file(path)]


def export(model: torch.nn.Module, example: torch.Tensor):
    """torch.export of the model in eval mode, decomposed to core ATen, or a CompileError."""
    if not isinstance(model, torch.nn.Module):
        raise CompileError(f"compile expects a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example, torch.Tensor):
        raise CompileError(f"the example input must be a torch.Tensor, got {type(example).__name__}")
    if not example.is_floating_point():
        raise CompileError(f"the example input must be a floating-point tensor, got dtype {example.dtype}")
    # The example only fixes shapes: trace in the model's own float dtype (values are
    # fixed-point in MPC whatever the dtype), so a float64 input fits a float32 model.
    dtypes = {p.dtype for p in list(model.parameters()) + list(model.buffers()) if p.is_floating_point()}
    if len(dtypes) == 1:
        example = example.to(dtypes.pop())
    was_training = model.training
    try:
        with _quiet_torch_logs(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)  # torch's own
            return torch.export.export(model.eval(), (example.detach(),)).run_decompositions()
    except Exception as exc:  # export raises many unrelated types; all mean "cannot capture"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = _user_frames(str(exc)) or [f"{f.filename}:{f.lineno}" for f in traceback.extract_tb(exc.__traceback__)
                                           if _is_user_file(f.filename)]
        at = f" at {where[-1]}" if where else ""
        if _data_dependent(exc):
            raise CompileError(
                f"the model's control flow depends on the value of a tensor{at}, which is secret in MPC "
                f"(torch.export: {reason}). Hint: compute both branches and select with torch.where(cond, a, b), "
                "or remove the data-dependent branch; Python `if` cannot look at a secret value") from None
        raise CompileError(f"torch.export could not capture the model{at}: {type(exc).__name__}: {reason}") from None
    finally:
        model.train(was_training)


def _placeholders(ep, cx: "CaptureContext", example: torch.Tensor, trainable: bool) -> dict[str, object]:
    builder = cx.builder
    env: dict[str, object] = {}
    user_inputs = []
    for spec in ep.graph_signature.input_specs:
        arg = spec.arg.name
        if trainable and spec.kind == torch.export.graph_signature.InputKind.PARAMETER:
            # Training: a parameter is a secret from the start, shaped as the module holds it,
            # so that its gradient and update are of the parameter itself.
            value = ep.state_dict[spec.target].detach().to(torch.float64)
            node = builder.input(tuple(value.shape), name=spec.target, kind="private", source="")
            cx.params[node.id] = value
            cx._names.add(spec.target)
            env[arg] = Secret(node.id)
        elif spec.kind == torch.export.graph_signature.InputKind.USER_INPUT:
            node = builder.input(tuple(example.shape), name=INPUT_NAME, kind="private", source="")
            env[arg] = Secret(node.id)
            user_inputs.append(arg)
        elif spec.target in ep.state_dict:
            env[arg] = Owned(ep.state_dict[spec.target].detach().to(torch.float64), spec.target)
        elif spec.target in ep.constants:
            value = ep.constants[spec.target]
            if not isinstance(value, torch.Tensor):
                raise CompileError(f"model input {spec.target!r} is a {type(value).__name__}, not a tensor")
            env[arg] = Owned(value.detach().to(torch.float64) if value.is_floating_point() else value, spec.target)
        else:
            raise CompileError(f"model input {arg!r} of kind {spec.kind.name} is not supported")
    if len(user_inputs) != 1:
        raise CompileError(f"the model must take exactly one tensor input, it takes {len(user_inputs)}")
    return env


def capture(model: torch.nn.Module, example: torch.Tensor, frac_bits: int = 16, trainable: bool = False) -> Captured:
    """Export `model` on `example` and translate it into a ModelGraph. With `trainable`,
    every parameter is an input node of its own (named after it, shaped as in the module)."""
    from mpc.compiler.aten_table import HANDLERS  # its handlers use the value classes defined here

    ep = export(model, example)
    builder = GraphBuilder(frac_bits)
    cx = CaptureContext(builder)
    env = _placeholders(ep, cx, example, trainable)
    input_id = next(n.id for n in builder.nodes.values() if n.op == "input" and n.name == INPUT_NAME)
    aten_ops: set[str] = set()
    result = None
    for fx_node in ep.graph.nodes:
        if fx_node.op == "placeholder":
            continue
        if fx_node.op == "output":
            result = fx_node.args[0]
            break
        if fx_node.op != "call_function":
            raise CompileError(f"graph node '{fx_node.name}' is a {fx_node.op}, which capture does not handle")
        name = target_name(fx_node.target)
        aten_ops.add(name)
        args = torch.fx.node.map_arg(fx_node.args, lambda n: env[n.name])
        kwargs = torch.fx.node.map_arg(fx_node.kwargs, lambda n: env[n.name])
        cx.fx_node = fx_node
        if not any(isinstance(v, Secret) for v in _flat([*args, *kwargs.values()])):
            env[fx_node.name] = _eager(fx_node, args, kwargs)
            continue
        handler = HANDLERS.get(name)
        if handler is None:
            raise CompileError(f"unsupported operation {name} on a secret value at {cx.where()}; supported: "
                               f"{', '.join(sorted(HANDLERS))}")
        try:
            value = handler(cx, *args, **kwargs)
        except CompileError:
            raise
        except (TypeError, ValueError, IndexError, KeyError, RuntimeError) as exc:
            raise CompileError(f"cannot translate {name} at {cx.where()}: {type(exc).__name__}: {exc}") from None
        first = value[0] if isinstance(value, tuple) else value
        if isinstance(first, Secret) and builder.nodes[first.id].shape != cx.shape:
            raise CompileError(f"{name} at {cx.where()} became shape {builder.nodes[first.id].shape}, torch.export "
                               f"says {cx.shape}")  # a handler bug: never let a wrong shape through
        env[fx_node.name] = value
    outputs = [torch.fx.node.map_arg(r, lambda n: env[n.name]) for r in (result or ())]
    if not outputs:
        raise CompileError("the model returns nothing")
    for k, out in enumerate(outputs):
        if not isinstance(out, Secret):
            raise CompileError(f"the model's output {k} does not depend on its input: there is nothing to compute "
                               "privately" if len(outputs) > 1 else "the model's output does not depend on its input: "
                               "there is nothing to compute privately")
    out_id = outputs[0].id
    graph = ModelGraph(builder, input_id, out_id, cx.params, tuple(o.id for o in outputs[1:]))
    return Captured(graph, frozenset(aten_ops), tuple(example.shape), tuple(builder.nodes[out_id].shape))
