"""Range-reduced sqrt, 1/sqrt and reciprocal (protocols/ranges.py) against torch over their
whole ranges, at 2, 3 and 5 parties, including both sides of every band threshold, and 0
for x <= 0 (where rounding may leave a value that should be 0: it must not blow up).

Compared with the function of the encoded input (x rounded to 2^-16: below 10^-3 the
encoding, not the protocol, sets the error). Tolerance: 2 units in the last place, or a
relative error of 5e-4 for sqrt (sqrt(x') is computed at 2^-16 and the lowest bands divide
it by up to 2^8) and 1e-4 for 1/sqrt and 1/x (computed at 2^-24, but the Newton steps of
approx.inv_sqrt and approx.reciprocal_positive leave a few units of 2^-16 relative error).
"""

import pytest
import torch

import mpc
from mpc.api import SecretTensor

ULP = 2.0 ** -16

SQRT_X = [-3.0, -2 ** -16, 0.0, 2 ** -16, 1e-4, 7.8e-4, 7.9e-4, 0.01, 0.199, 0.201, 1.0, 51.1, 51.3, 1000.0,
          13100.0, 13200.0, 3.3e6, 3.4e6, 1e9]
RECIPROCAL_X = [-3.0, -2 ** -16, 0.0, 2 ** -16, 1e-4, 1.9e-3, 2.0e-3, 0.01, 0.49, 0.51, 1.0, 100.0, 127.9, 128.1,
                1000.0, 30000.0, 65000.0]


def _encoded(values):
    x = torch.tensor(values, dtype=torch.float64)
    return x, torch.round(x / ULP) * ULP


def _run(op, x, n_parties):
    cluster = mpc.InMemoryCluster(n_parties=n_parties)
    s = cluster.share(x, owner=n_parties - 1)
    node = cluster._builder.add(op, (s._node.id,), {})  # no SecretTensor method: the training compiler's ops
    (y,) = cluster.reveal(SecretTensor(cluster, node))
    return y


@pytest.mark.parametrize("n_parties", [2, 3, 5])
@pytest.mark.parametrize("op,values,fn,rel", [("sqrt_wide", SQRT_X, torch.sqrt, 5e-4),
                                              ("inv_sqrt_wide", SQRT_X, torch.rsqrt, 1e-4),
                                              ("reciprocal_wide", RECIPROCAL_X, torch.reciprocal, 1e-4)])
def test_wide_range_against_torch(op, values, fn, rel, n_parties):
    x, enc = _encoded(values)
    got = _run(op, x, n_parties)
    want = torch.where(enc > 0, fn(enc.clamp(min=ULP)), torch.zeros_like(enc))  # 0 at and below 0
    err = (got - want).abs()
    bound = torch.maximum(rel * want, torch.full_like(want, 2 * ULP))
    worst = int((err / bound).argmax())
    assert bool((err <= bound).all()), f"{op}({values[worst]}) = {got[worst].item()}, want {want[worst].item()}"
