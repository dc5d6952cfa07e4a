#!/usr/bin/env bash
# make bench: load-generator benchmark of candle-embedder, with a typical Python service side by side.
#
# Builds the release binaries, then, each server alone on 127.0.0.1:
#   1. default settings: open loop 100 req/s for 30 s (target P95 < 35 ms), closed loop at 16/32/64
#      connections, RSS after warm-up and after 100k requests (target: growth <= 10 %);
#   2. a grid of settings (batch size/wait, inference threads, f32 vs INT8), closed loop at 32 connections,
#      then an open-loop rate sweep at the best one (target: >= 400 req/s sustained);
#   3. the Python baseline (sentence-transformers + FastAPI + uvicorn, bench/python_baseline/server.py),
#      closed loop at 16 connections, and the ratio to candle-embedder at 16 connections;
#   4. in process, no HTTP: a naive loop over candle-transformers' BertModel (bench/naive-bert) and
#      the same loop over our model;
#   5. ONNX Runtime peers (bench/ort/): the same model exported to ONNX, f32 and per-channel INT8, in
#      process and behind a FastAPI server with dynamic batching, closed loop at 16 connections, with
#      their cosine to f32 and the ratios to candle-embedder;
#   6. a fuzz run: BENCH_FUZZ_CASES (1M) generated and mutated requests (embed-fuzz) against a fresh
#      server: only 2xx/4xx/429/503/504, alive after, RSS before/peak/after.
# Every run's JSON report goes to $BENCH_OUT/results.jsonl; a summary to $BENCH_OUT/summary.md.
# Whole script: about 25-30 minutes (the 100k-request run alone takes ~8 at 200 req/s). BENCH_QUICK=1 shortens every run (smoke test of the script only).
#
# Env: BENCH_OUT (target/bench), BENCH_PORT (18080), BENCH_PY_PORT (18090), BENCH_SKIP_PYTHON=1,
#      BENCH_SKIP_NAIVE=1, BENCH_SKIP_ORT=1, BENCH_SKIP_FUZZ=1, BENCH_FUZZ_CASES (1000000),
#      BENCH_QUICK=1, PYTHON (python3, to create .venv-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

out=${BENCH_OUT:-target/bench}
port=${BENCH_PORT:-18080}
py_port=${BENCH_PY_PORT:-18090}
quick=${BENCH_QUICK:-0}
model_dir=models/all-MiniLM-L6-v2
url="http://127.0.0.1:$port"
py_url="http://127.0.0.1:$py_port"

mkdir -p "$out"
results="$out/results.jsonl"
: > "$results"

if [[ $quick == 1 ]]; then
    d_short=3s d_long=5s d_warm=2s topup_target=3000
else
    d_short=15s d_long=30s d_warm=10s topup_target=100000
fi

log() { printf '\n== %s\n' "$*" >&2; }

# ---------------------------------------------------------------- processes
server_pid=""
cleanup() {
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

wait_ready() { # url seconds
    local deadline=$((SECONDS + $2))
    until curl -fsS -o /dev/null "$1/health/ready" 2>/dev/null; do
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "bench: the server exited before it was ready" >&2
            return 1
        fi
        if ((SECONDS >= deadline)); then
            echo "bench: $1 not ready within $2 s" >&2
            return 1
        fi
        sleep 0.5
    done
}

start_embedder() { # label, extra args...
    local label=$1
    shift
    log "candle-embedder [$label] $*"
    target/release/candle-embedder --host 127.0.0.1 --port "$port" "$@" \
        > "$out/embedder-$label.log" 2>&1 &
    server_pid=$!
    wait_ready "$url" 180
}

stop_server() {
    cleanup
    server_pid=""
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$server_pid/status"; }

# CPU time (user + system, all threads) the server has used, in clock ticks. On a shared machine the
# wall-clock rate depends on the neighbours; CPU time per request much less.
clk_tck=$(getconf CLK_TCK)
cpu_ticks() { sed 's/.*) //' "/proc/$server_pid/stat" | awk '{print $12 + $13}'; }

# ---------------------------------------------------------------- load
served=0 # requests answered by the current server instance since its warm-up

# run LABEL URL loadgen-args... : prints the human report, records the JSON line with its label.
run() {
    local label=$1 target_url=$2
    shift 2
    log "$label: embed-loadgen $*"
    local output json cpu_before cpu_after
    cpu_before=$(cpu_ticks)
    output=$(target/release/embed-loadgen --url "$target_url" "$@") || true
    cpu_after=$(cpu_ticks)
    json=$(tail -n1 <<<"$output")
    if ! jq -e . >/dev/null 2>&1 <<<"$json"; then
        echo "bench: no report from embed-loadgen for $label" >&2
        return 1
    fi
    json=$(jq -c --arg name "$label" --argjson ticks "$((cpu_after - cpu_before))" \
        --argjson hz "$clk_tck" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" \
        '{"label": $name} + . + {server_cpu_s: ($ticks / $hz), load: $load,
          server_cpu_ms_per_ok: (if .ok > 0 then $ticks / $hz * 1000 / .ok else null end)}' <<<"$json")
    head -n -1 <<<"$output" >&2
    jq -r '"server CPU  \(.server_cpu_s) s, \(.server_cpu_ms_per_ok // "-") ms per successful request; load \(.load)"' \
        <<<"$json" >&2
    echo "$json" >> "$results"
    served=$((served + $(jq -r .requests <<<"$json")))
    last_json=$json
}

warmup() { # url [model]
    target/release/embed-loadgen --url "$1" --concurrency 16 --duration "$d_warm" --json \
        ${2:+--model "$2"} > /dev/null || true
}

# sustained: at most 0.1 % errors, at least 98 % of the offered rate, and P95 <= 100 ms (no queue build-up)
sustained() {
    jq -e '.error_rate <= 0.001 and .achieved_rps >= 0.98 * .target_rate and .latency_ms.p95 <= 100' \
        >/dev/null <<<"$last_json"
}

# ---------------------------------------------------------------- build and machine
log "build (release)"
# One package per build: built together, shared dependencies get unified features and are compiled a
# second time, next to the copies the other `cargo build -p ...` commands of the workspace made.
cargo build --release -p candle-embedder
cargo build --release -p embed-loadgen --bins
[[ -s $model_dir/model.safetensors ]] || bash scripts/fetch-model.sh

# Per-core peaks measured now (f32 FMA and int8 dot chains, GMAC/s), and the kernels in use.
peaks=$(BENCH_PEAKS=1 cargo bench --quiet -p candle-embedder --bench inference 2>/dev/null | tail -n1)
jq -e . >/dev/null <<<"$peaks" || peaks='{"f32_peak_gmacs": 0, "int8_peak_gmacs": 0}'
cores=$(nproc)
# all-MiniLM-L6-v2: 21.2 MFLOP = 10.6 M multiply-adds per token in its linear layers; INT8 runs
# 2/3 of them (the FFN down-projection stays f32). Rooflines in tokens/s for the whole machine.
f32_roof_tps=$(jq -n --argjson p "$peaks" --argjson c "$cores" '$p.f32_peak_gmacs * 1e9 * $c / 10.6e6')
int8_roof_tps=$(jq -n --argjson p "$peaks" --argjson c "$cores" \
    'if $p.int8_peak_gmacs > 0 then 1e9 * $c / (10.6e6 * (2 / 3 / $p.int8_peak_gmacs + 1 / 3 / $p.f32_peak_gmacs)) else 0 end')
{
    echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), family $(lscpu | sed -n 's/^CPU family: *//p') model $(lscpu | sed -n 's/^Model: *//p'), $(nproc) cores ($(lscpu | sed -n 's/^Hypervisor vendor: *//p' | sed 's/^/hypervisor /'))"
    jq -r '"peaks per core (GMAC/s, measured now): f32 FMA ymm \(.fma256_gmacs // 0), zmm \(.fma512_gmacs // 0); int8 AVX2 \(.int8_avx2_gmacs // 0), AVX-VNNI \(.int8_vnni256_gmacs // 0), AVX512-VNNI \(.int8_vnni512_gmacs // 0); kernels: f32 \(.f32_kernel // "?"), int8 \(.int8_kernel // "?")"' <<<"$peaks"
    echo "roofline (linear layers at peak on $cores cores): f32 $(printf %.0f "$f32_roof_tps") tokens/s, int8 $(printf %.0f "$int8_roof_tps") tokens/s"
    flags=$(grep -m1 '^flags' /proc/cpuinfo)
    echo "avx2: $(grep -qw avx2 <<<"$flags" && echo yes || echo no), avx512f: $(grep -qw avx512f <<<"$flags" && echo yes || echo no)"
    echo "memory: $(free -g | awk '/^Mem:/ {print $2}') GiB"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "date: $(date -u +%FT%TZ)  commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- embedder loadgen || echo ' + uncommitted changes in embedder/ or loadgen/')"
} | tee "$out/machine.txt" >&2

# ---------------------------------------------------------------- 1. default settings
start_embedder default --model-dir "$model_dir"
# Tokens of the seed request (what loadgen sends): turns req/s into a fraction of the roofline.
seed_tokens=$(curl -fsS "$url/api/v1/embed" -H 'content-type: application/json' \
    -d '{"texts": ["Machine learning and artificial intelligence", "Natural language processing with transformers"]}' \
    | jq -r .usage.tokens)
warmup "$url"
rss_warm=$(rss_kib)
echo "RSS after warm-up: $rss_warm KiB" >&2

run "default open 100rps" "$url" --rate 100 --duration "$d_long" --connections 64
p95_100=$(jq -r .latency_ms.p95 <<<"$last_json")

for c in 16 32 64; do
    run "default closed c$c" "$url" --concurrency "$c" --duration "$d_short"
done
candle_c16=$(jq -r 'select(.label == "default closed c16") | .achieved_rps' "$results")

remaining=$((topup_target - served))
if ((remaining > 0)); then
    run "default closed c32 top-up to $topup_target requests" "$url" \
        --concurrency 32 --requests "$remaining" --duration 900s # bounded: a slow server serves fewer
fi
rss_after=$(rss_kib)
echo "RSS after $served requests: $rss_after KiB" >&2
jq -nc --arg name "rss default" --argjson warm "$rss_warm" --argjson after "$rss_after" \
    --argjson served "$served" \
    '{"label": $name, rss_warm_kib: $warm, rss_after_kib: $after, requests: $served,
      growth: (($after - $warm) / $warm)}' >> "$results"
stop_server

# ---------------------------------------------------------------- 2. settings grid
cat > "$out/models.yaml" <<YAML
models:
  - name: all-MiniLM-L6-v2
    path: $root/$model_dir
    default: true
  - name: all-MiniLM-L6-v2-int8
    path: $root/$model_dir
    quantization: int8
YAML

# label | server args | model
grid=(
    "b32-w3|--max-batch-size 32 --max-batch-wait-ms 3|all-MiniLM-L6-v2"
    "b16-w2|--max-batch-size 16 --max-batch-wait-ms 2|all-MiniLM-L6-v2"
    "b64-w5|--max-batch-size 64 --max-batch-wait-ms 5|all-MiniLM-L6-v2"
    "b32-w3-t1|--max-batch-size 32 --max-batch-wait-ms 3 --inference-threads 1|all-MiniLM-L6-v2"
    "b32-w3-op1|--max-batch-size 32 --max-batch-wait-ms 3 --intra-op-threads 1|all-MiniLM-L6-v2"
    "int8-b32-w3|--max-batch-size 32 --max-batch-wait-ms 3|all-MiniLM-L6-v2-int8"
    "int8-b64-w5|--max-batch-size 64 --max-batch-wait-ms 5|all-MiniLM-L6-v2-int8"
)
# INT8 at the default settings and 16 connections, beside "default closed c16" (f32)
start_embedder int8-default --models "$out/models.yaml"
warmup "$url" all-MiniLM-L6-v2-int8
run "int8 closed c16" "$url" --concurrency 16 --duration "$d_short" --model all-MiniLM-L6-v2-int8
int8_c16=$(jq -r .achieved_rps <<<"$last_json")
stop_server

best_rps=0 best=""
for entry in "${grid[@]}"; do
    IFS='|' read -r label args model <<<"$entry"
    # shellcheck disable=SC2086 # args is a word list on purpose
    start_embedder "$label" --models "$out/models.yaml" $args
    warmup "$url" "$model"
    run "grid $label closed c32" "$url" --concurrency 32 --duration "$d_short" --model "$model"
    rps=$(jq -r .achieved_rps <<<"$last_json")
    if jq -e --argjson a "$rps" --argjson b "$best_rps" -n '$a > $b' >/dev/null; then
        best_rps=$rps best=$entry
    fi
    stop_server
done

# INT8 vs f32 agreement on the benchmark texts (cosine of the two embeddings of each text)
IFS='|' read -r best_label best_args best_model <<<"$best"
# shellcheck disable=SC2086
start_embedder "best-$best_label" --models "$out/models.yaml" $best_args
body='{"texts": ["Machine learning and artificial intelligence", "Natural language processing with transformers"]}'
f32=$(curl -fsS "$url/api/v1/embed" -H 'content-type: application/json' \
    -d "$(jq -c '. + {model: "all-MiniLM-L6-v2"}' <<<"$body")")
int8=$(curl -fsS "$url/api/v1/embed" -H 'content-type: application/json' \
    -d "$(jq -c '. + {model: "all-MiniLM-L6-v2-int8"}' <<<"$body")")
jq -nc --argjson a "$f32" --argjson b "$int8" '
    def dot(x; y): [x, y] | transpose | map(.[0] * .[1]) | add;
    def cos(x; y): dot(x; y) / ((dot(x; x) | sqrt) * (dot(y; y) | sqrt));
    {"label": "int8 cosine to f32",
     cosines: [range($a.embeddings | length) | cos($a.embeddings[.]; $b.embeddings[.])]}' \
    | tee -a "$results" >&2

# open-loop sweep at the best setting: the highest rate that is sustained
warmup "$url" "$best_model"
max_sustained=0
for rate in 100 200 300 400 500 600 800; do
    run "best $best_label open ${rate}rps" "$url" --rate "$rate" --duration "$d_short" \
        --connections 128 --model "$best_model"
    if sustained; then max_sustained=$rate; else break; fi
done
stop_server

# P95 at half the measured capacity (closed loop c16, default settings), open loop
start_embedder half-capacity --model-dir "$model_dir"
warmup "$url"
half_rate=$(jq -n --argjson c "$candle_c16" '$c / 2 | floor')
run "default open ${half_rate}rps (half of c16 capacity)" "$url" --rate "$half_rate" --duration "$d_long" --connections 64
p95_half=$(jq -r .latency_ms.p95 <<<"$last_json")
stop_server

# ---------------------------------------------------------------- 3. Python baseline
python_rps=""
if [[ ${BENCH_SKIP_PYTHON:-0} != 1 ]]; then
    venv=.venv-bench
    if ! "$venv/bin/python" -c 'import sentence_transformers, fastapi, uvicorn' 2>/dev/null; then
        log "installing the Python baseline's stack into $venv (torch is large)"
        "${PYTHON:-python3}" -m venv "$venv"
        "$venv/bin/pip" install --quiet -r bench/python_baseline/requirements.txt
    fi
    log "python baseline (sentence-transformers $("$venv/bin/python" -c 'import sentence_transformers as s; print(s.__version__)'), torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)'))"
    HF_HUB_OFFLINE=1 "$venv/bin/python" bench/python_baseline/server.py \
        --host 127.0.0.1 --port "$py_port" --model-dir "$model_dir" > "$out/python.log" 2>&1 &
    server_pid=$!
    wait_ready "$py_url" 300
    warmup "$py_url"
    py_rss=$(rss_kib)
    run "python closed c16" "$py_url" --concurrency 16 --duration "$d_long"
    python_rps=$(jq -r .achieved_rps <<<"$last_json")
    run "python open 40rps" "$py_url" --rate 40 --duration "$d_short" --connections 64
    run "python open 100rps" "$py_url" --rate 100 --duration "$d_short" --connections 64
    echo "python RSS: $py_rss KiB" >&2
    stop_server
fi

# ---------------------------------------------------------------- 4. naive candle baseline
# In-process, no HTTP: a loop over candle-transformers' BertModel (bench/naive-bert, its own crate so
# the workspace's tests never compile candle-transformers) against the same loop over our model.
naive_rps="" ours_rps=""
if [[ ${BENCH_SKIP_NAIVE:-0} != 1 ]]; then
    log "naive loop over candle-transformers' BertModel (bench/naive-bert)"
    naive_json=$(cargo run --quiet --release --manifest-path bench/naive-bert/Cargo.toml -- \
        --model-dir "$model_dir" --seconds "${d_long%s}" | tail -n1)
    naive_rps=$(jq -r .req_per_s <<<"$naive_json")
    jq -c '{"label": "naive candle-transformers BertModel loop"} + .' <<<"$naive_json" | tee -a "$results" >&2
    log "the same loop over candle-embedder's model (BENCH_SEED=1)"
    seed_line=$(BENCH_SEED=1 BENCH_SECONDS="${d_long%s}" cargo bench --quiet -p candle-embedder \
        --bench inference 2>/dev/null | grep '^seed request loop')
    echo "$seed_line" >&2
    ours_rps=$(sed -n 's/.* \([0-9.]*\) req\/s.*/\1/p' <<<"$seed_line")
    jq -nc --arg line "$seed_line" --argjson rps "$ours_rps" \
        '{"label": "candle-embedder model loop", req_per_s: $rps, line: $line}' >> "$results"
fi

# ---------------------------------------------------------------- 5. ONNX Runtime peers
ort_f32="" ort_int8="" ort_f32_unbatched=""
if [[ ${BENCH_SKIP_ORT:-0} != 1 ]]; then
    venv=.venv-bench
    if ! "$venv/bin/python" -c 'import onnxruntime, onnx, transformers, fastapi, uvicorn' 2>/dev/null; then
        log "installing the peers' Python stack into $venv (torch is large)"
        "${PYTHON:-python3}" -m venv "$venv"
        "$venv/bin/pip" install --quiet -r bench/python_baseline/requirements.txt
    fi
    ort_dir=$out/ort
    if [[ ! -s $ort_dir/model-int8.onnx || $model_dir/model.safetensors -nt $ort_dir/model-int8.onnx ]]; then
        log "export to ONNX (opset 17) and per-channel INT8 (bench/ort/export.py)"
        "$venv/bin/python" bench/ort/export.py --model-dir "$model_dir" --out "$ort_dir" >&2
    fi
    log "ONNX Runtime $("$venv/bin/python" -c 'import onnxruntime as o; print(o.__version__)') in process (bench/ort/inproc.py)"
    ort_inproc=$("$venv/bin/python" bench/ort/inproc.py --model-dir "$model_dir" --models "$ort_dir" \
        --threads "$cores" --seconds "${d_short%s}" | tee /dev/stderr | tail -n1)
    jq -c '{"label": "ort in process"} + .' <<<"$ort_inproc" >> "$results"
    # label | model | batch wait ms (0 = one inference per request)
    for entry in "f32|model-f32.onnx|2" "int8|model-int8.onnx|2" "f32-unbatched|model-f32.onnx|0"; do
        IFS='|' read -r label file wait <<<"$entry"
        log "ONNX Runtime server [$label]"
        "$venv/bin/python" bench/ort/server.py --host 127.0.0.1 --port "$py_port" --model "$ort_dir/$file" \
            --model-dir "$model_dir" --threads "$cores" --batch-wait-ms "$wait" > "$out/ort-$label.log" 2>&1 &
        server_pid=$!
        wait_ready "$py_url" 120
        warmup "$py_url"
        run "ort-$label closed c16" "$py_url" --concurrency 16 --duration "$d_long"
        declare "ort_${label//-/_}=$(jq -r .achieved_rps <<<"$last_json")"
        stop_server
    done
fi

# ---------------------------------------------------------------- 6. fuzz
if [[ ${BENCH_SKIP_FUZZ:-0} != 1 ]]; then
    fuzz_cases=${BENCH_FUZZ_CASES:-1000000}
    [[ $quick == 1 ]] && fuzz_cases=${BENCH_FUZZ_CASES:-20000}
    start_embedder fuzz --models "$out/models.yaml"
    warmup "$url"
    log "fuzz: $fuzz_cases generated requests (embed-fuzz)"
    fuzz_json=$(target/release/embed-fuzz --addr "127.0.0.1:$port" --cases "$fuzz_cases" --pid "$server_pid" \
        --max-time 1500s | tail -n1) || true
    jq -c '{"label": "fuzz"} + .' <<<"$fuzz_json" >> "$results" || echo "bench: no fuzz report" >&2
    stop_server
fi

# ---------------------------------------------------------------- summary
{
    echo "# make bench summary"
    echo
    sed 's/^/    /' "$out/machine.txt"
    echo "    load after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "| run | target req/s | achieved req/s | p50 ms | p95 ms | p99 ms | max ms | errors | server CPU ms/req | load |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    jq -r 'select(.latency_ms) | "| \(.label) | \(.target_rate // "closed") | \(.achieved_rps * 10 | round / 10) | \(.latency_ms.p50) | \(.latency_ms.p95) | \(.latency_ms.p99) | \(.latency_ms.max) | \(.errors) \(.errors_by_kind | to_entries | map("\(.key)=\(.value)") | join(" ")) | \(.server_cpu_ms_per_ok // "-" | if type == "number" then (. * 100 | round / 100) else . end) | \(.load) |"' "$results"
    echo
    echo "- roofline: f32 $(printf %.0f "$f32_roof_tps") tokens/s = $(jq -n --argjson r "$f32_roof_tps" --argjson t "$seed_tokens" '$r / $t | round') seed requests/s ($seed_tokens tokens), int8 $(printf %.0f "$int8_roof_tps") tokens/s"
    jq -r --argjson fr "$f32_roof_tps" --argjson ir "$int8_roof_tps" --argjson t "$seed_tokens" \
        'select(.latency_ms and (.label | test("^(default|grid|best)"))) | (if (.label | test("int8")) then $ir else $fr end) as $roof
        | "- \(.label): \(.achieved_rps * 10 | round / 10) req/s = \(.achieved_rps * $t / $roof * 1000 | round / 10) % of the \(if (.label | test("int8")) then "int8" else "f32" end) roofline"' "$results"
    echo "- P95 at 100 req/s (default settings): $p95_100 ms (target < 35 ms); at half the c16 capacity ($half_rate req/s): $p95_half ms"
    echo "- closed loop at 16 connections: f32 $candle_c16 req/s, INT8 $int8_c16 req/s: $(jq -n --argjson a "$int8_c16" --argjson b "$candle_c16" '$a / $b * 100 | round / 100')x (target >= 1.5x where int8 dots run at twice the f32 rate)"
    echo "- best setting: $best_label ($best_args, model $best_model), closed loop c32: $best_rps req/s"
    echo "- highest sustained open-loop rate at the best setting (of 100, 200, ..., 600, 800): $max_sustained req/s (target >= 400)"
    jq -r 'select(.label == "rss default") | "- RSS after warm-up \(.rss_warm_kib) KiB, after \(.requests) requests \(.rss_after_kib) KiB: growth \(.growth * 1000 | round / 10) % (target <= 10 %)"' "$results"
    jq -r 'select(.label == "int8 cosine to f32") | "- INT8 vs f32 cosine on the two texts: \(.cosines | map(tostring) | join(", "))"' "$results"
    if [[ -n $naive_rps && -n $ours_rps ]]; then
        echo "- in-process loop, seed request (2 texts) back to back: candle-transformers BertModel $naive_rps req/s, candle-embedder's model $ours_rps req/s: $(jq -n --argjson a "$ours_rps" --argjson b "$naive_rps" '$a / $b * 10 | round / 10')x"
    fi
    if [[ -n $python_rps ]]; then
        ratio=$(jq -n --argjson a "$candle_c16" --argjson b "$python_rps" '$a / $b * 10 | round / 10')
        echo "- closed loop at 16 connections: candle-embedder (default settings) $candle_c16 req/s, Python baseline $python_rps req/s: ${ratio}x"
        jq -rs 'map(select(.label == "default closed c16" or .label == "python closed c16")) | map({(.label): .server_cpu_ms_per_ok}) | add
            | "- server CPU per request at 16 connections: candle-embedder \(.["default closed c16"] * 100 | round / 100) ms, Python baseline \(.["python closed c16"] * 100 | round / 100) ms: \(.["python closed c16"] / .["default closed c16"] * 10 | round / 10)x less CPU"' "$results"
    fi
    if [[ -n $ort_int8 ]]; then
        best_c16=$(jq -n --argjson a "$candle_c16" --argjson b "$int8_c16" '[$a, $b] | max')
        echo "- ONNX Runtime servers at 16 connections (FastAPI, dynamic batching): f32 $ort_f32 req/s, INT8 $ort_int8 req/s, f32 without batching $ort_f32_unbatched req/s; candle-embedder's best ($best_c16) is $(jq -n --argjson a "$best_c16" --argjson b "$ort_int8" '$a / $b * 100 | round / 100')x ORT INT8 (target >= 1.6x), $(jq -n --argjson a "$best_c16" --argjson b "$ort_f32" '$a / $b * 100 | round / 100')x ORT f32 (target >= 3x)"
        jq -r 'select(.label == "ort in process") | "- ORT in process: " + ([.cases[] | select(.case == "batch 32" or .case == "8 x 256 tokens") | "\(.model) \(.case) \(.tokens_per_s | round) tokens/s"] | join(", ")) + "; ORT INT8 cosine to ORT f32 over 64 texts: min \(.int8_cosine_min * 100000 | round / 100000)"' "$results"
    fi
    jq -r 'select(.label == "fuzz") | "- fuzz: \(.cases) requests in \(.seconds | round) s, violations \(.violations), alive after: \(.alive_after), statuses \(.by_status | to_entries | map("\(.key)=\(.value)") | join(" ")), RSS \(.rss_before_kib) -> peak \(.rss_peak_kib) -> \(.rss_after_kib) KiB"' "$results"
} | tee "$out/summary.md"
