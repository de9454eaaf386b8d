"""The container image's contents, checked without a Docker daemon (there is none here):
the files deploy/Dockerfile copies are installed the way its `pip install .` installs them,
into a directory of their own, and the installed `mpc` runs from outside the repository.
A file the image leaves out that the package needs (a module, the generated protobuf code,
the README the package metadata reads) fails here, as it would fail `docker build`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

pytestmark = pytest.mark.slow


def _copied() -> list[str]:
    """The repository paths the Dockerfile's COPY lines take (relative to the build context)."""
    paths = []
    for line in DOCKERFILE.read_text().splitlines():
        m = re.match(r"^COPY\s+(.+)\s+(\S+)$", line.strip())
        if m:
            paths += m.group(1).split()
    return paths


def test_the_dockerfile_copies_what_the_package_needs_and_mpc_runs_from_it(tmp_path):
    copied = _copied()
    assert {"pyproject.toml", "README.md", "mpc", "parties"} <= set(copied), copied
    context = tmp_path / "context"
    context.mkdir()
    for rel in copied:
        src = ROOT / rel
        if src.is_dir():
            shutil.copytree(src, context / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, context / rel)
    site = tmp_path / "site"
    # The image's `pip install .`, without its dependencies (they are this venv's) and offline.
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--target", str(site), str(context)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    assert (site / "bin" / "mpc").exists(), sorted(os.listdir(site))
    assert list((site / "mpc" / "net" / "proto").glob("mpc_pb2*.py")), "the generated protobuf code is not installed"
    env = dict(os.environ, PYTHONPATH=str(site))
    for argv in (["-m", "mpc.cli", "--help"], ["-m", "parties.party", "--help"], ["-m", "parties.dealer", "--help"],
                 ["-m", "parties.coordinator", "--help"]):
        # From an empty directory: nothing of the repository is importable but what was installed.
        run = subprocess.run([sys.executable, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, (argv, run.stderr[-2000:])
    where = subprocess.run([sys.executable, "-c", "import mpc, parties; print(mpc.__file__, parties.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.split() and all(p.startswith(str(site)) for p in where.stdout.split()), where.stdout
