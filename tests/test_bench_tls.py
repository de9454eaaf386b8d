"""`mpc bench --tls`: a TLS and a plaintext cluster at once on the smallest workloads, and the
byte count and AES rate behind its crypto floor.

The TLS cost itself is a benchmark figure (the README gives it from a quiet machine); what is
asserted holds on any machine: the floor reads the bytes the parties really moved, as the
cost model predicts them, and every figure of the table comes from the runs it lists.
"""

from __future__ import annotations

import json
import statistics

import pytest

from mpc import bench_tls
from mpc.cli import main as cli_main
from mpc.launcher import LocalCluster


def test_busiest_bytes_adds_what_a_party_sends_and_receives():
    # party i: per round, bytes sent to party j. Party 1 sends 5 + 2 and receives 7 + 1.
    sizes = [[[0, 7, 0], [0, 0, 3]],
             [[5, 0, 0], [0, 0, 2]],
             [[0, 1, 0], [0, 0, 0]]]
    assert bench_tls.busiest_bytes(sizes) == 15  # party 1: 7 + 8; party 0: 10 + 5; party 2: 1 + 5


def test_aes_gcm_rate_is_a_rate_of_whole_records():
    rate = bench_tls.aes_gcm_rate(total_bytes=1 << 20, tries=2)
    assert 1e7 < rate < 1e12  # bytes per second: at least 10 MB/s, below what memory could carry


def test_quartiles_stay_within_the_measured_values():
    assert bench_tls._quartiles([1.0, 1.2]) == pytest.approx((1.05, 1.15))
    assert bench_tls._quartiles([2.0]) == (2.0, 2.0)


@pytest.mark.slow
def test_tls_bench_alternates_both_clusters_and_reports_the_runs_it_made(tmp_path, capsys):
    path = tmp_path / "tls.json"
    with pytest.raises(SystemExit) as info:
        cli_main(["bench", "--tls", "--only", "relu_1k", "--reps", "2", "--json", str(path)])
    out = capsys.readouterr().out
    assert info.value.code == 0, out
    assert "relu_1k" in out and "AES floor" in out
    report = json.loads(path.read_text())
    [row] = report["tls"]
    assert len(row["tls_online_all_s"]) == len(row["plain_online_all_s"]) == 2  # one on each of 2 cluster pairs
    assert row["tls_online_s"] == pytest.approx(statistics.median(row["tls_online_all_s"]))
    assert row["plain_online_s"] == pytest.approx(statistics.median(row["plain_online_all_s"]))
    assert row["cost"] == pytest.approx(row["tls_online_s"] / row["plain_online_s"] - 1)
    paired = [t / p - 1 for t, p in zip(row["tls_online_all_s"], row["plain_online_all_s"])]
    assert row["paired_cost"] == pytest.approx(statistics.median(paired))
    # relu_1k: 8 bytes of c, 5 of the carry tree and 1/8 of e per element to each of 2 peers
    assert row["busiest_party_bytes"] == 2 * 2 * (8 + 5) * 1000 + 2 * 2 * 125
    assert row["crypto_floor_s"] == pytest.approx(row["busiest_party_bytes"] / report["aes_gcm_bytes_per_s"])


def test_tls_bench_refuses_other_modes_and_unknown_workloads(capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["bench", "--tls", "--latency"])
    assert info.value.code == 2
    assert "--latency and --tls are separate runs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli_main(["bench", "--tls", "--profile"])
    assert info.value.code == 2
    assert "no --profile or --scaling beside it" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown workload mlp_infer; --tls takes those of mpc bench's first table"):
        bench_tls.run_tls_cost(["mlp_infer"], progress=lambda m: None)


def test_no_cluster_is_started_for_a_refused_run(monkeypatch):
    monkeypatch.setattr(LocalCluster, "__enter__", lambda self: pytest.fail("a cluster was started"))
    with pytest.raises(ValueError, match="--reps must be at least 1"):
        bench_tls.run_tls_cost(["relu_1k"], pairs=0, progress=lambda m: None)
