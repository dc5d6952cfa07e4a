#!/usr/bin/env bash
# `make e2e`: everything on real parts. The control-plane, Prometheus, kubectl-plugin and dashboard
# tests need only the API server; the rest runs on a real single-node cluster (kubelet, containerd,
# kube-proxy, the controllers, Traefik; the operator from its Helm chart), one node per test binary,
# started by its first test, a namespace per test. A test that fails, fails: there is no second run
# (docs/analysis.md says why the gates no longer need one). Needs root (the node).
set -uo pipefail
cd "$(dirname "$0")/.."
stage() { # stage NAME CARGO-TEST-ARGS...: one binary, timed; stops the run on failure
  local name=$1 start; shift
  start=$(date +%s)
  cargo test -p e2e "$@" -- --test-threads=1 --nocapture || { echo "=== $name: FAILED after $(( $(date +%s) - start ))s"; exit 1; }
  echo "=== $name: $(( $(date +%s) - start ))s"
}
stage "API-server tests" --test controlplane --test prometheus --test kubectl_plugin --test dashboard
# The product on the node: images, the chart's operator pods, crash loops, leader handover, restarts.
stage "node tests" --test node
# Traefik's two providers honour the primitives, then whole rollouts through each.
stage "traefik tests" --test traefik
# The rollout scenarios (each prints its wall time and how busy the cores were meanwhile).
stage "rollout scenarios" --test scenarios
