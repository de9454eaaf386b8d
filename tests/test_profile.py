"""Profiling and the transport floor: phases come back when asked (and only then), survive the
wire format, and the floor replays exactly the bytes and rounds the job moved; a malformed
floor job is refused."""

import asyncio
import uuid

import pytest
import torch

from mpc.api import InMemoryCluster
from mpc.bench_profile import floor, format_profile, profile_workload
from mpc.ir import Job, Node, Program
from mpc.net import serde
from mpc.runtime.jobs import JobError, JobStats


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_phases_only_when_asked_and_floor_replays_the_rounds():
    c = InMemoryCluster(3)
    (c.share(rand(100), 0) * c.share(rand(100, seed=1), 1)).reveal()
    assert all(not s.phases and not s.round_sizes for s in c.last_stats)
    c.profiling = True
    # one owner: a Beaver product, so every party shares inputs and expands correlations (with
    # two owners' inputs party 2 would do neither: compiler/owned.py)
    (c.share(rand(100), 0) * c.share(rand(100, seed=1), 0)).relu().reveal()
    stats = c.last_stats
    for s in stats:
        for phase in ("arithmetic", "input_masks", "encode", "combine", "wait", "barrier", "prg_expand", "cpu_s"):
            assert phase in s.phases and s.phases[phase] >= 0, phase
        assert len(s.round_sizes) == s.rounds
        assert sum(map(sum, s.round_sizes)) == s.bytes_sent
    assert "dealer" in stats[0].phases
    c.profiling = False
    before = [len(s.kept) for s in c.sessions]
    assert floor(c, stats) > 0
    # the floor job moved the same bytes in the same rounds, and kept nothing
    assert [(o.rounds, o.bytes_sent) for o in c.last_floor_stats] == [(s.rounds, s.bytes_sent) for s in stats]
    assert [len(s.kept) for s in c.sessions] == before


def test_profile_workload_reports_every_party_and_the_caller():
    c = InMemoryCluster(3)
    c.last_overhead = {}
    row = {"name": "mul", **profile_workload(c, lambda a, b: a * b, [rand(50), rand(50, seed=1)], reps=2)}
    assert set(row["profile"]) == {"party 0", "party 1", "party 2", "caller"}
    assert row["floor_s"] > 0 and row["online_over_floor"] > 0
    assert "x floor" in format_profile(row)
    assert not c.profiling


def test_stats_and_job_survive_the_wire():
    stats = JobStats(0.1, 0.2, 2, 48, 4, 0, 1, {"wait": 0.05, "cpu_s": 0.3}, [[0, 8, 8], [0, 16, 16]])
    back = serde.stats_from_proto(serde.stats_to_proto(stats), 3)
    assert back == stats
    with pytest.raises(serde.SerdeError, match="whole rounds"):
        serde.stats_from_proto(serde.stats_to_proto(stats), 4)
    job = Job(uuid.uuid4().hex, "0" * 64, profile=True, replay=(0, 8, 8, 8, 0, 8, 8, 8, 0))
    assert serde.job_from_proto(serde.job_to_proto(job))[0] == job


@pytest.mark.parametrize("replay, program_nodes, why", [
    ((0, 8, 8, 8, 0, 8, 8, 8), 0, "whole rounds"),
    ((8, 8, 8, 8, 0, 8, 8, 8, 0), 0, "addressed to its sender"),
    ((0, 1 << 31, 0, 0, 0, 0, 0, 0, 0), 0, "over"),
    ((0, 8, 8, 8, 0, 8, 8, 8, 0), 1, "empty program"),
])
def test_malformed_floor_jobs_are_refused(replay, program_nodes, why):
    c = InMemoryCluster(3)
    nodes = (Node(0, "input", (), {"shape": (2,), "kind": "private"}, (2,)),)[:program_nodes]
    program = Program(nodes, ())
    job = Job(uuid.uuid4().hex, program.digest, owners={0: 0} if program_nodes else {}, replay=replay)

    async def go():
        await c.sessions[1].load(program)
        await c.sessions[1].submit(job, {})

    with pytest.raises(JobError, match=why):
        asyncio.run(go())
