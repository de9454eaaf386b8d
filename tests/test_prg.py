import pytest
import torch

from mpc.prg import PRG, derive_key, new_seed


def test_same_seed_same_stream_and_labels_separate():
    seed = new_seed()
    a = PRG(derive_key(seed, "corr", "job", 3)).ring((1000,))
    b = PRG(derive_key(seed, "corr", "job", 3)).ring((1000,))
    c = PRG(derive_key(seed, "corr", "job", 4)).ring((1000,))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def _chi_square_top_byte(x: torch.Tensor) -> float:
    counts = torch.bincount(((x >> 56) & 0xFF), minlength=256).double()
    expected = x.numel() / 256
    return (((counts - expected) ** 2) / expected).sum().item()


# 255 degrees of freedom: P(chi2 > 330.5) = 0.001
CHI2_CRIT = 330.5


def test_ring_elements_are_uniform():
    assert _chi_square_top_byte(PRG(new_seed()).ring((200_000,))) < CHI2_CRIT


def test_words_stay_in_range():
    w = PRG(new_seed()).words((10_000,), 16)
    assert int(w.min()) >= 0 and int(w.max()) < 2**16 and int(w.max()) > 2**15


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 1000, (1 << 20) + 17])
@pytest.mark.parametrize("offset", [0, 1, 15, 16, 17, 12345])
def test_a_stream_read_from_any_offset_is_the_same_stream(n, offset):
    """Counter mode seeks: PRG(key, offset=k) gives the bytes PRG(key) gives after its first k."""
    key = derive_key(new_seed(), "corr", "job", 0)
    whole = PRG(key).bytes(offset + n)
    out = bytearray(n)
    PRG(key, offset=offset).fill(out)
    assert bytes(out) == whole[offset:].numpy().tobytes()
