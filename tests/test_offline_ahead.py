"""A job's offline phase starts when it is submitted (runtime/session.py): its correlations
are in hand when it is run; results stay right; a job dropped before it runs frees them and
its id stays spent at the dealer; a client may hold only MAX_AHEAD jobs submitted and not
run; training that submits each job while the one before is online ends with the very
weights of training one job at a time."""

from __future__ import annotations

import asyncio
import hashlib
import gc
import time
import uuid
import weakref

import grpc
import pytest
import torch

import mpc
from mpc.checkpoints import Checkpointer
from mpc.compiler.training import SGD
from mpc.ir import TO_CALLER, Job, Node, Program
from mpc.net import outputs, serde
from mpc.net.dealer import DealerService, GrpcDealerLink
from mpc.net.memory import MemoryNetwork
from mpc.net.proto import mpc_pb2 as pb
from mpc.protocols import correlations as corr
from mpc.runtime.jobs import JobError, TooManyAhead
from mpc.runtime.session import MAX_AHEAD, PartySession
from mpc.runtime.transport import PeerFailure
from tests.conftest import ULP, assert_close
from tests.test_dealer_stream import _serve

N = 1000
# x (party 0's) times y (party 1's), truncated: a product's triple and a truncation pair
PROGRAM = Program((Node(0, "input", (), {"shape": (N,), "kind": "private"}, (N,), "x"),
                   Node(1, "input", (), {"shape": (N,), "kind": "private"}, (N,), "y"),
                   Node(2, "mul", (0, 1), {}, (N,), "x*y")), (2,))


def _xy(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, generator=g, dtype=torch.float64) * 3, torch.randn(N, generator=g, dtype=torch.float64)


def _item(seed):
    """(program, job, inputs by party) of x*y revealed to the caller; and x*y in plaintext, on
    the inputs as encoded (16 fractional bits): the secure product is within TOL of it (the
    truncation's one unit, and the exact product's bits below the last place)."""
    x, y = _xy(seed)
    job = Job(uuid.uuid4().hex, PROGRAM.digest, owners={0: 0, 1: 1}, recipients=(TO_CALLER,))
    bits = PROGRAM.frac_bits
    return (PROGRAM, job, {0: {0: x}, 1: {1: y}, 2: {}}), \
        mpc.ring.decode(mpc.ring.encode(x, bits), bits) * mpc.ring.decode(mpc.ring.encode(y, bits), bits)


TOL = 2 * ULP


def _revealed(outcomes):
    """The caller's value of x*y: a networked client sums the parties' shares as they arrive
    (mpc.net.outputs.Outcomes); an in-memory cluster's outcomes each hold a share."""
    if hasattr(outcomes, "value"):
        return outcomes.value(2, PROGRAM.frac_bits)
    return mpc.ring.decode(sum(o.shares[2] for o in outcomes), PROGRAM.frac_bits)


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)


# -- one party's session, beside a real dealer service -----------------------------------------------------


def test_a_prepared_job_dropped_before_it_runs_frees_its_correlations_and_its_id_stays_spent():
    dealer = DealerService(3, authenticated=False)
    (_, job, inputs), _ = _item(0)

    async def go():
        server, port = await _serve(dealer.handler())
        links = [GrpcDealerLink(p, 3, f"127.0.0.1:{port}", timeout=30) for p in range(3)]
        try:
            for link in links:
                await link.connect(10)
            net = MemoryNetwork(3)
            sessions = [PartySession(net.transport(p), links[p]) for p in range(3)]
            for p, s in enumerate(sessions):
                await s.load(PROGRAM)
                await s.submit(job, {k: v for k, v in inputs[p].items()})
            # Nobody ran the job: its offline phase ran anyway, party 0's corrections included.
            prepared = [await s.jobs[job.job_id].prepared for s in sessions]
            assert dealer.jobs_served == 1
            refs = [weakref.ref(t) for p in prepared for c in p.pool.values() for t in _tensors(c)]
            # parties 0 and 1 (the owners): an owned triple (its mask, c) and a truncation pair
            # (r, R, T, M) held between them (compiler/owned.py); party 2 holds none
            assert len(refs) >= 2 * 6
            del prepared
            for s in sessions:
                assert s.cancel(job.job_id) and not s.knows(job.job_id)
            # Freed within a bounded time, not necessarily at once: the event loop lets go of the
            # last value it handed over on its next turn, and party 0's expansion thread of its
            # last correlation when it returns (on a loaded machine 4 tensors were still held
            # at the first look once). A leak would hold them for good.
            for _ in range(100):
                await asyncio.sleep(0.01)
                gc.collect()
                alive = sum(r() is not None for r in refs)
                if not alive:
                    break
            with pytest.raises(JobError, match=f"has no job {job.job_id}"):
                await sessions[0].run(job.job_id)
            specs = [s for _, _, s in (await sessions[0].load(PROGRAM)).dry.specs]
            with pytest.raises(PeerFailure) as refusal:  # a second stream under the id: never
                await links[0].corrections(job.job_id, specs, sum(corr.correction_nbytes(s) for s in specs))
            return alive, str(refusal.value)
        finally:
            for link in links:
                await link.close()
            await server.stop(0)

    alive, refusal = asyncio.run(go())
    assert alive == 0, f"{alive} correlation tensors outlived their cancelled job"
    assert "already served in this session" in refusal, refusal


def test_a_client_holds_at_most_max_ahead_jobs_submitted_and_not_run():
    net = MemoryNetwork(3)
    sessions = [PartySession(net.transport(p), net.dealer(p)) for p in range(3)]

    async def go():
        for s in sessions:
            await s.load(PROGRAM)
        s = sessions[2]  # owns no input of these jobs: it is given none
        held = [_item(k)[0][1] for k in range(MAX_AHEAD)]
        for job in held:
            await s.submit(job, {}, client="alice")
        extra = _item(99)[0][1]
        with pytest.raises(TooManyAhead) as refusal:
            await s.submit(extra, {}, client="alice")
        await s.submit(_item(98)[0][1], {}, client="bob")  # another client's bound is its own
        assert s.cancel(held[0].job_id)  # one fewer waiting: alice may submit again
        await s.submit(extra, {}, client="alice")
        for job in held[1:] + [extra]:
            s.cancel(job.job_id)
        return str(refusal.value)

    message = asyncio.run(go())
    assert f"party 2 holds {MAX_AHEAD} jobs of alice submitted and not yet run; the limit is {MAX_AHEAD}" in message


# -- over processes (slow: a LocalCluster) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    with mpc.LocalCluster(n_parties=3, connect_timeout=30) as c:
        yield c


def _jobs_at_parties(cluster) -> list[int]:
    return [h.jobs for h in cluster.health()]


@pytest.mark.slow
def test_a_job_submitted_ahead_has_its_correlations_in_hand_when_it_is_run(cluster):
    """Job 2 is submitted while job 1 runs and held: the parties prepare it, and when the
    client runs it a second later every party has had its correlations for a while."""
    (first, want1), (second, want2) = _item(1), _item(2)
    runs = cluster._execute_many(iter([first, second]), hold=True)
    out1 = next(runs)
    time.sleep(1.5)  # the client does something else (a checkpoint) before running job 2
    out2 = next(runs)
    with pytest.raises(StopIteration):
        next(runs)
    assert_close(_revealed(out1), want1, TOL, "job 1")
    assert_close(_revealed(out2), want2, TOL, "job 2, prepared before it was run")
    ahead = [o.stats.ready_ahead_s for o in out2]
    assert min(ahead) > 0.5, f"seconds each party held job 2's correlations before its run: {ahead}"
    for s in (o.stats for o in out2):  # the run waited for the barrier only, not for its own preparation
        assert 0 < s.offline_wait_s < s.offline_s, (s.offline_wait_s, s.offline_s)
    assert _jobs_at_parties(cluster) == [0, 0, 0]


@pytest.mark.slow
def test_a_held_job_that_is_never_run_is_dropped_at_every_party(cluster):
    (first, want1), (second, _) = _item(3), _item(4)
    runs = cluster._execute_many(iter([first, second]), hold=True)
    assert_close(_revealed(next(runs)), want1, TOL)
    runs.close()  # the caller stops after job 1 (an error of its own): job 2 is cancelled, not left to expire
    assert _jobs_at_parties(cluster) == [0, 0, 0]
    (third, want3), = [_item(5)]
    assert_close(_revealed(cluster._execute(*third)), want3, TOL)


@pytest.mark.slow
def test_the_bound_on_jobs_submitted_ahead_is_a_clear_refusal_and_cancel_frees_them(cluster):
    async def submit(job):
        request = serde.job_to_proto(job)
        request.client_session = cluster.session
        return (await cluster._coordinator.Submit(request, timeout=30)).job_id

    items = [_item(10 + k)[0] for k in range(MAX_AHEAD + 1)]
    ids = []
    for program, job, inputs in items[:MAX_AHEAD]:  # uploaded and submitted as the client does, never run
        cluster._call(_upload_all(cluster, job, inputs))
        ids.append(cluster._call(submit(job)))
    program, job, inputs = items[-1]
    cluster._call(_upload_all(cluster, job, inputs))
    with pytest.raises(grpc.aio.AioRpcError) as refusal:
        cluster._call(submit(job))
    assert refusal.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"submitted and not yet run; the limit is {MAX_AHEAD}" in refusal.value.details(), refusal.value.details()
    assert _jobs_at_parties(cluster) == [MAX_AHEAD] * 3
    for job_id in ids:  # the client drops them: every party frees them at once
        cluster._call(cluster._cancel(job_id))
    assert _jobs_at_parties(cluster) == [0, 0, 0]

    async def run(job_id):  # Run's raw frames (mpc.net.outputs): the JobEvents among them
        call = outputs.run_call(cluster._channels[0])
        return outputs.events([m async for m in call(pb.JobRef(job_id=job_id), timeout=30)])
    events = cluster._call(run(ids[0]))
    assert events[-1].error == f"party 0 has no job {ids[0]}"
    (item, want), = [_item(20)]
    assert_close(_revealed(cluster._execute(*item)), want, TOL)  # and the client may submit again


async def _upload_all(cluster, job, inputs):
    for p in range(cluster.n_parties):
        if inputs[p]:
            await cluster._upload(p, job.job_id, inputs[p])


@pytest.mark.slow
def test_training_with_prefetch_ends_with_the_weights_of_training_one_job_at_a_time(cluster, tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 6, generator=g, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] > 0).long()
    data = cluster.share_data({0: (x[:60], y[:60]), 1: (x[60:], y[60:])}, n_classes=2)

    def model():
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))

    kw = dict(optimizer=SGD(0.5), epochs=2, batch_size=20, steps_per_job=2)
    ckpt = Checkpointer(cluster, str(tmp_path / "ckpt"), hashlib.sha256(b"prefetch-test").hexdigest())
    ahead = []  # with checkpoints: per job, how long each party held its correlations before its run

    def save(step, handles):
        ahead.append([s.ready_ahead_s for s in cluster.last_stats])
        ckpt.save(step, handles)

    runs = {}
    for name, extra in [("one at a time", dict(prefetch=False)), ("prefetch", {}),
                        ("prefetch, checkpoints", dict(checkpoint_every=2, on_checkpoint=save))]:
        result = cluster.train(model(), data, **kw, **extra)
        assert result.steps == 12
        runs[name] = cluster.reveal_model(result)
        cluster.free_model(result)
    base = runs.pop("one at a time")
    for name, weights in runs.items():
        for k in base:
            assert torch.equal(base[k], weights[k]), (name, k, (base[k] - weights[k]).abs().max().item())
    assert ckpt.written == [2, 4, 6, 8, 10, 12]
    # jobs 2-6 were submitted while the one before ran, and run after its checkpoint: prepared by then
    assert sum(min(a) > 0 for a in ahead[1:]) >= 3, ahead
    assert _jobs_at_parties(cluster) == [0, 0, 0]
