#!/usr/bin/env bash
# Installs the system packages the tests need on a Debian machine (run as root; CI runs it first on a new
# machine). Idempotent: when everything is installed it only checks and returns in about a second.
# Then sources every scripts/install-deps.d/*.sh, where each part of the project adds what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

# prometheus: the server and promtool (the system service is never started); openssl/curl/jq: the
# control-plane scripts. containerd/runc and the CNI plugins
# (bridge, host-local, loopback, portmap) run the e2e's real node; iptables is kube-proxy's Service data path.
packages=(prometheus openssl curl jq ca-certificates python3 python3-pip python3-venv
  containerd runc containernetworking-plugins iptables conntrack)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing packages: ${missing[*]}; run as root (or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  # Keep package scripts from starting prometheus or containerd as system services: the tests start their
  # own instances, and a system prometheus on :9090 would only get in the way.
  policy=/usr/sbin/policy-rc.d
  had_policy=; [ -e "$policy" ] && had_policy=1
  if [ -z "$had_policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends: prometheus recommends node-exporter and friends, which the tests do not use.
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  if [ -z "$had_policy" ]; then rm -f "$policy"; trap - EXIT; fi
  # Where systemd runs, also keep the units from starting at boot.
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    for unit in prometheus containerd; do
      systemctl disable --now "$unit" >/dev/null 2>&1 || true
    done
  fi
fi

# The binaries must work standalone (no service, no root-owned state).
prometheus --version >/dev/null 2>&1 || { echo "install-deps: 'prometheus --version' failed" >&2; exit 1; }
promtool --version >/dev/null 2>&1 || { echo "install-deps: 'promtool --version' failed" >&2; exit 1; }
echo "install-deps: $(prometheus --version 2>&1 | head -n1 | cut -d' ' -f1-3), openssl $(openssl version | cut -d' ' -f2)"

shopt -s nullglob
for part in scripts/install-deps.d/*.sh; do
  echo "install-deps: $part"
  # A subshell: a part's `cd`, variables or early `exit 0` cannot affect the next part.
  # shellcheck source=/dev/null
  # (Not `( ... ) || ...`: errexit would be off inside the part.)
  set +e
  ( set -e; source "$part" )
  rc=$?
  set -e
  [ "$rc" = 0 ] || { echo "install-deps: $part failed (exit $rc)" >&2; exit 1; }
done
