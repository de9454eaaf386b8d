"""deploy/: the example cluster files validate, the compose file and the Kubernetes manifests name
every process (the manifests checked against the Kubernetes API schemas, offline), the systemd
units start each process from the cluster file."""

import configparser
import copy
import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from mpc.net import tls
from mpc.net.access import cluster_member
from mpc.net.config import ClusterConfig

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PROCESSES = ["party-0", "party-1", "party-2", "dealer", "coordinator"]
K8S_VERSION = "1.37"
CLUSTER_FILES = sorted([*DEPLOY.glob("examples/*.toml"), DEPLOY / "compose" / "cluster.toml"])


def k8s_documents():
    return [(path.name, doc) for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def configmap_cluster_file() -> str:
    maps = [doc for _, doc in k8s_documents() if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "mpc-cluster"]
    assert len(maps) == 1
    return maps[0]["data"]["cluster.toml"]


def with_local_certs(config: ClusterConfig, certs: Path) -> ClusterConfig:
    """The same cluster with every process's certificates and data where this test wrote them."""
    data = certs.parent / "data"
    data.mkdir(exist_ok=True)
    return config.with_processes(**{
        i: dataclasses.replace(config.entry(i), certs=str(certs), ca=None, cert=None, key=None,
                               data=str(data) if config.entry(i).data else None) for i in config.identities()})


@pytest.mark.parametrize("path", CLUSTER_FILES + ["k8s configmap"], ids=lambda p: getattr(p, "name", p))
def test_example_cluster_files_validate(path, tmp_path):
    if path == "k8s configmap":
        (tmp_path / "cluster.toml").write_text(configmap_cluster_file())
        path = tmp_path / "cluster.toml"
    config = ClusterConfig.load(path)
    assert config.identities() == PROCESSES
    assert all(config.entry(i).certs == "/etc/mpc/certs" for i in PROCESSES)
    assert all(config.entry(f"party-{p}").data == "/var/lib/mpc" for p in range(3))
    assert config.clients and all(c.startswith("client-") for c in config.clients)
    hosts = [tls.host_of(config.address_of(i)) for i in PROCESSES]
    assert len(set(hosts[:3])) == 3  # every party on a host of its own
    tls.make_cluster_certs(tmp_path / "certs", 3, hosts=hosts, clients=[c[len("client-"):] for c in config.clients])
    with_local_certs(config, tmp_path / "certs").check_certificates()  # every certificate loads and matches


def test_example_cluster_files_are_checked_for_wrong_certificates(tmp_path):
    config = ClusterConfig.load(CLUSTER_FILES[0])
    tls.make_cluster_certs(tmp_path / "certs", 3)
    certs = tmp_path / "certs"
    (certs / "party-2.pem").write_bytes((certs / "party-1.pem").read_bytes())
    with pytest.raises(Exception, match="parties\\[2\\].certs: .*certificate of 'party-1', not of 'party-2'"):
        with_local_certs(config, certs).check_certificates()


def test_compose_file_runs_every_process_from_the_cluster_file():
    compose = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert sorted(services) == sorted(PROCESSES)
    for name, service in services.items():
        command = service["command"]
        assert command[:3] == [name.split("-")[0], "--cluster", "/etc/mpc/cluster.toml"]
        if name.startswith("party-"):
            assert command[3:] == ["--id", name.split("-")[1]]
        mounts = {m.split(":")[1]: m for m in service["volumes"]}
        assert mounts["/etc/mpc/certs"] == f"./certs/{name}:/etc/mpc/certs:ro"  # its own certificate only
        assert mounts["/etc/mpc/cluster.toml"].endswith(":ro")
        probe = service["healthcheck"]["test"]
        assert probe[:3] == ["CMD", "mpc", "status"] and probe[probe.index("--only") + 1] == name
        assert "--local" in probe and probe[probe.index("--as") + 1] == name
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    ClusterConfig.load(DEPLOY / "compose" / "cluster.toml")
    assert all("ports" not in s for n, s in services.items() if n != "coordinator")  # only clients' port published


def test_dockerfile_installs_the_package_and_runs_mpc_unprivileged():
    text = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["mpc"]' in text and "USER 10001" in text and "pip install ." in text
    from parties._process import MALLOC_TUNABLES

    assert f"GLIBC_TUNABLES={MALLOC_TUNABLES}" in text  # the runtime environment, set once in the image


@pytest.mark.parametrize("name, doc", k8s_documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_kubernetes_manifests_match_the_api_schemas(name, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_schema_check_catches_a_misspelt_field():
    _, doc = next((n, d) for n, d in k8s_documents() if d["kind"] == "StatefulSet")
    bad = copy.deepcopy(doc)
    container = bad["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_the_schema_check_needs_no_network():
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("cutting the network off (unshare -n) needs root and unshare")
    code = ("import glob, kubernetes_validate, yaml\n"
            "docs = [d for f in sorted(glob.glob('deploy/k8s/*.yaml')) for d in yaml.safe_load_all(open(f)) if d]\n"
            f"[kubernetes_validate.validate(d, '{K8S_VERSION}', strict=True) for d in docs]\n"
            "print(len(docs))")
    proc = subprocess.run(["unshare", "-n", sys.executable, "-c", code], cwd=DEPLOY.parent, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and int(proc.stdout) == len(k8s_documents()), proc.stderr


def test_kubernetes_manifests_have_a_workload_service_and_secret_per_process():
    docs = [doc for _, doc in k8s_documents()]
    for name in PROCESSES:
        workloads = [d for d in docs if d["kind"] in ("StatefulSet", "Deployment") and d["metadata"]["name"] == name]
        assert len(workloads) == 1, name
        workload = workloads[0]
        assert workload["kind"] == ("StatefulSet" if name.startswith("party-") else "Deployment")
        assert workload["spec"]["replicas"] == 1
        pod = workload["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        args = container["args"]
        assert args[:3] == [name.split("-")[0], "--cluster", "/etc/mpc/cluster.toml"]
        probe = container["readinessProbe"]["exec"]["command"]
        assert probe[:2] == ["mpc", "status"] and probe[probe.index("--only") + 1] == name
        # on its own host, as itself, with its own certificate: an identity every Health answers
        assert "--local" in probe and probe[probe.index("--as") + 1] == name
        assert probe[probe.index("--certs") + 1] == "/etc/mpc/certs" and cluster_member(name, 3, ())
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["certs"]["secret"]["secretName"] == f"mpc-{name}-tls"
        assert volumes["cluster"]["configMap"]["name"] == "mpc-cluster"
        secret = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == f"mpc-{name}-tls"]
        assert len(secret) == 1 and sorted(secret[0]["stringData"]) == sorted(["ca.pem", f"{name}.pem",
                                                                                  f"{name}.key"])
        assert pod["securityContext"]["runAsNonRoot"] is True
        service = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == name]
        assert len(service) == 1 and service[0]["spec"]["selector"] == workload["spec"]["selector"]["matchLabels"]
        assert service[0]["spec"]["publishNotReadyAddresses"] is True  # peers meet before any is ready
        if name.startswith("party-"):  # data on a volume that survives the pod
            assert [t["metadata"]["name"] for t in workload["spec"]["volumeClaimTemplates"]] == ["data"]
            assert {"name": "data", "mountPath": "/var/lib/mpc"} in container["volumeMounts"]


@pytest.mark.parametrize("unit, command", [
    ("mpc-party@.service", "mpc party --cluster /etc/mpc/cluster.toml --id %i"),
    ("mpc-dealer.service", "mpc dealer --cluster /etc/mpc/cluster.toml"),
    ("mpc-coordinator.service", "mpc coordinator --cluster /etc/mpc/cluster.toml"),
])
def test_systemd_units_start_each_process_from_the_cluster_file(unit, command):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string((DEPLOY / "systemd" / unit).read_text())
    service = parser["Service"]
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "mpc" and " ".join(["mpc", *argv[1:]]) == command
    assert service["User"] == "mpc" and service["NoNewPrivileges"] == "yes"
    assert service["Restart"] == "on-failure"
    assert int(parser["Unit"]["StartLimitBurst"]) >= 5  # a bad file is not retried for ever
    assert parser["Install"]["WantedBy"] == "multi-user.target"
