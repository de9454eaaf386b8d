"""The streaming offline phase: the dealer's corrections made chunk by chunk are the bytes of
whole generation (protocols/streaming.py), party 0 expands while they arrive
(runtime/offline.py), and the gRPC link refuses a dealer that sends too much or too little."""

import asyncio
import random
import threading
import time

import grpc
import pytest
import torch

from mpc.net import framing
from mpc.net.dealer import DealerService, GrpcDealerLink, _ahead
from mpc.prg import PRG, derive_key
from mpc.protocols import correlations as corr
from mpc.protocols import streaming
from mpc.runtime import offline, reproducible
from mpc.runtime.transport import PeerFailure
from tests.attack import raw_frame

SEEDS = [bytes([p + 1]) * 16 for p in range(5)]
KEY = bytes(range(reproducible.KEY_BYTES))  # a reproducible job's key


def keys(n_parties, label="job", k=0):
    return [derive_key(s, "corr", label, k) for s in SEEDS[:n_parties]]


def whole(spec, ks) -> bytes:
    return b"".join(corr.dealer_correction(spec, [PRG(k) for k in ks]))


def kinds(n):
    """Every streamed kind over n elements (shape (n,), or a 2-d shape of n elements)."""
    return [corr.mul_triple((n,), (n,)), corr.square_pair((n,)),
            corr.trunc_pair((n,), 16, 3), corr.trunc_pair((n,), 30, 3), corr.trunc_pair((n,), 40, 3),
            corr.trunc_pair((n,), 12, 2),  # N even: party 0's rho has one bit more
            corr.trunc_pair((n,), 16, 3, square=True), corr.trunc_pair((n,), 40, 2, square=True),
            corr.compare_material((n,), "lt"), corr.compare_material((n,), "eq"),
            corr.compare_material((n,), "lt", [(n,), (n, 3)]), corr.compare_material((1, n), "eq", [(1, n, 2)]),
            corr.compare_material((n,), "lt", [(n,), (n, 3)], self_payload=True),
            corr.compare_material((1, n), "eq", [(1, n)], self_payload=True)]


# Sizes below a chunk, on it, and past it by less than a byte of packed bits; chunks of 8 to 64.
@pytest.mark.parametrize("n", [1, 7, 8, 9, 17, 37, 64, 100, 257])
@pytest.mark.parametrize("chunk", [8, 16, 24, 64])
def test_chunked_generation_is_whole_generation_byte_for_byte(n, chunk):
    for spec in kinds(n):
        n_parties = spec.param("n") if spec.kind == "trunc" else 3
        ks = keys(n_parties)
        pieces = list(streaming.correction_pieces(spec, ks, chunk))
        assert b"".join(pieces) == whole(spec, ks), (spec, chunk)
        if n > chunk and spec.kind in ("mul", "square"):  # one piece a chunk, sent as it is made
            assert len(pieces) == -(-n // chunk)


@pytest.mark.parametrize("n_parties", [2, 3, 5])
def test_past_the_default_chunk_at_any_number_of_parties(n_parties):
    n = streaming.CHUNK + 13  # two chunks, the last one ending inside a byte of bits
    ks = keys(n_parties)
    for spec in [corr.mul_triple((n,), (n,)), corr.trunc_pair((n,), 16, n_parties),
                 corr.compare_material((n,), "lt", [(n,)])]:
        assert b"".join(streaming.correction_pieces(spec, ks)) == whole(spec, ks), spec


def test_kinds_that_mix_elements_are_made_whole():
    assert streaming.elements(corr.mul_triple((4, 5), (4, 5))) == 20
    assert streaming.elements(corr.compare_material((3, 4), "lt", [(3, 4, 2)])) == 12
    assert streaming.elements(corr.compare_material((3, 4), "lt", [(4, 3)])) is None  # (a dealer fails on it)
    for spec in [corr.mul_triple((4, 5), (5,)),  # broadcast: b is not elementwise over c
                 corr.matmul_triple((4, 5), (5, 6)),
                 corr.conv2d_triple((1, 2, 5, 5), (3, 2, 3, 3), (1, 1), (0, 0), (1, 1), 1),
                 corr.bilinear_train_triple((4, 3), (3, 2), dx=True, dw=True)]:
        ks = keys(3)
        assert streaming.elements(spec) is None
        assert b"".join(streaming.correction_pieces(spec, ks, 8)) == whole(spec, ks), spec


def test_a_job_stream_is_every_correlation_in_order():
    specs = [corr.mul_triple((40,), (40,)), corr.matmul_triple((3, 4), (4, 2)), corr.trunc_pair((33,), 16, 3),
             corr.compare_material((21,), "lt", [(21,)])]
    got = b"".join(streaming.dealer_stream(SEEDS[:3], "job-7", specs, chunk=16))
    assert got == b"".join(whole(s, keys(3, "job-7", k)) for k, s in enumerate(specs))


def test_a_chunk_size_that_splits_a_byte_of_bits_is_refused():
    n = 40
    with pytest.raises(ValueError, match="split a byte"):
        list(streaming.correction_pieces(corr.compare_material((n,), "lt"), keys(3), 12))


# -- party 0: the corrections written where they belong, the expansion meanwhile -------------------------


def _feed(corrections, data, seed=0):
    """Write the stream in pieces of random sizes from another thread, as a receiver would."""
    rng = random.Random(seed)

    def run():
        pos = 0
        while pos < len(data):
            step = rng.randint(1, 700)
            corrections[pos:pos + step] = data[pos:pos + step]
            pos += min(step, len(data) - pos)
            time.sleep(0.0002 if rng.random() < 0.05 else 0)
    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize("n_parties", [2, 3])
def test_expansion_while_bytes_arrive_gives_the_parts_of_whole_generation(n_parties):
    """Party 0's parts from the stream as it arrives equal party_part on the whole buffer;
    other parties' parts equal party_part; summed, every correlation holds."""
    n = 150
    specs = [corr.mul_triple((n,), (n,)), corr.trunc_pair((n,), 16, n_parties), corr.square_pair((7,)),
             corr.matmul_triple((3, 4), (4, 2)), corr.compare_material((n,), "lt", [(n, 2)]),
             corr.trunc_pair((n, 2), 40, n_parties), corr.trunc_pair((n,), 30, n_parties, square=True)]
    label = "job-x"
    stream = b"".join(streaming.dealer_stream(SEEDS[:n_parties], label, specs, chunk=32))
    corrections = offline.Corrections(specs)
    assert corrections.nbytes == len(stream) == sum(corr.correction_nbytes(s) for s in specs)
    feeder = _feed(corrections, stream)
    got = offline.expand(specs, 0, SEEDS[0], label, corrections)
    feeder.join()
    offset = 0
    for k, spec in enumerate(specs):
        size = corr.correction_nbytes(spec)
        want = corr.party_part(spec, 0, PRG(derive_key(SEEDS[0], "corr", label, k)), memoryview(stream)[offset:offset + size])
        offset += size
        assert all(torch.equal(g, w) for g, w in zip(got[k], want)), spec
    others = [offline.expand(specs, p, SEEDS[p], label) for p in range(1, n_parties)]
    for k, spec in enumerate(specs):
        want = corr.party_part(spec, 1, PRG(derive_key(SEEDS[1], "corr", label, k)))
        assert all(torch.equal(g, w) for g, w in zip(others[0][k], want))
    a, b, c = (sum(parts[0][k] for parts in [got, *others]) for k in range(3))
    assert torch.equal(a * b, c)  # the triple holds


def test_corrections_refuse_what_does_not_fit_and_wake_the_expansion_when_stopped():
    specs = [corr.mul_triple((4,), (4,))]
    c = offline.Corrections(specs)
    with pytest.raises(ValueError, match="byte 0 is next"):
        c[8:16] = bytes(8)
    with pytest.raises(ValueError, match="40 bytes of corrections, 32 expected"):
        c.write(bytes(40))
    c.write(bytes(8))
    errors = []

    def expand():
        try:
            offline.expand(specs, 0, SEEDS[0], "j", c)
        except offline.StreamStopped as exc:
            errors.append(exc)
    thread = threading.Thread(target=expand)
    thread.start()
    time.sleep(0.05)
    c.stop()
    thread.join(5)
    assert not thread.is_alive() and "stopped at byte 8 of 32" in str(errors[0])


# -- over gRPC: the dealer's service streaming, and a dealer that sends too much or too little -----------


async def _serve(handler):
    server = grpc.aio.server(options=[("grpc.max_send_message_length", framing.MAX_MESSAGE_BYTES)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def test_the_dealer_streams_chunked_correlations_to_party_0_over_grpc():
    """A real DealerService and party 0's link: the tensors filled from the stream are those
    of whole generation, for a fresh job and for a reproducible one (long-lived seeds)."""
    n = streaming.CHUNK + 77
    specs = [corr.mul_triple((n,), (n,)), corr.trunc_pair((n,), 16, 3), corr.matmul_triple((5, 6), (6, 3)),
             corr.compare_material((300,), "lt", [(300,)])]
    dealer = DealerService(3, authenticated=False)

    async def go():
        server, port = await _serve(dealer.handler())
        link = GrpcDealerLink(0, 3, f"127.0.0.1:{port}", timeout=30)
        try:
            await link.connect(10)
            total = sum(corr.correction_nbytes(s) for s in specs)
            fresh = await link.corrections("job-1", specs, total)
            again = await link.corrections("job-2", specs, total, KEY)
            return fresh, again
        finally:
            await link.close()
            await server.stop(0)
    fresh, again = asyncio.run(go())
    for got, seeds, label in [(fresh, dealer.seeds, "job-1"),
                              (again, dealer._repro_seeds, reproducible.stream_label(KEY, specs))]:
        for k, spec in enumerate(specs):
            want = whole(spec, [derive_key(s, "corr", label, k) for s in seeds])
            assert b"".join(t.numpy().tobytes() for t in got.parts[k]) == want, spec
    assert dealer.bytes_sent == 2 * fresh.nbytes


def _fake_dealer(frames):
    async def correlations(request, context):
        for f in frames:
            yield f
    return grpc.method_handlers_generic_handler("mpc.net.proto.Dealer", {
        "Correlations": grpc.unary_stream_rpc_method_handler(correlations)})


SPECS = [corr.mul_triple((4,), (4,))]  # 32 bytes of corrections


def frame(total, n_chunks, chunk, payload):
    return raw_frame(total, n_chunks, payload, chunk=chunk)


@pytest.mark.parametrize("frames, says", [
    ([frame(40, 1, 0, bytes(40))], "announced 40 correction bytes for job j, expected 32"),
    ([frame(24, 1, 0, bytes(24))], "announced 24 correction bytes for job j, expected 32"),
    ([frame(32, 2, 0, bytes(16))], "stream for job j ended early"),  # too little: half of what it announced
    ([frame(32, 2, 0, bytes(16)), frame(32, 2, 1, bytes(24))], "chunk 1 of 24 bytes does not fit"),  # too much
    ([frame(32, 2, 0, bytes(16)), frame(40, 2, 1, bytes(24))], "disagrees with the first chunk"),
    ([frame(32, 3, 0, bytes(16))], "cannot carry 32 bytes in 3 chunks"),
])
def test_a_dealer_that_sends_too_much_or_too_little_is_refused_by_name(frames, says):
    async def go():
        server, port = await _serve(_fake_dealer(frames))
        link = GrpcDealerLink(0, 3, f"127.0.0.1:{port}", timeout=10)
        try:
            with pytest.raises(PeerFailure) as info:
                await link.corrections("j", SPECS, 32)
            return str(info.value)
        finally:
            await link.close()
            await server.stop(0)
    message = asyncio.run(go())
    assert message.startswith(f"dealer at 127.0.0.1:") and says in message, message


def test_the_dealers_worker_stops_when_the_stream_goes_away():
    made, closed = [], threading.Event()

    def items():
        try:
            for i in range(1000):
                made.append(i)
                yield i
        finally:
            closed.set()

    async def go():
        stream = _ahead(items(), 2)
        assert await stream.__anext__() == 0
        await stream.aclose()  # the party hung up after one frame
    asyncio.run(go())
    assert closed.wait(5) and len(made) <= 5


@pytest.mark.parametrize("sizes", [[32], [5, 27], [16, 16], [1] * 32, [15, 1, 16], [3, 29]])
def test_the_stream_encoder_frames_pieces_as_encode_frames_frames_the_whole(sizes):
    """Pieces of any sizes make the frames of the payload they add up to."""
    payload = bytes(range(32))
    encoder = framing.StreamEncoder(32, chunk_bytes=16, job="j")
    frames, pos = [], 0
    for size in sizes:
        frames += encoder.feed(payload[pos:pos + size])
        pos += size
    frames += encoder.finish()
    assert frames == list(framing.encode_frames(payload, chunk_bytes=16, job="j"))


@pytest.mark.parametrize("size", [24, 40])
def test_the_stream_encoder_refuses_pieces_that_miss_the_announced_size(size):
    encoder = framing.StreamEncoder(32, chunk_bytes=16, job="j")
    with pytest.raises(ValueError, match="announced"):
        encoder.feed(bytes(size))
        encoder.finish()


def test_a_correlation_with_an_empty_tensor_streams_no_bytes_in_memory():
    """The in-memory dealer does not refuse empty shapes (the gRPC dealer does): nothing to send."""
    specs = [corr.mul_triple((0,), (0,)), corr.compare_material((0, 3), "lt"), corr.trunc_pair((5,), 16, 3)]
    stream = b"".join(streaming.dealer_stream(SEEDS[:3], "j", specs))
    assert len(stream) == corr.correction_nbytes(specs[2]) == offline.Corrections(specs).nbytes
