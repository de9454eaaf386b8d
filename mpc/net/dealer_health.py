"""The dealer's Health method: what `mpc status` and a readiness probe ask of every process.

Served under the Dealer service beside Hello and Correlations, from a handler of its own
(the seed and correction logic stays in mpc.net.dealer, untouched by who asks how it is).
As at a party, only the cluster's own processes and the clients its file lists are
answered (mpc.net.access.cluster_member): how many jobs and sessions the dealer served is
nobody else's business. Without TLS (loopback only) nobody is authenticated and anyone on
the machine is answered.

The reply: ready as soon as the dealer serves (parties dial it before any of them is
ready, so it must not wait on them), its version and uptime, `jobs` = jobs whose
corrections it sent since it started, `sessions` = sessions begun since it started (one,
plus one per restarted party), and in `detail` the current session and how many parties
joined it.
"""

from __future__ import annotations

import logging
import time

import grpc

from mpc.net import VERSION, tls
from mpc.net.access import cluster_member
from mpc.net.dealer import SERVICE, DealerService
from mpc.net.proto import mpc_pb2 as pb

log = logging.getLogger(__name__)


class DealerHealth:
    """`clients`: the identities the cluster file lists as clients (they may ask too);
    `authenticated`: callers are known by their TLS certificate (else nobody is checked)."""

    def __init__(self, dealer: DealerService, clients=(), authenticated: bool = True):
        self.dealer = dealer
        self.clients = tuple(clients)
        self.authenticated = authenticated
        self.started = time.monotonic()

    async def health(self, request: pb.HealthRequest, context) -> pb.HealthReply:
        if self.authenticated:
            who = tls.peer_identity(context) or ""
            if not cluster_member(who, self.dealer.n_parties, self.clients):
                message = (f"dealer refuses a health check from {who or 'an unauthenticated caller'}: "
                           f"not a process or client of this cluster")
                log.warning("%s", message)
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
        d = self.dealer
        return pb.HealthReply(n_parties=d.n_parties, ready=True, version=VERSION,
                              uptime_s=time.monotonic() - self.started, jobs=d.jobs_served, sessions=d.sessions,
                              detail=f"dealer: session {d.epoch.hex()[:8]}, {d.joined} of {d.n_parties} parties "
                                     f"joined; {d.jobs_served} jobs served in {d.sessions} sessions "
                                     f"({d.bytes_sent / 1e6:.1f} MB of corrections)")

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Health": grpc.unary_unary_rpc_method_handler(
                self.health, request_deserializer=pb.HealthRequest.FromString,
                response_serializer=pb.HealthReply.SerializeToString),
        })


__all__ = ["DealerHealth"]
