import pytest
import torch

from mpc import compiler
from mpc.compiler.ops import decode_index, encode_index
from mpc.ir import Node, Output, Plan
from mpc.net import serde


def _plan(*nodes, outputs=None):
    return Plan(list(nodes), outputs or [Output(nodes[-1].id)], n_parties=3)


def test_unknown_op_names_op_and_node():
    plan = _plan(Node(1, "input", (), {"owner": 0, "shape": (2,)}, (2,)), Node(2, "frobnicate", (1,), {}, (2,)))
    with pytest.raises(compiler.CompileError, match="unknown op 'frobnicate' at node 2"):
        compiler.validate(plan)


def test_declared_shape_is_checked():
    plan = _plan(Node(1, "input", (), {"owner": 0, "shape": (2, 3)}, (2, 3)), Node(2, "sum", (1,), {"dims": (0,), "keepdim": False}, (2,)))
    with pytest.raises(compiler.CompileError, match=r"declared shape \(2,\), computed \(3,\)"):
        compiler.validate(plan)


def test_stored_value_must_exist():
    with pytest.raises(compiler.CompileError, match="node 7 refers to a stored value"):
        compiler.validate(_plan(Node(7, "stored", (), {}, (2,))))


@pytest.mark.parametrize("key", [1, (slice(None), 2), (Ellipsis, None, slice(1, None, 2)), (0, -1)])
def test_index_encoding_round_trips(key):
    t = torch.arange(24).reshape(2, 3, 4)
    assert torch.equal(t[decode_index(encode_index(key))], t[key])


def test_unsupported_index_is_refused():
    with pytest.raises(compiler.CompileError, match="unsupported index"):
        encode_index(torch.tensor([0, 1]))


def test_plan_round_trips_through_protobuf():
    plan = _plan(Node(1, "input", (), {"owner": 1, "shape": (2, 2)}, (2, 2)),
                 Node(2, "mul_public", (1,), {"value": torch.tensor([0.5, -1.0])}, (2, 2)),
                 Node(3, "getitem", (2,), {"index": encode_index((slice(None), 0))}, (2,)),
                 outputs=[Output(3, -2)])
    back = serde.plan_from_proto(serde.plan_to_proto(plan))
    assert [(n.id, n.op, n.inputs, n.shape) for n in back.nodes] == [(n.id, n.op, n.inputs, n.shape) for n in plan.nodes]
    assert torch.equal(back.nodes[1].attrs["value"], plan.nodes[1].attrs["value"])
    assert back.nodes[0].attrs == {"owner": 1, "shape": (2, 2)}
    assert back.outputs == plan.outputs
    compiler.validate(back)


def test_malformed_tensor_is_refused():
    msg = serde.tensor_to_proto(torch.zeros(3, dtype=torch.float64))
    msg.shape[:] = [4]
    with pytest.raises(serde.SerdeError, match="needs 32 bytes, got 24"):
        serde.tensor_from_proto(msg)
