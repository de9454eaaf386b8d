"""The coordinator's gRPC service: where authenticated clients submit programs and jobs.

A client compiles its model or expression into a Program (mpc.compiler; no cluster is
needed for that) and sends it here once; the coordinator checks it parses into a valid
program, sends it to every party that lacks it, and keeps a copy to send again to a
party that dropped it from its cache. For each job the coordinator

1. takes the submitter's identity from its verified certificate and refuses clients the
   cluster file does not list;
2. refuses jobs that carry plaintext inputs (each owner uploads its own to each party);
3. gives the job a fresh id, `<coordinator nonce>-<counter>`: clients never choose the id
   that keys the parties' input masks and the dealer's correlations, and parties and the
   dealer refuse an id they have seen;
4. forwards the bindings (program digest, owners, kept handles, recipients) with the
   submitter's name and the key its uploads were sent under, to every party at once, and
   answers with the new id once every party accepted it.

It relays no shares and no outputs: those travel between each party and their owner or
recipient directly, so the coordinator never holds anything it may not see.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections import OrderedDict

import grpc

from mpc.compiler import CompileError
from mpc.net import access, VERSION, serde, tls
from mpc.net.config import ClusterConfig
from mpc.net.mesh import client_channel
from mpc.net.proto import mpc_pb2 as pb
from mpc.net.proto import mpc_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE = "mpc.net.proto.Coordinator"
MAX_PROGRAMS = 256  # programs kept to send again to a party that dropped one
CALL_TIMEOUT_S = 300.0


class CoordinatorService:
    def __init__(self, creds: tls.Credentials | None = None):
        """`creds`: the coordinator's TLS material; None for plaintext (loopback only)."""
        self.config: ClusterConfig | None = None  # set by connect()
        self.creds = creds
        self.ready = asyncio.Event()
        self.nonce = os.urandom(8).hex()  # a restarted coordinator never repeats an id
        self._counter = itertools.count(1)
        self._programs: OrderedDict[str, pb.ProgramProto] = OrderedDict()
        self._replies: dict[str, pb.ProgramReply] = {}  # a party's answer to each program
        self._loaded: dict[int, set[str]] = {}
        self._channels: dict[int, grpc.aio.Channel] = {}
        self._stubs: dict[int, pb_grpc.PartyStub] = {}
        self.started = time.time()
        self.jobs_forwarded = 0

    async def connect(self, config: ClusterConfig) -> None:
        """Open a channel to every party and wait until each answers as joined (within the
        config's connect_timeout), naming any that does not."""
        self.config, timeout = config, config.connect_timeout
        self._loaded = {p: set() for p in config.parties}
        for p, address in self.config.parties.items():
            self._channels[p] = client_channel(address, self.creds, tls.party_name(p))
            self._stubs[p] = pb_grpc.PartyStub(self._channels[p])

        async def ready(p):
            deadline = time.monotonic() + timeout
            while True:
                try:
                    reply = await self._stubs[p].Health(pb.HealthRequest(), timeout=max(0.5, deadline - time.monotonic()))
                    if reply.ready:
                        return
                except grpc.aio.AioRpcError as exc:
                    if time.monotonic() >= deadline:
                        raise ConnectionError(f"party {p} at {self.config.parties[p]} is unreachable: "
                                              f"{exc.details() or exc.code().name}") from None
                if time.monotonic() >= deadline:
                    raise ConnectionError(f"party {p} at {self.config.parties[p]} has not joined its peers "
                                          f"within {timeout:.0f} s")
                await asyncio.sleep(0.2)

        await asyncio.gather(*(ready(p) for p in self.config.parties))
        self.ready.set()

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close(grace=0.5)

    # -- who asks --------------------------------------------------------------------------------------

    def _client(self, context) -> str:
        """The caller's identity if it may submit; raises _Refused otherwise."""
        if not self.ready.is_set():
            raise _Refused(grpc.StatusCode.UNAVAILABLE, "coordinator is not connected to the parties yet")
        if self.creds is None:
            return ""  # plaintext on loopback: nobody is authenticated
        who = tls.peer_identity(context) or ""
        if who not in self.config.clients:  # (not saying which clients are: nobody else's business)
            raise _Refused(grpc.StatusCode.PERMISSION_DENIED,
                           f"coordinator refuses {who or 'an unauthenticated caller'}: not a client of this cluster")
        return who

    # -- servicer methods ------------------------------------------------------------------------------

    async def load_program(self, request: pb.ProgramProto, context) -> pb.ProgramReply:
        try:
            who = self._client(context)
            program = serde.program_from_proto(request)  # refuse what does not parse before any party sees it
        except _Refused as exc:
            await _abort(context, exc)
        except (serde.SerdeError, CompileError) as exc:
            log.warning("program refused: %s", exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"coordinator: {exc}")
        self._programs[program.digest] = request
        self._programs.move_to_end(program.digest)
        while len(self._programs) > MAX_PROGRAMS:
            evicted = self._programs.popitem(last=False)[0]
            self._replies.pop(evicted, None)
            for loaded in self._loaded.values():  # sent again, from the next copy a client loads
                loaded.discard(evicted)
        try:
            await self._each(lambda p: self._load(p, program.digest))
        except _Refused as exc:
            await _abort(context, exc)
        log.info("program %s from %s at every party", program.digest[:16], who or "-")
        return self._replies[program.digest]

    async def _load(self, p: int, digest: str) -> None:
        if digest in self._loaded[p]:
            return
        reply = await self._stubs[p].LoadProgram(self._programs[digest], timeout=CALL_TIMEOUT_S)
        if reply.digest != digest:
            raise _Refused(grpc.StatusCode.INTERNAL, f"party {p} computed digest {reply.digest[:16]}… for program "
                                                     f"{digest[:16]}…")
        self._loaded[p].add(digest)
        self._replies[digest] = reply

    async def submit(self, request: pb.JobRequest, context) -> pb.SubmitReply:
        try:
            who = self._client(context)
            if request.inputs:
                raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "coordinator: a job carries no plaintext inputs; "
                                                                 "each owner uploads its own to each party")
            if request.program not in self._programs:
                raise _Refused(grpc.StatusCode.FAILED_PRECONDITION,
                               f"coordinator has no program {request.program[:16]}…: load it first")
        except _Refused as exc:
            await _abort(context, exc)
        forwarded = pb.JobRequest()
        forwarded.CopyFrom(request)
        forwarded.job_id = f"{self.nonce}-{next(self._counter)}"
        forwarded.submitter = who
        forwarded.upload_key = request.job_id

        async def submit(p):
            await self._load(p, request.program)
            try:
                return await self._stubs[p].Submit(forwarded, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION or request.program not in self._programs:
                    raise
                self._loaded[p].discard(request.program)  # the party dropped it from its cache: once more
                await self._load(p, request.program)
                return await self._stubs[p].Submit(forwarded, timeout=CALL_TIMEOUT_S)

        try:
            replies = await self._each(submit)
        except BaseException as exc:
            # The parties that accepted the job drop it now, instead of holding it (and what
            # it would keep) until it expires: nothing waits on a job that will not run. Also
            # when the client cancelled its Submit, or something unexpected failed here.
            await asyncio.shield(asyncio.gather(*(self._stubs[p].Cancel(pb.JobRef(job_id=forwarded.job_id), timeout=10)
                                                  for p in self.config.parties), return_exceptions=True))
            if isinstance(exc, _Refused):
                await _abort(context, exc)
            raise
        self.jobs_forwarded += 1
        log.info("job %s (%s's %s) submitted to %d parties", forwarded.job_id, who or "-", request.job_id, len(replies))
        return pb.SubmitReply(n_correlations=replies[0].n_correlations, rounds=replies[0].rounds,
                              job_id=forwarded.job_id)

    async def _each(self, call):
        """call(p) at every party at once; one _Refused naming every party that failed."""
        parties = sorted(self.config.parties)
        results = await asyncio.gather(*(call(p) for p in parties), return_exceptions=True)
        failures = [(p, r) for p, r in zip(parties, results) if isinstance(r, BaseException)]
        if failures:
            messages, code = [], grpc.StatusCode.UNAVAILABLE
            for p, exc in failures:
                if isinstance(exc, grpc.aio.AioRpcError):
                    detail = exc.details() or exc.code().name
                    messages.append(detail if detail.startswith(f"party {p}")
                                    else f"party {p} at {self.config.parties[p]}: {detail}")
                    code = exc.code() if exc.code() != grpc.StatusCode.UNAVAILABLE else code
                elif isinstance(exc, _Refused):
                    messages.append(str(exc))
                    code = exc.code
                else:
                    raise exc
            raise _Refused(code, "; ".join(sorted(set(messages))))
        return results

    async def health(self, request, context) -> pb.HealthReply:
        # As at the parties and the dealer: the cluster's own processes and listed clients only
        # (a certificate of the same CA is not enough to learn what this cluster is doing).
        if self.creds is not None and self.config is not None:
            who = tls.peer_identity(context) or ""
            if not access.cluster_member(who, self.config.n_parties, self.config.clients):
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    f"coordinator refuses Health from {who or 'an unidentified peer'}: not a process "
                                    "or client of this cluster")
        if not self.ready.is_set():
            return pb.HealthReply(ready=False, detail="coordinator: connecting to the parties")
        return pb.HealthReply(n_parties=self.config.n_parties, ready=True, version=VERSION,
                              uptime_s=time.time() - self.started,
                              detail=f"coordinator: {self.jobs_forwarded} jobs forwarded")

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "LoadProgram": grpc.unary_unary_rpc_method_handler(
                self.load_program, request_deserializer=pb.ProgramProto.FromString,
                response_serializer=pb.ProgramReply.SerializeToString),
            "Submit": grpc.unary_unary_rpc_method_handler(
                self.submit, request_deserializer=pb.JobRequest.FromString,
                response_serializer=pb.SubmitReply.SerializeToString),
            "Health": grpc.unary_unary_rpc_method_handler(
                self.health, request_deserializer=pb.HealthRequest.FromString,
                response_serializer=pb.HealthReply.SerializeToString),
        })


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


async def _abort(context, exc: _Refused):
    log.warning("%s", exc)
    await context.abort(exc.code, str(exc))
