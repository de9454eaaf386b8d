"""`mpc status --cluster cluster.toml`: every process of a cluster, reachable or not, in one table.

For each process of the file it dials the address over mutual TLS as the caller's identity
and checks the server's certificate names that process; the certificate's expiry is read
from what the server presents (from the file's certificate when the server is down). Every
process then answers Health on its own service (Party, Dealer, Coordinator): ready or why
not, its version and uptime; a party also the values it keeps and its running jobs, the
dealer the jobs it served and the sessions it began. Every probe has its own timeout, so a
process that is down or frozen shows as unreachable instead of hanging. A field a process
does not send (an older version) shows as "n/a"; a process without a Health method at all
counts as ready once it answers.

`--only IDENTITY --local` is a readiness probe for one process on its own host (a container's
readiness check): it dials 127.0.0.1 at the port of that process's address, still checking
the certificate names it, and exits 0 only when it is reachable and ready.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509

from mpc.net import tls
from mpc.net.config import ClusterConfig, ConfigError
from mpc.net.proto import mpc_pb2 as pb

NA = "n/a"
# The gRPC service whose Health method each kind of process serves.
HEALTH_SERVICES = {"party": "mpc.net.proto.Party", "dealer": "mpc.net.proto.Dealer",
                   "coordinator": "mpc.net.proto.Coordinator"}


@dataclass
class ProcessStatus:
    identity: str
    address: str
    reachable: bool
    state: str                           # ready, connecting, or why it is not reachable
    cert_expires: datetime.datetime | None = None
    cert_source: str = ""                # "served" (read from the live server) or "file"
    kept_values: int | None = None
    kept_bytes: int | None = None
    version: str = NA                    # not served yet (see the module docstring)
    uptime: str = NA
    jobs: str = NA

    @property
    def ok(self) -> bool:
        return self.reachable and self.state == "ready"


def caller_credentials(config: ClusterConfig, certs: str | None, identity: str | None) -> tls.Credentials | None:
    """Who `mpc status` connects as: --certs/--as, else the first usable certificate in the
    certificate directories the file names (a client's, then the coordinator's, ...)."""
    dirs = [Path(certs)] if certs else list(dict.fromkeys(
        Path(config.entry(i).certs) for i in config.identities() if config.entry(i).certs))
    for d in dirs:
        names = [identity] if identity else (sorted(p.stem for p in d.glob("client-*.pem"))
                                             + [tls.COORDINATOR, tls.DEALER] + config.identities())
        for name in dict.fromkeys(names):
            try:
                return tls.Credentials.load(d, name)
            except tls.TLSError:
                continue
    return None


def _served_certificate(address: str, creds: tls.Credentials, expected: str, timeout: float) -> x509.Certificate:
    """The certificate the server at `address` presents in a mutual-TLS handshake, checked to
    name `expected` and to come from the cluster CA (what gRPC checks, done with ssl)."""
    host, _, port = address.rpartition(":")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=creds.ca_pem.decode())
    with tempfile.NamedTemporaryFile() as cert, tempfile.NamedTemporaryFile() as key:
        cert.write(creds.cert_pem), key.write(creds.key_pem)
        cert.flush(), key.flush()
        ctx.load_cert_chain(cert.name, key.name)
    ctx.set_alpn_protocols(["h2"])  # gRPC servers speak only HTTP/2
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=expected) as conn:  # hostname check: the identity SAN
            return x509.load_der_x509_certificate(conn.getpeercert(binary_form=True))


def _channel(address: str, creds: tls.Credentials | None, identity: str) -> grpc.aio.Channel:
    """A channel to one process (not mpc.net.mesh.client_channel: that imports torch, and a
    readiness probe that runs every few seconds should start in a fraction of one)."""
    if creds is None:
        tls.require_loopback({identity: address})
        return grpc.aio.insecure_channel(address)
    return grpc.aio.secure_channel(address, creds.channel_credentials(), options=tls.channel_options(identity))


def _file_expiry(config: ClusterConfig, identity: str) -> datetime.datetime | None:
    try:
        return config.entry(identity).credentials(identity).not_after
    except (tls.TLSError, OSError):
        return None


def local_address(address: str) -> str:
    """127.0.0.1 at the port of `address`: where a process on this host also answers."""
    return f"127.0.0.1:{address.rpartition(':')[2]}"


async def _probe(config: ClusterConfig, identity: str, creds: tls.Credentials | None,
                 timeout: float, local: bool = False) -> ProcessStatus:
    address = config.address_of(identity)
    if local:
        address = local_address(config.listen_address(identity))
    status = ProcessStatus(identity, address, False, "")
    if creds is not None:
        try:
            cert = await asyncio.wait_for(asyncio.to_thread(_served_certificate, address, creds, identity, timeout),
                                          timeout + 1)
            status.reachable, status.state = True, "ready"
            status.cert_expires, status.cert_source = cert.not_valid_after_utc, "served"
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            status.state = f"unreachable: {_reason(exc)}"
    if status.cert_expires is None:
        status.cert_expires = _file_expiry(config, identity)
        status.cert_source = "file" if status.cert_expires else ""
    service = HEALTH_SERVICES[identity.split("-")[0]]
    if creds is not None and not status.reachable:
        return status  # no TLS handshake: no call would do better
    channel = _channel(address, creds, identity)
    try:
        health = channel.unary_unary(f"/{service}/Health", request_serializer=pb.HealthRequest.SerializeToString,
                                     response_deserializer=pb.HealthReply.FromString)
        _read_health(status, await health(pb.HealthRequest(), timeout=timeout))
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # an older process without Health: it answered
            status.reachable, status.state = True, "ready"
        elif status.reachable:  # the TLS handshake worked; the call did not
            status.state = f"no health: {exc.code().name}: {exc.details()}"
        else:
            status.state = f"unreachable: {exc.code().name}"
    except asyncio.TimeoutError:
        status.state = f"unreachable: no answer within {timeout:.0f} s"
    finally:
        await channel.close(grace=None)
    return status


def _read_health(status: ProcessStatus, reply: pb.HealthReply) -> None:
    """Fill `status` from a Health reply, including the fields a newer reply has (jobs,
    version, uptime_s) when the generated code knows them."""
    status.reachable = True
    status.state = "ready" if reply.ready else (reply.detail or "not ready")
    fields = pb.HealthReply.DESCRIPTOR.fields_by_name
    if tls.party_id(status.identity) is not None:
        status.kept_values, status.kept_bytes = reply.kept_values, reply.kept_bytes
    if "jobs" in fields:
        status.jobs = str(reply.jobs)
    if status.identity == tls.DEALER and "sessions" in fields:  # the dealer's jobs are those it served
        status.jobs = f"{reply.jobs} served, {reply.sessions} session{'s' if reply.sessions != 1 else ''}"
    if "version" in fields and reply.version:
        status.version = reply.version
    if "uptime_s" in fields and reply.uptime_s:
        status.uptime = _duration(reply.uptime_s)


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    days, h = divmod(hours, 24)
    return f"{days}d {h}h" if days else f"{h}h {m}m" if h else f"{m}m {s}s"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate refused: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


async def probe_all(config: ClusterConfig, creds: tls.Credentials | None, timeout: float = 3.0,
                    only: list[str] | None = None, local: bool = False) -> list[ProcessStatus]:
    """One ProcessStatus per process of the file (or of `only`), probed concurrently, within
    about `timeout` s; `local`: each at 127.0.0.1 (see local_address)."""
    names = only or config.identities()
    return list(await asyncio.gather(*(_probe(config, i, creds, timeout, local) for i in names)))


def render(statuses: list[ProcessStatus], now: datetime.datetime | None = None):
    """The statuses as a rich Table."""
    from rich.table import Table

    now = now or datetime.datetime.now(datetime.timezone.utc)
    table = Table(title="cluster status")
    for column in ("process", "address", "reachable", "state", "certificate expires", "version", "uptime",
                   "jobs", "kept"):
        table.add_column(column)
    for s in statuses:
        expiry = NA
        if s.cert_expires is not None:
            days = (s.cert_expires - now).days
            expiry = f"{s.cert_expires:%Y-%m-%d} ({days} d{', ' + s.cert_source if s.cert_source == 'file' else ''})"
            if days < 30:
                expiry = f"[red]{expiry}[/red]"
        kept = NA if s.kept_values is None else f"{s.kept_values} ({s.kept_bytes / 1e6:.1f} MB)"
        table.add_row(s.identity, s.address, "[green]yes[/green]" if s.reachable else "[red]no[/red]",
                      s.state if s.ok else f"[red]{s.state}[/red]", expiry, s.version, s.uptime, s.jobs, kept)
    return table


def main(path: str, timeout: float = 3.0, identity: str | None = None, certs: str | None = None,
         only: list[str] | None = None, local: bool = False) -> int:
    """Print the table; 0 when every process is reachable and ready, 1 otherwise, 2 on a bad file."""
    from rich.console import Console

    try:
        config = ClusterConfig.load(path)
    except ConfigError as exc:
        print(f"mpc status: {exc}", file=sys.stderr)
        return 2
    for name in only or ():
        if name not in config.identities():
            print(f"mpc status: --only {name}: not a process of {path} ({', '.join(config.identities())})",
                  file=sys.stderr)
            return 2
    creds = caller_credentials(config, certs, identity)
    if creds is None:
        try:
            tls.require_loopback({i: config.address_of(i) for i in config.identities()})
        except tls.TLSError:
            print(f"mpc status: no certificate to connect with: give --certs DIR (and --as IDENTITY)",
                  file=sys.stderr)
            return 2
    statuses = asyncio.run(probe_all(config, creds, timeout, only, local))
    Console(width=200).print(render(statuses))
    return 0 if all(s.ok for s in statuses) else 1
