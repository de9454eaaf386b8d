#!/usr/bin/env bash
# Build the image of deploy/Dockerfile (one image for every process of a cluster).
#
#   bash deploy/build-image.sh                      # docker where a daemon answers, else podman
#   bash deploy/build-image.sh --tag mpc:0.1.0 --engine podman
#
# Where the usual sources cannot be reached (a machine without access to Docker Hub or to
# download.pytorch.org), two options, each changing only where a thing comes from:
#
#   --torch-wheel FILE   the CPU wheel of torch 2.13.0 (torch-2.13.0+cpu-cp311-...whl) from
#                        this disk: it and its dependencies (downloaded by pip from the usual
#                        index) are served on 127.0.0.1 for the build (--build-arg
#                        TORCH_INDEX_URL), instead of https://download.pytorch.org/whl/cpu.
#   --local-base         when python:3.11-slim is not already in the engine's store, make a
#                        stand-in for it from Debian packages (debootstrap bookworm: Debian's
#                        python3.11 and pip, ca-certificates, netbase, tzdata; python, python3,
#                        pip at /usr/local/bin as in the official image) and tag it
#                        docker.io/library/python:3.11-slim, so the Dockerfile's FROM resolves
#                        locally. Needs root and debootstrap. The official image has CPython
#                        3.11.x built from source in /usr/local; the stand-in has Debian's
#                        3.11.2 in /usr. It is labelled mpc.base=local-debootstrap-substitute.
#   --ca-bundle FILE     (podman) where HTTPS goes through a proxy that signs with its own CA:
#                        this bundle is mounted over the image's CA bundle during the build's
#                        RUN steps only, so pip trusts the proxy; nothing of it stays in the image.
#
# Prints the build time and the image size at the end. Exit status: 0 built, 1 failed,
# 2 no engine (says why).
set -euo pipefail

TAG=mpc:0.1.0
ENGINE=
TORCH_WHEEL=
LOCAL_BASE=0
CA_BUNDLE=
BASE=docker.io/library/python:3.11-slim
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

while [[ $# -gt 0 ]]; do
  case $1 in
    --tag) TAG=$2; shift 2 ;;
    --engine) ENGINE=$2; shift 2 ;;
    --torch-wheel) TORCH_WHEEL=$(realpath "$2"); shift 2 ;;
    --local-base) LOCAL_BASE=1; shift ;;
    --ca-bundle) CA_BUNDLE=$(realpath "$2"); shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 1 ;;
  esac
done

if [[ -z $ENGINE ]]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    ENGINE=docker
  elif command -v podman >/dev/null; then
    ENGINE=podman
  elif command -v docker >/dev/null; then
    echo "docker is installed but no daemon answers ($(docker info 2>&1 | grep -m1 -i error || true)), and podman is not installed" >&2
    exit 2
  else
    echo "no container engine: neither docker nor podman is installed" >&2
    exit 2
  fi
fi
echo "engine: $ENGINE ($($ENGINE --version))"

make_local_base() {
  command -v debootstrap >/dev/null || { echo "--local-base needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
  [[ $(id -u) == 0 ]] || { echo "--local-base needs root (debootstrap)" >&2; exit 1; }
  local dir
  dir=$(mktemp -d /var/tmp/mpc-base.XXXXXX)
  echo "making a stand-in for $BASE in $dir (debootstrap bookworm, a few minutes)"
  debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates,netbase,tzdata \
    bookworm "$dir/rootfs" http://deb.debian.org/debian >"$dir/debootstrap.log" 2>&1 \
    || { tail -20 "$dir/debootstrap.log" >&2; exit 1; }
  local r=$dir/rootfs
  # As in the official image: python, python3 and pip first on PATH at /usr/local/bin, and
  # pip installing into the system (the official image has no EXTERNALLY-MANAGED marker).
  ln -sf /usr/bin/python3.11 "$r/usr/local/bin/python3"
  ln -sf /usr/bin/python3.11 "$r/usr/local/bin/python"
  printf '#!/bin/sh\nexec /usr/bin/python3.11 -m pip "$@"\n' >"$r/usr/local/bin/pip"
  chmod 755 "$r/usr/local/bin/pip"
  rm -f "$r"/usr/lib/python3.11/EXTERNALLY-MANAGED
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/archives/*.deb "$r"/var/log/*.log
  tar -C "$r" --numeric-owner -c . | $ENGINE import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'LABEL mpc.base=local-debootstrap-substitute' \
    --change 'CMD ["python3"]' - "$BASE"
  rm -rf "$dir"
}

if ! $ENGINE image inspect "$BASE" >/dev/null 2>&1; then
  if [[ $LOCAL_BASE == 1 ]]; then
    make_local_base
  else
    echo "$BASE is not in the local store: the build will pull it (where no registry can be reached, pass --local-base)"
  fi
fi

BUILD_ARGS=()
SERVER_PID=
cleanup() { [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null; [[ -n ${INDEX:-} ]] && rm -rf "$INDEX"; true; }
trap cleanup EXIT
if [[ -n $TORCH_WHEEL ]]; then
  # A PEP 503 index on loopback holding the wheel and what it requires; the build runs on the
  # host's network to reach it (the image gets no trace of it but the build argument).
  INDEX=$(mktemp -d /tmp/mpc-torch-index.XXXXXX)
  python3 -m pip download --quiet --only-binary=:all: --python-version 3.11 --implementation cp \
    --platform manylinux_2_28_x86_64 --dest "$INDEX/files" "$TORCH_WHEEL"
  python3 - "$INDEX" <<'EOF'
import os, re, sys
index = sys.argv[1]
for name in sorted(os.listdir(f"{index}/files")):
    project = re.sub(r"[-_.]+", "-", name.split("-")[0]).lower()
    os.makedirs(f"{index}/simple/{project}", exist_ok=True)
    with open(f"{index}/simple/{project}/index.html", "a") as f:
        f.write(f'<a href="../../files/{name}">{name}</a>\n')
EOF
  # A fixed port, so that a rebuild passes the same build argument and reuses the torch layer.
  PORT=${MPC_INDEX_PORT:-38111}
  python3 -m http.server --bind 127.0.0.1 --directory "$INDEX" "$PORT" >/dev/null 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/simple/" | grep -q torch/ && break; sleep 0.1; done
  kill -0 "$SERVER_PID" 2>/dev/null || { echo "cannot serve on 127.0.0.1:$PORT (set MPC_INDEX_PORT)" >&2; exit 1; }
  BUILD_ARGS+=(--network host --build-arg "TORCH_INDEX_URL=http://127.0.0.1:$PORT/simple")
  echo "torch from $TORCH_WHEEL, served at http://127.0.0.1:$PORT/simple"
fi

if [[ -n $CA_BUNDLE ]]; then
  [[ $ENGINE == podman ]] || { echo "--ca-bundle needs podman (docker build mounts no volumes)" >&2; exit 1; }
  BUILD_ARGS+=(--volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
fi

IGNORE=()
[[ $ENGINE == podman ]] && IGNORE=(--ignorefile "$ROOT/deploy/Dockerfile.dockerignore")  # docker finds it itself
start=$(date +%s)
$ENGINE build "${BUILD_ARGS[@]}" "${IGNORE[@]}" -f "$ROOT/deploy/Dockerfile" -t "$TAG" "$ROOT"
end=$(date +%s)
size=$($ENGINE image inspect "$TAG" --format '{{.Size}}')
echo "built $TAG with $ENGINE in $((end - start)) s; image size $((size / 1000000)) MB"
