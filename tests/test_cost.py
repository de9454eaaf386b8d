"""The cost model's prediction equals what a run measures, for every op, at 2, 3 and 5 parties.

Each row builds one expression on secret (and public) tensors; the run's counters (bytes
each party sent, rounds, dealer bytes) must equal compiler.estimate on the same program,
exactly. A registered op missing from this table fails the coverage test.
"""

import pytest
import torch

import mpc
from mpc import compiler
from mpc.compiler.model import compile_model
from mpc.compiler.registry import OPS
from mpc import models


def _t(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _pos(*shape):
    return _t(*shape).abs() + 0.5


def _op(c, op, *xs, **attrs):
    """A registry op with no SecretTensor method (the range-reduced functions, gradient
    products), on xs."""
    from mpc.api import SecretTensor

    return SecretTensor(c, c._builder.add(op, tuple(x._node.id for x in xs), attrs))


# the arguments of a conv2d of (1, 4, 5, 6) by (2, 2, 3, 3) to (1, 2, 3, 2)
_STRIDED = {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2), "groups": 2}


# name -> (ops it exercises, builder(cluster) -> SecretTensor)
CASES = {
    "linear": ({"add", "sub", "neg", "add_public", "mul_public"},
               lambda c: -(c.share(_t(3, 4), 0) + c.share(_t(3, 4), 1)) * 0.5 - c.share(_t(3, 4), 2 % c.n_parties) + 1),
    "movement": ({"reshape", "transpose", "permute", "expand", "getitem", "cat", "stack", "sum", "mean"},
                 lambda c: mpc.cat([c.share(_t(2, 3), 0).reshape(3, 2).transpose(0, 1).permute(1, 0)[1:],
                                    mpc.stack([c.share(_t(1, 2), 1)[0]] * 1).expand(1, 2)]).sum(0)
                 + c.share(_t(2, 2), 0).mean(1)),
    "products": ({"mul", "matmul", "matmul_public", "conv2d"},
                 lambda c: (c.share(_t(2, 3), 0) * c.share(_t(2, 3), 1)).sum()
                 + (c.share(_t(2, 3), 0) @ c.share(_t(3, 2), 1)).sum()
                 + (c.share(_t(2, 3), 0) @ _t(3, 2)).sum()
                 + c.share(_t(1, 1, 5, 5), 1).conv2d(c.share(_t(2, 1, 3, 3), 0), padding=1).sum()),
    "comparisons": ({"cmp", "cmp_public", "relu", "abs", "sign", "clamp"},
                    lambda c: (c.share(_t(5), 0) > c.share(_t(5, seed=1), 1)) + (c.share(_t(5), 0) <= 0.3)
                    + c.share(_t(5), 1).relu() + c.share(_t(5), 0).abs() + c.share(_t(5), 0).sign()
                    + c.share(_t(5), 1).clamp(-0.5, 0.5)),
    "where": ({"where", "where_public"},
              lambda c: mpc.where(c.share(_t(4), 0) > 0, c.share(_t(4), 1), 2.0)
              + mpc.where(torch.tensor([True, False, True, False]), c.share(_t(4), 1), c.share(_t(4), 0))),
    "reductions": ({"max", "argmax", "max_pool2d"},
                   lambda c: c.share(_t(3, 4), 0).max(1) + c.share(_t(3, 4), 1).argmax(1)
                   + c.share(_t(1, 1, 4, 4), 0).max_pool2d(2).reshape(4)[:3]),
    "smooth": ({"exp", "log", "reciprocal", "sqrt", "inv_sqrt", "sigmoid", "tanh", "div"},
               lambda c: c.share(_t(4), 0).exp() + c.share(_pos(4), 1).log() + c.share(_pos(4), 0).reciprocal()
               + c.share(_pos(4), 1).sqrt() + c.share(_pos(4), 0).inv_sqrt() + c.share(_t(4), 1).sigmoid()
               + c.share(_t(4), 0).tanh() + c.share(_t(4), 1) / c.share(_pos(4), 0)),
    "ranges": ({"sqrt_wide", "reciprocal_wide", "inv_sqrt_wide"},
               lambda c: _op(c, "sqrt_wide", c.share(_pos(4) * 1000, 0))
               + _op(c, "reciprocal_wide", c.share(_pos(4), 1))
               + _op(c, "inv_sqrt_wide", c.share(_pos(4) / 1000, 0), gain_bits=6)),
    "conv_gradients": ({"conv_transpose2d", "conv_transpose2d_public", "conv2d_weight"},
                       lambda c: _op(c, "conv_transpose2d", c.share(_t(1, 2, 3, 2), 0), c.share(_t(2, 2, 3, 3), 1),
                                     output_padding=(0, 0), **_STRIDED).sum()
                       + _op(c, "conv_transpose2d_public", c.share(_t(1, 2, 3, 2), 1), value=_t(2, 2, 3, 3),
                             output_padding=(0, 0), **_STRIDED).sum()
                       + _op(c, "conv2d_weight", c.share(_t(1, 4, 5, 6), 0), c.share(_t(1, 2, 3, 2), 1),
                             kernel=(3, 3), **_STRIDED).sum()),
    "precise_mean": ({"precise_mean"},
                     lambda c: _op(c, "precise_mean", c.share(_t(3, 5) + 100, 0), dims=(1,), keepdim=False, bits=24)),
    "softmax": ({"softmax", "log_softmax"},
                lambda c: c.share(_t(3, 4), 0).softmax(1) + c.share(_t(3, 4), 1).log_softmax(1)),
}


# Ops the model cases below exercise; batch_norm never runs (the compiler folds it away).
MODEL_OPS = {"avg_pool2d", "conv2d_public", "square", "batch_norm"}
# test_prediction_equals_measurement_for_training:
TRAINING_OPS = {"relu_bit", "gather_rows", "rescale", "bilinear_keep", "bilinear_backward", "max_pool2d_argmax",
                "unpool2d", "batch_norm_train"}
LOCAL_GRAD_OPS = {"scatter"}  # the local op of the getitem gradient: tests/test_grads.py


def test_every_op_is_covered():
    covered = set().union(*(ops for ops, _ in CASES.values())) | {"input", "take"} | MODEL_OPS | TRAINING_OPS | LOCAL_GRAD_OPS  # take: test_compiler
    assert set(OPS) - covered == set(), "add a cost-model case for these ops"


# Every case revealed to the caller; outputs opened to all parties or to one party add
# a round whose cost does not depend on the case, so two cases each suffice for those.
RUNS = [(case, None) for case in sorted(CASES)] + [("products", "all"), ("comparisons", "all"),
                                                    ("linear", 1), ("smooth", 1)]


@pytest.mark.parametrize("n_parties", [2, 3, 5])
@pytest.mark.parametrize("case,to", RUNS)
def test_prediction_equals_measurement(case, to, n_parties):
    cluster = mpc.InMemoryCluster(n_parties=n_parties)
    _, build = CASES[case]
    build(cluster).reveal(to=to)
    recipients = tuple(-1 if to is None else -2 if to == "all" else 1 for _ in cluster.last_program.outputs)
    cost = compiler.estimate(cluster.last_program, n_parties, recipients, owners=cluster.last_job.owners)
    stats = cluster.last_stats
    assert [s.bytes_sent for s in stats] == cost.bytes_sent
    assert max(s.rounds for s in stats) == cost.total_rounds
    assert stats[0].dealer_bytes == cost.dealer_bytes
    assert cost.dealer_bytes > 0 or case in ("linear", "movement")



def _model(name):
    torch.manual_seed(0)
    if name == "cnn":
        return models.CNN().eval(), _t(2, 1, 28, 28).abs()
    return models.MLP((20, 16, 16, 4)).eval(), _t(5, 20)


@pytest.mark.parametrize("n_parties", [2, 3, 5])
@pytest.mark.parametrize("name,options", [("mlp", {}), ("cnn", {}), ("cnn", {"public": True}),
                                          ("mlp", {"replace": {"relu": "square"}})])
def test_prediction_equals_measurement_for_models(name, options, n_parties):
    model, x = _model(name)
    compiled = compile_model(model, x, **options)
    cluster = mpc.InMemoryCluster(n_parties=n_parties)
    cluster.infer(compiled, x)
    cost = compiler.estimate(cluster.last_program, n_parties, recipients=(-1,), owners=cluster.last_job.owners)
    stats = cluster.last_stats
    assert [s.bytes_sent for s in stats] == cost.bytes_sent
    assert max(s.rounds for s in stats) == cost.total_rounds
    assert stats[0].dealer_bytes == cost.dealer_bytes


def _pooled_cnn():
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                               torch.nn.Flatten(), torch.nn.Linear(8, 2))


def _batch_norm_cnn():
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, stride=2, padding=1), torch.nn.BatchNorm2d(2), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(8, 2))


@pytest.mark.parametrize("n_parties", [2, 3, 5])
@pytest.mark.parametrize("model,reveal_loss", [("mlp", False), ("mlp", True), ("cnn_maxpool", False),
                                               ("linear_adam", False)])
def test_prediction_equals_measurement_for_training(n_parties, model, reveal_loss):
    """Two steps of 10 rows (was four): the steps of a job share one program, so the last
    program still holds a step, the carry of the weights (and momentum or Adam's moments)
    into the next step, and that step; more steps repeat the same ops under the same cost
    rules and only make the program longer (linear_adam at 5 parties: 240 nodes, 14 s with
    four steps; 124 nodes, 7 s with two)."""
    from mpc.compiler.training import SGD, Adam

    torch.manual_seed(0)
    cluster = mpc.InMemoryCluster(n_parties=n_parties)
    x, y = _t(20, 6), (_t(20) > 0).long()
    if model == "cnn_maxpool":
        x, net = _t(20, 1, 4, 4), _pooled_cnn()
    elif model == "linear_adam":  # Adam's range-reduced sqrt and reciprocal (one layer: they are slow to run)
        net = torch.nn.Linear(6, 2)
    else:
        net = models.MLP((6, 5, 5, 2))
    data = cluster.share_data({0: (x[:10], y[:10]), 1: (x[10:], y[10:])}, n_classes=2)
    optimizer = Adam(0.05) if model == "linear_adam" else SGD(0.1, momentum=0.9)
    result = cluster.train(net, data, optimizer=optimizer, batch_size=10, epochs=1,
                           reveal_loss_every=1 if reveal_loss else 0)
    assert result.steps == 2
    cost = compiler.estimate(cluster.last_program, n_parties, recipients=(-1,) * len(cluster.last_program.outputs),
                             owners=cluster.last_job.owners)
    stats = cluster.last_stats
    assert [s.bytes_sent for s in stats] == cost.bytes_sent
    assert max(s.rounds for s in stats) == cost.total_rounds
    assert stats[0].dealer_bytes == cost.dealer_bytes


@pytest.mark.parametrize("n_parties", [2, 3])
def test_prediction_equals_measurement_for_batch_norm_training(n_parties):
    """A strided convolution (its gradient products reusing the forward masks) and BatchNorm's
    batch statistics (range-reduced 1/sqrt: slow to run, so two steps at 2 and 3 parties)."""
    from mpc.compiler.training import SGD

    torch.manual_seed(0)
    cluster = mpc.InMemoryCluster(n_parties=n_parties)
    x, y = _t(20, 1, 4, 4), (_t(20) > 0).long()
    data = cluster.share_data({0: (x[:10], y[:10]), 1: (x[10:], y[10:])}, n_classes=2)
    cluster.train(_batch_norm_cnn(), data, optimizer=SGD(0.1), batch_size=10, epochs=1)
    assert {"batch_norm_train", "bilinear_keep"} <= {n.op for n in cluster.last_program.nodes}
    cost = compiler.estimate(cluster.last_program, n_parties, recipients=(), owners=cluster.last_job.owners)
    stats = cluster.last_stats
    assert [s.bytes_sent for s in stats] == cost.bytes_sent
    assert max(s.rounds for s in stats) == cost.total_rounds
    assert stats[0].dealer_bytes == cost.dealer_bytes
