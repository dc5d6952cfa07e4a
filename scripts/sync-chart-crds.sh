#!/usr/bin/env bash
# Copies the generated CRDs (crds/*.yaml, from `make crds`) and the operator's ClusterRole
# (operator/rbac/clusterrole.yaml) into charts/embedding-rollout-operator, so the chart never carries
# a hand-edited copy. `--check` changes nothing and fails when the chart's copies differ (CI).
set -euo pipefail
cd "$(dirname "$0")/.."

chart=charts/embedding-rollout-operator
check=false
[[ "${1:-}" == "--check" ]] && check=true

# source -> destination pairs
pairs=()
shopt -s nullglob
crds=(crds/*.yaml)
if ((${#crds[@]} == 0)); then
    echo "sync-chart-crds: no crds/*.yaml (run \`make crds\`)" >&2
    exit 1
fi
for f in "${crds[@]}"; do pairs+=("$f" "$chart/crds/$(basename "$f")"); done
if [[ ! -s operator/rbac/clusterrole.yaml ]]; then
    echo "sync-chart-crds: operator/rbac/clusterrole.yaml is missing" >&2
    exit 1
fi
pairs+=(operator/rbac/clusterrole.yaml "$chart/files/clusterrole.yaml")

status=0
for ((i = 0; i < ${#pairs[@]}; i += 2)); do
    src=${pairs[i]} dst=${pairs[i + 1]}
    if cmp -s "$src" "$dst"; then continue; fi
    if $check; then
        echo "sync-chart-crds: $dst differs from $src (run scripts/sync-chart-crds.sh)" >&2
        diff -u "$dst" "$src" 2>/dev/null | head -n 40 >&2 || true
        status=1
    else
        install -D -m 0644 "$src" "$dst"
        echo "sync-chart-crds: $src -> $dst"
    fi
done

# A chart CRD whose source is gone would be installed forever: flag it too.
for dst in "$chart"/crds/*.yaml; do
    if [[ ! -e "crds/$(basename "$dst")" ]]; then
        if $check; then
            echo "sync-chart-crds: $dst has no source in crds/" >&2
            status=1
        else
            rm -f "$dst"
            echo "sync-chart-crds: removed stale $dst"
        fi
    fi
done
exit $status
