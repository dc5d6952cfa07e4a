//! `make scale-bench`: 500 EmbeddingRollouts at once in 50 namespaces on the local API server
//! (etcd + kube-apiserver, no node), the operator's release binary as the chart's ServiceAccount,
//! a fake Prometheus that answers every analysis query (e2e/src/scale/fake_prometheus.rs), and
//! Deployment status written here (no controller-manager or kubelet). A benchmark that prints
//! figures, not a test: nothing here passes or fails on a threshold.
//!
//! Printed: reconcile duration p50/p99 (from the operator's own histogram
//! `embedding_rollout_reconcile_duration_seconds`, interpolated within its buckets), the
//! operator's API requests per reconcile (counted by a proxy every operator request goes
//! through), its RSS (VmRSS, VmHWM) and CPU seconds (/proc), and the analyses that came later
//! than one `analysis.interval` after they were due (the kept EmbeddingRolloutAnalysis objects
//! and status.history). One JSON line at the end.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Stdio,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::Parser;
use e2e::{
    child::GroupChild,
    controlplane::{self, render_kubeconfig, ControlPlane},
    free_port,
    scale::{self, counting_proxy::CountingProxy, fake_prometheus::FakePrometheus, Histogram},
    scenario::{chart_rbac_yaml, OPERATOR_NAMESPACE, OPERATOR_SA},
    workspace_root,
};
use futures::{stream, StreamExt, TryStreamExt};
use kube::{
    api::{Api, DynamicObject, ListParams, PostParams},
    core::{ApiResource, GroupVersionKind},
    Client,
};
use serde_json::{json, Value};

const HISTOGRAM: &str = "embedding_rollout_reconcile_duration_seconds";

#[derive(Parser, Debug)]
#[command(
    about = "500 rollouts at once against the local API server; prints the operator's figures"
)]
struct Args {
    #[arg(long, default_value_t = 500)]
    rollouts: usize,
    #[arg(long, default_value_t = 50)]
    namespaces: usize,
    /// analysis.interval of every rollout, in seconds.
    #[arg(long, default_value_t = 30)]
    interval: u64,
    /// Duration of each of the two steps (50 %, 100 %), in seconds.
    #[arg(long, default_value_t = 120)]
    step: u64,
    /// Give up waiting for every rollout to finish after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// The operator binary (default: E2E_OPERATOR_BIN, else target/release/embedding-rollout-operator).
    #[arg(long)]
    operator: Option<PathBuf>,
    /// Working directory (control plane state, operator log); emptied first.
    #[arg(long)]
    workdir: Option<PathBuf>,
}

fn operator_bin(args: &Args) -> PathBuf {
    if let Some(p) = &args.operator {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("E2E_OPERATOR_BIN") {
        return p.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("release/embedding-rollout-operator")
}

fn ns_name(i: usize) -> String {
    format!("scale-{i:02}")
}

/// The baseline a user already runs: Deployment, Service and primary Ingress `base-{j}`.
fn baseline_objects(ns: &str, j: usize) -> [Value; 3] {
    let name = format!("base-{j}");
    let labels = json!({"app": name});
    [
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": name, "namespace": ns},
               "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                        "template": {"metadata": {"labels": labels},
                                     "spec": {"containers": [{"name": "mlx", "image": "akidb/mlx:1.0.0",
                                                              "ports": [{"containerPort": 8080}]}]}}}}),
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": ns},
               "spec": {"selector": labels, "ports": [{"port": 8080, "targetPort": 8080}]}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"name": format!("ing-{j}"), "namespace": ns},
               "spec": {"ingressClassName": "nginx", "rules": [{"host": format!("embed-{j}.{ns}.example"),
                        "http": {"paths": [{"path": "/", "pathType": "Prefix",
                                            "backend": {"service": {"name": name, "port": {"number": 8080}}}}]}}]}}),
    ]
}

/// A rollout with the gates of the e2e scenarios (scenario::fast_rollout), two steps of
/// `step` seconds and an analysis every `interval` seconds.
fn rollout(ns: &str, j: usize, prometheus: &str, interval: u64, step: u64) -> Value {
    json!({
        "apiVersion": "rollout.akidb.io/v1alpha1",
        "kind": "EmbeddingRollout",
        "metadata": {"name": format!("r-{j}"), "namespace": ns},
        "spec": {
            "baseline": {"deployment": format!("base-{j}"), "service": format!("base-{j}"), "port": 8080,
                         "metricsService": format!("base-{j}"), "standbyReplicas": 1},
            "candidate": {"name": format!("cand-{j}"), "image": "ghcr.io/akidb/candle-embedder:1.0.0",
                          "replicas": 2, "fullReplicas": 2, "port": 8080, "args": [],
                          "metricsService": format!("cand-{j}"), "progressDeadline": "5m"},
            "ingress": {"name": format!("ing-{j}")},
            "steps": [
                {"weight": 50, "duration": format!("{step}s")},
                {"weight": 100, "duration": format!("{step}s")}
            ],
            "analysis": {
                "interval": format!("{interval}s"),
                "window": "1m",
                "confidence": 0.95,
                "evidenceTimeout": "5m",
                "prometheus": {"address": prometheus},
                "gates": {"maxP95Ms": 400, "maxP95OverBaselineMs": 15, "maxErrorRate": 0.005,
                          "requireBreakerClosed": true, "minRequests": 100},
                "rollbackTriggers": {"p95Ms": 800, "p95SustainedFor": "1m", "errorRate": 0.01},
                "failureLimit": 3,
                "noDataPolicy": "Hold"
            },
            "promotion": {"auto": true},
            "rollbackDeadline": "5m"
        }
    })
}

fn resource_of(v: &Value) -> anyhow::Result<ApiResource> {
    let api_version = v["apiVersion"].as_str().unwrap_or_default();
    let kind = v["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        "Deployment" => "deployments",
        "Service" => "services",
        "Ingress" => "ingresses",
        "EmbeddingRollout" => "embeddingrollouts",
        other => bail!("no plural for {other}"),
    };
    Ok(ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, kind),
        plural,
    ))
}

/// Creates every object, `parallel` at a time.
async fn create_all(client: &Client, objects: Vec<Value>, parallel: usize) -> anyhow::Result<()> {
    stream::iter(objects)
        .map(|v| async move {
            let ar = resource_of(&v)?;
            let ns = v["metadata"]["namespace"].as_str().unwrap_or("default");
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
            let obj: DynamicObject = serde_json::from_value(v.clone())?;
            api.create(&PostParams::default(), &obj)
                .await
                .with_context(|| {
                    format!(
                        "creating {} {ns}/{}",
                        ar.kind,
                        obj.metadata.name.unwrap_or_default()
                    )
                })?;
            Ok::<_, anyhow::Error>(())
        })
        .buffer_unordered(parallel)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

async fn list_all(client: &Client, ar: &ApiResource) -> anyhow::Result<Vec<Value>> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(200);
    loop {
        let page = api.list(&params).await?;
        for o in page.items {
            out.push(serde_json::to_value(o)?);
        }
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => params = params.continue_token(&c),
            _ => break,
        }
    }
    Ok(out)
}

fn phases(rollouts: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in rollouts {
        let phase = r["status"]["phase"]
            .as_str()
            .unwrap_or("(none)")
            .to_string();
        let step = r["status"]["currentStep"].as_u64().unwrap_or(0) + 1;
        let key = if phase == "Progressing" {
            format!("Progressing/{step}")
        } else {
            phase
        };
        *out.entry(key).or_default() += 1;
    }
    out
}

async fn scrape(http: &reqwest::Client, metrics: &str) -> anyhow::Result<String> {
    Ok(http
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

fn histogram(text: &str) -> Histogram {
    Histogram::parse(text, HISTOGRAM).unwrap_or_default()
}

/// Sum of `embedding_rollout_reconcile_errors_total` by kind.
fn errors(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("embedding_rollout_reconcile_errors_total{kind=\"") {
            if let Some((kind, value)) = rest.split_once("\"} ") {
                out.insert(kind.to_string(), value.parse().unwrap_or(0.0));
            }
        }
    }
    out
}

fn requests(
    c: &scale::counting_proxy::Counts,
    since: &scale::counting_proxy::Counts,
) -> BTreeMap<(String, String), u64> {
    c.iter()
        .map(|(k, v)| (k.clone(), v - since.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// e2e/controlplane/up.sh with a /16 Service range instead of its /24: 500 candidate Services
/// plus 500 baseline Services need more than 254 cluster IPs. Run from a copy in `workdir` (the
/// script is shared with the e2e runs), then attached to; dropping the child stops it all.
async fn start_control_plane(
    workdir: &std::path::Path,
) -> anyhow::Result<(ControlPlane, GroupChild)> {
    const RANGE: &str = "--service-cluster-ip-range=10.0.0.0/24";
    let script = std::fs::read_to_string(workspace_root().join("e2e/controlplane/up.sh"))?;
    if !script.contains(RANGE) {
        bail!("e2e/controlplane/up.sh no longer sets {RANGE}; update scale-bench");
    }
    let copy = workdir.join("up.sh");
    std::fs::write(
        &copy,
        script.replace(RANGE, "--service-cluster-ip-range=10.96.0.0/16"),
    )?;
    let dir = workdir.join("controlplane");
    std::fs::create_dir_all(&dir)?;
    let log = std::fs::File::create(workdir.join("up.log"))?;
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(&copy)
        .arg("--foreground")
        .arg(&dir)
        .env("BIN", controlplane::bin_dir())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let mut child = GroupChild::spawn(&mut cmd).context("starting up.sh")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !dir.join("controlplane.env").exists() {
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "up.sh exited with {status}; see {}",
                workdir.join("up.log").display()
            );
        }
        if Instant::now() > deadline {
            bail!("the control plane was not ready within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((ControlPlane::attach(&dir).await?, child))
}

fn ms(s: Option<f64>) -> String {
    s.map_or("-".into(), |s| format!("{:.1} ms", s * 1000.0))
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let get = |k: &str| {
        info.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    format!(
        "{} (family {}, model {}), {} cores",
        get("model name"),
        get("cpu family"),
        get("model\t"),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    e2e::use_ring_crypto();
    let operator = operator_bin(&args);
    if !operator.is_file() {
        bail!(
            "no operator binary at {}: run `cargo build --release -p embedding-rollout-operator`",
            operator.display()
        );
    }
    controlplane::check_binaries(&controlplane::bin_dir())?;
    let workdir = args
        .workdir
        .clone()
        .unwrap_or_else(|| workspace_root().join("target/scale-bench"));
    let _ = std::fs::remove_dir_all(&workdir);
    std::fs::create_dir_all(&workdir)?;
    let workdir = workdir.canonicalize()?;
    let t0 = Instant::now();
    let at = || format!("{:6.1}s", t0.elapsed().as_secs_f64());
    println!(
        "scale-bench: {} rollouts in {} namespaces, analysis every {} s, two steps of {} s",
        args.rollouts, args.namespaces, args.interval, args.step
    );
    println!("machine: {}", cpu_model());
    println!("operator: {}", operator.display());

    let (cp, _control_plane) = start_control_plane(&workdir).await?;
    for file in [
        "embeddingrollouts",
        "embeddinggatetemplates",
        "clusterembeddinggatetemplates",
        "embeddingrolloutanalyses",
    ] {
        let path = workspace_root().join(format!("crds/{file}.rollout.akidb.io.yaml"));
        cp.apply_as_admin(&std::fs::read_to_string(&path)?)
            .await
            .with_context(|| format!("applying {}", path.display()))?;
    }
    // The operator's identity: the chart's ServiceAccount and RBAC; its requests go through
    // the counting proxy (plain HTTP on loopback, TLS from there to the API server).
    let token = cp
        .service_account_token(OPERATOR_NAMESPACE, OPERATOR_SA, Duration::from_secs(7200))
        .await?;
    cp.apply_as_admin(&chart_rbac_yaml()?).await?;
    let proxy = CountingProxy::start(&cp.api_url, &cp.ca_path).await?;
    let kubeconfig = workdir.join("operator.kubeconfig");
    std::fs::write(
        &kubeconfig,
        render_kubeconfig(
            &proxy.url(),
            &cp.ca_path,
            &format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}"),
            &token,
        ),
    )?;
    let prometheus = FakePrometheus::start().await?;
    let (status_writes, status_task) = scale::drive_deployment_status(cp.admin.clone());

    // The users' baselines, then the operator, then every rollout at once.
    let per_ns = args.rollouts.div_ceil(args.namespaces);
    let mut baselines = Vec::new();
    let mut rollouts = Vec::new();
    let mut namespaces = String::new();
    for i in 0..args.namespaces {
        let ns = ns_name(i);
        namespaces.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
        ));
        for j in 0..per_ns {
            if rollouts.len() == args.rollouts {
                break;
            }
            baselines.extend(baseline_objects(&ns, j));
            rollouts.push(rollout(&ns, j, &prometheus.url(), args.interval, args.step));
        }
    }
    cp.apply_as_admin(&namespaces).await?;
    create_all(&cp.admin, baselines, 32).await?;
    println!(
        "{} baselines created ({} objects)",
        at(),
        rollouts.len() * 3
    );

    let metrics_addr = format!("127.0.0.1:{}", free_port()?);
    let log_path = workdir.join("operator.log");
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = tokio::process::Command::new(&operator);
    cmd.arg("--metrics-addr")
        .arg(&metrics_addr)
        .env("KUBECONFIG", &kubeconfig)
        .env(
            "RUST_LOG",
            std::env::var("SCALE_OPERATOR_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let mut child = GroupChild::spawn(&mut cmd).context("starting the operator")?;
    let pid = child.pid();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "the operator exited with {status}; see {}",
                log_path.display()
            );
        }
        let ready = http
            .get(format!("http://{metrics_addr}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the operator was not ready within 60 s; see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_sample = scale::sample_proc(pid).unwrap_or_default();
    println!(
        "{} operator ready (pid {pid}, RSS {} KiB)",
        at(),
        ready_sample.rss_kib
    );
    let counts_ready = proxy.counts();
    let h_ready = histogram(&scrape(&http, &metrics_addr).await?);

    let created_at = Instant::now();
    create_all(&cp.admin, rollouts.clone(), 64).await?;
    println!(
        "{} {} rollouts created in {:.1} s",
        at(),
        rollouts.len(),
        created_at.elapsed().as_secs_f64()
    );

    // Progress until every rollout has finished; samples of the operator's memory and CPU.
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("rollout.akidb.io", "v1alpha1", "EmbeddingRollout"),
        "embeddingrollouts",
    );
    let mut peak_rss = ready_sample.rss_kib;
    let mut steady: Option<(Histogram, scale::counting_proxy::Counts, Instant)> = None;
    let mut last_print = Instant::now() - Duration::from_secs(60);
    let finished = loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "the operator exited with {status}; see {}",
                log_path.display()
            );
        }
        if let Some(s) = scale::sample_proc(pid) {
            peak_rss = peak_rss.max(s.rss_kib);
        }
        let now = list_all(&cp.admin, &ar).await?;
        let p = phases(&now);
        let done = p
            .iter()
            .filter(|(k, _)| {
                matches!(
                    k.as_str(),
                    "Promoted" | "Decommissioned" | "RolledBack" | "Failed"
                )
            })
            .map(|(_, v)| v)
            .sum::<usize>();
        if steady.is_none() && p.get("Progressing/1").copied() == Some(rollouts.len()) {
            steady = Some((
                histogram(&scrape(&http, &metrics_addr).await?),
                proxy.counts(),
                Instant::now(),
            ));
            println!(
                "{} all {} rollouts in step 1: steady state from here",
                at(),
                rollouts.len()
            );
        }
        if last_print.elapsed() >= Duration::from_secs(30) {
            let s = scale::sample_proc(pid).unwrap_or_default();
            println!(
                "{} {:?}  RSS {} KiB  CPU {:.1} s  queries {}  status writes {}",
                at(),
                p,
                s.rss_kib,
                s.cpu_seconds,
                prometheus.stats.queries.load(Ordering::Relaxed),
                status_writes.load(Ordering::Relaxed)
            );
            last_print = Instant::now();
        }
        if done == rollouts.len() {
            break true;
        }
        if t0.elapsed() > Duration::from_secs(args.timeout) {
            break false;
        }
        // Listing 500 rollouts costs the API server (and this machine) too: not too often.
        tokio::time::sleep(Duration::from_secs(10)).await;
    };
    let end_text = scrape(&http, &metrics_addr).await?;
    let end_sample = scale::sample_proc(pid).unwrap_or_default();
    let h_end = histogram(&end_text);
    let counts_end = proxy.counts();
    let run_secs = created_at.elapsed().as_secs_f64();
    let final_rollouts = list_all(&cp.admin, &ar).await?;
    let kept_ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("rollout.akidb.io", "v1alpha1", "EmbeddingRolloutAnalysis"),
        "embeddingrolloutanalyses",
    );
    let kept = list_all(&cp.admin, &kept_ar).await?;
    child.signal(libc::SIGTERM);
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    child.kill().await;
    status_task.abort();

    // ---- the figures -------------------------------------------------------------------------
    let all = h_end.since(&h_ready);
    let reqs = requests(&counts_end, &counts_ready);
    let non_watch: u64 = reqs
        .iter()
        .filter(|((v, _), _)| v != "WATCH")
        .map(|(_, n)| n)
        .sum();
    let gets: u64 = reqs
        .iter()
        .filter(|((v, _), _)| v == "GET")
        .map(|(_, n)| n)
        .sum();
    let per = |n: u64, h: &Histogram| {
        if h.count > 0.0 {
            n as f64 / h.count
        } else {
            0.0
        }
    };
    println!();
    println!(
        "== {} rollouts, {} namespaces; finished: {} ({:.0} s after creation)",
        rollouts.len(),
        args.namespaces,
        finished,
        run_secs
    );
    println!("final phases: {:?}", phases(&final_rollouts));
    println!(
        "reconciles: {}  p50 {}  p99 {}  mean {}  within 100 ms: {:.2} %",
        all.count,
        ms(all.quantile(0.5)),
        ms(all.quantile(0.99)),
        ms((all.count > 0.0).then(|| all.sum / all.count)),
        all.share_within(0.1).unwrap_or(0.0) * 100.0
    );
    let mut steady_json = Value::Null;
    if let Some((h_steady, c_steady, since)) = &steady {
        let s = h_end.since(h_steady);
        let r = requests(&counts_end, c_steady);
        let n: u64 = r
            .iter()
            .filter(|((v, _), _)| v != "WATCH")
            .map(|(_, n)| n)
            .sum();
        let g: u64 = r
            .iter()
            .filter(|((v, _), _)| v == "GET")
            .map(|(_, n)| n)
            .sum();
        println!(
            "  steady state (all in step 1 to the end, {:.0} s): {} reconciles  p50 {}  p99 {}  requests/reconcile {:.2} (GET {:.2})",
            since.elapsed().as_secs_f64(),
            s.count,
            ms(s.quantile(0.5)),
            ms(s.quantile(0.99)),
            per(n, &s),
            per(g, &s)
        );
        steady_json = json!({"reconciles": s.count, "p50_ms": s.quantile(0.5).map(|v| v * 1000.0),
            "p99_ms": s.quantile(0.99).map(|v| v * 1000.0), "requests_per_reconcile": per(n, &s),
            "gets_per_reconcile": per(g, &s)});
    }
    println!(
        "API requests (operator, through the proxy, after ready): {} non-watch = {:.2} per reconcile (GET {:.2}); by verb and resource:",
        non_watch,
        per(non_watch, &all),
        per(gets, &all)
    );
    let mut by_count: Vec<_> = reqs.iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(a.1));
    for ((verb, resource), n) in &by_count {
        println!(
            "  {n:>7}  {:.3}/reconcile  {verb} {resource}",
            per(**n, &all)
        );
    }
    let startup: u64 = counts_ready
        .iter()
        .filter(|((v, _), _)| v != "WATCH")
        .map(|(_, n)| n)
        .sum();
    println!("  (before ready: {startup} requests, the initial lists and the lease-free start)");
    let cpu = end_sample.cpu_seconds - ready_sample.cpu_seconds;
    println!(
        "operator RSS: {:.1} MiB at ready, {:.1} MiB peak sampled, VmHWM {:.1} MiB, {:.1} MiB at the end; CPU {:.1} s over {:.0} s ({:.1} % of one core)",
        ready_sample.rss_kib as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        end_sample.hwm_kib as f64 / 1024.0,
        end_sample.rss_kib as f64 / 1024.0,
        cpu,
        run_secs,
        cpu / run_secs * 100.0
    );
    let times = scale::analysis_times(&kept, &final_rollouts);
    let interval = Duration::from_secs(args.interval);
    let gaps: Vec<Duration> = times.values().flat_map(|t| scale::gaps(t)).collect();
    let late: Vec<f64> = gaps
        .iter()
        .map(|g| g.as_secs_f64() - interval.as_secs_f64())
        .collect();
    let missed = gaps.iter().filter(|g| **g > interval * 2).count();
    // The longest gaps, with the steps of the analyses on either side (why: see the log).
    let mut worst: Vec<(Duration, &String, chrono::DateTime<chrono::Utc>)> = times
        .iter()
        .flat_map(|(k, t)| {
            t.windows(2)
                .filter_map(move |w| Some(((w[1] - w[0]).to_std().ok()?, k, w[0])))
        })
        .collect();
    worst.sort_by_key(|w| std::cmp::Reverse(w.0));
    for (gap, rollout, after) in worst.iter().take(5) {
        println!(
            "  gap {:.1} s in {rollout} after the analysis at {after}",
            gap.as_secs_f64()
        );
    }
    let analyses: usize = times.values().map(Vec::len).sum();
    println!(
        "analyses: {analyses} ({} rollouts with any); gaps between consecutive analyses: {}; lateness past the interval p50 {:.1} s, p99 {:.1} s, max {:.1} s; missed (gap > 2 × interval): {missed}",
        times.values().filter(|t| !t.is_empty()).count(),
        gaps.len(),
        scale::nearest_rank(&late, 0.5).unwrap_or(0.0),
        scale::nearest_rank(&late, 0.99).unwrap_or(0.0),
        late.iter().copied().fold(0.0, f64::max),
    );
    let errs = errors(&end_text);
    println!(
        "reconcile errors: {errs:?}; fake Prometheus queries: {}; Deployment status writes (harness): {}",
        prometheus.stats.queries.load(Ordering::Relaxed),
        status_writes.load(Ordering::Relaxed)
    );
    let summary = json!({
        "rollouts": rollouts.len(), "namespaces": args.namespaces, "interval_s": args.interval,
        "step_s": args.step, "finished": finished, "run_s": run_secs,
        "reconciles": all.count, "p50_ms": all.quantile(0.5).map(|v| v * 1000.0),
        "p99_ms": all.quantile(0.99).map(|v| v * 1000.0),
        "requests_per_reconcile": per(non_watch, &all), "gets_per_reconcile": per(gets, &all),
        "steady": steady_json,
        "rss_ready_mib": ready_sample.rss_kib as f64 / 1024.0, "rss_peak_mib": peak_rss as f64 / 1024.0,
        "hwm_mib": end_sample.hwm_kib as f64 / 1024.0, "cpu_s": cpu,
        "analyses": analyses, "gaps": gaps.len(), "missed": missed,
        "late_p99_s": scale::nearest_rank(&late, 0.99), "late_max_s": late.iter().copied().fold(0.0, f64::max),
        "errors": errs, "machine": cpu_model(),
    });
    println!("{summary}");
    drop(cp);
    Ok(())
}
