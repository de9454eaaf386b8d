"""A party's own data files: what a job may read from the party's data directory.

Data that stays home: a job can bind one of its inputs to a file that the input's owner
party reads itself (`Job.sources`, a small JSON object: file, label column, part "x" or
"y", loss, classes), so that no other process, the client included, ever holds the rows.
A client learns only the shapes (DescribeData), which the program needs.

The file is a plain name inside the party's `data` directory (from the cluster file):
no directories, no "..", no hidden names, no links out of the directory. It is read and
checked by mpc.data_files, as a client reads its own: missing values, non-numbers, labels
outside the classes and values outside the fixed-point range are refused with the file,
row and column. Parsed files are kept for a few jobs (a training job describes, then
shares), so a large file is read once.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict

import torch

from mpc import data_files

MAX_CACHED = 4
PARTS = ("x", "y")


class PartyDataError(ValueError):
    """A data source a party will not read; the message says why."""


def source(file: str, label: str | None, part: str, loss: str, classes: int | None) -> str:
    """The JSON a job carries for one input read from its owner's data directory."""
    return json.dumps({"file": file, "label": label, "part": part, "loss": loss, "classes": classes}, sort_keys=True)


def parse_source(text: str) -> tuple[str, str | None, str, str, int | None]:
    try:
        spec = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise PartyDataError(f"a data source that is not JSON: {exc}") from None
    if not isinstance(spec, dict) or set(spec) != {"file", "label", "part", "loss", "classes"}:
        raise PartyDataError("a data source names exactly file, label, part, loss and classes")
    file, label, part, loss, classes = (spec[k] for k in ("file", "label", "part", "loss", "classes"))
    if not isinstance(file, str) or not (label is None or isinstance(label, (str, int))) or part not in PARTS \
            or not isinstance(loss, str) or not (classes is None or isinstance(classes, int) and classes > 1):
        raise PartyDataError(f"data source {text[:200]!r}: file (text), label (name, index or null), "
                             f"part (x or y), loss (text), classes (an integer above 1, or null)")
    return file, label, part, loss, classes


class PartyData:
    def __init__(self, pid: int, data_dir: str | None, frac_bits: int):
        self.pid = pid
        self.data_dir = os.path.realpath(data_dir) if data_dir else None
        self.frac_bits = frac_bits
        self._cache: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()

    def _path(self, file: str) -> str:
        if self.data_dir is None:
            raise PartyDataError(f"party {self.pid} has no data directory (the cluster file's `data` for it)")
        if not file or "/" in file or "\\" in file or file.startswith(".") or "\0" in file:
            raise PartyDataError(f"party {self.pid} reads only plain file names in its data directory, not {file!r}")
        path = os.path.realpath(os.path.join(self.data_dir, file))
        if os.path.dirname(path) != self.data_dir:
            raise PartyDataError(f"party {self.pid}: {file!r} leads out of its data directory")
        return path

    def load(self, file: str, label, loss: str, classes: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(features, targets or None), checked; DataError names the file, row and column."""
        key = (file, label, loss, classes)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        path = self._path(file)
        label_col = None if label in (None, "") else label
        d = data_files.load(path, label_col, n_classes=classes if loss == "cross_entropy" else None,
                            frac_bits=self.frac_bits)
        y = None if d.y is None else data_files.targets(d.y, loss, classes, f"party {self.pid}'s {file}")
        self._cache[key] = (d.x, y)
        while len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)
        return d.x, y

    def value(self, text: str) -> torch.Tensor:
        """The input a job's source names: this party's features or targets."""
        file, label, part, loss, classes = parse_source(text)
        x, y = self.load(file, label, loss, classes)
        if part == "y" and y is None:
            raise PartyDataError(f"party {self.pid}: {file} has no label column to read targets from")
        return x if part == "x" else y
