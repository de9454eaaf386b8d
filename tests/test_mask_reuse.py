"""Mask reuse between a layer's forward and backward products (passes/mask_reuse.py,
protocols/reuse.py): the correlation, the gradients against torch at 2, 3 and 5 parties,
and the bytes it saves per training step.
"""

import pytest
import torch

import mpc
from mpc import compiler, ring
from mpc.api import SecretTensor
from mpc.compiler import autodiff
from mpc.compiler.passes import mask_reuse
from mpc.compiler.training import SAVINGS, SGD, compile_training
from mpc.prg import PRG, derive_key
from mpc.protocols import correlations
from tests.conftest import assert_close


def _t(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


STRIDED = ((2, 2), (1, 1), (1, 1), 2)  # stride 2, padding 1, groups 2: (stride, padding, dilation, groups)
DILATED = ((2, 1), (0, 1), (2, 1), 2)  # unequal strides and dilations, groups 2


@pytest.mark.parametrize("dx,dw", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("shapes,conv", [(((4, 3), (3, 2)), None), (((2, 4, 3), (3, 2)), None),
                                         (((2, 2, 5, 5), (3, 2, 3, 3)), ((1, 1), (1, 1), (1, 1), 1)),
                                         (((1, 2, 4, 4), (2, 2, 3, 3)), ((1, 1), (0, 0), (1, 1), 1)),
                                         (((2, 4, 8, 8), (6, 2, 3, 3)), STRIDED),
                                         (((1, 2, 9, 7), (2, 1, 3, 2)), DILATED)])
def test_correlation_shares_a_and_b_between_the_three_products(shapes, conv, dx, dw):
    """Summed over 3 parties: c = B(a, b), c' = Bx(d, b), c'' = Bw(a, d) with the same a and b
    (exact, in the ring), for a matmul and for convolutions (of any stride, dilation and
    groups: Bx and Bw are conv2d's adjoints, checked against torch autograd in test_ring.py)."""
    spec = correlations.bilinear_train_triple(*shapes, dx=dx, dw=dw, conv=conv)
    seeds = [bytes([p]) * 16 for p in range(3)]
    prgs = lambda: [PRG(derive_key(s, "corr", "job", 0)) for s in seeds]  # noqa: E731
    correction = b"".join(correlations.dealer_correction(spec, prgs()))
    assert len(correction) == correlations.correction_nbytes(spec)
    parts = [correlations.party_part(spec, p, prg, memoryview(correction) if p == 0 else None)
             for p, prg in enumerate(prgs())]
    a, b, d, c, c1, c2 = (sum(part[k] for part in parts) for k in range(6))
    if conv is None:
        t = lambda m: m.transpose(-2, -1)  # noqa: E731
        want = (a @ b, d @ t(b), t(a) @ d)
    else:
        stride, padding, dilation, groups = conv
        out_pad = ring.conv2d_output_padding(a.shape[-2:], b.shape[-2:], stride, padding, dilation)
        want = (ring.conv2d(a, b, *conv), ring.conv_transpose2d(d, b, stride, padding, out_pad, dilation, groups),
                ring.conv2d_weight(a, d, b.shape[-2:], *conv))
        assert want[1].shape == a.shape and want[2].shape == b.shape
    assert torch.equal(c, want[0])
    assert torch.equal(c1, want[1]) if dx else c1.numel() == 0
    assert torch.equal(c2, want[2]) if dw else c2.numel() == 0
    assert [tuple(v.shape) for v in parts[1]] == [tuple(m.shape) for m in correlations.meta_part(spec)]


# name: (shapes of x and w, which of them get gradients, conv2d's arguments or None for a matmul)
CASES = {
    "both": (((4, 3), (3, 2)), (True, True), None),
    "batched": (((2, 4, 3), (3, 2)), (True, True), None),
    "weight_only": (((5, 3), (3, 4)), (False, True), None),
    "input_only": (((5, 3), (3, 4)), (True, False), None),
    "conv": (((2, 2, 5, 5), (3, 2, 3, 3)), (True, True), {"padding": 1}),
    "conv_weight_only": (((2, 1, 4, 4), (2, 1, 3, 3)), (False, True), {"padding": 1}),
    "conv_strided_grouped": (((2, 4, 8, 8), (6, 2, 3, 3)), (True, True), {"stride": 2, "padding": 1, "groups": 2}),
    "conv_dilated_depthwise": (((1, 2, 9, 7), (2, 1, 3, 2)), (True, True),
                               {"stride": (2, 1), "dilation": 2, "groups": 2}),
}


def _product(a, b, conv):
    return a @ b if conv is None else torch.nn.functional.conv2d(a, b, **conv)


@pytest.mark.parametrize("n_parties", [2, 3, 5])
@pytest.mark.parametrize("case", sorted(CASES))
def test_reused_masks_give_torch_gradients(case, n_parties):
    """z = x @ w (or conv2d(x, w, ...), strided, dilated, grouped) and its gradient products,
    rewritten to reuse the forward masks, against torch autograd. Tolerance 3e-3: one
    truncation of sums of products of order-1 values (as test_grads.py's conv2d rows)."""
    (sx, sw), wants, conv = CASES[case]
    x, w = _t(*sx, seed=1), _t(*sw, seed=2)
    leaves = [x.clone().requires_grad_(), w.clone().requires_grad_()]
    out = _product(*leaves, conv)
    up = _t(*out.shape, seed=3)
    out.backward(up)

    cluster = mpc.InMemoryCluster(n_parties=n_parties)
    xs, ws, us = cluster.share(x, 0), cluster.share(w, 1), cluster.share(up, n_parties - 1)
    z = _product(xs, ws, conv)
    g = (z - z) + us  # the upstream gradient, made to depend on z as a real one does (z - z is exactly 0)
    wrt = [s._node.id for s, want in zip((xs, ws), wants) if want]
    grads = autodiff.backward(cluster._builder, {z._node.id: g._node.id}, wrt)
    cluster._builder, count = mask_reuse.apply(cluster._builder, list(grads.values()))
    assert count == 1
    ops = [n.op for n in cluster._builder.nodes.values()]
    assert ops.count("bilinear_keep") == 1 and ops.count("bilinear_backward") == 1
    revealed = cluster.reveal(*(SecretTensor(cluster, cluster._builder.nodes[grads[k]]) for k in wrt))
    assert not {"matmul", "conv2d", "conv_transpose2d", "conv2d_weight"} & {n.op for n in cluster.last_program.nodes}
    expected = [leaf.grad for leaf, want in zip(leaves, wants) if want]
    for got, want in zip(revealed, expected):
        assert_close(got, want, 3e-3, case)


def test_a_gradient_that_does_not_depend_on_the_product_is_left_alone():
    """The rewrite needs g downstream of z (so the graph stays acyclic); here it is not."""
    cluster = mpc.InMemoryCluster(n_parties=2)
    xs, ws, us = cluster.share(_t(4, 3), 0), cluster.share(_t(3, 2), 1), cluster.share(_t(4, 2), 1)
    z = xs @ ws
    grads = autodiff.backward(cluster._builder, {z._node.id: us._node.id}, [xs._node.id, ws._node.id])
    _, count = mask_reuse.apply(cluster._builder, list(grads.values()))
    assert count == 0


def _mlp_program(savings, k=1):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    tp = compile_training(model, torch.zeros(1, 20), n_rows=1000, n_outputs=2, optimizer=SGD(0.5), batch_size=100,
                          savings=savings)
    return tp.program(k)[0]


@pytest.mark.parametrize("n_parties", [2, 3, 5])
def test_saving_per_step_is_the_openings_it_removes(n_parties):
    """MLP 20-32-2, batch 100: layer 2 no longer opens g - d', w^T - b', x^T - a'', g - d''
    beside g - d (|g| + |x| + |w| = 200 + 3200 + 64 elements); layer 1 (no input gradient)
    no longer opens x^T - a'' (2000). 8 bytes to each of N - 1 peers; rounds and dealer
    bytes unchanged (c' and c'' are as large as the separate triples' products)."""
    with_reuse = compiler.estimate(_mlp_program(SAVINGS), n_parties)
    without = compiler.estimate(_mlp_program(SAVINGS - {"reuse_masks"}), n_parties)
    saved = 8 * (n_parties - 1) * ((200 + 3200 + 64) + 2000)
    assert [a - b for a, b in zip(without.bytes_sent, with_reuse.bytes_sent)] == [saved] * n_parties
    assert without.rounds == with_reuse.rounds
    assert without.dealer_bytes == with_reuse.dealer_bytes


def test_every_step_has_fresh_masks():
    """Two unrolled steps: each step's forward products are their own nodes, each with its
    own correlation (a mask reused across steps would open w' - b and reveal the update)."""
    program = _mlp_program(SAVINGS, k=2)
    keeps = [n.id for n in program.nodes if n.op == "bilinear_keep"]
    assert len(keeps) == 4
    specs = compiler.estimate(program, 2).specs
    owners = [nid for nid, _, spec in specs if spec.kind == "bilinear_train"]
    assert sorted(owners) == keeps
