"""Cluster configuration: one TOML file names the parties and the dealer.

    n_parties = 3
    frac_bits = 16
    [dealer]
    address = "127.0.0.1:50050"
    [coordinator]                          # optional: where clients submit jobs
    address = "127.0.0.1:50049"
    clients = ["client-alice"]             # identities the coordinator accepts jobs from
    [[parties]]
    pid = 0
    address = "127.0.0.1:50051"
    operator = "client-alice"              # optional: who receives what is revealed to party 0

Parties accept programs and jobs only from the coordinator; a client reaches them only to
upload its own inputs and fetch the outputs addressed to it (see mpc.net.party_server).
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
    coordinator: str | None = None
    clients: tuple[str, ...] = ()
    operators: dict[int, str] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def to_toml(self) -> str:
        data = {
            "n_parties": self.n_parties, "frac_bits": self.frac_bits,
            "connect_timeout": self.connect_timeout, "round_timeout": self.round_timeout,
            "dealer": {"address": self.dealer},
            "parties": [{"pid": p, "address": a, **({"operator": self.operators[p]} if p in self.operators else {})}
                        for p, a in sorted(self.parties.items())],
        }
        if self.coordinator:
            data["coordinator"] = {"address": self.coordinator, "clients": list(self.clients)}
        return tomli_w.dumps(data)

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
            operators = {int(p["pid"]): str(p["operator"]) for p in data["parties"] if "operator" in p}
            coord = data.get("coordinator") or {}
            coordinator = str(coord["address"]) if coord else None
            clients = tuple(str(c) for c in coord.get("clients", ()))
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"cluster config lacks {exc}") from None
        if not 2 <= n:
            raise ConfigError(f"n_parties must be at least 2, got {n}")
        if sorted(parties) != list(range(n)):
            raise ConfigError(f"cluster config must list parties 0..{n - 1}, it lists {sorted(parties)}")
        return cls(n, dealer, parties, int(data.get("frac_bits", 16)), float(data.get("connect_timeout", 30.0)),
                   float(data.get("round_timeout", 120.0)), coordinator, clients, operators)
