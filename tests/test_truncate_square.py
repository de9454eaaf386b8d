"""truncate_square: a truncation that also gives the square of its result, in the
truncation's one round, from the dealer's shares of S0^2 and S1^2 - S0^2. Checked on the
bare protocol (each party a generator, the dealer's real corrections, openings summed),
exactly in the ring: the square is the square of the truncated value, whichever way
msb(c) falls, for shifts where M^2 vanishes mod 2^64 (k <= 32) and where it does not."""

import pytest
import torch

from mpc import ring
from mpc.prg import PRG, derive_key
from mpc.protocols import correlations as corr
from mpc.protocols.arithmetic import max_shift, truncate, truncate_square
from mpc.protocols.base import Open, PartyContext, Randomness

SEEDS = [bytes([p + 7]) * 16 for p in range(5)]


def run(n_parties, protocol, shares, *args):
    """Run `protocol(ctx, share, *args)` at every party in lockstep; the dealer answers each
    Randomness request with its real correlation (party 0 from the dealer's correction
    bytes), and each Open is answered with the sum of everyone's values. Returns the
    parties' results and the number of rounds."""
    gens = [protocol(PartyContext(pid, n_parties), shares[pid], *args) for pid in range(n_parties)]
    replies, rounds, k = [None] * n_parties, 0, 0
    while True:
        requests, results = [], []
        for g, r in zip(gens, replies):
            try:
                requests.append(g.send(r))
            except StopIteration as stop:
                results.append(stop.value)
        if results:
            assert len(results) == n_parties  # every party ends in the same step
            return results, rounds
        if isinstance(requests[0], Randomness):
            spec = requests[0].spec
            keys = [derive_key(s, "corr", "job", k) for s in SEEDS[:n_parties]]
            correction = b"".join(corr.dealer_correction(spec, [PRG(key) for key in keys]))
            replies = [corr.party_part(spec, pid, PRG(keys[pid]), memoryview(correction) if pid == 0 else None)
                       for pid in range(n_parties)]
            k += 1
        else:
            assert all(isinstance(r, Open) and r.to is None for r in requests)
            rounds += 1
            opened = tuple(sum(r.values[j] for r in requests) for j in range(len(requests[0].values)))
            replies = [opened] * n_parties


def share(x: torch.Tensor, n_parties: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)  # test data, not a secret
    parts = [torch.randint(-2**62, 2**62, x.shape, generator=g) * 2 for _ in range(n_parties - 1)]
    return [x - sum(parts, torch.zeros_like(x)), *parts]


@pytest.mark.parametrize("n_parties", [2, 3, 5])
@pytest.mark.parametrize("bits", [1, 16, 30, 33, 40, 59])
def test_the_square_is_the_square_of_the_truncated_value_exactly(n_parties, bits):
    g = torch.Generator().manual_seed(bits)
    # values near the top of the valid range (|x| < 2^62) and near zero, both signs
    x = torch.cat([torch.randint(-2**61, 2**61, (3000,), generator=g),
                   torch.randint(-2**20, 2**20, (1000,), generator=g), torch.tensor([0, 1, -1])])
    (results, rounds) = run(n_parties, truncate_square, share(x, n_parties, bits), bits)
    y = sum(r[0] for r in results)
    y2 = sum(r[1] for r in results)
    assert rounds == 1
    assert torch.equal(y2, y * y)  # in the ring, wrap and all
    # and y is truncate's result: within floor(N/2) + 1 units of x / 2^k
    err = y - torch.div(x, 1 << bits, rounding_mode="floor")
    assert err.abs().max() <= n_parties // 2 + 1


def test_both_signs_of_the_opened_value_occur():
    """The two branches (msb(c) = 0: S1 = S0 + M; msb(c) = 1: S0) each hold: check that a
    sample of this size exercises both, so the test above cannot pass on one alone."""
    spec = corr.trunc_pair((4000,), 40, 3, square=True)
    keys = [derive_key(s, "corr", "job", 0) for s in SEEDS[:3]]
    correction = b"".join(corr.dealer_correction(spec, [PRG(key) for key in keys]))
    parts = [corr.party_part(spec, pid, PRG(keys[pid]), memoryview(correction) if pid == 0 else None)
             for pid in range(3)]
    r, big_r, t, m, d, q = (sum(p[j] for p in parts) for j in range(6))
    s0 = t - big_r
    assert torch.equal(q, s0 * s0)
    assert torch.equal(d, (s0 + m) * (s0 + m) - s0 * s0)
    wraps = ring.msb(r).bool()
    assert 0 < int(wraps.sum()) < len(r)  # M = 0 and M != 0 both present
    assert int((m != 0).sum()) == int(wraps.sum())


def test_the_square_variant_costs_a_word_and_a_ring_element_more():
    plain, squared = corr.trunc_pair((1000,), 16, 3), corr.trunc_pair((1000,), 16, 3, square=True)
    assert corr.correction_nbytes(plain) == 4 * 1000
    assert corr.correction_nbytes(squared) == (4 + 2 + 8) * 1000
    assert corr.correction_nbytes(corr.trunc_pair((10,), 40, 3, square=True)) == (8 * 3 + 8) * 10


def test_plain_truncate_is_unchanged():
    x = torch.randint(-2**40, 2**40, (500,), generator=torch.Generator().manual_seed(3))
    (results, rounds) = run(3, truncate, share(x, 3), 16)
    y = sum(results)
    assert rounds == 1 and (y - torch.div(x, 1 << 16, rounding_mode="floor")).abs().max() <= 2


@pytest.mark.parametrize("n_parties", [2, 3, 5])
def test_the_largest_shift_keeps_the_bound_and_one_more_is_refused(n_parties):
    """The dealer sums the parties' rho_i < 2^k in an int64: past max_shift(N) the sum
    wrapped and the result was off by up to 6 units with a bias (seen at k = 61, N = 5)."""
    k = max_shift(n_parties)
    x = torch.randint(-2**61, 2**61, (4000,), generator=torch.Generator().manual_seed(k))
    results, _ = run(n_parties, truncate, share(x, n_parties), k)
    err = sum(results) - torch.div(x, 1 << k, rounding_mode="floor")
    assert err.abs().max() <= n_parties // 2 + 1
    with pytest.raises(ValueError, match=rf"truncation by {k + 1} bits at {n_parties} parties is outside \[1, {k}\]"):
        run(n_parties, truncate, share(x, n_parties), k + 1)
