//! TEST HARNESS: one rollout's world on the real node, shared by the scenarios, Traefik's rollout
//! tests and `make demo`.
//!
//! [`platform`] installs, once per process, what a cluster has before anyone rolls out: Traefik
//! (both providers, the Gateway `traefik/traefik`) and the operator from its Helm chart (two pods,
//! leader election, the chart's RBAC). [`RolloutEnv::start`] then gives a namespace of its own:
//! the demo baseline (examples/demo-baseline.yaml, two pods of the embedder image), the user's
//! route to it through Traefik (the nginx provider's primary Ingress, or an HTTPRoute), Prometheus
//! on the node's bridge address scraping the namespace's annotated pods, and clients through
//! Traefik's Service, recorded request by request.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::controlplane::ControlPlane;
use crate::node_env::{apply_baseline, create_namespace, image, install_operator, until};
use crate::prometheus::{write_file_sd, Prometheus};
use crate::scenario::{
    fast_rollout, primary_backend, rollout_resource, Observation, BASELINE, CANARY_INGRESS,
    CANDIDATE, OPERATOR_NAMESPACE, OPERATOR_SA, PRIMARY_INGRESS,
};
use crate::traefik::Traefik;
use crate::traffic::{self, Sample, TrafficConfig};

/// The user's HTTPRoute in the Gateway API namespaces.
pub const HTTP_ROUTE: &str = "embed";
const CANARY_WEIGHT_ANNOTATION: &str = "nginx.ingress.kubernetes.io/canary-weight";
/// Traefik applies a provider's change at most every 2 s (`providersThrottleDuration`), and its
/// watch adds a little: requests sent this long after a traffic object changed see the change.
pub const ROUTE_SETTLE: Duration = Duration::from_secs(5);

/// Which of the two traffic providers a namespace routes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// The ingress-nginx canary annotations, served by Traefik's `kubernetesIngressNGINX`.
    Nginx,
    /// Gateway API HTTPRoute backendRef weights, served by Traefik's `kubernetesGateway`.
    Gateway,
}

impl Provider {
    /// `spec.traffic` of a rollout routed by this provider.
    pub fn traffic_spec(self) -> Value {
        match self {
            Provider::Nginx => json!({"nginx": {"name": PRIMARY_INGRESS}}),
            Provider::Gateway => json!({"gatewayAPI": {"httpRoute": {"name": HTTP_ROUTE}}}),
        }
    }
}

pub fn gateway_api(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", kind),
        plural,
    )
}

static PLATFORM: tokio::sync::Mutex<Option<Traefik>> = tokio::sync::Mutex::const_new(None);

/// Traefik, the Gateway and the operator's chart (with `extra` `--set` values), installed once per
/// process; later calls return the same Traefik.
pub async fn platform(cp: &ControlPlane, extra: &[&str]) -> Traefik {
    let mut installed = PLATFORM.lock().await;
    if let Some(t) = installed.as_ref() {
        return t.clone();
    }
    let t = crate::traefik::install(cp).await;
    crate::traefik::apply_gateway(cp).await;
    let secrets = format!("rbac.notificationSecrets={{{}}}", crate::webhook::SECRET);
    let mut values = vec!["gatewayAPI.enabled=true", secrets.as_str()];
    values.extend_from_slice(extra);
    install_operator(cp, &values);
    *installed = Some(t.clone());
    t
}

/// Where the traffic object sends requests now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Routing {
    /// The Service most requests go to: the primary Ingress's backend, or the HTTPRoute's
    /// heaviest backendRef (the baseline on a tie).
    pub primary: Option<String>,
    /// The candidate's percentage: the canary Ingress's weight, or the candidate's share of the
    /// HTTPRoute's weights; `None` when neither names the candidate.
    pub candidate_weight: Option<u32>,
}

/// CPU times from /proc/stat: busy, idle, stolen (in ticks).
#[derive(Debug, Clone, Copy)]
struct CpuTimes(u64, u64, u64);

fn cpu_times() -> CpuTimes {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    CpuTimes(at(0) + at(1) + at(2) + at(5) + at(6), at(3) + at(4), at(7))
}

pub struct RolloutEnv {
    pub cp: ControlPlane,
    pub ns: String,
    /// The Host clients send (each namespace's route matches only its own).
    pub host: String,
    pub provider: Provider,
    pub traefik: Traefik,
    pub prometheus: Prometheus,
    pub workdir: PathBuf,
    pub started: Instant,
    discovery: JoinHandle<()>,
    traffic: Vec<(watch::Sender<bool>, JoinHandle<Vec<Sample>>)>,
    cpu: CpuTimes,
    shut_down: bool,
}

impl Drop for RolloutEnv {
    /// A test that failed before [`RolloutEnv::shutdown`] still deletes its namespace, so its pods
    /// do not load the node under the binary's next tests (on a runtime of its own: the test's
    /// may be unwinding).
    fn drop(&mut self) {
        self.discovery.abort();
        if self.shut_down {
            return;
        }
        let (node, ns) = (self.cp.workdir().to_path_buf(), self.ns.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                if let Ok(cp) = ControlPlane::attach(&node).await {
                    let namespaces: Api<Namespace> = Api::all(cp.admin.clone());
                    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
                }
            })
        })
        .join();
    }
}

impl RolloutEnv {
    /// Namespace `ns` with the baseline answering through Traefik by `provider`'s route. `cp` is
    /// the node (attached); `extra` are chart values for the first [`platform`] call.
    pub async fn start(cp: ControlPlane, ns: &str, provider: Provider, extra: &[&str]) -> Self {
        let started = Instant::now();
        let traefik = platform(&cp, extra).await;
        let host = format!("{ns}.e2e");
        create_namespace(&cp, ns).await;
        apply_baseline(&cp, ns).await;
        route(&cp, ns, &host, provider).await;

        // Prometheus on the bridge address (the operator's pods reach it there), scraping the
        // annotated pods of this namespace as a cluster's annotation-based scrape config would.
        let node = cp.node.clone().expect("a node");
        let workdir = cp.workdir().join("rollouts").join(ns);
        let _ = std::fs::remove_dir_all(&workdir);
        std::fs::create_dir_all(&workdir).expect("the namespace's work directory");
        let sd = workdir.join("pods.json");
        write_file_sd(&sd, &[]).unwrap();
        let discovery = crate::pod_sd::spawn(cp.admin.clone(), vec![ns.to_string()], sd.clone());
        let prometheus = Prometheus::start_on(&workdir, &sd, &node.ip)
            .await
            .expect("Prometheus on the node's bridge address");

        crate::node_env::wait_available(
            &cp,
            ns,
            BASELINE,
            2,
            Duration::from_secs(120),
            "the baseline's 2 pods available",
        )
        .await;
        // An embedding, not only /api/v1/version (which answers while the model still loads).
        let base = traefik.base.clone();
        until(
            Duration::from_secs(60),
            "the baseline embeds through Traefik",
            || {
                let (base, host) = (base.clone(), host.clone());
                async move {
                    let r = reqwest::Client::new()
                        .post(format!("{base}/api/v1/embed"))
                        .header("host", host)
                        .json(&json!({"texts": ["ready?"]}))
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await
                        .ok()?;
                    (r.status().is_success()
                        && r.headers().get("x-served-by").and_then(|v| v.to_str().ok())
                            == Some("mlx"))
                    .then_some(())
                }
            },
        )
        .await;
        println!(
            "[{ns}] namespace ready in {:.1}s: baseline through Traefik ({provider:?}, host {host}), Prometheus {}",
            started.elapsed().as_secs_f64(),
            prometheus.url()
        );
        Self {
            cp,
            ns: ns.to_string(),
            host,
            provider,
            traefik,
            prometheus,
            workdir,
            started,
            discovery,
            traffic: Vec::new(),
            cpu: cpu_times(),
            shut_down: false,
        }
    }

    /// Seconds since [`Self::start`] began, for timing prints.
    pub fn secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// [`fast_rollout`] for this namespace: the node's embedder image, this provider's traffic
    /// section, this Prometheus. Both services share two cores with the whole cluster, Traefik
    /// and the clients, and their latency has a long shoulder past P95 (CI once measured, for a
    /// healthy candidate, baseline P95 33 ms and 3.5 % of the candidate's requests above 42 ms):
    /// against a 15 ms margin a healthy candidate sits near the threshold, where the gate rightly
    /// waits for minutes; 25 ms keeps it clear, and a +40 ms candidate still far beyond.
    pub fn rollout_spec(&self, name: &str) -> Value {
        let mut r = fast_rollout(name, &self.prometheus.url());
        let spec = &mut r["spec"];
        spec["candidate"]["image"] = json!(image("candle-embedder"));
        spec["analysis"]["gates"]["maxP95OverBaselineMs"] = json!(25);
        spec.as_object_mut().unwrap().remove("ingress");
        spec["traffic"] = self.provider.traffic_spec();
        r
    }

    /// Constant-rate clients through Traefik with this namespace's Host (and `headers`), until
    /// [`Self::stop_traffic`].
    pub fn start_traffic_with(&mut self, rate_per_sec: f64, headers: &[(&str, &str)]) {
        let mut cfg = TrafficConfig::new(&self.traefik.base, Some(&self.host));
        cfg.rate_per_sec = rate_per_sec;
        cfg.max_duration = Duration::from_secs(3600);
        cfg.headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (tx, mut rx) = watch::channel(false);
        let task = tokio::spawn(traffic::run(cfg, async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }));
        self.traffic.push((tx, task));
    }

    pub fn start_traffic(&mut self, rate_per_sec: f64) {
        self.start_traffic_with(rate_per_sec, &[]);
    }

    /// Stops every client stream; their samples in the order the streams were started.
    pub async fn stop_traffic_streams(&mut self) -> Vec<Vec<Sample>> {
        let mut out = Vec::new();
        for (tx, task) in self.traffic.drain(..) {
            let _ = tx.send(true);
            out.push(task.await.unwrap_or_default());
        }
        out
    }

    /// Stops the clients; every sample of every stream, by send time.
    pub async fn stop_traffic(&mut self) -> Vec<Sample> {
        let mut all: Vec<Sample> = self
            .stop_traffic_streams()
            .await
            .into_iter()
            .flatten()
            .collect();
        all.sort_by_key(|s| s.wall);
        all
    }

    pub fn rollouts(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.cp.admin.clone(), &self.ns, &rollout_resource())
    }

    /// Creates the rollout as a user would with kubectl.
    pub async fn create_rollout(&self, rollout: &Value) -> Result<DynamicObject, kube::Error> {
        let obj: DynamicObject = serde_json::from_value(rollout.clone()).expect("a rollout object");
        self.rollouts().create(&PostParams::default(), &obj).await
    }

    pub async fn rollout(&self, name: &str) -> anyhow::Result<Value> {
        Ok(serde_json::to_value(self.rollouts().get(name).await?)?)
    }

    /// The traffic object as it is now.
    pub async fn routing(&self) -> anyhow::Result<Routing> {
        match self.provider {
            Provider::Nginx => {
                let ingresses: Api<Ingress> = Api::namespaced(self.cp.admin.clone(), &self.ns);
                let primary = ingresses.get_opt(PRIMARY_INGRESS).await?;
                let canary = ingresses.get_opt(CANARY_INGRESS).await?;
                Ok(Routing {
                    primary: primary.as_ref().and_then(primary_backend),
                    candidate_weight: canary.and_then(|c| {
                        c.metadata
                            .annotations?
                            .get(CANARY_WEIGHT_ANNOTATION)?
                            .parse()
                            .ok()
                    }),
                })
            }
            Provider::Gateway => {
                let route = self.http_route().await?;
                Ok(routing_of_route(&route))
            }
        }
    }

    /// The user's HTTPRoute.
    pub async fn http_route(&self) -> anyhow::Result<Value> {
        let routes = Api::<DynamicObject>::namespaced_with(
            self.cp.admin.clone(),
            &self.ns,
            &gateway_api("HTTPRoute", "httproutes"),
        );
        Ok(serde_json::to_value(routes.get(HTTP_ROUTE).await?)?)
    }

    /// One observation of the rollout and the traffic object.
    pub async fn observe(&self, name: &str) -> anyhow::Result<Observation> {
        let r = self.rollout(name).await?;
        let routing = self.routing().await?;
        Ok(Observation::of(
            &r,
            routing.primary,
            routing.candidate_weight,
        ))
    }

    /// Polls the rollout every 250 ms until `pred` holds on its JSON, recording every observation
    /// into `log` and printing phase/step/weight changes. Fails after `timeout` with the status
    /// and the operator's log.
    pub async fn wait_rollout(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        log: &mut Vec<Observation>,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.rollout(name).await?;
            if let Ok(routing) = self.routing().await {
                let o = Observation::of(&r, routing.primary, routing.candidate_weight);
                if log.last().is_none_or(|l| !l.same_state(&o)) {
                    println!(
                        "[{:7.1}s] phase={} step={} weight={} candidate-route-weight={:?} primary={:?} | {}",
                        self.secs(),
                        o.phase,
                        o.step,
                        o.weight,
                        o.candidate_weight,
                        o.primary.as_deref().unwrap_or("-"),
                        r["status"]["message"].as_str().unwrap_or("")
                    );
                }
                log.push(o);
            }
            if pred(&r) {
                return Ok(r);
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what}; status: {}\noperator log tail:\n{}",
                    serde_json::to_string_pretty(&r["status"]).unwrap_or_default(),
                    self.operator_log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Everything the operator's containers wrote, oldest container first: the kubelet's pod log
    /// files (`podLogsDir` of node.sh), read on this machine.
    pub fn operator_logs(&self) -> String {
        operator_logs(self.cp.workdir())
    }

    pub fn operator_log_tail(&self, n: usize) -> String {
        let text = self.operator_logs();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Stops the clients and Prometheus, deletes the namespace (its pods stop) and prints how
    /// busy the machine was meanwhile (the latency gates judge a shared VM).
    pub async fn shutdown(mut self) {
        let _ = self.stop_traffic().await;
        self.prometheus.stop().await;
        self.discovery.abort();
        let namespaces: Api<Namespace> = Api::all(self.cp.admin.clone());
        let _ = namespaces.delete(&self.ns, &DeleteParams::default()).await;
        self.shut_down = true;
        let now = cpu_times();
        let (busy, idle, steal) = (now.0 - self.cpu.0, now.1 - self.cpu.1, now.2 - self.cpu.2);
        let total = (busy + idle + steal).max(1);
        println!(
            "[{}] {:.1}s in the namespace; cores busy {}%, stolen by the host {}%",
            self.ns,
            self.secs(),
            100 * busy / total,
            100 * steal / total
        );
    }
}

/// The kubelet's log files of the operator's containers, concatenated (for `tail`-style checks).
pub fn operator_logs(node_workdir: &Path) -> String {
    let dir = node_workdir.join("pod-logs");
    let mut files: Vec<(SystemTime, PathBuf)> = Vec::new();
    for pod in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = pod.file_name().to_string_lossy().to_string();
        if !name.starts_with(&format!("{OPERATOR_NAMESPACE}_{OPERATOR_SA}-")) {
            continue;
        }
        for container in std::fs::read_dir(pod.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            for f in std::fs::read_dir(container.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let modified = f
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                files.push((modified, f.path()));
            }
        }
    }
    files.sort();
    files
        .iter()
        .map(|(_, p)| std::fs::read_to_string(p).unwrap_or_default())
        .collect()
}

/// [`Routing`] of an HTTPRoute: its first rule's backendRefs (the header rule, when the operator
/// adds one, comes after the user's).
pub fn routing_of_route(route: &Value) -> Routing {
    let refs: Vec<(String, u64)> = route["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or("").to_string(),
                r["weight"].as_u64().unwrap_or(1),
            )
        })
        .collect();
    let total: u64 = refs.iter().map(|(_, w)| w).sum();
    let weight_of = |svc: &str| {
        refs.iter()
            .find(|(n, _)| n == svc)
            .map(|(_, w)| *w)
            .unwrap_or(0)
    };
    let candidate_weight = refs
        .iter()
        .any(|(n, _)| n == CANDIDATE)
        .then(|| (weight_of(CANDIDATE) * 100).checked_div(total).unwrap_or(0) as u32);
    let primary = if refs.is_empty() {
        None
    } else if weight_of(CANDIDATE) > weight_of(BASELINE) {
        Some(CANDIDATE.to_string())
    } else {
        Some(BASELINE.to_string())
    };
    Routing {
        primary,
        candidate_weight,
    }
}

/// The user's route to the baseline for `provider`, matching only `host`: the demo baseline's
/// primary Ingress given the host, or (Gateway API) an HTTPRoute on the Gateway instead of it.
pub async fn route(cp: &ControlPlane, ns: &str, host: &str, provider: Provider) {
    let ingresses: Api<Ingress> = Api::namespaced(cp.admin.clone(), ns);
    match provider {
        Provider::Nginx => {
            ingresses
                .patch(
                    PRIMARY_INGRESS,
                    &PatchParams::default(),
                    &Patch::Json::<()>(
                        serde_json::from_value(json!([
                            {"op": "add", "path": "/spec/rules/0/host", "value": host}
                        ]))
                        .unwrap(),
                    ),
                )
                .await
                .expect("the primary Ingress gets this namespace's host");
        }
        Provider::Gateway => {
            ingresses
                .delete(PRIMARY_INGRESS, &DeleteParams::default())
                .await
                .expect("Gateway API namespaces route by HTTPRoute only");
            cp.apply_as_admin(&format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                 metadata: {{name: {HTTP_ROUTE}, namespace: {ns}}}\n\
                 spec:\n  parentRefs: [{{name: {}, namespace: {}, sectionName: web}}]\n  \
                 hostnames: [{host}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /}}}}]\n    \
                 backendRefs: [{{name: {BASELINE}, port: 8080}}]\n",
                crate::traefik::GATEWAY,
                crate::traefik::GATEWAY_NAMESPACE
            ))
            .await
            .expect("the user's HTTPRoute");
        }
    }
}

/// The operator's pods, live ones only.
pub async fn operator_pods(cp: &ControlPlane) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), OPERATOR_NAMESPACE);
    pods.list(&ListParams::default().labels(&format!("app.kubernetes.io/name={OPERATOR_SA}")))
        .await
        .expect("list the operator's pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// The Lease holder (an operator pod's name).
pub async fn leader(cp: &ControlPlane) -> String {
    use k8s_openapi::api::coordination::v1::Lease;
    let leases: Api<Lease> = Api::namespaced(cp.admin.clone(), OPERATOR_NAMESPACE);
    leases
        .get(OPERATOR_SA)
        .await
        .expect("the operator's Lease")
        .spec
        .and_then(|s| s.holder_identity)
        .expect("a Lease holder")
}

/// Deletes the leader operator pod; returns its name.
pub async fn delete_leader(cp: &ControlPlane) -> String {
    let name = leader(cp).await;
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), OPERATOR_NAMESPACE);
    pods.delete(&name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("deleting the leader pod {name}: {e}"));
    name
}

/// SIGKILLs a running container through containerd (`ctr tasks kill`), as the OOM killer or a
/// crash would end it. `container_id` as the pod status gives it (`containerd://<id>`).
pub fn kill_container(cp: &ControlPlane, container_id: &str) -> anyhow::Result<()> {
    let id = container_id
        .strip_prefix("containerd://")
        .with_context(|| format!("not a containerd container id: {container_id}"))?;
    let node = cp.node.as_ref().context("no node")?;
    let out = std::process::Command::new("ctr")
        .arg("--address")
        .arg(&node.containerd_socket)
        .args([
            "--namespace",
            "k8s.io",
            "tasks",
            "kill",
            "--signal",
            "SIGKILL",
            id,
        ])
        .output()
        .context("running ctr (Debian package containerd)")?;
    if !out.status.success() {
        bail!(
            "ctr tasks kill {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
