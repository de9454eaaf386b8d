"""`mpc bench --profile`: where a workload's time goes, and the transport floor beneath it.

For each elementwise workload the jobs run with `Job.profile` set, so every party times its
phases (mpc.runtime.profile) and returns them in its JobStats with the bytes it sent in each
round; the caller adds its own side (program, upload, waiting for results, reassembling them,
decoding). Party 0's `dealer` phase is the dealer generating and sending its corrections, as
party 0 waits for them (expanding its correlations meanwhile: its `prg_expand` is what is left
after the last byte). The `floor` replays the measured rounds over the same mesh — the same
bytes from the same sender to the same receiver in the same rounds, filler instead of shares,
no arithmetic — so `online_s / floor_s` says how far the runtime is from its transport.
Each figure is the median over the timed repetitions.
"""

from __future__ import annotations

import statistics
import time
import uuid

from mpc.ir import Job, Program

CALLER_PHASES = ("program_s", "upload_s", "submit_s", "results_s", "assemble_s", "decode_s", "wall_s")


def floor(cluster, stats) -> float:
    """Online seconds (slowest party) of moving the rounds recorded in `stats` (one JobStats
    per party, from a profiled job) with no arithmetic."""
    n = cluster.n_parties
    rounds = {len(s.round_sizes) for s in stats}
    if len(rounds) != 1:
        raise ValueError(f"the parties recorded different round counts {sorted(rounds)}: no floor to replay")
    replay = [stats[i].round_sizes[r][j] for r in range(rounds.pop()) for i in range(n) for j in range(n)]
    program = Program((), (), (), cluster.frac_bits)
    job = Job(uuid.uuid4().hex, program.digest, replay=tuple(replay))
    outcomes = cluster._execute(program, job, {p: {} for p in range(n)})
    cluster.last_floor_stats = [o.stats for o in outcomes]
    return max(o.stats.online_s for o in outcomes)


def profile_workload(cluster, secret, inputs, reps: int) -> dict:
    """Profiled runs of secret(*shared inputs) after one warm-up: phases per party and for the
    caller, the floor, and the online time as a multiple of it."""
    cluster.profiling = True
    try:
        samples = []
        for rep in range(reps + 1):
            shared = [cluster.share(x, owner=i % cluster.n_parties) for i, x in enumerate(inputs)]
            out = secret(*shared)
            start = time.perf_counter()
            out.reveal()
            wall = time.perf_counter() - start
            stats = cluster.last_stats
            caller = {k: v for k, v in getattr(cluster, "last_overhead", {}).items() if isinstance(v, float)}
            caller.update(decode_s=cluster.last_decode_s, wall_s=wall)
            del shared, out
            cluster.collect()
            if rep:
                samples.append((stats, caller, floor(cluster, stats)))
    finally:
        cluster.profiling = False
    parties = {}
    for p in range(cluster.n_parties):
        names = sorted({k for stats, _, _ in samples for k in stats[p].phases})
        parties[f"party {p}"] = {k: statistics.median(s[p].phases.get(k, 0.0) for s, _, _ in samples) for k in names}
        parties[f"party {p}"]["online_s"] = statistics.median(s[p].online_s for s, _, _ in samples)
        parties[f"party {p}"]["offline_s"] = statistics.median(s[p].offline_s for s, _, _ in samples)
    parties["caller"] = {k: statistics.median(c.get(k, 0.0) for _, c, _ in samples) for k in CALLER_PHASES}
    floor_s = statistics.median(f for _, _, f in samples)
    online = statistics.median(max(x.online_s for x in s) for s, _, _ in samples)
    return {"profile": parties, "floor_s": floor_s, "online_over_floor": online / floor_s if floor_s else None}


def format_profile(row: dict) -> str:
    """One workload's profile as a table: a row per phase, a column per party and the caller."""
    columns = list(row["profile"])
    phases = sorted({k for c in columns for k in row["profile"][c]})
    table = [["phase (ms)", *columns]]
    for phase in phases:
        table.append([phase.removesuffix("_s")] + [
            f"{row['profile'][c][phase] * 1e3:.1f}" if phase in row["profile"][c] else "" for c in columns])
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = [f"{row['name']}: floor {row['floor_s'] * 1e3:.1f} ms, online = {row['online_over_floor']:.2f} x floor"]
    lines += ["  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in table]
    return "\n".join(lines)
