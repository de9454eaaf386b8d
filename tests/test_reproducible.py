"""Reproducible jobs (runtime/reproducible.py): the same job on the same inputs draws the same
randomness and sends the same bytes; any other input draws fresh randomness; a training
resumed from checkpoints ends bit for bit where the uninterrupted one ends.

Over the in-memory transport, with every party's sent messages recorded: "the same
randomness" is checked on the wire, not inferred from the results."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import torch

from mpc import ring
from mpc.api import InMemoryCluster
from mpc.ir import TO_CALLER, Job, Node, Program
from mpc.net.memory import MemoryNetwork, MemoryTransport
from mpc.runtime import checkpoint, reproducible
from mpc.runtime.session import KEY_ROUND, READY_ROUND, PartySession

N = 64


class Recording(MemoryTransport):
    """A party's transport that keeps what it sends in a job's program rounds."""

    def __init__(self, net, pid):
        super().__init__(net, pid)
        self.sent: dict[str, list] = {}

    async def _exchange(self, job, round_no, outgoing, incoming):
        if round_no not in (KEY_ROUND, READY_ROUND):  # the barrier names the job id: not randomness
            self.sent.setdefault(job, []).append(
                (round_no, {p: bytes(memoryview(v).cast("B")) for p, v in outgoing.items()}))
        return await super()._exchange(job, round_no, outgoing, incoming)


def _sessions(n=3):
    net = MemoryNetwork(n)
    return [PartySession(Recording(net, p), net.dealer(p), input_salt=bytes([p]) * 16) for p in range(n)]


# x times y, truncated. Owned by party 0 both (OWNERS): input masks, a Beaver product and a
# truncation among all; by parties 0 and 1 (OWNED): an owned product, c and the truncation held
# by the two owners alone (compiler/owned.py), party 2 silent
OWNERS, OWNED = (0, 0), (0, 1)
PROGRAM = Program((Node(0, "input", (), {"shape": (N,), "kind": "private"}, (N,), "x"),
                   Node(1, "input", (), {"shape": (N,), "kind": "private"}, (N,), "y"),
                   Node(2, "mul", (0, 1), {}, (N,), "x*y")), (2,))


def _run(sessions, x, y, reproducible_job=True, owners=OWNERS):
    job = Job(uuid.uuid4().hex, PROGRAM.digest, owners={0: owners[0], 1: owners[1]}, recipients=(TO_CALLER,),
              reproducible=reproducible_job)
    inputs = [{}, {}, {}]
    inputs[owners[0]][0], inputs[owners[1]][1] = x, y

    async def go():
        for p, s in enumerate(sessions):
            await s.load(PROGRAM)
            await s.submit(job, inputs[p])
        return await asyncio.gather(*(s.run(job.job_id) for s in sessions))

    outcomes = asyncio.run(go())
    value = ring.decode(sum(o.shares[2] for o in outcomes), PROGRAM.frac_bits)
    return value, [s.transport.sent[job.job_id] for s in sessions]


def _xy(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, generator=g, dtype=torch.float64) * 3, torch.randn(N, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("owners", [OWNERS, OWNED])
def test_a_repeated_job_sends_the_same_bytes_and_rounds_the_same(owners):
    sessions = _sessions()
    x, y = _xy(0)
    first, sent_first = _run(sessions, x, y, owners=owners)
    again, sent_again = _run(sessions, x, y, owners=owners)
    assert torch.equal(first, again)  # the truncation's stochastic rounding repeated exactly
    assert sent_first == sent_again  # every party's every message: the same masks on the same values
    assert (first - x * y).abs().max() < 4 * 2.0 ** -16


@pytest.mark.parametrize("owners", [OWNERS, OWNED])
def test_a_job_that_is_not_reproducible_draws_fresh_masks(owners):
    sessions = _sessions()
    x, y = _xy(0)
    _, sent_first = _run(sessions, x, y, reproducible_job=False, owners=owners)
    _, sent_again = _run(sessions, x, y, reproducible_job=False, owners=owners)
    senders = [p for p in range(3) if any(messages for _, messages in sent_first[p])]
    assert len(senders) == (3 if owners == OWNERS else 2)  # (an owned product: party 2 sends nothing)
    assert all(sent_first[p] != sent_again[p] for p in senders)


def test_other_inputs_draw_fresh_masks_so_nothing_is_reused():
    """If party 0's new x reused the masks of the first job, party 2 (which owns nothing) would
    send exactly what it sent before, and the opened values would differ by exactly the
    change in x: the change would be revealed. Its messages must all differ instead."""
    sessions = _sessions()
    x, y = _xy(0)
    _, sent_first = _run(sessions, x, y)
    x2 = x.clone()
    x2[0] += 2.0 ** -16  # one unit in the last place, in one element
    value, sent_other = _run(sessions, x2, y)
    # against the product of the inputs as encoded: the truncation's units only (the inputs'
    # own rounding, |x| |dy| + |y| |dx|, can pass 4 units when x and y are large)
    exact = ring.decode(ring.encode(x2, 16), 16) * ring.decode(ring.encode(y, 16), 16)
    assert (value - exact).abs().max() < 3 * 2.0 ** -16
    for p in range(3):
        for (r1, m1), (r2, m2) in zip(sent_first[p], sent_other[p]):
            assert r1 == r2
            for peer in m1:
                assert m1[peer] != m2[peer], f"party {p} sent the same round-{r1} message to {peer} twice"


def test_a_party_contribution_is_keyed_by_its_own_secret():
    """Others see HMAC(salt, plaintext): without the salt they cannot test a guess of it."""
    x = {0: torch.tensor([1, 0, 1], dtype=torch.int64)}
    a = reproducible.contribution(b"a" * 16, x, {})
    assert a == reproducible.contribution(b"a" * 16, {0: x[0].clone()}, {})
    assert a != reproducible.contribution(b"b" * 16, x, {})
    assert a != reproducible.contribution(b"a" * 16, {0: torch.tensor([1, 1, 1])}, {})


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(120, 6, generator=g, dtype=torch.float64)
    return x, (x[:, 0] + x[:, 1] > 0).long()


def _model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


@pytest.mark.parametrize("n_parties", [2, 3])
def test_training_resumed_from_checkpoints_ends_bit_for_bit_where_the_uninterrupted_run_ends(tmp_path, n_parties):
    x, y = _data()
    c = InMemoryCluster(n_parties)
    rows = torch.arange(len(x)).chunk(n_parties)
    data = c.share_data({p: (x[r], y[r]) for p, r in enumerate(rows)}, n_classes=2)
    kw = dict(epochs=2, batch_size=20, steps_per_job=2)
    straight = c.reveal_model(c.train(_model(), data, **kw))

    part = c.train(_model(), data, stop_after=4, **kw)
    for p, s in enumerate(c.sessions):  # each party writes its shares and their tags, and drops them
        s.save_checkpoint(str(tmp_path / f"party-{p}"), part.steps, "job", part.handles)
        s.free(part.handles.values())
        s.kept.pop(data.x_handle), s.kept.pop(data.y_handle)
    # The data shared again, as a resumed run does: the same rows give the very same shares.
    data = c.share_data({p: (x[r], y[r]) for p, r in enumerate(rows)}, n_classes=2)
    for p, s in enumerate(c.sessions):
        s.load_checkpoint(str(tmp_path / f"party-{p}"), part.steps, "job", part.handles)
    resumed = c.reveal_model(c.train(_model(), data, resume=(part.steps, part.handles), **kw))
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), (k, (straight[k] - resumed[k]).abs().max().item())


def test_a_checkpoint_records_the_tags_of_its_values(tmp_path):
    t = torch.arange(6, dtype=torch.int64).reshape(2, 3)
    path = checkpoint.write(str(tmp_path), 3, "job", 1, {"w": t}, tags={"w": b"\x07" * 32})
    values, tags = checkpoint.read(path, "job", 1, 3, with_tags=True)
    assert torch.equal(values["w"], t) and tags == {"w": b"\x07" * 32}
