"""`compile_model`: from a PyTorch model and an example input to a CompiledModel, with no
cluster at all.

The pipeline is capture (torch.export to registry ops) -> replace (optional MPC-friendly
layers) -> BatchNorm folding -> public-weight specialisation (when the model is public)
-> extract (pruning, deferred truncation, canonical numbering) -> validate. The
CompiledModel holds the reusable Program, the model owner's plaintext parameter values
for the program's parameter inputs (to be secret-shared by their owner, never sent), the
input and output shapes, the captured ATen op set, and the per-layer cost report
`explain`. It also refuses inputs and state dicts that do not fit, before anything is
sent to any party.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import torch

from mpc.compiler.capture import INPUT_NAME, capture
from mpc.compiler.cost import estimate
from mpc.compiler.extract import extract
from mpc.compiler.passes import bn_fold, public_weights, replace as replace_pass
from mpc.compiler.registry import CompileError
from mpc.compiler.validate import validate
from mpc.ir import Program


@dataclass
class CompiledModel:
    program: Program
    params: dict[str, torch.Tensor]  # parameter input node name -> plaintext value (the owner's)
    input_name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]  # of the first output; output_shapes for a model with several heads
    ops: frozenset[str]  # the captured ATen op set
    public: bool = False
    replace: dict = field(default_factory=dict)
    _model: torch.nn.Module | None = field(default=None, repr=False)
    _example: torch.Tensor | None = field(default=None, repr=False)

    @property
    def output_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(self.program.nodes[o].shape) for o in self.program.outputs]

    @property
    def input_node(self) -> int:
        return next(n.id for n in self.program.inputs if n.name == self.input_name)

    def param_nodes(self) -> dict[str, int]:
        return {n.name: n.id for n in self.program.inputs if n.name in self.params}

    def check_input(self, x) -> torch.Tensor:
        """The input as a tensor, or a ValueError naming both shapes when it does not fit."""
        if not isinstance(x, torch.Tensor):
            raise CompileError(f"the input must be a torch.Tensor, got {type(x).__name__}")
        if tuple(x.shape) != tuple(self.input_shape):
            raise CompileError(f"input of shape {tuple(x.shape)} does not fit the model, compiled for input shape "
                               f"{tuple(self.input_shape)}")
        if not x.is_floating_point():
            raise CompileError(f"the input must be a floating-point tensor, got dtype {x.dtype}")
        return x

    def load_state_dict(self, state: dict) -> None:
        """Take new weights (same architecture): checked against the model, then compiled
        again so that folding and public weights use them."""
        if self._model is None:
            raise CompileError("this compiled model keeps no module to load a state dict into")
        check_state_dict(self._model, state)
        model = copy.deepcopy(self._model)
        model.load_state_dict(state)
        fresh = compile_model(model, self._example, public=self.public, replace=self.replace,
                              frac_bits=self.program.frac_bits)
        self.program, self.params = fresh.program, fresh.params

    def explain(self, n_parties: int = 3) -> str:
        return explain(self.program, n_parties)


def check_state_dict(model: torch.nn.Module, state: dict) -> None:
    """CompileError naming the parameter (and both shapes) when `state` does not fit `model`."""
    if not isinstance(state, dict):
        raise CompileError(f"a state dict must be a dict of tensors, got {type(state).__name__}")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise CompileError(f"state dict lacks parameter {missing[0]!r} of shape {tuple(expected[missing[0]].shape)}"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if unexpected:
        raise CompileError(f"state dict has parameter {unexpected[0]!r}, which the model does not have")
    for key, want in expected.items():
        got = state[key]
        if not isinstance(got, torch.Tensor):
            raise CompileError(f"state dict entry {key!r} is a {type(got).__name__}, not a tensor")
        if tuple(got.shape) != tuple(want.shape):
            raise CompileError(f"state dict parameter {key!r} has shape {tuple(got.shape)}, the model expects "
                               f"{tuple(want.shape)}")


def _unique_param_names(program: Program) -> Program:
    """Rename repeated input names (a weight used in two derived forms) name#2, name#3..."""
    seen: set[str] = set()
    nodes = []
    for node in program.nodes:
        if node.op == "input" and node.name in seen:
            k = 2
            while f"{node.name}#{k}" in seen:
                k += 1
            node = dataclasses.replace(node, name=f"{node.name}#{k}")
        if node.op == "input":
            seen.add(node.name)
        nodes.append(node)
    return Program(tuple(nodes), program.outputs, program.output_scales, program.frac_bits)


def compile_model(model: torch.nn.Module, example: torch.Tensor, *, public: bool = False,
                  replace: dict | None = None, frac_bits: int = 16, trainable: bool = False) -> CompiledModel:
    """Compile `model` for inputs shaped like `example` into a CompiledModel. Starts nothing.

    With `trainable`, every parameter (and BatchNorm's running statistics) is an input named
    and shaped as in the state dict (no folding: BatchNorm is computed on shares), so
    weights a training job left at the parties serve it directly."""
    replace = replace_pass.check(replace)
    if trainable and public:
        raise CompileError("a trainable layout is for secret weights: public=True does not apply")
    captured = capture(model, example, frac_bits, trainable=trainable)
    graph = replace_pass.apply(captured.graph, replace)
    # a trainable layout's weights are kept shares (a training job's): BatchNorm is computed, not folded
    graph = bn_fold.apply_secret(graph) if trainable else bn_fold.apply(graph)
    if public:
        graph = public_weights.apply(graph)
    extracted = extract(graph.builder, graph.outputs)
    program = _unique_param_names(extracted.program)
    validate(program)
    params = {}
    for node in program.inputs:
        gid = extracted.graph_ids[node.id]
        if gid in graph.params:
            params[node.name] = graph.params[gid]
        elif gid != graph.input_id:
            raise CompileError(f"{node.describe()} is an input with no value")
    if any(n.op == "batch_norm" for n in program.nodes):
        raise CompileError("a batch_norm node survived folding")  # the folding pass must remove every one
    return CompiledModel(program, params, INPUT_NAME, captured.input_shape, captured.output_shape,
                         captured.aten_ops, public, replace, model, example.detach().clone())


compile = compile_model  # mpc.compile


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _ops_cell(ops: list[str], limit: int = 4) -> str:
    return ",".join(ops) if len(ops) <= limit else ",".join(ops[:limit - 1]) + f",+{len(ops) - limit + 1}"


def explain(program: Program, n_parties: int = 3) -> str:
    """Per layer (module path): secure multiplications, comparisons, rounds, online bytes
    sent per party (the busiest party) and dealer bytes, predicted at compile time."""
    cost = estimate(program, n_parties)
    layers: dict[str, dict] = {}
    for node in program.nodes:
        if node.op == "input":
            continue
        row = layers.setdefault(node.name or "(top level)", {"ops": [], "products": 0, "comparisons": 0,
                                                            "rounds": set(), "bytes": [0] * n_parties,
                                                            "dealer": 0})
        c = cost.per_node[node.id]
        if node.op not in row["ops"]:
            row["ops"].append(node.op)
        row["products"] += c.products
        row["comparisons"] += c.comparisons
        row["rounds"] |= c.rounds
        row["bytes"] = [a + b for a, b in zip(row["bytes"], c.bytes_sent)]
        row["dealer"] += c.dealer_bytes
    header = ("layer", "ops", "mults", "comparisons", "rounds", "online/party", "dealer")
    lines = [(name, _ops_cell(r["ops"]), str(r["products"]), str(r["comparisons"]), str(len(r["rounds"])),
              _fmt_bytes(max(r["bytes"])), _fmt_bytes(r["dealer"])) for name, r in layers.items()]
    lines.append(("total", "", str(cost.products), str(cost.comparisons), str(cost.rounds),
                  _fmt_bytes(max(cost.bytes_sent)), _fmt_bytes(cost.dealer_bytes)))
    widths = [max(len(row[k]) for row in [header, *lines]) for k in range(len(header))]
    text = [f"program {program.digest[:12]}: {len(program.nodes)} nodes, {n_parties} parties"]
    for k, row in enumerate([header, *lines]):
        if k == len(lines):  # before the total
            text.append("-" * (sum(widths) + 2 * (len(widths) - 1)))
        text.append("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    return "\n".join(text)
