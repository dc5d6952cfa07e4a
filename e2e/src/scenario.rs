//! What the scenarios, Traefik's rollout tests, `make demo` and the tests without a node share
//! (TEST HARNESS, never shipped): the names of the demo's objects, the operator's identity and
//! RBAC for tests that run its binary directly, a fast rollout, and observations of a rollout.
//! The node-based environment itself is [`crate::rollout_env`].

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use k8s_openapi::api::networking::v1::Ingress;
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{json, Value};

use crate::controlplane::ControlPlane;
use crate::traffic::Sample;
use crate::workspace_root;

/// Namespace and name of the operator's ServiceAccount (the chart's release namespace and
/// `fullnameOverride`).
pub const OPERATOR_NAMESPACE: &str = "akidb-system";
pub const OPERATOR_SA: &str = "embedding-rollout-operator";
/// Names of the objects in `examples/demo-baseline.yaml` and the rollouts built here.
pub const BASELINE: &str = "akidb-mlx";
pub const CANDIDATE: &str = "akidb-candle";
pub const PRIMARY_INGRESS: &str = "akidb-ingress";
pub const CANARY_INGRESS: &str = "akidb-ingress-canary";

/// `E2E_OPERATOR_BIN`, else `$CARGO_TARGET_DIR/debug/embedding-rollout-operator`, else
/// `<workspace>/target/debug/embedding-rollout-operator`.
pub fn default_operator_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("E2E_OPERATOR_BIN") {
        return p.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("debug").join("embedding-rollout-operator")
}

/// The EmbeddingRollout resource for dynamic clients (the scenarios treat the operator as a black box).
pub fn rollout_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("rollout.akidb.io", "v1alpha1", "EmbeddingRollout"),
        "embeddingrollouts",
    )
}

/// `E2E_HELM_BIN`, else `<workspace>/bin/helm` (`make helm`).
pub fn helm_bin() -> PathBuf {
    std::env::var_os("E2E_HELM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("bin/helm"))
}

/// The RBAC objects of the Helm chart for an operator in [`OPERATOR_NAMESPACE`] named
/// [`OPERATOR_SA`], with the web dashboard on (`make demo` serves it; it reads the rollouts'
/// Events): rendered with `bin/helm` when present, else `operator/rbac/clusterrole.yaml` plus the
/// dashboard's rule and a binding written here.
pub fn chart_rbac_yaml() -> anyhow::Result<String> {
    let root = workspace_root();
    let helm = helm_bin();
    if helm.is_file() {
        let out = std::process::Command::new(&helm)
            .args(["template", "ero"])
            .arg(root.join("charts/embedding-rollout-operator"))
            .args([
                "--namespace",
                OPERATOR_NAMESPACE,
                "--set",
                &format!("fullnameOverride={OPERATOR_SA}"),
                // The one Secret the scenarios' webhooks name, as a user lists theirs.
                "--set",
                &format!("rbac.notificationSecrets={{{}}}", crate::webhook::SECRET),
                "--set",
                "webDashboard.enabled=true",
                "--show-only",
                "templates/rbac.yaml",
            ])
            .output()
            .with_context(|| format!("running {}", helm.display()))?;
        if !out.status.success() {
            bail!(
                "helm template failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        return Ok(String::from_utf8(out.stdout)?);
    }
    let role = std::fs::read_to_string(root.join("operator/rbac/clusterrole.yaml"))
        .context("reading operator/rbac/clusterrole.yaml (no bin/helm to render the chart)")?;
    // The chart's webDashboard.enabled rule (templates/_helpers.tpl), after the file's last rule.
    let dashboard_rule =
        "  - apiGroups: [\"events.k8s.io\"]\n    resources: [\"events\"]\n    verbs: [\"list\"]\n";
    Ok(format!(
        "{role}{dashboard_rule}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n\
         metadata: {{name: {OPERATOR_SA}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {OPERATOR_SA}}}\n\
         subjects: [{{kind: ServiceAccount, name: {OPERATOR_SA}, namespace: {OPERATOR_NAMESPACE}}}]\n"
    ))
}

/// The operator's identity: the chart's ServiceAccount, ClusterRole and bindings on `cp`, and a
/// kubeconfig at `path` with a token of that ServiceAccount.
pub async fn write_operator_kubeconfig(cp: &ControlPlane, path: &Path) -> anyhow::Result<()> {
    let token = cp
        .service_account_token(OPERATOR_NAMESPACE, OPERATOR_SA, Duration::from_secs(3600))
        .await
        .context("ServiceAccount token")?;
    cp.apply_as_admin(&chart_rbac_yaml()?)
        .await
        .context("applying the chart's RBAC")?;
    cp.write_kubeconfig(
        path,
        &format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}"),
        &token,
    )?;
    Ok(())
}

/// `yaml` (multi-document) with `metadata.namespace` set on every document but Namespaces.
pub fn in_namespace(yaml: &str, ns: &str) -> anyhow::Result<String> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let mut v = serde_yaml::Value::deserialize(doc)?;
        if v.is_null() {
            continue;
        }
        if v["kind"].as_str() == Some("Namespace") {
            continue;
        }
        if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_mapping_mut()) {
            meta.insert("namespace".into(), ns.into());
        }
        docs.push(serde_yaml::to_string(&v)?);
    }
    Ok(docs.join("---\n"))
}

/// A rollout of the candle candidate against the demo baseline: 50 % then 100 %, 15 s each at
/// least, analysis every 5 s. The gates have the production semantics (docs/analysis.md); the
/// error rate (0.5 %) is production's, the comparison margin is 15 ms instead of 5 (with four
/// embedders on two shared cores both P95s sit near 60 ms and spread wide, so 5 ms takes many
/// minutes of evidence to confirm; +40 ms is still far outside). These relative gates catch the
/// regressions. The absolute bounds (P95 < 400 ms, trigger 800 ms) only say what this shared
/// 2-core VM always meets: its host slows both services alike for tens of seconds (both P95s
/// went from 100 to 210-240 ms for 20 s in a run on 2026-12-02, rolling back a healthy
/// candidate at the old 150 ms bound), which an absolute bound cannot tell from a regression.
/// The candidate runs two replicas like the baseline, so at 50 % each pod serves the same load
/// and the comparison is fair. Confidence 95 %; a step lasts until its evidence is conclusive,
/// about 1500 candidate requests for the 0.5 % error gate (at 30 req/s: about 100 s at 50 %, 50 s
/// at 100 %). Tests adjust fields before applying it.
pub fn fast_rollout(name: &str, prometheus: &str) -> Value {
    json!({
        "apiVersion": "rollout.akidb.io/v1alpha1",
        "kind": "EmbeddingRollout",
        "metadata": {"name": name},
        "spec": {
            "baseline": {"deployment": BASELINE, "service": BASELINE, "port": 8080,
                         "metricsService": "mlx", "standbyReplicas": 1},
            "candidate": {"name": CANDIDATE, "image": "ghcr.io/akidb/candle-embedder:1.0.0",
                          "replicas": 2, "fullReplicas": 2, "port": 8080, "args": [],
                          "metricsService": "candle", "progressDeadline": "2m"},
            "ingress": {"name": PRIMARY_INGRESS},
            "steps": [
                {"weight": 50, "duration": "15s"},
                {"weight": 100, "duration": "15s"}
            ],
            "analysis": {
                "interval": "5s",
                "window": "30s",
                "confidence": 0.95,
                "evidenceTimeout": "3m",
                "prometheus": {"address": prometheus},
                "gates": {"maxP95Ms": 400, "maxP95OverBaselineMs": 15, "maxErrorRate": 0.005,
                          "requireBreakerClosed": true, "minRequests": 100},
                "rollbackTriggers": {"p95Ms": 800, "p95SustainedFor": "15s", "errorRate": 0.01},
                "failureLimit": 3,
                "noDataPolicy": "Hold"
            },
            "promotion": {"auto": true},
            "rollbackDeadline": "1m"
        }
    })
}

/// What the rollout and its traffic object looked like at one moment.
#[derive(Debug, Clone)]
pub struct Observation {
    pub wall: SystemTime,
    pub phase: String,
    pub step: i64,
    pub weight: i64,
    /// The candidate's percentage in the traffic object (the canary Ingress's `canary-weight`,
    /// or its share of the HTTPRoute's weights); `None`: the object does not name the candidate.
    pub candidate_weight: Option<u32>,
    /// The Service the traffic object sends most requests to.
    pub primary: Option<String>,
}

impl Observation {
    /// Now, from a rollout's JSON and what its traffic object says.
    pub fn of(r: &Value, primary: Option<String>, candidate_weight: Option<u32>) -> Self {
        let status = &r["status"];
        Self {
            wall: SystemTime::now(),
            phase: status["phase"].as_str().unwrap_or("").to_string(),
            step: status["currentStep"].as_i64().unwrap_or(0),
            weight: status["currentWeight"].as_i64().unwrap_or(0),
            candidate_weight,
            primary,
        }
    }

    /// Same phase, step, weight and routing (the time aside).
    pub fn same_state(&self, o: &Observation) -> bool {
        (
            self.phase.as_str(),
            self.step,
            self.weight,
            self.candidate_weight,
            &self.primary,
        ) == (
            o.phase.as_str(),
            o.step,
            o.weight,
            o.candidate_weight,
            &o.primary,
        )
    }
}

/// What the traffic object said from a moment on: the primary Service and the candidate's share
/// in basis points.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    pub wall: SystemTime,
    pub primary: String,
    pub candidate_bp: u32,
}

/// Share of requests the candidate should get under `s`.
pub fn expected_candidate_share(s: &Served) -> f64 {
    if s.primary == CANDIDATE {
        1.0
    } else {
        f64::from(s.candidate_bp) / 10_000.0
    }
}

/// Every change of the routing in a log of observations, in order. Pure.
pub fn served_from(log: &[Observation]) -> Vec<Served> {
    let mut out: Vec<Served> = Vec::new();
    for o in log {
        let Some(primary) = o.primary.clone() else {
            continue;
        };
        let s = Served {
            wall: o.wall,
            primary,
            candidate_bp: o.candidate_weight.unwrap_or(0) * 100,
        };
        if out
            .last()
            .is_none_or(|l| (&l.primary, l.candidate_bp) != (&s.primary, s.candidate_bp))
        {
            out.push(s);
        }
    }
    out
}

/// Samples grouped by the routing in force when they were sent; samples within `margin` of a
/// change are left out (the ingress controller applies a change seconds later). Pure.
pub fn bucket_by_served<'a>(
    served: &'a [Served],
    samples: &[Sample],
    margin: Duration,
) -> Vec<(&'a Served, Vec<Sample>)> {
    let mut out: Vec<(&Served, Vec<Sample>)> = served.iter().map(|s| (s, Vec::new())).collect();
    for sample in samples {
        let Some(i) = served.iter().rposition(|s| s.wall <= sample.wall) else {
            continue;
        };
        let after_change = sample
            .wall
            .duration_since(served[i].wall)
            .unwrap_or_default();
        let before_next = served
            .get(i + 1)
            .map(|n| n.wall.duration_since(sample.wall).unwrap_or_default());
        if after_change < margin || before_next.is_some_and(|d| d < margin) {
            continue;
        }
        out[i].1.push(sample.clone());
    }
    out
}

/// The Service the first path of an Ingress routes to.
pub fn primary_backend(ingress: &Ingress) -> Option<String> {
    let rule = ingress.spec.as_ref()?.rules.as_ref()?.first()?;
    let path = rule.http.as_ref()?.paths.first()?;
    Some(path.backend.service.as_ref()?.name.clone())
}

/// `phase` of a rollout JSON.
pub fn phase(r: &Value) -> &str {
    r["status"]["phase"].as_str().unwrap_or("")
}

/// Parses an RFC 3339 timestamp from the status.
pub fn timestamp(v: &Value) -> Option<SystemTime> {
    let t = chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok()?;
    Some(SystemTime::from(t.with_timezone(&chrono::Utc)))
}

/// Signed seconds from `a` to `b`.
pub fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(at: u64, primary: &str, candidate_bp: u32) -> Served {
        Served {
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(at),
            primary: primary.into(),
            candidate_bp,
        }
    }

    fn sample(at_ms: u64) -> Sample {
        Sample {
            at: Duration::from_millis(at_ms),
            wall: SystemTime::UNIX_EPOCH + Duration::from_millis(at_ms),
            status: Some(200),
            latency: Duration::from_millis(5),
            served_by: Some("mlx".into()),
            error: None,
        }
    }

    #[test]
    fn samples_go_to_the_configuration_in_force_away_from_changes() {
        let s = vec![served(10, BASELINE, 100), served(20, BASELINE, 1000)];
        let samples: Vec<Sample> = [5_000, 10_500, 12_000, 19_500, 21_500].map(sample).into();
        let b = bucket_by_served(&s, &samples, Duration::from_secs(1));
        // 5 s: before any configuration; 10.5 s and 19.5 s: within 1 s of a change.
        assert_eq!(b[0].1.len(), 1);
        assert_eq!(b[1].1.len(), 1);
        assert_eq!(b[1].1[0].at, Duration::from_millis(21_500));
    }

    fn observed(at: u64, primary: Option<&str>, weight: Option<u32>) -> Observation {
        Observation {
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(at),
            phase: "Progressing".into(),
            step: 0,
            weight: 0,
            candidate_weight: weight,
            primary: primary.map(str::to_string),
        }
    }

    #[test]
    fn served_keeps_each_routing_change_once_from_when_it_was_first_seen() {
        let log = [
            observed(1, None, None),
            observed(2, Some(BASELINE), None),
            observed(3, Some(BASELINE), Some(0)),
            observed(4, Some(BASELINE), Some(50)),
            observed(5, Some(BASELINE), Some(50)),
            observed(9, Some(CANDIDATE), None),
        ];
        let s = served_from(&log);
        let got: Vec<(u64, &str, u32)> = s
            .iter()
            .map(|s| {
                (
                    s.wall
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap()
                        .as_secs(),
                    s.primary.as_str(),
                    s.candidate_bp,
                )
            })
            .collect();
        assert_eq!(
            got,
            [(2, BASELINE, 0), (4, BASELINE, 5_000), (9, CANDIDATE, 0)]
        );
    }

    #[test]
    fn expected_share_follows_primary_and_canary() {
        assert_eq!(expected_candidate_share(&served(0, BASELINE, 100)), 0.01);
        assert_eq!(expected_candidate_share(&served(0, CANDIDATE, 0)), 1.0);
    }

    #[test]
    fn namespace_is_set_on_every_document_but_namespaces() {
        let y = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\n";
        let out = in_namespace(y, "n1").unwrap();
        assert!(!out.contains("kind: Namespace"));
        assert!(out.contains("namespace: n1"));
    }
}
