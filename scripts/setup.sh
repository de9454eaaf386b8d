#!/usr/bin/env bash
# Create .venv (once) with the runtime, the test tools and CrypTen. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch, crypten, grpc_tools, mpc, tqdm, matplotlib, sklearn, rich, kubernetes_validate, yaml" >/dev/null 2>&1; then
    # The CPU build of torch 2.13.0; a bare `torch` requirement could pull a CUDA build.
    python -m pip install -q "torch==2.13.0"
    python -m pip install -q -e ".[test]"
    bash scripts/install-crypten.sh >/dev/null
fi
