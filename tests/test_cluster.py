"""Real processes: a dealer and three parties over gRPC on loopback, shared by this module."""

import asyncio
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest
import torch

import mpc
from tests import attack
from mpc import reference
from mpc.net import framing, tls
from mpc.net.proto import mpc_pb2 as pb
from mpc.net.proto import mpc_pb2_grpc as pb_grpc
from tests.conftest import ULP, assert_close

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    with mpc.LocalCluster(n_parties=3, connect_timeout=20) as c:
        yield c


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_readme_example(cluster):
    x, w = rand(4, 5), rand(5, 2, seed=1)
    y = (cluster.share(x, owner=0) @ cluster.share(w, owner=1)) * 2 + cluster.share(x, owner=0).sum()
    assert_close(y.reveal(), (x @ w) * 2 + x.sum(), 40 * ULP)


def test_outputs_of_many_chunks_twice_and_empty_come_out_right(cluster):
    """An output of several chunks per party (summed at the caller as they come), the same
    output twice in one reveal (equal, in separate memory), and an empty input and output."""
    x = rand(300_000)  # 2.4 MB: three chunks from each party
    y = cluster.share(x, owner=2) * 3
    a, b = cluster.reveal(y, y)
    assert_close(a, x * 3, 4 * ULP)
    assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    empty = cluster.share(torch.ones(0, 3), owner=1)
    assert (empty * 2).reveal().shape == (0, 3)


PRODUCTS = [
    ("mul", [(1000,), (1000,)], 1e-4),
    ("matmul", [(16, 32), (32, 8)], 1e-3),
    ("conv2d", [(2, 3, 10, 10), (4, 3, 3, 3)], 1e-3),
    ("conv2d_s2p1", [(2, 3, 10, 10), (4, 3, 3, 3)], 1e-3),
]
NONLINEAR = [
    ("relu", (2000,), ULP),
    ("sigmoid", (2000,), 1e-4),
    ("softmax", (100, 10), 2e-4),
    ("max", (100, 10), ULP),
]


def _product_inputs(shapes):
    return [rand(*s, seed=i) for i, s in enumerate(shapes)]


def _nonlinear_input(shape):
    return rand(*shape) * 2


@pytest.fixture(scope="module")
def crypten_refs(crypten_available):
    """CrypTen on the inputs of both tables below, in one set of CrypTen processes (one
    start-up of its 3 ranks instead of one per case); each job's value and rounds are its own."""
    jobs = [(op, _product_inputs(shapes), None) for op, shapes, _ in PRODUCTS]
    jobs += [(name, [_nonlinear_input(shape)], [1]) for name, shape, _ in NONLINEAR]
    keys = [op for op, _, _ in PRODUCTS] + [name for name, _, _ in NONLINEAR]
    return dict(zip(keys, reference.run_many(jobs, world_size=3, reps=1, warmup=False)))


@pytest.mark.parametrize("op, shapes, tol", PRODUCTS)
def test_against_crypten(cluster, crypten_refs, op, shapes, tol):
    xs = _product_inputs(shapes)
    a, b = (cluster.share(x, owner=i) for i, x in enumerate(xs))
    plain = {"mul": lambda: xs[0] * xs[1], "matmul": lambda: xs[0] @ xs[1],
             "conv2d": lambda: torch.nn.functional.conv2d(*xs),
             "conv2d_s2p1": lambda: torch.nn.functional.conv2d(*xs, stride=2, padding=1)}[op]()
    ours = {"mul": lambda: a * b, "matmul": lambda: a @ b, "conv2d": lambda: mpc.conv2d(a, b),
            "conv2d_s2p1": lambda: mpc.conv2d(a, b, stride=2, padding=1)}[op]().reveal()
    theirs = crypten_refs[op]["value"]
    assert_close(ours, plain, tol, "ours vs torch")
    assert_close(theirs, plain, 4 * tol, "CrypTen vs torch")
    assert_close(ours, theirs, 4 * tol, "ours vs CrypTen")


@pytest.mark.parametrize("name, shape, tol", NONLINEAR)
def test_nonlinear_over_grpc_against_crypten(cluster, crypten_refs, name, shape, tol):
    x = _nonlinear_input(shape)
    secret = cluster.share(x, owner=1)
    ours = {"relu": secret.relu, "sigmoid": secret.sigmoid, "softmax": lambda: secret.softmax(-1),
            "max": lambda: secret.max(-1)}[name]().reveal()
    plain = {"relu": torch.relu, "sigmoid": torch.sigmoid, "softmax": lambda t: torch.softmax(t, -1),
             "max": lambda t: t.amax(-1)}[name](x)
    theirs = crypten_refs[name]
    assert_close(ours, plain, tol, "ours vs torch")
    their_err = (theirs["value"] - plain).abs().max().item()
    assert (ours - plain).abs().max().item() <= their_err + ULP, "less accurate than CrypTen"
    assert max(s.rounds for s in cluster.last_stats) < theirs["rounds"]


def test_product_costs_are_counted_by_the_transport(cluster):
    n = 10_000
    # one owner: a Beaver product of two shared values, both masked values opened to all
    product = cluster.share(rand(n), 0) * cluster.share(rand(n, seed=1), 0)
    (product + 1.0).reveal()  # used further: Beaver round and truncation round
    stats = cluster.last_stats
    assert [s.rounds for s in stats] == [2, 2, 2]
    assert [s.bytes_sent for s in stats] == [48 * n] * 3
    assert sum(s.dealer_bytes for s in stats) == 12 * n
    (cluster.share(rand(n), 0) * cluster.share(rand(n, seed=1), 0)).reveal()  # the caller absorbs the truncation
    stats = cluster.last_stats
    assert [s.rounds for s in stats] == [1, 1, 1]
    assert [s.bytes_sent for s in stats] == [32 * n] * 3
    assert sum(s.dealer_bytes for s in stats) == 8 * n
    # two owners, party 0 one of them (compiler/owned.py): parties 0 and 1 send each other one
    # masked value, then their masked shares of the product (c and the truncation are theirs
    # alone); party 2 sends nothing
    product = cluster.share(rand(n), 0) * cluster.share(rand(n, seed=1), 1)
    got = (product + 1.0).reveal()
    assert_close(got, rand(n) * rand(n, seed=1) + 1.0, 4 * ULP)
    stats = cluster.last_stats
    assert [s.rounds for s in stats] == [2, 2, 2]
    assert [s.bytes_sent for s in stats] == [16 * n, 16 * n, 0]
    assert sum(s.dealer_bytes for s in stats) == 12 * n
    # party 0 not an owner: c is shared by all three (party 0 takes the dealer's corrections)
    got = (cluster.share(rand(n), 2) * cluster.share(rand(n, seed=1), 1)).reveal()
    assert_close(got, rand(n) * rand(n, seed=1), 4 * ULP)
    assert [s.bytes_sent for s in cluster.last_stats] == [0, 8 * n, 8 * n]


def _call(cluster, pid, coro_fn):
    """Run `await coro_fn(channel)` as a client of the cluster (its CA's certificate) talking to party pid."""
    creds = cluster.ca.issue("client-test")

    async def go():
        async with grpc.aio.secure_channel(cluster.config.parties[pid], creds.channel_credentials(),
                                           options=[("grpc.max_send_message_length", 64 << 20),
                                                    *tls.channel_options(tls.party_name(pid))]) as ch:
            return await coro_fn(ch)
    return asyncio.run(go())


def _call_coordinator(cluster, coro_fn, identity="client-local"):
    """Run `await coro_fn(stub)` as `identity` talking to the cluster's coordinator."""
    creds = cluster._client_creds if identity == "client-local" else cluster.ca.issue(identity)

    async def go():
        async with grpc.aio.secure_channel(cluster.config.coordinator, creds.channel_credentials(),
                                           options=tls.channel_options(tls.COORDINATOR)) as ch:
            return await coro_fn(pb_grpc.CoordinatorStub(ch))
    return asyncio.run(go())


def test_impostor_stream_is_rejected_and_serving_goes_on(cluster):
    frames = [*framing.encode_frames(b"", tag=pb.FRAME_HELLO, sender=2),
              *framing.encode_frames(b"\0" * 16, tag=pb.FRAME_OPEN, job="no-such-job", round=0, sender=2)]
    send = attack.exchange(frames)  # writes one by one: the server may end the call before reading all

    for _ in range(5):  # see attack.refused: a client-side send race is retried
        with pytest.raises(grpc.aio.AioRpcError) as info:
            _call(cluster, 1, send)
        err = info.value
        if not attack._client_race(err):
            break
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "client-test is not a peer of party 1" in err.details()
    assert_close((cluster.share(rand(3), 0) * 2).reveal(), rand(3) * 2, ULP)


def test_oversized_message_is_rejected_and_serving_goes_on(cluster):
    async def submit(ch):
        stub = pb_grpc.PartyStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Submit(pb.JobRequest(job_id="big", program="0" * 64, inputs={
                1: pb.TensorProto(shape=[1 << 20], dtype="float64", data=bytes(8 << 20))}))
        return info.value.code()

    code = _call(cluster, 0, submit)
    health = cluster.health()[0]
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert health.ready and health.pid == 0


def test_bad_program_is_refused_with_the_node(cluster):
    async def load(stub):
        program = pb.ProgramProto(nodes=[pb.NodeProto(id=0, op="teleport", shape=[2], name="fc1", source="m.py:3")],
                                  outputs=[0], output_scales=[1], frac_bits=16)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.LoadProgram(program)
        return info.value

    err = _call_coordinator(cluster, load)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown op 'teleport' at node 0 (teleport 'fc1') at m.py:3" in err.details()
    assert_close((cluster.share(rand(3), 0) * 2).reveal(), rand(3) * 2, ULP)


def test_job_for_an_unknown_program_is_refused(cluster):
    async def submit(stub):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Submit(pb.JobRequest(job_id="x", program="ab" * 32, recipients=[-1]))
        return info.value

    err = _call_coordinator(cluster, submit)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"coordinator has no program {'ab' * 8}…: load it first" in err.details()


@pytest.mark.parametrize("n_parties", [2, 5])
def test_other_party_counts(n_parties):
    x, y = rand(6, 4), rand(4, 3, seed=1)
    with mpc.LocalCluster(n_parties=n_parties) as c:
        got = (c.share(x, 0) @ c.share(y, n_parties - 1)).reveal()
    assert_close(got, x @ y, 1e-3)


def test_unreachable_party_is_named_within_bounded_time(tmp_path):
    cfg = tmp_path / "cluster.toml"
    cfg.write_text('n_parties = 2\nconnect_timeout = 2.0\n[dealer]\naddress = "127.0.0.1:9"\n'
                   '[[parties]]\npid = 0\naddress = "127.0.0.1:0"\n[[parties]]\npid = 1\naddress = "127.0.0.1:10"\n')
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "parties.party", "--pid", "0", "--config", str(cfg),
                           "--insecure"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert time.monotonic() - start < 20
    assert "party 1 at 127.0.0.1:10" in proc.stderr or "dealer at 127.0.0.1:9" in proc.stderr, proc.stderr
    assert "unreachable" in proc.stderr


def test_lost_party_is_named_and_the_others_stop():
    with mpc.LocalCluster(n_parties=3, round_timeout=10) as c:
        x = c.share(rand(4), 0)
        victim = c.processes[3]  # processes: dealer, party 0, party 1, party 2
        victim.proc.kill()
        victim.proc.wait()
        with pytest.raises(mpc.MPCError, match="party 2"):
            (x * x).reveal()
        for proc in c.processes[1:3]:
            assert proc.proc.wait(timeout=30) == 3  # survivors stop on their own
            assert "party 2" in proc.stderr_tail()


def test_launch_prints_addresses_and_stops_on_sigterm():
    proc = subprocess.Popen([sys.executable, "-m", "mpc.cli", "launch", "--parties", "3"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(8)]
        assert lines[0].split()[0] == "dealer" and all("127.0.0.1:" in line for line in lines[:5]), lines
        assert lines[4].split()[0] == "coordinator", lines
        certs = lines[5].rsplit(" ", 1)[-1].strip()
        assert lines[5].startswith("certificates (mutual TLS") and os.path.exists(f"{certs}/client-local.key"), lines
        config = lines[6].rsplit(" ", 1)[-1].strip()
        assert lines[6].startswith("cluster file") and "[coordinator]" in open(config).read(), lines
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 5
        with mpc.ClusterClient.from_files(config, certs=certs, name="local") as client:  # another process's client
            x, y = rand(3), rand(3, seed=1)
            assert_close((client.share(x, 0) * client.share(y, 2)).reveal(), x * y, 4 * ULP)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        for pid in children:
            assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    finally:
        proc.kill()
