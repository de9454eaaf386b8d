"""Compiled models run as real secret-shared computations, in one process with no network.

`run_program` drives every party's schedule (mpc.compiler.schedule.drive over the
registry lowerings, exactly what a party runs) in lockstep: each round's Opens are summed
over the parties, correlations come from the dealer's own functions with per-(node,
request) PRG keys, inputs are shared with pairwise PRG masks. So the new layer lowerings
(avg_pool2d, conv2d_public, square) and whole captured models are checked on shares,
and the rounds counted are compared with the cost model's prediction.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from mpc import ring
from mpc.compiler import estimate, schedule
from mpc.compiler.lower import starter
from mpc.compiler.model import compile_model
from mpc.prg import PRG
from mpc.protocols import correlations
from tests.capture_models import models, reference, simulate


def _key(*parts) -> bytes:
    return hashlib.sha256(repr(parts).encode()).digest()[:16]


def run_program(program, n_parties: int, owners: dict[int, int], plaintexts: dict[int, torch.Tensor]):
    """The decoded outputs of `program` and the number of rounds it took."""
    f = program.frac_bits

    def randomness_for(pid):
        def answer(node, seq, spec):
            correction = None
            if pid == 0:
                prgs = [PRG(_key("corr", i, node, seq)) for i in range(n_parties)]
                correction = memoryview(b"".join(correlations.dealer_correction(spec, prgs)))
            return correlations.party_part(spec, pid, PRG(_key("corr", pid, node, seq)), correction)
        return answer

    def mask_for(pid):
        def answer(node, request):
            others = [j for j in range(n_parties) if j != request.owner]
            masks = {j: PRG(_key("mask", request.owner, j, node)).ring(request.shape) for j in others}
            return sum(masks.values()) if pid == request.owner else masks[pid]
        return answer

    drivers = []
    for pid in range(n_parties):
        extras = {"owners": owners, "inputs": {nid: ring.encode(v, f) for nid, v in plaintexts.items()
                                                if owners[nid] == pid}}
        start = starter(program, pid, n_parties, dry_run=False, extras=extras)
        drivers.append(schedule.drive(program, start, randomness_for(pid), mask_for(pid)))
    replies = [None] * n_parties
    rounds = 0
    finals: list[dict] = []
    while True:
        rounds_of = []
        for d, r in zip(drivers, replies):
            try:
                rounds_of.append(d.send(r))
            except StopIteration as stop:
                finals.append(stop.value)
        if finals:
            assert len(finals) == n_parties, "parties' schedules ended at different rounds"
            break
        rounds += 1
        opened = []
        for k, op in enumerate(rounds_of[0].opens):
            values = []
            for v in range(len(op.values)):
                total = op.values[v].clone()
                for other in rounds_of[1:]:
                    part = other.opens[k].values[v]
                    total = total ^ part if op.xor else total + part
                values.append(total)
            opened.append([tuple(values) if op.to in (None, pid) else tuple(None for _ in values)
                           for pid in range(n_parties)])
        replies = [[per_open[pid] for per_open in opened] for pid in range(n_parties)]
    outputs = []
    for nid, scale in zip(program.outputs, program.output_scales):
        total = sum(values[nid] for values in finals)
        outputs.append(ring.decode(total, f * scale))
    return outputs, rounds


def run_compiled(compiled, x, n_parties=3):
    """Model owner is party 0, data owner party 1."""
    owners, plaintexts = {}, {}
    for node in compiled.program.inputs:
        owners[node.id] = 1 if node.name == compiled.input_name else 0
        plaintexts[node.id] = x if node.name == compiled.input_name else compiled.params[node.name]
    return run_program(compiled.program, n_parties, owners, plaintexts)


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
