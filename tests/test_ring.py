import pytest
import torch

from mpc import ring


def test_encode_decode_round_trip():
    x = torch.tensor([0.0, 1.5, -2.25, 1e-5, -1e6, 12345.678])
    assert torch.allclose(ring.decode(ring.encode(x)), x.double(), atol=2**-17)


@pytest.mark.parametrize("bad, needle", [(float("nan"), "NaN"), (float("inf"), "infinity"), (2.0**31, "outside the fixed-point range")])
def test_encode_refuses(bad, needle):
    with pytest.raises(ring.RangeError, match=needle):
        ring.encode(torch.tensor([1.0, bad]))


def test_range_error_states_the_range():
    with pytest.raises(ring.RangeError, match=r"\(-1.07374e\+09, 1.07374e\+09\)"):
        ring.encode(torch.tensor([-3e9]))


def _wrap(v: int) -> int:
    return (v + 2**63) % 2**64 - 2**63


def test_matmul_and_conv_wrap_like_python_integers():
    g = torch.Generator().manual_seed(1)
    a = torch.randint(-2**62, 2**62, (3, 4), generator=g)
    b = torch.randint(-2**62, 2**62, (4, 2), generator=g)
    want = [[_wrap(sum(int(a[i, k]) * int(b[k, j]) for k in range(4))) for j in range(2)] for i in range(3)]
    assert torch.equal(ring.matmul(a, b), torch.tensor(want))
    x = torch.randint(-2**62, 2**62, (1, 2, 3, 3), generator=g)
    w = torch.randint(-2**62, 2**62, (1, 2, 2, 2), generator=g)
    got = ring.conv2d(x, w)
    want = _wrap(sum(int(x[0, c, i, j]) * int(w[0, c, i, j]) for c in range(2) for i in range(2) for j in range(2)))
    assert int(got[0, 0, 0, 0]) == want


def test_logical_shift_and_msb():
    x = torch.tensor([-1, 1, -2**63])
    assert ring.logical_shift_right(x, 60).tolist() == [15, 0, 8]
    assert ring.msb(x).tolist() == [1, 0, 1]
