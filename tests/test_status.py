"""`mpc status`: a real cluster started from its file (every process answering Health, the
dealer with the jobs it served; a caller the file does not list refused), then with a party
dead and the dealer frozen."""

import asyncio
import datetime
import os
import signal
import time

import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mpc import status
from mpc.cli import main as cli_main
from mpc.net import VERSION, tls
from mpc.net.config import ClusterConfig
from mpc.net.proto import mpc_pb2 as pb
from mpc.remote import RemoteCluster
from tests.cluster_files import start_cluster, stop_all, write_cluster


@pytest.mark.slow
def test_status_of_a_cluster_then_with_a_party_down_and_the_dealer_frozen(tmp_path, capsys):
    path = write_cluster(tmp_path, 3)
    config = ClusterConfig.load(path)
    procs = start_cluster(path, 3)
    try:
        with pytest.raises(SystemExit) as info:
            cli_main(["status", "--cluster", str(path)])
        out = capsys.readouterr().out
        assert info.value.code == 0, out
        for identity in config.identities():
            assert identity in out and config.address_of(identity) in out
        with RemoteCluster.from_file(str(path), str(tmp_path / "certs")) as cluster:  # jobs for the dealer to serve
            a = cluster.share(torch.arange(4.0), owner=0)
            assert (a * a).reveal().tolist() == [0.0, 1.0, 4.0, 9.0]
            cluster.free(a)  # nothing left kept: the parties' rows say so below
        statuses = asyncio.run(status.probe_all(config, status.caller_credentials(config, None, None), 3.0))
        assert [s.identity for s in statuses] == ["party-0", "party-1", "party-2", "dealer", "coordinator"]
        assert all(s.version == VERSION and s.uptime != status.NA for s in statuses), statuses  # from Health
        in_a_year = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=365)
        for s in statuses:
            assert s.ok and s.cert_source == "served" and abs(s.cert_expires - in_a_year) < datetime.timedelta(1)
        assert all(s.kept_values == 0 and s.jobs == "0" for s in statuses[:3]), statuses[:3]
        dealer = statuses[3]
        served = int(dealer.jobs.split()[0])  # one product (its truncation skipped): a job or two of corrections
        assert served >= 1 and dealer.jobs == f"{served} served, 1 session" and dealer.kept_values is None, dealer
        probe = ["status", "--cluster", str(path), "--local", "--certs", str(tmp_path / "certs"), "--timeout", "2"]
        for identity in ("party-0", "dealer"):  # a readiness probe: one process, on its own host, as itself
            with pytest.raises(SystemExit) as info:
                cli_main([*probe, "--only", identity, "--as", identity])
            out = capsys.readouterr().out
            assert info.value.code == 0 and "127.0.0.1:" in out and identity in out and "party-1" not in out, out
            assert VERSION in out and (identity != "dealer" or f"{served} served" in out), out

        # Health is the cluster's business: a certificate of the cluster's CA that the file
        # does not list is refused by a party and by the dealer alike
        certs = tmp_path / "certs"
        ca = tls.CertificateAuthority(serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None),
                                      x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes()))
        refused = asyncio.run(status.probe_all(config, ca.issue("client-eve"), 3.0,
                                               only=["party-0", "dealer", "coordinator"]))
        for s in refused:
            assert s.reachable and not s.ok and s.version == status.NA, s
            assert s.state.startswith("no health: PERMISSION_DENIED") and "client-eve" in s.state, s
            assert "not a process or client of this cluster" in s.state, s

        procs["party-1"].proc.kill()
        procs["party-1"].proc.wait()
        os.kill(procs["dealer"].proc.pid, signal.SIGSTOP)  # accepts TCP, never answers the handshake
        try:
            t0 = time.monotonic()
            with pytest.raises(SystemExit) as info:
                cli_main(["status", "--cluster", str(path), "--timeout", "2"])
            assert time.monotonic() - t0 < 10  # bounded: no hanging on the frozen dealer
            assert info.value.code == 1
            statuses = {s.identity: s for s in asyncio.run(status.probe_all(
                config, status.caller_credentials(config, None, None), 2.0))}
        finally:
            os.kill(procs["dealer"].proc.pid, signal.SIGCONT)
        out = capsys.readouterr().out
        assert "unreachable" in out
        with pytest.raises(SystemExit) as info:
            cli_main([*probe, "--only", "party-1", "--as", "party-1"])
        assert info.value.code == 1
        assert not statuses["party-1"].reachable and "Connection refused" in statuses["party-1"].state
        assert not statuses["dealer"].reachable and statuses["dealer"].state == "unreachable: timed out"
        assert statuses["dealer"].cert_source == "file" and statuses["dealer"].cert_expires is not None
        # parties 0 and 2 stop on their own once they see party 1 gone (status 3): either state is right
    finally:
        stop_all(procs)


def test_status_refuses_a_bad_file_and_a_caller_without_certificate(tmp_path, capsys):
    (tmp_path / "c.toml").write_text("n_parties = 1\n")
    assert status.main(str(tmp_path / "c.toml")) == 2
    assert "n_parties: must be at least 2" in capsys.readouterr().err
    path = write_cluster(tmp_path, 2, hosts=["10.0.0.1", "10.0.0.2"], certs=False)
    assert status.main(str(path)) == 2
    assert "no certificate to connect with" in capsys.readouterr().err


def test_a_health_reply_fills_the_row():
    row = status.ProcessStatus("party-1", "10.0.0.2:50051", False, "")
    status._read_health(row, pb.HealthReply(pid=1, n_parties=3, ready=False, detail="connecting", kept_values=2,
                                            kept_bytes=3_000_000))
    assert row.reachable and not row.ok and row.state == "connecting" and row.kept_values == 2
    coordinator = status.ProcessStatus("coordinator", "10.0.0.9:50049", True, "ready")
    status._read_health(coordinator, pb.HealthReply(ready=True))
    assert coordinator.ok and coordinator.kept_values is None  # a coordinator keeps no values
    table = status.render([row, coordinator])
    assert [c.header for c in table.columns][:5] == ["process", "address", "reachable", "state",
                                                     "certificate expires"]
    assert status._duration(3700) == "1h 1m" and status._duration(90_000) == "1d 1h"
    dealer = status.ProcessStatus("dealer", "10.0.0.9:50050", True, "ready")
    status._read_health(dealer, pb.HealthReply(n_parties=3, ready=True, jobs=12, sessions=2, version="0.1.0",
                                               uptime_s=61))
    assert dealer.ok and dealer.jobs == "12 served, 2 sessions" and dealer.uptime == "1m 1s"
    assert dealer.kept_values is None
