"""`mpc status`: a real cluster started from its file, then with a party dead and the dealer frozen."""

import asyncio
import datetime
import os
import signal
import time

import pytest

from mpc import status
from mpc.cli import main as cli_main
from mpc.net.config import ClusterConfig
from mpc.net.proto import mpc_pb2 as pb
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
        statuses = asyncio.run(status.probe_all(config, status.caller_credentials(config, None, None), 3.0))
        assert [s.identity for s in statuses] == ["party-0", "party-1", "party-2", "dealer", "coordinator"]
        from mpc.net import VERSION

        assert all(s.version == VERSION for s in statuses if s.identity != "dealer"), statuses  # from Health
        in_a_year = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=365)
        for s in statuses:
            assert s.ok and s.cert_source == "served" and abs(s.cert_expires - in_a_year) < datetime.timedelta(1)
        assert all(s.kept_values == 0 for s in statuses[:3])
        probe = ["status", "--cluster", str(path), "--local", "--certs", str(tmp_path / "certs"), "--timeout", "2"]
        with pytest.raises(SystemExit) as info:  # a readiness probe: one process, on its own host, as itself
            cli_main([*probe, "--only", "party-0", "--as", "party-0"])
        out = capsys.readouterr().out
        assert info.value.code == 0 and "127.0.0.1:" in out and "party-0" in out and "party-1" not in out

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
