#!/usr/bin/env bash
# `make demo`: run e2e/src/bin/demo.rs: a single-node cluster on this machine (the images from
# `make node-images`), Traefik, the operator's chart, and one rollout watched live; everything is
# torn down on exit or Ctrl-C. Extra args go to the demo, e.g.
# `bash e2e/demo.sh --provider gateway --candidate-arg=--chaos-latency-ms=40` to watch a rollback
# routed by a Gateway API HTTPRoute. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "make demo runs a real node (containerd, the kubelet, a bridge): run it as root" >&2; exit 1; }
cargo build -q -p e2e --bin demo
exec "${CARGO_TARGET_DIR:-target}/debug/demo" "$@"
