"""A secure training job described in TOML: parsed, checked key by key, and hashed.

The file names the model factory (`package.module:function` and its keyword
arguments), the loss, the optimizer and its hyper-parameters, epochs, batch size and
seed, each party's own data file (with its label column), how the data is split (rows
or columns, and who owns the labels), whether features are normalised (securely), what
happens to the trained model (revealed to the caller or to a party, or kept shared), what
is revealed while training (the loss every N steps, the test accuracy at the end: both
off unless asked for), and the checkpoint interval and directory. Relative paths are
read relative to the job file. Any malformed or unknown key is refused with the file
and the key's full name (`[optimizer] lr`). `JobSpec.digest` hashes everything that
decides the trained weights, so a checkpoint of another job is never resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field

from mpc.compiler.training import LOSSES, SGD, Adam


class JobFileError(ValueError):
    """A job description that cannot be run; the message names the file and the key."""


@dataclass
class PartySource:
    party: int
    file: str
    label: str | int | None


@dataclass
class JobSpec:
    source: str  # the file it came from, or "<dict>"
    factory: str
    kwargs: dict
    init_seed: int
    model_owner: int
    loss: str
    n_classes: int | None
    optimizer: object
    epochs: int
    batch_size: int
    seed: int
    parties: list[PartySource]
    split: str = "rows"
    label_owner: int | None = None
    normalize: bool = False
    reveal_loss_every: int = 0
    reveal_accuracy: bool = False
    evaluate: PartySource | None = None
    model_to: str | int = "shared"  # "caller", "shared" or a party id
    output_dir: str = "."
    checkpoint_every: int = 0
    checkpoint_dir: str | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def digest(self) -> str:
        """SHA-256 over what decides the trained weights (not the output or reveal settings)."""
        keep = {k: self.raw.get(k) for k in ("model", "training", "optimizer")}
        keep["data"] = {"split": self.split, "label_owner": self.label_owner, "normalize": self.normalize,
                        "parties": [(p.party, os.path.basename(p.file), p.label) for p in self.parties]}
        keep["training"] = {k: v for k, v in (keep["training"] or {}).items()
                            if k not in ("reveal_loss_every", "reveal_accuracy")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()


SECTIONS = {
    "model": {"factory", "kwargs", "init_seed", "owner"},
    "training": {"loss", "classes", "epochs", "batch_size", "seed", "reveal_loss_every", "reveal_accuracy"},
    "optimizer": {"name", "lr", "momentum", "weight_decay", "betas", "eps"},
    "data": {"split", "label_owner", "normalize", "parties"},
    "evaluate": {"party", "file", "label"},
    "output": {"model", "directory"},
    "checkpoint": {"every", "directory"},
}


class _Reader:
    def __init__(self, source: str, raw: dict, base: str):
        self.source, self.raw, self.base = source, raw, base

    def fail(self, key: str, why: str):
        raise JobFileError(f"{self.source}: {key}: {why}")

    def table(self, name: str, required: bool = True) -> dict:
        value = self.raw.get(name)
        if value is None:
            if required:
                raise JobFileError(f"{self.source}: missing table [{name}]")
            return {}
        if not isinstance(value, dict):
            self.fail(f"[{name}]", f"expected a table, got {type(value).__name__}")
        return value

    def get(self, table: dict, where: str, key: str, kind, default=..., check=None, why: str = ""):
        name = f"{where} {key}"
        if key not in table:
            if default is ...:
                self.fail(name, "missing (required)")
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            if float in kinds and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            else:
                expected = " or ".join(k.__name__ for k in kinds)
                self.fail(name, f"expected {expected}, got {type(value).__name__} {value!r}")
        if check is not None and not check(value):
            self.fail(name, f"{why}, got {value!r}")
        return value

    def path(self, value: str) -> str:
        return value if os.path.isabs(value) else os.path.normpath(os.path.join(self.base, value))


def load(path_or_dict, base: str | None = None) -> JobSpec:
    """Parse a job file (a path) or an already-parsed dict (paths relative to `base`)."""
    if isinstance(path_or_dict, dict):
        source, raw, base = "<job dict>", path_or_dict, base or os.getcwd()
    else:
        source = str(path_or_dict)
        try:
            with open(source, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise JobFileError(f"job file {source} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise JobFileError(f"{source}: not valid TOML: {exc}") from None
        base = base or os.path.dirname(os.path.abspath(source))
    r = _Reader(source, raw, base)
    for name in raw:
        if name not in SECTIONS:
            r.fail(f"[{name}]", f"unknown table (known: {', '.join(sorted(SECTIONS))})")
    for name, keys in SECTIONS.items():
        for key in r.table(name, required=False):
            if key not in keys:
                r.fail(f"[{name}] {key}", f"unknown key (known: {', '.join(sorted(keys))})")

    model, training, opt, data = (r.table(n) for n in ("model", "training", "optimizer", "data"))
    positive = (lambda v: v > 0, "must be positive")
    non_negative = (lambda v: v >= 0, "must be 0 or more")
    factory = r.get(model, "[model]", "factory", str, check=lambda v: v.count(":") == 1 and all(v.split(":")),
                    why="must look like package.module:function")
    kwargs = r.get(model, "[model]", "kwargs", dict, {})
    loss = r.get(training, "[training]", "loss", str, check=lambda v: v in LOSSES, why=f"must be one of {LOSSES}")
    n_classes = r.get(training, "[training]", "classes", int, None, *positive)
    if loss == "cross_entropy" and n_classes is None:
        r.fail("[training] classes", "missing (required by the cross_entropy loss)")

    name = r.get(opt, "[optimizer]", "name", str, check=lambda v: v in ("sgd", "adam"), why="must be 'sgd' or 'adam'")
    lr = r.get(opt, "[optimizer]", "lr", float, 0.01 if name == "adam" else ..., *positive)
    if name == "sgd":
        for key in ("betas", "eps"):
            if key in opt:
                r.fail(f"[optimizer] {key}", "only for adam")
        optimizer = SGD(lr, r.get(opt, "[optimizer]", "momentum", float, 0.0, lambda v: 0 <= v < 1, "must be in [0, 1)"),
                        r.get(opt, "[optimizer]", "weight_decay", float, 0.0, *non_negative))
    else:
        for key in ("momentum", "weight_decay"):
            if key in opt:
                r.fail(f"[optimizer] {key}", "only for sgd")
        betas = r.get(opt, "[optimizer]", "betas", list, [0.9, 0.999],
                      lambda v: len(v) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in v),
                      "must be two numbers in [0, 1)")
        optimizer = Adam(lr, (float(betas[0]), float(betas[1])),
                         r.get(opt, "[optimizer]", "eps", float, 1e-2, *positive))

    parties_raw = r.get(data, "[data]", "parties", list, check=lambda v: len(v) > 0, why="needs at least one party")
    parties = []
    for k, entry in enumerate(parties_raw):
        where = f"[[data.parties]] #{k + 1}"
        if not isinstance(entry, dict):
            r.fail(where, f"expected a table, got {type(entry).__name__}")
        for key in entry:
            if key not in ("party", "file", "label"):
                r.fail(f"{where} {key}", "unknown key (known: file, label, party)")
        pid = r.get(entry, where, "party", int, check=lambda v: v >= 0, why="must be a party id (0 or more)")
        if any(p.party == pid for p in parties):
            r.fail(f"{where} party", f"party {pid} is listed twice")
        parties.append(PartySource(pid, r.path(r.get(entry, where, "file", str)),
                                   r.get(entry, where, "label", (str, int), None)))
    split = r.get(data, "[data]", "split", str, "rows", lambda v: v in ("rows", "columns"), "must be 'rows' or 'columns'")
    label_owner = r.get(data, "[data]", "label_owner", int, None)
    if split == "columns":
        if label_owner is None:
            r.fail("[data] label_owner", "missing (a column split needs the party that holds the labels)")
        owners = [p for p in parties if p.party == label_owner]
        if not owners or owners[0].label is None:
            r.fail("[data] label_owner", f"party {label_owner} must be listed with a label column")
    else:
        for k, p in enumerate(parties):
            if p.label is None:
                r.fail(f"[[data.parties]] #{k + 1} label", "missing (a row split needs every party's labels)")

    training_spec = dict(
        epochs=r.get(training, "[training]", "epochs", int, check=positive[0], why=positive[1]),
        batch_size=r.get(training, "[training]", "batch_size", int, check=positive[0], why=positive[1]),
        seed=r.get(training, "[training]", "seed", int, 0),
        reveal_loss_every=r.get(training, "[training]", "reveal_loss_every", int, 0, *non_negative),
        reveal_accuracy=r.get(training, "[training]", "reveal_accuracy", bool, False))
    evaluate = None
    if "evaluate" in raw:
        ev = r.table("evaluate")
        evaluate = PartySource(r.get(ev, "[evaluate]", "party", int, check=lambda v: v >= 0, why="must be a party id"),
                               r.path(r.get(ev, "[evaluate]", "file", str)), r.get(ev, "[evaluate]", "label", (str, int)))
    if training_spec["reveal_accuracy"] and evaluate is None:
        r.fail("[training] reveal_accuracy", "needs an [evaluate] table naming the test data and its owner")
    if training_spec["reveal_accuracy"] and data.get("normalize"):
        # the normalisation statistics stay secret, so the test data cannot be normalised the same way
        r.fail("[training] reveal_accuracy", "cannot be used with [data] normalize = true (the test data would "
                                             "not be normalised like the training data)")

    out = r.table("output", required=False)
    model_to = r.get(out, "[output]", "model", (str, int), "shared",
                     lambda v: v in ("caller", "shared") or isinstance(v, int) and v >= 0,
                     "must be 'caller', 'shared' or a party id")
    ck = r.table("checkpoint", required=False)
    every = r.get(ck, "[checkpoint]", "every", int, 0, *non_negative)
    ck_dir = r.get(ck, "[checkpoint]", "directory", str, None)
    if every and ck_dir is None:
        r.fail("[checkpoint] directory", "missing (required when [checkpoint] every is set)")
    return JobSpec(source, factory, kwargs, r.get(model, "[model]", "init_seed", int, 0),
                   r.get(model, "[model]", "owner", int, 0, *non_negative), loss, n_classes, optimizer,
                   parties=parties, split=split, label_owner=label_owner,
                   normalize=r.get(data, "[data]", "normalize", bool, False), evaluate=evaluate, model_to=model_to,
                   output_dir=r.path(r.get(out, "[output]", "directory", str, ".")),
                   checkpoint_every=every, checkpoint_dir=r.path(ck_dir) if ck_dir else None, raw=raw,
                   **training_spec)


def check_parties(spec: JobSpec, n_parties: int) -> None:
    """Party ids in the job must exist in the cluster it runs on."""
    named = [("[[data.parties]] party", p.party) for p in spec.parties] + [("[model] owner", spec.model_owner)]
    if spec.evaluate:
        named.append(("[evaluate] party", spec.evaluate.party))
    if isinstance(spec.model_to, int):
        named.append(("[output] model", spec.model_to))
    for key, pid in named:
        if pid >= n_parties:
            raise JobFileError(f"{spec.source}: {key}: party {pid} is not one of the cluster's {n_parties} parties")
