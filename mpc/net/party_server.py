"""A party's gRPC server: the Party service over a PartySession, the mesh and the dealer link.

Servicer methods stay thin: check who asks (mpc.net.access), decode with serde, delegate
to the session, map errors to gRPC status codes or error events. A party that loses a peer fails its running jobs with
the peer's name and stops itself (`lost` is set), so no process waits forever.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from mpc.compiler import CompileError
from mpc.ir import TO_CALLER
from mpc.net import VERSION, framing, outputs, serde, tls
from mpc.data_files import DataError
from mpc.net.access import Access, AccessDenied, kept_handle
from mpc.net import party_data
from mpc.net.party_checkpoints import CheckpointService, namespace
from mpc.net.party_data import PartyData, PartyDataError
from mpc.net.config import ClusterConfig
from mpc.net.dealer import GrpcDealerLink
from mpc.net.grants import Grant, GrantError, Grants
from mpc.net.mesh import CHANNEL_OPTIONS, GrpcMesh
from mpc.net.proto import mpc_pb2 as pb
from mpc.runtime import reproducible
from mpc.runtime.jobs import JobError, TooManyAhead, job_digest
from mpc.runtime.session import PartySession
from mpc.runtime.transport import JobAborted, PeerFailure, ProtocolViolation, RoundTimeout

log = logging.getLogger(__name__)

SERVICE = "mpc.net.proto.Party"
MESH_WAIT_S = 60.0
UPLOAD_TTL_S = 120.0  # an upload no job claimed by then is dropped
MAX_UPLOADS = 64  # jobs with uploads waiting, per client
MAX_UPLOAD_BYTES = 4 << 30  # bytes of uploads waiting (and arriving), per client
SERVER_OPTIONS = CHANNEL_OPTIONS + [("grpc.keepalive_permit_without_calls", 1),
                                    ("grpc.http2.min_ping_interval_without_data_ms", 5_000)]


class PartyServer(CheckpointService):
    def __init__(self, pid: int, creds: tls.Credentials | None = None, data_dir: str | None = None):
        """`creds`: this party's TLS material (mutual TLS everywhere); None for plaintext,
        which listen() and join() allow on loopback addresses only. `data_dir`: where jobs
        may read this party's own data files (mpc.net.party_data)."""
        self.pid = pid
        self.creds = creds
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        self.server.add_generic_rpc_handlers((self._handler(),))
        self.session: PartySession | None = None
        self.mesh: GrpcMesh | None = None
        self.dealer: GrpcDealerLink | None = None
        self.config: ClusterConfig | None = None
        self.ready = asyncio.Event()
        self.lost = asyncio.Event()  # set when a peer is gone: the process should stop
        self.lost_reason = ""
        self._mesh_ready = asyncio.Event()
        self._uploads: dict[tuple[str, str], dict[int, bytearray]] = {}  # (client, key) -> node -> bytes
        self._upload_timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        # job id -> (the client that submitted it, job_digest of the job as the coordinator sent it)
        self._submitted: dict[str, tuple[str, str]] = {}
        self.access = Access(pid, creds is not None)
        self.grants = Grants(pid)
        self.data_dir = data_dir
        self.data: PartyData | None = None  # once joined (it needs the cluster's fixed-point bits)
        self.started = time.monotonic()

    async def listen(self, address: str) -> int:
        if self.creds is None:
            tls.require_loopback({f"party {self.pid} (listening)": address})
        port = (self.server.add_secure_port(address, self.creds.server_credentials()) if self.creds
                else self.server.add_insecure_port(address))
        if port == 0:
            raise OSError(f"party {self.pid} cannot listen on {address}")
        await self.server.start()
        return port

    async def join(self, config: ClusterConfig) -> None:
        """Connect to the dealer and to every peer; raise PeerFailure naming whoever is missing."""
        if self.creds is None:
            tls.require_loopback({"dealer": config.dealer, **{f"party {p}": a for p, a in config.parties.items()}})
        self.config = config
        self.access.config = config
        self.data = PartyData(self.pid, self.data_dir, config.frac_bits)
        self.mesh = GrpcMesh(self.pid, config.n_parties, config.parties, creds=self.creds,
                             round_timeout=config.round_timeout, known_job=self._known_job,
                             on_dead=self._lose, session=None)
        self._mesh_ready.set()
        self.dealer = GrpcDealerLink(self.pid, config.n_parties, config.dealer, self.creds, config.round_timeout)
        # The dealer first: every HELLO to a peer carries the dealer session's fingerprint,
        # so parties served by different dealer sessions never start computing together.
        start = asyncio.get_running_loop().time()
        await self.dealer.connect(config.connect_timeout)
        self.mesh.set_session(self.dealer.fingerprint)
        await self.mesh.connect(max(1.0, config.connect_timeout - (asyncio.get_running_loop().time() - start)))
        # The salt of this party's input hashes outlives the process (it is derived from the
        # party's key): a restarted party's reproducible jobs repeat the ones it ran before.
        salt = reproducible.secret_from(self.creds.key_pem, "input-salt") if self.creds else None
        self.session = PartySession(self.mesh, self.dealer, input_salt=salt)
        self.ready.set()

    def _known_job(self, job: str) -> bool:
        return self.session is not None and self.session.knows(job)

    async def close(self) -> None:
        if self.mesh:
            if self.lost_reason:
                self.mesh.abort(self.lost_reason)
            await self.mesh.close()
        if self.dealer:
            await self.dealer.close()
        await self.server.stop(grace=0.2)

    # -- servicer methods ----------------------------------------------------------------------

    async def exchange(self, request_iterator, context):
        try:  # a stream that comes before join() waits for it, within a deadline
            await asyncio.wait_for(self._mesh_ready.wait(), MESH_WAIT_S)
        except asyncio.TimeoutError:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"party {self.pid} has not joined its cluster "
                                                             f"after {MESH_WAIT_S:.0f} s")
        async for reply in self.mesh.handle_exchange(request_iterator, context):
            yield reply

    async def upload(self, request_iterator, context) -> pb.ExchangeReply:
        """Receive a client's inputs (its plaintext for this party, or its share) for a job it
        is about to submit; they wait under (client, key) until that job claims them."""
        who = await self._allowed(context, self.access.client, "an upload")
        parts: dict[tuple, framing.Reassembly] = {}
        try:
            async for msg in request_iterator:
                header, payload = framing.decode_frame(msg)
                if header.tag != pb.FRAME_INPUT or not header.job:
                    raise framing.FrameError("upload frames must be INPUT frames with a job id")
                key = (header.job, header.round)
                part = parts.get(key)
                if part is None:  # a new input: every limit is checked before its buffer exists
                    pending = sum(len(p.buffer) for p in parts.values()) + header.total_bytes
                    if pending > framing.MAX_PAYLOAD_BYTES:
                        raise framing.FrameError("upload exceeds the payload limit")
                    if (who, header.job) not in self._uploads and \
                            sum(1 for c, _ in self._uploads if c == who) >= MAX_UPLOADS:
                        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                            f"party {self.pid}: {who or 'this client'} has uploads for {MAX_UPLOADS} "
                                            "jobs not yet submitted")
                    waiting = sum(len(b) for (c, _), bufs in self._uploads.items() if c == who for b in bufs.values())
                    if waiting + pending > MAX_UPLOAD_BYTES:
                        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                            f"party {self.pid}: {who or 'this client'} would have "
                                            f"{waiting + pending} bytes of uploads waiting; the limit is "
                                            f"{MAX_UPLOAD_BYTES}")
                    part = parts[key] = framing.Reassembly(header, payload)
                if part.add(header, payload):
                    if (who, header.job) not in self._uploads:
                        self._uploads[(who, header.job)] = {}
                        self._upload_timers[(who, header.job)] = asyncio.get_running_loop().call_later(
                            UPLOAD_TTL_S, self._take_upload, (who, header.job))
                    self._uploads[(who, header.job)][header.round] = part.buffer
        except framing.FrameError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"party {self.pid}: {exc}")
        return pb.ExchangeReply(ok=True)

    def _take_upload(self, key) -> dict:
        """The uploads under `key` (claimed by a job, or expired), and their timer cancelled:
        the timer must neither drop a later upload under the key nor keep these buffers alive."""
        timer = self._upload_timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        return self._uploads.pop(key, {})

    async def _allowed(self, context, check, *args):
        """check(context, *args), or the call ends with the refusal's status and message."""
        try:
            return check(context, *args)
        except AccessDenied as exc:
            await context.abort(exc.code, str(exc))

    async def load_program(self, request: pb.ProgramProto, context) -> pb.ProgramReply:
        await self._allowed(context, self.access.coordinator, "a program")
        if not self.ready.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"party {self.pid} is not connected to its peers yet")
        try:
            loaded = await self.session.load(serde.program_from_proto(request))
        except (serde.SerdeError, CompileError) as exc:
            log.warning("program refused: %s", exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"party {self.pid}: {exc}")
        log.info("program %s loaded: %d nodes, %d correlations, %d rounds", loaded.program.digest[:16],
                 len(loaded.program.nodes), len(loaded.dry.specs), loaded.dry.rounds)
        return pb.ProgramReply(digest=loaded.program.digest, n_correlations=len(loaded.dry.specs),
                               rounds=loaded.dry.rounds)

    async def submit(self, request: pb.JobRequest, context) -> pb.SubmitReply:
        await self._allowed(context, self.access.coordinator, "a job")
        if not self.ready.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"party {self.pid} is not connected to its peers yet")
        loaded = self.session.programs.get(request.program)
        if loaded is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"party {self.pid} has no program {request.program}: load it first")
        submitter = request.submitter
        try:
            self.access.check_submitter(submitter)
            if request.inputs and self.access.secure:
                raise AccessDenied(grpc.StatusCode.INVALID_ARGUMENT, f"party {self.pid}: a job through the "
                                   "coordinator carries no inputs (each owner uploads its own)")
        except AccessDenied as exc:
            await context.abort(exc.code, str(exc))
        try:
            job, inputs = serde.job_from_proto(request)
            binding = job_digest(job)  # what its client will name when it runs it (before our namespace)
            job = _in_namespace(job, namespace(submitter, request.client_session))
            job = self.grants.resolve(job, submitter, self.access.secure, self.session.kept.__contains__)
            uploads = self._take_upload((submitter, request.upload_key or job.job_id))
            shares = {nid for nid, owner in job.owners.items() if owner == TO_CALLER}
            inputs.update(serde.inputs_from_uploads(loaded.program, uploads, shares))
            for nid, text in job.sources.items():  # this party's own files: read here, by nobody else
                if job.owners.get(nid) == self.pid:
                    self.access.reads_files_for(submitter, f"job {job.job_id}, which reads its data files,")
                    inputs[nid] = await asyncio.to_thread(self.data.value, text)
            dry = await self.session.submit(job, inputs, client=submitter)
        except AccessDenied as exc:
            await context.abort(exc.code, str(exc))
        except GrantError as exc:
            log.warning("job %s refused: %s", request.job_id, exc)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"party {self.pid}: {exc}")
        except TooManyAhead as exc:
            log.warning("job %s refused: %s", request.job_id, exc)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except (serde.SerdeError, CompileError, JobError, PartyDataError, DataError) as exc:
            log.warning("job %s refused: %s", request.job_id, exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"party {self.pid}: {exc}")
        self._submitted[job.job_id] = (submitter, binding)
        asyncio.get_running_loop().call_later(2 * UPLOAD_TTL_S, self._forget_submitted, job.job_id)
        log.info("job %s submitted by %s: program %s", job.job_id, submitter or "-", job.program[:16])
        return pb.SubmitReply(n_correlations=len(dry.specs), rounds=dry.rounds)

    def _forget_submitted(self, job_id: str) -> None:
        """Drop a job's submitter and binding once its session has let go of it (a job submitted
        ahead waits, prepared, as long as the job before it runs)."""
        if self.session is not None and self.session.knows(job_id) and job_id in self._submitted:
            asyncio.get_running_loop().call_later(2 * UPLOAD_TTL_S, self._forget_submitted, job_id)
            return
        self._submitted.pop(job_id, None)

    async def run(self, request: pb.JobRef, context):
        """Run a submitted job; answer with raw frames (mpc.net.outputs): each output's
        description and bytes, then the stats, or an error event."""
        for frame in await self._run(request, context):
            yield frame

    async def _run(self, request: pb.JobRef, context):
        if not self.ready.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"party {self.pid} is not connected to its peers yet")
        who = await self._allowed(context, self.access.client, f"running job {request.job_id}")
        if request.job_id not in self._submitted:
            return _error(f"party {self.pid} has no job {request.job_id}")
        submitter, binding = self._submitted[request.job_id]
        await self._allowed(context, self.access.submitter, submitter, request.job_id,
                            f"running job {request.job_id}")
        # The client's own digest of what it submitted: a coordinator that changed anything on
        # the way (a recipient, a kept value, the program) is caught here, before any round.
        if (request.binding or self.access.secure) and request.binding != binding:
            log.warning("job %s refused: its client submitted other bindings", request.job_id)
            self.session.cancel(request.job_id)
            return _error(f"party {self.pid} refuses to run job {request.job_id}: it is not the job its client "
                          f"submitted (the bindings it received differ; the coordinator changed them or the client "
                          f"named another job)")
        try:
            outcome = await self.session.run(request.job_id)
        except (JobError, CompileError, ProtocolViolation, JobAborted, RoundTimeout) as exc:
            return _error(f"party {self.pid}: {exc}")
        except PeerFailure as exc:
            return self._then_lose(_error(f"party {self.pid}: {exc}"), str(exc))
        # What was revealed to this party stays here unless the caller is its operator;
        # values opened to every party are public.
        withheld = [nid for nid, to in outcome.opened_to.items()
                    if to == self.pid and self.pid not in self.access.operator_of(who)]
        for nid in withheld:
            log.info("job %s revealed node %d to party %d; not sent to %s, who is not its operator",
                     request.job_id, nid, self.pid, who)
            del outcome.plaintexts[nid]
        return outputs.outcome_to_frames(outcome)

    def _then_lose(self, frames, reason: str):
        """`frames`, then this party stops: after the client has been told why, or has gone."""
        try:
            yield from frames
        finally:
            self._lose(reason)

    async def cancel(self, request: pb.JobRef, context) -> pb.ExchangeReply:
        """Drop a job not yet run, so that nothing waits for it and its correlations are freed:
        the coordinator's, when another party refused it, or its submitter's, which will not
        run it after all (a job submitted ahead of a training run that stopped)."""
        submitter = self._submitted.get(request.job_id, (None, ""))[0]
        await self._allowed(context, self.access.canceller, submitter, request.job_id)
        dropped = self.session is not None and self.session.cancel(request.job_id)
        if dropped:
            self._submitted.pop(request.job_id, None)
            log.info("job %s cancelled", request.job_id)
        return pb.ExchangeReply(ok=dropped)

    async def grant(self, request: pb.GrantRequest, context) -> pb.ExchangeReply:
        """A client lets another use one of its kept values in one program (mpc.net.grants),
        or withdraws that."""
        await self._ready_or_abort(context)
        who = await self._allowed(context, self.access.client, "a grant")
        if request.revoke:
            return pb.ExchangeReply(ok=self.grants.revoke(request.grant, who))
        key = kept_handle(namespace(who, request.client_session), request.handle)
        try:
            self.grants.add(request.grant, Grant(who, key, request.grantee, request.program),
                            self.session.kept.__contains__, request.handle)
        except GrantError as exc:
            log.warning("grant refused: %s", exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"party {self.pid}: {exc}")
        return pb.ExchangeReply(ok=True)

    async def describe_data(self, request: pb.DataQuery, context) -> pb.DataInfo:
        """The shapes of one of this party's files, as a job would read it: what a client
        needs to compile its program, and nothing of the values."""
        await self._ready_or_abort(context)
        who = await self._allowed(context, self.access.client, "a data description")
        try:
            self.access.reads_files_for(who, "a data description")
        except AccessDenied as exc:
            await context.abort(exc.code, str(exc))
        try:
            file, label, _, loss, classes = party_data.parse_source(request.source)
            x, y = await asyncio.to_thread(self.data.load, file, label, loss, classes)
        except (PartyDataError, DataError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"party {self.pid}: {exc}")
        return pb.DataInfo(x_shape=list(x.shape), y_shape=list(y.shape) if y is not None else [])

    async def _ready_or_abort(self, context) -> None:
        if not self.ready.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"party {self.pid} is not connected to its peers yet")

    async def health(self, request, context) -> pb.HealthReply:
        await self._allowed(context, self.access.member, "a health check")
        n = self.config.n_parties if self.config else 0
        count, nbytes = self.session.kept_stats() if self.session is not None else (0, 0)
        return pb.HealthReply(pid=self.pid, n_parties=n, ready=self.ready.is_set(),
                              detail=self.lost_reason or ("ready" if self.ready.is_set() else "connecting"),
                              kept_values=count, kept_bytes=nbytes,
                              jobs=len(self.session.jobs) if self.session is not None else 0,
                              version=VERSION, uptime_s=time.monotonic() - self.started)

    def _lose(self, reason: str) -> None:
        if not self.lost_reason:  # the first loss is the cause; later ones follow from it
            self.lost_reason = reason
        self.lost.set()

    def _handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Exchange": grpc.stream_stream_rpc_method_handler(
                self.exchange, request_deserializer=None, response_serializer=pb.ExchangeReply.SerializeToString),
            "Upload": grpc.stream_unary_rpc_method_handler(
                self.upload, request_deserializer=None, response_serializer=pb.ExchangeReply.SerializeToString),
            "LoadProgram": grpc.unary_unary_rpc_method_handler(
                self.load_program, request_deserializer=pb.ProgramProto.FromString,
                response_serializer=pb.ProgramReply.SerializeToString),
            "Submit": grpc.unary_unary_rpc_method_handler(
                self.submit, request_deserializer=pb.JobRequest.FromString,
                response_serializer=pb.SubmitReply.SerializeToString),
            "Run": grpc.unary_stream_rpc_method_handler(
                self.run, request_deserializer=pb.JobRef.FromString, response_serializer=None),
            "Grant": grpc.unary_unary_rpc_method_handler(
                self.grant, request_deserializer=pb.GrantRequest.FromString,
                response_serializer=pb.ExchangeReply.SerializeToString),
            "DescribeData": grpc.unary_unary_rpc_method_handler(
                self.describe_data, request_deserializer=pb.DataQuery.FromString,
                response_serializer=pb.DataInfo.SerializeToString),
            "Cancel": grpc.unary_unary_rpc_method_handler(
                self.cancel, request_deserializer=pb.JobRef.FromString,
                response_serializer=pb.ExchangeReply.SerializeToString),
            "SaveCheckpoint": grpc.unary_unary_rpc_method_handler(
                self.save_checkpoint, request_deserializer=pb.CheckpointRequest.FromString,
                response_serializer=pb.CheckpointReply.SerializeToString),
            "LoadCheckpoint": grpc.unary_unary_rpc_method_handler(
                self.load_checkpoint, request_deserializer=pb.CheckpointRequest.FromString,
                response_serializer=pb.CheckpointReply.SerializeToString),
            "ListCheckpoints": grpc.unary_unary_rpc_method_handler(
                self.list_checkpoints, request_deserializer=pb.CheckpointQuery.FromString,
                response_serializer=pb.CheckpointList.SerializeToString),
            "Health": grpc.unary_unary_rpc_method_handler(
                self.health, request_deserializer=pb.HealthRequest.FromString,
                response_serializer=pb.HealthReply.SerializeToString),
        })


def _error(message: str) -> list[bytes]:
    """A Run stream's error event, as its frames."""
    return outputs.event_frames(serde.error_event(message))


def _in_namespace(job, submitter: str):
    """The job with every kept-value handle moved into its submitter's namespace."""
    from dataclasses import replace

    return replace(job, kept={n: kept_handle(submitter, h) for n, h in job.kept.items()},
                   keep={n: kept_handle(submitter, h) for n, h in job.keep.items()},
                   free=tuple(kept_handle(submitter, h) for h in job.free))
