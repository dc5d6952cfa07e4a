#!/usr/bin/env bash
# Quick head to head at 16 connections, in the same couple of minutes: the Python baseline, then
# candle-embedder with default settings; each alone on 127.0.0.1, 5 s warm-up, 20 s closed loop.
# Prints one JSON report per server and its RSS. Needs target/release/{candle-embedder,embed-loadgen}
# and .venv-bench/ (scripts/bench.sh builds and creates them). About 2 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
lg=target/release/embed-loadgen
duration=${H2H_DURATION:-20s}
pid=""
trap '[[ -n $pid ]] && kill "$pid" 2>/dev/null || true' EXIT

ready() { # url
    for _ in $(seq 300); do
        curl -fsS -o /dev/null "$1/health/ready" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 1
    done
    return 1
}

# CPU time (user + system) of the server in clock ticks: much less load-dependent than wall time.
cpu_ticks() { sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}'; }

measure() { # label url
    "$lg" --url "$2" --concurrency 16 --duration 5s --json > /dev/null
    local before report
    before=$(cpu_ticks)
    report=$("$lg" --url "$2" --concurrency 16 --duration "$duration" --json)
    jq -c --arg name "$1" --argjson ticks "$(($(cpu_ticks) - before))" --argjson hz "$(getconf CLK_TCK)" \
        --argjson rss "$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")" \
        --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" \
        '{"label": $name, rss_kib: $rss, load: $load, server_cpu_s: ($ticks / $hz),
          server_cpu_ms_per_ok: ($ticks / $hz * 1000 / .ok)} + .' <<<"$report"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=""
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)" >&2
HF_HUB_OFFLINE=1 .venv-bench/bin/python bench/python_baseline/server.py --port 18090 \
    --model-dir models/all-MiniLM-L6-v2 > target/h2h-python.log 2>&1 &
pid=$!
ready http://127.0.0.1:18090
measure "python c16" http://127.0.0.1:18090

target/release/candle-embedder --host 127.0.0.1 --port 18080 > target/h2h-candle.log 2>&1 &
pid=$!
ready http://127.0.0.1:18080
measure "candle c16" http://127.0.0.1:18080
