"""Every gradient rule against torch autograd, at 2, 3 and 5 parties (in memory).

In the style of micrograd's check against torch: one table of expressions; each is
built on secret tensors, differentiated by the compiler's reverse mode (autodiff.py)
with a secret upstream gradient, and compared with torch's vector-Jacobian product on
the same plaintext values. Fixed point with 16 fractional bits: tolerances are stated
per row (products of values of order 1 lose a few units of 2^-16 each).
"""

import pytest
import torch

import mpc
from mpc.api import SecretTensor
from mpc.compiler import autodiff
from mpc.compiler.registry import OPS


def _t(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


KERNEL = _t(3, 2, 2, 2, seed=7)
GROUPED_KERNEL = _t(4, 2, 2, 2, seed=8)
P = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], dtype=torch.float64)

# name: (ops covered, input shapes, fn(*tensors) working on torch and secret tensors alike, tolerance)
CASES = {
    "add_broadcast": ({"add"}, [(4, 3), (3,)], lambda a, b: a + b, 1e-4),
    "sub_neg": ({"sub", "neg"}, [(4, 3), (4, 1)], lambda a, b: -(a - b), 1e-4),
    "public": ({"add_public", "mul_public"}, [(2, 3)], lambda a: (a + P) * P, 1e-3),
    "mul_broadcast": ({"mul"}, [(4, 3), (1, 3)], lambda a, b: a * b, 1e-3),
    "square": ({"square"}, [(5,)], lambda a: a.square(), 1e-3),
    "matmul": ({"matmul", "transpose"}, [(4, 3), (3, 2)], lambda a, b: a @ b, 1e-3),
    "matmul_batched": ({"matmul"}, [(2, 4, 3), (3, 2)], lambda a, b: a @ b, 1e-3),
    "matmul_public": ({"matmul_public"}, [(4, 2)], lambda a: (a @ P) @ P.T, 2e-3),
    "matmul_public_left": ({"matmul_public"}, [(3, 4)], lambda a: P @ a, 1e-3),
    "movement": ({"reshape", "permute", "expand", "getitem"}, [(2, 3, 4)],
                 lambda a: a.permute(2, 0, 1).reshape(4, 6)[None].expand(2, 4, 6), 1e-4),
    "sum_mean": ({"sum", "mean"}, [(3, 4)], lambda a: a.sum(1, keepdim=True) + a.mean(0), 1e-3),
    "sum_all": ({"sum"}, [(3, 4)], lambda a: a.sum() * a, 2e-3),
    "relu": ({"relu"}, [(6, 5)], lambda a: a.relu(), 1e-3),
    "sigmoid": ({"sigmoid"}, [(6,)], lambda a: a.sigmoid(), 2e-3),
    "tanh": ({"tanh"}, [(6,)], lambda a: a.tanh(), 2e-3),
    "cat": ({"cat"}, [(2, 3), (1, 3)], lambda a, b: (mpc.cat if isinstance(a, SecretTensor) else torch.cat)([a, b]), 1e-4),
    "conv2d": ({"conv2d"}, [(2, 2, 5, 5), (3, 2, 3, 3)],
               lambda a, b: torch.nn.functional.conv2d(a, b, padding=1), 3e-3),
    # dx = conv_transpose2d(g, w), dw = conv2d_weight(x, g): strided windows that skip the
    # input's last row (output padding 1), unequal strides, dilation, groups, depthwise, and
    # padding of a kernel's size (the old stride-1 rule refused it)
    "conv2d_stride2": ({"conv2d"}, [(2, 2, 8, 8), (3, 2, 3, 3)],
                       lambda a, b: torch.nn.functional.conv2d(a, b, stride=2, padding=1), 3e-3),
    "conv2d_stride2x1": ({"conv2d"}, [(2, 2, 6, 5), (3, 2, 3, 2)],
                         lambda a, b: torch.nn.functional.conv2d(a, b, stride=(2, 1), padding=(0, 1)), 3e-3),
    "conv2d_dilation2": ({"conv2d"}, [(1, 2, 7, 7), (2, 2, 3, 3)],
                         lambda a, b: torch.nn.functional.conv2d(a, b, padding=2, dilation=2), 3e-3),
    "conv2d_groups2": ({"conv2d"}, [(2, 4, 7, 7), (6, 2, 3, 3)],
                       lambda a, b: torch.nn.functional.conv2d(a, b, stride=2, groups=2), 3e-3),
    "conv2d_depthwise": ({"conv2d"}, [(2, 3, 6, 6), (3, 1, 3, 3)],
                         lambda a, b: torch.nn.functional.conv2d(a, b, stride=2, padding=1, groups=3), 3e-3),
    "conv2d_wide_padding": ({"conv2d"}, [(1, 1, 4, 4), (2, 1, 2, 2)],
                            lambda a, b: torch.nn.functional.conv2d(a, b, stride=2, padding=2), 3e-3),
    "conv2d_public": ({"conv2d_public"}, [(2, 2, 5, 5)],
                      lambda a: torch.nn.functional.conv2d(a, KERNEL), 3e-3),
    "conv2d_public_strided": ({"conv2d_public"}, [(2, 4, 7, 7)],
                              lambda a: torch.nn.functional.conv2d(a, GROUPED_KERNEL, stride=(2, 1), padding=1,
                                                                   dilation=2, groups=2), 3e-3),
    "avg_pool2d": ({"avg_pool2d"}, [(2, 3, 4, 4)], lambda a: torch.nn.functional.avg_pool2d(a, 2), 1e-3),
    # g routed to each window's maximum: exact (0/1 one-hot, no truncation) but for g's own encoding
    "max_pool2d": ({"max_pool2d", "max_pool2d_argmax"}, [(2, 3, 4, 4)],
                   lambda a: torch.nn.functional.max_pool2d(a, 2), 1e-4),
    "max_pool2d_overlapping": ({"max_pool2d"}, [(1, 2, 5, 5)],
                               lambda a: torch.nn.functional.max_pool2d(a, 3, stride=2, padding=1), 1e-4),
}


def test_rules_are_covered():
    """Every op with a gradient rule appears in the table (relu_bit through training;
    batch_norm_train, which has no torch-like method, in tests/test_batch_norm.py the same way)."""
    with_rule = {op for op, d in OPS.items() if d.grad}
    covered = set().union(*(ops for ops, *_ in CASES.values())) | {"relu_bit", "batch_norm_train"}
    assert with_rule - covered == set()


@pytest.mark.parametrize("n_parties", [2, 3, 5])
@pytest.mark.parametrize("case", sorted(CASES))
def test_gradient_matches_torch(case, n_parties):
    _, shapes, fn, tol = CASES[case]
    values = [_t(*s, seed=k) for k, s in enumerate(shapes)]
    leaves = [v.clone().requires_grad_() for v in values]
    out = fn(*leaves)
    upstream = _t(*out.shape, seed=99)
    out.backward(upstream)

    cluster = mpc.InMemoryCluster(n_parties=n_parties)
    secrets = [cluster.share(v, owner=k % n_parties) for k, v in enumerate(values)]
    y = fn(*secrets)
    g = cluster.share(upstream, owner=n_parties - 1)
    grads = autodiff.backward(cluster._builder, {y._node.id: g._node.id}, [s._node.id for s in secrets])
    revealed = cluster.reveal(*(SecretTensor(cluster, cluster._builder.nodes[grads[s._node.id]]) for s in secrets))
    for k, (got, leaf) in enumerate(zip(revealed, leaves)):
        err = (got - leaf.grad).abs().max().item()
        assert err <= tol, f"{case}: gradient of input {k} off by {err:.3g} (tolerance {tol})"
