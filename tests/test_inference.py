"""Private inference over real processes: compiled models against torch and CrypTen.

One local cluster (3 party processes, a dealer, gRPC) serves the module. Party 0 owns the
weights, party 1 the input; the caller receives the logits.
"""

import pytest
import torch

import mpc
from mpc import compiler, models, reference
from mpc.compiler.model import compile_model
from mpc.compiler.registry import CompileError
from tests.conftest import assert_close


@pytest.fixture(scope="module")
def cluster():
    with mpc.LocalCluster(n_parties=3) as c:
        yield c


def _seeded(factory, seed=0):
    torch.manual_seed(seed)
    return factory().eval()


def _cases():
    gen = torch.Generator().manual_seed(1)
    return {
        "mlp_infer": (_seeded(models.MLP), torch.rand(64, 784, generator=gen)),
        "cnn_infer": (_seeded(models.CNN), torch.rand(16, 1, 28, 28, generator=gen)),
        "rescnn": (models.randomize_batchnorm(_seeded(models.ResCNN)).eval(), torch.randn(8, 1, 8, 8, generator=gen)),
    }


# Fixed point with 16 fractional bits; errors grow with depth and width (ulp 1.5e-5).
TOLERANCE = {"mlp_infer": 2e-3, "cnn_infer": 2e-3, "rescnn": 2e-3}


@pytest.mark.slow
def test_models_against_torch_and_crypten(cluster, crypten_available):
    cases = _cases()
    ours, expected = {}, {}
    for name, (model, x) in cases.items():
        compiled = compile_model(model, x)
        ours[name] = cluster.infer(compiled, x, model_owner=0, data_owner=1)
        with torch.no_grad():
            expected[name] = model.double()(x.double())
        assert_close(ours[name], expected[name], TOLERANCE[name], f"{name} against torch")
        rounds = max(s.rounds for s in cluster.last_stats)
        cost = compiler.estimate(cluster.last_program, 3, recipients=(-1,), owners=cluster.last_job.owners)
        assert rounds == cost.total_rounds and [s.bytes_sent for s in cluster.last_stats] == cost.bytes_sent
    jobs = []
    for name, (model, x) in cases.items():
        op, weights = models.crypten_args(model)
        jobs.append((op, [x, *weights], [1] + [0] * len(weights)))
    refs = reference.run_many(jobs, world_size=3, reps=1, warmup=False)
    for name, ref in zip(cases, refs):
        assert_close(ref["value"], expected[name], TOLERANCE[name], f"CrypTen {name} against torch")
        assert_close(ours[name], ref["value"], 2 * TOLERANCE[name], f"{name} against CrypTen")
        ours_rounds = compiler.estimate(compile_model(*cases[name]).program, 3).total_rounds
        assert ours_rounds < ref["rounds"], f"{name}: {ours_rounds} rounds, CrypTen {ref['rounds']}"


def test_second_inference_sends_no_program(cluster):
    model, x = _seeded(lambda: models.MLP((10, 8, 8, 3))), torch.randn(4, 10)
    compiled = compile_model(model, x)
    first = cluster.infer(compiled, x)
    assert cluster.last_overhead["program_sent"]
    second = cluster.infer(compiled, x * 0.5)
    assert not cluster.last_overhead["program_sent"] and cluster.last_overhead["program_s"] == 0.0
    with torch.no_grad():
        assert_close(first, model.double()(x.double()), 1e-3)
        assert_close(second, model.double()(0.5 * x.double()), 1e-3)


def test_new_weights_are_shared_anew(cluster):
    x = torch.randn(4, 10)
    a, b = _seeded(lambda: models.MLP((10, 8, 8, 3)), 1), _seeded(lambda: models.MLP((10, 8, 8, 3)), 2)
    compiled = compile_model(a, x)
    cluster.infer(compiled, x)
    compiled.load_state_dict(b.state_dict())
    with torch.no_grad():
        assert_close(cluster.infer(compiled, x), b.double()(x.double()), 1e-3)


def test_public_model_runs_linear_layers_locally(cluster):
    model, x = _seeded(lambda: models.MLP((10, 8, 8, 3))), torch.randn(4, 10)
    compiled = compile_model(model, x, public=True)
    out = cluster.infer(compiled, x)
    with torch.no_grad():
        assert_close(out, model.double()(x.double()), 1e-3)
    cost = compiler.estimate(compiled.program, 3)
    private = compiler.estimate(compile_model(model, x).program, 3)
    assert cost.products == 0 < private.products and cost.bytes_sent[0] < private.bytes_sent[0]


def test_batched_requests_share_rounds(cluster):
    model = _seeded(lambda: models.MLP((10, 8, 8, 3)))
    xs = [torch.randn(2, 10, generator=torch.Generator().manual_seed(k)) for k in range(4)]
    compiled = compile_model(model, xs[0])
    single_rounds = compiler.estimate(compiled.program, 3).rounds
    outs = cluster.infer_batch(compiled, xs)
    assert max(s.rounds for s in cluster.last_stats) == single_rounds
    with torch.no_grad():
        for out, x in zip(outs, xs):
            assert_close(out, model.double()(x.double()), 1e-3)


def test_prediction_to_a_party_reaches_no_caller(cluster):
    model, x = _seeded(lambda: models.MLP((10, 8, 8, 3))), torch.randn(4, 10)
    assert cluster.infer(compile_model(model, x), x, model_owner=0, data_owner=1, recipient=2) is None


def test_wrong_input_is_refused_before_anything_is_sent(cluster):
    model, x = _seeded(lambda: models.MLP((10, 8, 8, 3))), torch.randn(4, 10)
    compiled = compile_model(model, x)
    before = cluster.last_stats
    with pytest.raises(CompileError, match=r"input of shape \(5, 10\) does not fit the model, compiled for input "
                                           r"shape \(4, 10\)"):
        cluster.infer(compiled, torch.randn(5, 10))
    assert cluster.last_stats is before
    with pytest.raises(ValueError, match="data_owner must be a party id in 0..2 or 'caller', got 7"):
        cluster.infer(compiled, x, data_owner=7)


def _digits():
    from mpc.demo import load_digits

    return load_digits()


def _train(model, x, y, epochs, lr=0.01):
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_digits_classes_match_plaintext(cluster, kind):
    x_train, y_train, x_test, y_test = _digits()
    x_train, x_test = x_train.float(), x_test.float()
    if kind == "cnn":
        x_train, x_test = x_train.view(-1, 1, 8, 8), x_test.view(-1, 1, 8, 8)
        model = _train(_seeded(models.DigitsCNN), x_train, y_train, 150)
    else:
        model = _train(_seeded(lambda: models.MLP((64, 32, 32, 10))), x_train, y_train, 200)
    with torch.no_grad():
        plain = model(x_test).argmax(1)
    assert (plain == y_test).float().mean() > 0.9, "the plaintext model should be a real classifier"
    secure = cluster.infer(compile_model(model, x_test), x_test).argmax(1)
    agreement = (secure == plain).double().mean().item()
    assert agreement >= 0.99, f"{kind}: secure and plaintext classes agree on {agreement:.3f} of the test split"


class TwoHeads(torch.nn.Module):
    """A shared trunk and two heads: their rounds are shared (scheduling)."""

    def __init__(self):
        super().__init__()
        self.trunk, self.a, self.b = torch.nn.Linear(10, 8), torch.nn.Linear(8, 3), torch.nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.trunk(x))
        return self.a(h), torch.sigmoid(self.b(h))


def test_multi_output_model_heads_share_rounds(cluster):
    torch.manual_seed(0)
    model, x = TwoHeads().eval(), torch.randn(4, 10)
    compiled = compile_model(model, x)
    assert compiled.output_shapes == [(4, 3), (4, 2)]
    a, b = cluster.infer(compiled, x)
    with torch.no_grad():
        want_a, want_b = model.double()(x.double())
    assert_close(a, want_a, 1e-3, "head a")
    assert_close(b, want_b, 1e-3, "head b")
    head_b_alone = compiler.estimate(compile_model(torch.nn.Sequential(model.trunk, torch.nn.ReLU(), model.b,
                                                                       torch.nn.Sigmoid()), x).program, 3)
    assert max(s.rounds for s in cluster.last_stats) == head_b_alone.rounds  # the linear head rides along


def test_caller_owned_weights_and_input(cluster):
    """The caller secret-shares the weights and the input itself: each party receives one
    uniformly random int64 share, never a plaintext."""
    from mpc import ring
    from mpc.inference import caller_shares

    model, x = _seeded(lambda: models.MLP((10, 8, 8, 3))), torch.randn(4, 10)
    out = cluster.infer(compile_model(model, x), x, model_owner="caller", data_owner="caller")
    with torch.no_grad():
        assert_close(out, model.double()(x.double()), 1e-3, "caller-owned weights and input")
    shares = caller_shares(x, 3, 16)
    assert torch.equal(sum(shares), ring.encode(x.double(), 16))
    assert all(not torch.equal(s, ring.encode(x.double(), 16)) for s in shares)
    with pytest.raises(ValueError, match="model_owner must be a party id in 0..2 or 'caller', got 'bob'"):
        cluster.infer(compile_model(model, x), x, model_owner="bob")
