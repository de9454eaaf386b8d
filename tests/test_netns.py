"""Separate hosts on one machine: each party, the dealer and the coordinator in its own network namespace, with its
own address, the coordinator in one more, started from one cluster file with
`mpc party|dealer|coordinator --cluster`, over mutual TLS;
a client in the root namespace runs inference (checked against torch) and a short training
job, once at full speed, once with every link shaped to 100 Mbit/s (tc tbf), and once through a proxy that adds latency
(netem is not available here). Skips, saying why, only where namespaces cannot be created.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time

import pytest
import torch

import mpc
from mpc import status
from mpc.cli import main as cli_main
from mpc.demo import write_files
from mpc.net.config import ClusterConfig
from mpc.net.delay_proxy import ProxyThread
from mpc.netns import Hosts, NetnsError, cluster_file, cluster_names, unavailable
from mpc.remote import RemoteCluster
from tests.cluster_files import start_cluster, stop_all
from tests.conftest import assert_close
from tests.test_cluster_file import TRAIN_JOB

pytestmark = pytest.mark.slow

N_PARTIES = 3
HOSTS = cluster_names(N_PARTIES)
RATE_BITS = 100e6
DELAY_S = 0.05


@pytest.fixture(scope="module")
def hosts():
    if unavailable():
        pytest.skip(unavailable())
    try:
        created = Hosts(HOSTS).create()
    except NetnsError as exc:
        pytest.skip(f"network namespaces cannot be created here: {exc}")
    try:
        yield created
    finally:
        created.destroy()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    x = torch.randn(8, 20)
    return net, x, mpc.compile(net, x)


def best_of(n: int, fn) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def test_parties_on_separate_hosts_compute_and_slow_down_at_100_mbit(hosts, model, tmp_path):
    net, x, compiled = model
    path = cluster_file(tmp_path, hosts, N_PARTIES, 50051)
    procs = start_cluster(path, N_PARTIES, prefixes={name: hosts.prefix(name) for name in HOSTS}, timeout=120)
    try:
        for name, proc in procs.items():  # each process really is on its own host
            identified = subprocess.run(["ip", "netns", "identify", str(proc.proc.pid)], capture_output=True,
                                        text=True).stdout.strip()
            assert identified == hosts.netns[name]
        config = ClusterConfig.load(path)
        statuses = asyncio.run(status.probe_all(config, status.caller_credentials(config, None, "client-local"), 5))
        assert all(s.ok for s in statuses), statuses
        a, b = torch.randn(200_000), torch.randn(200_000)
        with RemoteCluster.from_file(str(path), str(tmp_path / "certs")) as cluster:
            assert_close(cluster.infer(compiled, x), net(x).detach(), 0.05, "inference across hosts")
            sa, sb = cluster.share(a, owner=0), cluster.share(b, owner=1)
            product = sa * sb
            assert_close(product.reveal(), a * b, 1e-3, "product across hosts")
            unshaped = best_of(2, lambda: (sa * sb).reveal())
            sent = max(s.bytes_sent for s in cluster.last_stats)
            hosts.shape(100)
            try:
                shaped = best_of(2, lambda: (sa * sb).reveal())
                assert_close(cluster.infer(compiled, x), net(x).detach(), 0.05, "inference at 100 Mbit/s")
            finally:
                hosts.unshape()
        # a short training job from the root namespace, over the same hosts
        write_files(str(tmp_path / "digits"), N_PARTIES)
        for p in range(N_PARTIES):  # each party reads its rows from its own data directory
            shutil.move(tmp_path / "digits" / f"party-{p}.csv", tmp_path / f"data-party-{p}" / f"party-{p}.csv")
        (tmp_path / "job.toml").write_text(TRAIN_JOB)
        with pytest.raises(SystemExit) as info:
            cli_main(["train", str(tmp_path / "job.toml"), "--no-progress", "--cluster", str(path),
                      "--certs", str(tmp_path / "certs")])
        assert info.value.code == 0
        metrics = json.loads((tmp_path / "run" / "job.metrics.json").read_text())
        assert metrics["steps"] == 11 and 0 < metrics["losses"][-1][1] < 2.4, metrics["losses"]
        floor = sent * 8 / RATE_BITS
        print(f"\n200k-element product: {sent / 1e6:.1f} MB sent per party; {unshaped:.3f} s unshaped, "
              f"{shaped:.3f} s at 100 Mbit/s (bandwidth floor {floor:.3f} s)")
        assert shaped - unshaped >= 0.5 * floor, (unshaped, shaped, floor)
    finally:
        stop_all(procs)


def test_parties_on_separate_hosts_through_a_delaying_proxy(hosts, model, tmp_path):
    net, x, compiled = model
    proxies = ProxyThread()
    procs = {}
    try:
        path = cluster_file(tmp_path, hosts, N_PARTIES, 50061, proxies)
        procs = start_cluster(path, N_PARTIES, prefixes={name: hosts.prefix(name) for name in HOSTS}, timeout=120)
        with RemoteCluster.from_file(str(path), str(tmp_path / "certs"), ready_timeout=60) as cluster:
            assert_close(cluster.infer(compiled, x), net(x).detach(), 0.05, "inference through the proxies")
            direct = best_of(2, lambda: cluster.infer(compiled, x))
            rounds = max(s.rounds for s in cluster.last_stats)
            proxies.set_delay(DELAY_S)
            t0 = time.perf_counter()
            got = cluster.infer(compiled, x)
            delayed = time.perf_counter() - t0
        assert_close(got, net(x).detach(), 0.05, f"inference with {DELAY_S * 1e3:.0f} ms per message")
        print(f"\nmlp inference: {rounds} rounds; {direct:.3f} s, {delayed:.3f} s with {DELAY_S * 1e3:.0f} ms "
              f"added per message (rounds x delay = {rounds * DELAY_S:.3f} s)")
        assert rounds >= 3
        assert delayed - direct >= 0.5 * rounds * DELAY_S, (direct, delayed, rounds)
    finally:
        stop_all(procs)
        proxies.close()
