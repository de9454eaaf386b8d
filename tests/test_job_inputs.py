"""Bad data files and malformed job files are refused before training, by message."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpc import data_files, jobfile
from mpc.data_files import DataFileError
from mpc.jobfile import JobFileError


def _csv(tmp_path, text, name="d.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_csv_loads_features_and_labels(tmp_path):
    path = _csv(tmp_path, "a,b,label\n1,2.5,0\n-3,4e-1,2\n\n")
    d = data_files.load(path, "label", n_classes=3)
    assert torch.equal(d.x, torch.tensor([[1.0, 2.5], [-3.0, 0.4]], dtype=torch.float64))
    assert torch.equal(d.y, torch.tensor([0.0, 2.0], dtype=torch.float64))
    assert d.columns == ["a", "b"]
    by_index = data_files.load(path, 0)  # label column by index
    assert by_index.columns == ["b", "label"] and torch.equal(by_index.y, torch.tensor([1.0, -3.0], dtype=torch.float64))
    assert data_files.load(path, None).y is None  # a column-split party without labels


@pytest.mark.parametrize("text, label, n_classes, message", [
    ("a,b,label\n1,2,0\n3,,1\n", "label", 3, "row 2 (line 3), column 'b': missing value"),
    ("a,b,label\n1,2,0\n3,NA,1\n", "label", 3, "row 2 (line 3), column 'b': missing value"),
    ("a,b,label\n1,x7,0\n", "label", 3, "row 1 (line 2), column 'b': 'x7' is not a number"),
    ("a,b,label\n1,2,0\n1,2\n", "label", 3, "row 2 (line 3): 2 columns, the header has 3"),
    ("a,b,label\n1,2,0\n1,2,3\n", "label", 3, "row 2 (line 3), column 'label': label 3 is outside the classes 0..2"),
    ("a,b,label\n1,2,0.5\n", "label", 3, "row 1 (line 2), column 'label': label 0.5 is outside the classes 0..2"),
    ("a,b,label\n1,2,-1\n", "label", 3, "label -1 is outside the classes 0..2"),
    ("a,b,label\n1,2e12,0\n", "label", 3, "row 1 (line 2), column 'b': value 2e+12 is outside the fixed-point range"),
    ("a,b,label\n1,inf,0\n", "label", 3, "column 'b': value inf is outside the fixed-point range"),
    ("a,b,label\n1,2,0\n", "target", 3, "no column named 'target' for the labels"),
    ("a,b,label\n", "label", 3, "has a header but no rows"),
    ("", "label", 3, "is empty: a CSV needs a header row"),
])
def test_bad_csv_is_refused_naming_file_row_and_column(tmp_path, text, label, n_classes, message):
    path = _csv(tmp_path, text)
    with pytest.raises(DataFileError) as err:
        data_files.load(path, label, n_classes=n_classes)
    assert message in str(err.value)
    assert path in str(err.value)


def test_npy_and_pt_files(tmp_path):
    table = np.array([[0.5, 1.0, 1.0], [0.25, -2.0, 0.0]])
    np.save(tmp_path / "d.npy", table)
    d = data_files.load(str(tmp_path / "d.npy"), 2, n_classes=2)
    assert d.x.shape == (2, 2) and d.y.tolist() == [1.0, 0.0]
    torch.save(torch.tensor(table), tmp_path / "d.pt")
    assert torch.equal(data_files.load(str(tmp_path / "d.pt"), -1).x, d.x)
    bad = table.copy()
    bad[1, 0] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(DataFileError, match=r"bad.npy, row 2, column 'column 0': missing value"):
        data_files.load(str(tmp_path / "bad.npy"), 2)
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2)))
    with pytest.raises(DataFileError, match=r"expected a 2-D table \(rows, columns\), got shape \(2, 2, 2\)"):
        data_files.load(str(tmp_path / "cube.npy"))
    torch.save({"x": torch.zeros(2)}, tmp_path / "dict.pt")
    with pytest.raises(DataFileError, match="holds a dict, not a tensor"):
        data_files.load(str(tmp_path / "dict.pt"))
    with pytest.raises(DataFileError, match="does not exist"):
        data_files.load(str(tmp_path / "nope.csv"))
    (tmp_path / "d.txt").write_text("1")
    with pytest.raises(DataFileError, match="expected .csv, .npy or .pt, got .txt"):
        data_files.load(str(tmp_path / "d.txt"))


def _job(**changes):
    job = {
        "model": {"factory": "mpc.models:MLP", "kwargs": {"sizes": [4, 3, 3, 2]}},
        "training": {"loss": "cross_entropy", "classes": 2, "epochs": 1, "batch_size": 4},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "data": {"parties": [{"party": 0, "file": "a.csv", "label": "y"}, {"party": 1, "file": "b.csv", "label": "y"}]},
    }
    for key, value in changes.items():
        table, _, name = key.partition("__")
        if value is None:
            job[table].pop(name) if name else job.pop(table)
        elif name:
            job.setdefault(table, {})[name] = value
        else:
            job[table] = value
    return job


def test_a_valid_job_parses_with_paths_relative_to_its_file(tmp_path):
    spec = jobfile.load(_job(), base=str(tmp_path))
    assert spec.parties[1].file == str(tmp_path / "b.csv")
    assert spec.optimizer.lr == 0.1 and spec.optimizer.momentum == 0.0
    assert spec.reveal_loss_every == 0 and spec.reveal_accuracy is False and spec.model_to == "shared"
    assert spec.digest == jobfile.load(_job(training__reveal_loss_every=5), base=str(tmp_path)).digest
    assert spec.digest != jobfile.load(_job(optimizer__lr=0.2), base=str(tmp_path)).digest


@pytest.mark.parametrize("changes, message", [
    ({"model__factory": None}, "[model] factory: missing (required)"),
    ({"model__factory": "mpc.models.MLP"}, "[model] factory: must look like package.module:function"),
    ({"training__loss": "hinge"}, "[training] loss: must be one of"),
    ({"training__classes": None}, "[training] classes: missing (required by the cross_entropy loss)"),
    ({"training__epochs": "3"}, "[training] epochs: expected int, got str '3'"),
    ({"training__batch_size": 0}, "[training] batch_size: must be positive, got 0"),
    ({"training__reveal_accuracy": True}, "[training] reveal_accuracy: needs an [evaluate] table"),
    ({"training__epoch": 3}, "[training] epoch: unknown key"),
    ({"training__reveal_accuracy": True, "evaluate": {"party": 0, "file": "t.csv", "label": "y"},
      "data__normalize": True}, "[training] reveal_accuracy: cannot be used with [data] normalize = true"),
    ({"optimizer__name": "rmsprop"}, "[optimizer] name: must be 'sgd' or 'adam'"),
    ({"optimizer__lr": -1.0}, "[optimizer] lr: must be positive"),
    ({"optimizer__betas": [0.9, 0.999]}, "[optimizer] betas: only for adam"),
    ({"optimizer__momentum": 1.5}, "[optimizer] momentum: must be in [0, 1)"),
    ({"data__parties": []}, "[data] parties: needs at least one party"),
    ({"data__split": "diagonal"}, "[data] split: must be 'rows' or 'columns'"),
    ({"data__split": "columns"}, "[data] label_owner: missing (a column split needs the party that holds the labels)"),
    ({"data__parties": [{"party": 0, "file": "a.csv"}]}, "[[data.parties]] #1 label: missing (a row split"),
    ({"data__parties": [{"party": 0, "file": "a.csv", "label": 0}, {"party": 0, "file": "b.csv", "label": 0}]},
     "[[data.parties]] #2 party: party 0 is listed twice"),
    ({"data__parties": [{"party": 0, "path": "a.csv"}]}, "[[data.parties]] #1 path: unknown key"),
    ({"output__model": "everyone"}, "[output] model: must be 'caller', 'shared' or a party id"),
    ({"checkpoint__every": 5}, "[checkpoint] directory: missing (required when [checkpoint] every is set)"),
    ({"extras": {"a": 1}}, "[extras]: unknown table"),
    ({"optimizer": None}, "missing table [optimizer]"),
])
def test_malformed_job_names_the_key(changes, message):
    with pytest.raises(JobFileError) as err:
        jobfile.load(_job(**changes))
    assert message in str(err.value)
    assert str(err.value).startswith("<job dict>: ") or "missing table" in str(err.value)


def test_malformed_toml_file_names_the_file(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text("[model]\nfactory = 'mpc.models:MLP'\n[training\n")
    with pytest.raises(JobFileError, match=r"job.toml: not valid TOML"):
        jobfile.load(str(path))
    path.write_text("[model]\nfactory = 'mpc.models:MLP'\n[training]\nloss = 'mse'\nepochs = 1\n"
                    "[optimizer]\nname = 'sgd'\nlr = 0.1\n[[data.parties]]\nparty = 0\nfile = 'a.csv'\nlabel = 0\n")
    with pytest.raises(JobFileError, match=r"job.toml: \[training\] batch_size: missing \(required\)"):
        jobfile.load(str(path))
    with pytest.raises(JobFileError, match="does not exist"):
        jobfile.load(str(tmp_path / "missing.toml"))


def test_party_ids_must_exist_in_the_cluster():
    spec = jobfile.load(_job(data__parties=[{"party": 0, "file": "a.csv", "label": "y"},
                                            {"party": 3, "file": "b.csv", "label": "y"}]))
    with pytest.raises(JobFileError, match=r"\[\[data.parties\]\] party: party 3 is not one of the cluster's 3 parties"):
        jobfile.check_parties(spec, 3)


def test_the_example_job_parses():
    spec = jobfile.load("examples/digits_train.toml")
    assert [p.party for p in spec.parties] == [0, 1, 2] and spec.checkpoint_every > 0
    assert spec.reveal_accuracy and spec.evaluate.party == 0
