"""Cluster configuration: one TOML file names the parties and the dealer.

    n_parties = 3
    frac_bits = 16
    [dealer]
    address = "127.0.0.1:50050"
    [[parties]]
    pid = 0
    address = "127.0.0.1:50051"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field

import tomli_w


class ConfigError(ValueError):
    """A cluster configuration that is incomplete or inconsistent."""


@dataclass
class ClusterConfig:
    n_parties: int
    dealer: str
    parties: dict[int, str]
    frac_bits: int = 16
    connect_timeout: float = 30.0
    round_timeout: float = 120.0
    extra: dict = field(default_factory=dict)

    def to_toml(self) -> str:
        return tomli_w.dumps({
            "n_parties": self.n_parties, "frac_bits": self.frac_bits,
            "connect_timeout": self.connect_timeout, "round_timeout": self.round_timeout,
            "dealer": {"address": self.dealer},
            "parties": [{"pid": p, "address": a} for p, a in sorted(self.parties.items())],
        })

    @classmethod
    def from_toml(cls, text: str) -> "ClusterConfig":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"cluster config is not valid TOML: {exc}") from None
        try:
            n = int(data["n_parties"])
            dealer = str(data["dealer"]["address"])
            parties = {int(p["pid"]): str(p["address"]) for p in data["parties"]}
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"cluster config lacks {exc}") from None
        if not 2 <= n:
            raise ConfigError(f"n_parties must be at least 2, got {n}")
        if sorted(parties) != list(range(n)):
            raise ConfigError(f"cluster config must list parties 0..{n - 1}, it lists {sorted(parties)}")
        return cls(n, dealer, parties, int(data.get("frac_bits", 16)), float(data.get("connect_timeout", 30.0)),
                   float(data.get("round_timeout", 120.0)))
