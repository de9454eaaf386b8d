"""A TCP proxy that adds latency: each chunk it forwards is delivered `delay` seconds after it arrived.

Where `tc netem` is not available, this is how a test or a benchmark puts a WAN between
processes: point a process's address in the cluster file at a proxy that forwards to where
the process listens. TLS passes through untouched (the proxy sees only ciphertext; the
client checks the server's identity in its certificate, not the address it dialled).

Delivery is pipelined, as on a real link: a chunk waits `delay` from its own arrival, not
from the previous chunk's delivery, so latency is added without capping the bandwidth.
`delay` may be changed while connections are open; it applies to chunks read afterwards.

    proxies = ProxyThread()
    port = proxies.add("10.77.0.1", ("10.77.0.10", 50051))   # listen on 10.77.0.1:port
    proxies.set_delay(0.010)                                 # 10 ms per message, each way
    ...
    proxies.close()
"""

from __future__ import annotations

import asyncio
import threading

CHUNK_BYTES = 1 << 16
MAX_QUEUED_CHUNKS = 1024  # per direction: a slow receiver stops the reading side, as TCP would


class DelayProxy:
    """One listening address forwarding every connection to one target."""

    def __init__(self, target: tuple[str, int], delay: float = 0.0):
        self.target = target
        self.delay = delay
        self.server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self.bytes_forwarded = 0

    async def start(self, host: str, port: int = 0) -> int:
        self.server = await asyncio.start_server(self._serve, host, port)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_reader, client_writer) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()  # the target is down: so is the proxied address
            return
        pumps = [asyncio.ensure_future(self._pipe(client_reader, target_writer)),
                 asyncio.ensure_future(self._pipe(target_reader, client_writer))]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
                self._tasks.discard(task)
            for writer in (client_writer, target_writer):
                writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue(MAX_QUEUED_CHUNKS)

        async def deliver():
            while True:
                due, data = await queue.get()
                if data is None:  # the sender closed: pass the end on
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
                self.bytes_forwarded += len(data)

        delivering = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(CHUNK_BYTES)
                await queue.put((loop.time() + self.delay, data or None))
                if not data:
                    break
            await delivering
        finally:
            delivering.cancel()


class ProxyThread:
    """DelayProxies served by an event loop of their own in a daemon thread, for synchronous callers."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.proxies: list[DelayProxy] = []
        threading.Thread(target=self.loop.run_forever, daemon=True, name="delay-proxy").start()

    def add(self, host: str, target: tuple[str, int], port: int = 0, delay: float = 0.0) -> int:
        """A proxy on host:port (0: any free port) to `target`; returns the port it listens on."""
        proxy = DelayProxy(target, delay)
        bound = asyncio.run_coroutine_threadsafe(proxy.start(host, port), self.loop).result(10)
        self.proxies.append(proxy)
        return bound

    def set_delay(self, seconds: float) -> None:
        for proxy in self.proxies:
            proxy.delay = seconds

    def close(self) -> None:
        async def close_all():
            await asyncio.gather(*(p.close() for p in self.proxies), return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
