"""`mpc bench --tls`: what mutual TLS costs, as online time against plaintext on one machine.

A TLS cluster and a plaintext one (`LocalCluster(tls=False)`, loopback only) run at once,
and each repetition runs every workload once on each, the order swapped from one
repetition to the next. Both sides thus see the same machine: a load that comes and goes
hits both, where clusters run one after the other differed by as much as TLS costs
(README, issue 8's measurements). One pair of clusters can also be slow or bimodal
throughout (a `mul_1m` of 24-33 ms in half its runs and 42-56 ms in the other half), so
the repetitions are spread over three pairs started one after another. Reported per
workload:

- the median online time of each side, and their quotient;
- the median and quartiles of the paired quotients (repetition k's TLS run over its
  plaintext run);
- the crypto floor. The busiest party encrypts what it sends and decrypts what it
  receives. That many bytes of AES-128-GCM in 16 KB records (the TLS record size, the
  cipher gRPC's BoringSSL picks on CPUs with AES instructions), at the best rate this
  machine runs it (`cryptography`), take a time that no TLS stack can beat. The floor is
  that time as a share of the plaintext online time.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from mpc.bench import WORKLOADS, _inputs, machine_info, write_json
from mpc.launcher import LocalCluster

NAMES = ("mul_1m", "relu_100k")
PAIRS = 15  # repetitions of each side: a cost of a few percent needs more than bench's 3
CLUSTER_SETS = 3  # one pair of clusters can be slow throughout (README): the runs spread over 3
RECORD_BYTES = 16 << 10  # a TLS record's plaintext at most (RFC 8446 5.1)
BUDGET = 0.10  # issue 8: TLS may cost at most 10% of the online time


def aes_gcm_rate(total_bytes: int = 4 << 20, tries: int = 5) -> float:
    """Bytes per second of AES-128-GCM sealing `total_bytes` in 16 KB records, the best of
    `tries` (a floor wants the machine's best, not its noise)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(AESGCM.generate_key(bit_length=128))
    record = os.urandom(RECORD_BYTES)
    nonce = os.urandom(12)  # one nonce for every record: a throughput test, nothing kept
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        for _ in range(total_bytes // RECORD_BYTES):
            aead.encrypt(nonce, record, None)
        best = min(best, time.perf_counter() - start)
    return total_bytes // RECORD_BYTES * RECORD_BYTES / best


def busiest_bytes(round_sizes: list[list[list[int]]]) -> int:
    """Sent plus received bytes of the party that moves the most, from each party's
    round_sizes (party i: per round, bytes sent to each party j)."""
    n = len(round_sizes)
    sent = [sum(sum(r) for r in rounds) for rounds in round_sizes]
    received = [sum(rounds[r][j] for rounds in round_sizes for r in range(len(rounds))) for j in range(n)]
    return max(s + r for s, r in zip(sent, received))


def _run_once(cluster: LocalCluster, name: str, inputs) -> list:
    """One run of the workload (inputs shared as `mpc bench` shares them); each party's JobStats."""
    w = WORKLOADS[name]
    w.secret(*(cluster.share(x, owner=i % cluster.n_parties) for i, x in enumerate(inputs))).reveal()
    stats = cluster.last_stats
    cluster.collect()  # every run starts from the same store
    return stats


def _online(cluster: LocalCluster, name: str, inputs) -> float:
    return max(s.online_s for s in _run_once(cluster, name, inputs))


def _bytes_moved(cluster: LocalCluster, name: str, inputs) -> int:
    """busiest_bytes of one run, profiled for its per-round byte counts (an extra, untimed run)."""
    cluster.profiling = True
    try:
        stats = _run_once(cluster, name, inputs)
    finally:
        cluster.profiling = False
    return busiest_bytes([s.round_sizes for s in stats])


def _quartiles(values: list[float]) -> tuple[float, float]:
    # inclusive: quartiles between measured values (the default extrapolates past them)
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return q[0], q[2]


def run_tls_cost(names=NAMES, n_parties: int = 3, pairs: int = PAIRS, threads: int = 1,
                 progress=print) -> dict:
    """Both clusters at once, `pairs` alternating repetitions per workload after a warm-up
    of each; see the module docstring for what each figure is."""
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload {', '.join(unknown)}; --tls takes those of mpc bench's first table: "
                         f"{', '.join(WORKLOADS)}")
    if pairs < 1:
        raise ValueError(f"--reps must be at least 1, got {pairs}")
    progress("measuring AES-128-GCM in 16 KB records")
    rate = aes_gcm_rate()
    inputs = {name: _inputs(WORKLOADS[name]) for name in names}
    times = {(name, tls): [] for name in names for tls in (True, False)}
    moved = {}
    n_sets = min(CLUSTER_SETS, pairs)
    done = 0
    for c in range(n_sets):
        share = pairs * (c + 1) // n_sets - done  # the repetitions spread evenly over the sets
        progress(f"starting a TLS and a plaintext cluster of {n_parties} parties ({c + 1} of {n_sets})")
        with LocalCluster(n_parties, torch_threads=threads, tls=True) as secure, \
                LocalCluster(n_parties, torch_threads=threads, tls=False) as plain:
            sides = ((True, secure), (False, plain))
            for name in names:
                progress(f"warming up {name} on both")
                for _, cluster in sides:
                    _run_once(cluster, name, inputs[name])
                moved[name] = _bytes_moved(plain, name, inputs[name])
            for k in range(done, done + share):
                progress(f"repetition {k + 1} of {pairs}")
                for name in names:
                    for tls, cluster in sides if k % 2 == 0 else sides[::-1]:
                        times[(name, tls)].append(_online(cluster, name, inputs[name]))
        done += share
    rows = []
    for name in names:
        secure_s, plain_s = times[(name, True)], times[(name, False)]
        paired = [s / p for s, p in zip(secure_s, plain_s)]
        low, high = _quartiles(paired)
        tls_med, plain_med = statistics.median(secure_s), statistics.median(plain_s)
        floor_s = moved[name] / rate
        rows.append({
            "name": name, "pairs": pairs, "tls_online_s": tls_med, "plain_online_s": plain_med,
            "cost": tls_med / plain_med - 1, "paired_cost": statistics.median(paired) - 1,
            "paired_cost_quartiles": [low - 1, high - 1], "busiest_party_bytes": moved[name],
            "crypto_floor_s": floor_s, "crypto_floor_cost": floor_s / plain_med,
            "tls_online_all_s": secure_s, "plain_online_all_s": plain_s,
        })
    return {"machine": machine_info(threads), "aes_gcm_bytes_per_s": rate, "budget": BUDGET, "tls": rows}


def format_tls(report: dict) -> str:
    lines = [f"{'workload':>10}  {'TLS ms':>7}  {'plain ms':>8}  {'cost':>6}  {'paired (quartiles)':>22}  "
             f"{'MB moved':>8}  {'AES floor':>9}  within {report['budget']:.0%}"]
    for row in report["tls"]:
        low, high = row["paired_cost_quartiles"]
        lines.append(f"{row['name']:>10}  {row['tls_online_s'] * 1e3:7.1f}  {row['plain_online_s'] * 1e3:8.1f}  "
                     f"{row['cost']:+6.0%}  {row['paired_cost']:+6.0%} ({low:+.0%} to {high:+.0%})"
                     f"{'':>2}  {row['busiest_party_bytes'] / 1e6:8.2f}  {row['crypto_floor_cost']:+9.1%}  "
                     f"{'yes' if row['paired_cost'] <= report['budget'] else 'no'}")
    lines.append(f"medians of {report['tls'][0]['pairs']} alternating runs a side; AES-128-GCM here "
                 f"{report['aes_gcm_bytes_per_s'] / 1e9:.2f} GB/s (16 KB records); the floor is the busiest "
                 f"party's bytes (sent + received) at that rate, over the plaintext online time")
    return "\n".join(lines)


def command(args) -> int:
    """`mpc bench --tls` (the rest of `mpc bench`'s arguments in `args`)."""
    names = args.only.split(",") if args.only else list(NAMES)
    try:
        report = run_tls_cost(names, n_parties=args.parties, pairs=args.reps, threads=args.threads,
                              progress=lambda m: print(m, file=sys.stderr, flush=True))
    except ValueError as exc:
        print(f"mpc bench --tls: {exc}", file=sys.stderr)
        return 2
    print(format_tls(report))
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


__all__ = ["run_tls_cost", "format_tls", "command", "aes_gcm_rate", "busiest_bytes", "NAMES", "PAIRS"]
