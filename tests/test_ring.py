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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.int64, torch.int32])
def test_range_ends_in_every_dtype(dtype):
    limit = ring.max_abs_value(16)  # 2^30
    ring.check_encodable(torch.tensor([limit - 64, -(limit - 64), 0]).to(dtype), 16)  # exact in float32 too
    for end in (limit, -limit):
        with pytest.raises(ring.RangeError, match="outside the fixed-point range"):
            ring.check_encodable(torch.tensor([0, end]).to(dtype), 16)
    if dtype.is_floating_point:
        with pytest.raises(ring.RangeError, match=r"infinity at index \(1,\)"):
            ring.check_encodable(torch.tensor([1.0, -float("inf")]).to(dtype))
        with pytest.raises(ring.RangeError, match=r"NaN at index \(2,\)"):
            ring.check_encodable(torch.tensor([1.0, -float("inf"), float("nan")]).to(dtype))
    ring.check_encodable(torch.tensor([True, False]), 30)


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


def test_conv_adjoints_wrap_like_python_integers():
    """conv_transpose2d and conv2d_weight (conv2d's gradient products) in int64 wrap mod 2^64."""
    g = torch.Generator().manual_seed(2)
    dz = torch.randint(-2**62, 2**62, (1, 2, 2, 2), generator=g)
    w = torch.randint(-2**62, 2**62, (2, 1, 2, 2), generator=g)
    x = torch.randint(-2**62, 2**62, (1, 1, 3, 3), generator=g)
    # stride 1, no padding: dx[0, 0, 1, 1] collects every (o, i, j) with i, j in {0, 1}
    got = ring.conv_transpose2d(dz, w)
    want = _wrap(sum(int(dz[0, o, 1 - i, 1 - j]) * int(w[o, 0, i, j]) for o in range(2) for i in range(2)
                     for j in range(2)))
    assert int(got[0, 0, 1, 1]) == want
    got = ring.conv2d_weight(x, dz, (2, 2))
    want = _wrap(sum(int(dz[0, 1, i, j]) * int(x[0, 0, i + 1, j]) for i in range(2) for j in range(2)))
    assert int(got[1, 0, 1, 0]) == want


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 1, 1, 1), ((2, 1), (1, 0), 1, 2), (2, 2, 2, 3),
                                                            (3, 0, (1, 2), 6)])
def test_conv_adjoints_are_torch_gradients(stride, padding, dilation, groups):
    """On small integers (exact in float64): conv_transpose2d with conv2d_output_padding and
    conv2d_weight are torch autograd's input and kernel gradients of conv2d, for strides that
    floor-divide, unequal strides, dilation, groups and depthwise."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-9, 9, (2, 6, 9, 8), generator=g).double().requires_grad_()
    w = torch.randint(-9, 9, (6, 6 // groups, 3, 2), generator=g).double().requires_grad_()
    z = torch.nn.functional.conv2d(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)
    dz = torch.randint(-9, 9, z.shape, generator=g).double()
    z.backward(dz)
    out_pad = ring.conv2d_output_padding((9, 8), (3, 2), stride, padding, dilation)
    dx = ring.conv_transpose2d(dz.long(), w.detach().long(), stride, padding, out_pad, dilation, groups)
    dw = ring.conv2d_weight(x.detach().long(), dz.long(), (3, 2), stride, padding, dilation, groups)
    assert torch.equal(dx, x.grad.long()) and torch.equal(dw, w.grad.long())


def test_logical_shift_and_msb():
    x = torch.tensor([-1, 1, -2**63])
    assert ring.logical_shift_right(x, 60).tolist() == [15, 0, 8]
    assert ring.msb(x).tolist() == [1, 0, 1]
