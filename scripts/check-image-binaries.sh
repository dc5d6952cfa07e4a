#!/usr/bin/env bash
# What can be checked of the container images without a container engine: the release binaries,
# built the way the Dockerfiles build them (cargo build --release --locked -p <crate>, Debian 12 glibc),
# need only shared libraries that gcr.io/distroless/cc-debian12 ships, and no glibc symbol newer
# than its glibc (2.36). Also: the binary starts (--help) with an empty environment and no writable
# working directory, as it would under readOnlyRootFilesystem.
#   scripts/check-image-binaries.sh [--no-build]
set -uo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
build=true
[[ "${1:-}" == --no-build ]] && build=false

# crate:binary pairs, as in embedder/Dockerfile and operator/Dockerfile
bins=(candle-embedder:candle-embedder embedding-rollout-operator:embedding-rollout-operator)
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
exit $((failures > 0))
