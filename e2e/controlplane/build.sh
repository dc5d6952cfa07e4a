#!/usr/bin/env bash
# Builds kube-apiserver and etcd from Go modules into e2e/controlplane/bin (git-ignored).
# Skips when both binaries are newer than every source file; otherwise `go build` runs, and with a warm
# Go build cache ($(go env GOCACHE), kept in its default place) that takes seconds.
set -euo pipefail
CP=$(cd "$(dirname "$0")" && pwd)
BIN=${BIN:-$CP/bin}
K8S_VERSION=v1.34.7
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0

# The Go SDK lives in /usr/local/go on these machines; a non-login shell may lack it on PATH.
command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "build.sh: 'go' not found on PATH (need Go >= 1.24)" >&2; exit 1; }

sources=("$CP/go.mod" "$CP/go.sum" "$CP/build.sh" "$CP"/cmd/*/main.go)
up_to_date() {
  local b s
  for b in "$BIN/kube-apiserver" "$BIN/etcd"; do
    [ -x "$b" ] || return 1
    for s in "${sources[@]}"; do [ "$b" -nt "$s" ] || return 1; done
  done
}
if [ "${FORCE:-}" != 1 ] && up_to_date; then
  echo "controlplane: $BIN/kube-apiserver and $BIN/etcd are up to date"
  exit 0
fi

# /version must report the real version; without these it says v0.0.0.
VER="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1"
VER="$VER -X k8s.io/component-base/version.gitMinor=34 -X k8s.io/component-base/version.gitTreeState=clean"
VER="$VER -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1"
VER="$VER -X k8s.io/client-go/pkg/version.gitMinor=34"
ETCD_VERSION=$(cd "$CP" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)

mkdir -p "$BIN"
start=$(date +%s)
cd "$CP"
echo "controlplane: building kube-apiserver $K8S_VERSION and etcd $ETCD_VERSION (10-20 min with a cold Go cache on 2 cores, seconds when warm)"
go build -trimpath -ldflags "-s -w $VER" -o "$BIN/kube-apiserver" ./cmd/kube-apiserver
go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" ./cmd/etcd
echo "controlplane: built in $(( $(date +%s) - start ))s into $BIN"
