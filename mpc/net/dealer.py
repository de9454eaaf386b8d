"""The dealer over gRPC: its service (seeds, then corrections) and each party's link to it.

At start-up each party says hello and receives the 128-bit seed it shares with the
dealer, once per dealer session, with the session's epoch and a commitment to every
party's seed; from those every party derives the same session fingerprint, which the
mesh compares between parties. For a job, party 0 sends the list of correlation specs
(from its dry run) and receives the corrections for all of them as one stream of raw
chunks. The dealer makes them in a worker thread that runs a few frames ahead of the
stream, large elementwise correlations in chunks of elements (protocols/streaming.py),
so that making the next bytes overlaps sending the last; party 0 writes each frame into
the tensors it becomes and expands while the rest arrives (runtime/offline.py). Parties
i > 0 never hear from the dealer again: they expand their parts from the seed.

What the dealer enforces, and why:
- a caller is the party its certificate names (with TLS); a request claiming another is refused;
- a seed is served once per party per session: a second Hello from party K's certificate
  means party K restarted, so the session ends and a new one (new seeds, new epoch) begins,
  which every party must join; without TLS a second Hello is refused (anyone may send it);
- corrections go to party 0 only, once per job id: a replayed id under other specs would
  hand out the same streams again, and corrections of two spec lists over one stream
  reveal the other parties' parts;
- a spec with an empty tensor is refused: a (m x 0) @ (0 x n) triple has c = 0, so its
  correction is minus the other parties' streams;
- a request for another session's epoch is refused: a restarted dealer has new seeds,
  and corrections from them would silently break every product.

Reproducible jobs (runtime/reproducible.py) draw from a second set of seeds derived from the
dealer's long-lived key, the same in every session (with TLS the key is derived from the
dealer's private key, so a restarted dealer has it again): a job that repeats an earlier one
on the same inputs gets the same randomness. Its corrections are keyed by the job's
reproduction key and its spec list together, so one key never streams two spec lists.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading

import grpc

from mpc.net import framing, serde, tls
from mpc.net.mesh import client_channel
from mpc.net.proto import mpc_pb2 as pb
from mpc.prg import new_seed
from mpc.protocols import correlations, holders, streaming
from mpc.runtime import reproducible
from mpc.runtime.transport import DealerLink, PeerFailure

log = logging.getLogger(__name__)

SERVICE = "mpc.net.proto.Dealer"
MAX_JOB_ID = 128
AHEAD = 4  # frames (of 1 MiB) the dealer's worker may have made beyond those sent


def seed_commitment(epoch: bytes, pid: int, seed: bytes) -> bytes:
    return hashlib.sha256(b"mpc-dealer-seed\0" + epoch + pid.to_bytes(4, "little") + seed).digest()


def session_fingerprint(epoch: bytes, commitments: list[bytes]) -> bytes:
    """The same 32 bytes at every party of one dealer session (compared over the mesh)."""
    return hashlib.sha256(b"mpc-dealer-session\0" + epoch + len(commitments).to_bytes(4, "little")
                          + b"".join(commitments)).digest()


class DealerService:
    """Holds one seed per party and turns correlation specs into party 0's corrections.

    `authenticated`: callers are who their TLS certificate says (party-K); without it
    (plaintext on loopback) the pid in the request is taken at its word. `repro_master` is
    the long-lived key of reproducible jobs (fresh if not given: then they reproduce only
    while this process lives)."""

    def __init__(self, n_parties: int, authenticated: bool = True, repro_master: bytes | None = None):
        self.n_parties = n_parties
        self.authenticated = authenticated
        self.bytes_sent = 0
        self._repro_master = repro_master or new_seed()
        self._repro_seeds = [reproducible.long_lived_seed(self._repro_master, p) for p in range(n_parties)]
        self.sessions = 0  # begun since start, and jobs whose corrections were sent: for Health
        self.jobs_served = 0
        self._new_session()

    def _new_session(self) -> None:
        self.epoch = new_seed()  # names this session: a restarted dealer has another
        self.sessions += 1
        self.seeds = [new_seed() for _ in range(self.n_parties)]
        self.commitments = [seed_commitment(self.epoch, p, s) for p, s in enumerate(self.seeds)]
        self._greeted: set[int] = set()
        self._jobs: set[str] = set()

    async def _caller(self, context, claimed: int, method: str) -> int:
        """The calling party's id, from its certificate; a request claiming another is refused."""
        if not self.authenticated:
            return claimed
        identity = tls.peer_identity(context)
        pid = tls.party_id(identity)
        if pid is None or pid >= self.n_parties:
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED,
                               f"{method} from {identity or 'an unidentified peer'}: not a party of this cluster")
        if claimed != pid:
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED,
                               f"{method}: certificate {identity} claims to be party {claimed}")
        return pid

    async def _refuse(self, context, code: grpc.StatusCode, why: str) -> None:
        message = f"dealer refused {why}"
        log.warning("%s", message)
        await context.abort(code, message)

    async def hello(self, request: pb.DealerHello, context) -> pb.DealerSeed:
        pid = await self._caller(context, request.pid, "Hello")
        if request.n_parties != self.n_parties or pid >= self.n_parties:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT,
                               f"Hello: dealer serves {self.n_parties} parties; party {pid} of "
                               f"{request.n_parties} said hello")
        if pid in self._greeted and not self.authenticated:
            await self._refuse(context, grpc.StatusCode.ALREADY_EXISTS,
                               f"Hello from party {pid}: party {pid} already received its seed in session "
                               f"{self.epoch.hex()[:8]}; a seed is served once")
        if pid in self._greeted:
            # Party K (its certificate says so) starts again: it restarted, and so must its
            # cluster. A seed is still never served twice: the session ends, every seed is
            # new, and parties of the old session are refused from here on (their epoch).
            old = self.epoch.hex()[:8]
            self._new_session()
            log.warning("party %d said hello again: session %s ended, session %s begins (every party must join "
                        "it)", pid, old, self.epoch.hex()[:8])
        self._greeted.add(pid)
        log.info("seed sent to party %d (session %s)", pid, self.epoch.hex()[:8])
        pairs = [b"" if p == pid else reproducible.long_lived_pair(self._repro_master, pid, p)
                 for p in range(self.n_parties)]
        return pb.DealerSeed(seed=self.seeds[pid], epoch=self.epoch, commitments=self.commitments,
                             repro_seed=self._repro_seeds[pid], repro_pairs=pairs,
                             repro_commitment=reproducible.master_commitment(self._repro_master))

    async def correlations(self, request: pb.CorrelationRequest, context):
        pid = await self._caller(context, request.pid, "Correlations")
        job = request.job_id
        if pid != 0:
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED,
                               f"Correlations to party {pid}: only party 0 receives corrections")
        if request.epoch != self.epoch:
            await self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION,
                               f"Correlations for job {job!r} in session {request.epoch.hex()[:8] or '(none)'}: "
                               f"this dealer's session is {self.epoch.hex()[:8]} (the dealer restarted, or a party "
                               f"restarted and began a new session: the seeds the parties hold are gone)")
        if not 0 < len(job) <= MAX_JOB_ID:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT,
                               f"Correlations: a job id of {len(job)} characters (1 to {MAX_JOB_ID})")
        if job in self._jobs:
            await self._refuse(context, grpc.StatusCode.ALREADY_EXISTS,
                               f"Correlations for job id {job!r}: already served in this session (a reused id "
                               f"would hand out the same correlations again)")
        try:
            specs = [serde.spec_from_proto(s) for s in request.specs]
            for k, spec in enumerate(specs):
                if any(math.prod(shape) == 0 for shape in spec.shapes):
                    raise ValueError(f"spec {k} ({spec.kind} of shapes {list(spec.shapes)}) has an empty tensor, "
                                     f"whose correction would be minus the other parties' streams")
                if spec.kind in holders.OWNED and not (0 <= spec.param("oa") < self.n_parties
                                                            and 0 <= spec.param("ob") < self.n_parties
                                                            and spec.param("oa") != spec.param("ob")):
                    raise ValueError(f"spec {k} ({spec.kind}) names owners {spec.param('oa')} and "
                                     f"{spec.param('ob')}: two different parties of {self.n_parties} expected")
                holders.check_members(spec, self.n_parties)
            total = sum(correlations.correction_nbytes(s) for s in specs)
            if request.reproduction_key and len(request.reproduction_key) != reproducible.KEY_BYTES:
                raise ValueError(f"a reproduction key of {len(request.reproduction_key)} bytes "
                                 f"({reproducible.KEY_BYTES} expected)")
        except (ValueError, KeyError) as exc:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, f"Correlations for job {job!r}: {exc}")
        self._jobs.add(job)  # before the first byte: a stream cut halfway is still spent
        # this session's seeds, even if a party's new Hello ends it during the stream
        seeds = self._repro_seeds if request.reproduction_key else self.seeds
        label = reproducible.correlation_label(job, request.reproduction_key, specs)

        def frames():  # in the worker: memory stays at a chunk of a correlation and AHEAD frames
            encoder = framing.StreamEncoder(total, job=job)
            for piece in streaming.dealer_stream(seeds, label, specs):
                yield from encoder.feed(piece)
            yield from encoder.finish()
        async for frame in _ahead(frames(), AHEAD):
            yield frame
        self.bytes_sent += total
        self.jobs_served += 1

    @property
    def joined(self) -> int:
        """How many parties hold a seed of this session."""
        return len(self._greeted)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Hello": grpc.unary_unary_rpc_method_handler(
                self.hello, request_deserializer=pb.DealerHello.FromString,
                response_serializer=pb.DealerSeed.SerializeToString),
            "Correlations": grpc.unary_stream_rpc_method_handler(
                self.correlations, request_deserializer=pb.CorrelationRequest.FromString,
                response_serializer=None),
        })


_END = object()


async def _ahead(items, depth: int):
    """The items of a blocking generator, made in a worker thread at most `depth` items
    ahead of the consumer, so that making item k + 1 overlaps sending item k. When the
    consumer goes away (the stream was cancelled or failed) the worker stops after the
    item it is making. A thread of its own, not the event loop's pool: a worker waits for
    room as long as its party 0 does not read, and must not hold up other jobs' streams."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    room = threading.Semaphore(depth)
    stop = threading.Event()

    def post(entry) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, entry)
        except RuntimeError:  # the event loop is closed: nobody is listening
            stop.set()

    def work() -> None:
        try:
            for item in items:
                room.acquire()
                if stop.is_set():
                    return
                post((item, None))
            post((_END, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            post((None, exc))
        finally:
            items.close()

    threading.Thread(target=work, name="dealer-stream", daemon=True).start()
    try:
        while True:
            item, exc = await queue.get()
            if exc is not None:
                raise exc
            if item is _END:
                return
            room.release()
            yield item
    finally:
        stop.set()
        room.release()  # a worker waiting for room wakes up and sees `stop`


class GrpcDealerLink(DealerLink):
    """A party's link: its seed and the session fingerprint from Hello; party 0's corrections.
    `timeout` bounds the wait for each message of the correction stream (the dealer sends
    one at least every correlation, or chunk of one), so a stalled dealer fails the job
    instead of hanging it."""

    def __init__(self, pid: int, n_parties: int, address: str, creds: tls.Credentials | None = None,
                 timeout: float = 120.0):
        super().__init__()
        self.pid, self.n_parties, self.address, self.timeout = pid, n_parties, address, timeout
        self._channel = client_channel(address, creds, tls.DEALER)
        self._seed: bytes | None = None
        self._repro_seed = b""
        self._repro_pairs: list[bytes] = []
        self.epoch = b""
        self.fingerprint = b""

    def _failure(self, detail: str) -> PeerFailure:
        return PeerFailure(f"dealer at {self.address}", detail)

    async def connect(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout  # one deadline for connecting and the Hello together
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
            reply = await self._channel.unary_unary(
                f"/{SERVICE}/Hello", request_serializer=pb.DealerHello.SerializeToString,
                response_deserializer=pb.DealerSeed.FromString)(pb.DealerHello(pid=self.pid, n_parties=self.n_parties),
                                                                timeout=max(0.1, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise self._failure(f"unreachable: no connection within {timeout:.0f} s") from None
        except grpc.aio.AioRpcError as exc:
            raise self._failure(exc.details() or exc.code().name) from None
        # A PeerFailure, like every start-up failure: the party names the dealer and exits 2.
        if len(reply.seed) != 16 or len(reply.epoch) != 16 or len(reply.commitments) != self.n_parties:
            raise self._failure(f"sent a {len(reply.seed)}-byte seed, a {len(reply.epoch)}-byte epoch and "
                                f"{len(reply.commitments)} commitments for {self.n_parties} parties")
        if reply.commitments[self.pid] != seed_commitment(reply.epoch, self.pid, reply.seed):
            raise self._failure("sent a seed that does not match its own commitment to it")
        if len(reply.repro_seed) != 16 or len(reply.repro_pairs) != self.n_parties or len(reply.repro_commitment) != 32 \
                or any(len(k) != (0 if p == self.pid else 16) for p, k in enumerate(reply.repro_pairs)):
            raise self._failure("sent malformed long-lived keys for reproducible jobs")
        self._seed, self.epoch = reply.seed, reply.epoch
        self._repro_seed, self._repro_pairs = reply.repro_seed, list(reply.repro_pairs)
        # The long-lived key's commitment is part of the fingerprint the parties compare: parties
        # whose reproducible randomness would not match never compute together.
        self.fingerprint = session_fingerprint(reply.epoch, [*reply.commitments, reply.repro_commitment])

    @property
    def seed(self) -> bytes:
        if self._seed is None:
            raise RuntimeError("the dealer link is not connected")
        return self._seed

    @property
    def repro_seed(self) -> bytes:
        if not self._repro_seed:
            raise RuntimeError("the dealer link is not connected")
        return self._repro_seed

    def repro_pair(self, peer: int) -> bytes:
        return self._repro_pairs[peer]

    async def _corrections(self, job, specs, nbytes, reproduction_key, into):
        request = pb.CorrelationRequest(job_id=job, pid=self.pid, specs=[serde.spec_to_proto(s) for s in specs],
                                        epoch=self.epoch, reproduction_key=reproduction_key)
        call = self._channel.unary_stream(f"/{SERVICE}/Correlations",
                                          request_serializer=pb.CorrelationRequest.SerializeToString,
                                          response_deserializer=None)(request)
        assembly = None
        try:
            while True:
                try:
                    msg = await asyncio.wait_for(call.read(), self.timeout)
                except asyncio.TimeoutError:
                    raise self._failure(f"sent nothing for {self.timeout:.0f} s during job {job}'s "
                                        f"corrections") from None
                if msg is grpc.aio.EOF:
                    break
                header, payload = framing.decode_frame(msg)
                if assembly is None:
                    if header.total_bytes != nbytes:  # before a byte is written: too much or too little
                        raise self._failure(f"announced {header.total_bytes} correction bytes for job {job}, "
                                            f"expected {nbytes}")
                    assembly = framing.Reassembly(header, payload, into=into)  # frames go where they belong
                if assembly.add(header, payload):
                    return
        except grpc.aio.AioRpcError as exc:
            raise self._failure(exc.details() or exc.code().name) from None
        except framing.FrameError as exc:
            call.cancel()
            raise self._failure(f"sent a bad correction frame for job {job}: {exc}") from None
        except BaseException:  # refused, timed out, or the job was cancelled: the dealer stops too
            call.cancel()
            raise
        raise self._failure(f"stream for job {job} ended early")

    async def close(self) -> None:
        await self._channel.close(grace=0.5)
