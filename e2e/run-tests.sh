#!/usr/bin/env bash
# `make e2e`: the harness/control-plane tests, then each rollout scenario on its own (a fresh
# environment each). A scenario that fails, fails: there is no second run (docs/analysis.md says
# why the gates no longer need one).
set -uo pipefail
cd "$(dirname "$0")/.."
cargo test -p e2e --test controlplane --test prometheus --test harness -- --test-threads=1 || exit 1
tests=$(cargo test -q -p e2e --test scenarios -- --list --format terse 2>/dev/null | sed -n 's/: test$//p')
[ -n "$tests" ] || { echo "no scenarios found" >&2; exit 1; }
failed=()
for t in $tests; do
  start=$(date +%s)
  if ! cargo test -p e2e --test scenarios -- --exact "$t" --test-threads=1 --nocapture; then
    failed+=("$t")
  fi
  echo "=== $t: $(( $(date +%s) - start ))s"
done
n=$(echo "$tests" | wc -w)
[ ${#failed[@]} -eq 0 ] || echo "FAILED: ${failed[*]}"
echo "scenarios: $(( n - ${#failed[@]} )) passed, ${#failed[@]} failed"
[ ${#failed[@]} -eq 0 ]
