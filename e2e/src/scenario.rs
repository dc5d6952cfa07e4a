//! The end-to-end environment the scenarios and `make demo` share (TEST HARNESS, never shipped).
//!
//! [`Env::start`] brings up, for one namespace: the real kube-apiserver + etcd with the CRD, real
//! Prometheus (file_sd, 1 s scrape), the deployment runner (real `candle-embedder` processes for
//! every Deployment), the ingress emulator (real nginx, ingress-nginx canary-by-weight), and the
//! baseline objects of `examples/demo-baseline.yaml` created as a user would. The operator binary
//! runs as a child process with the identity of the chart's ServiceAccount and ClusterRole (not
//! admin) and can be SIGKILLed and started again. Helpers send traffic, watch the rollout and
//! record what nginx served, so the scenarios can assert on what clients saw.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{json, Value};
use tokio::process::Command;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::child::GroupChild;
use crate::controlplane::{apply_yaml, ControlPlane};
use crate::ingress::{IngressEmulator, IngressEmulatorConfig};
use crate::prometheus::Prometheus;
use crate::runner::{workspace_root, DeploymentRunner, RunnerConfig};
use crate::traffic::{self, Sample, TrafficConfig};

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

/// Every prerequisite the environment needs, with the command that provides it.
pub fn check_prerequisites() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    let embedder = crate::runner::default_embedder_bin();
    if !embedder.is_file() {
        missing.push(format!(
            "candle-embedder binary at {}: run `cargo build -p candle-embedder --bins`",
            embedder.display()
        ));
    }
    let operator = default_operator_bin();
    if !operator.is_file() {
        missing.push(format!(
            "operator binary at {}: run `cargo build -p embedding-rollout-operator --bins`",
            operator.display()
        ));
    }
    let model = workspace_root().join("models/all-MiniLM-L6-v2/model.safetensors");
    if !model.is_file() {
        missing.push(format!("model at {}: run `make model`", model.display()));
    }
    let nginx = crate::ingress::default_nginx_bin();
    if !nginx.is_file() {
        missing.push(format!(
            "nginx at {}: run `make deps` (Debian package nginx)",
            nginx.display()
        ));
    }
    if !on_path("prometheus") {
        missing.push("prometheus on PATH: run `make deps` (Debian package prometheus)".into());
    }
    if let Err(e) = crate::controlplane::check_binaries(&crate::controlplane::bin_dir()) {
        missing.push(e.to_string());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        bail!("e2e prerequisites missing:\n  - {}", missing.join("\n  - "))
    }
}

fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(binary).is_file()))
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

/// What the rollout and the ingress looked like at one moment.
#[derive(Debug, Clone)]
pub struct Observation {
    pub wall: SystemTime,
    pub phase: String,
    pub step: i64,
    pub weight: i64,
    /// `canary-weight` of the canary Ingress; `None`: no canary Ingress.
    pub canary_weight: Option<u32>,
    /// Service the primary Ingress points at.
    pub primary: Option<String>,
}

/// What nginx served from a moment on: the primary's Service and the canary's share in basis points
/// (0 when there is no canary or it has no endpoints).
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    pub wall: SystemTime,
    pub primary: String,
    pub canary_service: Option<String>,
    pub canary_bp: u32,
}

/// Share of requests the candidate should get under `s`.
pub fn expected_candidate_share(s: &Served) -> f64 {
    if s.primary == CANDIDATE {
        return 1.0;
    }
    match &s.canary_service {
        Some(c) if c == CANDIDATE => f64::from(s.canary_bp) / 10_000.0,
        _ => 0.0,
    }
}

/// Samples grouped by the nginx configuration in force when they were sent; samples within `margin`
/// of a change are left out (reloads are not instantaneous). Pure.
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

/// The running environment. Dropping it stops every process (operator, embedders, nginx,
/// Prometheus, API server).
pub struct Env {
    pub cp: ControlPlane,
    pub ns: String,
    pub workdir: PathBuf,
    pub prometheus: Prometheus,
    pub ingress: IngressEmulator,
    pub runner: Option<DeploymentRunner>,
    /// `127.0.0.1:<port>` of the operator's /metrics, /healthz, /readyz.
    pub operator_metrics: String,
    operator_kubeconfig: PathBuf,
    operator_extra_args: Vec<String>,
    operator: Option<GroupChild>,
    served: Arc<Mutex<Vec<Served>>>,
    served_task: JoinHandle<()>,
    traffic: Option<(oneshot::Sender<()>, JoinHandle<Vec<Sample>>)>,
    pub started: Instant,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.served_task.abort();
    }
}

impl Env {
    /// Starts everything but the operator and the traffic; returns once nginx routes to the
    /// baseline's ready processes.
    pub async fn start(ns: &str, workdir: &Path) -> anyhow::Result<Self> {
        let started = Instant::now();
        check_prerequisites()?;
        let _ = std::fs::remove_dir_all(workdir);
        std::fs::create_dir_all(workdir)?;
        let workdir = workdir.canonicalize()?;
        let cp = ControlPlane::start(&workdir.join("controlplane")).await?;
        // Every CRD of the project (the rollout, the gate templates, the kept analyses), as the
        // chart installs them.
        for file in [
            "embeddingrollouts",
            "embeddinggatetemplates",
            "clusterembeddinggatetemplates",
            "embeddingrolloutanalyses",
        ] {
            let path = workspace_root().join(format!("crds/{file}.rollout.akidb.io.yaml"));
            let crd = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            cp.apply_as_admin(&crd)
                .await
                .with_context(|| format!("applying {}", path.display()))?;
        }
        cp.apply_as_admin(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
        ))
        .await?;

        let operator_kubeconfig = workdir.join("operator.kubeconfig");
        write_operator_kubeconfig(&cp, &operator_kubeconfig).await?;

        let file_sd = workdir.join("file_sd").join("embedders.json");
        std::fs::create_dir_all(file_sd.parent().unwrap())?;
        let prometheus = Prometheus::start(&workdir.join("prometheus"), &file_sd).await?;

        let mut rcfg = RunnerConfig::new(ns, workdir.join("runner"));
        rcfg.file_sd = Some(file_sd);
        // Two cores shared by every process of the scenario: one inference thread per embedder.
        rcfg.extra_env = vec![("EMBEDDER_INFERENCE_THREADS".into(), "1".into())];
        let runner = DeploymentRunner::start(cp.admin.clone(), rcfg).await?;
        let ingress = IngressEmulator::start(
            cp.admin.clone(),
            IngressEmulatorConfig::new(ns, workdir.join("nginx")),
        )
        .await?;

        let baseline =
            std::fs::read_to_string(workspace_root().join("examples/demo-baseline.yaml"))
                .context("reading examples/demo-baseline.yaml")?;
        apply_yaml(&cp.admin, &in_namespace(&baseline, ns)?, "e2e-user")
            .await
            .context("applying the baseline")?;
        ingress
            .wait_until(
                Duration::from_secs(120),
                "nginx routes to the ready baseline",
                |a| {
                    a.routes.len() == 1
                        && a.routes[0].primary.service == BASELINE
                        && a.routes[0].primary.endpoints.len() == 2
                },
            )
            .await?;

        let served = Arc::new(Mutex::new(Vec::new()));
        let served_task = tokio::spawn(record_served(ingress.applied(), served.clone()));
        let operator_metrics = format!("127.0.0.1:{}", crate::ingress::free_port()?);
        Ok(Self {
            cp,
            ns: ns.to_string(),
            workdir,
            prometheus,
            ingress,
            runner: Some(runner),
            operator_metrics,
            operator_kubeconfig,
            operator_extra_args: Vec::new(),
            operator: None,
            served,
            served_task,
            traffic: None,
            started,
        })
    }

    /// Seconds since [`Env::start`] began, for timing prints.
    pub fn secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn operator_log(&self) -> PathBuf {
        self.workdir.join("operator.log")
    }

    /// Extra operator flags for the next [`Env::start_operator`].
    pub fn set_operator_args(&mut self, args: &[&str]) {
        self.operator_extra_args = args.iter().map(|s| s.to_string()).collect();
    }

    /// Starts the operator binary as the chart's ServiceAccount, watching the namespace; returns
    /// once its /healthz answers.
    pub async fn start_operator(&mut self) -> anyhow::Result<()> {
        if self.operator.is_some() {
            return Ok(());
        }
        let log_path = self.operator_log();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut cmd = Command::new(default_operator_bin());
        cmd.arg("--namespace")
            .arg(&self.ns)
            .arg("--metrics-addr")
            .arg(&self.operator_metrics)
            .args(&self.operator_extra_args)
            .env("KUBECONFIG", &self.operator_kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("E2E_OPERATOR_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = GroupChild::spawn(&mut cmd).context("starting the operator")?;
        let url = format!("http://{}/healthz", self.operator_metrics);
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "the operator exited with {status}; log {}:\n{}",
                    log_path.display(),
                    tail(&log_path, 30)
                );
            }
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("the operator's {url} did not answer within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.operator = Some(child);
        Ok(())
    }

    /// SIGKILL (no graceful shutdown, like a node failure or OOM kill).
    pub async fn kill_operator(&mut self) {
        if let Some(mut child) = self.operator.take() {
            child.kill().await;
        }
    }

    /// Whether the operator process is still alive (it must not crash).
    pub fn operator_alive(&mut self) -> bool {
        self.operator
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `GET /metrics` of the operator.
    pub async fn operator_metrics_text(&self) -> anyhow::Result<String> {
        Ok(
            reqwest::get(format!("http://{}/metrics", self.operator_metrics))
                .await?
                .text()
                .await?,
        )
    }

    /// Constant-rate traffic through nginx until [`Env::stop_traffic`].
    pub fn start_traffic(&mut self, rate_per_sec: f64) {
        let mut cfg = TrafficConfig::new(&self.ingress.url(), None);
        cfg.rate_per_sec = rate_per_sec;
        cfg.max_duration = Duration::from_secs(3600);
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(traffic::run(cfg, async {
            let _ = rx.await;
        }));
        self.traffic = Some((tx, task));
    }

    pub async fn stop_traffic(&mut self) -> Vec<Sample> {
        match self.traffic.take() {
            Some((tx, task)) => {
                let _ = tx.send(());
                task.await.unwrap_or_default()
            }
            None => Vec::new(),
        }
    }

    /// Every change of what nginx served, in order.
    pub fn served(&self) -> Vec<Served> {
        self.served.lock().unwrap().clone()
    }

    pub fn rollouts(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.cp.admin.clone(), &self.ns, &rollout_resource())
    }

    /// Creates the rollout as the admin user would with kubectl.
    pub async fn create_rollout(&self, rollout: &Value) -> Result<DynamicObject, kube::Error> {
        let obj: DynamicObject = serde_json::from_value(rollout.clone()).expect("a rollout object");
        self.rollouts().create(&PostParams::default(), &obj).await
    }

    pub async fn rollout(&self, name: &str) -> anyhow::Result<Value> {
        let obj = self.rollouts().get(name).await?;
        Ok(serde_json::to_value(obj)?)
    }

    /// Sets the `rollout.akidb.io/command` annotation.
    pub async fn command(&self, name: &str, command: &str) -> anyhow::Result<()> {
        self.rollouts()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {"rollout.akidb.io/command": command}}}),
                ),
            )
            .await?;
        Ok(())
    }

    /// One observation of the rollout and both Ingresses.
    pub async fn observe(&self, name: &str) -> anyhow::Result<Observation> {
        let r = self.rollout(name).await?;
        let ingresses: Api<Ingress> = Api::namespaced(self.cp.admin.clone(), &self.ns);
        let canary = ingresses.get_opt(CANARY_INGRESS).await?;
        let primary = ingresses.get_opt(PRIMARY_INGRESS).await?;
        let status = &r["status"];
        Ok(Observation {
            wall: SystemTime::now(),
            phase: status["phase"].as_str().unwrap_or("").to_string(),
            step: status["currentStep"].as_i64().unwrap_or(0),
            weight: status["currentWeight"].as_i64().unwrap_or(0),
            canary_weight: canary.and_then(|c| {
                c.metadata
                    .annotations?
                    .get(crate::nginx::CANARY_WEIGHT_ANNOTATION)?
                    .parse()
                    .ok()
            }),
            primary: primary.as_ref().and_then(primary_backend),
        })
    }

    /// Polls the rollout every 250 ms until `pred` holds on its JSON, recording every observation
    /// into `log` and printing phase/step/weight changes. Fails after `timeout` with the status.
    pub async fn wait_rollout(
        &mut self,
        name: &str,
        timeout: Duration,
        what: &str,
        log: &mut Vec<Observation>,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.rollout(name).await?;
            if let Ok(o) = self.observe(name).await {
                let changed = log.last().is_none_or(|l| {
                    (
                        l.phase.as_str(),
                        l.step,
                        l.weight,
                        l.canary_weight,
                        &l.primary,
                    ) != (
                        o.phase.as_str(),
                        o.step,
                        o.weight,
                        o.canary_weight,
                        &o.primary,
                    )
                });
                if changed {
                    println!(
                        "[{:7.1}s] phase={} step={} weight={} canary-ingress={:?} primary={:?} | {}",
                        self.secs(),
                        o.phase,
                        o.step,
                        o.weight,
                        o.canary_weight,
                        o.primary.as_deref().unwrap_or("-"),
                        r["status"]["message"].as_str().unwrap_or("")
                    );
                }
                log.push(o);
            }
            if pred(&r) {
                return Ok(r);
            }
            if self.operator.is_some() && !self.operator_alive() {
                bail!(
                    "the operator died while waiting for {what}; log:\n{}",
                    tail(&self.operator_log(), 40)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what}; status: {}\noperator log tail:\n{}",
                    serde_json::to_string_pretty(&r["status"]).unwrap_or_default(),
                    tail(&self.operator_log(), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops everything in order (operator, traffic, embedders); the rest stops on drop.
    pub async fn shutdown(mut self) {
        self.kill_operator().await;
        let _ = self.stop_traffic().await;
        if let Some(r) = self.runner.take() {
            let _ = r.shutdown().await;
        }
    }
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

async fn record_served(
    mut rx: tokio::sync::watch::Receiver<crate::ingress::Applied>,
    out: Arc<Mutex<Vec<Served>>>,
) {
    loop {
        let entry = {
            let a = rx.borrow_and_update();
            a.routes.first().map(|r| Served {
                wall: SystemTime::now(),
                primary: r.primary.service.clone(),
                canary_service: r.canary.as_ref().map(|c| c.backend.service.clone()),
                canary_bp: r
                    .canary
                    .as_ref()
                    .filter(|c| !c.backend.endpoints.is_empty())
                    .map(|_| r.canary_basis_points())
                    .unwrap_or(0),
            })
        };
        if let Some(e) = entry {
            let mut v = out.lock().unwrap();
            let same = v.last().is_some_and(|l: &Served| {
                (&l.primary, &l.canary_service, l.canary_bp)
                    == (&e.primary, &e.canary_service, e.canary_bp)
            });
            if !same {
                v.push(e);
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(at: u64, primary: &str, canary_bp: u32) -> Served {
        Served {
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(at),
            primary: primary.into(),
            canary_service: Some(CANDIDATE.into()),
            canary_bp,
        }
    }

    fn sample(at_ms: u64) -> Sample {
        Sample {
            at: Duration::from_millis(at_ms),
            wall: SystemTime::UNIX_EPOCH + Duration::from_millis(at_ms),
            status: Some(200),
            latency: Duration::from_millis(5),
            served_by: Some("mlx".into()),
            upstream: None,
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
