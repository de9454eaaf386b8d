"""Large openings as a reduce-scatter and an all-gather (protocols/scatter.py): the same
results as the plain opening, 2(N-1)/N of its bytes for one more round, predicted exactly
by the cost model; small rounds and two-party rounds are left as they were."""

import pytest
import torch

import mpc
from mpc import compiler, ring
from mpc.protocols import scatter
from mpc.protocols.base import Open
from tests.conftest import ULP, assert_close

# 300k elements: x - a and y - b are 4.8 MB together, over SPLIT_MIN_BYTES
BIG = 300_000


def _t(n, seed):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("n_parties", [2, 3, 5])
def test_a_large_product_opens_split_with_fewer_bytes_as_the_cost_model_says(n_parties):
    cluster = mpc.InMemoryCluster(n_parties)
    x, y = _t(BIG, 0), _t(BIG, 1)
    # one owner: a Beaver product of two shared values (two owners': test_owned_product.py)
    z = (cluster.share(x, 0) * cluster.share(y, 0)).reveal()
    assert_close(z, x * y, 4 * ULP)
    stats = cluster.last_stats
    cost = compiler.estimate(cluster.last_program, n_parties, (-1,), owners=cluster.last_job.owners)
    assert [s.bytes_sent for s in stats] == cost.bytes_sent
    assert max(s.rounds for s in stats) == cost.total_rounds
    payload = 2 * BIG * 8  # the Beaver opening of x - a and y - b (the truncation is left to the caller)
    if n_parties == 2:  # the same bytes either way: not split
        assert cost.rounds == 1 and stats[0].bytes_sent == payload
    else:
        split = scatter.bytes_sent([Open((torch.empty(2 * BIG, dtype=torch.int64),))], 0, n_parties)
        assert abs(split - payload * 2 * (n_parties - 1) / n_parties) <= 16 * n_parties
        assert cost.rounds == 2 and stats[0].bytes_sent == split < payload * (n_parties - 1)


def test_small_rounds_and_rounds_to_one_party_are_not_split():
    small = Open((torch.empty(1000, dtype=torch.int64),))
    big = Open((torch.empty(scatter.SPLIT_MIN_BYTES // 8, dtype=torch.int64),))
    assert not scatter.splits([small], 3)
    assert scatter.splits([big], 3) and scatter.splits([big, small], 3)
    assert not scatter.splits([big], 2)
    assert not scatter.splits([Open(big.values, to=1)], 3)
    assert not scatter.splits([big, Open(small.values, to=0)], 3)


def test_xor_bits_and_mixed_widths_open_split(monkeypatch):
    """A round with ring elements and XOR-shared bytes (a comparison's), split: each slice
    combined with its own operation."""
    cluster = mpc.InMemoryCluster(3)
    n = scatter.SPLIT_MIN_BYTES // 8
    x = _t(n, 2) * 100
    got = (cluster.share(x, 0) > cluster.share(-x.flip(0), 2)).reveal()
    assert torch.equal(got, (x > -x.flip(0)).to(got.dtype))
    cost = compiler.estimate(cluster.last_program, 3, (-1,), owners=cluster.last_job.owners)
    assert [s.bytes_sent for s in cluster.last_stats] == cost.bytes_sent
    assert max(s.rounds for s in cluster.last_stats) == cost.total_rounds
    monkeypatch.setattr(scatter, "SPLIT_MIN_BYTES", 1 << 62)  # never split: the plain opening's cost
    plain = compiler.estimate(cluster.last_program, 3, (-1,), owners=cluster.last_job.owners)
    assert cost.total_rounds > plain.total_rounds and cost.bytes_sent[0] < plain.bytes_sent[0]


@pytest.mark.parametrize("n_parties", [3, 5])
def test_a_split_truncation_gathers_one_bit_an_element(n_parties):
    """A truncation's opening c = x + r, split: each party adds floor(c / 2^f) on its own
    slice and the all-gather carries only msb(c), packed; the products stay within the
    truncation's bound (floor(N/2) + 1 ulp of the exact product), the cost model
    predicts the bytes, and they are the plain split's less 63 bits an element of the gather."""
    cluster = mpc.InMemoryCluster(n_parties, defer_truncation=False)
    x, y = (ring.decode(ring.encode(_t(BIG, seed) * 30)) for seed in (3, 4))  # exact fixed-point inputs
    got = (cluster.share(x, 0) * cluster.share(y, 0)).reveal()  # one owner: a Beaver product
    err = (got - x * y).abs().max().item() / ULP
    assert err < n_parties // 2 + 1, f"worst error {err:.3f} ulp"
    stats = cluster.last_stats
    cost = compiler.estimate(cluster.last_program, n_parties, (-1,), owners=cluster.last_job.owners)
    assert [s.bytes_sent for s in stats] == cost.bytes_sent
    per, slice_ = (n_parties - 1) / n_parties, BIG / n_parties
    want = 16 * BIG * 2 * per + 8 * BIG * per + (n_parties - 1) * slice_ / 8
    assert all(abs(s.bytes_sent - want) <= 8 * n_parties for s in stats), [s.bytes_sent for s in stats]
    assert max(s.rounds for s in stats) == 4
