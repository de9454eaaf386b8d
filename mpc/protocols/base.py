"""What a protocol generator may yield, and the context it runs in.

A protocol is a generator run by one party. It yields requests to the outside world and
receives their answers; it returns this party's shares. It never touches a socket:

- `Open(values)`: every party contributes its shares; all (or only `to`) get the sums
  (mod 2^64 for int64; `xor=True` combines boolean shares by XOR, in any integer dtype);
  with `senders`, only those parties contribute (one party's masked value sent to another).
  The executor fuses every Open that is ready at the same time into one round. With
  `signs=True` (one int64 value, to all) a split round answers with `SignsOpened`.
- `Randomness(spec)`: this party's part of a dealer correlation (see correlations.py).
- `InputMask(owner, shape)`: zero-communication input sharing from pairwise PRG keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Spec:
    """A correlation the dealer supplies: its kind, the tensor shapes, and scalar params."""

    kind: str
    shapes: tuple[tuple[int, ...], ...]
    params: tuple[tuple[str, int], ...] = ()

    def param(self, name: str) -> int:
        return dict(self.params)[name]


@dataclass
class Open:
    """Open the sum of every party's `values` to all parties, or to party `to` only.

    Additive shares are int64 (sums wrap mod 2^64). With `xor=True` the values are boolean
    shares combined by XOR, in any integer dtype (packed bits travel as uint8).
    """

    values: tuple[torch.Tensor, ...]
    to: int | None = None
    xor: bool = False
    signs: bool = False  # a truncation's opening: in a split round, gather only signs (SignsOpened)
    # Only these parties contribute (the others' `values` give only shapes and dtypes: meta
    # tensors do), e.g. a masked private input sent by its owner to one peer.
    senders: tuple[int, ...] | None = None

    def sends(self, pid: int) -> bool:
        return self.senders is None or pid in self.senders

    def receives(self, pid: int) -> bool:
        return self.to is None or self.to == pid


@dataclass
class SignsOpened:
    """The reply to an Open with signs=True when its round splits (protocols/scatter.py):
    the opened value on this party's slice [lo, hi) of its flattened elements, and the sign
    of every element as a mask (-1 where the opened value is negative, else 0) shaped like
    the value. The all-gather then sends a bit an element instead of 64."""

    lo: int
    hi: int
    part: torch.Tensor
    negative: torch.Tensor


@dataclass
class Randomness:
    spec: Spec


@dataclass
class InputMask:
    """This party's share of a mask for an input owned by `owner`.

    Each non-owner j gets PRG(k_{owner,j}) as its share; the owner gets the sum of all of
    them, so that owner_share = encode(x) - mask gives a sharing of x with no message sent.
    """

    owner: int
    shape: tuple[int, ...]


@dataclass
class PartyContext:
    """Who is running the protocol, with the public parameters of the computation."""

    pid: int
    n_parties: int
    frac_bits: int = 16
    dry_run: bool = False
    label: int = 0  # the plan node being executed; keys pairwise PRG streams
    extras: dict = field(default_factory=dict)

    @property
    def is_first(self) -> bool:
        return self.pid == 0

    def public(self, value: torch.Tensor) -> torch.Tensor:
        """Additive shares of a public ring value: party 0 holds it, the others zero."""
        return value if self.pid == 0 else torch.zeros_like(value)


def gather(*protocols):
    """Run several protocol generators side by side; their Opens of a round go out together.

    Returns the list of their results. Randomness and InputMask requests pass through
    one at a time; Opens of the same step are yielded as one list (one round)."""
    results = [None] * len(protocols)
    replies: dict[int, object] = {k: None for k in range(len(protocols))}
    while replies:
        pending: dict[int, object] = {}
        for k, reply in replies.items():
            gen = protocols[k]
            try:
                request = gen.send(reply)
                while not isinstance(request, (Open, list)):
                    request = gen.send((yield request))
                pending[k] = request
            except StopIteration as stop:
                results[k] = stop.value
        if not pending:
            break
        flat = [op for req in pending.values() for op in (req if isinstance(req, list) else [req])]
        answers = iter((yield flat))
        replies = {k: ([next(answers) for _ in req] if isinstance(req, list) else next(answers))
                   for k, req in pending.items()}
    return results
