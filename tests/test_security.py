"""Attacks, run as an attacker would: real party and dealer processes on loopback, and
this test process as the outsider (no certificate, another CA's, a client's) or as a
party that asks for what is not its own. Each attack must be refused with a gRPC status
that names what and why, and a legitimate job run beside it must still come out right."""

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time

import grpc
import pytest

import mpc
from mpc.launcher import _Process
from mpc.net import framing, serde, tls
from mpc.net.config import ClusterConfig
from mpc.net.dealer import GrpcDealerLink, seed_commitment, session_fingerprint
from mpc.net.mesh import EXCHANGE_METHOD, client_channel
from mpc.net.proto import mpc_pb2 as pb
from mpc.net.proto import mpc_pb2_grpc as pb_grpc
from mpc.protocols import correlations as corr
from tests.attack import CORRELATIONS, call, exchange, hello, rand, raw_frame, refused, still_works
from tests.conftest import ULP, assert_close

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    with mpc.LocalCluster(n_parties=3, connect_timeout=20) as c:
        yield c


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
    me = cluster._client_creds  # a client of this cluster (Health answers the cluster only)
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


def test_stolen_party_keys_get_no_corrections_of_a_running_clusters_dealer(cluster):
    """Corrections are served only for the dealer's current session, to party 0. (A second
    Hello never gets the running session's seed: see the next tests.)"""
    err = refused(cluster.config.dealer, correlations("job-x", [corr.mul_triple((4,), (4,))], bytes(16)),
                  cluster.ca.issue("party-0"), tls.DEALER)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    still_works(cluster)


@pytest.fixture
def dealer(tmp_path):
    """A dealer process on its own, with a CA whose every certificate this test holds."""
    tls.make_cluster_certs(tmp_path, 3, clients=("eve",))
    proc = _Process("dealer", [sys.executable, "-m", "parties.dealer", "--listen", "127.0.0.1:0", "--n-parties", "3",
                               "--certs", str(tmp_path)], dict(os.environ))
    try:
        port = proc.expect("LISTENING", time.monotonic() + 60)
        yield f"127.0.0.1:{port}", {i: tls.Credentials.load(tmp_path, i) for i in
                                    ["party-0", "party-1", "party-2", "client-eve"]}
    finally:
        proc.stop(5)


def correlations(job, specs, epoch=b""):
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
    address, creds = dealer
    replies = {p: call(address, hello(p), creds[f"party-{p}"], tls.DEALER) for p in range(3)}
    epochs = {r.epoch for r in replies.values()}
    assert len(epochs) == 1 and len(epochs.pop()) == 16
    for p, r in replies.items():
        assert r.commitments == replies[0].commitments  # every party sees the same session
        assert r.commitments[p] == seed_commitment(r.epoch, p, r.seed) and len(r.seed) == 16
    assert len({r.seed for r in replies.values()}) == 3
    assert len({session_fingerprint(r.epoch, list(r.commitments)) for r in replies.values()}) == 1
    # A second Hello from party 1's certificate (a restarted party, or a stolen key): never
    # the seed it had. The session ends; every seed and the epoch are new, so parties
    # holding the old seeds cannot compute with anyone of the new session, and the old
    # session's corrections are refused.
    again = call(address, hello(1), creds["party-1"], tls.DEALER)
    assert again.epoch != replies[1].epoch and again.seed != replies[1].seed
    assert not set(again.commitments) & set(replies[0].commitments)
    err = refused(address, correlations("old-session-job", [corr.mul_triple((4,), (4,))], replies[0].epoch),
                  creds["party-0"], tls.DEALER)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "a party restarted" in err.details()
    fresh = call(address, hello(0), creds["party-0"], tls.DEALER)  # the others join the new session
    assert fresh.epoch == again.epoch and fresh.commitments == again.commitments


def test_corrections_go_to_party_0_only_once_per_job(dealer):
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
    address, creds = dealer
    epoch = call(address, hello(0), creds["party-0"], tls.DEALER).epoch
    kind, a, b = spec
    s = corr.matmul_triple(a, b) if kind == "matmul" else corr.conv2d_triple(a, b, (1, 1), (0, 0), (1, 1), 1)
    err = refused(address, correlations("job-d", [corr.mul_triple((2,), (2,)), s], epoch), creds["party-0"],
                  tls.DEALER)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec 1" in err.details() and "empty" in err.details()


@pytest.mark.parametrize("owners", [(0, 3), (1, 1), (-1, 2)])
def test_owned_triple_of_owners_outside_the_cluster_is_refused(dealer, owners):
    """An owner outside the cluster would fail the dealer's stream halfway; the request is refused."""
    from mpc.protocols.base import Spec

    address, creds = dealer
    epoch = call(address, hello(0), creds["party-0"], tls.DEALER).epoch
    s = Spec("omul", ((4,), (4,)), (("oa", owners[0]), ("ob", owners[1])))
    err = refused(address, correlations(f"job-o{owners[0]}{owners[1]}", [s], epoch), creds["party-0"], tls.DEALER)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "two different parties of 3" in err.details()
    assert len(call(address, correlations("job-o-ok", [corr.owned_mul_triple((4,), (4,), 1, 2)], epoch),
                    creds["party-0"], tls.DEALER)) == 32


@pytest.mark.parametrize("params, why", [
    ((("f", 16), ("m", 0b110), ("n", 2)), "party 0 among them"),  # party 0 must take the corrections
    ((("f", 16), ("m", 0b1001), ("n", 2)), "parties of 3"),  # a party outside the cluster
    ((("f", 16), ("m", 0b011), ("n", 3)), "trunc for 3 parties held by 2"),
    ((("m", 0b101), ("oa", 0), ("ob", 1)), "omul of owners 0 and 1 held by mask 5"),
    ((("m", 0b011),), "mul held by some parties only"),  # only a truncation or an owned triple
])
def test_a_correlation_held_by_the_wrong_parties_is_refused(dealer, params, why):
    """A member mask (holders.is_member) that the dealer cannot serve is refused, named."""
    from mpc.protocols.base import Spec

    address, creds = dealer
    epoch = call(address, hello(0), creds["party-0"], tls.DEALER).epoch
    kind = "omul" if ("oa", 0) in params else "trunc" if ("f", 16) in params else "mul"
    s = Spec(kind, ((4,),) * (1 if kind == "trunc" else 2), params)
    err = refused(address, correlations("job-m" + "-".join(f"{k}{v}" for k, v in params), [s], epoch), creds["party-0"],
                  tls.DEALER)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert why in err.details()


def test_restarted_dealer_fails_the_job_naming_the_dealer():
    x = rand(6)
    with mpc.LocalCluster(n_parties=3, round_timeout=20) as c:
        assert_close((c.share(x, 0) * c.share(x, 1)).reveal(), x * x, 4 * ULP)
        old = c.processes[0]
        old.stop(5)
        new = _Process("dealer again", [sys.executable, "-m", "parties.dealer", "--listen", c.config.dealer,
                                        "--n-parties", "3", "--certs", c.certs_dir.name],
                       dict(os.environ))
        c.processes.append(new)
        new.expect("LISTENING", time.monotonic() + 60)
        with pytest.raises(mpc.MPCError, match="dealer") as info:
            (c.share(x, 0) * c.share(x, 1)).reveal()
        assert "restarted" in str(info.value)


def test_oversized_and_truncated_frames_get_a_status_while_a_job_runs_beside(cluster):
    """With party 2's key (stolen), an extra stream to party 0 opens with bad frames: refused
    with a status, and party 2's real stream and the jobs on it are untouched."""
    mallory = cluster.ca.issue("party-2")
    cases = [([raw_frame(total=8 << 30, n_chunks=1, sender=2)], grpc.StatusCode.RESOURCE_EXHAUSTED, "limit"),
             ([raw_frame(total=8 << 30, n_chunks=8192, payload=b"\0" * 18, sender=2)],
              grpc.StatusCode.RESOURCE_EXHAUSTED, "limit"),
             ([b"\x05\x00\x00\x00ab"], grpc.StatusCode.INVALID_ARGUMENT, "header length"),
             ([b"\x01\x00"], grpc.StatusCode.INVALID_ARGUMENT, "shorter than its length prefix")]
    for frames, code, words in cases:
        err = refused(cluster.config.parties[0], exchange(frames), mallory, "party-0")
        assert err.code() == code and words in err.details() and "party 0" in err.details(), err.details()
    still_works(cluster)


# -- a party that is in, misbehaving: a real cluster whose party 2 is this test ---------------------------------


class FakeParty:
    """Party 2 of a real 3-party cluster, played by this test: it says hello to the dealer
    and to parties 0 and 1 as an honest party would, then sends what it likes."""

    def __init__(self, certs):
        self.creds = tls.Credentials.load(certs, "party-2")
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.queues, self.calls, self.channels = {}, {}, []
        self.port = self.run(self._serve())

    def run(self, coro, timeout=60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _serve(self):
        async def drain(requests, context):  # accept the parties' streams, answer nothing
            async for _ in requests:
                pass
            return
            yield
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("mpc.net.proto.Party", {
            "Exchange": grpc.stream_stream_rpc_method_handler(drain)}),))
        port = self.server.add_secure_port("127.0.0.1:0", self.creds.server_credentials())
        await self.server.start()
        return port

    async def _join(self, dealer, parties, session=None):
        link = GrpcDealerLink(2, 3, dealer, self.creds)
        await link.connect(30)
        await link.close()
        self.fingerprint = session or link.fingerprint
        for p, address in parties.items():
            ch = client_channel(address, self.creds, tls.party_name(p))
            self.channels.append(ch)
            q = self.queues[p] = asyncio.Queue()

            async def frames(q=q):
                while (item := await q.get()) is not None:
                    yield item
            self.calls[p] = ch.stream_stream(EXCHANGE_METHOD, request_serializer=None,
                                             response_deserializer=pb.ExchangeReply.FromString)(frames())
            self.send(p, list(framing.encode_frames(self.fingerprint, tag=pb.FRAME_HELLO, sender=2)))

    def join(self, dealer, parties, session=None):
        self.run(self._join(dealer, parties, session))

    def send(self, p, frames):
        for f in frames:
            self.loop.call_soon_threadsafe(self.queues[p].put_nowait, f)

    def status(self, p):
        async def wait():
            try:
                async for _ in self.calls[p]:
                    pass
            except grpc.aio.AioRpcError as exc:
                return exc.code(), exc.details()
            return grpc.StatusCode.OK, ""
        return self.run(wait())

    def stop(self):
        async def close():
            for p, q in self.queues.items():
                q.put_nowait(None)
                self.calls[p].cancel()
            for ch in self.channels:
                await ch.close()
            await self.server.stop(0)
        self.run(close())
        self.loop.call_soon_threadsafe(self.loop.stop)


@contextlib.contextmanager
def cluster_with_fake_party_2(certs, session=None):
    """A dealer and parties 0 and 1 as processes, party 2 played by this test (HELLOs sent)."""
    tls.make_cluster_certs(certs, 3)
    env = dict(os.environ)
    procs = [_Process("dealer", [sys.executable, "-m", "parties.dealer", "--listen", "127.0.0.1:0", "--n-parties", "3",
                                 "--certs", str(certs)], env)]
    fake = FakeParty(certs)
    try:
        deadline = time.monotonic() + 60
        dealer = f"127.0.0.1:{procs[0].expect('LISTENING', deadline)}"
        for p in (0, 1):
            procs.append(_Process(f"party {p}", [sys.executable, "-m", "parties.party", "--pid", str(p), "--listen",
                                                 "127.0.0.1:0", "--config", "-", "--certs", str(certs)], env))
        ports = [proc.expect("LISTENING", deadline) for proc in procs[1:]]
        parties = {0: f"127.0.0.1:{ports[0]}", 1: f"127.0.0.1:{ports[1]}", 2: f"127.0.0.1:{fake.port}"}
        config = ClusterConfig(3, dealer, parties, connect_timeout=20).to_toml()
        for proc in procs[1:]:
            proc.proc.stdin.write(config)
            proc.proc.stdin.close()
        fake.join(dealer, {0: parties[0], 1: parties[1]}, session)
        yield procs, fake
    finally:
        fake.stop()
        for proc in procs:
            proc.stop(5)


def test_re_hello_from_an_established_party_is_fatal_for_the_pair(tmp_path):
    with cluster_with_fake_party_2(tmp_path) as (procs, fake):
        for proc in procs[1:]:
            proc.expect("READY", time.monotonic() + 60)
        # The attack: a second HELLO on party 2's established stream to party 0, with a fresh key.
        fake.send(0, list(framing.encode_frames(fake.fingerprint + bytes(16), tag=pb.FRAME_HELLO, sender=2)))
        code, details = fake.status(0)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "second HELLO from party 2" in details, details
        assert procs[1].proc.wait(timeout=30) == 3  # party 0 stops, naming party 2 and the cause
        assert "party 2" in procs[1].stderr_tail() and "second HELLO" in procs[1].stderr_tail()


def test_party_of_another_dealer_session_is_refused_at_start(tmp_path):
    with cluster_with_fake_party_2(tmp_path, session=bytes(32)) as (procs, fake):
        for proc in procs[1:]:
            assert proc.proc.wait(timeout=60) == 2
            assert "party 2" in proc.stderr_tail() and "dealer session" in proc.stderr_tail()
        code, details = fake.status(0)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "dealer session" in details
