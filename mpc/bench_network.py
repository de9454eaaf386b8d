"""The latency run of `mpc bench --latency`: mlp_infer and mlp_train with 1, 10 and 50 ms
added to every message, where the round count shows.

One LocalCluster whose connections to each party pass through a delaying proxy
(mpc.net.delay_proxy: each chunk delivered D after it arrived, bandwidth uncapped); the
same model and data at each delay. Each row states the bound of issue 9: online time at
most its time without delay plus 1.2 x rounds x D.
"""

from __future__ import annotations

import statistics


from mpc.bench_models import MODEL_WORKLOADS, _input
from mpc.bench_train import TRAIN_WORKLOADS, _split
from mpc.compiler.model import compile_model
from mpc.compiler.training import SGD, compile_training
from mpc.launcher import LocalCluster

DELAYS_MS = (0, 1, 10, 50)
SLACK = 1.2


def run_latency(n_parties: int = 3, reps: int = 3, tls: bool = True, delays_ms=DELAYS_MS, train_steps: int = 4,
                progress=print) -> list[dict]:
    w = MODEL_WORKLOADS["mlp_infer"]
    model, x = w.build(), _input(w)
    compiled = compile_model(model, x)
    tw = TRAIN_WORKLOADS["mlp_train"]
    tx, ty, _, _ = tw.data()
    n_classes = int(ty.max()) + 1
    rows = []
    with LocalCluster(n_parties=n_parties, tls=tls, link_delay_s=0.0) as cluster:
        cluster.share_model(compiled, owner=0)
        data = cluster.share_data(_split(tx, ty, n_parties), loss=tw.loss, n_classes=n_classes)
        program = compile_training(tw.model(), tx[:1], n_rows=len(tx), n_outputs=n_classes, loss=tw.loss,
                                   optimizer=SGD(tw.lr), batch_size=tw.batch_size, frac_bits=cluster.frac_bits)
        for delay in delays_ms:
            cluster.set_link_delay(delay / 1000)
            progress(f"mlp_infer and {train_steps} steps of mlp_train with {delay} ms added per message")
            cluster.infer(compiled, x, model_owner=0, data_owner=1)  # warm-up at this delay
            online, rounds = [], 0
            for _ in range(reps):
                cluster.infer(compiled, x, model_owner=0, data_owner=1)
                online.append(max(s.online_s for s in cluster.last_stats))
                rounds = max(s.rounds for s in cluster.last_stats)
            rows.append({"name": "mlp_infer", "delay_ms": delay, "rounds": rounds,
                         "online_s": statistics.median(online), "spread_online_s": [min(online), max(online)]})
            result = cluster.train(tw.model(), data, program=program, epochs=1, stop_after=train_steps,
                                   steps_per_job=train_steps)
            rows.append({"name": "mlp_train", "delay_ms": delay, "rounds": result.rounds_per_step,
                         "online_s": result.online_s / result.steps, "per": "step"})
    base = {r["name"]: r["online_s"] for r in rows if r["delay_ms"] == 0}
    for r in rows:
        if r["name"] in base:
            r["bound_s"] = base[r["name"]] + SLACK * r["rounds"] * r["delay_ms"] / 1000
            r["within_bound"] = r["online_s"] <= r["bound_s"]
    return rows


def format_latency(rows: list[dict]) -> str:
    lines = [f"{'workload':>10} {'delay_ms':>8} {'rounds':>6} {'online_s':>9} {'bound_s':>9}  within"]
    for r in rows:
        lines.append(f"{r['name']:>10} {r['delay_ms']:>8} {r['rounds']:>6} {r['online_s']:>9.3f} "
                     f"{r.get('bound_s', float('nan')):>9.3f}  {r.get('within_bound', '')}"
                     + ("  (per training step)" if r.get("per") == "step" else ""))
    return "\n".join(lines)


__all__ = ["run_latency", "format_latency", "DELAYS_MS"]
