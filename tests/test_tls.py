"""TLS material and the rules around it, without processes: identities, SANs, the loopback rule."""

import pytest
from cryptography import x509

from mpc.cli import main as cli_main
from mpc.net import tls


def test_certs_command_writes_a_ca_and_one_identity_per_process(tmp_path):
    with pytest.raises(SystemExit) as info:
        cli_main(["certs", "--out", str(tmp_path), "--parties", "2", "--host", "10.1.2.3", "--host", "node.example"])
    assert info.value.code == 0
    for identity in ["party-0", "party-1", "dealer", "coordinator", "client-local"]:
        creds = tls.Credentials.load(tmp_path, identity)
        cert = x509.load_pem_x509_certificate(creds.cert_pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"mpc://{identity}"]
        assert {identity, "localhost", "node.example"} <= set(san.get_values_for_type(x509.DNSName))
        assert {"127.0.0.1", "10.1.2.3"} <= {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
        assert (tmp_path / f"{identity}.key").stat().st_mode & 0o077 == 0  # keys readable by their owner only
    assert not (tmp_path / "party-2.pem").exists()


def test_a_certificate_under_another_name_is_not_loaded(tmp_path):
    tls.make_cluster_certs(tmp_path, 2)
    (tmp_path / "party-0.pem").write_bytes((tmp_path / "party-1.pem").read_bytes())
    with pytest.raises(tls.TLSError, match="certificate of 'party-1', not of 'party-0'"):
        tls.Credentials.load(tmp_path, "party-0")
    with pytest.raises(tls.TLSError, match="cannot read TLS material for party-7"):
        tls.Credentials.load(tmp_path, "party-7")
    other = tls.CertificateAuthority.create("another CA").issue("dealer")
    tls.write_credentials(tmp_path, other)
    with pytest.raises(tls.TLSError, match="dealer.pem was not issued by the CA"):
        tls.Credentials.load(tmp_path, "dealer")


class Context:
    def __init__(self, auth):
        self.auth = auth

    def auth_context(self):
        return self.auth


@pytest.mark.parametrize("auth,identity", [
    ({"transport_security_type": [b"ssl"], "x509_common_name": [b"party-1"], "peer_uri": [b"mpc://party-1"]},
     "party-1"),
    ({"transport_security_type": [b"ssl"], "x509_common_name": [b"party-1"], "peer_uri": [b"mpc://party-0"]}, None),
    ({"transport_security_type": [b"ssl"], "x509_common_name": [b"party-1", b"party-2"]}, None),
    ({"transport_security_type": [b"ssl"], "x509_common_name": [b"Mallory"]}, None),
    ({"transport_security_type": [b"insecure"], "x509_common_name": [b"party-1"]}, None),
    ({}, None)])
def test_peer_identity_is_the_certificate_name_or_nothing(auth, identity):
    assert tls.peer_identity(Context(auth)) == identity


def test_identities():
    assert tls.party_id("party-3") == 3 and tls.party_id("party-03") is None
    assert tls.party_id("dealer") is None and tls.party_id("client-party-1") is None
    with pytest.raises(tls.TLSError):
        tls.check_identity("Party-1")


@pytest.mark.parametrize("address,loopback", [
    ("127.0.0.1:5000", True), ("127.3.4.5:1", True), ("localhost:80", True), ("[::1]:7", True),
    ("0.0.0.0:0", False), ("10.0.0.1:5000", False), ("example.org:443", False), ("[::]:1", False)])
def test_loopback_rule(address, loopback):
    assert tls.is_loopback(address) == loopback
    if loopback:
        tls.require_loopback({"x": address})
    else:
        pattern = "plaintext refused for x at " + address.replace("[", ".").replace("]", ".")
        with pytest.raises(tls.TLSError, match=pattern):
            tls.require_loopback({"x": address})
