"""Grants (mpc.net.grants): a client lets another run one program on a value it keeps,
over real parties, dealer and coordinator with mutual TLS. The model owner is
`client-local`; `client-bob` is granted inference; `client-carol` is not. The grantee
gets the model's outputs and nothing else: another program on the same weights, another
client with the same grant ids, a revoked grant, a freed value are each refused, naming
the grant, while the owner's own jobs go on."""

import dataclasses

import pytest
import torch

import mpc
from mpc.api import MPCError
from mpc.compiler.model import compile_model
from mpc.inference import ModelGrant
from mpc.ir import Job, Node, Program, TO_CALLER
from mpc.net.grants import Grant, GrantError, Grants
from mpc.runtime.jobs import job_digest
from tests.conftest import assert_close

pytestmark = pytest.mark.slow


def _net(seed):
    torch.manual_seed(seed)  # model weights for a test, not a secret
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)).double()


@pytest.fixture(scope="module")
def cluster():
    with mpc.LocalCluster(n_parties=3, connect_timeout=20, clients=("bob", "carol")) as c:
        yield c


@pytest.fixture(scope="module")
def owned(cluster):
    """The owner's model, shared from party 0, and a grant of its inference to client-bob."""
    net = _net(0)
    x = torch.randn(1, 6, dtype=torch.float64)
    shared = cluster.share_model(compile_model(net, x), owner=0)
    grant = cluster.grant_inference(shared, "client-bob")
    return net, shared, grant


def test_the_grantee_runs_inference_on_weights_it_never_sees(cluster, owned):
    net, _, grant = owned
    grant = ModelGrant.from_json(grant.to_json())  # as it travels to bob, out of band
    bob_copy = compile_model(_net(7), torch.zeros(1, 6, dtype=torch.float64))  # the architecture, other weights
    x = torch.randn(1, 6, dtype=torch.float64)
    with cluster.client("bob") as bob:
        got = bob.infer(bob_copy, x, grant=grant, data_owner="caller")
        again = bob.infer(bob_copy, x * 2, grant=grant, data_owner="caller")
    assert_close(got, net(x).detach(), 1e-3, "granted inference")  # the owner's weights, not bob's
    assert_close(again, net(x * 2).detach(), 1e-3, "granted inference, second request")
    assert (got - _net(7)(x).detach()).abs().max() > 0.01


def test_another_client_cannot_use_the_grant(cluster, owned):
    _, _, grant = owned
    copy = compile_model(_net(7), torch.zeros(1, 6, dtype=torch.float64))
    with cluster.client("carol") as carol:
        with pytest.raises(MPCError, match=r"names grant \d+, which party \d does not hold for client-carol"):
            carol.infer(copy, torch.randn(1, 6, dtype=torch.float64), grant=grant, data_owner="caller")


def test_a_program_that_reveals_the_weights_is_refused(cluster, owned):
    """Bob names the grant in a program of his own that outputs a weight: the grant pins the
    inference program's digest."""
    _, shared, grant = owned
    name = next(iter(shared.handles))
    shape = tuple(shared.compiled.params[name].shape)
    stealer = Program((Node(0, "input", (), {"shape": shape, "kind": "kept"}, shape, name),), (0,))
    with cluster.client("bob") as bob:
        job = Job("steal", stealer.digest, recipients=(TO_CALLER,), granted={0: grant.grants[name]})
        with pytest.raises(MPCError, match=r"grant \d+ \(input node 0\) is for program [0-9a-f]{16}…, not for this"):
            bob._execute(stealer, job, {p: {} for p in range(3)})
    # and the inference program at another batch size is another program: refused before any job
    copy = compile_model(_net(7), torch.zeros(1, 6, dtype=torch.float64))
    with cluster.client("bob") as bob, pytest.raises(ValueError, match="the grant is for batches of 1, not 2"):
        bob.infer_batch(copy, [torch.zeros(1, 6, dtype=torch.float64)] * 2, grant=grant)


def test_a_grant_for_another_architecture_is_refused_at_the_client(cluster, owned):
    _, _, grant = owned
    wider = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).double()
    with cluster.client("bob") as bob, pytest.raises(ValueError, match="another architecture or input shape"):
        bob.infer(compile_model(wider, torch.zeros(1, 6, dtype=torch.float64)), torch.zeros(1, 6), grant=grant)


def test_revoked_and_freed_grants_are_refused_and_the_owner_goes_on(cluster):
    net = _net(3)
    x = torch.randn(1, 6, dtype=torch.float64)
    compiled = compile_model(net, x)
    shared = cluster.share_model(compiled, owner=0)
    grant = cluster.grant_inference(shared, "client-bob")
    copy = compile_model(_net(8), torch.zeros(1, 6, dtype=torch.float64))
    with cluster.client("bob") as bob:
        assert_close(bob.infer(copy, x, grant=grant, data_owner="caller"), net(x).detach(), 1e-3, "before revoking")
        assert cluster.revoke_inference(shared, grant)
        with pytest.raises(MPCError, match=r"which party \d does not hold for client-bob"):
            bob.infer(copy, x, grant=grant, data_owner="caller")
        assert not cluster.revoke_inference(shared, grant)  # nothing left to revoke
        # a new grant, then the owner frees the weights: the grant names a freed value
        grant = cluster.grant_inference(shared, "client-bob")
        cluster.free_model(shared)
        with pytest.raises(MPCError, match=r"names a value its owner no longer keeps \(freed\)"):
            bob.infer(copy, x, grant=grant, data_owner="caller")
    # the owner's own inference on a fresh share of the same model still works
    assert_close(cluster.infer(compile_model(_net(3), x), x), net(x).detach(), 1e-3, "owner after the refusals")


def test_a_grant_of_a_value_not_kept_or_of_anothers_id_is_refused(cluster, owned):
    _, shared, grant = owned
    with pytest.raises(MPCError, match=r"there is no kept value 424242 of yours at party \d"):
        cluster._grant({12345: 424242}, "client-bob", grant.program)
    with cluster.client("carol") as carol:  # carol reuses bob's grant id for a value of her own
        mine = carol.share_model(compile_model(_net(5), torch.zeros(1, 6, dtype=torch.float64)), owner=0)
        handle = next(iter(mine.handles.values()))
        with pytest.raises(MPCError, match=r"grant id \d+ is already in use"):
            carol._grant({next(iter(grant.grants.values())): handle}, "client-carol", grant.program)


def test_the_binding_covers_grants():
    """The client's binding (job_digest) names its grants, so a coordinator that swapped a
    grant id or turned a kept handle into a grant is caught at every party."""
    job = Job("j", "ab" * 32, recipients=(TO_CALLER,), granted={0: 5})
    assert job_digest(job) != job_digest(dataclasses.replace(job, granted={0: 6}))
    assert job_digest(job) != job_digest(dataclasses.replace(job, granted={}, kept={0: 5}))


def test_grants_limits_and_checks_without_a_cluster():
    grants = Grants(0)
    kept = {11, 12}.__contains__
    grants.add(1, Grant("client-a", 11, "client-b", "cd" * 32), kept, 1)
    with pytest.raises(GrantError, match="non-zero id"):
        grants.add(0, Grant("client-a", 11, "client-b", "cd" * 32), kept, 1)
    with pytest.raises(GrantError, match="names no grantee"):
        grants.add(2, Grant("client-a", 11, "", "cd" * 32), kept, 1)
    with pytest.raises(GrantError, match="not a SHA-256 digest"):
        grants.add(2, Grant("client-a", 11, "client-b", "cd"), kept, 1)
    job = Job("j", "cd" * 32, kept={0: 99}, granted={0: 1})
    with pytest.raises(GrantError, match="named both as a kept value and as a grant"):
        grants.resolve(job, "client-b", True, kept)
    resolved = grants.resolve(dataclasses.replace(job, kept={}), "client-b", True, kept)
    assert resolved.kept == {0: 11} and resolved.granted == {}
    assert not grants.revoke(1, "client-b") and grants.revoke(1, "client-a") and len(grants) == 0


def test_a_model_trained_at_the_parties_can_be_granted(cluster):
    """The weights of a training job never leave the parties; its owner grants inference on
    them, and the grantee compiles the architecture as a trainable model."""
    from mpc.compiler.training import SGD

    g = torch.Generator().manual_seed(1)  # test data
    x = torch.randn(60, 6, generator=g, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] > 0).long()
    data = cluster.share_data({0: (x[:30], y[:30]), 1: (x[30:], y[30:])}, n_classes=3)
    result = cluster.train(_net(2), data, optimizer=SGD(0.3), epochs=1, batch_size=20)
    with pytest.raises(ValueError, match="needs input_shape"):
        cluster.grant_inference(result.shared, "client-bob")
    grant = cluster.grant_inference(result.shared, "client-bob", input_shape=(4, 6))
    want = cluster.infer(result.shared, x[:4])
    copy = compile_model(_net(9), torch.zeros(4, 6, dtype=torch.float64), trainable=True)
    with cluster.client("bob") as bob:
        got = bob.infer(copy, x[:4], grant=grant, data_owner="caller")
    assert_close(got, want, 2e-3, "granted inference on trained weights")
