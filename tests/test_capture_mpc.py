"""Compiled models run as secret-shared computations on the in-memory runtime.

Each compiled model runs through `InMemoryCluster.infer` (the same sessions, executor,
schedule and lowerings as over gRPC): the weights are shared from party 0, the input
from party 1, and the outputs are compared with torch. The measured bytes per party,
rounds and dealer bytes must equal the cost model's prediction.
"""

from __future__ import annotations

import pytest
import torch

import mpc
from mpc.compiler import estimate
from mpc.compiler.model import compile_model
from tests.capture_models import models, reference, simulate


def run_compiled(compiled, x, n_parties=3):
    """Model owner is party 0, data owner party 1; returns the output and its rounds,
    after checking the run's counters against the cost model."""
    cluster = mpc.InMemoryCluster(n_parties=n_parties)
    out = cluster.infer(compiled, x, model_owner=0, data_owner=1)
    cost = estimate(cluster.last_program, n_parties, recipients=(-1,), owners=cluster.last_job.owners)
    stats = cluster.last_stats
    assert [s.bytes_sent for s in stats] == cost.bytes_sent
    assert stats[0].dealer_bytes == cost.dealer_bytes
    assert max(s.rounds for s in stats) == cost.total_rounds
    return (out,), max(s.rounds for s in stats)


def _tolerance(name):
    return {"mlp": 5e-4, "cnn": 5e-4, "residual": 5e-4, "conv1d": 5e-4, "misc": 5e-3, "functional": 5e-3}[name]


@pytest.mark.parametrize("public", [False, True])
@pytest.mark.parametrize("name", ["mlp", "cnn", "residual", "conv1d", "misc", "functional"])
def test_compiled_model_runs_on_shares(name, public):
    model, x = models()[name]
    compiled = compile_model(model, x, public=public)
    (out,), rounds = run_compiled(compiled, x)
    expected = reference(model, x)
    err = (out - expected).abs().max().item()
    assert err < _tolerance(name), f"{name}: max error {err:.3g}"
    assert rounds == estimate(compiled.program, 3).rounds


@pytest.mark.parametrize("option", [{"relu": "square"}, {"maxpool": "avgpool"}])
def test_replaced_layers_run_on_shares(option):
    model, x = models()["residual"]
    compiled = compile_model(model, x, replace=option)
    (out,), rounds = run_compiled(compiled, x, n_parties=2)
    err = (out - simulate(compiled, x)).abs().max().item()
    assert err < 5e-3, err
    assert rounds == estimate(compiled.program, 2).rounds


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d_with_padding_on_shares(count_include_pad):
    class Pool(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=count_include_pad)

    x = torch.randn(2, 3, 7, 7)
    compiled = compile_model(Pool(), x)
    (out,), rounds = run_compiled(compiled, x)
    assert (out - Pool()(x).double()).abs().max().item() < 1e-4
    assert rounds == 1  # one truncation
