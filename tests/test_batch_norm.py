"""BatchNorm in training against torch: batch statistics, the gradient rule, running statistics.

- `batch_norm_train` (protocols/normalization.py) at 2, 3 and 5 parties (in memory): y, the
  batch mean and (biased) variance, and the gradients of its rule (grads.py) for x, gamma and
  beta, against torch's F.batch_norm in training mode and autograd, for BatchNorm1d on
  (N, C) and (N, C, L) and BatchNorm2d, with variances from 0.01 to 900 and m = numel / C a
  power of two or not. Errors are relative to max(1, |torch's value|): 3e-4, where about
  4e-5 is seen; 2e-3 for the variance of 0.01, whose encoding (655 units of 2^-16) already
  sets 1/sqrt(var) 8e-4 apart (7e-4 seen).
- The mean over m = 576 values of mean 100 is within 4 units in the last place, where
  scaling the sum by 1/m encoded at 2^-16 (the `mean` op) would be 0.2 (0.2%) off.
- A small CNN (stride-2 convolution, BatchNorm2d, ReLU, linear, BatchNorm1d) trained 3 SGD
  steps ends within 2e-3 of torch in train mode (2e-4 seen), running statistics and step
  counters included; the trained model then infers in eval mode (BatchNorm on the running
  statistics, computed on shares) within 2e-3 of torch's eval mode, and its revealed state
  dict loads into torch.
"""

import pytest
import torch

import mpc
from mpc.api import SecretTensor
from mpc.compiler import autodiff
from mpc.compiler.registry import CompileError
from mpc.compiler.training import SGD, compile_training
from tests.conftest import ULP, assert_close
from tests.test_training import _batches, _check, _plain, _split


def _t(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


# name: (input shape, scale and offset of x, relative tolerance)
CASES = {
    "bn1d": ((16, 3), 1.0, 0.0, 3e-4),
    "bn1d_sequence_wide": ((4, 3, 5), 30.0, 5.0, 3e-4),  # variance 900
    "bn2d_small_variance": ((8, 2, 4, 4), 0.1, -1.0, 2e-3),  # variance 0.01, m = 128
    "bn2d": ((6, 2, 3, 5), 3.0, 2.0, 3e-4),  # m = 90: not a power of two
}


def _batch_norm(cluster, x, gamma, beta):
    """The five outputs of batch_norm_train on shares (y, x_hat, 2^6 / sqrt(var + eps), mean, var)."""
    node = cluster._builder.add("batch_norm_train", (x._node.id, gamma._node.id, beta._node.id),
                                {"eps": 1e-5, "gain_bits": 6})
    return [SecretTensor(cluster, cluster._builder.add("take", (node.id,), {"index": k})) for k in range(5)]


@pytest.mark.parametrize("n_parties", [2, 3, 5])
@pytest.mark.parametrize("case", sorted(CASES))
def test_batch_norm_train_and_its_gradient_match_torch(case, n_parties):
    shape, scale, offset, tol = CASES[case]
    c = shape[1]
    x, gamma, beta = _t(*shape, seed=1, scale=scale) + offset, _t(c, seed=2) + 1, _t(c, seed=3)
    leaves = [v.clone().requires_grad_() for v in (x, gamma, beta)]
    y = torch.nn.functional.batch_norm(leaves[0], None, None, leaves[1], leaves[2], training=True, eps=1e-5)
    upstream = _t(*shape, seed=4)
    y.backward(upstream)

    cluster = mpc.InMemoryCluster(n_parties=n_parties)
    secrets = [cluster.share(v, owner=k % n_parties) for k, v in enumerate((x, gamma, beta))]
    outs = _batch_norm(cluster, *secrets)
    g = cluster.share(upstream, owner=n_parties - 1)
    grads = autodiff.backward(cluster._builder, {outs[0]._node.id: g._node.id}, [s._node.id for s in secrets])
    got = cluster.reveal(outs[0], outs[3], outs[4],
                         *(SecretTensor(cluster, cluster._builder.nodes[grads[s._node.id]]) for s in secrets))
    dims = (0, *range(2, len(shape)))
    wants = [y, x.mean(dims), x.var(dims, unbiased=False), *(leaf.grad for leaf in leaves)]
    for what, value, want in zip(("y", "mean", "var", "dx", "dgamma", "dbeta"), got, wants):
        assert_close(value, want.detach(), tol * max(1.0, want.abs().max().item()), f"{case}: {what}")


def test_mean_over_many_values_is_exact_to_a_few_ulp():
    x = _t(576, 1, seed=5) + 100.0
    cluster = mpc.InMemoryCluster(n_parties=3)
    outs = _batch_norm(cluster, cluster.share(x, 0), cluster.share(torch.ones(1, dtype=torch.float64), 1),
                       cluster.share(torch.zeros(1, dtype=torch.float64), 2))
    mean, var = cluster.reveal(outs[3], outs[4])
    assert_close(mean, x.mean(0), 4 * ULP, "mean of 576 values")
    assert_close(var, x.var(0, unbiased=False), 1e-4, "variance of 576 values")


def _cnn():
    torch.manual_seed(4)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, stride=2, padding=1), torch.nn.BatchNorm2d(4),
                               torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(36, 2), torch.nn.BatchNorm1d(2))


def test_cnn_with_batch_norm_and_a_strided_convolution_trains_like_torch():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(24, 1, 6, 6, generator=gen, dtype=torch.float64)
    y = (x[:, 0, :3].mean((1, 2)) > x[:, 0, 3:].mean((1, 2))).long()
    model = _cnn()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    cluster = mpc.InMemoryCluster(n_parties=3)
    data = cluster.share_data(_split(x, y), n_classes=2)
    result = cluster.train(model, data, optimizer=SGD(0.5), epochs=1, batch_size=8)
    assert result.steps == 3
    model.load_state_dict(init)
    plain = _plain(model, x, y, "cross_entropy", SGD(0.5), _batches(24, 8, 1))  # torch in train mode
    state = cluster.reveal_model(result)
    assert set(state) == set(plain.state_dict())
    assert int(state["1.num_batches_tracked"]) == int(state["5.num_batches_tracked"]) == 3
    _check(state, plain, 2e-3, "cnn with BatchNorm")
    assert (state["1.running_mean"] - init["1.running_mean"]).abs().max() > 0.01  # the statistics did move

    plain.eval()
    with torch.no_grad():
        want = plain(x[:8])
    assert_close(cluster.infer(result.shared, x[:8]), want, 2e-3, "secure inference, eval mode")
    reloaded = _cnn().double()
    reloaded.load_state_dict(state)
    with torch.no_grad():
        assert_close(reloaded.eval()(x[:8]), want, 2e-3, "revealed state dict in torch, eval mode")


@pytest.mark.parametrize("layer,needle", [(torch.nn.BatchNorm1d(3, affine=False), "affine=False"),
                                          (torch.nn.BatchNorm1d(3, momentum=None), "momentum=None")])
def test_batch_norm_that_cannot_train_here_is_refused(layer, needle):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), layer, torch.nn.Linear(3, 2))
    with pytest.raises(CompileError, match=needle):
        compile_training(model, torch.zeros(1, 4), n_rows=16, n_outputs=2, batch_size=8)
