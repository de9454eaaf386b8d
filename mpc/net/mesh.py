"""The gRPC peer mesh: one outbound Exchange stream to every peer, frames in by the server.

Each party opens a client stream to every peer and sends its frames there; frames from
peers arrive through this party's server handler (`handle_exchange`). Every frame is
labelled (job, round, sender) and matched to the receive waiting for that label, so
order of arrival does not matter. The first frame on a stream says who sends it; for a
pair (i < j), party i also sends the pair's PRG key in it. Frames with an unknown job
or tag are answered with an error and dropped; the stream and other jobs go on.

A party that stops sends ABORT with its reason first, so that its peers report the root
cause (the party that died) rather than the party that stopped because of it.
A peer whose stream breaks is marked dead, and every receive waiting on it fails at once
with a PeerFailure that names it; a receive that waits longer than `round_timeout` fails
the same way.

With TLS (`creds`), a stream's sender is the party named by the client certificate: a
HELLO that claims any other sender, and a stream from a non-party, are refused with
PERMISSION_DENIED before a frame is read. A HELLO also carries the sender's dealer session
fingerprint; parties of different dealer sessions cannot compute together, so a mismatch
is fatal for the pair. A pair is established once: a second HELLO (on the stream or on a
new one) never replaces the key nor revives a dead peer. What a peer can make this party
buffer is bounded (bytes per frame, rounds and bytes per peer) and checked before any
allocation; a stream that breaks a limit, or sends bytes that are not a frame, is ended
with RESOURCE_EXHAUSTED or INVALID_ARGUMENT, and its pair is dead.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import grpc

from mpc.net import framing, tls
from mpc.net.proto import mpc_pb2 as pb
from mpc.prg import new_seed
from mpc.runtime.transport import JobAborted, PeerFailure, RoundTimeout, Transport

log = logging.getLogger(__name__)

EXCHANGE_METHOD = "/mpc.net.proto.Party/Exchange"

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", framing.MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", framing.MAX_MESSAGE_BYTES),
    # Detect a peer that vanished without closing its connection.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # A ping gRPC itself sends (flow control) waits a minute for its ack by default, and a
    # keepalive ping behind it waits as long: a frozen peer (SIGSTOP) went unnoticed for
    # 60-70 s. With this, 5 s after the ping.
    ("grpc.http2.ping_timeout_ms", 5_000),
]


def client_channel(address: str, creds: tls.Credentials | None = None, server: str | None = None) -> grpc.aio.Channel:
    """A channel with the runtime's message limits and keepalive. With `creds`, mutual TLS
    that accepts only the server whose certificate names `server` (e.g. "party-1")."""
    if creds is not None:
        return grpc.aio.secure_channel(address, creds.channel_credentials(),
                                       options=CHANNEL_OPTIONS + tls.channel_options(server))
    tls.require_loopback({"server": address})  # plaintext authenticates nobody: loopback only
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


MAX_FRAME_BYTES = 2 << 30      # one round's payload from one peer
MAX_BUFFERED_BYTES = 4 << 30   # everything one peer has in flight to this party
MAX_PENDING_ROUNDS = 64        # rounds of one peer buffered, not yet consumed


class StreamRefused(Exception):
    """Raised out of handle_exchange when there is no gRPC context to abort (direct feeding)."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


def _from(sender: int | None, certified: int | None) -> str:
    who = sender if sender is not None else certified
    return f"from party {who}: " if who is not None else ""


class GrpcMesh(Transport):
    def __init__(self, pid: int, n_parties: int, addresses: dict[int, str], *,
                 creds: tls.Credentials | None = None,
                 chunk_bytes: int = framing.DEFAULT_CHUNK_BYTES, round_timeout: float = 120.0,
                 known_job: Callable[[str], bool] = lambda job: True,
                 on_dead: Callable[[str], None] = lambda reason: None, session: bytes | None = b"",
                 max_frame_bytes: int = MAX_FRAME_BYTES, max_buffered_bytes: int = MAX_BUFFERED_BYTES,
                 max_pending_rounds: int = MAX_PENDING_ROUNDS):
        """`session`: the dealer session fingerprint sent and checked in HELLOs; None until
        set_session() (the party learns it from the dealer), b"" where there is no dealer."""
        super().__init__(pid, n_parties)
        self.addresses = addresses
        self.creds = creds  # None: plaintext, where a stream's HELLO is taken at its word
        self.chunk_bytes = chunk_bytes
        self.round_timeout = round_timeout
        self.known_job = known_job
        self.on_dead = on_dead
        self._keys: dict[int, bytes] = {p: new_seed() for p in self.peers if self.pid < p}
        self._key_ready: dict[int, asyncio.Event] = {}
        self._queues: dict[int, asyncio.Queue] = {}
        self._calls: dict[int, object] = {}
        self._channels: dict[int, grpc.aio.Channel] = {}
        self._inbox: dict[tuple, asyncio.Future] = {}
        self._partial: dict[tuple, framing.Reassembly] = {}
        self._dead: dict[int, str] = {}
        self._tasks: list[asyncio.Task] = []
        self.rejected_frames = 0
        self._inbound: set[int] = set()
        self._established: set[int] = set()  # a pair is established once, for the mesh's life
        self._buffered: dict[tuple, int] = {}  # (job, round, sender) -> bytes held for it
        self._consumed: set[tuple] = set()  # (job, round, sender) handed to the job already
        self._aborted: dict[str, JobAborted] = {}  # job -> why a peer gave up on it
        self.max_frame_bytes, self.max_buffered_bytes = max_frame_bytes, max_buffered_bytes
        self.max_pending_rounds = max_pending_rounds
        self.connect_timeout = 30.0
        self._session = session
        self._session_ready = asyncio.Event()
        if session is not None:
            self._session_ready.set()

    def set_session(self, fingerprint: bytes) -> None:
        self._session = fingerprint
        self._session_ready.set()

    def describe(self, peer: int) -> str:
        return f"party {peer} at {self.addresses.get(peer, '?')}"

    # -- start-up ------------------------------------------------------------------------------

    async def connect(self, timeout: float) -> None:
        """Open a stream to every peer and learn every pairwise key, or name who is missing.
        One deadline covers it all."""
        if self._session is None:
            raise RuntimeError("set_session() comes before connect()")
        self.connect_timeout = timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for p in self.peers:
            self._key_ready.setdefault(p, asyncio.Event())
        await asyncio.gather(*(self._open(p, timeout) for p in self.peers))
        missing = []
        for p in self.peers:
            try:
                await asyncio.wait_for(self._key_ready[p].wait(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                missing.append(self.describe(p))
            if p in self._dead:
                raise PeerFailure(self.describe(p), self._dead[p])
        if missing:
            raise PeerFailure(", ".join(missing), f"did not open its stream to party {self.pid} within {timeout:.0f} s")

    async def _open(self, peer: int, timeout: float) -> None:
        addr = self.addresses[peer]
        channel = client_channel(addr, self.creds, tls.party_name(peer))
        self._channels[peer] = channel
        try:
            await asyncio.wait_for(channel.channel_ready(), timeout)
        except asyncio.TimeoutError:
            raise PeerFailure(self.describe(peer), f"unreachable: no connection within {timeout:.0f} s") from None
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[peer] = queue
        hello = self._session + (self._keys[peer] if self.pid < peer else b"")
        for frame in framing.encode_frames(hello, tag=pb.FRAME_HELLO, sender=self.pid):
            queue.put_nowait(frame)

        async def frames():
            while True:
                item = await queue.get()
                if item is None:
                    return
                yield item

        call = channel.stream_stream(EXCHANGE_METHOD, request_serializer=None,
                                     response_deserializer=pb.ExchangeReply.FromString)(frames())
        self._calls[peer] = call
        self._tasks.append(asyncio.create_task(self._watch_replies(peer, call)))

    async def _watch_replies(self, peer: int, call) -> None:
        try:
            async for reply in call:
                if not reply.ok:
                    log.warning("party %d rejected a frame from party %d: %s", peer, self.pid, reply.error)
        except grpc.aio.AioRpcError as exc:
            self._mark_dead(peer, f"stream closed ({exc.code().name}: {exc.details()})")
        except asyncio.CancelledError:
            return
        else:
            self._mark_dead(peer, "closed its stream")

    # -- inbound (called by the party's server) ---------------------------------------------------

    async def handle_exchange(self, request_iterator, context):
        sender = None  # set once this stream's HELLO is accepted
        certified = await self._certified_sender(context)
        try:
            async for msg in request_iterator:
                try:
                    header, payload = framing.decode_frame(msg, self.max_frame_bytes)
                    if sender is None:
                        if certified is not None and header.sender != certified:
                            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED,
                                               f"certificate party-{certified} claims sender {header.sender}")
                        await self._wait_session(context)
                        sender = await self._accept_hello(header, payload, certified is not None, context)
                        continue
                    if header.sender != sender:
                        raise framing.FrameError(f"frame claims sender {header.sender} on party {sender}'s stream")
                    if header.tag == pb.FRAME_HELLO:
                        await self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION,
                                           f"second HELLO from party {sender} on an established pair", fatal=sender)
                    if header.tag == pb.FRAME_ABORT and header.job:
                        self._job_aborted(header.job, sender, bytes(payload[:1000]).decode("utf-8", "replace"))
                        continue
                    if header.tag == pb.FRAME_ABORT:
                        # The peer's own cause comes first, so every survivor names the root cause.
                        self._mark_dead(sender, "stopped: " + bytes(payload[:1000]).decode("utf-8", "replace"))
                        continue
                    self._accept_frame(header, payload)
                except framing.FrameTooLarge as exc:
                    await self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                       _from(sender, certified) + str(exc), fatal=sender)
                except framing.FrameMalformed as exc:
                    await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT,
                                       _from(sender, certified) + str(exc), fatal=sender)
                except framing.FrameError as exc:  # a well-formed frame that fits no job: the stream goes on
                    self.rejected_frames += 1
                    log.warning("party %d rejected a frame: %s", self.pid, exc)
                    yield pb.ExchangeReply(ok=False, error=str(exc))
        finally:
            if sender is not None:
                self._inbound.discard(sender)
                self._mark_dead(sender, "connection lost")

    async def _wait_session(self, context) -> None:
        """A peer may say HELLO before this party has its dealer session: wait, with a deadline."""
        if not self._session_ready.is_set():
            try:
                await asyncio.wait_for(self._session_ready.wait(), self.connect_timeout)
            except asyncio.TimeoutError:
                await self._refuse(context, grpc.StatusCode.UNAVAILABLE,
                                   f"party {self.pid} has no dealer session after {self.connect_timeout:.0f} s")

    async def _certified_sender(self, context) -> int | None:
        """The peer's party id from its certificate (None in plaintext); anyone else is refused."""
        if self.creds is None:
            return None
        identity = tls.peer_identity(context)
        pid = tls.party_id(identity)
        if pid is None or pid == self.pid or pid >= self.n_parties:
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED,
                               f"{identity or 'a peer without an identity'} is not a peer of party {self.pid}")
        return pid

    async def _refuse(self, context, code: grpc.StatusCode, why: str, fatal: int | None = None) -> None:
        """End this stream with `code`; with `fatal`, that peer's pair is dead too."""
        message = f"party {self.pid} refused an Exchange stream: {why}"
        log.warning("%s", message)
        if fatal is not None:
            self._mark_dead(fatal, why)
        if context is None:
            raise StreamRefused(code, message)
        await context.abort(code, message)

    async def _accept_hello(self, header, payload, certified: bool, context) -> int:
        """Establish the pair, once. Only a certified sender's misdeeds kill its pair: in
        plaintext anyone may claim any id, so a bad claim is refused without consequence."""
        refuse, code = self._refuse, grpc.StatusCode
        sender = header.sender
        blame = sender if certified else None
        if header.tag != pb.FRAME_HELLO or header.n_chunks != 1:
            await refuse(context, code.INVALID_ARGUMENT, "the first frame of a stream must be one HELLO")
        if sender == self.pid or sender >= self.n_parties:
            await refuse(context, code.PERMISSION_DENIED, f"HELLO from {sender}, not a peer of party {self.pid}")
        if sender in self._dead:
            await refuse(context, code.FAILED_PRECONDITION, f"HELLO from party {sender}, which is dead "
                                                            f"({self._dead[sender]}); a new stream does not revive it")
        if sender in self._established:
            await refuse(context, code.FAILED_PRECONDITION, f"second HELLO from party {sender}: it already has a "
                                                            f"stream open to party {self.pid}", fatal=blame)
        n_key = 16 if sender < self.pid else 0
        if len(payload) != len(self._session) + n_key:
            await refuse(context, code.INVALID_ARGUMENT,
                         f"HELLO from party {sender} of {len(payload)} bytes, not {len(self._session) + n_key}")
        session = bytes(payload[:len(self._session)])
        if session != self._session:
            await refuse(context, code.FAILED_PRECONDITION,
                         f"party {sender} holds dealer session {session.hex()[:8]}, party {self.pid} holds "
                         f"{self._session.hex()[:8]}: not served by the same dealer session (a restarted dealer?)",
                         fatal=blame)
        if n_key:
            self._keys[sender] = bytes(payload[len(self._session):])
        self._established.add(sender)
        self._inbound.add(sender)
        self._key_ready.setdefault(sender, asyncio.Event()).set()
        return sender

    def _accept_frame(self, header, payload) -> None:
        if header.tag != pb.FRAME_OPEN:
            raise framing.FrameError(f"unknown frame tag {header.tag}")
        if not self.known_job(header.job):
            raise framing.FrameError(f"unknown job {header.job!r}")
        key = (header.job, header.round, header.sender)
        part = self._partial.get(key)
        if part is None:
            if key in self._consumed:
                raise framing.FrameError(f"replayed round {header.round} of job {header.job!r} from party "
                                         f"{header.sender}: that round was already received")
            self._check_room(header)
            part = self._partial[key] = framing.Reassembly(header, payload)
            self._buffered[key] = header.total_bytes
        if self._timed(header.job, "reassembly", part.add, header, payload):
            del self._partial[key]
            fut = self._future(key)
            if fut.done():
                raise framing.FrameError(f"second message for round {header.round} of job {header.job!r}")
            fut.set_result(memoryview(part.buffer))

    def _check_room(self, header) -> None:
        """Bound what one peer can make this party hold: rounds and bytes not yet consumed."""
        mine = [n for (job, rnd, sender), n in self._buffered.items() if sender == header.sender]
        if len(mine) >= self.max_pending_rounds:
            raise framing.FrameTooLarge(f"party {header.sender} has {len(mine)} rounds buffered at party {self.pid}; "
                                        f"the limit is {self.max_pending_rounds} rounds")
        if sum(mine) + header.total_bytes > self.max_buffered_bytes:
            raise framing.FrameTooLarge(f"party {header.sender} would have {sum(mine) + header.total_bytes} bytes "
                                        f"buffered at party {self.pid}; the limit is {self.max_buffered_bytes} bytes")

    def _job_aborted(self, job: str, sender: int, reason: str) -> None:
        """A peer gave up on `job`: fail this party's waits for it now, not at the round timeout."""
        if not self.known_job(job) or job in self._aborted:
            return  # a job this party never had, or already failed: nothing waits on it
        err = JobAborted(f"party {sender} aborted job {job}: {reason}")
        self._aborted[job] = err
        for (j, rnd, peer), fut in self._inbox.items():
            if j == job and not fut.done():
                fut.set_exception(err)

    def _future(self, key) -> asyncio.Future:
        fut = self._inbox.get(key)
        if fut is None:
            fut = self._inbox[key] = asyncio.get_running_loop().create_future()
        return fut

    def _mark_dead(self, peer: int, why: str) -> None:
        if peer in self._dead:
            return
        self._dead[peer] = why
        self._key_ready.setdefault(peer, asyncio.Event()).set()  # connect() stops waiting for it
        for key in [k for k in self._partial if k[2] == peer]:
            del self._partial[key]
            self._buffered.pop(key, None)
        err = PeerFailure(self.describe(peer), why)
        for (job, rnd, sender), fut in self._inbox.items():
            if sender == peer and not fut.done():
                fut.set_exception(err)
        self.on_dead(str(err))

    # -- the Transport hooks ---------------------------------------------------------------------------

    def pairwise_key(self, peer: int) -> bytes:
        return self._keys[peer]

    async def _exchange(self, job, round_no, outgoing, incoming):
        encoded: dict[int, list[bytes]] = {}  # frames name no receiver: one payload sent to all is encoded once
        for p, payload in outgoing.items():
            if p in self._dead:
                raise PeerFailure(self.describe(p), self._dead[p])
            frames = encoded.get(id(payload))
            if frames is None:
                frames = encoded[id(payload)] = self._timed(job, "send", lambda: list(framing.encode_frames(
                    payload, self.chunk_bytes, tag=pb.FRAME_OPEN, job=job, round=round_no, sender=self.pid)))
            for frame in frames:
                self._queues[p].put_nowait(frame)
        received = {}
        if job in self._aborted:
            raise self._aborted[job]
        for p in incoming:
            key = (job, round_no, p)
            fut = self._future(key)
            if p in self._dead and not fut.done():
                raise PeerFailure(self.describe(p), self._dead[p])
            try:
                received[p] = await asyncio.wait_for(fut, self.round_timeout)
            except asyncio.TimeoutError:
                # Only this job: a peer that is really gone is found by keepalive and marked
                # dead; one that merely never ran this job (its client went away) must not
                # bring down every other job and the process.
                raise RoundTimeout(f"{self.describe(p)} sent nothing for round {round_no} of job {job} "
                                   f"within {self.round_timeout:.0f} s") from None
            finally:
                self._inbox.pop(key, None)
                self._buffered.pop(key, None)
                self._consumed.add(key)  # until the job is forgotten: a replay would sit in the inbox
        return received

    def _forget(self, job: str) -> None:
        for table in (self._inbox, self._partial, self._buffered):
            for key in [k for k in table if k[0] == job]:
                table.pop(key)
        self._consumed = {k for k in self._consumed if k[0] != job}
        self._aborted.pop(job, None)

    def abort_job(self, job: str, reason: str) -> None:
        for p, queue in self._queues.items():
            if p not in self._dead:
                for frame in framing.encode_frames(reason[:1000].encode(), tag=pb.FRAME_ABORT, job=job,
                                                   sender=self.pid):
                    queue.put_nowait(frame)

    def abort(self, reason: str) -> None:
        """Tell every live peer that this party is stopping, and why (ahead of closing the streams)."""
        for p, queue in self._queues.items():
            if p not in self._dead:
                for frame in framing.encode_frames(reason.encode(), tag=pb.FRAME_ABORT, sender=self.pid):
                    queue.put_nowait(frame)

    async def close(self) -> None:
        for q in self._queues.values():
            q.put_nowait(None)
        for t in self._tasks:
            t.cancel()
        # Together and briefly: our streams are cancelled above, and a stopping party has
        # nothing left to wait for (0.5 s a channel, one after another, was most of a stop).
        await asyncio.gather(*(ch.close(grace=0.1) for ch in self._channels.values()))
