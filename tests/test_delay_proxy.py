"""The delaying proxy: each chunk arrives `delay` after it was sent, the bandwidth is not capped,
ends of streams pass through, and a target that is down closes the connection."""

import asyncio
import socket
import threading
import time

import pytest
import torch

from mpc.net.delay_proxy import DelayProxy, ProxyThread


async def _echo_server():
    async def echo(reader, writer):
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_each_message_is_delayed_once_each_way_and_bursts_are_pipelined():
    server, port = await _echo_server()
    proxy = DelayProxy(("127.0.0.1", port), delay=0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", await proxy.start("127.0.0.1"))
    try:
        t0 = time.perf_counter()
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        round_trip = time.perf_counter() - t0
        assert 0.1 <= round_trip < 0.5, round_trip  # 50 ms there, 50 ms back

        t0 = time.perf_counter()
        payload = bytes(range(256)) * 4096 * 8  # 8 MiB in many chunks: latency, not latency per chunk
        writer.write(payload)
        got = await reader.readexactly(len(payload))
        burst = time.perf_counter() - t0
        assert got == payload and burst < 2.0, burst
        assert proxy.bytes_forwarded >= 2 * len(payload)

        proxy.delay = 0.0  # changed on a live connection
        t0 = time.perf_counter()
        writer.write(b"x")
        await reader.readexactly(1)
        assert time.perf_counter() - t0 < 0.05
        writer.write_eof()
        assert await reader.read() == b""  # the end passes through both ways
    finally:
        writer.close()
        await proxy.close()
        server.close()


async def test_a_target_that_is_down_closes_the_connection():
    proxy = DelayProxy(("127.0.0.1", 9), delay=0.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", await proxy.start("127.0.0.1"))
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
        await proxy.close()


def test_proxies_in_a_thread_of_their_own():
    async def setup():
        return await _echo_server()

    loop = asyncio.new_event_loop()
    server, port = loop.run_until_complete(setup())

    threading.Thread(target=loop.run_forever, daemon=True).start()
    proxies = ProxyThread()
    try:
        listen = proxies.add("127.0.0.1", ("127.0.0.1", port))
        proxies.set_delay(0.03)
        with socket.create_connection(("127.0.0.1", listen), timeout=5) as sock:
            t0 = time.perf_counter()
            sock.sendall(b"hello")
            assert sock.recv(5) == b"hello"
            assert time.perf_counter() - t0 >= 0.06
    finally:
        proxies.close()
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)


@pytest.mark.slow
def test_a_local_cluster_behind_delaying_proxies_computes_and_pays_the_delay_per_round():
    """`LocalCluster(link_delay_s=D)` (what `mpc bench --latency` runs): results are right,
    and no online phase of R rounds beats R x D (a lower bound, not a speed test)."""
    import mpc
    from tests.conftest import ULP, assert_close

    x, y = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    with mpc.LocalCluster(n_parties=2, link_delay_s=0.02) as cluster:
        assert_close(((cluster.share(x, 0) * cluster.share(y, 1)).relu()).reveal(), (x * y).relu(), 4 * ULP)
        stats = cluster.last_stats
        assert min(s.online_s for s in stats) >= 0.9 * 0.02 * max(s.rounds for s in stats)
        cluster.set_link_delay(0.0)
        assert_close((cluster.share(x, 0) + 1).reveal(), x + 1, ULP)
    with mpc.LocalCluster(n_parties=2) as plain, pytest.raises(mpc.MPCError, match="without delaying proxies"):
        plain.set_link_delay(0.01)
