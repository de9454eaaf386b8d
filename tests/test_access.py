"""Who may ask for what, attacked as a client would: real parties, dealer and coordinator on
loopback with mutual TLS, the legitimate client `client-local` (the operator of every
party) and a second listed client `client-bob`, plus outsiders holding certificates of the
same CA. Every refusal must name who and why, and a legitimate job must still come out
right beside it (mpc.net.access, mpc.net.coordinator)."""

import asyncio
import dataclasses

import grpc
import pytest
import torch

import mpc
from mpc.api import MPCError
from mpc.ir import TO_CALLER, Job, Node, Program
from mpc.net import outputs, serde, tls
from mpc.net.proto import mpc_pb2 as pb
from mpc.net.proto import mpc_pb2_grpc as pb_grpc
from mpc.runtime.jobs import job_digest
from tests.attack import rand, still_works
from tests.conftest import ULP, assert_close

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    with mpc.LocalCluster(n_parties=3, connect_timeout=20, clients=("bob",)) as c:
        yield c


@pytest.fixture(scope="module")
def bob(cluster):
    with cluster.client("bob") as b:
        yield b


def _as(cluster, identity, address, expect, fn):
    """await fn(channel) as `identity` (a certificate of the cluster's own CA)."""
    creds = cluster._client_creds if identity == "client-local" else cluster.ca.issue(identity)

    async def go():
        async with grpc.aio.secure_channel(address, creds.channel_credentials(),
                                           options=tls.channel_options(expect)) as ch:
            return await fn(ch)
    return asyncio.run(go())


def _denied(cluster, identity, address, expect, fn) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _as(cluster, identity, address, expect, fn)
    return info.value


def _request(client, job):
    """The JobRequest `client` would send: its kept values live in its process's namespace."""
    request = serde.job_to_proto(job)
    request.client_session = client.session
    return request


def _kept_reader(shape) -> Program:
    """A program that reveals one kept value to the caller: what an attacker would submit."""
    return Program((Node(0, "input", (), {"shape": shape, "kind": "kept"}, shape, "stolen"),), (0,))


# -- programs and jobs come from the coordinator, and it takes them from listed clients only --------------


@pytest.mark.parametrize("identity", ["client-local", "client-eve", "party-1", "dealer"])
def test_only_the_coordinator_loads_programs_and_submits_jobs_at_a_party(cluster, identity):
    program = serde.program_to_proto(_kept_reader((2,)))

    async def load(ch):
        await pb_grpc.PartyStub(ch).LoadProgram(program, timeout=10)

    async def submit(ch):
        await pb_grpc.PartyStub(ch).Submit(pb.JobRequest(job_id="x", program="ab" * 32, recipients=[-1],
                                                         submitter="client-local"), timeout=10)

    for fn, what in ((load, "a program"), (submit, "a job")):
        err = _denied(cluster, identity, cluster.config.parties[1], "party-1", fn)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"party 1 refuses {what} from {identity}: only the coordinator" in err.details()
    still_works(cluster)


@pytest.mark.parametrize("identity", ["client-eve", "party-0"])
def test_coordinator_takes_jobs_from_listed_clients_only(cluster, identity):
    async def submit(ch):
        await pb_grpc.CoordinatorStub(ch).Submit(pb.JobRequest(job_id="x", program="ab" * 32), timeout=10)

    err = _denied(cluster, identity, cluster.config.coordinator, tls.COORDINATOR, submit)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"coordinator refuses {identity}: not a client of this cluster" in err.details()
    assert "client-local" not in err.details()  # nor who is
    still_works(cluster)


def test_coordinator_refuses_plaintext_inputs_and_never_relays_them(cluster):
    async def submit(ch):
        await pb_grpc.CoordinatorStub(ch).Submit(pb.JobRequest(
            job_id="x", program="ab" * 32, inputs={0: serde.tensor_to_proto(torch.ones(2))}), timeout=10)

    err = _denied(cluster, "client-local", cluster.config.coordinator, tls.COORDINATOR, submit)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "a job carries no plaintext inputs" in err.details()


def test_job_ids_are_fresh_from_the_coordinator_whatever_the_client_asks(cluster):
    program = _kept_reader((2,))
    x = cluster.share(rand(2), 0)
    (x * 1).reveal()  # x is now kept at every party
    job = Job("my-id", program.digest, kept={0: x._node.id}, recipients=(TO_CALLER,))
    ids = []
    for _ in range(2):  # the same client id twice: two fresh ids, both runs correct
        outcomes = cluster._execute(program, job, {p: {} for p in range(3)})
        assert_close(mpc.ring.decode(outcomes.totals[0], cluster.frac_bits), rand(2), ULP)

        async def submit(ch):
            return await pb_grpc.CoordinatorStub(ch).Submit(_request(cluster, job), timeout=10)
        ids.append(_as(cluster, "client-local", cluster.config.coordinator, tls.COORDINATOR, submit).job_id)
    assert ids[0] != ids[1] and "my-id" not in ids[0]
    assert ids[0].split("-")[0] == ids[1].split("-")[0]  # one coordinator nonce, a counter after it


# -- kept values and outputs belong to their submitter ----------------------------------------------------------


def test_another_clients_kept_values_are_out_of_reach(cluster, bob):
    secret = rand(4, seed=7)
    x = cluster.share(secret, 0)
    (x * 1).reveal()
    handle = x._node.id  # what bob would guess: handles are small integers
    program = _kept_reader((4,))
    job = Job("steal", program.digest, kept={0: handle}, recipients=(TO_CALLER,))
    with pytest.raises(MPCError, match=f"refers to kept value .* which party [0-2] does not hold"):
        bob._execute(program, job, {p: {} for p in range(3)})
    free = Job("free-it", program.digest, kept={0: handle}, recipients=(TO_CALLER,), free=(handle,))
    with pytest.raises(MPCError):
        bob._execute(program, free, {p: {} for p in range(3)})
    assert_close((x * 2).reveal(), secret * 2, 4 * ULP, "local's value after bob's attempts")
    assert_close((bob.share(rand(3), 1) * 3).reveal(), rand(3) * 3, 4 * ULP, "bob's own job")


def test_outputs_reach_only_the_client_that_submitted_the_job(cluster, bob):
    program = _kept_reader((3,))
    x = cluster.share(rand(3, seed=3), 1)
    (x * 1).reveal()
    job = Job("mine", program.digest, kept={0: x._node.id}, recipients=(TO_CALLER,))
    cluster._call(cluster._load(program))

    async def submit(ch):
        return await pb_grpc.CoordinatorStub(ch).Submit(_request(cluster, job), timeout=10)
    job_id = _as(cluster, "client-local", cluster.config.coordinator, tls.COORDINATOR, submit).job_id

    binding = job_digest(dataclasses.replace(job, job_id=job_id))

    async def run(ch):
        return [m async for m in outputs.run_call(ch)(pb.JobRef(job_id=job_id, binding=binding), timeout=10)]
    for identity, why in (("client-bob", f"job {job_id} was not submitted by client-bob"),
                          ("coordinator", "not a client of this cluster"), ("party-0", "not a client of this cluster")):
        err = _denied(cluster, identity, cluster.config.parties[0], "party-0", run)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert why in err.details() and identity in err.details() and "client-local" not in err.details()
    async def run_all():  # the submitter still runs it, at every party at once, and gets each share
        creds = cluster._client_creds
        channels = [grpc.aio.secure_channel(cluster.config.parties[p], creds.channel_credentials(),
                                            options=tls.channel_options(f"party-{p}")) for p in range(3)]
        try:
            return await asyncio.gather(*(run(ch) for ch in channels))
        finally:
            for ch in channels:
                await ch.close()
    received = outputs.JobOutputs.for_job(program, job, 3)
    for p, messages in enumerate(asyncio.run(run_all())):
        assert [m for m in messages if received.feed(p, m)] == [messages[-1]]  # the stats end each stream
    assert_close(mpc.ring.decode(received.finish().totals[0], cluster.frac_bits), rand(3, seed=3), ULP)


def test_a_job_the_coordinator_changed_is_not_run(cluster):
    """Someone holding the coordinator's certificate forwards the client's job with another
    recipient (its output opened to every party). The client runs the job id it was given,
    naming its own digest of what it submitted: every party refuses before any round, and
    drops the job; with the digest of the forwarded job, the same parties would run it."""
    program = _kept_reader((3,))
    x = cluster.share(rand(3, seed=4), 1)
    (x * 1).reveal()
    cluster._call(cluster._load(program))
    mine = Job("mine", program.digest, kept={0: x._node.id}, recipients=(TO_CALLER,))
    changed = dataclasses.replace(mine, job_id=f"forged-{rand(1, seed=5).abs().item():.9f}", recipients=(mpc.ir.TO_ALL,))

    async def forward(ch):  # as the coordinator: the program is loaded, the changed job submitted
        stub = pb_grpc.PartyStub(ch)
        request = _request(cluster, changed)
        request.submitter = "client-local"
        return await stub.Submit(request, timeout=10)

    for p in range(3):
        _as(cluster, "coordinator", cluster.config.parties[p], f"party-{p}", forward)

    async def run(p, binding):
        call = outputs.run_call(cluster._channels[p])
        return outputs.events([m async for m in call(pb.JobRef(job_id=changed.job_id, binding=binding), timeout=10)])

    async def run_all(binding):
        return await asyncio.gather(*(run(p, binding) for p in range(3)))

    events = cluster._call(run_all(job_digest(dataclasses.replace(mine, job_id=changed.job_id))), timeout=30)
    for p, evs in enumerate(events):
        assert len(evs) == 1 and evs[0].WhichOneof("event") == "error", evs
        assert f"party {p} refuses to run job {changed.job_id}: it is not the job its client submitted" in evs[0].error
    # Dropped, not merely refused: running it again finds no job.
    events = cluster._call(run_all(job_digest(changed)), timeout=30)
    assert all(f"has no job {changed.job_id}" in evs[-1].error for evs in events), events
    still_works(cluster)


def test_caller_shares_are_fresh_every_time(cluster):
    """Two reveals of the same kept value: the same sum, but no party's share repeats (each
    is masked with a fresh zero-sharing), so shares tell the caller nothing beyond the value."""
    program = _kept_reader((64,))
    x = cluster.share(rand(64), 2)
    (x * 1).reveal()
    job = Job("again", program.digest, kept={0: x._node.id}, recipients=(TO_CALLER,))
    first, second = (_each_share(cluster, program, job) for _ in range(2))
    for p in range(3):
        assert not torch.equal(first[p], second[p]), f"party {p} sent the same share twice"
    assert torch.equal(sum(first), sum(second))
    assert torch.equal(sum(first), cluster._execute(program, job, {p: {} for p in range(3)}).totals[0])


def _each_share(cluster, program, job) -> list[torch.Tensor]:
    """Run `job` as the client does, but keep each party's share of its output apart (the
    client sums them as they come)."""
    cluster._call(cluster._load(program))

    async def go():
        reply = await cluster._coordinator.Submit(_request(cluster, job), timeout=30)
        ref = pb.JobRef(job_id=reply.job_id, binding=job_digest(dataclasses.replace(job, job_id=reply.job_id)))

        async def share(p):
            received = outputs.JobOutputs.for_job(program, job, 3, parties=[p])
            async for msg in outputs.run_call(cluster._channels[p])(ref, timeout=30):
                if received.feed(p, msg):
                    return received.finish().totals[0]
        return await asyncio.gather(*(share(p) for p in range(3)))
    return cluster._call(go(), timeout=60)


def test_a_value_revealed_to_a_party_reaches_only_its_operator(cluster, bob):
    value = rand(3, seed=11)
    got = bob.reveal(bob.share(value, 0) * 2, to=1)  # bob may address party 1, but is not its operator
    assert got == [None]
    mine = cluster.reveal(cluster.share(value, 0) * 2, to=1)  # client-local operates every party here
    assert_close(mine[0], value * 2, 4 * ULP)
    public = bob.reveal(bob.share(value, 0) * 2, to="all")  # opened to every party: public
    assert_close(public[0], value * 2, 4 * ULP)


def test_uploads_are_bound_to_their_client(cluster, bob):
    """bob uploads under the key local's job is sent with: the party keeps it in bob's
    space, so local's job finds no input of its own instead of computing on bob's."""
    shape = (2,)
    program = Program((Node(0, "input", (), {"shape": shape, "kind": "private"}, shape, "x"),), (0,))
    bob._call(bob._upload(0, "shared-key", {0: torch.full(shape, 666.0)}))
    job = Job("shared-key", program.digest, owners={0: 0}, recipients=(TO_CALLER,))
    with pytest.raises(MPCError, match="party 0 owns input .* but was given no value for it"):
        cluster._execute(program, job, {p: {} for p in range(3)})
    value = rand(*shape, seed=5)
    outcomes = cluster._execute(program, Job("shared-key", program.digest, owners={0: 0}, recipients=(TO_CALLER,)),
                                {0: {0: value}, 1: {}, 2: {}})
    assert_close(mpc.ring.decode(outcomes.totals[0], cluster.frac_bits), value, ULP)


def test_a_job_one_party_refuses_is_dropped_by_the_others(cluster):
    """Party 0 refuses the job (its upload has the wrong size); the coordinator cancels it at
    parties 1 and 2, so nothing waits for it to run or for what it would keep."""
    shape = (4,)
    program = Program((Node(0, "input", (), {"shape": shape, "kind": "private"}, shape, "x"),), (0,))
    job = Job("bad-upload", program.digest, owners={0: 0}, recipients=(TO_CALLER,), keep={0: 123456})
    before = [h.jobs for h in cluster.health()]  # jobs other tests submitted and never ran wait to expire
    cluster._call(cluster._upload(0, "bad-upload", {0: torch.ones(3)}))  # 3 values for a 4-value input
    with pytest.raises(MPCError, match="party 0: upload for input node 0 has 24 bytes"):
        cluster._execute(program, job, {p: {} for p in range(3)})
    assert [h.jobs for h in cluster.health()] == before
    still_works(cluster)


def test_a_party_reads_its_data_files_only_for_its_operator(cluster, bob):
    """Whoever runs a job on a party's own files can reveal what it computes from them: only
    the party's operator (client-local here) may; bob is refused before any file is opened."""
    with pytest.raises(MPCError, match=r"party 0 refuses a data description from client-bob: party 0 uses its "
                                       r"own files only for its operator \(client-local\)"):
        bob.share_data_files({0: ("rows.csv", "label")}, n_classes=2)
    with pytest.raises(MPCError, match="party 0 has no data directory"):  # the operator gets further
        cluster.share_data_files({0: ("rows.csv", "label")}, n_classes=2)


def test_health_answers_the_cluster_only(cluster):
    async def health(ch):
        return await pb_grpc.PartyStub(ch).Health(pb.HealthRequest(), timeout=10)

    assert _as(cluster, "client-bob", cluster.config.parties[2], "party-2", health).ready
    assert _as(cluster, "party-1", cluster.config.parties[2], "party-2", health).pid == 2
    err = _denied(cluster, "client-eve", cluster.config.parties[2], "party-2", health)  # same CA, not listed
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "not a process or client of this cluster" in err.details()


def test_checkpoints_are_the_operators_where_a_party_has_no_data_directory(cluster, bob, tmp_path):
    """A listed client that is not the operator cannot make a party write (or prune, or
    load) checkpoint files anywhere on its disk."""
    x = bob.share(rand(3), 0)
    (x * 1).reveal()
    for call in (lambda: bob._save_checkpoint(0, str(tmp_path / "ck"), 1, "h" * 64, {"w": x._node.id}),
                 lambda: bob._load_checkpoint(0, str(tmp_path / "ck"), 1, "h" * 64, {"w": x._node.id}),
                 lambda: bob._list_checkpoints(0, str(tmp_path / "ck"), "h" * 64)):
        with pytest.raises(MPCError, match="party 0 refuses a checkpoint.* from client-bob: party 0 uses its own "
                                           "files only for its operator"):
            call()
    assert not (tmp_path / "ck").exists()
    with pytest.raises(MPCError, match="a checkpoint names at least one kept value"):
        cluster._save_checkpoint(0, str(tmp_path / "ck"), 1, "h" * 64, {})


def test_the_coordinator_sends_an_evicted_program_again(monkeypatch):
    """A program pushed out of the coordinator's cache (more than MAX_PROGRAMS loaded) and
    loaded again reaches the parties again, instead of being stuck as 'already loaded'."""
    from mpc.net import coordinator as coord
    from mpc.net.config import ClusterConfig

    class Party:
        def __init__(self):
            self.loads = []

        async def LoadProgram(self, request, timeout):
            self.loads.append(serde.program_from_proto(request).digest)
            return pb.ProgramReply(digest=self.loads[-1])

    monkeypatch.setattr(coord, "MAX_PROGRAMS", 2)
    service = coord.CoordinatorService(None)
    service.config = ClusterConfig(2, "127.0.0.1:1", {0: "127.0.0.1:2", 1: "127.0.0.1:3"})
    service._loaded = {0: set(), 1: set()}
    service._stubs = {0: Party(), 1: Party()}
    service.ready.set()
    programs = [_kept_reader((k + 1,)) for k in range(3)]
    for program in programs + programs[:1]:
        reply = asyncio.run(service.load_program(serde.program_to_proto(program), None))
        assert reply.digest == program.digest
    assert service._stubs[0].loads == [p.digest for p in programs + programs[:1]]
