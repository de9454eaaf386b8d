"""The committed gencode must match protos/ (regenerated with the pinned grpcio-tools)."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_generated_code_is_current(tmp_path):
    subprocess.run(["bash", str(ROOT / "scripts" / "gen-protos.sh"), str(tmp_path)], check=True,
                   env={"PATH": f"{pathlib.Path(sys.executable).parent}:/usr/bin:/bin"})
    for name in ("mpc_pb2.py", "mpc_pb2_grpc.py", "mpc_pb2.pyi"):
        fresh = (tmp_path / "mpc" / "net" / "proto" / name).read_text()
        committed = (ROOT / "mpc" / "net" / "proto" / name).read_text()
        assert fresh == committed, f"mpc/net/proto/{name} is stale: run scripts/gen-protos.sh"
