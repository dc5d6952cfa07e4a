#!/usr/bin/env bash
# Builds helm v3.19.5 from Go modules into bin/helm (git-ignored). Skips when bin/helm already reports
# that version; otherwise `go install` runs (seconds with a warm Go build cache).
set -euo pipefail
cd "$(dirname "$0")/.."
HELM_VERSION=v3.19.5
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOBIN="$PWD/bin"

# The Go SDK lives in /usr/local/go on these machines; a non-login shell may lack it on PATH.
command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "build-helm: 'go' not found on PATH (need Go >= 1.24)" >&2; exit 1; }
if [ -x bin/helm ] && bin/helm version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
  echo "build-helm: bin/helm $HELM_VERSION is up to date"
  exit 0
fi
mkdir -p bin
start=$(date +%s)
# Without the k8sVersion flags, `helm template`/`lint` assume an older Kubernetes than the 1.34 we test on.
go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=34" \
  "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
echo "build-helm: built bin/helm $HELM_VERSION in $(( $(date +%s) - start ))s"
