"""The image of deploy/Dockerfile, run by a container engine (docker where its daemon answers,
else podman): the entry points as the image's non-root user, then the cluster of
deploy/compose/docker-compose.yml (three parties, the dealer and the coordinator, each
container with the service's command, mounts, read-only root, dropped capabilities and
health check, its certificates from `mpc certs --split` mounted read-only, reached by
service name on a network of their own) and a client in a container beside them running
`mpc infer`, checked against plaintext torch.

Building the image takes minutes (about 4 here), so these tests use an image already built
under $MPC_IMAGE (default mpc:0.1.0, `bash deploy/build-image.sh`) from this checkout's
sources. They skip, saying why, when no engine can be used, when the image is not built, or
when it was built from other sources; with MPC_BUILD_IMAGE=1 they build it themselves
instead (deploy/build-image.sh, with the arguments in $MPC_BUILD_IMAGE_ARGS).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mpc.models import MLP
from tests.conftest import assert_close

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy" / "compose"
IMAGE = os.environ.get("MPC_IMAGE", "mpc:0.1.0")
UID = 10001
N_PARTIES = 3

pytestmark = pytest.mark.slow

# The digest of what the Dockerfile copies (deploy/Dockerfile.dockerignore: pyproject.toml,
# README.md, mpc/, parties/ without __pycache__), computed the same way here and in the image.
DIGEST = """
import hashlib, os, sys
root = sys.argv[1]
h = hashlib.sha256()
for top in ("pyproject.toml", "README.md", "mpc", "parties"):
    paths = [top] if os.path.isfile(os.path.join(root, top)) else sorted(
        os.path.relpath(os.path.join(d, f), root) for d, ds, fs in os.walk(os.path.join(root, top))
        for f in fs if "__pycache__" not in d.split(os.sep) and not f.endswith(".pyc"))
    for rel in sorted(paths):
        h.update(rel.encode() + b"\\0")
        with open(os.path.join(root, rel), "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
print(h.hexdigest())
"""


def _run(argv: list[str], timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check:
        assert proc.returncode == 0, f"{shlex.join(argv)}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def find_engine() -> tuple[str | None, str]:
    """(docker or podman, '') for the first that answers `ENGINE info`, else (None, why not)."""
    names = [os.environ["MPC_CONTAINER_ENGINE"]] if os.environ.get("MPC_CONTAINER_ENGINE") else ["docker", "podman"]
    why = []
    for name in names:
        if not shutil.which(name):
            why.append(f"{name} is not installed")
            continue
        try:
            info = subprocess.run([name, "info"], capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            why.append(f"`{name} info` did not answer within 60 s")
            continue
        if info.returncode == 0:
            return name, ""
        last = (info.stderr.strip().splitlines() or ["(no message)"])[-1]
        why.append(f"`{name} info` failed: {last}")
    return None, "; ".join(why)


def _build_or_skip(engine: str, reason: str) -> None:
    if not os.environ.get("MPC_BUILD_IMAGE"):
        pytest.skip(f"{reason}; build it (about 4 minutes) with `bash deploy/build-image.sh --tag {IMAGE}` "
                    "(see deploy/README.md), or set MPC_BUILD_IMAGE=1 to let this test build it")
    args = shlex.split(os.environ.get("MPC_BUILD_IMAGE_ARGS", ""))
    _run(["bash", str(ROOT / "deploy" / "build-image.sh"), "--engine", engine, "--tag", IMAGE, *args], timeout=1800)


@pytest.fixture(scope="module")
def engine() -> str:
    name, why = find_engine()
    if name is None:
        pytest.skip(f"no container engine can be used here: {why} "
                    "(install one, e.g. `apt-get install podman runc`: see deploy/README.md)")
    return name


@pytest.fixture(scope="module")
def image(engine) -> str:
    """The image tag, built from this checkout's sources."""
    source = _run([sys.executable, "-c", DIGEST, str(ROOT)]).stdout.strip()
    if _run([engine, "image", "inspect", IMAGE], check=False).returncode != 0:
        _build_or_skip(engine, f"{engine} can be used, but the image {IMAGE} is not built")
    built = _run([engine, "run", "--rm", "--entrypoint", "python", IMAGE, "-c", DIGEST, "/opt/mpc"]).stdout.strip()
    if built != source:
        _build_or_skip(engine, f"the image {IMAGE} was built from other sources than this checkout's "
                               f"(digest {built[:12]} in the image, {source[:12]} here)")
        built = _run([engine, "run", "--rm", "--entrypoint", "python", IMAGE, "-c", DIGEST, "/opt/mpc"]).stdout.strip()
        assert built == source, (built, source)
    return IMAGE


def test_the_entry_points_run_in_the_image_as_its_non_root_user(engine, image):
    for argv in ([], ["--help"], ["party", "--help"], ["dealer", "--help"], ["coordinator", "--help"],
                 ["status", "--help"], ["certs", "--help"], ["infer", "--help"]):
        out = _run([engine, "run", "--rm", image, *argv], timeout=120).stdout  # [] is the image's CMD, --help
        assert out.startswith(f"usage: mpc {argv[0]}" if argv[:1] != ["--help"] and argv else "usage: mpc"), out
    probe = ("id -u; id -g; id -un; id -gn; stat -c %u:%g /var/lib/mpc; touch /var/lib/mpc/w && echo writable; "
             "echo $GLIBC_TUNABLES $MPC_TORCH_THREADS; command -v mpc")
    lines = _run([engine, "run", "--rm", "--entrypoint", "sh", image, "-c", probe]).stdout.split("\n")
    from parties._process import MALLOC_TUNABLES

    assert lines[:8] == [str(UID), str(UID), "mpc", "mpc", f"{UID}:{UID}", "writable", f"{MALLOC_TUNABLES} 1",
                         "/usr/local/bin/mpc"], lines
    versions = _run([engine, "run", "--rm", "--entrypoint", "python", image, "-c",
                     "import torch, mpc; print(torch.__version__, torch.version.cuda)"]).stdout.split()
    assert versions[0].startswith("2.13.0") and versions[1] == "None", versions  # the CPU build of torch


class Cluster:
    """deploy/compose/docker-compose.yml's services as containers of `engine`, named
    PREFIX-SERVICE, reached by service name on a network PREFIX."""

    def __init__(self, engine: str, image: str, directory: Path):
        self.engine, self.image, self.dir = engine, image, directory
        self.prefix = f"mpc-test-{uuid.uuid4().hex[:8]}"
        self.services = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())["services"]
        self.started: list[str] = []
        self.volumes: list[str] = []
        self.network = False

    def name(self, service: str) -> str:
        return f"{self.prefix}-{service}"

    def _mount(self, spec: str) -> list[str]:
        source, target, *mode = spec.split(":")
        if source.startswith("./"):
            source = str(self.dir / source[2:])
        else:  # a named volume of the compose file: one of this test's own
            source = f"{self.prefix}-{source}"
            self.volumes.append(source)
        return ["-v", ":".join([source, target, *mode])]

    def run_argv(self, service: str) -> list[str]:
        """`ENGINE run` with what the compose file says of the service (its build and restart
        policy aside: the image is given, and a failure here must show, not restart)."""
        spec = self.services[service]
        argv = [self.engine, "run", "-d", "--name", self.name(service), "--network", self.prefix,
                "--network-alias", service]
        if spec.get("read_only"):
            argv.append("--read-only")
        for path in spec.get("tmpfs", []):
            argv += ["--tmpfs", path]
        for opt in spec.get("security_opt", []):
            argv += ["--security-opt", opt]
        for cap in spec.get("cap_drop", []):
            argv += ["--cap-drop", cap]
        for volume in spec.get("volumes", []):
            argv += self._mount(volume)
        return argv + [self.image, *spec["command"]]

    def start(self) -> dict[str, float]:
        """Start every service (parties first, as any order must work); {service: when it started}."""
        _run([self.engine, "network", "create", self.prefix])
        self.network = True
        started = {}
        for service in [*(f"party-{p}" for p in range(N_PARTIES)), "dealer", "coordinator"]:
            _run(self.run_argv(service))
            started[service] = time.monotonic()
            self.started.append(self.name(service))
        return started

    def logs(self, service: str) -> str:
        proc = _run([self.engine, "logs", self.name(service)], check=False)
        return proc.stdout + proc.stderr

    def wait_ready(self, started: dict[str, float], timeout: float = 180) -> dict[str, float]:
        """Seconds from each party's container start to its READY line."""
        ready: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while len(ready) < N_PARTIES and time.monotonic() < deadline:
            for p in range(N_PARTIES):
                service = f"party-{p}"
                if service not in ready and "READY" in self.logs(service).split():
                    ready[service] = time.monotonic() - started[service]
            time.sleep(0.25)
        if len(ready) < N_PARTIES:
            states = {s: _run([self.engine, "inspect", self.name(s), "--format", "{{.State.Status}}"],
                              check=False).stdout.strip() for s in self.services}
            pytest.fail(f"not READY within {timeout} s: {sorted(set(started) - set(ready))}; states {states}; "
                        + "; ".join(f"{s}: {self.logs(s)[-800:]!r}" for s in self.services))
        return ready

    def client(self, argv: list[str], work: Path) -> subprocess.CompletedProcess:
        """`mpc ARGV` in a container beside the cluster, as client-local, with `work` at /work."""
        return _run([self.engine, "run", "--rm", "--network", self.prefix, "--read-only", "--tmpfs", "/tmp",
                     "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true",
                     "-v", f"{self.dir / 'cluster.toml'}:/etc/mpc/cluster.toml:ro",
                     "-v", f"{self.dir / 'certs' / 'client-local'}:/etc/mpc/certs:ro",
                     "-v", f"{work}:/work", self.image, *argv], timeout=300)

    def stop(self) -> dict[str, str]:
        """SIGTERM to every container, then up to 20 s each before a SIGKILL; {service: exit code}."""
        if self.started:
            _run([self.engine, "stop", "-t", "20", *self.started], check=False, timeout=120)
        return {s: _run([self.engine, "inspect", self.name(s), "--format", "{{.State.ExitCode}}"],
                        check=False).stdout.strip() for s in self.services if self.name(s) in self.started}

    def remove(self) -> None:
        for name in self.started:
            _run([self.engine, "rm", "-f", "-v", name], check=False, timeout=120)
        for volume in self.volumes:
            _run([self.engine, "volume", "rm", "-f", volume], check=False)
        if self.network:
            _run([self.engine, "network", "rm", self.prefix], check=False)


def give_to_the_image_user(engine: str, path: Path) -> None:
    """Make `path` (recursively) the image user's, as docker-compose.yml's comment asks
    (`chown -R 10001:10001 certs/*/`): as root by chown; rootless podman inside its user
    namespace; else, for a docker daemon's root, readable and writable by all (a test's
    temporary directory only)."""
    if os.geteuid() == 0:
        for p in [path, *path.rglob("*")]:
            os.chown(p, UID, UID)
    elif engine == "podman":
        _run(["podman", "unshare", "chown", "-R", f"{UID}:{UID}", str(path)])
    else:
        for p in [path, *path.rglob("*")]:
            p.chmod(0o777 if p.is_dir() else 0o666)


def test_a_cluster_of_containers_runs_an_inference_checked_against_torch(engine, image, tmp_path):
    shutil.copy(COMPOSE / "cluster.toml", tmp_path / "cluster.toml")
    # The compose file's first step: `mpc certs --out certs --parties 3 --split`, then chown.
    _run([sys.executable, "-m", "mpc.cli", "certs", "--out", str(tmp_path / "certs"), "--parties", str(N_PARTIES),
          "--split"], timeout=120)
    for identity in [*(f"party-{p}" for p in range(N_PARTIES)), "dealer", "coordinator", "client-local"]:
        give_to_the_image_user(engine, tmp_path / "certs" / identity)
    torch.manual_seed(0)
    net = MLP((64, 32, 32, 10)).eval()
    x = torch.randn(8, 64)
    work = tmp_path / "work"
    work.mkdir()
    torch.save(net.state_dict(), work / "weights.pt")
    np.save(work / "x.npy", x.numpy())
    give_to_the_image_user(engine, work)

    cluster = Cluster(engine, image, tmp_path)
    try:
        started = cluster.start()
        ready = cluster.wait_ready(started)
        for service, spec in cluster.services.items():  # each service's health check, in its container
            probe = spec["healthcheck"]["test"]
            assert probe[0] == "CMD"
            _run([engine, "exec", cluster.name(service), *probe[1:]], timeout=60)
        # a party writes to its volume (/var/lib/mpc, a named volume, as the image's user)
        _run([engine, "exec", cluster.name("party-0"), "touch", "/var/lib/mpc/written"])

        t0 = time.monotonic()
        out = cluster.client(["infer", "--model", "mpc.models:MLP", "--kwargs", '{"sizes": [64, 32, 32, 10]}',
                              "--state-dict", "/work/weights.pt", "--input", "/work/x.npy", "--output", "/work/y.npy",
                              "--cluster", "/etc/mpc/cluster.toml", "--certs", "/etc/mpc/certs",
                              "--as", "client-local"], work)
        infer_s = time.monotonic() - t0
        assert "wrote /work/y.npy" in out.stdout, out.stdout
        assert_close(torch.from_numpy(np.load(work / "y.npy")), net(x).detach(), 0.05, "inference in containers")
        status = cluster.client(["status", "--cluster", "/etc/mpc/cluster.toml", "--certs", "/etc/mpc/certs",
                                 "--as", "client-local"], work)
        assert status.stdout.count("ready") >= N_PARTIES + 2, status.stdout
        # Each process ends on SIGTERM by itself (no SIGKILL after the grace period, 137): with 0,
        # or a party with 3 when a peer stopped before it (the engine stops them one by one).
        codes = cluster.stop()
        assert all(code in ("0", "3") if s.startswith("party-") else code == "0" for s, code in codes.items()), \
            (codes, {s: cluster.logs(s)[-500:] for s in codes})
        print(f"\n{engine}: parties READY {', '.join(f'{s} {t:.1f} s' for s, t in sorted(ready.items()))} after "
              f"their containers started; a client container's `mpc infer` {infer_s:.1f} s")
    finally:
        cluster.remove()
