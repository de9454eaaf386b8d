"""Certificates and mutual TLS: a cluster CA, a key and certificate per process, and the
one place where a peer's identity is read from its verified certificate.

Identities are "party-K", "dealer", "coordinator" and "client-NAME". Each certificate
carries its identity as subject CN, as a URI SAN "mpc://IDENTITY" and as a DNS SAN: a
client dials a peer with `grpc.ssl_target_name_override` set to the identity it expects,
so gRPC's own hostname check proves it reached party K and not any holder of a CA-signed
certificate. The usual DNS and IP SANs (localhost, 127.0.0.1, and the hosts given) are
there too, for tools that dial by address.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

DEALER = "dealer"
COORDINATOR = "coordinator"
CA_CERT = "ca.pem"
CA_KEY = "ca.key"
URI_PREFIX = "mpc://"
_IDENTITY = re.compile(r"^(party-(0|[1-9][0-9]{0,3})|dealer|coordinator|client-[a-z0-9][a-z0-9-]{0,40})$")
_DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
VALIDITY = datetime.timedelta(days=365)


class TLSError(ValueError):
    """Missing or unusable TLS material, or a plaintext address that is not loopback."""


def party_name(pid: int) -> str:
    return f"party-{pid}"


def client_name(name: str) -> str:
    return f"client-{name}"


def party_id(identity: str | None) -> int | None:
    """K for "party-K", else None (a dealer, coordinator or client is no party)."""
    if identity and identity.startswith("party-") and _IDENTITY.match(identity):
        return int(identity[len("party-"):])
    return None


def check_identity(identity: str) -> str:
    if not _IDENTITY.match(identity):
        raise TLSError(f"{identity!r} is not an identity (party-K, dealer, coordinator or client-NAME, lower case)")
    return identity


@dataclass(frozen=True)
class Credentials:
    """One process's TLS material: its identity, the cluster CA, its certificate and key (PEM)."""

    identity: str
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def server_credentials(self) -> grpc.ServerCredentials:
        # require_client_auth: a peer without a certificate from this CA never reaches a handler.
        return grpc.ssl_server_credentials([(self.key_pem, self.cert_pem)], root_certificates=self.ca_pem,
                                           require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca_pem, private_key=self.key_pem,
                                            certificate_chain=self.cert_pem)

    @classmethod
    def load(cls, directory: str | os.PathLike, identity: str) -> "Credentials":
        """ca.pem, IDENTITY.pem and IDENTITY.key from `directory` (as `mpc certs` writes them)."""
        d = Path(directory)
        check_identity(identity)
        return cls.load_files(identity, d / CA_CERT, d / f"{identity}.pem", d / f"{identity}.key")

    @classmethod
    def load_files(cls, identity: str, ca_path: str | os.PathLike, cert_path: str | os.PathLike,
                   key_path: str | os.PathLike) -> "Credentials":
        """The CA certificate, this process's certificate and its key from three files: the
        certificate must name `identity` and be issued by that CA."""
        check_identity(identity)
        ca_path, cert_path, key_path = Path(ca_path), Path(cert_path), Path(key_path)
        try:
            ca, cert, key = (path.read_bytes() for path in (ca_path, cert_path, key_path))
        except OSError as exc:
            raise TLSError(f"cannot read TLS material for {identity} in {cert_path.parent}: "
                           f"{exc.strerror}: {exc.filename}") from None
        try:
            parsed, ca_cert = x509.load_pem_x509_certificate(cert), x509.load_pem_x509_certificate(ca)
        except ValueError as exc:
            raise TLSError(f"cannot parse the certificates for {identity} in {cert_path.parent}: {exc}") from None
        got = _cert_identity(parsed)
        if got != identity:
            raise TLSError(f"{cert_path} is the certificate of {got!r}, not of {identity!r}")
        try:  # caught here, it is a clear start-up error; at the handshake, an opaque UNAVAILABLE
            parsed.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            raise TLSError(f"{cert_path} was not issued by the CA in {ca_path}") from None
        try:
            private = serialization.load_pem_private_key(key, password=None)
        except (ValueError, TypeError) as exc:
            raise TLSError(f"{key_path} is not an unencrypted PEM private key: {exc}") from None
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if private.public_key().public_bytes(*spki) != parsed.public_key().public_bytes(*spki):
            raise TLSError(f"{key_path} is not the key of the certificate {cert_path}")
        return cls(identity, ca, cert, key)

    @property
    def not_after(self) -> datetime.datetime:
        """When this process's certificate expires (UTC)."""
        return x509.load_pem_x509_certificate(self.cert_pem).not_valid_after_utc


def channel_options(expected_identity: str | None) -> list[tuple[str, str]]:
    """Options that make a TLS channel accept only the server holding `expected_identity`."""
    return [("grpc.ssl_target_name_override", expected_identity)] if expected_identity else []


def peer_identity(context) -> str | None:
    """The identity in the verified client certificate of this call, or None without TLS.

    The only place identities are read: every check of who is asking goes through here,
    never through a field of the request. A CN and a URI SAN that disagree count as none."""
    if context is None:
        return None
    auth = context.auth_context()
    if auth.get("transport_security_type") != [b"ssl"]:
        return None
    cns = auth.get("x509_common_name") or []
    if len(cns) != 1:
        return None
    identity = cns[0].decode("utf-8", "replace")
    uris = [u.decode("utf-8", "replace") for u in auth.get("peer_uri", []) if u.startswith(URI_PREFIX.encode())]
    if uris and uris != [URI_PREFIX + identity]:
        log.warning("certificate CN %r disagrees with its URI SAN %r: no identity", identity, uris)
        return None
    return identity if _IDENTITY.match(identity) else None


# -- loopback rule -------------------------------------------------------------------------------------


def host_of(address: str) -> str:
    """The host part of host:port, [v6]:port, or a bare host."""
    if address.startswith("["):
        return address[1:address.index("]")]
    return address.rsplit(":", 1)[0] if address.count(":") == 1 else address


def is_loopback(address: str) -> bool:
    host = host_of(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_loopback(addresses: dict[str, str]) -> None:
    """Plaintext is allowed only between loopback addresses: refuse any other, by name."""
    bad = [f"{who} at {addr}" for who, addr in addresses.items() if not is_loopback(addr)]
    if bad:
        raise TLSError(f"plaintext refused for {', '.join(bad)}: without TLS only loopback addresses are allowed "
                       f"(give --certs DIR from `mpc certs`)")


# -- the certificate authority -------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_identity(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _san_entries(identity: str, hosts) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(URI_PREFIX + identity), x509.DNSName(identity)]
    for host in dict.fromkeys((*_DEFAULT_HOSTS, *hosts)):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


class CertificateAuthority:
    """A cluster's own CA (ECDSA P-256): it signs every process's certificate."""

    def __init__(self, key, cert: x509.Certificate):
        self.key, self.cert = key, cert

    @classmethod
    def create(cls, name: str = "mpc cluster CA") -> "CertificateAuthority":
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                             crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "CertificateAuthority":
        """The CA that `write` (with its key) left in `directory`."""
        d = Path(directory)
        try:
            cert = x509.load_pem_x509_certificate((d / CA_CERT).read_bytes())
            key = serialization.load_pem_private_key((d / CA_KEY).read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise TLSError(f"cannot load the CA of {d}: {exc}") from None
        return cls(key, cert)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, identity: str, hosts=()) -> Credentials:
        """A key and certificate for `identity`, valid as TLS server and client, with its SANs."""
        check_identity(identity)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(_name(identity)).issuer_name(self.cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName(_san_entries(identity, hosts)), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(self.key, hashes.SHA256()))
        return Credentials(identity, self.cert_pem, cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))

    def write(self, directory: str | os.PathLike, with_key: bool = True) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / CA_CERT).write_bytes(self.cert_pem)
        if with_key:
            _write_secret(d / CA_KEY, _pem_key(self.key))


def write_credentials(directory: str | os.PathLike, creds: Credentials) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{creds.identity}.pem").write_bytes(creds.cert_pem)
    _write_secret(d / f"{creds.identity}.key", creds.key_pem)


def _write_secret(path: Path, data: bytes) -> None:
    """A private key, readable by its owner only from the moment it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_cluster_certs(directory: str | os.PathLike, n_parties: int, hosts=(), clients=("local",),
                       ca_key: bool = True) -> CertificateAuthority:
    """A CA and the certificates of parties 0..n-1, the dealer, the coordinator and the clients."""
    if n_parties < 2:
        raise TLSError(f"a cluster has at least 2 parties, not {n_parties}")
    ca = CertificateAuthority.create()
    ca.write(directory, with_key=ca_key)
    names = [party_name(p) for p in range(n_parties)] + [DEALER, COORDINATOR] + [client_name(c) for c in clients]
    for identity in names:
        write_credentials(directory, ca.issue(identity, hosts))
    return ca


def split_by_identity(directory: str | os.PathLike) -> list[Path]:
    """For each IDENTITY.pem/.key pair in `directory`, a subdirectory IDENTITY/ with ca.pem and
    that pair only: what one host receives (never ca.key, never another process's key)."""
    d = Path(directory)
    made = []
    for cert in sorted(d.glob("*.pem")):
        identity = cert.stem
        if cert.name == CA_CERT or not (d / f"{identity}.key").exists() or not _IDENTITY.match(identity):
            continue
        own = d / identity
        own.mkdir(mode=0o700, exist_ok=True)
        (own / CA_CERT).write_bytes((d / CA_CERT).read_bytes())
        (own / cert.name).write_bytes(cert.read_bytes())
        _write_secret(own / f"{identity}.key", (d / f"{identity}.key").read_bytes())
        made.append(own)
    return made
