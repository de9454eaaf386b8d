"""Training jobs end to end: job file + party files -> trained model, checkpoints and resume,
`mpc train` over real processes, and the demo's accuracy claim."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import mpc
from mpc import data_files, jobfile, plain_training
from mpc.checkpoints import ResumeError
from mpc.compiler.training import SGD
from mpc.runtime import checkpoint
from mpc.train_jobs import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12  # 2 epochs of 6 batches of 10 rows


def _write_parties(directory) -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(60, 6, generator=g, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()  # 3 classes, learnable
    for p in range(3):
        data_files.write_csv(os.path.join(directory, f"p{p}.csv"), x[20 * p:20 * (p + 1)], y[20 * p:20 * (p + 1)])


def _job(directory, **training) -> dict:
    return {
        "model": {"factory": "mpc.models:MLP", "kwargs": {"sizes": [6, 5, 5, 3]}, "init_seed": 3},
        "training": {"loss": "cross_entropy", "classes": 3, "epochs": 2, "batch_size": 10, "seed": 5,
                     "reveal_loss_every": 3, **training},
        "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.9},
        "data": {"parties": [{"party": p, "file": f"p{p}.csv", "label": "label"} for p in range(3)]},
        "output": {"model": "caller", "directory": "out"},
        "checkpoint": {"every": 4, "directory": "ck"},
    }


def _run(directory, job=None, **kwargs):
    spec = jobfile.load(job or _job(directory), base=str(directory))
    with mpc.InMemoryCluster(3) as cluster:
        return mpc.train_job(spec, cluster, progress=False, out=open(os.devnull, "w"), **kwargs)


def _max_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One uninterrupted run (checkpoints at steps 4, 8, 12)."""
    directory = tmp_path_factory.mktemp("straight")
    _write_parties(directory)
    return directory, _run(directory)


def test_job_trains_like_plaintext_and_writes_its_outputs(straight):
    directory, run = straight
    r = run.report
    assert r.steps == STEPS and [s for s, _ in r.losses] == [3, 7, 11]  # groups end at checkpoints 4, 8, 12
    plain = dict(r.plain_losses)
    for step, value in r.losses:
        assert abs(value - plain[step]) < 0.02, (step, value, plain[step])
    parts = {p: (data_files.load(str(directory / f"p{p}.csv"), "label").x,
                 data_files.load(str(directory / f"p{p}.csv"), "label").y) for p in range(3)}
    x, y = plain_training.assemble(parts)
    model = build_model(jobfile.load(_job(directory), base=str(directory)))
    ref = plain_training.train_plaintext(model, x, y, optimizer=SGD(0.2, 0.9), epochs=2,
                                         batch_size=10, seed=5)
    reference = {k: v.float() for k, v in ref.model.state_dict().items()}
    assert _max_diff(run.state, reference) < 5e-3  # fixed point, 12 steps: the secure run tracks plaintext
    assert _max_diff(run.state, {k: v for k, v in model.state_dict().items()}) > 0.05  # and it trained
    assert torch.equal(torch.load(directory / "out" / "model.pt", weights_only=True)["fc1.weight"], run.state["fc1.weight"])
    metrics = json.loads((directory / "out" / "job.metrics.json").read_text())
    assert metrics["steps"] == STEPS and metrics["checkpoints"] == [4, 8, 12] and metrics["rounds_per_step"] > 0
    assert (directory / "out" / "job.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for p in range(3):  # each party's own directory, its shares only
        names = sorted(os.listdir(directory / "ck" / f"party-{p}"))
        assert names == [checkpoint.file_name(s) for s in (4, 8, 12)]


def test_resume_continues_from_the_checkpoint_to_the_same_weights(straight, tmp_path):
    directory, run = straight
    _write_parties(tmp_path)
    at_4 = _run(tmp_path, stop_after=4).state  # interrupted after step 4 (checkpoint 4 written)
    assert sorted(os.listdir(tmp_path / "ck" / "party-0")) == [checkpoint.file_name(4)]
    # The restored shares are exactly the saved ones: reveal them before any further step.
    restored = _run(tmp_path, resume=True, stop_after=4)
    assert restored.report.resumed_from == 4 and restored.report.steps == 4
    assert _max_diff(restored.state, at_4) == 0.0
    resumed = _run(tmp_path, resume=True)
    assert resumed.report.resumed_from == 4 and resumed.report.steps == STEPS
    assert [s for s, _ in resumed.report.losses] == [7, 11]
    # Same seed, same batches: the resumed run ends where the uninterrupted one does, up to
    # fixed-point rounding (each run's truncations use fresh dealer masks, so two
    # uninterrupted runs differ by a few units in the last place too).
    moved = _max_diff(run.state, at_4)
    assert _max_diff(resumed.state, run.state) < 2e-3 < moved / 10


def _corrupt(path, how: str) -> None:
    data = bytearray(open(path, "rb").read())
    if how == "flip":
        data[-3] ^= 0x40
    elif how == "truncate":
        data = data[:len(data) // 2]
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_damaged_checkpoint_at_one_party_falls_back_to_the_previous_common_step(tmp_path, how):
    _write_parties(tmp_path)
    _run(tmp_path, stop_after=8)  # checkpoints 4 and 8 at every party
    _corrupt(tmp_path / "ck" / "party-1" / checkpoint.file_name(8), how)
    # a write that died before its rename leaves only a temporary file: never read
    (tmp_path / "ck" / "party-2" / (checkpoint.file_name(12) + ".tmp-999")).write_bytes(b"MPCCKPT1")
    resumed = _run(tmp_path, resume=True, stop_after=8)
    assert resumed.report.resumed_from == 4 and resumed.report.steps == 8
    for p in range(3):
        _corrupt(tmp_path / "ck" / f"party-{p}" / checkpoint.file_name(4), "flip")
    _corrupt(tmp_path / "ck" / "party-1" / checkpoint.file_name(8), "flip")
    # the last run rewrote every party's 8; now party 1's 8 and every party's 4 are damaged
    with pytest.raises(ResumeError, match=r"cannot resume: no checkpoint of this job that every party holds "
                                          r"\(party 0: checkpoint .*step-000000004.ckpt: payload checksum does not match"):
        _run(tmp_path, resume=True)


def test_a_checkpoint_of_another_job_is_refused(tmp_path):
    _write_parties(tmp_path)
    _run(tmp_path, stop_after=4)
    other = _job(tmp_path)
    other["optimizer"]["lr"] = 0.3
    with pytest.raises(ResumeError, match=r"belongs to another job \(or another client\), not this job .*the job file changed"):
        _run(tmp_path, job=other, resume=True)


def test_checkpoint_files_hold_shares_and_check_their_header(tmp_path):
    share = torch.tensor([[1, -2], [3, 1 << 40]], dtype=torch.int64)
    path = checkpoint.write(str(tmp_path), 7, "a" * 64, 1, {"w": share, "w:momentum": torch.zeros(3, dtype=torch.int64)})
    assert os.path.basename(path) == "step-000000007.ckpt" and os.listdir(tmp_path) == ["step-000000007.ckpt"]
    back = checkpoint.read(path, "a" * 64, 1, 7)
    assert torch.equal(back["w"], share) and back["w:momentum"].shape == (3,)
    with pytest.raises(checkpoint.CheckpointError, match="holds party 1's shares, not party 2's"):
        checkpoint.read(path, "a" * 64, 2)
    with pytest.raises(checkpoint.CheckpointError, match="says step 7, its name says step 8"):
        checkpoint.read(path, "a" * 64, 1, 8)
    with pytest.raises(checkpoint.CheckpointError, match="not int64 ring shares"):
        checkpoint.write(str(tmp_path), 8, "a" * 64, 1, {"w": torch.zeros(2)})
    for step in range(8, 12):
        checkpoint.write(str(tmp_path), step, "a" * 64, 1, {"w": share})
    assert checkpoint.scan(str(tmp_path), "a" * 64, 1) == ([9, 10, 11], [])  # the newest KEEP only


def _mpc(*args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "mpc.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _toml(job: dict) -> str:
    import tomli_w

    return tomli_w.dumps(job)


@pytest.mark.slow
def test_mpc_train_over_processes_with_interruption_and_resume(tmp_path):
    _write_parties(tmp_path)
    (tmp_path / "job.toml").write_text(_toml(_job(tmp_path)))
    first = _mpc("train", "job.toml", "--local", "3", "--no-progress", "--stop-after", "6", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "trained 6 steps" in first.stdout and "mpc (secret shares)" in first.stdout
    assert "plaintext torch" in first.stdout
    second = _mpc("train", "job.toml", "--local", "3", "--resume", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming after step 4" in second.stderr and "epoch 2/2" in second.stderr  # the progress bar
    metrics = json.loads((tmp_path / "out" / "job.metrics.json").read_text())
    for key in ("job_hash", "steps", "seconds", "rounds_per_step", "bytes_per_step", "losses", "plain_losses",
                "resumed_from", "checkpoints", "model", "files"):
        assert key in metrics, key
    assert metrics["steps"] == STEPS and metrics["resumed_from"] == 4 and metrics["checkpoints"] == [8, 12]
    assert metrics["model"] == "revealed to the caller"
    assert (tmp_path / "out" / "job.png").read_bytes()[:4] == b"\x89PNG"
    state = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    assert set(state) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"}


def test_mpc_train_refuses_bad_data_before_starting_parties(tmp_path):
    _write_parties(tmp_path)
    lines = (tmp_path / "p1.csv").read_text().splitlines()
    cells = lines[3].split(",")
    cells[2] = "n/a?"
    lines[3] = ",".join(cells)
    (tmp_path / "p1.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "job.toml").write_text(_toml(_job(tmp_path)))
    bad = _mpc("train", "job.toml", "--local", "3", cwd=tmp_path)
    assert bad.returncode == 2
    assert f"{tmp_path / 'p1.csv'}, row 3 (line 4), column 'x2': 'n/a?' is not a number" in bad.stderr
    job = _job(tmp_path)
    job["optimizer"]["lr"] = "fast"
    (tmp_path / "job.toml").write_text(_toml(job))
    bad = _mpc("train", "job.toml", cwd=tmp_path)
    assert bad.returncode == 2 and "job.toml: [optimizer] lr: expected float, got str 'fast'" in bad.stderr


@pytest.mark.slow
def test_demo_training_reaches_plaintext_accuracy(tmp_path):
    """The demo's claim: secure test accuracy within 2 points of plaintext torch trained
    identically (the demo runs the same job over processes; here in one process)."""
    from mpc import demo

    with mpc.InMemoryCluster(3) as cluster:
        report = demo.run(cluster, str(tmp_path), progress=False).report
    assert report.plain_accuracy > 0.93
    assert abs(report.accuracy - report.plain_accuracy) <= 0.02, (report.accuracy, report.plain_accuracy)
    assert os.path.exists(report.files["plot"])


def test_a_divergent_run_is_stopped_with_a_clear_message(tmp_path):
    from mpc.train_jobs import DivergenceError

    _write_parties(tmp_path)
    job = _job(tmp_path, reveal_loss_every=1)
    job["optimizer"] = {"name": "sgd", "lr": 200.0}
    with pytest.raises(DivergenceError, match=r"stopped at step \d+: the revealed loss is .*the training diverged or "
                                              r"a value left the fixed-point range .*Lower \[optimizer\] lr"):
        _run(tmp_path, job=job)


def test_column_split_normalized_and_model_revealed_to_one_party(tmp_path):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64) * 3 + 1
    y = (x[:, 0] - x[:, 4] > 0).long()
    data_files.write_csv(str(tmp_path / "left.csv"), x[:, :3], y)  # party 1: three columns and the labels
    data_files.write_csv(str(tmp_path / "right.csv"), x[:, 3:], None)  # party 2: two columns, no labels
    job = _job(tmp_path, classes=2, reveal_loss_every=2)
    job["model"]["kwargs"] = {"sizes": [5, 4, 4, 2]}
    job["data"] = {"split": "columns", "label_owner": 1, "normalize": True,
                   "parties": [{"party": 1, "file": "left.csv", "label": "label"}, {"party": 2, "file": "right.csv"}]}
    job["output"] = {"model": 2, "directory": "out"}
    run = _run(tmp_path, job=job, stop_after=4)
    assert run.state is None and run.report.model == "revealed to party 2 only"
    state = torch.load(tmp_path / "out" / "party-2" / "model.pt", weights_only=True)
    assert state["fc1.weight"].shape == (4, 5)
    plain = dict(run.report.plain_losses)
    assert [s for s, _ in run.report.losses] == [3]
    for step, value in run.report.losses:
        assert abs(value - plain[step]) < 0.02, (step, value, plain[step])
