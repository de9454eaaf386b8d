"""Protocol breadth on the in-memory transport, every op against plaintext torch."""

import asyncio
import math

import pytest
import torch

import mpc
from mpc import ring
from mpc.ir import Job, Node, Program
from tests.conftest import ULP, assert_close
from tests.test_prg import CHI2_CRIT, _chi_square_top_byte

# One truncation: |err| < floor(N/2) + 1 ulp; the inputs' own rounding adds |x|+|y| half-ulps.
def product_tol(n_parties: int, scale: float = 8.0) -> float:
    return (n_parties // 2 + 1) * ULP + scale * ULP


@pytest.fixture(params=[2, 3, 5], ids=lambda n: f"{n}p")
def cluster(request):
    return mpc.InMemoryCluster(n_parties=request.param)


def rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def test_linear_ops(cluster):
    x, y = rand(4, 5), rand(4, 5, seed=1)
    sx, sy = cluster.share(x, owner=0), cluster.share(y, owner=cluster.n_parties - 1)
    got = cluster.reveal(sx + sy, sx - sy, -sx, sx + 2.5, 3.0 - sx, sx + rand(5, seed=2), sx * 3)
    want = [x + y, x - y, -x, x + 2.5, 3.0 - x, x + rand(5, seed=2), x * 3]
    for g, w in zip(got, want):
        assert_close(g, w, 2 * ULP)
    assert all(s.rounds == 0 for s in cluster.last_stats)


def test_products(cluster):
    n = cluster.n_parties
    x, y, m, b = rand(3, 4), rand(4), rand(2, 4, 6, seed=3), rand(2, 6, 5, seed=4)
    sx, sy, sm, sb = (cluster.share(t, owner=i % n) for i, t in enumerate([x, y, m, b]))
    got = cluster.reveal(sx * sy, sm @ sb, sx @ rand(4, 2, seed=5), rand(2, 3, seed=6) @ sx, sx * 0.25, sx / 3)
    want = [x * y, m @ b, x @ rand(4, 2, seed=5), rand(2, 3, seed=6) @ x, x * 0.25, x / 3]
    for g, w in zip(got, want):
        assert_close(g, w, product_tol(n, scale=32))
    # all independent products share one round: the Beaver openings of the secret products
    # (revealed to the caller, so untruncated) and the truncations of the public scalings
    assert max(s.rounds for s in cluster.last_stats) == 1


@pytest.mark.parametrize("stride, padding", [(1, 0), (2, 1)])
def test_conv2d(cluster, stride, padding):
    x, w = rand(2, 3, 9, 9), rand(4, 3, 3, 3, seed=1)
    got = mpc.conv2d(cluster.share(x, 0), cluster.share(w, 1), stride=stride, padding=padding).reveal()
    assert_close(got, torch.nn.functional.conv2d(x, w, stride=stride, padding=padding), product_tol(cluster.n_parties, 64))


def test_reductions_and_shapes(cluster):
    x, y = rand(2, 3, 4), rand(2, 3, 4, seed=1)
    sx, sy = cluster.share(x, 0), cluster.share(y, 1)
    got = cluster.reveal(sx.sum(), sx.sum(1), sx.sum((0, 2), keepdim=True), sx.mean(-1), sx.mean(),
                         sx.reshape(6, 4), sx.transpose(0, 2), sx.permute(2, 0, 1), sx[1, :, ::2], sx[..., None, 1],
                         mpc.cat([sx, sy], 1), mpc.stack([sx, sy], 0), sx.T, sx.flatten(1))
    want = [x.sum(), x.sum(1), x.sum((0, 2), keepdim=True), x.mean(-1), x.mean(), x.reshape(6, 4), x.transpose(0, 2),
            x.permute(2, 0, 1), x[1, :, ::2], x[..., None, 1], torch.cat([x, y], 1), torch.stack([x, y], 0),
            x.permute(2, 1, 0), x.flatten(1)]
    for g, w in zip(got, want):
        assert_close(g, w, 30 * ULP)


def test_reveal_to_a_party_and_to_all(cluster):
    x = rand(3)
    sx = cluster.share(x, 0)
    last = cluster.n_parties - 1
    assert_close(cluster.reveal(sx * 2, to=last)[0], x * 2, ULP)
    assert_close(cluster.reveal(sx + 1, to="all")[0], x + 1, ULP)


def test_values_are_kept_between_reveals(cluster):
    x = rand(5)
    sx = cluster.share(x, 0)
    y = sx * sx
    assert_close(y.reveal(), x * x, product_tol(cluster.n_parties, 8))
    z = y + sx  # y is stored at the parties: no product is recomputed, only truncated
    assert_close(z.reveal(), x * x + x, product_tol(cluster.n_parties, 8))
    assert all(s.rounds == 1 and s.n_correlations == 1 for s in cluster.last_stats)
    w = y - sx  # now y is kept truncated: nothing to do
    assert_close(w.reveal(), x * x - x, product_tol(cluster.n_parties, 8))
    assert all(s.rounds == 0 and s.n_correlations == 0 for s in cluster.last_stats)


def test_a_product_revealed_to_the_caller_skips_its_truncation(cluster):
    n = cluster.n_parties
    x, y = rand(1000) * 30, rand(1000, seed=1) * 30
    x, y = ring.decode(ring.encode(x)), ring.decode(ring.encode(y))  # exact fixed-point inputs
    sx, sy = cluster.share(x, 0), cluster.share(y, 1)
    prod = sx * sy
    assert torch.equal(prod.reveal(), x * y)  # decoded at scale 2^-32: exact
    stats = cluster.last_stats[0]
    # two parties' inputs: an owned product, party 0 sends x - a to party 1 alone
    assert stats.rounds == 1 and stats.bytes_sent == 8 * 1000 and stats.dealer_bytes == 8 * 1000
    # used further, the kept share (scale 2^-32) is truncated first: one round, no new triple
    got_sum, got_again = cluster.reveal(prod + 1.0, prod)
    assert_close(got_sum, x * y + 1.0, product_tol(n, 0))
    assert_close(got_again, x * y, product_tol(n, 0))
    assert all(s.rounds == 1 and s.n_correlations == 1 for s in cluster.last_stats)


@pytest.mark.parametrize("owners", [(0, 1), (0, 0)])
@pytest.mark.parametrize("n_parties", [2, 3, 5])
def test_truncation_error_bound_on_a_million_products(n_parties, owners):
    """10^6 products, a quarter of them near the range limit 2^30: never a wrap, and
    every error within the stated bound floor(N/2) + 1 ulp, with mean near zero."""
    cluster = mpc.InMemoryCluster(n_parties=n_parties, defer_truncation=False)  # truncate even at the reveal
    g = torch.Generator().manual_seed(n_parties)
    n = 1_000_000
    x = torch.randn(n, generator=g, dtype=torch.float64) * 100
    y = torch.randn(n, generator=g, dtype=torch.float64) * 100
    big = n // 4  # |x * y| just below 2^30
    x[:big] = (2.0**15) * torch.sign(x[:big])
    y[:big] = (2.0**15 - 1) * torch.sign(y[:big])
    x, y = ring.decode(ring.encode(x)), ring.decode(ring.encode(y))  # exact fixed-point inputs
    got = (cluster.share(x, owners[0]) * cluster.share(y, owners[1])).reveal()
    err = (got - x * y) / ULP
    bound = n_parties // 2 + 1
    assert err.abs().max().item() < bound, f"worst error {err.abs().max().item():.3f} ulp"
    assert abs(err.mean().item()) < 0.01, f"mean error {err.mean().item():.4f} ulp: truncation is biased"
    stats = cluster.last_stats[0]
    # two parties' inputs: an owned product (party 0 sends x - a, 8 bytes an element, to party 1
    # alone); at N = 2 the truncation opens c whole, from 3 parties on c and the truncation are
    # held by the two owners alone, each opening half of c (4 bytes an element) and sending the
    # other the signs of its half (compiler/owned.py)
    if owners == (0, 0):  # one owner: a Beaver product, then the truncation among all
        if n_parties == 2:
            assert stats.rounds == 2 and stats.bytes_sent == 24 * n  # e, d and c: 8 bytes each
        else:  # both openings split (protocols/scatter.py): two rounds each, the truncation's c
            # gathering a bit an element
            assert stats.rounds == 4
            want = 16 * n * 2 * (n_parties - 1) / n_parties + 8 * n * (n_parties - 1) / n_parties \
                + (n_parties - 1) * n / n_parties / 8
            assert abs(stats.bytes_sent - want) <= 64 * n_parties
    elif n_parties == 2:
        assert stats.rounds == 2
        assert stats.bytes_sent == 8 * n + 8 * n
    else:
        assert stats.rounds == 3
        assert stats.bytes_sent == 8 * n + 8 * n // 2 + n // 2 // 8
        assert all(s.bytes_sent == 0 for s in cluster.last_stats[2:])
    assert stats.dealer_bytes == 12 * n  # triple 8 + truncation 4


def test_shares_are_uniform_and_hide_the_value():
    cluster = mpc.InMemoryCluster(n_parties=3)
    n = 200_000
    x = torch.full((n,), 1.5, dtype=torch.float64)
    program = Program((Node(0, "input", (), {"shape": (n,), "kind": "private"}, (n,)),), (0,))
    job = Job("j", program.digest, owners={0: 0}, recipients=(-1,))

    async def go():
        for s in cluster.sessions:
            await s.load(program)
        await asyncio.gather(*(s.submit(job, {0: x} if p == 0 else {}) for p, s in enumerate(cluster.sessions)))
        return await asyncio.gather(*(s.run("j") for s in cluster.sessions))

    outcomes = asyncio.run(go())
    shares = [o.shares[0] for o in outcomes]
    assert torch.equal(sum(shares), ring.encode(x))
    for p, share in enumerate(shares):
        assert _chi_square_top_byte(share) < CHI2_CRIT, f"party {p}'s share is not uniform"
        assert not (share == ring.encode(x)).any(), f"party {p}'s share equals the secret"


def test_shape_mismatch_names_both_shapes_before_sending():
    cluster = mpc.InMemoryCluster(n_parties=3)
    a, b = cluster.share(rand(4, 5), 0), cluster.share(rand(3, 2), 1)
    with pytest.raises(mpc.api.CompileError, match=r"matmul at node \d+ \(matmul\) at tests/test_protocols.py:\d+: "
                                                    r"shapes \(4, 5\) and \(3, 2\)"):
        a @ b
    with pytest.raises(mpc.api.CompileError, match=r"mul at node \d+ \(mul\) at .*: shapes \(4, 5\) and \(3, 2\)"):
        a * b


def test_sharing_refuses_bad_values_with_the_range():
    cluster = mpc.InMemoryCluster(n_parties=2)
    with pytest.raises(ring.RangeError, match="NaN"):
        cluster.share(torch.tensor([1.0, math.nan]))
    with pytest.raises(ring.RangeError, match=r"magnitude 5e\+09, outside the fixed-point range"):
        cluster.share(torch.tensor([5e9]))
    with pytest.raises(ZeroDivisionError):
        cluster.share(torch.ones(2)) / 0
