#!/usr/bin/env bash
# Regenerate mpc/net/proto/*_pb2*.py from protos/ (needs the `test` extra: grpcio-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
python -m grpc_tools.protoc -Iprotos --python_out="$out" --grpc_python_out="$out" --pyi_out="$out" \
    protos/mpc/net/proto/mpc.proto
