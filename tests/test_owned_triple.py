"""The owned product triple ("omul"): a at its owner alone, b at its owner alone, shares of
c = a * b at every party; the dealer's streamed corrections equal its whole ones."""

import pytest
import torch

from mpc.prg import PRG, derive_key, new_seed
from mpc.protocols import bilinear, correlations, holders, streaming


@pytest.mark.parametrize("owners", [(0, 1), (1, 2), (2, 0)])
def test_owned_triple_reconstructs_and_streams_like_whole(owners):
    n_parties, n = 3, 1000
    spec = correlations.owned_mul_triple((n,), (n,), *owners)
    seeds = [new_seed() for _ in range(n_parties)]
    keys = [derive_key(s, "corr", "job", 0) for s in seeds]
    whole = correlations.dealer_correction(spec, [PRG(k) for k in keys])
    streamed = b"".join(bytes(p) for p in streaming.correction_pieces(spec, keys, chunk=64))
    assert b"".join(whole) == streamed
    parts = [correlations.party_part(spec, pid, PRG(keys[pid]), memoryview(streamed) if pid == 0 else None)
             for pid in range(n_parties)]
    oa, ob = owners
    a, b = parts[oa][0], parts[ob][0]
    assert all(len(parts[p]) == 1 for p in range(n_parties) if p not in owners)  # c alone
    c = sum(p[-1] for p in parts)
    assert torch.equal(c, a * b)
    assert a.shape == b.shape == (n,) and not torch.equal(a, b)


def test_owned_triple_needs_two_owners():
    with pytest.raises(ValueError, match="two different owners"):
        correlations.owned_mul_triple((4,), (4,), 1, 1)


def test_owned_matmul_and_conv_triples_reconstruct():
    """c = B(a, b) for the ring's matmul and conv2d, a and b each at their owner alone."""
    n_parties = 3
    for base in [correlations.matmul_triple((3, 4), (4, 5)),
                 correlations.conv2d_triple((1, 2, 6, 6), (3, 2, 3, 3), (1, 1), (1, 1), (1, 1), 1)]:
        spec = holders.owned_triple(base, 2, 0)
        keys = [derive_key(new_seed(), "corr", "job", 0) for _ in range(n_parties)]
        whole = b"".join(correlations.dealer_correction(spec, [PRG(k) for k in keys]))
        parts = [correlations.party_part(spec, pid, PRG(keys[pid]), memoryview(whole) if pid == 0 else None)
                 for pid in range(n_parties)]
        a, b = parts[2][0], parts[0][0]
        assert len(parts[1]) == 1 and a.shape == base.shapes[0] and b.shape == base.shapes[1]
        assert torch.equal(sum(p[-1] for p in parts), bilinear.bilinear(base)(a, b))
