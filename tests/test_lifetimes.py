"""Lifetimes: what the parties keep is freed when nothing refers to it, and memory stays flat.

In memory: the graph builder and every party's store stay bounded over many reveals; an
explicitly freed tensor (and what is computed from it) refuses to be revealed and names the
freed node; a job naming a freed handle is refused with "freed"; models, training results
and data sets are freed by `free_model`. Over real processes: 200+ repeated products keep each
party's resident memory within a stated bound and its Health count of kept values small.
"""

import gc
import uuid

import pytest
import torch

import mpc
from mpc.api import FreedError, InMemoryCluster
from mpc.ir import Job, Node, Program
from mpc.runtime.jobs import JobError
from tests.conftest import ULP, assert_close


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("owner_y, kept", [(0, 3), (1, 1)])
def test_repeated_reveals_keep_graph_and_stores_bounded(owner_y, kept):
    """One owner: x, y and the output kept each time; two owners: the output alone (inputs that
    only an owned product reads are never shared, so never kept: compiler/owned.py)."""
    c = InMemoryCluster(3)
    x, y = rand(50), rand(50, seed=1)
    for _ in range(60):
        z = c.share(x, 0) * c.share(y, owner_y) + 1
        assert_close(z.reveal(), x * y + 1, 4 * ULP)
        del z
    # the last iteration's 4 nodes at most (its values are still kept until the next job)
    assert len(c._builder.nodes) <= 5
    assert all(len(s.kept) <= kept for s in c.sessions)
    assert c.collect() == kept
    assert len(c._builder.nodes) == 0 and all(not s.kept for s in c.sessions)


def test_value_needed_by_a_pending_tensor_is_not_freed():
    c = InMemoryCluster(3)
    x = c.share(rand(8), 0)
    y = x * 2
    y.reveal()  # x and y kept
    w = y + x  # pending: needs y and x
    del y
    gc.collect()
    c.collect()
    assert all(len(s.kept) == 2 for s in c.sessions)  # y still held for w
    assert_close(w.reveal(), rand(8) * 3, 4 * ULP)
    del x
    c.collect()  # w kept; x and y unreachable now
    assert all(len(s.kept) == 1 for s in c.sessions)


def test_a_copied_tensor_keeps_its_value_alive():
    import copy
    c = InMemoryCluster(3)
    x = c.share(rand(4), 0)
    x.reveal()
    y = copy.deepcopy(x)
    del x
    c.collect()
    assert_close(y.reveal(), rand(4), ULP)


def test_explicit_free_then_use_names_the_freed_node():
    c = InMemoryCluster(3)
    x = c.share(rand(4), 0)
    y = x * 3
    y.reveal()
    w = y - 1
    assert c.free(y) == 1
    with pytest.raises(FreedError, match=rf"node {y._node.id} .*freed by cluster.free"):
        w.reveal()
    with pytest.raises(FreedError, match="freed"):
        y.reveal()
    assert_close(x.reveal(), rand(4), ULP)  # the rest is unaffected


def test_session_refuses_a_freed_handle_with_a_clear_error():
    c = InMemoryCluster(3)
    x = c.share(rand(4), 0)
    x.reveal()
    handle = x._node.id
    c.free(x)
    node = Node(0, "input", (), {"shape": (4,), "kind": "kept"}, (4,))
    program = Program((node,), (0,))
    job = Job(uuid.uuid4().hex, program.digest, kept={0: handle}, recipients=(-1,))

    async def go():
        await c.sessions[0].load(program)
        await c.sessions[0].submit(job, {})

    import asyncio
    with pytest.raises(JobError, match=rf"kept value {handle}, which was freed"):
        asyncio.run(go())


def test_free_model_and_training_state():
    c = InMemoryCluster(3)
    model = mpc.compile(torch.nn.Linear(4, 2), torch.zeros(1, 4))
    shared = c.share_model(model, owner=0)
    assert all(len(s.kept) == 2 for s in c.sessions)
    c.infer(shared, rand(1, 4))
    assert c.free_model(shared) == 2
    assert all(not s.kept for s in c.sessions)
    # a model shared again after freeing is shared anew, not served from a stale cache
    c.infer(model, rand(1, 4))
    assert all(len(s.kept) == 2 for s in c.sessions)
    c.free_model(c.share_model(model, owner=0))

    xs, ys = rand(40, 4), (rand(40, seed=3) > 0).long()
    data = c.share_data({0: (xs[:20], ys[:20]), 1: (xs[20:], ys[20:])}, n_classes=2)
    result = c.train(torch.nn.Linear(4, 2), data, epochs=1, batch_size=20)
    assert all(len(s.kept) == 4 for s in c.sessions)  # x, y, weight, bias (SGD: no state)
    c.free_model(result)
    c.free_model(data)
    assert all(not s.kept for s in c.sessions)


@pytest.mark.slow
def test_party_memory_flat_over_200_jobs():
    """Each iteration keeps 3 values of 10^5 elements (2.4 MB) per party unless they are
    freed: 200 jobs would grow a party by ~480 MB. The bound is 30 MB over the 200 jobs."""
    n, warm, timed, bound = 100_000, 40, 200, 30 << 20
    x, y = rand(n), rand(n, seed=1)
    with mpc.LocalCluster(n_parties=3) as c:
        pids = [proc.proc.pid for proc in c.processes[1:]]  # processes[0] is the dealer

        def rss(pid):
            with open(f"/proc/{pid}/status") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

        def step():
            out = (c.share(x, 0) * c.share(y, 1)).reveal()
            assert out.shape == (n,)

        for _ in range(warm):
            step()
        before = [rss(p) for p in pids]
        for _ in range(timed):
            step()
        after = [rss(p) for p in pids]
        kept = [h.kept_values for h in c.health()]
        assert max(kept) <= 3, f"parties keep {kept} values after {warm + timed} jobs"
        growth = [a - b for a, b in zip(after, before)]
        assert max(growth) <= bound, f"party resident memory grew by {[g >> 20 for g in growth]} MB over {timed} jobs"
        assert len(c._builder.nodes) <= 4
        c.collect()
        assert [h.kept_values for h in c.health()] == [0, 0, 0]


def test_an_in_place_op_moves_the_reference_to_the_new_node():
    c = InMemoryCluster(3)
    x = c.share(rand(4), 0)
    x.reveal()
    x.add_(1.0)  # x now refers to a new node, which still needs the old value
    c.collect()
    assert all(len(s.kept) == 1 for s in c.sessions)
    assert_close(x.reveal(), rand(4) + 1, 2 * ULP)
    c.collect()  # the new value is kept now: the old one is unreachable
    assert all(len(s.kept) == 1 for s in c.sessions) and x._node.id in c._available
