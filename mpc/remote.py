"""RemoteCluster: the client of a cluster that is already running elsewhere, as `mpc infer`
and `mpc train --cluster FILE` use it.

    with RemoteCluster.from_file("cluster.toml", "certs/client-alice", "client-alice") as cluster:
        y = cluster.infer(compiled, x)

The parties, the dealer and the coordinator were started on their hosts from the same
cluster file (`mpc party --cluster cluster.toml --id K`); this is a ClusterClient that,
on entering, also waits until every party reports itself joined and names those that do
not. Leaving closes its channels and leaves the processes running.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from mpc.api import MPCError
from mpc.client import ClusterClient
from mpc.net import tls
from mpc.net.config import ClusterConfig
from mpc.net.proto import mpc_pb2 as pb


class RemoteCluster(ClusterClient):
    """A client attached to running processes, described by a ClusterConfig."""

    remote = True  # its parties' disks are theirs: checkpoints go under their data directories

    def __init__(self, config: ClusterConfig, creds: tls.Credentials | None, *, ready_timeout: float = 30.0,
                 job_timeout: float = 900.0, defer_truncation: bool = True):
        """`creds`: this client's certificate (None: plaintext, loopback only). `ready_timeout`:
        how long entering waits for every party to report itself connected to its peers."""
        super().__init__(config, creds, job_timeout=job_timeout, defer_truncation=defer_truncation)
        self.ready_timeout = ready_timeout

    @classmethod
    def from_file(cls, path: str, certs: str | None, identity: str = "client-local", **kw) -> "RemoteCluster":
        """A RemoteCluster for the cluster file at `path`, as `identity` with the certificate in `certs`."""
        return cls(ClusterConfig.load(path), tls.Credentials.load(certs, identity) if certs else None, **kw)

    def start(self) -> None:
        self.connect()

    def stop(self) -> None:
        self.close()

    def connect(self) -> None:
        super().connect()
        try:
            self._call(self._wait_ready(), timeout=self.ready_timeout + 10)
        except BaseException:
            self.close()
            raise

    async def _wait_ready(self) -> None:
        """Poll every party's Health until all are ready; name those that are not, with why."""
        deadline = time.monotonic() + self.ready_timeout
        why: dict[int, str] = {}
        while True:
            async def ask(p):
                try:
                    reply = await self._stubs[p].Health(pb.HealthRequest(), timeout=min(5.0, self.ready_timeout))
                except grpc.aio.AioRpcError as exc:
                    return p, f"unreachable ({exc.code().name}: {exc.details()})"
                return p, None if reply.ready else f"not ready ({reply.detail})"

            why = {p: w for p, w in await asyncio.gather(*(ask(p) for p in range(self.n_parties))) if w}
            if not why or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        if why:
            raise MPCError("cluster not ready after %.0f s: %s" % (self.ready_timeout, "; ".join(
                f"party {p} at {self.config.parties[p]} {w}" for p, w in sorted(why.items()))))
