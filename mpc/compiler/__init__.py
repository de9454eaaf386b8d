"""The compiler: a layer of its own that needs no cluster.

graph.py builds nodes (both SecretTensor and model capture use it); the registry holds
every op's shape rule, lowering and gradient rule; extract.py and passes/ turn a graph
into a Program; schedule.py fuses rounds; cost.py predicts rounds and bytes at compile
time; validate.py is what a party checks in a program it is sent.
"""

from mpc.compiler import layer_ops, nonlinear_ops, ops, train_ops  # noqa: F401  (register their ops)
from mpc.compiler.cost import Cost, estimate
from mpc.compiler.extract import Extracted, extract
from mpc.compiler.graph import GraphBuilder
from mpc.compiler.registry import OPS, CompileError, infer_shapes
from mpc.compiler.validate import validate

__all__ = ["OPS", "CompileError", "Cost", "Extracted", "GraphBuilder", "estimate", "extract", "infer_shapes",
           "validate"]
