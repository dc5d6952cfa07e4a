#!/usr/bin/env bash
# make charts-check: proof that what a platform team installs is accepted by the real tools.
#   1. the chart's CRD and ClusterRole are the operator's (scripts/sync-chart-crds.sh --check)
#   2. the Grafana dashboard parses, matches dashboards/generate.py, and all its PromQL parses (promtool)
#   3. the alert rules parse and pass their unit tests (promtool check rules / test rules); so do the
#      PromQL overrides in examples/ and the default query templates of docs/interfaces.md
#   4. helm lint --strict and helm template of both charts, for the default values and every ci/*.yaml;
#      invalid values must fail to render
#   5. on a local kube-apiserver (e2e/controlplane/up.sh): the CRD is installed, then every rendered
#      manifest and every example passes a server-side dry run with strict field validation, broken
#      rollouts are rejected, and the operator's RBAC allows what it needs and nothing more
#      (SubjectAccessReview). ServiceMonitor/PodMonitor/PrometheusRule have no CRD there: they are skipped from the
#      dry run by name and checked by promtool and a structural check instead.
#   6. the operator binary (target/debug or OPERATOR_BIN) runs with the chart's arguments and a token
#      of the chart's ServiceAccount: leader election, a reconciled demo rollout, no RBAC denial
# Env: HELM (default bin/helm), PROMTOOL (default promtool), KEEP=1 keeps the work dir.
# Every check runs even after a failure; the exit status says whether any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
HELM=${HELM:-$ROOT/bin/helm}
PROMTOOL=${PROMTOOL:-promtool}
KUBE_VERSION=1.34.7
OP=charts/embedding-rollout-operator
CE=charts/candle-embedder

failures=()
section() { printf '\n== %s\n' "$*"; }
check() { # check DESCRIPTION CMD...: run, record a failure, never stop
    local what=$1; shift
    if "$@"; then echo "  ok      $what"; return 0; fi
    echo "  FAIL    $what"
    failures+=("$what")
    return 1
}
die() { echo "check-charts: $*" >&2; exit 2; }

[[ -x "$HELM" ]] || die "$HELM not found: run \`make helm\`"
command -v "$PROMTOOL" >/dev/null || die "promtool not found: run \`make deps\` (Debian package prometheus)"
python3 -c 'import yaml' 2>/dev/null || die "python3 with PyYAML needed: apt-get install python3-yaml"
command -v curl >/dev/null || die "curl not found"

work=$(mktemp -d /tmp/charts-check.XXXXXX)
up_pid=
cleanup() {
    if [[ -n "$up_pid" ]]; then
        kill -TERM "$up_pid" 2>/dev/null || true  # up.sh --foreground stops etcd + kube-apiserver
        wait "$up_pid" 2>/dev/null || true
    fi
    if [[ "${KEEP:-}" == 1 ]]; then echo "check-charts: work dir kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

promtool_rules() { "$PROMTOOL" check rules "$1" >"$work/promtool.out" 2>&1 || { cat "$work/promtool.out"; return 1; }; }

# ---------------------------------------------------------------------------------------------------
section "1. one source of truth for the CRD and the ClusterRole"
check "chart crds/ and files/clusterrole.yaml equal crds/ and operator/rbac/clusterrole.yaml" \
    scripts/sync-chart-crds.sh --check

# ---------------------------------------------------------------------------------------------------
section "2. Grafana dashboard"
DASH=$OP/dashboards/candle-vs-mlx.json
check "dashboard JSON parses" python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$DASH"
check "dashboard JSON is what dashboards/generate.py prints" \
    bash -c 'python3 dashboards/generate.py | cmp -s - "$1" || { echo "  run: python3 dashboards/generate.py > $1"; exit 1; }' _ "$DASH"
check "every dashboard PromQL parses (promtool)" \
    bash -c 'python3 scripts/extract-promql.py dashboard "$1" > "$2" && "$3" check rules "$2" >/dev/null' _ "$DASH" "$work/dashboard-rules.yaml" "$PROMTOOL"

# ---------------------------------------------------------------------------------------------------
section "3. alert rules and rollout queries"
check "alert rules parse (promtool check rules $OP/files/alerts.yaml)" promtool_rules "$OP/files/alerts.yaml"
check "alert unit tests pass (promtool test rules dashboards/alerts_test.yaml)" \
    bash -c '"$1" test rules dashboards/alerts_test.yaml >"$2" 2>&1 || { cat "$2"; exit 1; }' _ "$PROMTOOL" "$work/promtool-test.out"
check "PromQL overrides in examples/ parse" \
    bash -c 'python3 scripts/extract-promql.py rollouts examples/*.yaml > "$1" && "$2" check rules "$1" >/dev/null' _ "$work/rollout-rules.yaml" "$PROMTOOL"
check "default query templates in docs/interfaces.md parse" \
    bash -c 'python3 scripts/extract-promql.py interfaces docs/interfaces.md > "$1" && "$2" check rules "$1" >/dev/null' _ "$work/default-rules.yaml" "$PROMTOOL"

check "every embedder/operator metric the dashboard and alerts use is one the code exports" \
    python3 - "$work/dashboard-rules.yaml" "$OP/files/alerts.yaml" <<'PY'
import re, sys, pathlib
exported = set()
for f in ("embedder/src/metrics.rs", "operator/src/metrics.rs"):
    exported |= set(re.findall(r'"((?:embedding|circuit_breaker|model_loaded)_[a-z_]+)"', pathlib.Path(f).read_text()))
used = set()
for f in sys.argv[1:]:
    used |= set(re.findall(r"\b((?:embedding|circuit_breaker|model_loaded)_[a-z_]+)\b", open(f).read()))
unknown = sorted(n for n in used if n not in exported and re.sub(r"_(bucket|sum|count)$", "", n) not in exported)
print(f"          {len(used)} names used, {len(exported)} exported" + (f"; unknown: {unknown}" if unknown else ""))
sys.exit(1 if unknown else 0)
PY

# ---------------------------------------------------------------------------------------------------
section "4. helm lint and helm template"
mkdir -p "$work/rendered"
rendered=()
# render CHART RELEASE NAMESPACE VALUES|-: writes $work/rendered/<release>.yaml
render() {
    local chart=$1 release=$2 ns=$3 values=$4 out="$work/rendered/$2.yaml"
    local args=(template "$release" "$chart" --namespace "$ns" --kube-version "$KUBE_VERSION" --include-crds)
    [[ "$values" != - ]] && args+=(--values "$values")
    "$HELM" "${args[@]}" >"$out" 2>"$out.err" || { cat "$out.err"; return 1; }
    rendered+=("$out")
}
lint() {
    local chart=$1 values=$2 args=(lint --strict "$1" --kube-version "$KUBE_VERSION")
    [[ "$values" != - ]] && args+=(--values "$values")
    "$HELM" "${args[@]}" >"$work/lint.out" 2>&1 || { cat "$work/lint.out"; return 1; }
}
declare -A release_ns=()
for chart in "$OP" "$CE"; do
    name=$(basename "$chart")
    ns=embedding-rollout-system; [[ "$chart" == "$CE" ]] && ns=production
    for values in - "$chart"/ci/*.yaml; do
        tag=default; [[ "$values" != - ]] && tag=$(basename "$values" -values.yaml)
        release="$name-$tag"; [[ "$tag" == default ]] && release=$name
        check "helm lint --strict $name ($tag values)" lint "$chart" "$values"
        check "helm template $name ($tag values)" render "$chart" "$release" "$ns" "$values"
        release_ns[$release]=$ns
    done
done

# The Gateway API provider's RBAC and watch exist only when asked for.
gateway_rbac() { # gateway_rbac RELEASE yes|no
    local f="$work/rendered/$1.yaml" n
    n=$(grep -c -- '- httproutes$' "$f"; true)
    local flag; flag=$(grep -c -- '- --gateway-api$' "$f"; true)
    if [[ $2 == yes ]]; then ((n >= 1 && flag == 1)); else ((n == 0 && flag == 0)); fi
}
check "operator: httproutes RBAC and --gateway-api only with gatewayAPI.enabled" \
    bash -c "$(declare -f gateway_rbac); work='$work'; gateway_rbac embedding-rollout-operator no && gateway_rbac embedding-rollout-operator-all-on yes"

# The web dashboard (--dashboard-addr) and its Events RBAC only when asked for; exposed beyond the
# pod only with a token, and then through the Service.
web_dashboard() { # web_dashboard RELEASE yes|no
    python3 - "$work/rendered/$1.yaml" "$2" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
dep = next(d for d in docs if d["kind"] == "Deployment")
args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
flag = [a for a in args if a.startswith("--dashboard-addr=")]
events_list = any("events" in r["resources"] and "list" in r["verbs"]
                  for d in docs if d["kind"] in ("Role", "ClusterRole") for r in d.get("rules", []))
ports = [p["name"] for d in docs if d["kind"] == "Service" for p in d["spec"]["ports"]]
if sys.argv[2] == "yes":
    ok = (flag == ["--dashboard-addr=0.0.0.0:8082"] and events_list and "dashboard" in ports
          and any(a.startswith("--dashboard-token-file=") for a in args))
else:
    ok = not flag and not events_list and "dashboard" not in ports
print(f"          {flag} events list: {events_list} service ports: {ports}")
sys.exit(0 if ok else 1)
PY
}
check "operator: web dashboard flag, Events list RBAC and Service port only with webDashboard.enabled (token when exposed)" \
    bash -c "$(declare -f web_dashboard); work='$work'; web_dashboard embedding-rollout-operator no && web_dashboard embedding-rollout-operator-all-on yes"
check "operator rejects webDashboard.address=0.0.0.0 without tokenSecret" \
    bash -c '! "$1" template x "$2" --set webDashboard.enabled=true --set webDashboard.address=0.0.0.0 >/dev/null 2>"$3" && grep -q "set webDashboard.tokenSecret" "$3"' _ "$HELM" "$OP" "$work/dashboard-mustfail.err"

# The global webhooks (notifications.webhooks): a ConfigMap holding exactly the values, mounted
# read-only and passed as --notifications-config, the pods rolled when it changes, and `get` on
# exactly their Secrets in the release namespace (a Role of its own, or merged into the operator's
# Role when the release namespace is the watched one); none of it without webhooks.
cat > "$work/notifications-merged-values.yaml" <<'YAML'
watchNamespace: embedding-rollout-system
rbac: {notificationSecrets: [team-webhooks, shared-webhooks]}
notifications:
  webhooks:
    - {name: team, urlSecretRef: {name: shared-webhooks, key: url}}
    - {name: ops, urlSecretRef: {name: ops-webhooks, key: url}, format: Slack}
YAML
check "helm template embedding-rollout-operator (notifications.webhooks in the watched namespace)" \
    render "$OP" embedding-rollout-operator-notifications-merged embedding-rollout-system "$work/notifications-merged-values.yaml"
global_notifications() { # global_notifications RELEASE VALUES|- role|merged|none
    python3 - "$work/rendered/$1.yaml" "$2" "$3" <<'PY'
import sys, yaml
rendered, values_file, mode = sys.argv[1:4]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
values = yaml.safe_load(open(values_file)) if values_file != "-" else {}
hooks = (values.get("notifications") or {}).get("webhooks") or []
dep = next(d for d in docs if d["kind"] == "Deployment")
ns, pod = dep["metadata"]["namespace"], dep["spec"]["template"]
c = pod["spec"]["containers"][0]
flags = [a for a in c["args"] if a.startswith("--notifications-config")]
cms = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-notifications")]
mounts = [m for m in c.get("volumeMounts", []) if m["name"] == "notifications"]
vols = [v for v in pod["spec"].get("volumes", []) if v["name"] == "notifications"]
checksum = "checksum/notifications" in (pod["metadata"].get("annotations") or {})
roles = [d for d in docs if d["kind"] in ("Role", "ClusterRole")]
own_roles = [d for d in roles if d["metadata"]["name"].endswith("-notifications")]
bindings = [d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["name"].endswith("-notifications")]
problems = []
if mode == "none":
    if flags or cms or mounts or vols or checksum or own_roles or bindings:
        problems.append(f"without webhooks: {flags} {len(cms)} ConfigMap(s) {mounts} {vols} checksum {checksum} {len(own_roles)} Role(s)")
else:
    names = sorted({h["urlSecretRef"]["name"] for h in hooks})
    def secret_names(role):
        return sorted(n for r in role["rules"] if "secrets" in r["resources"] and r["verbs"] == ["get"]
                      for n in r.get("resourceNames", []))
    cm = cms[0] if len(cms) == 1 else None
    problems += [msg for ok, msg in [
        (cm is not None, f"{len(cms)} notifications ConfigMaps"),
        (cm is not None and cm["metadata"]["namespace"] == ns, "ConfigMap not in the release namespace"),
        (cm is not None and yaml.safe_load(cm["data"]["notifications.yaml"]) == {"webhooks": hooks},
         "ConfigMap's notifications.yaml is not {webhooks: <values>}"),
        (flags == ["--notifications-config=/etc/embedding-rollout/notifications/notifications.yaml"], f"flag {flags}"),
        (mounts == [{"name": "notifications", "mountPath": "/etc/embedding-rollout/notifications", "readOnly": True}],
         f"mount {mounts}"),
        (cm is not None and vols == [{"name": "notifications", "configMap": {"name": cm["metadata"]["name"]}}], f"volume {vols}"),
        (checksum, "no checksum/notifications pod annotation"),
        # Never a cluster-wide grant for them (all-on lists no rollout Secrets).
        (not any(set(names) & set(secret_names(r)) for r in roles if r["kind"] == "ClusterRole"),
         "a ClusterRole grants the global webhooks' Secrets"),
    ] if not ok]
    if mode == "role":
        sa = pod["spec"]["serviceAccountName"]
        ok = (len(own_roles) == 1 and own_roles[0]["kind"] == "Role" and own_roles[0]["metadata"]["namespace"] == ns
              and secret_names(own_roles[0]) == names and len(own_roles[0]["rules"]) == 1
              and len(bindings) == 1 and bindings[0]["metadata"]["namespace"] == ns
              and bindings[0]["roleRef"]["name"] == own_roles[0]["metadata"]["name"]
              and bindings[0]["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": ns}])
        if not ok:
            problems.append(f"no Role {ns}/*-notifications with get on exactly {names}, bound to {sa}")
    else:
        main = [r for r in roles if r["kind"] == "Role" and r["metadata"]["namespace"] == ns and r not in own_roles
                and not r["metadata"]["name"].endswith("-leader-election")]
        merged = sorted(set(names) | set(values.get("rbac", {}).get("notificationSecrets", [])))
        if own_roles or bindings or len(main) != 1 or secret_names(main[0]) != merged:
            problems.append(f"the operator's Role does not grant get on exactly {merged} (or a second Role does)")
    print(f"          {mode}: {len(hooks)} webhooks, Secrets {names}")
print("\n".join("          " + p for p in problems))
sys.exit(1 if problems else 0)
PY
}
check "operator: notifications.webhooks become a read-only mounted ConfigMap, --notifications-config and get on exactly their Secrets (release namespace)" \
    bash -c "$(declare -f global_notifications); work='$work'; global_notifications embedding-rollout-operator - none \
        && global_notifications embedding-rollout-operator-all-on $OP/ci/all-on-values.yaml role \
        && global_notifications embedding-rollout-operator-notifications-merged $work/notifications-merged-values.yaml merged"
check "operator rejects a notifications webhook without urlSecretRef.name" \
    bash -c '! "$1" template x "$2" --set "notifications.webhooks[0].name=team" >/dev/null 2>"$3" \
        && grep -q "notifications.webhooks\[0\].urlSecretRef.name is required" "$3"' _ "$HELM" "$OP" "$work/notifications-mustfail.err"

# Values that must not render: a chart that silently ignores a typo'd volume type mounts nothing.
must_fail() { # must_fail CHART --set ...
    local chart=$1; shift
    if "$HELM" template x "$chart" "$@" >/dev/null 2>"$work/mustfail.err"; then return 1; fi
    echo "          ($(grep -o 'modelVolume.*' "$work/mustfail.err" | head -n1))"
}
check "candle-embedder rejects modelVolume.type=bogus" must_fail "$CE" --set modelVolume.type=bogus
check "candle-embedder rejects a PVC model volume without claimName" must_fail "$CE" --set modelVolume.type=persistentVolumeClaim
check "candle-embedder rejects an init model volume without image" must_fail "$CE" --set modelVolume.type=init

# What the charts promise, read from the rendered defaults.
check "operator: 2 replicas, --leader-elect, probes on /healthz, hardened securityContext" \
    python3 - "$work/rendered/embedding-rollout-operator.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
dep = next(d for d in docs if d["kind"] == "Deployment")
c = dep["spec"]["template"]["spec"]["containers"][0]
sc, psc = c["securityContext"], dep["spec"]["template"]["spec"]["securityContext"]
problems = [msg for ok, msg in [
    (dep["spec"]["replicas"] == 2, "replicas != 2"),
    ("--leader-elect" in c["args"], "no --leader-elect"),
    (c["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness not /healthz"),
    # /readyz is 200 on the leader only; a standby that never turns ready blocks rolling updates.
    (c["readinessProbe"]["httpGet"]["path"] == "/healthz", "readiness not /healthz"),
    (psc.get("runAsNonRoot") and sc.get("runAsNonRoot"), "not runAsNonRoot"),
    (sc.get("readOnlyRootFilesystem") is True, "root filesystem writable"),
    (sc.get("allowPrivilegeEscalation") is False, "privilege escalation allowed"),
    (sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities not dropped"),
    (sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "no RuntimeDefault seccomp"),
    ("requests" in c["resources"] and "limits" in c["resources"], "no resources"),
    (any(d["kind"] == "CustomResourceDefinition" for d in docs), "no CRD in the chart"),
    (any(d["kind"] == "ConfigMap" and d["metadata"]["labels"].get("grafana_dashboard") == "1" for d in docs),
     "no dashboard ConfigMap labelled grafana_dashboard=1"),
] if not ok]
print("\n".join("          " + p for p in problems))
sys.exit(1 if problems else 0)
PY
check "candle-embedder: HPA 2-10 at 70 % CPU, requests 1 CPU/2Gi, limits 2 CPU/4Gi, probes, scrape annotations" \
    python3 - "$work/rendered/candle-embedder.yaml" <<'PY'
import sys, yaml
docs = {d["kind"]: d for d in yaml.safe_load_all(open(sys.argv[1])) if d}
dep, hpa = docs["Deployment"], docs["HorizontalPodAutoscaler"]
pod = dep["spec"]["template"]
c = pod["spec"]["containers"][0]
cpu = hpa["spec"]["metrics"][0]["resource"]
problems = [msg for ok, msg in [
    (hpa["apiVersion"] == "autoscaling/v2", "HPA is not autoscaling/v2"),
    ((hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10), "HPA not 2-10"),
    (cpu["name"] == "cpu" and cpu["target"]["averageUtilization"] == 70, "HPA not 70 % CPU"),
    ("replicas" not in dep["spec"], "Deployment sets replicas although the HPA owns them"),
    (c["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
     f"resources {c['resources']}"),
    (c["livenessProbe"]["httpGet"]["path"] == "/health/live", "liveness not /health/live"),
    (c["readinessProbe"]["httpGet"]["path"] == "/health/ready", "readiness not /health/ready"),
    (pod["metadata"]["annotations"].get("prometheus.io/scrape") == "true", "no prometheus.io/scrape"),
    ("--models=/etc/candle/models.yaml" in c["args"], "models file not passed"),
    ("ConfigMap" in docs, "no models ConfigMap"),
    (c["securityContext"].get("readOnlyRootFilesystem") is True, "root filesystem writable"),
] if not ok]
print("\n".join("          " + p for p in problems))
sys.exit(1 if problems else 0)
PY

# PrometheusRule and ServiceMonitor: no CRD on the test API server, so check them here.
check "rendered PrometheusRule is files/alerts.yaml and its rules parse (promtool)" \
    bash -c 'python3 scripts/extract-promql.py prometheusrule "$1" > "$2" \
      && python3 -c "import sys,yaml; sys.exit(yaml.safe_load(open(sys.argv[1])) != yaml.safe_load(open(sys.argv[2])))" "$2" "$3" \
      && "$4" check rules "$2" >/dev/null' _ "$work/rendered/embedding-rollout-operator-all-on.yaml" "$work/prometheusrule.yaml" "$OP/files/alerts.yaml" "$PROMTOOL"
check "every rendered ServiceMonitor selects a rendered Service and scrapes a named port of it" \
    python3 - "${rendered[@]}" <<'PY'
import sys, yaml
problems, seen = [], 0
for f in sys.argv[1:]:
    docs = [d for d in yaml.safe_load_all(open(f)) if d]
    services = [d for d in docs if d["kind"] == "Service"]
    for sm in (d for d in docs if d["kind"] == "ServiceMonitor"):
        seen += 1
        sel = sm["spec"]["selector"]["matchLabels"]
        match = [s for s in services if sel.items() <= s["metadata"].get("labels", {}).items()
                 and s["metadata"]["namespace"] in sm["spec"]["namespaceSelector"]["matchNames"]]
        ports = {p.get("name") for s in match for p in s["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            if not match:
                problems.append(f"{f}: ServiceMonitor {sm['metadata']['name']} selects no Service")
            elif ep["port"] not in ports:
                problems.append(f"{f}: ServiceMonitor port {ep['port']} not in {ports}")
print("\n".join("          " + p for p in problems) or f"          {seen} ServiceMonitors")
sys.exit(1 if problems or not seen else 0)
PY

# ---------------------------------------------------------------------------------------------------
section "5. server-side dry run on a local kube-apiserver"
cp_dir="$work/controlplane"
start_controlplane() {
    bash e2e/controlplane/up.sh --foreground "$cp_dir" >"$work/up.log" 2>&1 &
    up_pid=$!
    for _ in $(seq 600); do
        [[ -s "$cp_dir/controlplane.env" ]] && break
        kill -0 "$up_pid" 2>/dev/null || { cat "$work/up.log"; up_pid=; return 1; }
        sleep 0.2
    done
    [[ -s "$cp_dir/controlplane.env" ]] || { cat "$work/up.log"; return 1; }
    set -a; source "$cp_dir/controlplane.env"; set +a
    grep 'ready at' "$work/up.log" | sed 's/^/          /'
}
kdr() { python3 scripts/kube-dry-run.py "$@"; }
GATEWAY_API_VERSION=${GATEWAY_API_VERSION:-v1.6.3}
gateway_crds() {
    local dir
    dir=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" |
        sed -n 's/^\t"Dir": "\(.*\)",$/\1/p') || return 1
    [[ -d "$dir/config/crd/standard" ]] || { echo "no CRDs in $dir"; return 1; }
    local crds=()
    for k in gatewayclasses gateways httproutes referencegrants; do
        crds+=("$dir/config/crd/standard/gateway.networking.k8s.io_$k.yaml")
    done
    kdr create "${crds[@]}" && kdr wait-crd httproutes.gateway.networking.k8s.io
}

if ! check "local control plane up (e2e/controlplane/up.sh)" start_controlplane; then
    echo "  (no API server: run \`make controlplane\`; the dry-run checks could not run)"
else
    # What helm would install first: the chart's crds/ directory, for real.
    shopt -s nullglob
    chart_crds=("$OP"/crds/*.yaml)
    shopt -u nullglob
    if ((${#chart_crds[@]})); then
        check "chart CRDs created" kdr create "${chart_crds[@]}"
        for crd in embeddingrollouts embeddinggatetemplates clusterembeddinggatetemplates; do
            check "CRD $crd.rollout.akidb.io established" kdr wait-crd "$crd.rollout.akidb.io"
        done
        # The Gateway API CRDs (standard channel) the gateway examples need, from the Go module the
        # e2e's Traefik is tested with (the module proxy serves them; no release download).
        check "Gateway API $GATEWAY_API_VERSION CRDs created (sigs.k8s.io/gateway-api module)" gateway_crds
    else
        echo "  FAIL    $OP/crds/ is empty (run make crds && scripts/sync-chart-crds.sh)"; failures+=("chart CRD")
    fi
    # Namespaces the manifests live in (the dry run of a namespaced object needs its namespace).
    printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: %s}\n---\n' \
        embedding-rollout-system production monitoring demo > "$work/namespaces.yaml"
    check "namespaces created" kdr create "$work/namespaces.yaml"

    for f in "${rendered[@]}"; do
        check "dry run: $(basename "$f" .yaml) (helm template)" \
            kdr dry-run --skip-kind ServiceMonitor --skip-kind PodMonitor --skip-kind PrometheusRule "$f"
    done
    for f in examples/*.yaml; do
        # The demo objects carry no namespace (the demo picks one); the others say production.
        check "dry run: $f" kdr dry-run --namespace demo "$f"
    done

    # The dry run must really validate: objects that break the CRD's rules are rejected.
    cat > "$work/broken-rollouts.yaml" <<'YAML'
apiVersion: rollout.akidb.io/v1alpha1
kind: EmbeddingRollout
metadata:
  name: weights-not-increasing
  namespace: production
  annotations: {check-charts.akidb.io/expect-error: "step weights must be strictly increasing"}
spec:
  baseline: {deployment: akidb-mlx, service: akidb-mlx}
  candidate: {image: ghcr.io/akidb/candle-embedder:1.0.0}
  ingress: {name: akidb-ingress}
  steps: [{weight: 50, duration: 1h}, {weight: 10, duration: 1h}, {weight: 100, duration: 1h}]
---
apiVersion: rollout.akidb.io/v1alpha1
kind: EmbeddingRollout
metadata:
  name: last-step-not-100
  namespace: production
  annotations: {check-charts.akidb.io/expect-error: "the last step must have weight 100"}
spec:
  baseline: {deployment: akidb-mlx, service: akidb-mlx}
  candidate: {image: ghcr.io/akidb/candle-embedder:1.0.0}
  ingress: {name: akidb-ingress}
  steps: [{weight: 1, duration: 1h}, {weight: 50, duration: 1h}]
---
apiVersion: rollout.akidb.io/v1alpha1
kind: EmbeddingRollout
metadata:
  name: two-traffic-providers
  namespace: production
  annotations: {check-charts.akidb.io/expect-error: "set exactly one traffic provider: ingress (or traffic.nginx) or traffic.gatewayAPI"}
spec:
  baseline: {deployment: akidb-mlx, service: akidb-mlx}
  candidate: {image: ghcr.io/akidb/candle-embedder:1.0.0}
  ingress: {name: akidb-ingress}
  traffic: {gatewayAPI: {httpRoute: {name: akidb-route}}}
---
apiVersion: rollout.akidb.io/v1alpha1
kind: EmbeddingRollout
metadata:
  name: no-traffic-provider
  namespace: production
  annotations: {check-charts.akidb.io/expect-error: "set exactly one traffic provider"}
spec:
  baseline: {deployment: akidb-mlx, service: akidb-mlx}
  candidate: {image: ghcr.io/akidb/candle-embedder:1.0.0}
---
apiVersion: rollout.akidb.io/v1alpha1
kind: EmbeddingRollout
metadata:
  name: header-step-without-header
  namespace: production
  annotations: {check-charts.akidb.io/expect-error: "a first step of weight 0 sends only header traffic: it needs traffic.canaryHeader"}
spec:
  baseline: {deployment: akidb-mlx, service: akidb-mlx}
  candidate: {image: ghcr.io/akidb/candle-embedder:1.0.0}
  traffic: {gatewayAPI: {httpRoute: {name: akidb-route}}}
  steps: [{weight: 0, duration: 1h}, {weight: 100, duration: 1h}]
---
apiVersion: rollout.akidb.io/v1alpha1
kind: EmbeddingRollout
metadata:
  name: typo-in-field
  namespace: production
  annotations: {check-charts.akidb.io/expect-error: "unknown field \"spec.candidate.replcas\""}
spec:
  baseline: {deployment: akidb-mlx, service: akidb-mlx}
  candidate: {image: ghcr.io/akidb/candle-embedder:1.0.0, replcas: 2}
  ingress: {name: akidb-ingress}
---
apiVersion: rollout.akidb.io/v1alpha1
kind: EmbeddingRollout
metadata:
  name: error-rate-above-one
  namespace: production
  annotations: {check-charts.akidb.io/expect-error: "gates.maxErrorRate must be in (0, 1]"}
spec:
  baseline: {deployment: akidb-mlx, service: akidb-mlx}
  candidate: {image: ghcr.io/akidb/candle-embedder:1.0.0}
  ingress: {name: akidb-ingress}
  analysis: {gates: {maxErrorRate: 5}}
---
apiVersion: rollout.akidb.io/v1alpha1
kind: EmbeddingRollout
metadata:
  name: no-candidate-image
  namespace: production
  annotations: {check-charts.akidb.io/expect-error: "spec.candidate.image: Required value"}
spec:
  baseline: {deployment: akidb-mlx, service: akidb-mlx}
  candidate: {replicas: 2}
  ingress: {name: akidb-ingress}
---
apiVersion: rollout.akidb.io/v1alpha1
kind: EmbeddingRollout
metadata:
  name: duration-not-go-style
  namespace: production
  annotations: {check-charts.akidb.io/expect-error: "spec.steps[0].duration"}
spec:
  baseline: {deployment: akidb-mlx, service: akidb-mlx}
  candidate: {image: ghcr.io/akidb/candle-embedder:1.0.0}
  ingress: {name: akidb-ingress}
  steps: [{weight: 1, duration: 2 days}, {weight: 100, duration: 1h}]
---
apiVersion: rollout.akidb.io/v1alpha1
kind: EmbeddingRollout
metadata:
  name: unknown-no-data-policy
  namespace: production
  annotations: {check-charts.akidb.io/expect-error: "Unsupported value: \"Maybe\""}
spec:
  baseline: {deployment: akidb-mlx, service: akidb-mlx}
  candidate: {image: ghcr.io/akidb/candle-embedder:1.0.0}
  ingress: {name: akidb-ingress}
  analysis: {noDataPolicy: Maybe}
---
apiVersion: rollout.akidb.io/v1alpha1
kind: EmbeddingRollout
metadata:
  name: zero-interval
  namespace: production
  annotations: {check-charts.akidb.io/expect-error: "analysis.interval must be positive"}
spec:
  baseline: {deployment: akidb-mlx, service: akidb-mlx}
  candidate: {image: ghcr.io/akidb/candle-embedder:1.0.0}
  ingress: {name: akidb-ingress}
  analysis: {interval: 0s}
YAML
    check "broken rollouts are rejected by the API server" kdr expect-reject "$work/broken-rollouts.yaml"

    # RBAC for real, then ask the API server what the operator's service account may do.
    rbac_only() { # keep ServiceAccount/Role*/ClusterRole* documents of a rendered file
        python3 -c 'import sys,yaml; docs=[d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] in ("ServiceAccount","Role","RoleBinding","ClusterRole","ClusterRoleBinding")]; yaml.safe_dump_all(docs, sys.stdout)' "$1"
    }
    rbac_only "$work/rendered/embedding-rollout-operator.yaml" > "$work/rbac-cluster.yaml"
    rbac_only "$work/rendered/embedding-rollout-operator-namespaced.yaml" > "$work/rbac-namespaced.yaml"
    rbac_only "$work/rendered/embedding-rollout-operator-all-on.yaml" > "$work/rbac-all-on.yaml"
    check "operator RBAC created (cluster-wide, single-namespace and all-on releases)" \
        kdr create "$work/rbac-cluster.yaml" "$work/rbac-namespaced.yaml" "$work/rbac-all-on.yaml"
    check "webDashboard.enabled release: may list Events (one rollout's page)" kdr access \
        --user system:serviceaccount:embedding-rollout-system:embedding-rollout-operator-all-on --allow \
        "list events.events.k8s.io production"
    check "gatewayAPI.enabled release: may watch HTTPRoutes and patch their weights" kdr access \
        --user system:serviceaccount:embedding-rollout-system:embedding-rollout-operator-all-on --allow \
        "watch httproutes.gateway.networking.k8s.io" "patch httproutes.gateway.networking.k8s.io production akidb-route"
    check "notifications.webhooks release: may get the global webhooks' Secrets in the release namespace" kdr access \
        --user system:serviceaccount:embedding-rollout-system:embedding-rollout-operator-all-on --allow \
        "get secrets embedding-rollout-system rollout-global-webhooks" "get secrets embedding-rollout-system incident-webhook"
    check "notifications.webhooks release: no other Secret, and not those elsewhere" kdr access \
        --user system:serviceaccount:embedding-rollout-system:embedding-rollout-operator-all-on --deny \
        "get secrets production rollout-global-webhooks" "get secrets embedding-rollout-system other-secret" \
        "list secrets embedding-rollout-system" "watch secrets embedding-rollout-system"
    sa=system:serviceaccount:embedding-rollout-system:embedding-rollout-operator
    # What the operator does (docs/interfaces.md: "Objects the operator writes"), in any namespace.
    # What the operator does (operator/rbac/clusterrole.yaml documents each call), in any namespace.
    needs=(
        "watch embeddingrollouts.rollout.akidb.io" "list embeddingrollouts.rollout.akidb.io"
        "get embeddingrollouts.rollout.akidb.io production candle-v1" "patch embeddingrollouts.rollout.akidb.io production candle-v1"
        "patch embeddingrollouts.rollout.akidb.io/status production candle-v1"
        "get embeddinggatetemplates.rollout.akidb.io production team-gates"
        "get clusterembeddinggatetemplates.rollout.akidb.io - org-gates"
        "create embeddingrolloutanalyses.rollout.akidb.io production" "list embeddingrolloutanalyses.rollout.akidb.io production"
        "get embeddingrolloutanalyses.rollout.akidb.io production candle-v1-step1-20250301-100000-0000"
        "patch embeddingrolloutanalyses.rollout.akidb.io production candle-v1-step1-20250301-100000-0000"
        "update embeddingrollouts.rollout.akidb.io/finalizers production candle-v1"
        "get deployments.apps production akidb-mlx" "patch deployments.apps production akidb-mlx"
        "create deployments.apps production" "watch deployments.apps"
        "create services production" "patch services production akidb-candle" "watch services"
        "create configmaps production" "patch configmaps production akidb-candle-models"
        "get configmaps production prometheus-ca"
        "list horizontalpodautoscalers.autoscaling production" "create horizontalpodautoscalers.autoscaling production"
        "patch horizontalpodautoscalers.autoscaling production akidb-candle"
        "delete horizontalpodautoscalers.autoscaling production akidb-candle"
        "delete configmaps production akidb-candle-models"
        "get ingresses.networking.k8s.io production akidb-ingress"
        "create ingresses.networking.k8s.io production" "patch ingresses.networking.k8s.io production akidb-ingress"
        "delete ingresses.networking.k8s.io production akidb-ingress-canary"
        "create events.events.k8s.io production"
        "get leases.coordination.k8s.io embedding-rollout-system embedding-rollout-operator"
        "update leases.coordination.k8s.io embedding-rollout-system embedding-rollout-operator"
        "create leases.coordination.k8s.io embedding-rollout-system"
    )
    # What it must not be able to do.
    forbidden=(
        # Without gatewayAPI.enabled the operator has no access to HTTPRoutes at all.
        "patch httproutes.gateway.networking.k8s.io production akidb-route" "list httproutes.gateway.networking.k8s.io"
        # Without webDashboard.enabled it reads no Events.
        "list events.events.k8s.io production"
        "get secrets production" "list secrets" "list pods" "create pods/exec production"
        "delete namespaces - production" "create clusterrolebindings.rbac.authorization.k8s.io"
        "create customresourcedefinitions.apiextensions.k8s.io"
        "update leases.coordination.k8s.io kube-system kube-controller-manager"
        "update leases.coordination.k8s.io embedding-rollout-system some-other-lease"
        "delete embeddingrollouts.rollout.akidb.io production candle-v1"
        "list embeddinggatetemplates.rollout.akidb.io" "patch clusterembeddinggatetemplates.rollout.akidb.io - org-gates"
        "delete embeddingrolloutanalyses.rollout.akidb.io production candle-v1-step1-20250301-100000-0000"
        "watch embeddingrolloutanalyses.rollout.akidb.io"
        "delete deployments.apps production akidb-mlx" "delete services production akidb-mlx"
    )
    check "operator service account may do what the operator needs" kdr access --user "$sa" --allow "${needs[@]}"
    check "operator service account may not do anything else checked" kdr access --user "$sa" --deny "${forbidden[@]}"
    nsa=system:serviceaccount:embedding-rollout-system:rollout-operator
    check "single-namespace release: allowed in production" kdr access --user "$nsa" --allow \
        "patch deployments.apps production akidb-mlx" "patch embeddingrollouts.rollout.akidb.io/status production candle-v1" \
        "get secrets production prometheus-auth" "get secrets production rollout-webhooks" \
        "get embeddinggatetemplates.rollout.akidb.io production team-gates" \
        "get clusterembeddinggatetemplates.rollout.akidb.io - org-gates"
    check "single-namespace release: denied elsewhere" kdr access --user "$nsa" --deny \
        "patch deployments.apps default akidb-mlx" "list embeddingrollouts.rollout.akidb.io" \
        "get secrets production other-secret" "list secrets production"

    # -----------------------------------------------------------------------------------------------
    section "6. the operator itself under the chart's RBAC and arguments"
    op_bin=${OPERATOR_BIN:-}
    for b in target/debug/embedding-rollout-operator target/release/embedding-rollout-operator; do
        [[ -z "$op_bin" && -x "$b" ]] && op_bin=$b
    done
    if [[ -z "$op_bin" ]]; then
        echo "  FAIL    no operator binary (cargo build -p embedding-rollout-operator)"; failures+=("operator binary")
    else
        run_operator_under_chart_rbac() {
            local ns=embedding-rollout-system sa=embedding-rollout-operator token kc="$work/operator-kubeconfig"
            token=$(kdr token "$ns" "$sa") || return 1
            cat >"$kc" <<KC
apiVersion: v1
kind: Config
clusters: [{name: e2e, cluster: {server: "$API_URL", certificate-authority: "$CA_FILE"}}]
users: [{name: operator, user: {token: "$token"}}]
contexts: [{name: operator, context: {cluster: e2e, user: operator}}]
current-context: operator
KC
            # The Deployment's args and env (templates/deployment.yaml), on loopback ports.
            local args ports=() pids=() i
            args=$(python3 -c 'import sys,yaml; d=[x for x in yaml.safe_load_all(open(sys.argv[1])) if x and x["kind"]=="Deployment"][0]; print("\n".join(d["spec"]["template"]["spec"]["containers"][0]["args"]))' \
                "$work/rendered/embedding-rollout-operator.yaml")
            for i in 0 1; do
                ports[i]=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
                mapfile -t argv < <(echo "$args" | sed "s/^--metrics-addr=.*/--metrics-addr=127.0.0.1:${ports[i]}/")
                env -i PATH=/usr/bin:/bin NO_COLOR=1 KUBECONFIG="$kc" POD_NAME="operator-$i" POD_NAMESPACE="$ns" RUST_LOG=info \
                    "$op_bin" "${argv[@]}" >"$work/operator-$i.log" 2>&1 &
                pids[i]=$!
                echo "          operator-$i: $op_bin ${argv[*]}"
                # Let the first take the lease before the second starts.
                if ((i == 0)); then
                    for _ in $(seq 150); do curl -fsS "127.0.0.1:${ports[0]}/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
                fi
            done
            local ok=0
            check "leader (operator-0) becomes ready: lease taken, caches synced" curl -fsS -o /dev/null "127.0.0.1:${ports[0]}/readyz" || ok=1
            check "lease held by operator-0" bash -c '[[ "$(python3 scripts/kube-dry-run.py get /apis/coordination.k8s.io/v1/namespaces/'"$ns"'/leases/embedding-rollout-operator spec.holderIdentity)" == operator-0 ]]' || ok=1
            check "standby (operator-1) is live (/healthz 200) while the leader holds the lease" \
                curl -fsS -o /dev/null "127.0.0.1:${ports[1]}/healthz" || ok=1
            # A rollout in the demo namespace: the leader must get as far as creating the candidate.
            kdr create --namespace demo examples/demo-baseline.yaml examples/demo-rollout.yaml >/dev/null || ok=1
            local phase= i
            for _ in $(seq 100); do
                phase=$(kdr get /apis/rollout.akidb.io/v1alpha1/namespaces/demo/embeddingrollouts/demo status.phase 2>/dev/null)
                [[ "$phase" == Deploying ]] && kdr get /apis/apps/v1/namespaces/demo/deployments/akidb-candle >/dev/null 2>&1 && break
                sleep 0.3
            done
            check "rollout reconciled under the chart's RBAC: phase Deploying, candidate Deployment created (phase: ${phase:-none})" \
                kdr get /apis/apps/v1/namespaces/demo/deployments/akidb-candle metadata.name || ok=1
            check "operator exports the dashboard's rollout metrics" \
                bash -c 'curl -fsS "127.0.0.1:$1/metrics" | grep -E "^embedding_rollout_phase\{.*rollout=\"demo\"" | grep -q "phase=\"Deploying\"" \
                    && curl -fsS "127.0.0.1:$1/metrics" | grep -q "^embedding_rollout_canary_weight{"' _ "${ports[0]}" || ok=1
            check "no RBAC denial in the operators' logs" bash -c '! grep -i -E "forbidden|cannot (get|list|watch|create|patch|update|delete)" "$@"' _ "$work"/operator-*.log || ok=1
            for i in 0 1; do kill -TERM "${pids[i]}" 2>/dev/null; done
            for i in 0 1; do wait "${pids[i]}" 2>/dev/null; done
            if ((ok)); then tail -n 15 "$work"/operator-*.log | sed 's/^/          /'; fi
            return $ok
        }
        run_operator_under_chart_rbac || true

        # --notifications-config: the operator accepts the rendered global webhooks (it reads them
        # first and gets as far as connecting to the API, which this run has none of), and a broken
        # file stops its start with the file and the field named.
        notifications_config_start() {
            local good="$work/notifications.yaml" bad="$work/notifications-bad.yaml" out rc
            python3 -c 'import sys,yaml; d=[x for x in yaml.safe_load_all(open(sys.argv[1])) if x and x["kind"]=="ConfigMap" and x["metadata"]["name"].endswith("-notifications")][0]; sys.stdout.write(d["data"]["notifications.yaml"])' \
                "$work/rendered/embedding-rollout-operator-all-on.yaml" >"$good" || return 1
            out=$(env -i PATH=/usr/bin:/bin NO_COLOR=1 KUBECONFIG="$work/no-such-kubeconfig" POD_NAMESPACE=embedding-rollout-system \
                timeout 30 "$op_bin" --metrics-addr=127.0.0.1:0 --notifications-config="$good" 2>&1)
            rc=$?
            echo "$out" | grep -E "global webhooks|embedding-rollout-operator:" | sed 's/^/          /'
            ((rc == 1)) && grep -q "connecting to the Kubernetes API" <<<"$out" \
                && grep -q "global webhooks" <<<"$out" && grep -q 'secret_namespace=embedding-rollout-system' <<<"$out" \
                && ! grep -q -- "--notifications-config" <<<"$out" || return 1
            printf 'webhooks:\n  - name: team\n    urlSecretRef: {name: team-webhooks}\n' >"$bad"
            out=$(env -i PATH=/usr/bin:/bin NO_COLOR=1 timeout 30 "$op_bin" --metrics-addr=127.0.0.1:0 --notifications-config="$bad" 2>&1)
            rc=$?
            echo "$out" | grep "embedding-rollout-operator:" | sed 's/^/          /'
            ((rc == 1)) && grep -qF -- "--notifications-config $bad: webhooks[0].urlSecretRef: missing field \`key\`" <<<"$out"
        }
        check "operator starts with the chart's notifications.webhooks file and refuses a broken one (file and field named)" \
            notifications_config_start
    fi
fi

# ---------------------------------------------------------------------------------------------------
section "summary"
if ((${#failures[@]})); then
    printf '  FAILED: %s\n' "${failures[@]}"
    exit 1
fi
echo "  all chart checks passed"
