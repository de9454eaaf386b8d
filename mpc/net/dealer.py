"""The dealer over gRPC: its service (seeds, then corrections) and each party's link to it.

At start-up each party says hello and receives the 128-bit seed it shares with the
dealer. For a job, party 0 sends the list of correlation specs (from its dry run) and
receives the corrections for all of them as one stream of raw chunks. Parties i > 0
never hear from the dealer again: they expand their parts from the seed.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from mpc.net import framing, serde, tls
from mpc.net.mesh import client_channel
from mpc.net.proto import mpc_pb2 as pb
from mpc.prg import new_seed
from mpc.protocols import correlations
from mpc.runtime.transport import DealerLink, PeerFailure, ProtocolViolation

log = logging.getLogger(__name__)

SERVICE = "mpc.net.proto.Dealer"


class DealerService:
    """Holds one seed per party and turns correlation specs into party 0's corrections.

    `authenticated`: callers are who their TLS certificate says (party-K); without it
    (plaintext on loopback) the pid in the request is taken at its word."""

    def __init__(self, n_parties: int, authenticated: bool = True):
        self.n_parties = n_parties
        self.authenticated = authenticated
        self.seeds = [new_seed() for _ in range(n_parties)]
        self.bytes_sent = 0

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
        log.info("seed sent to party %d", pid)
        return pb.DealerSeed(seed=self.seeds[pid])

    async def correlations(self, request: pb.CorrelationRequest, context):
        pid = await self._caller(context, request.pid, "Correlations")
        if pid != 0:
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED,
                               f"Correlations to party {pid}: only party 0 receives corrections")
        try:
            specs = [serde.spec_from_proto(s) for s in request.specs]
            pieces = await asyncio.to_thread(
                lambda: list(correlations.dealer_stream(self.seeds, request.job_id, specs)))
        except (ValueError, KeyError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad correlation request: {exc}")
        payload = b"".join(pieces)
        self.bytes_sent += len(payload)
        for frame in framing.encode_frames(payload, job=request.job_id):
            yield frame

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Hello": grpc.unary_unary_rpc_method_handler(
                self.hello, request_deserializer=pb.DealerHello.FromString,
                response_serializer=pb.DealerSeed.SerializeToString),
            "Correlations": grpc.unary_stream_rpc_method_handler(
                self.correlations, request_deserializer=pb.CorrelationRequest.FromString,
                response_serializer=None),
        })


class GrpcDealerLink(DealerLink):
    def __init__(self, pid: int, n_parties: int, address: str, creds: tls.Credentials | None = None):
        super().__init__()
        self.pid, self.n_parties, self.address = pid, n_parties, address
        self._channel = client_channel(address, creds, tls.DEALER)
        self._seed: bytes | None = None

    async def connect(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
            reply = await self._channel.unary_unary(
                f"/{SERVICE}/Hello", request_serializer=pb.DealerHello.SerializeToString,
                response_deserializer=pb.DealerSeed.FromString)(pb.DealerHello(pid=self.pid, n_parties=self.n_parties),
                                                                timeout=timeout)
        except asyncio.TimeoutError:
            raise PeerFailure(f"dealer at {self.address}", f"unreachable: no connection within {timeout:.0f} s") from None
        except grpc.aio.AioRpcError as exc:
            raise PeerFailure(f"dealer at {self.address}", exc.details() or exc.code().name) from None
        if len(reply.seed) != 16:
            raise ProtocolViolation(f"dealer sent a {len(reply.seed)}-byte seed")
        self._seed = reply.seed

    @property
    def seed(self) -> bytes:
        if self._seed is None:
            raise RuntimeError("the dealer link is not connected")
        return self._seed

    async def _corrections(self, job, specs, nbytes):
        request = pb.CorrelationRequest(job_id=job, pid=self.pid, specs=[serde.spec_to_proto(s) for s in specs])
        call = self._channel.unary_stream(f"/{SERVICE}/Correlations",
                                          request_serializer=pb.CorrelationRequest.SerializeToString,
                                          response_deserializer=None)(request)
        assembly = None
        try:
            async for msg in call:
                header, payload = framing.decode_frame(msg)
                assembly = assembly or framing.Reassembly(header)
                if assembly.add(header, payload):
                    return memoryview(assembly.buffer)
        except grpc.aio.AioRpcError as exc:
            raise PeerFailure(f"dealer at {self.address}", exc.details() or exc.code().name) from None
        raise PeerFailure(f"dealer at {self.address}", f"stream for job {job} ended early")

    async def close(self) -> None:
        await self._channel.close(grace=0.5)
