#!/usr/bin/env bash
# Assembles OCI image archives of candle-embedder and the operator without a container engine or a
# registry, holding what embedder/Dockerfile and operator/Dockerfile put in theirs at the same paths:
# the release binary at /usr/local/bin, the shared libraries it loads (the ones `make images-check`
# verifies distroless/cc-debian12 ships) and the dynamic loader, /etc/passwd and /etc/group with
# `nonroot` (65532), CA certificates, a world-writable /tmp, for the embedder the model at
# /models/all-MiniLM-L6-v2; the same ENTRYPOINT, CMD, ENV, USER and EXPOSE. Also the pause image the
# node's sandboxes run (build/pause/linux/pause.c of the Kubernetes module the cluster is built from),
# and Traefik (the static binary `make traefik` builds) for e2e/tests/traefik.rs.
#
#   e2e/images/build.sh [OUT_DIR]     (default target/e2e-images; PROFILE=release|debug;
#                                      IMAGES="candle-embedder embedding-rollout-operator pause traefik" by default)
#
# Layers are GNU tar archives of a staging tree; go-containerregistry's crane (built by `make
# controlplane`) turns them into images. crane sets an image's config only on an image in a registry,
# so a registry of crane's own runs on a free loopback port for the few seconds of the assembly; what
# leaves this script are `docker save`-format archives for `ctr images import`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:-$ROOT/target/e2e-images}
PROFILE=${PROFILE:-release}
CARGO=${CARGO:-cargo}
BIN=${E2E_CONTROLPLANE_BIN:-$ROOT/e2e/controlplane/bin}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
# The names the charts and the e2e use; `embedding-rollout.local` is no registry, only a name nothing
# resolves, so an image that is missing fails to pull instead of coming from elsewhere.
REPO=embedding-rollout.local
TAG=${IMAGE_TAG:-e2e}
PAUSE_REF=registry.k8s.io/pause:3.10.1   # kubelet 1.34's default sandbox image

die() { echo "images: $*" >&2; exit 1; }
[ -x "$BIN/crane" ] || die "$BIN/crane is missing: run \`make controlplane\`"
command -v gcc >/dev/null || die "gcc not found (builds the pause binary)"
model=$ROOT/models/all-MiniLM-L6-v2
[ -f "$model/model.safetensors" ] || die "no model in $model: run \`make model\`"
IMAGES=${IMAGES:-candle-embedder embedding-rollout-operator pause traefik}
start=$(date +%s)

bins=()
for b in candle-embedder embedding-rollout-operator; do
  [[ " $IMAGES " == *" $b "* ]] && bins+=("$b")
done
if [ "$PROFILE" = release ] && [ ${#bins[@]} -gt 0 ]; then
  # As the Dockerfiles build them (each binary is its crate's only one of that name).
  pkgs=(); for b in "${bins[@]}"; do pkgs+=(-p "$b" --bin "$b"); done
  "$CARGO" build --release --locked "${pkgs[@]}"
fi
for b in "${bins[@]}"; do
  [ -x "$TARGET/$PROFILE/$b" ] || die "$TARGET/$PROFILE/$b is missing (PROFILE=$PROFILE)"
done

mkdir -p "$OUT"
work=$(mktemp -d "${TMPDIR:-/tmp}/e2e-images.XXXXXX")
registry_pid=
cleanup() { [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# base TREE BINARY...: what distroless/cc-debian12:nonroot gives the binaries (the libraries they load).
base() {
  local tree=$1 exe lib; shift
  mkdir -p "$tree"/{etc/ssl/certs,tmp,home/nonroot,lib64}
  chmod 1777 "$tree/tmp"
  chown 65532:65532 "$tree/home/nonroot"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$tree/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$tree/etc/group"
  cp /etc/ssl/certs/ca-certificates.crt "$tree/etc/ssl/certs/"
  for exe in "$@"; do
    # ldd prints `name => /path (addr)` for libraries and `/path (addr)` for the loader.
    for lib in $(ldd "$exe" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
      mkdir -p "$tree$(dirname "$lib")"
      cp -L "$lib" "$tree$lib"
    done
  done
}
layer() { # layer TREE OUT.tar: a reproducible archive (sorted, mtime 0, numeric owners)
  tar --sort=name --mtime=@0 --numeric-owner --format=gnu -C "$1" -cf "$2" .
}

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/blobs"
"$BIN/crane" registry serve --address "127.0.0.1:$port" --disk "$work/blobs" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$port/v2/" >/dev/null || { cat "$work/registry.log"; die "crane registry did not start"; }
scratch=127.0.0.1:$port

# image NAME OUT MUTATE-FLAGS... (layers: $work/NAME-*.tar, in name order)
image() {
  local name=$1 out=$2; shift 2
  local layers=()
  for l in "$work/$name"-*.tar; do layers+=(-f "$l"); done
  "$BIN/crane" append --insecure --oci-empty-base "${layers[@]}" -t "$scratch/$name:build" >/dev/null 2>>"$work/crane.log"
  "$BIN/crane" mutate --insecure "$scratch/$name:build" --set-platform=linux/amd64 "$@" -t "$out" -o "$OUT/$name.tar.tmp" >/dev/null
  mv "$OUT/$name.tar.tmp" "$OUT/$name.tar"
  echo "images: $out -> $OUT/$name.tar ($(du -h "$OUT/$name.tar" | cut -f1))"
}

# --- candle-embedder (embedder/Dockerfile) ---
build_candle-embedder() {
t=$work/embedder-base; base "$t" "$TARGET/$PROFILE/candle-embedder"; layer "$t" "$work/candle-embedder-1.tar"
t=$work/embedder-app; mkdir -p "$t/usr/local/bin" "$t/models"
install -m 0755 "$TARGET/$PROFILE/candle-embedder" "$t/usr/local/bin/candle-embedder"
cp -r "$model" "$t/models/all-MiniLM-L6-v2"
chown -R 0:0 "$t/models"; chmod -R a+rX "$t/models"
layer "$t" "$work/candle-embedder-2.tar"
image candle-embedder "$REPO/candle-embedder:$TAG" \
  --entrypoint=/usr/local/bin/candle-embedder --user=65532:65532 --exposed-ports=8080/tcp \
  --env=EMBEDDER_HOST=0.0.0.0 --env=EMBEDDER_PORT=8080 \
  --env=EMBEDDER_MODEL_DIR=/models/all-MiniLM-L6-v2 --env=TMPDIR=/tmp
}

# --- embedding-rollout-operator (operator/Dockerfile) ---
build_embedding-rollout-operator() {
t=$work/operator-base; base "$t" "$TARGET/$PROFILE/embedding-rollout-operator"; layer "$t" "$work/embedding-rollout-operator-1.tar"
t=$work/operator-app; mkdir -p "$t/usr/local/bin"
install -m 0755 "$TARGET/$PROFILE/embedding-rollout-operator" "$t/usr/local/bin/embedding-rollout-operator"
layer "$t" "$work/embedding-rollout-operator-2.tar"
image embedding-rollout-operator "$REPO/embedding-rollout-operator:$TAG" \
  --entrypoint=/usr/local/bin/embedding-rollout-operator --cmd=--metrics-addr,0.0.0.0:8081,--leader-elect \
  --user=65532:65532 --exposed-ports=8081/tcp
}

# --- pause (the sandbox every pod's namespaces hang on) ---
build_pause() {
pause_src=$(cd "$ROOT/e2e/controlplane" && GOTOOLCHAIN=local GOWORK=off go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
t=$work/pause; mkdir -p "$t"
gcc -Os -static -Wall -DVERSION=3.10.1 -o "$t/pause" "$pause_src"
layer "$t" "$work/pause-1.tar"
image pause "$PAUSE_REF" --entrypoint=/pause --user=65535:65535
}

# --- traefik (e2e/traefik/build.sh: static, CGO_ENABLED=0, so no libraries and no loader) ---
build_traefik() {
[ -x "$BIN/traefik" ] || die "$BIN/traefik is missing: run \`make traefik\`"
t=$work/traefik-base; base "$t"; layer "$t" "$work/traefik-1.tar"
t=$work/traefik-app; mkdir -p "$t/usr/local/bin"
install -m 0755 "$BIN/traefik" "$t/usr/local/bin/traefik"
layer "$t" "$work/traefik-2.tar"
image traefik "$REPO/traefik:$TAG" \
  --entrypoint=/usr/local/bin/traefik --user=65532:65532 --exposed-ports=8000/tcp,8080/tcp
}

for i in $IMAGES; do
  declare -F "build_$i" >/dev/null || die "unknown image '$i' (known: candle-embedder embedding-rollout-operator pause traefik)"
  "build_$i"
done

echo "images: built in $(( $(date +%s) - start ))s"
