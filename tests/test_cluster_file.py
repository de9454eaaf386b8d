"""The cluster file: what it holds, how each error is named, and processes started from it."""

import json
import os
import shutil
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from mpc.cli import main as cli_main
from mpc.demo import write_files
from mpc.models import MLP
from mpc.net import tls
from mpc.net.config import ClusterConfig, ConfigError, ProcessEntry
from mpc.remote import RemoteCluster
from parties import _process
from tests.cluster_files import ROOT, runtime_env_unset, start, start_cluster, stop_all, write_cluster

GOOD = """\
n_parties = 3
connect_timeout = 5.0
[dealer]
address = "10.0.0.9:50050"
certs = "certs"
listen = "0.0.0.0:50050"
[coordinator]
address = "10.0.0.9:50049"
clients = ["client-alice"]
certs = "/etc/mpc/certs"
[[parties]]
pid = 0
address = "10.0.0.1:50051"
certs = "certs"
data = "data-0"
operator = "client-alice"
[[parties]]
pid = 1
address = "10.0.0.2:50051"
ca = "ca.pem"
cert = "p1.pem"
key = "p1.key"
[[parties]]
pid = 2
address = "[fd00::3]:50051"
"""

TRAIN_JOB = """
[model]
factory = "mpc.models:MLP"
kwargs = { sizes = [64, 16, 16, 10] }
owner = 0
[training]
loss = "cross_entropy"
classes = 10
epochs = 1
batch_size = 128
reveal_loss_every = 4
[optimizer]
name = "sgd"
lr = 0.1
[data]
split = "rows"
[[data.parties]]
party = 0
file = "digits/party-0.csv"
label = "label"
[[data.parties]]
party = 1
file = "digits/party-1.csv"
label = "label"
[[data.parties]]
party = 2
file = "digits/party-2.csv"
label = "label"
[output]
model = "shared"
directory = "run"
"""


def test_a_cluster_file_names_every_process_and_its_files(tmp_path):
    (tmp_path / "cluster.toml").write_text(GOOD)
    config = ClusterConfig.load(tmp_path / "cluster.toml")
    assert config.parties == {0: "10.0.0.1:50051", 1: "10.0.0.2:50051", 2: "[fd00::3]:50051"}
    assert (config.dealer, config.coordinator, config.clients) == ("10.0.0.9:50050", "10.0.0.9:50049",
                                                                   ("client-alice",))
    assert config.operators == {0: "client-alice"} and config.connect_timeout == 5.0
    assert config.identities() == ["party-0", "party-1", "party-2", "dealer", "coordinator"]
    # relative paths are the file's directory's; absolute ones stay
    assert config.entry("party-0") == ProcessEntry(certs=str(tmp_path / "certs"), data=str(tmp_path / "data-0"))
    assert config.entry("party-1").cert == str(tmp_path / "p1.pem")
    assert config.entry("coordinator").certs == "/etc/mpc/certs"
    assert config.listen_address("dealer") == "0.0.0.0:50050" and config.listen_address("party-2") == "[fd00::3]:50051"
    again = ClusterConfig.from_toml(config.to_toml())
    assert (again.parties, again.processes, again.operators, again.clients) == (
        config.parties, config.processes, config.operators, config.clients)


def test_the_earlier_form_without_files_still_loads():
    text = ClusterConfig(2, "127.0.0.1:1", {0: "127.0.0.1:2", 1: "127.0.0.1:3"}).to_toml()
    config = ClusterConfig.from_toml(text)
    assert config.parties == {0: "127.0.0.1:2", 1: "127.0.0.1:3"} and config.processes["party-0"] == ProcessEntry()


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('pid = 2', 'pid = 1'), "parties[2].pid: party 1 is listed twice"),
    (lambda t: t.replace('address = "10.0.0.2:50051"\n', ''), "parties[1].address: missing"),
    (lambda t: t.replace('"10.0.0.2:50051"', '"10.0.0.2"'), "parties[1].address: '10.0.0.2' is not host:port (a port from 0 to 65535)"),
    (lambda t: t.replace('"10.0.0.2:50051"', '"10.0.0.1:50051"'),
     "parties[1].address: 10.0.0.1:50051 is also the address of parties[0]"),
    (lambda t: t.replace('"[fd00::3]:50051"', '"fd00::3:50051"'), "parties[2].address: 'fd00::3:50051': an IPv6"),
    (lambda t: t.replace('[dealer]\naddress = "10.0.0.9:50050"\n', '[dealer]\n'), "dealer.address: missing"),
    (lambda t: t.replace('n_parties = 3', 'n_parties = 4'), "parties: n_parties = 4: the file must list parties 0..3"),
    (lambda t: t.replace('n_parties = 3', 'n_parties = "3"'), "n_parties: must be an integer, not '3'"),
    (lambda t: t.replace('connect_timeout = 5.0', 'connect_timeout = -1'), "connect_timeout: must be at least"),
    (lambda t: t.replace('data = "data-0"', 'dta = "data-0"'), "parties[0].dta: unknown key"),
    (lambda t: t.replace('key = "p1.key"\n', ''), "parties[1].key: missing: with ca, cert give ca, cert and key"),
    (lambda t: t.replace('"client-alice"]', '"alice"]'), "coordinator.clients[0]: 'alice' is not an identity"),
    (lambda t: t.replace('operator = "client-alice"', 'operator = "party-1"'),
     "parties[0].operator: 'party-1' is not a client identity"),
    (lambda t: t + "[[parties]\n", "not valid TOML"),
])
def test_each_error_names_the_file_the_key_and_the_problem(tmp_path, edit, message):
    path = tmp_path / "cluster.toml"
    path.write_text(edit(GOOD))
    with pytest.raises(ConfigError) as info:
        ClusterConfig.load(path)
    assert f"{path}: " in str(info.value) and message in str(info.value), str(info.value)


def test_every_structural_error_is_reported_at_once(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(GOOD.replace('pid = 2', 'pid = 1').replace('address = "10.0.0.9:50050"\n', ''))
    lines = str(pytest.raises(ConfigError, ClusterConfig.load, path).value).splitlines()
    assert lines == [f"{path}: dealer.address: missing", f"{path}: parties[2].pid: party 1 is listed twice",
                     f"{path}: parties: n_parties = 3: the file must list parties 0..2, it lists [0, 1]"]
    with pytest.raises(ConfigError, match="cannot read cluster file .*nothing.toml: No such file"):
        ClusterConfig.load(tmp_path / "nothing.toml")


def test_a_process_checks_its_own_entry(tmp_path):
    path = write_cluster(tmp_path, 3)
    config = ClusterConfig.load(path)
    config.check_certificates()
    creds = config.check_process("party-1")
    assert creds.identity == "party-1" and config.check_process("dealer").identity == "dealer"
    with pytest.raises(ConfigError, match=f"{path}: party 7 is not in the file \\(it lists parties 0, 1, 2\\)"):
        config.check_process("party-7")
    assert config.check_process("coordinator").identity == "coordinator"
    with pytest.raises(ConfigError, match="no \\[coordinator\\] table"):
        ClusterConfig.load(write_cluster(tmp_path / "alone", 3, coordinator=False)).check_process("coordinator")
    (tmp_path / "data-2").rmdir()
    with pytest.raises(ConfigError, match=f"parties\\[2\\].data: {tmp_path}/data-2 is not a directory"):
        config.check_process("party-2")
    certs = tmp_path / "certs"
    (certs / "party-0.pem").write_bytes((certs / "party-1.pem").read_bytes())
    with pytest.raises(ConfigError, match="parties\\[0\\].certs: .*party-0.pem is the certificate of 'party-1', "
                                          "not of 'party-0'"):
        config.check_process("party-0")
    (certs / "dealer.key").unlink()
    with pytest.raises(ConfigError, match="dealer.certs: cannot read TLS material for dealer .*dealer.key"):
        config.check_process("dealer")
    with pytest.raises(ConfigError) as info:
        config.check_certificates()
    assert "parties[0].certs" in str(info.value) and "dealer.certs" in str(info.value)


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path):
    tls.make_cluster_certs(tmp_path, 2)
    entry = ProcessEntry(ca=str(tmp_path / "ca.pem"), cert=str(tmp_path / "party-0.pem"),
                         key=str(tmp_path / "party-1.key"))
    with pytest.raises(tls.TLSError, match="party-1.key is not the key of the certificate .*party-0.pem"):
        entry.credentials("party-0")
    entry = ProcessEntry(ca=str(tmp_path / "ca.pem"), cert=str(tmp_path / "party-0.pem"),
                         key=str(tmp_path / "party-0.key"))
    assert entry.credentials("party-0").not_after > entry.credentials("party-0").not_after.replace(year=2000)


@pytest.mark.parametrize("argv, message", [
    (["party", "--id", "7"], "party-7: refusing to start: .*party 7 is not in the file"),
    (["party", "--id", "0"], "party-0: refusing to start: .*parties\\[0\\].certs: .*certificate of 'party-1'"),
    (["dealer"], "dealer: refusing to start: .*dealer.certs: cannot read"),
    (["coordinator"], "coordinator: refusing to start: .*no \\[coordinator\\] table"),
    (["party", "--id", "1", "--insecure"], "plaintext refused for .*10.0.0.2"),
])
def test_a_process_with_a_wrong_id_or_certificate_refuses_to_start(tmp_path, capsys, argv, message):
    path = write_cluster(tmp_path, 3, coordinator=argv[0] != "coordinator")
    certs = tmp_path / "certs"
    (certs / "party-0.pem").write_bytes((certs / "party-1.pem").read_bytes())
    (certs / "dealer.pem").unlink()
    if "--insecure" in argv:
        path.write_text(path.read_text().replace("127.0.0.1", "10.0.0.2", 1))
    with pytest.raises(SystemExit) as info:
        cli_main([argv[0], "--cluster", str(path), *argv[1:]])
    assert info.value.code == 2
    assert pytest.importorskip("re").search(message, capsys.readouterr().err)


def test_the_runtime_environment_is_the_launchers_and_is_set_by_re_executing():
    code = ("from parties import _process; _process.reexec_with_runtime_env(['-c', "
            "'import os; print(os.environ[\"GLIBC_TUNABLES\"], os.environ[\"MPC_TORCH_THREADS\"])'])")
    env = runtime_env_unset()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.split() == [_process.MALLOC_TUNABLES, "1"], out.stderr
    env["MPC_TORCH_THREADS"] = "2"  # what the user set stays
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.split() == [_process.MALLOC_TUNABLES, "2"], out.stderr


@pytest.mark.slow
def test_a_cluster_starts_from_its_file_and_computes(tmp_path):
    path = write_cluster(tmp_path, 3)
    procs = start_cluster(path, 3)
    try:
        for proc in procs.values():  # re-executed with the launcher's environment
            environ = open(f"/proc/{proc.proc.pid}/environ", "rb").read().split(b"\0")
            assert any(e.startswith(b"GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432") for e in environ)
            assert b"MPC_TORCH_THREADS=1" in environ
        x, w = torch.randn(4, 5), torch.randn(5, 2)
        with RemoteCluster.from_file(str(path), str(tmp_path / "certs")) as cluster:
            got = (cluster.share(x, owner=0) @ cluster.share(w, owner=2)).reveal()
        assert torch.allclose(got.float(), x @ w, atol=1e-3)
        assert all(proc.proc.poll() is None for proc in procs.values())  # the client left them running
        remote = ["--cluster", str(path), "--certs", str(tmp_path / "certs")]
        # mpc infer and mpc train on the running cluster
        torch.manual_seed(0)
        model = MLP([64, 8, 8, 10])
        torch.save(model.state_dict(), tmp_path / "weights.pt")
        images = torch.rand(4, 64)
        np.save(tmp_path / "x.npy", images.numpy())
        with pytest.raises(SystemExit) as info:
            cli_main(["infer", "--model", "mpc.models:MLP", "--kwargs", '{"sizes": [64, 8, 8, 10]}', "--state-dict",
                      str(tmp_path / "weights.pt"), "--input", str(tmp_path / "x.npy"), "--output",
                      str(tmp_path / "y.npy"), *remote])
        assert info.value.code == 0
        assert torch.allclose(torch.from_numpy(np.load(tmp_path / "y.npy")).float(), model(images), atol=0.02)
        write_files(str(tmp_path / "digits"), 3)
        for p in range(3):  # each party's rows only in its own data directory: the client reads none
            shutil.move(tmp_path / "digits" / f"party-{p}.csv", tmp_path / f"data-{p}" / f"party-{p}.csv")
        (tmp_path / "job.toml").write_text(TRAIN_JOB)
        with pytest.raises(SystemExit) as info:
            cli_main(["train", str(tmp_path / "job.toml"), "--no-progress", *remote])
        assert info.value.code == 0
        metrics = json.loads((tmp_path / "run" / "job.metrics.json").read_text())
        assert metrics["steps"] == 11 and metrics["n_parties"] == 3  # 1437 rows in batches of 128
        assert metrics["losses"] and 0 < metrics["losses"][-1][1] < 2.4, metrics["losses"]  # ln 10 = 2.30 at start
    finally:
        stop_all(procs)


@pytest.mark.slow
def test_a_party_that_cannot_reach_a_peer_names_it_and_its_address(tmp_path):
    path = write_cluster(tmp_path, 3, connect_timeout=3.0)
    config = ClusterConfig.load(path)
    procs = {"dealer": start("dealer", ["dealer", "--cluster", str(path)]),
             "party-0": start("party-0", ["party", "--cluster", str(path), "--id", "0"])}
    try:
        t0 = time.monotonic()
        assert procs["party-0"].proc.wait(timeout=60) == 2
        assert time.monotonic() - t0 < 40
        err = procs["party-0"].stderr_tail()
        assert "unreachable" in err and (f"party 1 at {config.parties[1]}" in err
                                         or f"party 2 at {config.parties[2]}" in err), err
    finally:
        stop_all(procs)


def test_the_party_command_has_both_forms(tmp_path, capsys):
    from parties import dealer, party

    with pytest.raises(SystemExit) as info:
        party.main(["--cluster", str(tmp_path / "c.toml"), "--pid", "1"])
    assert info.value.code == 2 and "--cluster takes --id K" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        party.main(["--pid", "1"])
    assert "give --cluster FILE --id K, or --pid K --config FILE" in capsys.readouterr().err
    path = write_cluster(tmp_path, 3)
    for main, argv, message in [(party.main, ["--id", "7"], "party-7: refusing to start: "),
                                (dealer.main, ["--certs", str(tmp_path / "nowhere")],
                                 "dealer: refusing to start: cannot read TLS material for dealer")]:
        with pytest.raises(SystemExit) as info:
            main(["--cluster", str(path), *argv])
        assert info.value.code == 2 and message in capsys.readouterr().err
    assert os.environ.get("MPC_RUNTIME_ENV_SET") is None  # nothing above re-executed this process


@pytest.mark.slow
def test_the_coordinator_command_runs_the_coordinator_and_names_a_party_it_cannot_reach(tmp_path):
    path = write_cluster(tmp_path, 3, connect_timeout=3.0)
    proc = start("coordinator", ["coordinator", "--cluster", str(path)])
    try:
        assert proc.proc.wait(timeout=60) == 2  # no party is running: it says which, and stops
        assert re.search(r"coordinator: cannot start: party \d at 127\.0\.0\.1:\d+ is unreachable",
                         proc.stderr_tail()), proc.stderr_tail()
    finally:
        stop_all({"coordinator": proc})


def test_messages_name_a_party_by_its_place_in_the_file(tmp_path):
    tls.make_cluster_certs(tmp_path / "certs", 2)
    (tmp_path / "c.toml").write_text('n_parties = 2\n[dealer]\naddress = "127.0.0.1:5000"\n'
                                     '[[parties]]\npid = 1\naddress = "127.0.0.1:5002"\ncerts = "nowhere"\n'
                                     '[[parties]]\npid = 0\naddress = "127.0.0.1:5001"\ncerts = "certs"\n')
    config = ClusterConfig.load(tmp_path / "c.toml")
    assert config.check_process("party-0").identity == "party-0"
    with pytest.raises(ConfigError, match="c.toml: parties\\[0\\].certs: cannot read TLS material for party-1"):
        config.check_process("party-1")
