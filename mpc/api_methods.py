"""SecretTensor's torch method parity: powers, square, var/std/norm, views, introspection
and in-place forms (mixed into api.SecretTensor; torch functions reach them through
mpc.torch_api).

Every method builds graph nodes through the op registry like the rest of the API. Costs
are stated per method; a product is 2 rounds here (an opening, then the truncation), and
products that do not depend on each other share their rounds.

In-place forms (`x.add_(1)`, `x.relu_()`, `x += y`, `F.relu(x, inplace=True)`): shares
are immutable, so an in-place method computes a new node and rebinds *this handle* to it,
then returns the handle, as torch returns `self`. Names bound to the same handle see the
change, as in torch; but views taken earlier (`v = x[0]` before `x.add_(1)`) keep the old
value, unlike torch, because a view is a node of its own. Take views after the update.
"""

from __future__ import annotations

import operator

import torch

MAX_EXPONENT = 8  # x ** 8 of a value above 4 already leaves the fixed-point range


def _reduced_count(shape, dims) -> int:
    count = 1
    for d in dims if dims else range(len(shape)):
        count *= shape[d]
    return count


def _exponent(exponent) -> int:
    """The exponent of `x ** exponent` as an int in 0..MAX_EXPONENT, or a clear error."""
    call = f"secret ** {exponent!r}"
    if isinstance(exponent, torch.Tensor) and exponent.numel() == 1 and not exponent.requires_grad:
        exponent = exponent.item()
    if isinstance(exponent, float) and exponent.is_integer():
        exponent = int(exponent)  # `x ** 2.0` is common in torch code and exact here
    if isinstance(exponent, bool) or not isinstance(exponent, int):
        if isinstance(exponent, float):
            raise ValueError(f"{call}: a secret tensor takes only an integer exponent in 0..{MAX_EXPONENT} "
                             f"(computed by products). Use x.sqrt() for 0.5, x.rsqrt() for -0.5, or "
                             f"(x.log() * {exponent!r}).exp() where x > 0")
        raise TypeError(f"{call}: the exponent must be a public int in 0..{MAX_EXPONENT}, "
                        f"not {type(exponent).__name__}; for a secret exponent e with x > 0 use (x.log() * e).exp()")
    if exponent < 0:
        raise ValueError(f"{call}: a negative exponent needs a reciprocal: write x.reciprocal() ** {-exponent}")
    if exponent > MAX_EXPONENT:
        raise ValueError(f"{call}: exponents above {MAX_EXPONENT} overflow the fixed-point range for "
                         f"|x| > {2 ** (14 / MAX_EXPONENT):.2f}; write the products out (e.g. (x ** 4) ** 3) "
                         "if your values are small enough")
    return exponent


class TensorMethodsMixin:
    # -- the public view of a share ------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        """torch.float64: what reveal() returns (shares are int64 ring elements encoding
        fixed point with cluster.frac_bits fractional bits; that is not visible here)."""
        return torch.float64

    @property
    def device(self) -> torch.device:
        """cpu: where reveal() puts its result (the shares live at the parties)."""
        return torch.device("cpu")

    @property
    def ndim(self) -> int:
        return self.dim()

    is_floating_point = staticmethod(lambda: True)

    def __len__(self) -> int:
        if self.dim() == 0:
            raise TypeError("len() of a 0-d secret tensor")
        return self.shape[0]

    def __iter__(self):
        """Secret tensors of dim 0's slices, like iterating a torch tensor (no communication)."""
        if self.dim() == 0:
            raise TypeError("iteration over a 0-d secret tensor")
        return (self[i] for i in range(self.shape[0]))

    def _handle(self):
        """A new handle on the same node: what clone() and `x ** 1` return, so that an
        in-place update of one handle does not move the other."""
        out = type(self)(self._cluster, self._node)
        out._known = self._known
        return out

    def clone(self, *, memory_format=None):
        return self._handle()

    def detach(self):
        """No-op (secret tensors carry no autograd history); a new handle, as torch's is."""
        return self._handle()

    contiguous = detach

    # -- views ----------------------------------------------------------------------------------------

    def t(self):
        """Transpose of a tensor of at most 2 dims (torch.t)."""
        if self.dim() > 2:
            raise ValueError(f"t() expects a tensor with <= 2 dimensions, but this one is {self.dim()}-d")
        return self.transpose(0, 1) if self.dim() == 2 else self._handle()

    @property
    def mT(self):
        """The last two dims swapped (batched matrix transpose)."""
        if self.dim() < 2:
            raise ValueError("mT needs a tensor of at least 2 dimensions")
        return self.transpose(-2, -1)

    swapaxes = swapdims = lambda self, dim0, dim1: self.transpose(dim0, dim1)

    # -- arithmetic in torch's method spelling ------------------------------------------------------

    def add(self, other, *, alpha=1):
        return self + (other if alpha == 1 else other * alpha)

    def sub(self, other, *, alpha=1):
        return self - (other if alpha == 1 else other * alpha)

    subtract = sub

    def mul(self, other):
        return self * other

    multiply = mul

    def div(self, other, *, rounding_mode=None):
        if rounding_mode is not None:
            raise TypeError(f"div(rounding_mode={rounding_mode!r}) is not supported on secret tensors: "
                            "rounding needs a comparison per bit; use true division")
        return self / other

    divide = true_divide = div

    def matmul(self, other):
        return self @ other

    def mm(self, other):
        if self.dim() != 2:
            raise ValueError(f"mm expects 2-d tensors, got a {self.dim()}-d secret tensor; use matmul")
        return self @ other

    bmm = matmul

    def neg(self):
        return -self

    negative = neg

    # -- powers and statistics ---------------------------------------------------------------------------

    def square(self):
        """x * x from a square pair: 2 rounds (one opening, one truncation), half the bytes of x * y."""
        return self._new("square", (self,))

    def __pow__(self, exponent):
        """x ** n for a public int n in 0..8 (integral floats such as 2.0 too), by products
        arranged as a balanced tree: x^n = x^a * x^(n-a) with a the largest power of two
        below n, sharing every intermediate power. Rounds: n = 0, 1: none; 2: 2;
        3, 4: 4; 5..8: 6, that is 2 * ceil(log2 n), and one fewer when the power is
        revealed at once (the recipient absorbs the last truncation). A float, negative,
        secret or larger exponent raises, saying what to write instead."""
        n = _exponent(exponent)
        if n == 0:
            return self._cluster.public(torch.ones(self.shape, dtype=torch.float64))
        powers = {1: self._handle()}

        def power(k):
            if k not in powers:
                half = 1 << ((k - 1).bit_length() - 1)  # largest power of two below k
                powers[k] = power(half).square() if k == 2 * half else power(half) * power(k - half)
            return powers[k]

        return power(n)

    pow = __pow__

    def __rpow__(self, base):
        """base ** x for a public base > 0, as exp(x * ln(base)) (exp's range applies)."""
        b = self._public(base)
        if b.numel() and bool((b <= 0).any()):
            raise ValueError("base ** secret needs a positive public base: it is computed as exp(x * ln(base))")
        return (self * b.log()).exp()

    def var(self, dim=None, unbiased=None, keepdim: bool = False, *, correction=None):
        """torch.var: sum((x - mean)^2) / (N - correction), correction 1 by default
        (unbiased=False means correction 0). Rounds: mean 1, square 2, scaling 1."""
        if isinstance(dim, bool):  # torch.var(x, False): the second overload's `unbiased`
            dim, unbiased = None, dim
        if correction is None:
            correction = 0 if unbiased is False else 1
        dims = self._dims(dim)
        divisor = _reduced_count(self.shape, dims) - correction
        if divisor <= 0:
            raise ValueError(f"var over {_reduced_count(self.shape, dims)} elements with correction "
                             f"{correction}: the divisor would be {divisor}")
        centred = self - self.mean(dim, keepdim=True)
        return centred.square().sum(dim, keepdim=keepdim) * (1.0 / divisor)

    def std(self, dim=None, unbiased=None, keepdim: bool = False, *, correction=None):
        """sqrt(var): sqrt's valid range applies to the variance (see the README)."""
        return self.var(dim, unbiased, keepdim, correction=correction).sqrt()

    def norm(self, p="fro", dim=None, keepdim: bool = False):
        """p = 2 / "fro" / None: sqrt(sum(x^2)) (sqrt's range applies to the sum);
        p = 1: sum |x|; p = inf: max |x|. Other p raise."""
        if p in (2, 2.0, "fro", None):
            return self.square().sum(dim, keepdim=keepdim).sqrt()
        if p in (1, 1.0):
            return self.abs().sum(dim, keepdim=keepdim)
        if p == float("inf"):
            return self.abs().max(dim, keepdim=keepdim)
        raise ValueError(f"norm(p={p!r}) is not supported on secret tensors: use p=1, 2 or inf")

    # -- in-place forms: rebind this handle (see the module docstring) -----------------------------------

    def _rebind(self, new):
        self._cluster._retrack(self._cell, new._node.id)  # the value of the new node lives as long as this handle
        self._node, self._known = new._node, new._known
        return self


def _in_place(name: str, compute):
    def method(self, *args, **kwargs):
        return self._rebind(compute(self, *args, **kwargs))

    method.__name__ = name
    method.__doc__ = (f"In-place {name.rstrip('_')}: rebinds this handle to the result and returns it "
                      "(views taken before keep the old value; see mpc.api_methods).")
    return method


IN_PLACE = ("add", "sub", "mul", "div", "neg", "abs", "relu", "sigmoid", "tanh", "exp", "log", "sqrt", "rsqrt",
             "reciprocal", "sign", "clamp", "clip", "square", "pow", "t", "transpose", "squeeze", "unsqueeze")
for _name in IN_PLACE:
    setattr(TensorMethodsMixin, _name + "_",
            _in_place(_name + "_", lambda self, *a, _n=_name, **k: getattr(self, _n)(*a, **k)))
for _dunder, _op in (("__iadd__", operator.add), ("__isub__", operator.sub), ("__imul__", operator.mul),
                     ("__itruediv__", operator.truediv), ("__imatmul__", operator.matmul)):
    setattr(TensorMethodsMixin, _dunder, _in_place(_dunder, lambda self, other, _op=_op: _op(self, other)))
