"""Helpers for the attack tests: calls made as an outsider or a party would make them."""

import asyncio

import grpc
import pytest
import torch

from mpc.net import tls
from mpc.net.mesh import CHANNEL_OPTIONS
from mpc.net.proto import mpc_pb2 as pb
from tests.conftest import ULP, assert_close

HELLO = "/mpc.net.proto.Dealer/Hello"
CORRELATIONS = "/mpc.net.proto.Dealer/Correlations"
EXCHANGE = "/mpc.net.proto.Party/Exchange"


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
            pb.DealerHello(pid=pid, n_parties=n), timeout=30)
    return fn


def refused(address, fn, creds=None, expect=None) -> grpc.aio.AioRpcError:
    """The error the server answers `fn` with. A client whose send races the server's early
    end of the call sees gRPC's own INTERNAL ("execute_batch") instead of the server's
    status: that is the client library, not the server, so the attack is made again."""
    for _ in range(5):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            call(address, fn, creds, expect)
        if not _client_race(info.value):
            return info.value
    return info.value


def _client_race(err: grpc.aio.AioRpcError) -> bool:
    return err.code() == grpc.StatusCode.INTERNAL and "execute_batch" in (err.debug_error_string() or "")


def exchange(frames):
    async def fn(ch):
        c = ch.stream_stream(EXCHANGE, request_serializer=None, response_deserializer=pb.ExchangeReply.FromString)(
            timeout=30)
        try:
            for f in frames:
                await c.write(f)
            await c.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the server may end the call before it reads everything: its status is the answer
        return [r async for r in c]
    return fn


def raw_frame(total, n_chunks, payload=b"", chunk=0, sender=0):
    hdr = pb.FrameHeader(tag=pb.FRAME_OPEN, job="j", round=0, sender=sender, chunk=chunk, n_chunks=n_chunks,
                         total_bytes=total).SerializeToString()
    return len(hdr).to_bytes(4, "little") + hdr + payload
