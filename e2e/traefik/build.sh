#!/usr/bin/env bash
# Builds Traefik from its Go module into e2e/controlplane/bin/traefik (static, CGO_ENABLED=0) and
# extracts the Gateway API standard-channel CRDs from the sigs.k8s.io/gateway-api module into
# e2e/controlplane/bin/gateway-api-crds/ (both git-ignored). `make traefik`; the e2e's node test
# e2e/tests/traefik.rs runs them.
#
# `go install github.com/traefik/traefik/v3/cmd/traefik@version` refuses (traefik's go.mod has replace
# directives), so the build runs in a scratch copy of the module's source, with traefik's own go.mod and
# go.sum as the main module. Traefik's own code is unchanged; what the module zip or the module proxy
# reachable here lacks is supplied (every item below is outside what the e2e exercises):
#   - pkg/config/dynamic/ext: a nested module (its own go.mod, hence not in the parent's zip) that
#     traefik's go.mod replaces by that path; ./ext holds a stand-in with the two empty types v3.7 uses.
#   - webui/static: the dashboard's built assets (a Node build, not in the zip) that webui/embed.go
#     embeds; one placeholder page stands in. The dashboard is not enabled in the e2e (no --api).
#   - github.com/containous/go-http-auth (traefik's fork for the BasicAuth/DigestAuth middlewares): the
#     proxy lacks the commit v3.7.11+ pin (b975dcaa8c48, "bump" in v3.7.11's changelog); the commit
#     v3.6.x and v3.7.0-10 pin (a37a7636d23e, same API) replaces it. Its checksums come from the
#     checksum database (`go mod download -json`).
#   - lego's providers/dns registry (ACME DNS-01): the proxy lacks the SDK modules of a dozen DNS
#     providers, so the registry file is swapped for ./lego-dns (every DNS-01 provider name fails) in a
#     scratch copy of lego that replaces the module. ACME HTTP-01/TLS-ALPN-01 are lego's own code, kept.
# Skips when bin/traefik.stamp matches the versions and this directory's sources; FORCE=1 rebuilds.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${BIN:-$(cd "$HERE/../controlplane" && pwd)/bin}
TRAEFIK_VERSION=v3.7.13
GATEWAY_API_VERSION=v1.6.3
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=readonly GO111MODULE=on

command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "traefik: 'go' not found on PATH (need Go >= 1.26, traefik's go.mod)" >&2; exit 1; }
command -v jq >/dev/null || { echo "traefik: 'jq' not found: run \`make deps\`" >&2; exit 1; }

HTTP_AUTH=github.com/containous/go-http-auth@v0.4.1-0.20200324110947-a37a7636d23e
stamp="traefik $TRAEFIK_VERSION gateway-api $GATEWAY_API_VERSION $(cat "$HERE/build.sh" "$HERE"/ext/* "$HERE"/lego-dns/* | sha256sum | cut -c1-16)"
if [ "${FORCE:-}" != 1 ] && [ -x "$BIN/traefik" ] && [ -f "$BIN/gateway-api-crds/.stamp" ] \
  && [ "$(cat "$BIN/traefik.stamp" 2>/dev/null)" = "$stamp" ] && [ "$(cat "$BIN/gateway-api-crds/.stamp")" = "$stamp" ]; then
  echo "traefik: $BIN/traefik ($TRAEFIK_VERSION) and gateway-api-crds ($GATEWAY_API_VERSION) are up to date"
  exit 0
fi

start=$(date +%s)
mkdir -p "$BIN"
work=$(mktemp -d "${TMPDIR:-/tmp}/traefik-build.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
cd "$work"

# Where the module proxy's copies land ($(go env GOMODCACHE), read-only).
moddir() { (cd "$work" && go mod download -json "$1" | jq -er .Dir); }
gw=$(moddir "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION")
[ -d "$gw/config/crd/standard" ] || { echo "traefik: no config/crd/standard in $gw" >&2; exit 1; }
rm -rf "$BIN/gateway-api-crds"; mkdir -p "$BIN/gateway-api-crds"
cp "$gw"/config/crd/standard/*.yaml "$BIN/gateway-api-crds/"
chmod u+w "$BIN"/gateway-api-crds/*.yaml
echo "$stamp" > "$BIN/gateway-api-crds/.stamp"
echo "traefik: Gateway API $GATEWAY_API_VERSION standard CRDs -> $BIN/gateway-api-crds ($(ls "$BIN/gateway-api-crds" | wc -l) files)"

src=$(moddir "github.com/traefik/traefik/v3@$TRAEFIK_VERSION")
[ -f "$src/cmd/traefik/traefik.go" ] || { echo "traefik: no cmd/traefik in $src" >&2; exit 1; }
cp -r "$src" "$work/traefik"
chmod -R u+w "$work/traefik"
cd "$work/traefik"
mkdir -p pkg/config/dynamic/ext webui/static
cp "$HERE"/ext/go.mod "$HERE"/ext/ext.go pkg/config/dynamic/ext/
go mod edit -replace "github.com/abbot/go-http-auth=$HTTP_AUTH"
(cd "$work" && go mod download -json "$HTTP_AUTH") | jq -r '"\(.Path) \(.Version) \(.Sum)", "\(.Path) \(.Version)/go.mod \(.GoModSum)"' >> go.sum
lego=$(go list -m -f '{{.Path}}@{{.Version}}' github.com/go-acme/lego/v5)
cp -r "$(moddir "$lego")" "$work/lego"
chmod -R u+w "$work/lego"
rm "$work"/lego/providers/dns/*.go
cp "$HERE"/lego-dns/dns_providers.go "$work/lego/providers/dns/"
go mod edit -replace "github.com/go-acme/lego/v5=$work/lego"
printf '<!doctype html><title>traefik</title><p>Dashboard assets are not built in this e2e build (e2e/traefik/build.sh).\n' > webui/static/index.html

echo "traefik: building $TRAEFIK_VERSION (cold Go cache: several minutes on 2 cores; warm: seconds)"
t0=$(date +%s)
go list -deps ./cmd/traefik >/dev/null   # downloads the modules the build needs (not the whole graph)
echo "traefik: module downloads and package graph $(( $(date +%s) - t0 ))s"
t0=$(date +%s)
# As traefik's Makefile (binary-linux-amd64) stamps it.
V=github.com/traefik/traefik/v3/pkg/version
go build -trimpath -ldflags "-s -w -X $V.Version=$TRAEFIK_VERSION -X $V.Codename=e2e -X $V.BuildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  -o "$BIN/traefik.tmp" ./cmd/traefik
mv "$BIN/traefik.tmp" "$BIN/traefik"
echo "traefik: go build $(( $(date +%s) - t0 ))s"
"$BIN/traefik" version | sed 's/^/traefik:   /'
if command -v file >/dev/null && ! file "$BIN/traefik" | grep -q 'statically linked'; then
  echo "traefik: $BIN/traefik is not statically linked" >&2; exit 1
fi
echo "$stamp" > "$BIN/traefik.stamp"
echo "traefik: built in $(( $(date +%s) - start ))s into $BIN/traefik"
