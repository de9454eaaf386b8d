"""Reading one party's own training data file into (features, labels), checked before training.

A party names its file in the job description: a CSV with a header row, a `.npy` array
(read with allow_pickle=False) or a `.pt` tensor (read with weights_only=True: no code
runs while loading). The label column is given by header name or 0-based index, or is
absent for a party of a column split that holds no labels. Everything a secure job
cannot use is refused here, before any party shares anything, with the file, the row
(1-based data row; the line too for CSV) and the column: a missing value, a cell that
is not a number, a row with the wrong number of columns, a label outside the classes,
a value outside the fixed-point range. A party only ever reads its own file: a party process reads it from its own data
directory (mpc.net.party_data); in local mode (`mpc train --local`) the launcher reads
each file on its owner's behalf.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from mpc import ring

MISSING = {"", "na", "nan", "null", "none", "?"}


class DataError(ValueError):
    """Training data that cannot be used; the message names the source, row and column."""


class DataFileError(DataError):
    """A data file that cannot be trained on; the message names the file, row and column."""


@dataclass
class PartyData:
    x: torch.Tensor  # (rows, features), float64
    y: torch.Tensor | None  # (rows,) or (rows, k), float64; None for a party without labels
    columns: list[str]  # feature column names, in order


def load(path: str, label: str | int | None = None, *, n_classes: int | None = None,
         frac_bits: int = ring.DEFAULT_FRAC_BITS, n_features: int | None = None) -> PartyData:
    """Load `path` and split off the label column. `n_classes` (classification) requires
    integer labels 0..n_classes-1; `n_features`, when given, the number of feature columns."""
    if not os.path.exists(path):
        raise DataFileError(f"data file {path} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        names, table = _read_csv(path)
    elif ext in (".npy", ".pt"):
        table = _read_array(path, ext)
        names = [f"column {j}" for j in range(table.shape[1])]
    else:
        raise DataFileError(f"data file {path}: expected .csv, .npy or .pt, got {ext or 'no extension'}")
    label_col = _label_index(path, names, label)
    feature_cols = [j for j in range(len(names)) if j != label_col]
    _check_values(path, table, names, ext == ".csv", frac_bits)
    x = table[:, feature_cols]
    if n_features is not None and x.shape[1] != n_features:
        raise DataFileError(f"data file {path}: {x.shape[1]} feature columns, the job needs {n_features}")
    y = None
    if label_col is not None:
        y = table[:, label_col]
        if n_classes is not None:
            _check_labels(path, y, names[label_col], n_classes, ext == ".csv")
    return PartyData(x, y, [names[j] for j in feature_cols])


def _where(row: int, csv_file: bool) -> str:
    return f"row {row + 1} (line {row + 2})" if csv_file else f"row {row + 1}"


def _read_csv(path: str) -> tuple[list[str], torch.Tensor]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise DataFileError(f"data file {path} is empty: a CSV needs a header row") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataFileError(f"data file {path}: not a readable CSV: {exc}") from None
        names = [h.strip() for h in header]
        if not names or all(not h for h in names):
            raise DataFileError(f"data file {path}: the header row is empty")
        rows = []
        try:
            for r, cells in enumerate(reader):
                if not cells:
                    continue  # a blank line (often the last one)
                if len(cells) != len(names):
                    raise DataFileError(f"data file {path}, {_where(r, True)}: {len(cells)} columns, the header "
                                        f"has {len(names)}")
                values = []
                for j, cell in enumerate(cells):
                    text = cell.strip()
                    if text.lower() in MISSING:
                        raise DataFileError(f"data file {path}, {_where(r, True)}, column {names[j]!r}: missing value")
                    try:
                        values.append(float(text))
                    except ValueError:
                        raise DataFileError(f"data file {path}, {_where(r, True)}, column {names[j]!r}: {text!r} is "
                                            "not a number") from None
                rows.append(values)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataFileError(f"data file {path}: not a readable CSV: {exc}") from None
    if not rows:
        raise DataFileError(f"data file {path} has a header but no rows")
    return names, torch.tensor(rows, dtype=torch.float64)


def _read_array(path: str, ext: str) -> torch.Tensor:
    try:
        if ext == ".npy":
            value = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # numpy and torch raise several kinds for a file that is not an array
        raise DataFileError(f"data file {path}: cannot read an array: {exc}") from None
    if not isinstance(value, torch.Tensor):
        raise DataFileError(f"data file {path} holds a {type(value).__name__}, not a tensor")
    if value.dim() != 2:
        raise DataFileError(f"data file {path}: expected a 2-D table (rows, columns), got shape {tuple(value.shape)}")
    if value.dtype == torch.bool or not (value.is_floating_point() or value.dtype in (
            torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise DataFileError(f"data file {path}: values of dtype {value.dtype} are not numbers")
    if len(value) == 0:
        raise DataFileError(f"data file {path} has no rows")
    return value.to(torch.float64)


def _label_index(path: str, names: list[str], label: str | int | None) -> int | None:
    if label is None:
        return None
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise DataFileError(f"data file {path}: label column must be a column name or index, got {label!r}")
    if isinstance(label, int):
        if not -len(names) <= label < len(names):
            raise DataFileError(f"data file {path}: label column {label} is out of range ({len(names)} columns)")
        return label % len(names)
    if label not in names:
        raise DataFileError(f"data file {path}: no column named {label!r} for the labels (columns: "
                            f"{', '.join(names[:8])}{', …' if len(names) > 8 else ''})")
    return names.index(label)


def _check_values(path: str, table: torch.Tensor, names: list[str], csv_file: bool, frac_bits: int) -> None:
    bad = torch.isnan(table)
    if bad.any():
        r, j = (int(v) for v in bad.nonzero()[0])
        raise DataFileError(f"data file {path}, {_where(r, csv_file)}, column {names[j]!r}: missing value")
    limit = ring.max_abs_value(frac_bits)
    bad = ~torch.isfinite(table) | (table.abs() >= limit)
    if bad.any():
        r, j = (int(v) for v in bad.nonzero()[0])
        raise DataFileError(f"data file {path}, {_where(r, csv_file)}, column {names[j]!r}: value "
                            f"{float(table[r, j]):.6g} is outside the fixed-point range (-{limit:.6g}, {limit:.6g}) "
                            f"for {frac_bits} fractional bits")


def _check_labels(path: str, y: torch.Tensor, name: str, n_classes: int, csv_file: bool) -> None:
    bad = (y != y.round()) | (y < 0) | (y >= n_classes)
    if bad.any():
        r = int(bad.nonzero()[0])
        value = float(y[r])
        shown = str(int(value)) if math.isfinite(value) and value == round(value) else f"{value:g}"
        raise DataFileError(f"data file {path}, {_where(r, csv_file)}, column {name!r}: label {shown} is outside the "
                            f"classes 0..{n_classes - 1}")


def write_csv(path: str, x: torch.Tensor, y: torch.Tensor | None, label: str = "label",
              prefix: str = "x") -> None:
    """Write features (and labels, last column) as a CSV with a header (for demos and tests)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"{prefix}{j}" for j in range(x.shape[1])] + ([label] if y is not None else []))
        for r in range(len(x)):
            row = [f"{float(v):.10g}" for v in x[r]]
            if y is not None:
                row.append(str(int(y[r])) if float(y[r]) == int(y[r]) else f"{float(y[r]):.10g}")
            w.writerow(row)


def targets(y: torch.Tensor, loss: str, n_classes: int | None, source: str) -> torch.Tensor:
    """Labels as the training program takes them: one-hot rows for cross-entropy (each label
    a class number below n_classes), one column per target otherwise."""
    if loss == "cross_entropy":
        y = torch.as_tensor(y)
        if y.dim() != 1:
            raise DataError(f"{source}: class labels must be one column, got shape {tuple(y.shape)}")
        if y.is_floating_point() and not torch.equal(y, y.round()):
            row = int((y != y.round()).nonzero()[0])
            raise DataError(f"{source}: row {row}: label {float(y[row])} is not a class number")
        y = y.to(torch.int64)
        bad = ((y < 0) | (y >= n_classes)).nonzero()
        if len(bad):
            row = int(bad[0])
            raise DataError(f"{source}: row {row}: label {int(y[row])} is outside the classes 0..{n_classes - 1}")
        return torch.nn.functional.one_hot(y, n_classes).to(torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    return y.view(-1, 1) if y.dim() == 1 else y
