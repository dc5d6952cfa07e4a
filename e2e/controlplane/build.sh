#!/usr/bin/env bash
# Builds the e2e's single-node cluster from Go modules into e2e/controlplane/bin (git-ignored): etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy (one `go build`, so they
# share the compile of k8s.io/kubernetes), and go-containerregistry's crane, which assembles the OCI image
# archives the node imports (no container engine or registry here).
# Skips when every binary is newer than every source file; otherwise `go build` runs, and with a warm
# Go build cache ($(go env GOCACHE), kept in its default place) that takes seconds.
set -euo pipefail
CP=$(cd "$(dirname "$0")" && pwd)
BIN=${BIN:-$CP/bin}
K8S_VERSION=v1.34.7
CRANE_VERSION=v0.22.1
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0

# The Go SDK lives in /usr/local/go on these machines; a non-login shell may lack it on PATH.
command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "build.sh: 'go' not found on PATH (need Go >= 1.24)" >&2; exit 1; }

sources=("$CP/go.mod" "$CP/go.sum" "$CP/build.sh" "$CP"/cmd/*/main.go)
up_to_date() {
  local b s
  for b in "${BINARIES[@]/#/$BIN/}" "$BIN/crane"; do
    [ -x "$b" ] || return 1
    for s in "${sources[@]}"; do [ "$b" -nt "$s" ] || return 1; done
  done
}
if [ "${FORCE:-}" != 1 ] && up_to_date; then
  echo "controlplane: ${BINARIES[*]} and crane in $BIN are up to date"
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
echo "controlplane: building Kubernetes $K8S_VERSION (${BINARIES[*]}), etcd $ETCD_VERSION, crane $CRANE_VERSION (15-25 min with a cold Go cache on 2 cores, seconds when warm)"
# One invocation for all: the packages they share compile once. (The -X flags name symbols etcd does not
# link; the linker ignores those.)
go build -trimpath -ldflags "-s -w $VER" -o "$BIN/" "${BINARIES[@]/#/./cmd/}"
# crane is its own module with its own dependency versions: `go install mod@version` keeps them out of
# this go.mod (go-containerregistry pins docker/cli versions that would move the Kubernetes build's).
GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION"
echo "controlplane: built in $(( $(date +%s) - start ))s into $BIN"
