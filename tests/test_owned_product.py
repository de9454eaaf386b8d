"""Products of two parties' private inputs (compiler/owned.py, arithmetic.owned_product): the
values of a plaintext product within the truncation's bound, one message each way between
the two owners and none from anyone else, as the cost model predicts for the job's owners;
one program planned per set of owners; inputs used elsewhere or kept still shared."""

import pytest
import torch

import mpc
from mpc import compiler, ring
from mpc.compiler.owned import owned_products, unshared_inputs
from tests.conftest import ULP, assert_close


def _t(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _check_cost(cluster):
    cost = compiler.estimate(cluster.last_program, cluster.n_parties, (-1,) * len(cluster.last_program.outputs),
                             owners=cluster.last_job.owners)
    stats = cluster.last_stats
    assert [s.bytes_sent for s in stats] == cost.bytes_sent
    assert max(s.rounds for s in stats) == cost.total_rounds
    assert stats[0].dealer_bytes == cost.dealer_bytes
    return stats


@pytest.mark.parametrize("n_parties", [2, 3, 5])
def test_owned_products_for_every_pair_of_owners(n_parties):
    """Every ordered pair of owners runs the same program (one digest), each with its own plan."""
    cluster = mpc.InMemoryCluster(n_parties, defer_truncation=False)
    x, y = (ring.decode(ring.encode(_t(2000, seed=s) * 10)) for s in (1, 2))  # exact fixed-point inputs
    digests = set()
    for ox in range(n_parties):
        for oy in range(n_parties):
            got = (cluster.share(x, ox) * cluster.share(y, oy)).reveal()
            err = (got - x * y).abs().max().item() / ULP
            assert err < n_parties // 2 + 1, f"owners {ox}, {oy}: worst error {err:.3f} ulp"
            stats = _check_cost(cluster)
            digests.add(cluster.last_program.digest)
            # round 1: the product; round 2: the truncation's opening
            trunc = 8 * 2000 * (n_parties - 1)
            if ox == oy:  # one owner: a Beaver product, both masked values to every peer
                assert all(s.bytes_sent == 16 * 2000 * (n_parties - 1) + trunc for s in stats)
            elif 0 in (ox, oy) and n_parties >= 3:  # c and the truncation between the owners alone
                assert [s.bytes_sent for s in stats] == [16 * 2000 if p in (ox, oy) else 0 for p in range(n_parties)]
            else:  # only the two owners send, one masked value each, to each other; all truncate
                assert [s.bytes_sent for s in stats] == [trunc + (8 * 2000 if p in (ox, oy) else 0)
                                                         for p in range(n_parties)]
            assert max(s.rounds for s in stats) == 2
    assert len(digests) == 1


def test_broadcast_shapes_and_an_input_also_used_elsewhere():
    """x (64, 1) times y (1, 32) broadcast; x is also added to the product, so it is shared as
    usual, and the product still reads x's plaintext at its owner."""
    cluster = mpc.InMemoryCluster(3)
    x, y = _t(64, 1, seed=3), _t(1, 32, seed=4)
    sx, sy = cluster.share(x, 2), cluster.share(y, 0)
    got = (sx * sy + sx).reveal()
    assert_close(got, x * y + x, 4 * ULP)
    program, owners = cluster.last_program, cluster.last_job.owners
    assert len(owned_products(program, owners)) == 1
    assert unshared_inputs(program, owned_products(program, owners), keep=()) == {
        n.id for n in program.inputs if n.shape == (1, 32)}  # y feeds the product alone
    _check_cost(cluster)


def test_inputs_only_owned_products_read_are_not_kept_and_are_shared_again_when_reused():
    """The lazy API keeps a shared input for later jobs, except one that only owned products
    read (it was never shared): a later job shares it again from its owner; an input that
    the job also adds is kept, and a later job reads the kept share."""
    cluster = mpc.InMemoryCluster(3)
    x, y = _t(500, seed=5), _t(500, seed=6)
    sx, sy = cluster.share(x, 0), cluster.share(y, 1)
    assert_close((sx * sy).reveal(), x * y, 4 * ULP)
    assert cluster.last_job.keep.keys() == set(cluster.last_program.outputs)  # neither input kept
    assert_close((sx + sy * sx).reveal(), x + y * x, 4 * ULP)  # both shared again: x is kept now
    kept = cluster.last_job.keep
    assert len(kept) == 2 and len(cluster.last_job.owners) == 2  # x and the output
    assert_close((sx * 2.0).reveal(), x * 2, 4 * ULP)
    assert cluster.last_job.kept and not cluster.last_job.owners  # x from the kept share, no input again


def test_one_input_twice_takes_the_general_product():
    cluster = mpc.InMemoryCluster(3)
    x = _t(100, seed=7)
    shared = cluster.share(x, 0)
    assert_close((shared * shared).reveal(), x * x, 4 * ULP)  # one input twice: one owner
    assert not owned_products(cluster.last_program, cluster.last_job.owners)


def test_the_plan_is_made_once_per_set_of_owners():
    """A party keeps one plan per (program, owned products): a second job of the same owners
    reuses it, another set of owners gets its own, and the owner-less plan is left as it was."""
    from mpc.runtime import session as session_

    cluster = mpc.InMemoryCluster(3)
    x, y = _t(100, seed=8), _t(100, seed=9)
    for ox, oy in [(0, 1), (0, 1), (1, 2), (0, 0)]:
        assert_close((cluster.share(x, ox) * cluster.share(y, oy)).reveal(), x * y, 4 * ULP)
    loaded = cluster.sessions[0].programs[cluster.last_program.digest]
    assert len(loaded.by_owners) == 2  # (0, 1) once for two jobs, (1, 2); (0, 0) has no owned product
    assert session_.MAX_OWNER_PLANS >= 2


@pytest.mark.parametrize("n_parties", [2, 3])
def test_owned_matmul_and_conv2d(n_parties):
    """x @ w and conv2d(x, w) (strided, padded, grouped) of two owners' inputs against torch,
    with only the owners sending: x's mask to w's owner, w's to x's."""
    cluster = mpc.InMemoryCluster(n_parties)
    x, w = _t(6, 5, seed=10), _t(5, 4, seed=11)
    got = (cluster.share(x, 1) @ cluster.share(w, 0)).reveal()
    assert_close(got, x @ w, 16 * ULP)
    stats = _check_cost(cluster)
    assert [s.bytes_sent for s in stats] == [8 * 20, 8 * 30] + [0] * (n_parties - 2)
    img, kernel = _t(2, 4, 9, 9, seed=12), _t(6, 2, 3, 3, seed=13)
    got = mpc.conv2d(cluster.share(img, 0), cluster.share(kernel, n_parties - 1), stride=2, padding=1,
                     groups=2).reveal()
    assert_close(got, torch.nn.functional.conv2d(img, kernel, stride=2, padding=1, groups=2), 40 * ULP)
    stats = _check_cost(cluster)
    assert stats[0].bytes_sent == 8 * img.numel() and stats[-1].bytes_sent == 8 * kernel.numel()


class _Wire:
    """A transport stand-in for one round: records what the exchange sends, answers `reply`."""

    def __init__(self, pid, reply):
        self.pid, self.n_parties, self.reply, self.sent = pid, 3, reply, None
        self.peers = [p for p in range(3) if p != pid]

    async def exchange(self, job, round_no, outgoing, incoming):
        self.sent = ({p: bytes(v) for p, v in outgoing.items()}, incoming)
        return {p: bytearray(self.reply[p]) for p in incoming}


def _directed_round(pid, reply):
    import asyncio

    from mpc.protocols.base import Open
    from mpc.runtime.executor import make_exchange

    mine = torch.arange(4, dtype=torch.int64) + 10 * pid
    meta = torch.empty(4, dtype=torch.int64, device="meta")
    opens = [Open((mine if pid == 0 else meta,), to=1, senders=(0,)), Open((mine if pid == 1 else meta,), to=0,
                                                                            senders=(1,))]
    wire = _Wire(pid, reply)
    return asyncio.run(make_exchange(wire, "j")(0, opens)), wire.sent


def test_a_directed_round_sends_to_and_reads_from_the_named_parties_only():
    received = torch.arange(4, dtype=torch.int64) + 100
    (e, f), (outgoing, incoming) = _directed_round(1, {0: received.numpy().tobytes()})
    assert torch.equal(e[0], received) and f == (None,)
    assert outgoing == {0: (torch.arange(4) + 10).numpy().tobytes()} and incoming == {0}
    (e, f), (outgoing, incoming) = _directed_round(2, {})  # the third party: silent, nothing to read
    assert e == (None,) and f == (None,) and outgoing == {} and incoming == set()


def test_a_directed_round_refuses_a_message_of_the_wrong_size():
    from mpc.runtime.transport import ProtocolViolation

    with pytest.raises(ProtocolViolation, match="party 0 sent 40 bytes in round 0 of job j, expected 32"):
        _directed_round(1, {0: bytes(40)})


@pytest.mark.parametrize("owners", [(0, 2), (1, 0)])
def test_a_large_product_with_party_0_truncates_between_the_owners_by_halves(owners):
    """Over scatter.SPLIT_MIN_BYTES: each owner opens half of the masked product and sends the
    other the msb of its half; the third party sends nothing and holds a zero share."""
    cluster = mpc.InMemoryCluster(3, defer_truncation=False)
    n = 300_000
    x, y = (ring.decode(ring.encode(_t(n, seed=s) * 30)) for s in (14, 15))
    got = (cluster.share(x, owners[0]) * cluster.share(y, owners[1])).reveal()
    err = (got - x * y) / ULP
    assert err.abs().max().item() < 2 and abs(err.mean().item()) < 0.02
    stats = _check_cost(cluster)
    third = ({0, 1, 2} - set(owners)).pop()
    assert stats[third].bytes_sent == 0
    assert all(stats[p].bytes_sent == 8 * n + 8 * n // 2 + n // 2 // 8 for p in owners)
    assert max(s.rounds for s in stats) == 3
