"""`mpc bench --bandwidth`: the run itself in a small configuration (the 10^6-element product,
two repetitions), its table parsed and checked against issue 9's bound; and the refusal, with
its reason and a non-zero status, where network namespaces cannot be built.

The bound (online time at most 1.3 x bytes / bandwidth above its unshaped time) is an upper
bound on time, and this machine is shared with other work, which only ever adds time. It is
held here on the best of the repetitions, shaped against unshaped, and on mul_1m, whose 32 MB
per party make the bytes, not the rounds, set its time: shaping added 1.10 to 1.16 x bytes /
bandwidth in runs with light other load. It is a timing bound and fails as one: with another
session's CPU-bound suite on the two cores it came out at 1.34 to 1.41 x (plain TCP over the
same links meanwhile: 1.15 x). Not on mlp_train (57 rounds of 11 KB: the 0.3 x slack is
15 ms, a quarter of a millisecond a round; under load its best of four came out at 1.4 to
1.8 x), nor on mlp_infer or a 10^5-element product, whose round of 1.2 or 1.6 MB to each
peer at once takes 1.3 to 1.5 x here in plain TCP sockets as well (README, "Bandwidth").
"""

from __future__ import annotations

import json

import pytest

from mpc import bench_bandwidth, netns
from mpc.cli import main as cli_main

COLUMNS = ["name", "rate_mbit", "rounds", "mb_per_party", "unshaped_online_s", "online_s", "bandwidth_floor_s",
           "bound_s", "within_bound"]


def parse_table(text: str) -> dict[str, dict]:
    """The rows of format_bandwidth's table, by workload."""
    rows = {}
    for line in text.splitlines():
        cells = line.split()
        if cells and cells[0] in bench_bandwidth.PREPARE:
            row = dict(zip(COLUMNS, cells))
            rows[row["name"]] = {k: (v if k in ("name", "within_bound") else float(v)) for k, v in row.items()}
    return rows


def bench(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        cli_main(["bench", *argv])
    return info.value.code


@pytest.mark.slow
def test_the_bandwidth_run_shapes_every_link_and_holds_the_product_to_the_bound(tmp_path, capsys):
    if netns.unavailable():
        pytest.skip(netns.unavailable())
    code = bench(["--bandwidth", "100", "--only", "mul_1m", "--reps", "2",
                  "--json", str(tmp_path / "bw.json")])
    out = capsys.readouterr().out
    assert code == 0, out
    print(out)
    rows = parse_table(out)
    assert sorted(rows) == ["mul_1m"], out
    report = json.loads((tmp_path / "bw.json").read_text())["bandwidth"]
    for r in rows.values():
        assert r["rate_mbit"] == 100 and r["rounds"] >= 1
        assert r["bandwidth_floor_s"] == pytest.approx(r["mb_per_party"] * 8 / 100, abs=2e-3)
        assert r["bound_s"] == pytest.approx(1.3 * r["bandwidth_floor_s"] + r["unshaped_online_s"], abs=3e-3)
        assert r["within_bound"] == str(r["online_s"] <= r["bound_s"])
        figures = next(j for j in report if j["name"] == r["name"])
        assert figures["online_s"] == pytest.approx(r["online_s"], abs=1e-3)
        best_unshaped, best = figures["spread_unshaped_online_s"][0], figures["spread_online_s"][0]
        assert best <= 1.3 * figures["bandwidth_floor_s"] + best_unshaped, figures
        # and shaping really applies: no party's link passes more than 100 Mbit/s
        assert best - figures["spread_unshaped_online_s"][1] >= 0.95 * figures["bandwidth_floor_s"], figures


def test_the_bandwidth_run_says_why_it_cannot_run_and_fails(monkeypatch, capsys):
    monkeypatch.setattr(netns, "unavailable", lambda: "network namespaces need root (this process runs as uid 1000)")
    assert bench(["--bandwidth"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "not run: network namespaces need root" in captured.err and "tc" in captured.err
    assert bench(["--bandwidth", "--only", "cnn_infer"]) == 2
    assert "no workload cnn_infer" in capsys.readouterr().err
    assert bench(["--bandwidth", "--latency"]) == 2
