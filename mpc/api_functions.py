"""SecretTensor's comparisons, reductions and smooth functions (mixed into api.SecretTensor).

Each method adds one node; the protocols are in mpc.protocols.compare, .nonlinear and
.approx, whose docstrings give rounds, bytes and valid input ranges (also in the README).
Comparisons return fixed-point 0.0/1.0 secret tensors, as CrypTen does.
"""

from __future__ import annotations

import torch


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _comparison(op: str, doc: str | None = None):
    def method(self, other):
        return self._compare(other, op)

    method.__name__ = op
    method.__doc__ = doc or f"Elementwise `{op}` against a secret or public operand: secret 0.0/1.0."
    return method


class FunctionsMixin:
    # -- comparisons -------------------------------------------------------------------------------

    def _compare(self, other, op: str):
        if isinstance(other, type(self)):
            return self._new("cmp", (self, other), cmp=op)
        return self._new("cmp_public", (self,), cmp=op, value=self._public(other))

    __gt__ = gt = _comparison("gt")
    __ge__ = ge = _comparison("ge")
    __lt__ = lt = _comparison("lt")
    __le__ = le = _comparison("le")
    eq = _comparison("eq", "Elementwise ==, as a method: `==` keeps Python's identity meaning on SecretTensor.")
    ne = _comparison("ne")

    # -- piecewise-linear --------------------------------------------------------------------------

    def relu(self):
        return self._new("relu", (self,))

    def abs(self):
        return self._new("abs", (self,))

    __abs__ = abs

    def sign(self):
        """torch.sign: 1, 0 or -1 (CrypTen's sign gives 1 at 0)."""
        return self._new("sign", (self,))

    def clamp(self, min=None, max=None):
        attrs = {}
        if min is not None:
            attrs["low"] = self._public(min)
        if max is not None:
            attrs["high"] = self._public(max)
        return self._new("clamp", (self,), **attrs) if attrs else self

    clip = clamp

    def where(self, condition, other):
        """torch.where(condition, self, other)."""
        return where(condition, self, other)

    # -- reductions --------------------------------------------------------------------------------

    def _flat_dim(self, dim):
        return (self.reshape(-1), 0) if dim is None else (self, dim % self.dim())

    def max(self, dim=None, keepdim: bool = False):
        """Maximum over `dim` (all elements when None). Values only; see argmax."""
        x, d = self._flat_dim(dim)
        return x._new("max", (x,), dim=d, keepdim=keepdim and dim is not None)

    amax = max

    def min(self, dim=None, keepdim: bool = False):
        return -((-self).max(dim, keepdim))

    amin = min

    def argmax(self, dim=None, keepdim: bool = False, one_hot: bool = False):
        """Index of the first maximum, or with one_hot=True a one-hot tensor shaped like the
        input (CrypTen's default form). Both come from the same comparison tree."""
        x, d = self._flat_dim(dim)
        return x._new("argmax", (x,), dim=d, keepdim=keepdim and dim is not None, one_hot=one_hot)

    def argmin(self, dim=None, keepdim: bool = False, one_hot: bool = False):
        return (-self).argmax(dim, keepdim, one_hot)

    def max_pool2d(self, kernel_size, stride=None, padding=0):
        return max_pool2d(self, kernel_size, stride, padding)

    # -- smooth functions ----------------------------------------------------------------------------

    def _refuse_known(self, what: str, bad, why: str, error=ValueError):
        """Cheap checks on a tensor whose plaintext the caller made public (cluster.public)."""
        if self._known is not None and self._known.numel() and bool(bad(self._known).any()):
            raise error(f"{what} of a public tensor with {why}")

    def exp(self):
        return self._new("exp", (self,))

    def log(self):
        self._refuse_known("log", lambda v: v <= 0, "entries <= 0")
        return self._new("log", (self,))

    def reciprocal(self):
        self._refuse_known("reciprocal", lambda v: v == 0, "a zero", ZeroDivisionError)
        return self._new("reciprocal", (self,))

    def sqrt(self):
        self._refuse_known("sqrt", lambda v: v < 0, "negative entries")
        return self._new("sqrt", (self,))

    def inv_sqrt(self):
        self._refuse_known("inv_sqrt", lambda v: v <= 0, "entries <= 0")
        return self._new("inv_sqrt", (self,))

    rsqrt = inv_sqrt

    def sigmoid(self):
        return self._new("sigmoid", (self,))

    def tanh(self):
        return self._new("tanh", (self,))

    def softmax(self, dim: int):
        return self._new("softmax", (self,), dim=dim % self.dim())

    def log_softmax(self, dim: int):
        return self._new("log_softmax", (self,), dim=dim % self.dim())

    def __truediv__(self, other):
        if isinstance(other, type(self)):
            other._refuse_known("division", lambda v: v == 0, "a zero", ZeroDivisionError)
            return self._new("div", (self, other))
        divisor = self._public(other)
        if divisor.numel() and bool((divisor == 0).any()):
            raise ZeroDivisionError("division of a secret tensor by a public zero")
        return self * (1.0 / divisor)

    def __rtruediv__(self, other):
        return self.reciprocal() * self._public(other)


def where(condition, x, y):
    """torch.where(condition, x, y): a public boolean condition selects locally; a secret
    one (fixed-point 0/1, e.g. from a comparison) costs one product."""
    secret = FunctionsMixin  # SecretTensor's base: no import of mpc.api needed here
    if not isinstance(x, secret) and not isinstance(y, secret):
        raise TypeError("where needs at least one secret tensor among x and y")
    anchor = x if isinstance(x, secret) else y

    def lift(v):
        return v if isinstance(v, secret) else anchor._cluster.public(
            torch.as_tensor(v, dtype=torch.float64).expand(anchor.shape))

    x, y = lift(x), lift(y)
    if isinstance(condition, secret):
        return condition._new("where", (condition, x, y))
    cond = torch.as_tensor(condition).to(torch.bool)
    return x._new("where_public", (x, y), cond=cond)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """torch.nn.functional.max_pool2d on a secret (N, C, H, W) or (C, H, W) tensor."""
    kernel = _pair(kernel_size)
    return x._new("max_pool2d", (x,), kernel=kernel, stride=_pair(stride) if stride is not None else kernel,
                  padding=_pair(padding))
