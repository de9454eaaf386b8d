"""`mpc bench` itself, on its quickest workload (a product of 10^3 elements, one timed
repetition) beside CrypTen: the JSON and the table carry the online, total and wall figures
and their ratios, each ratio the quotient of the figures beside it.

The ratios' values are benchmark figures, reported in the README from a quiet machine,
not asserted here; what is asserted holds on any machine: a span contains the spans inside it.
"""

from __future__ import annotations

import json

import pytest

from mpc.cli import main as cli_main

pytestmark = pytest.mark.slow


def test_bench_json_and_table_carry_the_wall_and_its_ratio(tmp_path, capsys, crypten_available):
    with pytest.raises(SystemExit) as info:
        cli_main(["bench", "--only", "mul_1k", "--reps", "1", "--json", str(tmp_path / "bench.json")])
    out = capsys.readouterr().out
    assert info.value.code == 0, out
    header = next(line for line in out.splitlines() if line.split()[:1] == ["name"]).split()
    for column in ("online_s", "total_s", "wall_s", "crypten_s", "crypten_wall_s", "ratio", "ratio_total",
                   "ratio_wall"):
        assert column in header, (column, out)
    [row] = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert row["name"] == "mul_1k" and row["max_abs_err"] < 1e-4
    assert 0 < row["online_s"] <= row["total_s"] < row["wall_s"]  # the caller's span holds the parties'
    assert 0 < row["crypten_s"] < row["crypten_wall_s"]  # sharing and get_plain_text around the op
    assert row["ratio"] == pytest.approx(row["online_s"] / row["crypten_s"])
    assert row["ratio_total"] == pytest.approx(row["total_s"] / row["crypten_s"])
    assert row["ratio_wall"] == pytest.approx(row["wall_s"] / row["crypten_wall_s"])


def test_mpc_version_is_the_installed_distributions(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        cli_main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"mpc {version('mpc')}"
