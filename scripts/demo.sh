#!/usr/bin/env bash
# The main job of the README: set up .venv if needed, then run `mpc demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mpc demo "$@"
