#!/usr/bin/env bash
# Stops the control plane that `up.sh WORKDIR` started (by the pids it recorded) and, with --clean,
# removes WORKDIR.   down.sh [--clean] WORKDIR
set -euo pipefail
clean=
if [ "${1:-}" = --clean ]; then clean=1; shift; fi
W=${1:-${W:-}}
[ -n "$W" ] && [ -d "$W" ] || { echo "usage: down.sh [--clean] WORKDIR" >&2; exit 2; }
for name in apiserver etcd; do
  f="$W/$name.pid"
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
done
rm -f "$W/controlplane.env"
if [ -n "$clean" ]; then rm -rf "$W"; fi
echo "down.sh: control plane in $W stopped"
