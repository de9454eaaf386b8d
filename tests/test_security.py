"""Attacks, run as an attacker would: real party and dealer processes on loopback, and
this test process as the outsider (no certificate, another CA's, a client's) or as a
party that asks for what is not its own. Each attack must be refused with a gRPC status
that names what and why, and a legitimate job run beside it must still come out right."""

import asyncio
import subprocess
import sys

import grpc
import pytest
import torch

import mpc
from mpc.net import framing, tls
from mpc.net.mesh import CHANNEL_OPTIONS
from mpc.net.proto import mpc_pb2 as pb
from mpc.net.proto import mpc_pb2_grpc as pb_grpc
from tests.conftest import ULP, assert_close

pytestmark = pytest.mark.slow

HELLO = "/mpc.net.proto.Dealer/Hello"
CORRELATIONS = "/mpc.net.proto.Dealer/Correlations"
EXCHANGE = "/mpc.net.proto.Party/Exchange"


@pytest.fixture(scope="module")
def cluster():
    with mpc.LocalCluster(n_parties=3, connect_timeout=20) as c:
        yield c


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def still_works(cluster, seed=0):
    """A legitimate job beside the attack: a product of two parties' inputs, revealed."""
    x, y = rand(5, seed=seed), rand(5, seed=seed + 1)
    assert_close((cluster.share(x, 0) * cluster.share(y, 1)).reveal(), x * y, 4 * ULP, "job beside the attack")


def call(address, fn, creds: tls.Credentials | None = None, expect: str | None = None):
    """Run `await fn(channel)` on a fresh channel: plaintext, or TLS with `creds` dialing `expect`."""
    async def go():
        if creds is None:
            ch = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        else:
            ch = grpc.aio.secure_channel(address, creds.channel_credentials(),
                                         options=CHANNEL_OPTIONS + tls.channel_options(expect))
        async with ch:
            return await fn(ch)
    return asyncio.run(go())


def hello(pid, n=3):
    async def fn(ch):
        return await ch.unary_unary(HELLO, request_serializer=pb.DealerHello.SerializeToString,
                                    response_deserializer=pb.DealerSeed.FromString)(
            pb.DealerHello(pid=pid, n_parties=n), timeout=10)
    return fn


def refused(address, fn, creds=None, expect=None) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        call(address, fn, creds, expect)
    return info.value


def exchange(frames):
    async def fn(ch):
        c = ch.stream_stream(EXCHANGE, request_serializer=None, response_deserializer=pb.ExchangeReply.FromString)(
            iter(frames), timeout=10)
        return [r async for r in c]
    return fn


# -- who may connect at all (mutual TLS) --------------------------------------------------------------


def test_plaintext_outsider_reaches_neither_dealer_nor_parties(cluster):
    err = refused(cluster.config.dealer, hello(1))
    assert err.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails: no handler ever runs
    err = refused(cluster.config.parties[0], exchange(list(framing.encode_frames(b"", tag=pb.FRAME_HELLO,
                                                                                   sender=1))))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    still_works(cluster)


def test_certificate_of_another_ca_is_refused(cluster, tmp_path):
    other = tls.CertificateAuthority.create("mallory CA").issue("party-1")
    err = refused(cluster.config.dealer, hello(1), other, tls.DEALER)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    still_works(cluster)


def test_client_certificate_gets_no_seed_and_no_stream(cluster):
    eve = cluster.ca.issue("client-eve")
    err = refused(cluster.config.dealer, hello(1), eve, tls.DEALER)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "client-eve" in err.details() and "not a party" in err.details()
    err = refused(cluster.config.parties[0], exchange(list(framing.encode_frames(b"", tag=pb.FRAME_HELLO,
                                                                                   sender=2))), eve, "party-0")
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "client-eve" in err.details()
    still_works(cluster)


def test_party_certificate_cannot_claim_another_party(cluster):
    mallory = cluster.ca.issue("party-2")  # a stolen or colluding party-2 key, claiming party 1
    err = refused(cluster.config.dealer, hello(1), mallory, tls.DEALER)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "party-2" in err.details() and "party 1" in err.details()
    err = refused(cluster.config.parties[0], exchange(list(framing.encode_frames(b"", tag=pb.FRAME_HELLO,
                                                                                   sender=1))), mallory, "party-0")
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "party-2" in err.details() and "sender 1" in err.details()
    still_works(cluster)


def test_client_checks_it_reached_the_party_it_dialed(cluster):
    """Dialing party 0's address while expecting party 1 fails: a server is who its certificate says."""
    me = cluster.ca.issue("client-probe")
    health = lambda ch: pb_grpc.PartyStub(ch).Health(pb.HealthRequest(), timeout=10)  # noqa: E731
    assert call(cluster.config.parties[0], health, me, "party-0").pid == 0
    err = refused(cluster.config.parties[0], health, me, "party-1")
    assert err.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("module,args", [
    ("parties.dealer", ["--listen", "0.0.0.0:0", "--n-parties", "2", "--insecure"]),
    ("parties.party", ["--pid", "0", "--listen", "127.0.0.1:0", "--config", "-", "--insecure"]),
])
def test_plaintext_off_loopback_is_refused_at_start(module, args):
    config = ('n_parties = 2\n[dealer]\naddress = "127.0.0.1:9"\n[[parties]]\npid = 0\naddress = "127.0.0.1:0"\n'
              '[[parties]]\npid = 1\naddress = "10.9.8.7:5000"\n')
    proc = subprocess.run([sys.executable, "-m", module, *args], input=config, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "plaintext refused" in proc.stderr and "only loopback" in proc.stderr, proc.stderr
    assert ("0.0.0.0:0" if module == "parties.dealer" else "party 1 at 10.9.8.7:5000") in proc.stderr


def test_processes_without_certificates_or_insecure_flag_do_not_start():
    proc = subprocess.run([sys.executable, "-m", "parties.dealer", "--n-parties", "2"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "--certs" in proc.stderr and "--insecure" in proc.stderr, proc.stderr


def test_plaintext_cluster_on_loopback_only_when_asked():
    x = rand(4)
    with mpc.LocalCluster(n_parties=2, tls=False) as c:
        assert_close((c.share(x, 0) * 2).reveal(), x * 2, ULP)
        assert c.ca is None


# -- the dealer: its own seed once, corrections to party 0 once per job ----------------------------------


@pytest.fixture
def dealer(tmp_path):
    """A dealer process on its own, with a CA whose every certificate this test holds."""
    from mpc.launcher import _Process

    tls.make_cluster_certs(tmp_path, 3, clients=("eve",))
    proc = _Process("dealer", [sys.executable, "-m", "parties.dealer", "--listen", "127.0.0.1:0", "--n-parties", "3",
                               "--certs", str(tmp_path)], dict(__import__("os").environ))
    try:
        port = proc.expect("LISTENING", __import__("time").monotonic() + 60)
        yield f"127.0.0.1:{port}", {i: tls.Credentials.load(tmp_path, i) for i in
                                    ["party-0", "party-1", "party-2", "client-eve"]}
    finally:
        proc.stop(5)


def correlations(job, specs, epoch=b""):
    from mpc.net import serde

    async def fn(ch):
        request = pb.CorrelationRequest(job_id=job, pid=0, specs=[serde.spec_to_proto(s) for s in specs], epoch=epoch)
        c = ch.unary_stream(CORRELATIONS, request_serializer=pb.CorrelationRequest.SerializeToString,
                            response_deserializer=None)(request, timeout=10)
        part = None
        async for msg in c:
            header, payload = framing.decode_frame(msg)
            part = part or framing.Reassembly(header)
            if part.add(header, payload):
                return bytes(part.buffer)
    return fn


def test_each_party_gets_its_own_seed_once_with_a_checkable_fingerprint(dealer):
    from mpc.net.dealer import session_fingerprint, seed_commitment

    address, creds = dealer
    replies = {p: call(address, hello(p), creds[f"party-{p}"], tls.DEALER) for p in range(3)}
    epochs = {r.epoch for r in replies.values()}
    assert len(epochs) == 1 and len(epochs.pop()) == 16
    for p, r in replies.items():
        assert r.commitments == replies[0].commitments  # every party sees the same session
        assert r.commitments[p] == seed_commitment(r.epoch, p, r.seed) and len(r.seed) == 16
    assert len({r.seed for r in replies.values()}) == 3
    assert len({session_fingerprint(r.epoch, list(r.commitments)) for r in replies.values()}) == 1
    err = refused(address, hello(1), creds["party-1"], tls.DEALER)  # a second Hello, e.g. with a stolen key
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "party 1 already received its seed" in err.details()


def test_corrections_go_to_party_0_only_once_per_job(dealer):
    from mpc.protocols import correlations as corr

    address, creds = dealer
    epoch = call(address, hello(0), creds["party-0"], tls.DEALER).epoch
    specs = [corr.mul_triple((4,), (4,))]
    for who in ["party-1", "client-eve"]:
        err = refused(address, correlations("job-a", specs, epoch), creds[who], tls.DEALER)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, who
    assert len(call(address, correlations("job-a", specs, epoch), creds["party-0"], tls.DEALER)) == 32
    err = refused(address, correlations("job-a", [corr.matmul_triple((2, 3), (3, 2))], epoch), creds["party-0"],
                  tls.DEALER)  # a replayed job id would hand out the same streams again, under other shapes
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS and "job id 'job-a'" in err.details()
    err = refused(address, correlations("job-b", specs, b"\0" * 16), creds["party-0"], tls.DEALER)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "session" in err.details()


@pytest.mark.parametrize("spec", [("matmul", (2, 0), (0, 3)), ("conv2d", (1, 0, 4, 4), (2, 0, 3, 3))])
def test_degenerate_spec_does_not_leak_other_parties_streams(dealer, spec):
    """(2x0) @ (0x3) has c = 0, so its correction would be minus the other parties' c streams."""
    from mpc.protocols import correlations as corr

    address, creds = dealer
    epoch = call(address, hello(0), creds["party-0"], tls.DEALER).epoch
    kind, a, b = spec
    s = corr.matmul_triple(a, b) if kind == "matmul" else corr.conv2d_triple(a, b, (1, 1), (0, 0), (1, 1), 1)
    err = refused(address, correlations("job-d", [corr.mul_triple((2,), (2,)), s], epoch), creds["party-0"],
                  tls.DEALER)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec 1" in err.details() and "empty" in err.details()


def test_restarted_dealer_fails_the_job_naming_the_dealer():
    from mpc.launcher import _Process

    x = rand(6)
    with mpc.LocalCluster(n_parties=3, round_timeout=20) as c:
        assert_close((c.share(x, 0) * c.share(x, 1)).reveal(), x * x, 4 * ULP)
        old = c.processes[0]
        old.stop(5)
        new = _Process("dealer again", [sys.executable, "-m", "parties.dealer", "--listen", c.config.dealer,
                                        "--n-parties", "3", "--certs", c.certs_dir.name],
                       dict(__import__("os").environ))
        c.processes.append(new)
        new.expect("LISTENING", __import__("time").monotonic() + 60)
        with pytest.raises(mpc.MPCError, match="dealer") as info:
            (c.share(x, 0) * c.share(x, 1)).reveal()
        assert "restarted" in str(info.value)


# -- the mesh: who a stream is from, and what a frame may make a party allocate ------------------------------


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
    from mpc.net import mesh as mesh_module

    allocated = []
    real = framing.Reassembly.__init__

    def spy(self, header, *args, **kw):
        real(self, header, *args, **kw)
        allocated.append(header.total_bytes)

    async def go():
        results = {}
        cases = {
            "over the frame limit": open_frames(0, 0, b"\0" * 8)[:0] + [_frame(total=3 << 30, n_chunks=3 << 10)],
            "chunk count": [_frame(total=100, n_chunks=1, payload=b"\0" * 10)],
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
    assert mesh_module  # the limits live in the mesh


def _frame(total, n_chunks, payload=b"", chunk=0, sender=0):
    hdr = pb.FrameHeader(tag=pb.FRAME_OPEN, job="j", round=0, sender=sender, chunk=chunk, n_chunks=n_chunks,
                         total_bytes=total).SerializeToString()
    return len(hdr).to_bytes(4, "little") + hdr + payload


def test_buffered_rounds_per_peer_are_capped():
    async def go():
        mesh, dead = victim(max_pending_rounds=4)
        frames = hello_frames(0, bytes(16)) + [f for r in range(6) for f in open_frames(0, r)]
        replies, err = await feed(mesh, "party-0", frames)
        return err, dead
    err, dead = asyncio.run(go())
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "4 rounds" in err.details
    assert dead and "4 rounds" in dead[0]


def test_oversized_and_truncated_frames_get_a_status_while_a_job_runs_beside(cluster):
    """With party 2's key (stolen), an extra stream to party 0 opens with bad frames: refused
    with a status, and party 2's real stream and the jobs on it are untouched."""
    mallory = cluster.ca.issue("party-2")
    cases = [([_frame(total=8 << 30, n_chunks=1, sender=2)], grpc.StatusCode.RESOURCE_EXHAUSTED, "limit"),
             ([_frame(total=8 << 30, n_chunks=8192, payload=b"\0" * 18, sender=2)],
              grpc.StatusCode.RESOURCE_EXHAUSTED, "limit"),
             ([b"\x05\x00\x00\x00ab"], grpc.StatusCode.INVALID_ARGUMENT, "header length"),
             ([b"\x01\x00"], grpc.StatusCode.INVALID_ARGUMENT, "shorter than its length prefix")]
    for frames, code, words in cases:
        err = refused(cluster.config.parties[0], exchange(frames), mallory, "party-0")
        assert err.code() == code and words in err.details() and "party 0" in err.details(), err.details()
    still_works(cluster)


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
