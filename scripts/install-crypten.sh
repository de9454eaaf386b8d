#!/usr/bin/env bash
# Install CrypTen 0.4.1, the reference implementation, into the active Python.
# Its metadata asks for the retired `sklearn` package, so it goes in with --no-deps plus
# the packages it really imports (mpc.reference supplies the torch.onnx stand-in it needs).
set -euo pipefail
python -m pip install --no-deps "crypten==0.4.1"
python -m pip install omegaconf onnx pyyaml scipy scikit-learn
