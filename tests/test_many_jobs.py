"""Many jobs at once on one cluster: eight clients, each with its own certificate, submit
inference requests concurrently while a ninth trains a model; every result is checked
against torch, and no client reaches another's values (real processes, mutual TLS)."""

import threading
import time

import pytest
import torch

import mpc
from mpc.compiler.training import SGD
from tests.conftest import assert_close

pytestmark = pytest.mark.slow

N_CLIENTS = 8
REQUESTS = 3


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).double().eval()


def test_eight_clients_and_a_training_job_side_by_side():
    names = [f"c{k}" for k in range(N_CLIENTS)] + ["trainer"]
    with mpc.LocalCluster(n_parties=3, connect_timeout=30, clients=tuple(names)) as cluster:
        results, errors = {}, []
        start = threading.Barrier(N_CLIENTS + 1)
        # Built here, not in the threads: torch.export is not thread-safe, and seeding the global
        # generator in one thread while another draws from it would mix up the weights (a real
        # client is a process of its own).
        nets = {k: _model(k) for k in range(N_CLIENTS)}
        compiled = {k: mpc.compile(nets[k], torch.zeros(4, 12, dtype=torch.float64)) for k in range(N_CLIENTS)}
        trainer_model = torch.nn.Sequential(torch.nn.Linear(12, 2))

        def client(k):
            try:
                with cluster.client(f"c{k}") as me:
                    net = nets[k]  # every client its own weights: a mix-up would show in the values
                    xs = [torch.randn(4, 12, generator=torch.Generator().manual_seed(100 * k + r),
                                      dtype=torch.float64) for r in range(REQUESTS)]
                    start.wait(timeout=120)
                    t0 = time.perf_counter()
                    outs = [me.infer(compiled[k], x, model_owner=0, data_owner=1) for x in xs]
                    results[k] = (net, xs, outs, time.perf_counter() - t0)
            except Exception as exc:  # reported below, with the client's name
                errors.append(f"c{k}: {exc!r}")
                start.abort()

        def trainer():
            try:
                with cluster.client("trainer") as me:
                    x = torch.randn(120, 12, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
                    y = (x[:, 0] > 0).long()
                    data = me.share_data({0: (x[:60], y[:60]), 1: (x[60:], y[60:])}, n_classes=2)
                    start.wait(timeout=120)
                    result = me.train(trainer_model, data, optimizer=SGD(0.5), epochs=2, batch_size=40)
                    trained = me.reveal_model(result)
                    logits = x @ trained["0.weight"].double().T + trained["0.bias"].double()
                    results["trainer"] = float((logits.argmax(1) == y).double().mean())
            except Exception as exc:
                errors.append(f"trainer: {exc!r}")
                start.abort()

        threads = [threading.Thread(target=client, args=(k,)) for k in range(N_CLIENTS)]
        threads.append(threading.Thread(target=trainer))
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        wall = time.perf_counter() - t0
        assert not errors, errors
        assert not any(t.is_alive() for t in threads), "a client did not finish within 600 s"
        for k in range(N_CLIENTS):
            net, xs, outs, _ = results[k]
            for x, out in zip(xs, outs):
                with torch.no_grad():
                    assert_close(out, net(x), 2e-3, f"client c{k}")
        assert results["trainer"] >= 0.8, f"the model trained beside them is right on {results['trainer']:.0%}"
        print(f"\n{N_CLIENTS} clients x {REQUESTS} inference requests beside a training job: {wall:.1f} s wall, "
              f"{N_CLIENTS * REQUESTS / wall:.1f} requests/s")
