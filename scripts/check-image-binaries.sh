#!/usr/bin/env bash
# What can be checked of the container images without a container engine: the release binaries,
# built the way the Dockerfiles build them (cargo build --release --locked -p <crate>, Debian 12 glibc),
# need only shared libraries that gcr.io/distroless/cc-debian12 ships, and no glibc symbol newer
# than its glibc (2.36). Also: the binary starts (--help) with an empty environment and no writable
# working directory, as it would under readOnlyRootFilesystem.
#   scripts/check-image-binaries.sh [--no-build] [BINARY...]     (default: both images' binaries)
set -uo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
build=true
[[ "${1:-}" == --no-build ]] && { build=false; shift; }

# crate:binary pairs, as in embedder/Dockerfile and operator/Dockerfile
bins=(candle-embedder:candle-embedder embedding-rollout-operator:embedding-rollout-operator)
if (($#)); then
    wanted=" $* " picked=()
    for pair in "${bins[@]}"; do [[ "$wanted" == *" ${pair##*:} "* ]] && picked+=("$pair"); done
    bins=("${picked[@]}")
fi
# distroless cc-debian12 = base (libc6, libssl3, ca-certificates, tzdata, netbase) + libgcc-s1,
# libgomp1, libstdc++6 (GoogleContainerTools/distroless cc/config.bzl)
allowed='^(linux-vdso\.so\.1|ld-linux-x86-64\.so\.2|/lib64/ld-linux-x86-64\.so\.2|libc\.so\.6|libm\.so\.6|libdl\.so\.2|libpthread\.so\.0|librt\.so\.1|libgcc_s\.so\.1|libstdc\+\+\.so\.6|libgomp\.so\.1|libssl\.so\.3|libcrypto\.so\.3)$'
runtime_glibc=2.36

failures=0
fail() { echo "  FAIL    $*"; failures=$((failures + 1)); }
echo "host glibc: $(ldd --version | head -n1)"
grep -q 'bookworm\|VERSION_ID="12"' /etc/os-release && echo "host: Debian 12 (same as rust:1-bookworm)" \
    || echo "host: not Debian 12; glibc comparisons below are against $runtime_glibc anyway"

for pair in "${bins[@]}"; do
    crate=${pair%%:*} bin=${pair##*:}
    echo "== $bin"
    if $build; then
        start=$(date +%s)
        if ! $CARGO build --release --locked -p "$crate" --bin "$bin" >"/tmp/check-image-$bin.log" 2>&1; then
            tail -n 20 "/tmp/check-image-$bin.log"; fail "$bin: release build"; continue
        fi
        echo "  ok      cargo build --release --locked -p $crate --bin $bin ($(( $(date +%s) - start )) s)"
    fi
    exe=target/release/$bin
    [[ -x "$exe" ]] || { fail "$exe missing"; continue; }
    echo "  size    $(du -h "$exe" | cut -f1) ($(file -b "$exe" | cut -d, -f1-2))"
    libs=$(ldd "$exe" | awk '{print $1}')
    echo "  needs   $(echo $libs)"
    bad=$(echo "$libs" | grep -Ev "$allowed" || true)
    [[ -z "$bad" ]] && echo "  ok      every shared library is in distroless/cc-debian12" \
        || fail "$bin needs libraries distroless/cc-debian12 lacks: $bad"
    newest=$(objdump -T "$exe" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1)
    if [[ "$(printf '%s\n%s\n' "$newest" "$runtime_glibc" | sort -V | tail -n1)" == "$runtime_glibc" ]]; then
        echo "  ok      newest glibc symbol GLIBC_$newest <= $runtime_glibc"
    else
        fail "$bin needs GLIBC_$newest > $runtime_glibc"
    fi
    # No writable cwd, no HOME, no env: what a read-only root filesystem with uid 65532 looks like.
    abs=$(readlink -f "$exe")
    if (cd / && env -i "$abs" --help >/dev/null 2>&1); then
        echo "  ok      starts (--help) with an empty environment from /"
    else
        fail "$bin --help fails with an empty environment"
    fi
done
# The embedder as the chart runs it: the chart's args and env, its models file (from the ConfigMap,
# /models rewritten to this checkout's models/), uid/gid 65532, cwd / (nothing writable), empty env
# except what the Deployment sets. It must load the model, turn ready and embed.
pod_smoke() {
    local exe=$1 helm=${HELM:-bin/helm} tmp port pid ok=
    [[ -x "$helm" ]] || { echo "  skip    pod-like start: $helm missing (make helm)"; return 0; }
    [[ -s models/all-MiniLM-L6-v2/model.safetensors ]] || { echo "  skip    pod-like start: no model (make model)"; return 0; }
    tmp=$(mktemp -d /tmp/pod-smoke.XXXXXX)
    "$helm" template s charts/candle-embedder --show-only templates/configmap.yaml \
        | python3 -c 'import sys,yaml; print(yaml.safe_load(sys.stdin)["data"]["models.yaml"])' \
        | sed "s#/models/#$PWD/models/#" >"$tmp/models.yaml"
    chmod 755 "$tmp"; chmod 644 "$tmp/models.yaml"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # Same flags as templates/deployment.yaml, except 127.0.0.1 instead of 0.0.0.0 (nothing listens outside here).
    (cd / && exec env -i TMPDIR=/tmp setpriv --reuid=65532 --regid=65532 --clear-groups \
        "$exe" --host=127.0.0.1 --port="$port" --service-name=candle --models="$tmp/models.yaml") \
        >"$tmp/log" 2>&1 &
    pid=$!
    for _ in $(seq 600); do
        curl -fsS "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && { ok=1; break; }
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -n "$ok" ]] && curl -fsS "http://127.0.0.1:$port/api/v1/embed" -H 'content-type: application/json' \
            -d '{"texts": ["Hello world"], "model": "all-MiniLM-L6-v2"}' -o "$tmp/out.json" \
        && python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["embeddings"]; sys.exit(len(e) != 1 or len(e[0]) != 384)' "$tmp/out.json"; then
        echo "  ok      pod-like start (uid 65532, cwd /, chart args + models file): ready, 384-dim embedding"
    else
        tail -n 20 "$tmp/log"; fail "candle-embedder does not serve with the chart's args as uid 65532"
    fi
    kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    rm -rf "$tmp"
}
for pair in "${bins[@]}"; do
    [[ "${pair##*:}" == candle-embedder && -x target/release/candle-embedder ]] && pod_smoke "$(readlink -f target/release/candle-embedder)"
done
exit $((failures > 0))
