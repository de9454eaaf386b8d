"""Attacks on the mesh by a peer that is in, fed to a party's stream handler exactly as gRPC
feeds it (a certified caller, its frames); and a dealer that stalls, over real gRPC."""

import asyncio

import grpc
import pytest

from mpc.net import framing, tls
from mpc.net.proto import mpc_pb2 as pb
from tests.attack import raw_frame


class Refused(Exception):
    def __init__(self, code, details):
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


class PeerContext:
    """What a gRPC handler sees of a caller who holds `identity`'s certificate."""

    def __init__(self, identity):
        self.identity = identity

    def auth_context(self):
        return {"transport_security_type": [b"ssl"], "x509_common_name": [self.identity.encode()],
                "peer_uri": [f"mpc://{self.identity}".encode()]}

    async def abort(self, code, details):
        raise Refused(code, details)


def victim(pid=1, n=3, session=b"S" * 32, **limits):
    """Party `pid`'s mesh, fed directly: its handler runs exactly as it does under gRPC."""
    from mpc.net.mesh import GrpcMesh

    dead = []
    creds = tls.CertificateAuthority.create().issue(f"party-{pid}")
    mesh = GrpcMesh(pid, n, {p: f"host-{p}" for p in range(n)}, creds=creds, session=session,
                    known_job=lambda job: True, on_dead=dead.append, **limits)
    return mesh, dead


async def feed(mesh, identity, frames):
    """One stream from `identity`; returns (replies, the refusal or None)."""
    async def stream():
        for f in frames:
            yield f
    replies = []
    try:
        async for r in mesh.handle_exchange(stream(), PeerContext(identity)):
            replies.append(r)
    except Refused as exc:
        return replies, exc
    return replies, None


def hello_frames(sender, key=b"", session=b"S" * 32):
    return list(framing.encode_frames(session + key, tag=pb.FRAME_HELLO, sender=sender))


def open_frames(sender, rnd, payload=b"\0" * 8, job="j", **kw):
    return list(framing.encode_frames(payload, tag=pb.FRAME_OPEN, job=job, round=rnd, sender=sender, **kw))


def test_hello_from_another_dealer_session_is_refused_naming_the_dealer():
    async def go():
        mesh, dead = victim()
        replies, err = await feed(mesh, "party-0", hello_frames(0, bytes(16), session=b"T" * 32))
        return err, dead
    err, dead = asyncio.run(go())
    assert err is not None and err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "dealer session" in err.details and "party 0" in err.details
    assert dead and "dealer session" in dead[0]  # fatal for the pair: the two cannot compute together


def test_re_hello_on_an_established_pair_is_fatal_and_does_not_revive_the_peer():
    async def go():
        mesh, dead = victim()
        key = bytes(range(16))
        first = asyncio.create_task(feed(mesh, "party-0", hello_frames(0, key) + hello_frames(0, bytes(16))))
        replies, err = await first
        again, err2 = await feed(mesh, "party-0", hello_frames(0, b"\1" * 16))  # a new stream after the pair died
        return mesh, key, err, err2, dead
    mesh, key, err, err2, dead = asyncio.run(go())
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and "second HELLO" in err.details
    assert err2.code == grpc.StatusCode.FAILED_PRECONDITION and "dead" in err2.details
    assert mesh.pairwise_key(0) == key  # never silently replaced
    assert 0 in mesh._dead and "second HELLO" in dead[0]


def test_declared_sizes_are_checked_before_anything_is_allocated():
    allocated = []
    real = framing.Reassembly.__init__

    def spy(self, header, *args, **kw):
        real(self, header, *args, **kw)
        allocated.append(header.total_bytes)

    async def go():
        results = {}
        cases = {
            "over the frame limit": [raw_frame(total=3 << 30, n_chunks=3 << 10)],
            "chunk count": [raw_frame(total=100, n_chunks=1, payload=b"\0" * 10)],
            "over the peer's bytes": open_frames(0, 0, b"\0" * 3000, chunk_bytes=1000),
        }
        for name, frames in cases.items():
            mesh, dead = victim(max_frame_bytes=1 << 30, max_buffered_bytes=2000)
            replies, err = await feed(mesh, "party-0", hello_frames(0, bytes(16)) + frames)
            results[name] = (err, dead)
        return results

    framing.Reassembly.__init__ = spy
    try:
        results = asyncio.run(go())
    finally:
        framing.Reassembly.__init__ = real
    assert allocated == []
    for name, (err, dead) in results.items():
        expected = grpc.StatusCode.INVALID_ARGUMENT if name == "chunk count" else grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err is not None and err.code == expected, name
        assert "party 0" in err.details and dead, name
    assert "limit of 1073741824" in results["over the frame limit"][0].details
    assert "1 chunk" in results["chunk count"][0].details
    assert "2000" in results["over the peer's bytes"][0].details


def test_buffered_rounds_per_peer_are_capped():
    async def go():
        mesh, dead = victim(max_pending_rounds=4)
        frames = hello_frames(0, bytes(16)) + [f for r in range(6) for f in open_frames(0, r)]
        replies, err = await feed(mesh, "party-0", frames)
        return err, dead
    err, dead = asyncio.run(go())
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "4 rounds" in err.details
    assert dead and "4 rounds" in dead[0]


def test_stalled_dealer_stream_fails_within_its_deadline():
    """A dealer that accepts the request and then sends nothing: the job fails, naming it."""
    import time

    from mpc.net.dealer import GrpcDealerLink
    from mpc.protocols import correlations as corr
    from mpc.runtime.transport import PeerFailure

    async def go():
        async def stall(request, context):
            await asyncio.sleep(60)
            yield b""
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("mpc.net.proto.Dealer", {
            "Correlations": grpc.unary_stream_rpc_method_handler(stall)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        link = GrpcDealerLink(0, 3, f"127.0.0.1:{port}", timeout=1.0)
        start = time.monotonic()
        try:
            with pytest.raises(PeerFailure) as info:
                await link.corrections("job", [corr.mul_triple((4,), (4,))], 32)
            return info.value, time.monotonic() - start
        finally:
            await link.close()
            await server.stop(0)
    err, took = asyncio.run(go())
    assert took < 10 and "dealer at 127.0.0.1" in str(err) and "sent nothing for 1 s" in str(err)


def test_a_replayed_round_is_refused_and_allocates_nothing():
    async def go():
        mesh, dead = victim()
        q = asyncio.Queue()

        async def stream():
            while (f := await q.get()) is not None:
                yield f
        replies = []

        async def serve():
            async for r in mesh.handle_exchange(stream(), PeerContext("party-0")):
                replies.append(r)
        task = asyncio.create_task(serve())
        for f in hello_frames(0, bytes(16)) + open_frames(0, 0, b"A" * 8):
            q.put_nowait(f)
        got = await mesh.exchange("j", 0, {}, {0})  # round 0 consumed by the job
        for f in open_frames(0, 0, b"B" * 8):  # the same round again
            q.put_nowait(f)
        await asyncio.sleep(0.1)
        pending = dict(mesh._inbox), dict(mesh._buffered)
        q.put_nowait(None)
        await task
        return bytes(got[0]), replies, pending
    got, replies, (inbox, buffered) = asyncio.run(go())
    assert got == b"A" * 8
    assert len(replies) == 1 and not replies[0].ok and "replayed round 0 of job 'j'" in replies[0].error
    assert inbox == {} and buffered == {}
