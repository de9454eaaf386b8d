"""Secret tensors speak torch, beyond the table of tests/test_torch_api.py: bad input raises
an error that names the call and what to write instead, in-place forms rebind the handle,
powers cost the rounds their docstring states, and public operands (Parameters included)
dispatch in either position.
"""

import pytest
import torch
import torch.nn.functional as F

import mpc
from tests.conftest import ULP, assert_close
from tests.test_torch_api import OPERANDS, seeded_randn


# -- bad input: each error names the call and what to do instead ------------------------------------------


@pytest.fixture(scope="module")
def three():
    return mpc.InMemoryCluster(n_parties=3)


@pytest.mark.parametrize("call, names", [
    (lambda x: torch.fft.fft(x), ["torch.fft.fft is not supported on secret tensors", "Nearest supported"]),
    (lambda x: F.relu6(x), ["torch.nn.functional.relu6 is not supported", "torch.nn.functional.relu"]),
    (lambda x: torch.cumsum(x, 0), ["torch.cumsum is not supported", "reveal()"]),
    (lambda x: torch.ones(4, 5).index_put_((torch.tensor([0]),), x), ["torch.Tensor.index_put_"]),
])
def test_unsupported_torch_function_names_it_and_the_nearest(three, call, names):
    with pytest.raises(TypeError) as err:
        call(three.share(OPERANDS["x"][0]))
    for name in names:
        assert name in str(err.value)


@pytest.mark.parametrize("exponent, error, words", [
    (2.5, ValueError, ["secret ** 2.5", "integer exponent", "x.log() * 2.5"]),
    (0.5, ValueError, ["secret ** 0.5", "x.sqrt()"]),
    (-1, ValueError, ["secret ** -1", "x.reciprocal() ** 1"]),
    (9, ValueError, ["secret ** 9", "(x ** 4) ** 3"]),
    ("2", TypeError, ["public int", "str"]),
])
def test_bad_exponent_says_what_to_write(three, exponent, error, words):
    x = three.share(OPERANDS["y"][0])
    with pytest.raises(error) as err:
        x ** exponent
    for w in words:
        assert w in str(err.value)
    with pytest.raises(error):
        torch.pow(x, exponent)


def test_secret_exponent_is_refused(three):
    x = three.share(OPERANDS["y"][0])
    with pytest.raises(TypeError, match="secret \\*\\* secret"):
        torch.pow(x, x)


def test_python_branch_on_a_secret_raises(three):
    x = three.share(OPERANDS["x"][0])
    with pytest.raises(TypeError, match="truth value of a SecretTensor is secret.*torch.where"):
        if x.sum() > 0:
            pass
    with pytest.raises(TypeError, match="truth value"):
        while torch.max(x) > 1:
            pass
    with pytest.raises(TypeError, match="truth value"):
        (x > 0) and (x < 1)


@pytest.mark.parametrize("call, words", [
    (lambda x: F.softmax(x), ["softmax", "dim="]),
    (lambda x: F.dropout(x, 0.5), ["training=False"]),
    (lambda x: F.max_pool2d(x.reshape(1, 1, 4, 5), 2, return_indices=True), ["return_indices"]),
    (lambda x: F.avg_pool2d(x.reshape(1, 1, 4, 5), 2, ceil_mode=True), ["ceil_mode=False"]),
    (lambda x: torch.div(x, 2, rounding_mode="floor"), ["rounding_mode='floor'"]),
    (lambda x: torch.where(x > 0), ["one argument"]),
    (lambda x: x.norm(p=3), ["p=1, 2 or inf"]),
    (lambda x: x.reshape(1, 4, 5).mm(torch.ones(5, 2)), ["mm expects 2-d", "matmul"]),
    (lambda x: F.conv2d(x.reshape(1, 1, 4, 5), torch.ones(1, 1, 3, 3), padding="same"), ["padding='same'"]),
])
def test_unsupported_arguments_raise_clearly(three, call, words):
    with pytest.raises((TypeError, ValueError)) as err:
        call(three.share(OPERANDS["x"][0]))
    for w in words:
        assert w in str(err.value)


# -- semantics that a table row cannot show -------------------------------------------------------------------


def test_in_place_rebinds_the_handle(three):
    value = OPERANDS["x"][0]
    x = three.share(value)
    alias, view = x, x[0]  # the alias sees updates, as in torch; the view taken before does not
    out = x.add_(1)
    x.relu_()
    x *= 2
    assert out is x and alias is x
    got_x, got_view = three.reveal(x, view)
    assert_close(got_x, torch.relu(value + 1) * 2, 2 * ULP, "x after add_, relu_, *=")
    assert_close(got_view, value[0], ULP, "view taken before the updates")
    y = x.clone()
    y.sub_(1)
    assert_close(x.reveal(), torch.relu(value + 1) * 2, 2 * ULP, "a clone's update leaves x alone")


@pytest.mark.parametrize("n, revealed_rounds", [(2, 1), (3, 3), (4, 3), (5, 5), (7, 5), (8, 5)])
def test_power_rounds_are_as_documented(three, n, revealed_rounds):
    """2 * ceil(log2 n) rounds, one fewer when revealed at once (SecretTensor.__pow__)."""
    y = three.share(OPERANDS["y"][0])
    (y ** n).reveal()
    assert max(s.rounds for s in three.last_stats) == revealed_rounds
    (y ** n + 1).reveal()
    assert max(s.rounds for s in three.last_stats) == revealed_rounds + 1


def test_square_opens_one_value_where_a_product_opens_two(three):
    x = three.share(seeded_randn(1000, seed=11))
    (x.square() + 0).reveal()
    square_bytes = sum(s.bytes_sent for s in three.last_stats)
    (x * x + 0).reveal()
    assert sum(s.bytes_sent for s in three.last_stats) > 1.3 * square_bytes


def test_public_first_operands_and_parameters_dispatch(three):
    value, weight = OPERANDS["x"][0], torch.nn.Parameter(OPERANDS["w"][0].clone())
    x = three.share(value)
    got = three.reveal(F.linear(x, weight), weight @ x.t(), torch.ones(4, 5) - x, 1.0 / (x.abs() + 1))
    assert_close(got[0], F.linear(value, weight.detach()), 2e-4, "F.linear(secret, Parameter)")
    assert_close(got[1], weight.detach() @ value.t(), 2e-4, "Parameter @ secret")
    assert_close(got[2], 1 - value, ULP, "public - secret")
    assert_close(got[3], 1 / (value.abs() + 1), 1e-4, "number / secret")
    assert (torch.zeros(4, 5) == x) is False  # `==` keeps Python's identity meaning, as secret == public does


def test_dtype_and_device_are_the_public_view(three):
    x = three.share(OPERANDS["x"][0].float())
    assert x.dtype == torch.float64 == x.reveal().dtype
    assert x.device == torch.device("cpu") == x.reveal().device
    assert x.is_floating_point()
