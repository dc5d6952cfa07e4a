//! TEST HARNESS: deployment runner, a stand-in for kubelet + the Deployment/EndpointSlice controllers.
//!
//! For every Deployment of one namespace it runs `spec.replicas` local `candle-embedder` processes
//! ("pods") with the first container's `args` and `env` plus `--host 127.0.0.1 --port <free>`; the
//! image is ignored. Paths under a ConfigMap volume mount (e.g. `--models /etc/candle/models.yaml`)
//! are rewritten to files written from that ConfigMap. It keeps true, through the API server:
//! - the Deployment's status subresource (observedGeneration, replicas, updated/ready/available
//!   replicas, Available and Progressing conditions with Kubernetes' reasons);
//! - one EndpointSlice per (Service, pod) whose selector matches the pod template labels, since every
//!   process listens on its own port and a slice's ports are shared by all its endpoints. The API
//!   server rejects loopback IPs in EndpointSlices ("may not be in the loopback range") and
//!   single-label FQDNs, so the address is `addressType: FQDN`, `<pod>.localhost`: loopback by
//!   RFC 6761 §6.3 (the ingress emulator maps it to 127.0.0.1);
//! - a Prometheus file_sd JSON listing every live process (labels deployment, namespace, pod).
//!
//! A pod-template change is a rolling replace honouring maxSurge/maxUnavailable; a removed pod first
//! leaves the EndpointSlices, then gets SIGTERM (drain), then SIGKILL after its grace period. Dead
//! processes are replaced with crash back-off. Every process is killed when the runner is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PodTemplateSpec, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::process::Command;
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

use crate::child::GroupChild;
use crate::ingress::free_port;
use crate::reflect::Watched;

mod pod_spec;
mod slices;
mod status;

pub use pod_spec::{
    config_map_mounts, rewrite_path, rewrite_paths_in_text, strip_listen_args, ConfigMapMount,
};
pub use slices::{desired_slices, endpoint_host, file_sd_json, PodView};
pub use status::{deployment_status, fenceposts, StatusInput};

/// `endpointslice.kubernetes.io/managed-by` value of the slices this runner writes.
pub const MANAGED_BY: &str = "e2e-deploy-runner.harness.akidb.io";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Label on every slice naming the harness "pod" (there are no Pod objects).
pub const POD_LABEL: &str = "harness.akidb.io/pod";
const FIELD_MANAGER: &str = "e2e-deploy-runner";

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("candle-embedder binary not found at {0}: build it with `cargo build -p candle-embedder --bins` (or set E2E_EMBEDDER_BIN)")]
    EmbedderMissing(PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
    #[error("pod {pod}: {reason}")]
    Spawn { pod: String, reason: String },
    #[error("timed out after {0:?}: {1}")]
    Timeout(Duration, String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunnerError {
    let context = context.into();
    move |source| RunnerError::Io { context, source }
}

fn kube_err(context: impl Into<String>) -> impl FnOnce(kube::Error) -> RunnerError {
    let context = context.into();
    move |source| RunnerError::Kube { context, source }
}

/// The workspace root (the embedder runs there so `models/...` resolves).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e crate lives in the workspace")
        .to_path_buf()
}

/// `E2E_EMBEDDER_BIN`, else `$CARGO_TARGET_DIR/debug/candle-embedder`, else `<workspace>/target/debug/candle-embedder`.
pub fn default_embedder_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("E2E_EMBEDDER_BIN") {
        return p.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("debug").join("candle-embedder")
}

/// Settings of the runner.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub namespace: String,
    pub embedder_bin: PathBuf,
    /// Logs (`logs/<pod>.log`) and ConfigMap files (`volumes/`) go here.
    pub workdir: PathBuf,
    /// Working directory of the processes.
    pub cwd: PathBuf,
    /// Prometheus file_sd JSON to keep current (none: not written).
    pub file_sd: Option<PathBuf>,
    /// Reconcile period (readiness probes, status) besides watch events.
    pub tick: Duration,
    /// Time between a pod leaving the EndpointSlices and its SIGTERM (lets the ingress reload first,
    /// like a preStop sleep).
    pub termination_delay: Duration,
    /// Cap on `terminationGracePeriodSeconds` (default 30 s in Kubernetes).
    pub max_grace: Duration,
    /// Extra environment for every process (after the container's env).
    pub extra_env: Vec<(String, String)>,
    /// Directories the image would provide, mapped to local ones (default: `/models` -> the
    /// workspace's `models/`, where the image bakes the model). Applied to args, env values and the
    /// contents of files written from ConfigMaps (a models file names `/models/...`).
    pub image_paths: Vec<(String, PathBuf)>,
}

impl RunnerConfig {
    pub fn new(namespace: impl Into<String>, workdir: impl Into<PathBuf>) -> Self {
        Self {
            namespace: namespace.into(),
            embedder_bin: default_embedder_bin(),
            workdir: workdir.into(),
            cwd: workspace_root(),
            file_sd: None,
            tick: Duration::from_millis(500),
            termination_delay: Duration::from_secs(1),
            max_grace: Duration::from_secs(30),
            extra_env: Vec::new(),
            image_paths: vec![("/models".to_string(), workspace_root().join("models"))],
        }
    }
}

/// One running process as the runner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub deployment: String,
    pub name: String,
    pub template_hash: String,
    pub port: u16,
    pub pid: i32,
    pub ready: bool,
    pub terminating: bool,
    pub log: PathBuf,
}

/// A running runner; dropping it kills every process it started.
pub struct DeploymentRunner {
    pods: watch::Receiver<Vec<PodInfo>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), RunnerError>>,
}

impl Drop for DeploymentRunner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DeploymentRunner {
    /// Start the runner as a task of the current runtime. Fails at once when the embedder binary is missing.
    pub async fn start(client: Client, cfg: RunnerConfig) -> Result<Self, RunnerError> {
        check_embedder(&cfg.embedder_bin)?;
        let (pods_tx, pods) = watch::channel(Vec::new());
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            run_with(client, cfg, pods_tx, async {
                let _ = stop_rx.await;
            })
            .await
        });
        Ok(Self {
            pods,
            stop: Some(stop),
            task,
        })
    }

    /// Live view of the processes.
    pub fn pods(&self) -> watch::Receiver<Vec<PodInfo>> {
        self.pods.clone()
    }

    /// Wait until `pred` holds for the process list.
    pub async fn wait_pods(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&[PodInfo]) -> bool,
    ) -> Result<Vec<PodInfo>, RunnerError> {
        let mut rx = self.pods.clone();
        let res = tokio::time::timeout(timeout, async {
            loop {
                {
                    let cur = rx.borrow_and_update();
                    if pred(&cur) {
                        return cur.clone();
                    }
                }
                if rx.changed().await.is_err() {
                    futures::future::pending::<()>().await;
                }
            }
        })
        .await;
        res.map_err(|_| {
            RunnerError::Timeout(timeout, format!("{what}; pods: {:?}", *self.pods.borrow()))
        })
    }

    /// Stop: kill every process and remove the runner's EndpointSlices.
    pub async fn shutdown(mut self) -> Result<(), RunnerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(RunnerError::Spawn {
                pod: "-".into(),
                reason: format!("runner task failed: {e}"),
            }),
        }
    }
}

fn check_embedder(bin: &Path) -> Result<(), RunnerError> {
    if bin.is_file() {
        Ok(())
    } else {
        Err(RunnerError::EmbedderMissing(bin.to_path_buf()))
    }
}

/// Run until `shutdown` resolves (the binary's entry point).
pub async fn run(
    client: Client,
    cfg: RunnerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RunnerError> {
    check_embedder(&cfg.embedder_bin)?;
    let (pods_tx, _pods) = watch::channel(Vec::new());
    run_with(client, cfg, pods_tx, shutdown).await
}

async fn run_with(
    client: Client,
    cfg: RunnerConfig,
    pods_tx: watch::Sender<Vec<PodInfo>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RunnerError> {
    let ns = cfg.namespace.clone();
    tokio::fs::create_dir_all(cfg.workdir.join("logs"))
        .await
        .map_err(io(format!("creating {}", cfg.workdir.display())))?;
    let changed = Arc::new(Notify::new());
    let deployments = Watched::<Deployment>::start(client.clone(), &ns, changed.clone());
    let services = Watched::<Service>::start(client.clone(), &ns, changed.clone());
    deployments.ready().await;
    services.ready().await;

    let mut runner = Runner::new(client, cfg, pods_tx);
    runner.delete_stale_slices().await?;
    tokio::pin!(shutdown);
    loop {
        runner
            .tick(&deployments.objects(), &services.objects())
            .await;
        tokio::select! {
            _ = &mut shutdown => break,
            _ = changed.notified() => {}
            _ = tokio::time::sleep(runner.cfg.tick) => {}
        }
    }
    runner.stop().await;
    Ok(())
}

#[derive(Debug)]
struct Terminating {
    since: Instant,
    grace: Duration,
    sigterm_sent: bool,
}

struct Replica {
    pod: String,
    hash: String,
    port: u16,
    labels: BTreeMap<String, String>,
    child: GroupChild,
    log: PathBuf,
    started: Instant,
    ready_since: Option<Instant>,
    terminating: Option<Terminating>,
    /// Consecutive failed readiness probes; unready at `failure_threshold` (kubelet semantics).
    probe_failures: u32,
    failure_threshold: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Counts {
    total: i32,
    updated: i32,
    ready: i32,
    available: i32,
}

struct DeploymentState {
    replicas: Vec<Replica>,
    hash: String,
    consecutive_crashes: u32,
    backoff_until: Option<Instant>,
    last_progress: Instant,
    last_counts: Counts,
}

struct Runner {
    client: Client,
    cfg: RunnerConfig,
    http: reqwest::Client,
    states: BTreeMap<String, DeploymentState>,
    applied_slices: BTreeMap<String, EndpointSlice>,
    file_sd_written: Option<String>,
    pods_tx: watch::Sender<Vec<PodInfo>>,
}

/// Stable hash of a pod template (the `pod-template-hash` of a ReplicaSet).
pub fn template_hash(template: &PodTemplateSpec) -> String {
    let text = serde_json::to_string(template).unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    let mut n = h.finish();
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut s = String::new();
    for _ in 0..10 {
        s.push(ALPHABET[(n % ALPHABET.len() as u64) as usize] as char);
        n /= ALPHABET.len() as u64;
    }
    s
}

fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl Runner {
    fn new(client: Client, cfg: RunnerConfig, pods_tx: watch::Sender<Vec<PodInfo>>) -> Self {
        Self {
            client,
            cfg,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                .build()
                .expect("reqwest client"),
            states: BTreeMap::new(),
            applied_slices: BTreeMap::new(),
            file_sd_written: None,
            pods_tx,
        }
    }

    fn slices_api(&self) -> Api<EndpointSlice> {
        Api::namespaced(self.client.clone(), &self.cfg.namespace)
    }

    /// Slices left by an earlier runner point at dead ports.
    async fn delete_stale_slices(&mut self) -> Result<(), RunnerError> {
        let api = self.slices_api();
        let lp = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        let list = api
            .list(&lp)
            .await
            .map_err(kube_err("listing EndpointSlices"))?;
        for s in list.items {
            if let Some(name) = s.metadata.name {
                let _ = api.delete(&name, &DeleteParams::default()).await;
            }
        }
        Ok(())
    }

    async fn tick(&mut self, deployments: &[Deployment], services: &[Service]) {
        self.reap();
        self.probe().await;
        let live: BTreeSet<String> = deployments
            .iter()
            .filter_map(|d| d.metadata.name.clone())
            .collect();
        for d in deployments {
            if let Err(e) = self.reconcile(d).await {
                tracing::warn!(error = %e, "deployment runner: reconcile");
            }
        }
        for (name, st) in self.states.iter_mut() {
            if !live.contains(name) {
                for r in st.replicas.iter_mut() {
                    start_termination(r, Duration::from_secs(5));
                }
            }
        }
        self.advance_terminations();
        self.states
            .retain(|name, st| live.contains(name) || !st.replicas.is_empty());
        for d in deployments {
            if let Err(e) = self.write_status(d).await {
                tracing::warn!(error = %e, "deployment runner: status");
            }
        }
        if let Err(e) = self.sync_slices(services).await {
            tracing::warn!(error = %e, "deployment runner: endpoint slices");
        }
        let pods = self.pod_infos();
        if let Err(e) = self.write_file_sd(&pods).await {
            tracing::warn!(error = %e, "deployment runner: file_sd");
        }
        self.pods_tx.send_if_modified(|cur| {
            if *cur != pods {
                *cur = pods;
                true
            } else {
                false
            }
        });
    }

    fn pod_infos(&self) -> Vec<PodInfo> {
        let mut out = Vec::new();
        for (name, st) in &self.states {
            for r in &st.replicas {
                out.push(PodInfo {
                    namespace: self.cfg.namespace.clone(),
                    deployment: name.clone(),
                    name: r.pod.clone(),
                    template_hash: r.hash.clone(),
                    port: r.port,
                    pid: r.child.pid(),
                    ready: r.ready_since.is_some(),
                    terminating: r.terminating.is_some(),
                    log: r.log.clone(),
                });
            }
        }
        out
    }

    /// Forget exited processes; an unexpected exit counts as a crash (back-off before the replacement).
    fn reap(&mut self) {
        for st in self.states.values_mut() {
            let mut kept = Vec::new();
            for mut r in st.replicas.drain(..) {
                match r.child.try_wait() {
                    Ok(None) => kept.push(r),
                    Ok(Some(status)) if r.terminating.is_none() => {
                        let early = r.started.elapsed() < Duration::from_secs(10);
                        st.consecutive_crashes = if early { st.consecutive_crashes + 1 } else { 0 };
                        let backoff = Duration::from_secs(1 << st.consecutive_crashes.min(5))
                            .min(Duration::from_secs(30));
                        st.backoff_until = Some(Instant::now() + backoff);
                        tracing::warn!(pod = %r.pod, %status, log = %r.log.display(), ?backoff, "deployment runner: process exited; replacing it");
                    }
                    Ok(Some(_)) => {}
                    Err(e) => {
                        tracing::warn!(pod = %r.pod, error = %e, "deployment runner: wait failed");
                    }
                }
            }
            st.replicas = kept;
        }
    }

    /// GET /health/ready on every live process.
    async fn probe(&mut self) {
        let targets: Vec<(String, usize, u16)> = self
            .states
            .iter()
            .flat_map(|(d, st)| {
                st.replicas
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.terminating.is_none())
                    .map(move |(i, r)| (d.clone(), i, r.port))
            })
            .collect();
        let http = self.http.clone();
        let results = futures::future::join_all(targets.into_iter().map(|(d, i, port)| {
            let http = http.clone();
            async move {
                let ok = match http
                    .get(format!("http://127.0.0.1:{port}/health/ready"))
                    .send()
                    .await
                {
                    Ok(r) => r.status().is_success(),
                    Err(_) => false,
                };
                (d, i, ok)
            }
        }))
        .await;
        for (d, i, ok) in results {
            if let Some(r) = self
                .states
                .get_mut(&d)
                .and_then(|st| st.replicas.get_mut(i))
            {
                if ok {
                    r.probe_failures = 0;
                    r.ready_since.get_or_insert_with(Instant::now);
                } else {
                    r.probe_failures += 1;
                    if r.probe_failures >= r.failure_threshold {
                        r.ready_since = None;
                    }
                }
            }
        }
    }

    async fn reconcile(&mut self, d: &Deployment) -> Result<(), RunnerError> {
        let name = d.metadata.name.clone().unwrap_or_default();
        let Some(spec) = &d.spec else { return Ok(()) };
        let desired = spec.replicas.unwrap_or(1).max(0);
        let hash = template_hash(&spec.template);
        let (surge, max_unavailable) = fenceposts(d, desired);
        let grace = spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .map(|s| Duration::from_secs(s.max(0) as u64))
            .unwrap_or(Duration::from_secs(30))
            .min(self.cfg.max_grace);
        let st = self
            .states
            .entry(name.clone())
            .or_insert_with(|| DeploymentState {
                replicas: Vec::new(),
                hash: hash.clone(),
                consecutive_crashes: 0,
                backoff_until: None,
                last_progress: Instant::now(),
                last_counts: Counts::default(),
            });
        if st.hash != hash {
            st.hash = hash.clone();
            st.last_progress = Instant::now();
        }

        // Scale up the current template within maxSurge.
        let active = st
            .replicas
            .iter()
            .filter(|r| r.terminating.is_none())
            .count() as i32;
        let new = st
            .replicas
            .iter()
            .filter(|r| r.terminating.is_none() && r.hash == hash)
            .count() as i32;
        let backing_off = st.backoff_until.is_some_and(|t| Instant::now() < t);
        let to_start = (desired - new).min(desired + surge - active).max(0);
        if to_start > 0 && !backing_off {
            for _ in 0..to_start {
                let replica = self.spawn(d, &name, &hash).await?;
                let st = self.states.get_mut(&name).expect("state exists");
                st.replicas.push(replica);
            }
        }
        let st = self.states.get_mut(&name).expect("state exists");

        // Old template: unready ones go at once, ready ones while availability allows.
        for r in st.replicas.iter_mut() {
            if r.terminating.is_none() && r.hash != hash && r.ready_since.is_none() {
                start_termination(r, grace);
            }
        }
        let min_ready = desired - max_unavailable;
        loop {
            let ready_now = st
                .replicas
                .iter()
                .filter(|r| r.terminating.is_none() && r.ready_since.is_some())
                .count() as i32;
            let oldest_old = st
                .replicas
                .iter_mut()
                .filter(|r| r.terminating.is_none() && r.hash != hash)
                .min_by_key(|r| r.started);
            match oldest_old {
                Some(r) if ready_now > min_ready => start_termination(r, grace),
                _ => break,
            }
        }

        // Scale down the current template: unready first, then newest.
        let mut current: Vec<&mut Replica> = st
            .replicas
            .iter_mut()
            .filter(|r| r.terminating.is_none() && r.hash == hash)
            .collect();
        let excess = current.len() as i32 - desired;
        if excess > 0 {
            current.sort_by_key(|r| (r.ready_since.is_some(), std::cmp::Reverse(r.started)));
            for r in current.into_iter().take(excess as usize) {
                start_termination(r, grace);
            }
        }
        Ok(())
    }

    async fn spawn(&self, d: &Deployment, name: &str, hash: &str) -> Result<Replica, RunnerError> {
        let pod = format!("{name}-{hash}-{}", random_suffix());
        let spec = d.spec.as_ref().expect("checked by caller");
        let template = &spec.template;
        let container = template
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .ok_or_else(|| RunnerError::Spawn {
                pod: pod.clone(),
                reason: "pod template has no container".into(),
            })?;

        // ConfigMap volumes -> local files, and the container paths that point at them.
        let mut path_map: Vec<(String, PathBuf)> = Vec::new();
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.cfg.namespace);
        for (i, m) in config_map_mounts(template).into_iter().enumerate() {
            let cm = match cms
                .get_opt(&m.config_map)
                .await
                .map_err(kube_err(format!("reading ConfigMap {}", m.config_map)))?
            {
                Some(cm) => cm,
                None if m.optional => continue,
                None => {
                    return Err(RunnerError::Spawn {
                        pod,
                        reason: format!(
                            "ConfigMap {} (mounted at {}) does not exist yet",
                            m.config_map, m.mount_path
                        ),
                    })
                }
            };
            let data = cm.data.unwrap_or_default();
            let dir = self
                .cfg
                .workdir
                .join("volumes")
                .join(format!("{name}-{hash}-{i}"));
            let files: Vec<(String, String)> = match &m.sub_path {
                Some(key) => vec![(key.clone(), String::new())],
                None if m.items.is_empty() => data.keys().map(|k| (k.clone(), k.clone())).collect(),
                None => m.items.clone(),
            };
            for (key, rel) in &files {
                let Some(content) = data.get(key) else {
                    continue;
                };
                let target = if m.sub_path.is_some() {
                    dir.join(key)
                } else {
                    dir.join(rel)
                };
                if let Some(parent) = target.parent() {
                    tokio::fs::create_dir_all(parent)
                        .await
                        .map_err(io(format!("creating {}", parent.display())))?;
                }
                let content = rewrite_paths_in_text(content, &self.cfg.image_paths);
                tokio::fs::write(&target, content)
                    .await
                    .map_err(io(format!("writing {}", target.display())))?;
                if m.sub_path.is_some() {
                    path_map.push((m.mount_path.clone(), target));
                }
            }
            if m.sub_path.is_none() {
                path_map.push((m.mount_path.clone(), dir));
            }
        }

        path_map.extend(self.cfg.image_paths.iter().cloned());
        let port = free_port().map_err(io("picking a free port"))?;
        let mut args: Vec<String> = strip_listen_args(&container.args.clone().unwrap_or_default())
            .iter()
            .map(|a| rewrite_path(a, &path_map))
            .collect();
        args.extend([
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
        ]);

        let mut cmd = Command::new(&self.cfg.embedder_bin);
        cmd.args(&args).current_dir(&self.cfg.cwd).env_clear();
        // A container does not inherit the host's environment; only what a process needs to run.
        for key in ["PATH", "HOME", "TMPDIR", "RUST_LOG", "RUST_BACKTRACE"] {
            if let Some(v) = std::env::var_os(key) {
                cmd.env(key, v);
            }
        }
        for e in container.env.iter().flatten() {
            let value = match (&e.value, &e.value_from) {
                (Some(v), _) => Some(rewrite_path(v, &path_map)),
                (None, Some(from)) => {
                    match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                        Some("metadata.name") => Some(pod.clone()),
                        Some("metadata.namespace") => Some(self.cfg.namespace.clone()),
                        Some("status.podIP") | Some("status.hostIP") => Some("127.0.0.1".into()),
                        _ => {
                            tracing::warn!(pod = %pod, var = %e.name, "deployment runner: env source not emulated; variable left unset");
                            None
                        }
                    }
                }
                (None, None) => Some(String::new()),
            };
            if let Some(v) = value {
                cmd.env(&e.name, v);
            }
        }
        for (k, v) in &self.cfg.extra_env {
            cmd.env(k, v);
        }
        let log = self.cfg.workdir.join("logs").join(format!("{pod}.log"));
        let out = std::fs::File::create(&log).map_err(io(format!("creating {}", log.display())))?;
        let err = out.try_clone().map_err(io("cloning the log handle"))?;
        cmd.stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = GroupChild::spawn(&mut cmd)
            .map_err(io(format!("starting {}", self.cfg.embedder_bin.display())))?;
        tracing::info!(pod = %pod, port, pid = child.pid(), args = ?args, "deployment runner: started process");
        Ok(Replica {
            pod,
            hash: hash.to_string(),
            port,
            labels: template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default(),
            child,
            log,
            started: Instant::now(),
            ready_since: None,
            terminating: None,
            probe_failures: 0,
            // The container's readinessProbe.failureThreshold, default 3 as in Kubernetes.
            failure_threshold: container
                .readiness_probe
                .as_ref()
                .and_then(|p| p.failure_threshold)
                .unwrap_or(3)
                .max(1) as u32,
        })
    }

    /// SIGTERM after the termination delay, SIGKILL after the grace period.
    fn advance_terminations(&mut self) {
        let delay = self.cfg.termination_delay;
        for st in self.states.values_mut() {
            for r in st.replicas.iter_mut() {
                let Some(t) = r.terminating.as_mut() else {
                    continue;
                };
                let elapsed = t.since.elapsed();
                if !t.sigterm_sent && elapsed >= delay {
                    r.child.signal_group(libc::SIGTERM);
                    t.sigterm_sent = true;
                }
                if elapsed >= delay + t.grace {
                    r.child.signal_group(libc::SIGKILL);
                }
            }
        }
    }

    async fn write_status(&mut self, d: &Deployment) -> Result<(), RunnerError> {
        let name = d.metadata.name.clone().unwrap_or_default();
        let Some(spec) = &d.spec else { return Ok(()) };
        let Some(st) = self.states.get_mut(&name) else {
            return Ok(());
        };
        let desired = spec.replicas.unwrap_or(1).max(0);
        let min_ready = Duration::from_secs(spec.min_ready_seconds.unwrap_or(0).max(0) as u64);
        let active: Vec<&Replica> = st
            .replicas
            .iter()
            .filter(|r| r.terminating.is_none())
            .collect();
        let counts = Counts {
            total: active.len() as i32,
            updated: active.iter().filter(|r| r.hash == st.hash).count() as i32,
            ready: active.iter().filter(|r| r.ready_since.is_some()).count() as i32,
            available: active
                .iter()
                .filter(|r| r.ready_since.is_some_and(|t| t.elapsed() >= min_ready))
                .count() as i32,
        };
        if counts.updated > st.last_counts.updated
            || counts.available > st.last_counts.available
            || counts.ready > st.last_counts.ready
        {
            st.last_progress = Instant::now();
        }
        st.last_counts = counts;
        let deadline =
            Duration::from_secs(spec.progress_deadline_seconds.unwrap_or(600).max(0) as u64);
        let (_, max_unavailable) = fenceposts(d, desired);
        let input = StatusInput {
            name: &name,
            hash: &st.hash,
            generation: d.metadata.generation.unwrap_or(0),
            desired,
            max_unavailable,
            total: counts.total,
            updated: counts.updated,
            ready: counts.ready,
            available: counts.available,
            progress_deadline_exceeded: st.last_progress.elapsed() > deadline,
        };
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let status = deployment_status(d.status.as_ref(), input, &now);
        if d.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &self.cfg.namespace);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .map_err(kube_err(format!("writing the status of Deployment {name}")))?;
        Ok(())
    }

    async fn sync_slices(&mut self, services: &[Service]) -> Result<(), RunnerError> {
        let pods: Vec<PodView> = self
            .states
            .values()
            .flat_map(|st| st.replicas.iter())
            .map(|r| PodView {
                name: r.pod.clone(),
                labels: r.labels.clone(),
                port: r.port,
                ready: r.ready_since.is_some(),
                terminating: r.terminating.is_some(),
            })
            .collect();
        let desired = desired_slices(&self.cfg.namespace, services, &pods);
        let api = self.slices_api();
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        for (name, slice) in &desired {
            if self.applied_slices.get(name) == Some(slice) {
                continue;
            }
            api.patch(name, &pp, &Patch::Apply(slice))
                .await
                .map_err(kube_err(format!("applying EndpointSlice {name}")))?;
            self.applied_slices.insert(name.clone(), slice.clone());
        }
        let stale: Vec<String> = self
            .applied_slices
            .keys()
            .filter(|n| !desired.contains_key(*n))
            .cloned()
            .collect();
        for name in stale {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(kube_err(format!("deleting EndpointSlice {name}"))(e)),
            }
            self.applied_slices.remove(&name);
        }
        Ok(())
    }

    async fn write_file_sd(&mut self, pods: &[PodInfo]) -> Result<(), RunnerError> {
        let Some(path) = self.cfg.file_sd.clone() else {
            return Ok(());
        };
        let text = file_sd_json(pods);
        if self.file_sd_written.as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(io(format!("creating {}", parent.display())))?;
        }
        // Write then rename: Prometheus must never read a half-written file.
        let tmp = path.with_extension("json.tmp");
        tokio::fs::write(&tmp, &text)
            .await
            .map_err(io(format!("writing {}", tmp.display())))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(io(format!("renaming to {}", path.display())))?;
        self.file_sd_written = Some(text);
        Ok(())
    }

    /// Kill every process, then remove the slices and the file_sd targets that pointed at them.
    async fn stop(&mut self) {
        for st in self.states.values_mut() {
            for r in st.replicas.iter_mut() {
                r.child.kill().await;
            }
        }
        self.states.clear();
        let _ = self.sync_slices(&[]).await;
        let _ = self.write_file_sd(&[]).await;
        let _ = self.pods_tx.send(Vec::new());
    }
}

fn start_termination(r: &mut Replica, grace: Duration) {
    if r.terminating.is_none() {
        tracing::info!(pod = %r.pod, "deployment runner: terminating process");
        r.terminating = Some(Terminating {
            since: Instant::now(),
            grace,
            sigterm_sent: false,
        });
    }
}
