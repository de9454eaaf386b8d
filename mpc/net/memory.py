"""An in-memory mesh and dealer: N parties in one process and one event loop.

For fast protocol tests only; the protocol and executor code is the same that runs over
gRPC. Every message is copied into a fresh buffer, as a socket would.
"""

from __future__ import annotations

import asyncio

from mpc.prg import new_seed
from mpc.protocols import streaming
from mpc.runtime import reproducible
from mpc.runtime.transport import DealerLink, JobAborted, Transport


class MemoryNetwork:
    def __init__(self, n_parties: int):
        self.n_parties = n_parties
        self._boxes: dict[tuple, asyncio.Future] = {}
        self.aborted: dict[str, JobAborted] = {}  # job -> why a party gave up on it
        self._pair_keys = {(i, j): new_seed() for i in range(n_parties) for j in range(i + 1, n_parties)}
        self.dealer_seeds = [new_seed() for _ in range(n_parties)]
        self.repro_master = new_seed()  # the dealer's long-lived key: one per network
        self.repro_seeds = [reproducible.long_lived_seed(self.repro_master, p) for p in range(n_parties)]

    def _box(self, key) -> asyncio.Future:
        fut = self._boxes.get(key)
        if fut is None:
            fut = self._boxes[key] = asyncio.get_running_loop().create_future()
        return fut

    def transport(self, pid: int) -> "MemoryTransport":
        return MemoryTransport(self, pid)

    def dealer(self, pid: int) -> "MemoryDealer":
        return MemoryDealer(self, pid)


class MemoryTransport(Transport):
    def __init__(self, net: MemoryNetwork, pid: int):
        super().__init__(pid, net.n_parties)
        self._net = net

    def pairwise_key(self, peer: int) -> bytes:
        return self._net._pair_keys[(min(self.pid, peer), max(self.pid, peer))]

    async def _exchange(self, job, round_no, outgoing, incoming):
        if job in self._net.aborted:
            raise self._net.aborted[job]
        for p, payload in outgoing.items():
            self._net._box((job, round_no, self.pid, p)).set_result(bytearray(payload))
        boxes = {p: self._net._box((job, round_no, p, self.pid)) for p in incoming}  # all now: an abort finds them
        received = {}
        for p, box in boxes.items():
            received[p] = memoryview(await box)
            del self._net._boxes[(job, round_no, p, self.pid)]
        return received

    def abort_job(self, job: str, reason: str) -> None:
        err = self._net.aborted[job] = JobAborted(f"party {self.pid} aborted job {job}: {reason}")
        for (j, _, sender, receiver), fut in self._net._boxes.items():
            if j == job and receiver != self.pid and not fut.done():
                fut.set_exception(err)
                fut.exception()  # a receiver that already failed on another box never awaits this one


class MemoryDealer(DealerLink):
    def __init__(self, net: MemoryNetwork, pid: int):
        super().__init__()
        self._net = net
        self._pid = pid

    @property
    def seed(self) -> bytes:
        return self._net.dealer_seeds[self._pid]

    @property
    def repro_seed(self) -> bytes:
        return self._net.repro_seeds[self._pid]

    def repro_pair(self, peer: int) -> bytes:
        return reproducible.long_lived_pair(self._net.repro_master, self._pid, peer)

    async def _corrections(self, job, specs, nbytes, reproduction_key, into):
        seeds = self._net.repro_seeds if reproduction_key else self._net.dealer_seeds
        label = reproducible.correlation_label(job, reproduction_key, specs)

        def produce():  # as the dealer does: a piece written as soon as it is made
            for piece in streaming.dealer_stream(seeds, label, specs):
                into.write(piece)
        await asyncio.to_thread(produce)

