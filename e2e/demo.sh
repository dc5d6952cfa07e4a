#!/usr/bin/env bash
# `make demo`: build what is missing, then run e2e/src/bin/demo.rs (the whole system on this machine,
# one rollout watched live; everything is torn down on exit or Ctrl-C). Extra args go to the demo,
# e.g. `bash e2e/demo.sh --candidate-arg=--chaos-latency-ms=40` to watch a rollback.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p candle-embedder -p embedding-rollout-operator -p e2e --bins
exec "${CARGO_TARGET_DIR:-target}/debug/demo" "$@"
