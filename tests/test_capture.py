"""Model capture, layers and model passes, checked at the compiler level.

Values are checked with the plaintext simulator of capture_models.py, so capture,
BatchNorm folding, public weights and `replace` are checked against the model itself,
independent of MPC (test_capture_mpc.py runs the same programs on shares). The captured ATen op set of every supported model is
written out here so that a torch upgrade that changes it fails at once.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import mpc
from mpc.compiler import CompileError, estimate
from mpc.compiler.model import compile_model
from tests import capture_models
from tests.capture_models import ResidualCNN, models, randomize_bn, reference, simulate

torch.manual_seed(0)
HERE = os.path.relpath(__file__)  # as source lines name it: relative to the working directory


EXPECTED_OPS = {
    "mlp": {"aten.permute.default", "aten.addmm.default", "aten.relu.default"},
    "cnn": {"aten.convolution.default", "aten.relu.default", "aten.avg_pool2d.default", "aten.view.default",
            "aten.permute.default", "aten.addmm.default"},
    "residual": {"aten.convolution.default", "aten._native_batch_norm_legit_no_training.default", "getitem",
                 "aten.relu.default", "aten.max_pool2d_with_indices.default", "aten.add.Tensor",
                 "aten._adaptive_avg_pool2d.default", "aten.view.default", "aten.permute.default",
                 "aten.addmm.default"},
    "conv1d": {"aten.convolution.default", "aten._native_batch_norm_legit_no_training.default", "getitem",
               "aten.relu.default", "aten.view.default", "aten.permute.default", "aten.addmm.default"},
    "misc": {"aten.permute.default", "aten.addmm.default", "aten.sigmoid.default", "aten.tanh.default",
             "aten.mul.Tensor", "aten.add.Tensor", "aten.cat.default", "aten._softmax.default",
             "aten._log_softmax.default", "aten.sub.Tensor", "aten.view.default", "aten.expand.default",
             "aten.bmm.default", "aten.div.Tensor", "aten.clone.default", "aten.mean.dim",
             "aten.sum.dim_IntList", "aten.slice.Tensor", "aten.exp.default"},
    "functional": {"aten.convolution.default", "aten._native_batch_norm_legit_no_training.default", "getitem",
                   "aten.relu.default", "aten.max_pool2d_with_indices.default", "aten.avg_pool2d.default",
                   "aten.add.Tensor", "aten._adaptive_avg_pool2d.default", "aten.clone.default", "aten.view.default",
                   "aten.permute.default", "aten.addmm.default", "aten.sigmoid.default", "aten.slice.Tensor",
                   "aten.tanh.default", "aten.mean.default", "aten.sum.dim_IntList", "aten.unsqueeze.default",
                   "aten.div.Tensor", "aten.select.int", "aten._softmax.default", "aten._log_softmax.default",
                   "aten.mul.Tensor", "aten.squeeze.dims", "aten.full.default", "aten.mm.default",
                   "aten.cat.default", "aten.exp.default", "aten.clamp.default", "aten.repeat.default",
                   "aten.hardtanh.default"},
}


# -- (a) op sets --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED_OPS))
def test_captured_aten_op_set(name):
    model, x = models()[name]
    assert set(compile_model(model, x).ops) == EXPECTED_OPS[name]


# -- (b) values --------------------------------------------------------------------------------------


@pytest.mark.parametrize("public", [False, True])
@pytest.mark.parametrize("name", sorted(EXPECTED_OPS))
def test_program_computes_the_model(name, public):
    model, x = models()[name]
    compiled = compile_model(model, x, public=public)
    assert compiled.output_shape == tuple(reference(model, x).shape)
    assert compiled.input_shape == tuple(x.shape)
    torch.testing.assert_close(simulate(compiled, x), reference(model, x), atol=1e-6, rtol=1e-6)
    assert model.training  # compile restores the caller's mode


def test_weights_stay_private_unless_public():
    model, x = models()["cnn"]
    private, public = compile_model(model, x), compile_model(model, x, public=True)
    names = {n.name for n in private.program.inputs}
    assert names == {"input", "0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias", "9.weight", "9.bias"}
    assert set(private.params) == names - {"input"}
    assert torch.equal(private.params["7.weight"], model[7].weight.detach().double().T)  # as the program uses it
    for node in private.program.nodes:  # weights are never program attributes
        assert not any(isinstance(v, torch.Tensor) and v.numel() > 1 for v in node.attrs.values()), node.describe()
    assert public.params == {} and [n.name for n in public.program.inputs] == ["input"]
    assert {n.op for n in public.program.nodes} >= {"conv2d_public", "matmul_public", "add_public"}
    assert not {"conv2d", "matmul"} & {n.op for n in public.program.nodes}


def test_nodes_carry_module_names_and_source_lines():
    model, x = models()["residual"]
    nodes = compile_model(model, x).program.nodes
    models_file = os.path.relpath(capture_models.__file__)
    conv1 = next(n for n in nodes if n.op == "conv2d" and n.name == "conv1")
    assert conv1.source.startswith(models_file + ":")
    line = int(conv1.source.split(":")[1])
    with open(models_file) as f:
        assert "self.conv1(x)" in f.read().splitlines()[line - 1]
    assert any(n.op == "max_pool2d" and n.name == "pool" for n in nodes)
    assert any(n.op == "relu" and n.name == "" and n.source.startswith(models_file) for n in nodes)


@pytest.mark.parametrize("option, expected_op, gone", [({"relu": "square"}, "square", "relu"),
                                                       ({"relu": "sigmoid"}, "sigmoid", "relu"),
                                                       ({"maxpool": "avgpool"}, "avg_pool2d", "max_pool2d")])
def test_replace_option(option, expected_op, gone):
    model, x = models()["residual"]
    compiled = compile_model(model, x, replace=option)
    ops = [n.op for n in compiled.program.nodes]
    assert expected_op in ops and gone not in ops
    swapped = copy.deepcopy(model).double().eval()
    if "relu" in option:
        act = (lambda t: t * t) if option["relu"] == "square" else torch.sigmoid
        forward = _residual_forward(swapped, act, swapped.pool)
    else:
        forward = _residual_forward(swapped, F.relu, nn.AvgPool2d(2))
    with torch.no_grad():
        expected = forward(x.double())
    torch.testing.assert_close(simulate(compiled, x), expected, atol=1e-6, rtol=1e-6)


def _residual_forward(m, act, pool):
    def forward(x):
        x = pool(act(m.bn1(m.conv1(x))))
        y = act(m.bn2(m.conv2(x))) + x
        return m.bn4(m.fc(torch.flatten(m.gap(m.bn3(y)), 1)))
    return forward


def test_square_replacement_costs_fewer_rounds():
    model, x = models()["mlp"]
    plain = estimate(compile_model(model, x).program, 3)
    squared = estimate(compile_model(model, x, replace={"relu": "square"}).program, 3)
    assert squared.comparisons == 0 < plain.comparisons
    assert squared.rounds < plain.rounds


def test_load_state_dict_recompiles_with_new_weights():
    model, x = models()["residual"]
    compiled = compile_model(model, x)
    other = randomize_bn(ResidualCNN())
    compiled.load_state_dict(other.state_dict())
    torch.testing.assert_close(simulate(compiled, x), reference(other, x), atol=1e-6, rtol=1e-6)
    assert not torch.equal(simulate(compiled, x), reference(model, x))


def test_mpc_compile_is_exported():
    model, x = models()["mlp"]
    assert mpc.compile is compile_model
    assert mpc.compile(model, x).output_shape == (4, 10)


# -- (c) errors --------------------------------------------------------------------------------------


class Sorts(nn.Module):
    def forward(self, x):
        return torch.sort(x * 2).values


class Branches(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


def _line_of(text):
    with open(__file__) as f:
        return next(k for k, line in enumerate(f.read().splitlines(), 1) if text in line)


def test_unsupported_op_names_op_node_line_and_supported_list():
    with pytest.raises(CompileError) as err:
        compile_model(Sorts(), torch.randn(3, 4))
    msg = str(err.value)
    assert "aten.sort.default" in msg and "graph node 'sort'" in msg
    assert f"{HERE}:{_line_of('torch.sort(x * 2)')}" in msg
    assert "supported:" in msg and "aten.convolution.default" in msg


def test_fft_is_unsupported():
    class Fft(nn.Module):
        def forward(self, x):
            return torch.fft.fft(x).real

    with pytest.raises(CompileError, match=r"unsupported operation aten\._fft_r2c\.default"):
        compile_model(Fft(), torch.randn(4))


def test_data_dependent_control_flow_gets_reason_and_hint():
    with pytest.raises(CompileError) as err:
        compile_model(Branches(), torch.randn(3))
    msg = str(err.value)
    assert "control flow depends on the value" in msg and "torch.where" in msg
    assert "data-dependent" in msg  # torch.export's own reason
    assert f"{HERE}:{_line_of('if x.sum() > 0:')}" in msg


def test_check_input_names_both_shapes():
    model, x = models()["mlp"]
    compiled = compile_model(model, x)
    assert compiled.check_input(torch.randn(4, 784)) is not None
    with pytest.raises(CompileError, match=r"\(4, 785\).*\(4, 784\)"):
        compiled.check_input(torch.randn(4, 785))
    with pytest.raises(CompileError, match="torch.Tensor"):
        compiled.check_input([1.0])


def test_bad_state_dict_names_parameter_and_shapes():
    model, x = models()["mlp"]
    compiled = compile_model(model, x)
    state = model.state_dict()
    with pytest.raises(CompileError, match=r"'2.weight' has shape \(128, 64\), the model expects \(128, 128\)"):
        compiled.load_state_dict({**state, "2.weight": torch.zeros(128, 64)})
    with pytest.raises(CompileError, match="lacks parameter '4.bias' of shape \\(10,\\)"):
        compiled.load_state_dict({k: v for k, v in state.items() if k != "4.bias"})
    with pytest.raises(CompileError, match="'extra'"):
        compiled.load_state_dict({**state, "extra": torch.zeros(1)})


@pytest.mark.parametrize("model, example, message", [
    ("not a module", torch.randn(2), "torch.nn.Module"),
    (nn.Linear(2, 2), [1.0, 2.0], "example input must be a torch.Tensor"),
    (nn.Linear(2, 2), torch.ones(2, 2, dtype=torch.int64), "floating-point"),
])
def test_wrong_arguments_are_refused(model, example, message):
    with pytest.raises(CompileError, match=message):
        compile_model(model, example)


def test_bad_replace_and_uneven_adaptive_pool_are_refused():
    model, x = models()["mlp"]
    with pytest.raises(CompileError, match="unknown layer 'gelu'"):
        compile_model(model, x, replace={"gelu": "square"})
    with pytest.raises(CompileError, match="'relu' can become"):
        compile_model(model, x, replace={"relu": "cube"})
    with pytest.raises(CompileError, match="output size divides the input size"):
        compile_model(nn.AdaptiveAvgPool2d(3), torch.randn(1, 2, 8, 8))


def test_output_must_depend_on_input():
    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return self.w * 2

    with pytest.raises(CompileError, match="does not depend on its input"):
        compile_model(Constant(), torch.randn(3))


# -- (d) cost model ------------------------------------------------------------------------------------


def test_cost_of_mlp_and_public_weights_need_no_matmul_triples():
    model, x = models()["mlp"]
    private, public = compile_model(model, x), compile_model(model, x, public=True)
    cost = estimate(private.program, 3)
    assert cost.rounds > 0 and cost.dealer_bytes > 0 and cost.products > 0
    assert any(spec.kind == "matmul" for _, _, spec in cost.specs)
    public_cost = estimate(public.program, 3)
    assert not any(spec.kind == "matmul" for _, _, spec in public_cost.specs)
    assert public_cost.products == 0
    assert public_cost.rounds < cost.rounds and public_cost.dealer_bytes < cost.dealer_bytes


def test_explain_lists_layers_and_total():
    model, x = models()["cnn"]
    compiled = compile_model(model, x)
    text = compiled.explain(n_parties=3)
    cost = estimate(compiled.program, 3)
    lines = text.splitlines()
    assert lines[1].split()[:5] == ["layer", "ops", "mults", "comparisons", "rounds"]
    rows = {line.split()[0]: line.split() for line in lines[2:] if line and not line.startswith("-")}
    assert set(rows) == {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "total"}
    assert rows["1"][1] == "relu" and int(rows["1"][3]) == 2 * 16 * 24 * 24  # comparisons of the first ReLU
    assert rows["total"][1:3] == [str(cost.products), str(cost.comparisons)]
    assert int(rows["total"][3]) == cost.rounds
    assert rows["2"][1] == "avg_pool2d" and rows["2"][2:4] == ["0", "0"] and int(rows["2"][4]) == 1


# -- (e) BatchNorm folding -------------------------------------------------------------------------------


def test_batch_norm_is_folded():
    model, x = models()["residual"]
    compiled = compile_model(model, x)
    ops = [n.op for n in compiled.program.nodes]
    assert "batch_norm" not in ops
    names = set(compiled.params)
    # bn1 (conv without bias): folded weight plus a shift; bn2 and bn4 into their layer's bias;
    # bn3 follows a residual addition, so it becomes a per-channel scale and shift
    assert {"conv1.weight", "bn1.shift", "conv2.weight", "conv2.bias", "bn3.scale", "bn3.shift",
            "fc.weight", "fc.bias"} == names
    assert ops.count("mul") == 1  # bn3's scale; every other BatchNorm costs nothing
    conv1_w = model.conv1.weight.detach().double()
    bn1 = model.bn1
    s = bn1.weight.detach().double() / torch.sqrt(bn1.running_var.double() + bn1.eps)
    torch.testing.assert_close(compiled.params["conv1.weight"], conv1_w * s.view(-1, 1, 1, 1))


def test_conv1d_batch_norm_folds_through_reshapes():
    model, x = models()["conv1d"]
    compiled = compile_model(model, x)
    assert set(compiled.params) == {"conv.weight", "conv.bias", "grouped.weight", "grouped.bias", "fc.weight",
                                    "fc.bias"}
    assert [n.op for n in compiled.program.nodes].count("conv2d") == 2


# -- programs are reusable -------------------------------------------------------------------------------


def test_private_program_does_not_depend_on_weight_values():
    model, x = models()["residual"]
    compiled = compile_model(model, x)
    digest = compiled.program.digest
    assert compile_model(model, x).program.digest == digest
    compiled.load_state_dict(randomize_bn(ResidualCNN()).state_dict())
    assert compiled.program.digest == digest  # new weights: same program, parties keep their cache
    public = compile_model(model, x, public=True)
    public.load_state_dict(randomize_bn(ResidualCNN()).state_dict())
    assert public.program.digest != compile_model(model, x, public=True).program.digest


def test_a_weight_used_twice_gets_two_named_inputs():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            return (x @ self.w) * self.w.t()[0]

    x = torch.randn(3, 4)
    compiled = compile_model(Tied(), x)
    assert set(compiled.params) == {"w", "w#2"}
    torch.testing.assert_close(simulate(compiled, x), reference(compiled._model, x), atol=1e-6, rtol=1e-6)


def test_unbatched_linear():
    model, x = nn.Linear(3, 2), torch.randn(3)
    compiled = compile_model(model, x)
    assert compiled.output_shape == (2,)
    torch.testing.assert_close(simulate(compiled, x), reference(model, x), atol=1e-6, rtol=1e-6)


def test_leaky_relu_and_integer_casts():
    model, x = nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU(0.2)), torch.randn(2, 4)
    compiled = compile_model(model, x)
    assert [n.op for n in compiled.program.nodes].count("relu") == 1
    torch.testing.assert_close(simulate(compiled, x), reference(model, x), atol=1e-6, rtol=1e-6)

    class Cast(nn.Module):
        def forward(self, x):
            return x.long()

    with pytest.raises(CompileError, match="conversion of a secret value to torch.int64"):
        compile_model(Cast(), torch.randn(3))


def test_public_weights_on_either_side():
    class Sides(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 4))
            self.b = nn.Parameter(torch.randn(3, 5))

        def forward(self, x):
            y = self.w @ x  # a weight on the left
            return (self.b - y) * self.b - (y - self.b) / self.b

    x = torch.randn(4, 5)
    compiled = compile_model(Sides(), x, public=True)
    ops = [n.op for n in compiled.program.nodes]
    assert compiled.params == {} and "matmul_public" in ops and not {"matmul", "mul"} & set(ops)
    torch.testing.assert_close(simulate(compiled, x), reference(compiled._model, x), atol=1e-6, rtol=1e-6)
