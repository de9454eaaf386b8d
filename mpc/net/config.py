"""Cluster configuration: one TOML file names every process, where it serves and where its files are.

    n_parties = 3
    frac_bits = 16
    [dealer]
    address = "10.0.0.4:50050"
    certs = "/etc/mpc/certs"               # optional: ca.pem, dealer.pem, dealer.key
    listen = "0.0.0.0:50050"               # optional: where to bind (default: address)
    [coordinator]                          # optional: where clients submit jobs
    address = "10.0.0.4:50049"
    clients = ["client-alice"]             # identities the coordinator accepts jobs from
    [[parties]]
    pid = 0
    address = "10.0.0.1:50051"
    operator = "client-alice"              # optional: who receives what is revealed to party 0
    certs = "/etc/mpc/certs"               # or ca = ..., cert = ..., key = ... (files)
    data = "/var/lib/mpc"                  # optional: the party's data directory

A process reads the same file on every host and uses only its own entry's files: the
paths name files on the host that runs that process (relative paths are taken from the
file's directory). Parties accept programs and jobs only from the coordinator; a client
reaches them only to upload its own inputs and fetch the outputs addressed to it (see
mpc.net.party_server).

Every error names the file, the key and the problem (`cluster.toml: parties[1].address:
missing`); all structural errors of a file are reported together.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

import tomli_w

from mpc.net import tls

DEALER, COORDINATOR = tls.DEALER, tls.COORDINATOR
_PATH_KEYS = ("certs", "ca", "cert", "key", "data")
_PROCESS_KEYS = {"address", "listen", *_PATH_KEYS}
_KEYS = {
    "": {"n_parties", "frac_bits", "connect_timeout", "round_timeout", "dealer", "coordinator", "parties"},
    "dealer": _PROCESS_KEYS,
    "coordinator": _PROCESS_KEYS | {"clients"},
    "parties": _PROCESS_KEYS | {"pid", "operator"},
}


class ConfigError(ValueError):
    """A cluster configuration that is incomplete or inconsistent."""


@dataclass(frozen=True)
class ProcessEntry:
    """One process's own settings: where it binds, its TLS files and its data directory."""

    listen: str | None = None
    certs: str | None = None   # a directory as `mpc certs` writes it
    ca: str | None = None      # or (overriding the directory's) explicit files
    cert: str | None = None
    key: str | None = None
    data: str | None = None
    table: str = field(default="", compare=False)  # where it is in the file, for messages: parties[2]

    @property
    def has_tls(self) -> bool:
        return bool(self.certs or (self.ca and self.cert and self.key))

    def credentials(self, identity: str) -> tls.Credentials:
        """Load and check this process's TLS material (identity, CA, key); TLSError says why not."""
        d = Path(self.certs) if self.certs else None
        paths = [self.ca or (d and d / tls.CA_CERT), self.cert or (d and d / f"{identity}.pem"),
                 self.key or (d and d / f"{identity}.key")]
        if not all(paths):
            raise tls.TLSError("give certs = DIR, or all of ca, cert and key")
        return tls.Credentials.load_files(identity, *paths)

    def to_dict(self) -> dict:
        return {k: v for k, v in (("listen", self.listen), *((k, getattr(self, k)) for k in _PATH_KEYS)) if v}


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
    processes: dict[str, ProcessEntry] = field(default_factory=dict)  # by identity: party-K, dealer, coordinator
    source: str = "cluster config"  # the file it came from, for error messages

    # -- reading and writing ------------------------------------------------------------------

    def to_toml(self) -> str:
        def own(identity):
            return self.processes.get(identity, ProcessEntry()).to_dict()

        data = {
            "n_parties": self.n_parties, "frac_bits": self.frac_bits,
            "connect_timeout": self.connect_timeout, "round_timeout": self.round_timeout,
            "dealer": {"address": self.dealer, **own(DEALER)},
            "parties": [{"pid": p, "address": a, **({"operator": self.operators[p]} if p in self.operators else {}),
                         **own(tls.party_name(p))}
                        for p, a in sorted(self.parties.items())],
        }
        if self.coordinator:
            data["coordinator"] = {"address": self.coordinator, "clients": list(self.clients), **own(COORDINATOR)}
        return tomli_w.dumps(data)

    @classmethod
    def load(cls, path: str | Path) -> "ClusterConfig":
        """Read and check a cluster file; relative paths in it are taken from its directory."""
        path = Path(path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read cluster file {path}: {getattr(exc, 'strerror', None) or exc}") from None
        return cls.from_toml(text, source=str(path), base_dir=path.parent)

    @classmethod
    def from_toml(cls, text: str, source: str = "cluster config", base_dir: str | Path | None = None
                  ) -> "ClusterConfig":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
        return _Reader(data, source, Path(base_dir) if base_dir is not None else None).read()

    # -- one process's view ----------------------------------------------------------------------

    def identities(self) -> list[str]:
        return [tls.party_name(p) for p in sorted(self.parties)] + [DEALER] + ([COORDINATOR] if self.coordinator
                                                                                else [])

    def address_of(self, identity: str) -> str:
        if identity == DEALER:
            return self.dealer
        if identity == COORDINATOR and self.coordinator:
            return self.coordinator
        pid = tls.party_id(identity)
        if pid is None or pid not in self.parties:
            raise ConfigError(self._not_listed(identity))
        return self.parties[pid]

    def entry(self, identity: str) -> ProcessEntry:
        self.address_of(identity)  # refuses an identity the file does not list
        return self.processes.get(identity, ProcessEntry())

    def listen_address(self, identity: str) -> str:
        return self.entry(identity).listen or self.address_of(identity)

    def key_of(self, identity: str) -> str:
        """The TOML key of `identity`'s table, for messages: parties[I] (I: its place in the
        file's list), dealer, coordinator."""
        entry = self.processes.get(identity)
        if entry is not None and entry.table:
            return entry.table
        pid = tls.party_id(identity)
        return f"parties[pid={pid}]" if pid is not None else identity

    def check_process(self, identity: str, insecure: bool = False) -> tls.Credentials | None:
        """What a process started as `identity` needs before it serves: it is listed, its
        certificate is readable, names it and comes from the CA, its data directory exists.
        Returns its credentials (None when `insecure`); ConfigError says what is wrong."""
        entry = self.entry(identity)
        key = self.key_of(identity)
        if entry.data and not Path(entry.data).is_dir():
            raise ConfigError(f"{self.source}: {key}.data: {entry.data} is not a directory")
        if insecure:
            return None
        if not entry.has_tls:
            raise ConfigError(f"{self.source}: {key}: no certs (give certs = DIR, or ca, cert and key; "
                              f"plaintext only with --insecure on loopback)")
        try:
            return entry.credentials(identity)
        except tls.TLSError as exc:
            raise ConfigError(f"{self.source}: {key}.{'certs' if entry.certs else 'cert'}: {exc}") from None

    def check_certificates(self) -> None:
        """check_process for every process whose files are on this host (all of them in a test
        or on a single machine): every problem, in one ConfigError."""
        problems = []
        for identity in self.identities():
            if self.entry(identity).has_tls:
                try:
                    self.check_process(identity)
                except ConfigError as exc:
                    problems.append(str(exc))
        if problems:
            raise ConfigError("\n".join(problems))

    def _not_listed(self, identity: str) -> str:
        pid = tls.party_id(identity)
        if pid is not None:
            return (f"{self.source}: party {pid} is not in the file (it lists parties "
                    f"{', '.join(map(str, sorted(self.parties)))})")
        return f"{self.source}: no [{identity}] table: {identity} is not in the file"

    def with_processes(self, **entries: ProcessEntry) -> "ClusterConfig":
        return replace(self, processes={**self.processes, **entries})


class _Reader:
    """Turns parsed TOML into a ClusterConfig, collecting every problem with its key."""

    def __init__(self, data: dict, source: str, base_dir: Path | None):
        self.data, self.source, self.base_dir = data, source, base_dir
        self.problems: list[str] = []

    def problem(self, key: str, what: str) -> None:
        self.problems.append(f"{key}: {what}")

    def read(self) -> ClusterConfig:
        data = self.data
        self._unknown_keys("", data)
        n = self._number(data, "n_parties", int, None, minimum=2)
        frac_bits = self._number(data, "frac_bits", int, 16, minimum=1)
        connect_timeout = self._number(data, "connect_timeout", float, 30.0, minimum=0.1)
        round_timeout = self._number(data, "round_timeout", float, 120.0, minimum=0.1)
        processes: dict[str, ProcessEntry] = {}
        addresses: dict[str, str] = {}  # address -> the key that claimed it first

        dealer = self._table(data, "dealer", required=True)
        dealer_address = self._process("dealer", dealer, DEALER, processes, addresses) if dealer is not None else None
        coordinator, clients = None, ()
        coord = self._table(data, "coordinator", required=False)
        if coord is not None:
            coordinator = self._process("coordinator", coord, COORDINATOR, processes, addresses)
            clients = self._clients(coord)

        parties: dict[int, str] = {}
        operators: dict[int, str] = {}
        listed = data.get("parties")
        if listed is None:
            self.problem("parties", "missing: list each party as a [[parties]] table")
            listed = []
        elif not isinstance(listed, list) or not all(isinstance(t, dict) for t in listed):
            self.problem("parties", "must be an array of tables ([[parties]])")
            listed = []
        for i, table in enumerate(listed):
            key = f"parties[{i}]"
            self._unknown_keys("parties", table, key)
            pid = table.get("pid")
            if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
                self.problem(f"{key}.pid", "missing" if pid is None else f"must be an integer >= 0, not {pid!r}")
                continue
            if pid in parties:
                self.problem(f"{key}.pid", f"party {pid} is listed twice")
                continue
            address = self._process(key, table, tls.party_name(pid), processes, addresses)
            parties[pid] = address or ""
            if "operator" in table:
                operators[pid] = self._identity(f"{key}.operator", table["operator"], client=True) or ""
        if n is not None and parties and sorted(parties) != list(range(n)):
            self.problem("parties", f"n_parties = {n}: the file must list parties 0..{n - 1}, "
                                    f"it lists {sorted(parties)}")
        if self.problems:
            lines = [f"{self.source}: {p}" for p in self.problems]
            raise ConfigError(lines[0] if len(lines) == 1 else "\n".join(lines))
        return ClusterConfig(n, dealer_address, parties, frac_bits, connect_timeout, round_timeout, coordinator,
                             clients, operators, processes=processes, source=self.source)

    # -- pieces ---------------------------------------------------------------------------------

    def _unknown_keys(self, kind: str, table: dict, key: str | None = None) -> None:
        for name in table:
            if name not in _KEYS[kind]:
                where = f"{key or kind}.{name}" if (key or kind) else name
                self.problem(where, f"unknown key (known: {', '.join(sorted(_KEYS[kind]))})")

    def _number(self, data, key, kind, default, minimum):
        value = data.get(key, default)
        if value is None:
            self.problem(key, "missing")
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value,
                                                                                                          int)):
            self.problem(key, f"must be {'an integer' if kind is int else 'a number'}, not {value!r}")
            return None
        if value < minimum:
            self.problem(key, f"must be at least {minimum}, not {value}")
            return None
        return kind(value)

    def _table(self, data, key, required):
        table = data.get(key)
        if table is None:
            if required:
                self.problem(key, f"missing: add a [{key}] table with its address")
            return None
        if not isinstance(table, dict):
            self.problem(key, f"must be a table ([{key}])")
            return None
        self._unknown_keys(key, table)
        return table

    def _process(self, key: str, table: dict, identity: str, processes: dict, addresses: dict) -> str | None:
        address = table.get("address")
        if address is None:
            self.problem(f"{key}.address", "missing")
        elif self._address(f"{key}.address", address):
            if address in addresses:
                self.problem(f"{key}.address", f"{address} is also the address of {addresses[address]}")
            addresses.setdefault(address, key)
        else:
            address = None
        if table.get("listen") is not None:
            self._address(f"{key}.listen", table["listen"])
        paths = {}
        for name in _PATH_KEYS:
            if name in table:
                if not isinstance(table[name], str) or not table[name]:
                    self.problem(f"{key}.{name}", f"must be a path, not {table[name]!r}")
                    continue
                path = Path(table[name]).expanduser()
                if self.base_dir is not None and not path.is_absolute():
                    path = self.base_dir / path
                paths[name] = str(path)
        partial = [k for k in ("ca", "cert", "key") if k in paths]
        if partial and "certs" not in paths and len(partial) < 3:
            missing = sorted({"ca", "cert", "key"} - set(partial))
            self.problem(f"{key}.{missing[0]}", f"missing: with {', '.join(partial)} give ca, cert and key "
                                               f"(or certs = DIR)")
        processes[identity] = ProcessEntry(listen=table.get("listen"), **paths, table=key)
        return address

    def _address(self, key: str, value) -> bool:
        """host:port or [v6]:port; port 0 (any free port) only makes sense for a lone process."""
        if not isinstance(value, str) or not value:
            self.problem(key, f"must be a string host:port, not {value!r}")
            return False
        host, sep, port = value.rpartition(":")
        if value.startswith("["):
            host = host[1:-1] if host.endswith("]") else ""
        if not sep or not host or not (port.isdigit() and int(port) <= 65535):
            self.problem(key, f"{value!r} is not host:port (a port from 0 to 65535)")
            return False
        if ":" in host and not value.startswith("["):
            self.problem(key, f"{value!r}: an IPv6 host goes in brackets, [{host}]:{port}")
            return False
        if value.startswith("["):
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                self.problem(key, f"{value!r}: {host!r} in brackets is not an IPv6 address")
                return False
        return True

    def _identity(self, key: str, value, client: bool) -> str | None:
        try:
            identity = tls.check_identity(value if isinstance(value, str) else repr(value))
        except tls.TLSError as exc:
            self.problem(key, str(exc))
            return None
        if client and not identity.startswith("client-"):
            self.problem(key, f"{identity!r} is not a client identity (client-NAME)")
            return None
        return identity

    def _clients(self, coord: dict) -> tuple[str, ...]:
        clients = coord.get("clients", [])
        if not isinstance(clients, list):
            self.problem("coordinator.clients", "must be a list of client identities")
            return ()
        checked = [self._identity(f"coordinator.clients[{i}]", c, client=True) for i, c in enumerate(clients)]
        return tuple(c for c in checked if c)
