"""The mesh's frame checks, fed directly (no sockets): bad frames are answered, good ones delivered."""

import asyncio

import grpc
import pytest

from mpc.net import framing
from mpc.net.mesh import GrpcMesh, StreamRefused
from mpc.ir import TO_CALLER, Job, Node, Program
from mpc.net.proto import mpc_pb2 as pb
from mpc.runtime.transport import JobAborted


def test_rejects_bad_frames_and_delivers_good_ones():
    async def go():
        mesh = GrpcMesh(1, 3, {0: "a", 2: "b"}, known_job=lambda job: job == "known")
        key = bytes(range(16))
        frames = [*framing.encode_frames(key, tag=pb.FRAME_HELLO, sender=0),
                  *framing.encode_frames(b"\0" * 8, tag=pb.FRAME_OPEN, job="no-such-job", round=0, sender=0),
                  *framing.encode_frames(b"\0" * 8, tag=9, job="known", round=0, sender=0),
                  *framing.encode_frames(b"\0" * 8, tag=pb.FRAME_OPEN, job="known", round=0, sender=2),
                  *framing.encode_frames(bytes(range(24)), chunk_bytes=10, tag=pb.FRAME_OPEN, job="known",
                                         round=4, sender=0),
                  b"\x01\x00"]

        async def stream():
            for f in frames:
                yield f

        replies = []
        with pytest.raises(StreamRefused) as info:  # bytes that are not a frame end the stream
            async for r in mesh.handle_exchange(stream(), None):
                replies.append(r)
        delivered = await asyncio.wait_for(mesh._future(("known", 4, 0)), 1)
        return mesh, replies, delivered, key, info.value

    mesh, replies, delivered, key, refusal = asyncio.run(go())
    errors = [r.error for r in replies]
    assert len(errors) == 3 and all(not r.ok for r in replies)  # well-formed frames of no job: the stream goes on
    assert "unknown job 'no-such-job'" in errors[0]
    assert "unknown frame tag 9" in errors[1]
    assert "claims sender 2 on party 0's stream" in errors[2]
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT and "shorter than its length prefix" in refusal.details
    assert bytes(delivered) == bytes(range(24))  # three chunks reassembled
    assert mesh.pairwise_key(0) == key
    assert mesh.rejected_frames == 3


def test_abort_names_the_root_cause_to_waiting_receives():
    async def go():
        dead = []
        mesh = GrpcMesh(1, 3, {0: "a", 2: "b"}, on_dead=dead.append)
        waiting = mesh._future(("job", 0, 0))
        frames = [*framing.encode_frames(bytes(16), tag=pb.FRAME_HELLO, sender=0),
                  *framing.encode_frames(b"party 2 at b: connection lost", tag=pb.FRAME_ABORT, sender=0)]

        async def stream():
            for f in frames:
                yield f

        replies = [r async for r in mesh.handle_exchange(stream(), None)]
        return replies, waiting, dead

    replies, waiting, dead = asyncio.run(go())
    assert replies == []  # an ABORT is not a bad frame
    assert dead == ["party 0 at a: stopped: party 2 at b: connection lost"]  # not "connection lost" for 0
    assert "party 2 at b" in str(waiting.exception())


def test_reassembly_takes_chunks_in_order_and_covers_the_buffer_exactly():
    frames = [framing.decode_frame(f) for f in framing.encode_frames(bytes(range(25)), chunk_bytes=10,
                                                                      tag=pb.FRAME_OPEN, job="j", sender=0)]
    part = framing.Reassembly(frames[0][0])
    with pytest.raises(framing.FrameError, match="chunk 1 arrived where chunk 0 was due"):
        part.add(*frames[1])
    assert not part.add(*frames[0])
    short = pb.FrameHeader()
    short.CopyFrom(frames[1][0])
    with pytest.raises(framing.FrameError, match="does not fit"):
        part.add(short, frames[1][1][:5])  # a short middle chunk would leave a gap
    assert not part.add(*frames[1]) and part.add(*frames[2])
    assert bytes(part.buffer) == bytes(range(25))


def test_job_abort_fails_that_job_only_and_at_once():
    async def go():
        dead = []
        mesh = GrpcMesh(1, 3, {0: "a", 2: "b"}, on_dead=dead.append, known_job=lambda job: job in ("j1", "j2"))
        waiting, other = mesh._future(("j1", 3, 0)), mesh._future(("j2", 0, 0))
        frames = [*framing.encode_frames(bytes(16), tag=pb.FRAME_HELLO, sender=0),
                  *framing.encode_frames(b"party 0: kept value 7 missing", tag=pb.FRAME_ABORT, job="j1", sender=0),
                  *framing.encode_frames(b"whatever", tag=pb.FRAME_ABORT, job="unknown", sender=0)]

        seen = {}

        async def stream():
            for f in frames:
                yield f
            await asyncio.sleep(0.1)  # the peer is alive, its stream open
            seen["other_done"], seen["dead"] = other.done(), list(dead)
            with pytest.raises(JobAborted) as later:  # a round of the job not yet waited on fails too
                await mesh._exchange("j1", 4, {}, {0})
            seen["later"] = later.value

        replies = [r async for r in mesh.handle_exchange(stream(), None)]
        other.exception()  # failed once the stream ended: retrieved, not our concern here
        return replies, waiting, seen

    replies, waiting, seen = asyncio.run(go())
    assert replies == []
    assert str(waiting.exception()) == "party 0 aborted job j1: party 0: kept value 7 missing"
    assert "aborted job j1" in str(seen["later"])
    assert seen["other_done"] is False and seen["dead"] == []  # the peer and its other jobs go on


def test_a_job_failing_at_one_party_fails_at_every_party_naming_it():
    """Party 1 cannot run the job (its kept value is gone): the others stop waiting for its
    rounds at once and name party 1 and its cause, instead of waiting for a round timeout."""
    import torch

    import mpc
    from mpc.runtime.jobs import JobError

    cluster = mpc.InMemoryCluster(3)
    x = cluster.share(torch.ones(4), 0)
    (x * 1).reveal()
    program = Program((Node(0, "input", (), {"shape": (4,), "kind": "kept"}, (4,), "x"),
                       Node(1, "mul", (0, 0), {}, (4,), "x*x")), (1,))  # a product: a round with party 1
    job = Job("j", program.digest, kept={0: x._node.id}, recipients=(TO_CALLER,))

    async def go():
        for s in cluster.sessions:
            await s.load(program)
            await s.submit(job, {})
        del cluster.sessions[1].kept[x._node.id]
        return await asyncio.wait_for(asyncio.gather(*(s.run("j") for s in cluster.sessions),
                                                     return_exceptions=True), 10)

    results = asyncio.run(go())
    assert isinstance(results[1], JobError) and "party 1 does not hold" in str(results[1])
    for p in (0, 2):
        assert isinstance(results[p], JobAborted), results[p]
        assert str(results[p]).startswith("party 1 aborted job j: party 1: job j reads kept value")
