#!/usr/bin/env bash
# `make e2e`: the harness/control-plane tests, then each rollout scenario on its own (a fresh
# environment each). A scenario that fails, fails: there is no second run (docs/analysis.md says
# why the gates no longer need one).
set -uo pipefail
cd "$(dirname "$0")/.."
cargo test -p e2e --test controlplane --test prometheus --test harness --test kubectl_plugin --test dashboard -- --test-threads=1 || exit 1
# The product on a real node (kubelet, containerd, kube-proxy; the operator from its Helm chart): one
# node for the whole binary, so its tests run in one process.
start=$(date +%s)
cargo test -p e2e --test node -- --test-threads=1 --nocapture || exit 1
echo "=== node tests: $(( $(date +%s) - start ))s"
# Traefik (make traefik) on its own node: both providers honour the canary and weight primitives.
start=$(date +%s)
cargo test -p e2e --test traefik -- --test-threads=1 --nocapture || exit 1
echo "=== traefik tests: $(( $(date +%s) - start ))s"
tests=$(cargo test -q -p e2e --test scenarios -- --list --format terse 2>/dev/null | sed -n 's/: test$//p')
[ -n "$tests" ] || { echo "no scenarios found" >&2; exit 1; }
failed=()
# The machine's share over a scenario (from /proc/stat): the latency gates judge a shared VM, so
# each scenario says how busy the cores were and how much the host stole.
cpu() { awk '/^cpu /{print $2+$3+$4+$7+$8, $5+$6, $9}' /proc/stat; }
for t in $tests; do
  start=$(date +%s)
  read -r busy0 idle0 steal0 < <(cpu)
  if ! cargo test -p e2e --test scenarios -- --exact "$t" --test-threads=1 --nocapture; then
    failed+=("$t")
  fi
  read -r busy1 idle1 steal1 < <(cpu)
  total=$(( busy1 - busy0 + idle1 - idle0 + steal1 - steal0 ))
  echo "=== $t: $(( $(date +%s) - start ))s (cores busy $(( 100 * (busy1 - busy0) / (total > 0 ? total : 1) ))%, stolen by the host $(( 100 * (steal1 - steal0) / (total > 0 ? total : 1) ))%)"
done
n=$(echo "$tests" | wc -w)
[ ${#failed[@]} -eq 0 ] || echo "FAILED: ${failed[*]}"
echo "scenarios: $(( n - ${#failed[@]} )) passed, ${#failed[@]} failed"
[ ${#failed[@]} -eq 0 ]
