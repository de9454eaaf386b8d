"""The streaming offline phase: the dealer's corrections made chunk by chunk are the bytes of
whole generation (protocols/streaming.py)."""

import pytest

from mpc.prg import PRG, derive_key
from mpc.protocols import correlations as corr
from mpc.protocols import streaming

SEEDS = [bytes([p + 1]) * 16 for p in range(5)]


def keys(n_parties, label="job", k=0):
    return [derive_key(s, "corr", label, k) for s in SEEDS[:n_parties]]


def whole(spec, ks) -> bytes:
    return b"".join(corr.dealer_correction(spec, [PRG(k) for k in ks]))


def kinds(n):
    """Every streamed kind over n elements (shape (n,), or a 2-d shape of n elements)."""
    return [corr.mul_triple((n,), (n,)), corr.square_pair((n,)),
            corr.trunc_pair((n,), 16, 3), corr.trunc_pair((n,), 30, 3), corr.trunc_pair((n,), 40, 3),
            corr.trunc_pair((n,), 12, 2),  # N even: party 0's rho has one bit more
            corr.compare_material((n,), "lt"), corr.compare_material((n,), "eq"),
            corr.compare_material((n,), "lt", [(n,), (n, 3)]), corr.compare_material((1, n), "eq", [(1, n, 2)])]


# Sizes below a chunk, on it, and past it by less than a byte of packed bits; chunks of 8 to 64.
@pytest.mark.parametrize("n", [1, 7, 8, 9, 17, 37, 64, 100, 257])
@pytest.mark.parametrize("chunk", [8, 16, 24, 64])
def test_chunked_generation_is_whole_generation_byte_for_byte(n, chunk):
    for spec in kinds(n):
        n_parties = spec.param("n") if spec.kind == "trunc" else 3
        ks = keys(n_parties)
        pieces = list(streaming.correction_pieces(spec, ks, chunk))
        assert b"".join(pieces) == whole(spec, ks), (spec, chunk)
        if n > chunk and spec.kind in ("mul", "square"):  # one piece a chunk, sent as it is made
            assert len(pieces) == -(-n // chunk)


@pytest.mark.parametrize("n_parties", [2, 3, 5])
def test_past_the_default_chunk_at_any_number_of_parties(n_parties):
    n = streaming.CHUNK + 13  # two chunks, the last one ending inside a byte of bits
    ks = keys(n_parties)
    for spec in [corr.mul_triple((n,), (n,)), corr.trunc_pair((n,), 16, n_parties),
                 corr.compare_material((n,), "lt", [(n,)])]:
        assert b"".join(streaming.correction_pieces(spec, ks)) == whole(spec, ks), spec


def test_kinds_that_mix_elements_are_made_whole():
    assert streaming.elements(corr.mul_triple((4, 5), (4, 5))) == 20
    assert streaming.elements(corr.compare_material((3, 4), "lt", [(3, 4, 2)])) == 12
    assert streaming.elements(corr.compare_material((3, 4), "lt", [(4, 3)])) is None  # (a dealer fails on it)
    for spec in [corr.mul_triple((4, 5), (5,)),  # broadcast: b is not elementwise over c
                 corr.matmul_triple((4, 5), (5, 6)),
                 corr.conv2d_triple((1, 2, 5, 5), (3, 2, 3, 3), (1, 1), (0, 0), (1, 1), 1),
                 corr.bilinear_train_triple((4, 3), (3, 2), dx=True, dw=True)]:
        ks = keys(3)
        assert streaming.elements(spec) is None
        assert b"".join(streaming.correction_pieces(spec, ks, 8)) == whole(spec, ks), spec


def test_a_job_stream_is_every_correlation_in_order():
    specs = [corr.mul_triple((40,), (40,)), corr.matmul_triple((3, 4), (4, 2)), corr.trunc_pair((33,), 16, 3),
             corr.compare_material((21,), "lt", [(21,)])]
    got = b"".join(streaming.dealer_stream(SEEDS[:3], "job-7", specs, chunk=16))
    assert got == b"".join(whole(s, keys(3, "job-7", k)) for k, s in enumerate(specs))


def test_a_chunk_size_that_splits_a_byte_of_bits_is_refused():
    n = 40
    with pytest.raises(ValueError, match="split a byte"):
        list(streaming.correction_pieces(corr.compare_material((n,), "lt"), keys(3), 12))
