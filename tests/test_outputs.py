"""Run's outputs (mpc.net.outputs), with the frames a party sends built in-process: the
caller's sums equal the shares' sums whatever the chunking and interleaving, decode in place
equals decode bit for bit, and a stream with a gap, an overlap, an overrun, a short or
missing output, or anything the job does not give the caller is refused, naming the party
and the output."""

import pytest
import torch

from mpc import ring
from mpc.net import framing, outputs, serde
from mpc.net.proto import mpc_pb2 as pb
from mpc.runtime.jobs import JobOutcome, JobStats

N = 1000  # elements of the output every test reveals (node 0)
SHAPE = (10, 100)


def share(seed, shape=SHAPE):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2**63, 2**63 - 1, shape, generator=g, dtype=torch.int64)


def frames(outcome, chunk_bytes=800):
    return list(outputs.outcome_to_frames(outcome, chunk_bytes))


def receiver(**kw):
    return outputs.JobOutputs(3, {0: SHAPE}, {5: (3,)}, **kw)


def test_shares_are_summed_as_they_come_whatever_the_chunks():
    shares = [share(p) for p in range(3)]
    plain = torch.tensor([1.5, -2.0, 0.25], dtype=torch.float64)
    streams = [frames(JobOutcome(shares={0: shares[0]}, plaintexts={5: plain}, stats=JobStats(rounds=2)), 8000),
               frames(JobOutcome(shares={0: shares[1]}, stats=JobStats(rounds=3)), 1 << 20),
               frames(JobOutcome(shares={0: shares[2]}, stats=JobStats(rounds=4)), 1016)]
    received = receiver()
    done = set()
    for k in range(max(map(len, streams))):  # interleaved, as the parties' streams arrive
        for p, stream in enumerate(streams):
            if k < len(stream) and received.feed(p, stream[k]):
                done.add(p)
    assert done == {0, 1, 2}
    outcomes = received.finish()
    expected = shares[0] + shares[1] + shares[2]  # wraps modulo 2^64
    assert torch.equal(outcomes.totals[0], expected)
    assert torch.equal(outcomes[0].plaintexts[5], plain) and not outcomes[1].plaintexts
    assert [o.stats.rounds for o in outcomes] == [2, 3, 4]
    value = outcomes.value(0, 16)
    assert torch.equal(value, ring.decode(expected, 16))
    again = outcomes.value(0, 16)  # an output listed twice: equal, not the same memory
    assert torch.equal(again, value) and again.data_ptr() != value.data_ptr()


def test_one_party_alone_gives_its_own_share_and_empty_outputs_pass():
    received = outputs.JobOutputs(3, {0: SHAPE, 1: (0, 4)}, {}, parties=[2])
    stream = frames(JobOutcome(shares={0: share(7), 1: torch.empty(0, 4, dtype=torch.int64)}))
    assert [received.feed(2, m) for m in stream] == [False] * (len(stream) - 1) + [True]
    totals = received.finish().totals
    assert torch.equal(totals[0], share(7)) and totals[1].shape == (0, 4)


def _tamper(how):
    """Party 1's stream for the job of receiver(), changed as `how` says."""
    good = JobOutcome(shares={0: share(1)}, stats=JobStats())
    stream = frames(good)  # [description, 10 chunks of 800 bytes, stats]
    if how == "gap":
        return stream[:2] + stream[3:]
    if how == "overlap":
        return stream[:3] + stream[2:]
    if how == "short":
        return stream[:5] + stream[-1:]
    if how == "missing":
        return frames(JobOutcome(stats=JobStats()))
    if how == "unexpected":
        return frames(JobOutcome(shares={0: share(1), 7: share(2, (4,))}, stats=JobStats()))
    if how == "plaintext never opened":
        return frames(JobOutcome(shares={0: share(1)}, plaintexts={6: torch.ones(3, dtype=torch.float64)},
                                 stats=JobStats()))
    if how == "larger":
        return frames(JobOutcome(shares={0: share(1, (10, 101))}, stats=JobStats()))
    if how == "float share":
        return frames(JobOutcome(shares={0: share(1).double()}, stats=JobStats()))
    if how == "twice":
        return stream[:-1] + stream
    if how == "split elements":
        return frames(good, chunk_bytes=12)
    if how == "no description":
        return stream[1:]
    if how == "after stats":
        return stream + stream[1:2]
    if how == "overrun":  # chunks that announce more bytes than the description did
        return stream[:1] + list(framing.encode_frames(share(1).numpy().tobytes() + bytes(8), 800,
                                                       tag=pb.FRAME_OUTPUT, round=0)) + stream[-1:]
    if how == "size unlike shape":
        event = pb.JobEvent(output=pb.OutputInfo(node=0, dtype="int64", shape=list(SHAPE), total_bytes=8 * N + 8))
        return outputs.event_frames(event) + stream[1:]
    if how == "bad tag":
        return list(framing.encode_frames(b"x", tag=pb.FRAME_OPEN)) + stream
    raise AssertionError(how)


@pytest.mark.parametrize("how, why", [
    ("gap", "output node 0 .* chunk 2 arrived where chunk 1 was due"),
    ("overlap", "output node 0 .* chunk 1 arrived where chunk 2 was due"),
    ("short", r"output node 0 \(share, 8000 bytes, 4 chunks in\).* an event before the output's last chunk"),
    ("missing", r"no share of output node\(s\) \[0\]"),
    ("unexpected", "a share of output node 7, which the job never reveals to the caller"),
    ("plaintext never opened", "a plaintext of output node 6, which the job never opens to a party"),
    ("larger", r"a share of output node 0 declared as torch.int64 \(10, 101\); the job's is torch.int64 \(10, 100\)"),
    ("float share", "declared as torch.float64"),
    ("twice", "the share of output node 0 twice"),
    ("split elements", "output node 0 .* a chunk of 12 bytes at byte 0 splits int64 elements"),
    ("no description", "bytes of output node 0, which no description announced"),
    ("after stats", "a frame after the job's stats"),
    ("overrun", "output node 0 .* frame declares 8008 bytes where 8000 are expected"),
    ("size unlike shape", "output node 0 declares 8008 bytes; int64 of shape \\(10, 100\\) is 8000"),
    ("bad tag", "a frame tagged 2, neither an event nor an output's bytes"),
])
def test_a_stream_that_does_not_make_up_the_outputs_is_refused(how, why):
    received = receiver()
    with pytest.raises(outputs.OutputError, match="^party 1 sent outputs that cannot be used .*" + why):
        for msg in _tamper(how):
            received.feed(1, msg)


def test_a_declared_size_over_the_limit_is_refused_before_any_buffer():
    received = outputs.JobOutputs(3, {0: (1 << 20,)}, {}, limit=1 << 20)
    big = pb.JobEvent(output=pb.OutputInfo(node=0, dtype="int64", shape=[1 << 20], total_bytes=8 << 20))
    with pytest.raises(outputs.OutputError, match="party 0 .* output node 0 of 8388608 bytes, over 1048576"):
        received.feed(0, outputs.event_frames(big)[0])
    with pytest.raises(outputs.OutputError, match="party 1 .* frame declares 8388608 bytes, over the limit"):
        received.feed(1, list(framing.encode_frames(bytes(8 << 20), 4 << 20, tag=pb.FRAME_OUTPUT))[0])


def test_a_partys_error_is_passed_on_in_its_own_words_and_an_unfinished_job_is_refused():
    received = receiver()
    with pytest.raises(outputs.OutputError, match="^party 2: round 3 timed out$"):
        received.feed(2, outputs.event_frames(serde.error_event("party 2: round 3 timed out"))[0])
    for msg in frames(JobOutcome(shares={0: share(0)}, stats=JobStats())):
        received.feed(0, msg)
    with pytest.raises(outputs.OutputError, match="party 1 has not sent all its outputs"):
        received.finish()
    assert [e.WhichOneof("event") for e in outputs.events(frames(JobOutcome(shares={0: share(0)})))] == \
        ["output", "stats"]


def test_sum_shares_leaves_the_parties_shares_alone():
    shares = [share(p, (5,)) for p in range(3)]
    kept = [s.clone() for s in shares]
    totals = outputs.sum_shares([JobOutcome(shares={0: s}) for s in shares]).totals
    assert torch.equal(totals[0], kept[0] + kept[1] + kept[2])
    assert all(torch.equal(a, b) for a, b in zip(shares, kept))


@pytest.mark.parametrize("frac_bits", [16, 32, 0])
def test_decode_in_place_is_decode_bit_for_bit(frac_bits):
    x = torch.cat([share(3, (199_993,)), torch.tensor([0, 1, -1, 2**63 - 1, -2**63, 2**40, -2**40 - 3])])
    expected = ring.decode(x, frac_bits)
    ptr = x.data_ptr()
    out = ring.decode_(x.reshape(-1, 8), frac_bits)
    assert out.dtype == torch.float64 and out.data_ptr() == ptr
    assert torch.equal(out.reshape(-1), expected)
    with pytest.raises(ValueError, match="contiguous int64"):
        ring.decode_(torch.zeros(4, 4, dtype=torch.int64).t())
