//! `make demo`: the whole system on this machine, one rollout watched live. A real single-node
//! cluster (kube-apiserver + etcd, controller-manager, scheduler, the kubelet with containerd,
//! kube-proxy; e2e/controlplane), Traefik serving the route, the operator installed by its Helm
//! chart, the baseline and the candidate as pods of the embedder image, Prometheus scraping them,
//! and clients through Traefik. Needs root (the node). Tears everything down on exit or Ctrl-C.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use e2e::controlplane::ControlPlane;
use e2e::node_env::{image, images_dir};
use e2e::rollout_env::{Provider, RolloutEnv};
use e2e::scenario::{phase, secs_between, timestamp, OPERATOR_NAMESPACE, OPERATOR_SA};
use e2e::workspace_root;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams};
use serde_json::Value;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProviderArg {
    /// ingress-nginx canary annotations (served by Traefik's kubernetesIngressNGINX provider).
    Nginx,
    /// Gateway API HTTPRoute weights (served by Traefik's kubernetesGateway provider).
    Gateway,
}

/// Run a local single-node cluster and watch examples/demo-rollout.yaml roll out.
#[derive(Parser, Debug)]
#[command(name = "demo")]
struct Args {
    /// The rollout to apply (its namespace is replaced by --namespace).
    #[arg(long, default_value = "examples/demo-rollout.yaml")]
    rollout: PathBuf,
    #[arg(long, default_value = "demo")]
    namespace: String,
    /// How traffic moves: a Gateway API HTTPRoute (the default, as the README recommends for new
    /// clusters: ingress-nginx was retired in March 2026) or the nginx canary Ingress.
    #[arg(long, value_enum, default_value = "gateway")]
    provider: ProviderArg,
    /// Client requests per second through Traefik.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Extra candidate args, e.g. `--candidate-arg=--chaos-latency-ms=40` to watch a rollback.
    #[arg(long = "candidate-arg", allow_hyphen_values = true)]
    candidate_args: Vec<String>,
    /// Where the cluster keeps its files (logs, state).
    #[arg(long, default_value = ".work/demo")]
    workdir: PathBuf,
    /// Exit after the outcome instead of waiting for Ctrl-C (default when stdin is not a terminal).
    #[arg(long)]
    exit: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

/// The Secret holding the web dashboard's bearer token (the chart's webDashboard.tokenSecret).
const DASHBOARD_SECRET: &str = "demo-dashboard";

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo runs a real node (containerd, the kubelet, a bridge): run it as root");
    }
    let images = images_dir();
    for archive in [
        "pause",
        "candle-embedder",
        "embedding-rollout-operator",
        "traefik",
    ] {
        let path = images.join(format!("{archive}.tar"));
        if !path.is_file() {
            bail!("{} is missing: run `make node-images`", path.display());
        }
    }
    let root = workspace_root();
    let workdir = if args.workdir.is_absolute() {
        args.workdir.clone()
    } else {
        root.join(&args.workdir)
    };
    let cluster_dir = workdir.join("cluster");
    let _ = std::fs::remove_dir_all(&cluster_dir);
    println!(
        "starting a single-node cluster in {} ...",
        cluster_dir.display()
    );
    let t = std::time::Instant::now();
    // Owns the node: dropping it stops every process and removes the bridge and the cgroups.
    let node = ControlPlane::start_node(&cluster_dir, &images).await?;
    println!(
        "node up in {:.0}s; installing Traefik and the operator's chart ...",
        t.elapsed().as_secs_f64()
    );
    let token = dashboard_token(&node).await?;
    let cp = ControlPlane::attach(&cluster_dir).await?;
    let provider = match args.provider {
        ProviderArg::Nginx => Provider::Nginx,
        ProviderArg::Gateway => Provider::Gateway,
    };
    let secret_value = format!("webDashboard.tokenSecret={DASHBOARD_SECRET}");
    let mut env = RolloutEnv::start(
        cp,
        &args.namespace,
        provider,
        &[
            "webDashboard.enabled=true",
            "webDashboard.address=0.0.0.0",
            &secret_value,
            "webDashboard.refresh=1s",
        ],
    )
    .await;
    let result = tokio::select! {
        r = run(&mut env, &args, &token) => r,
        _ = tokio::signal::ctrl_c() => {
            println!("\ninterrupted");
            Ok(())
        }
    };
    println!("tearing down (the node, Prometheus, the API server) ...");
    env.shutdown().await;
    drop(node);
    result
}

/// A random token in the Secret the chart mounts for the web dashboard.
async fn dashboard_token(cp: &ControlPlane) -> anyhow::Result<String> {
    use rand::Rng as _;
    let token: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    cp.apply_as_admin(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {OPERATOR_NAMESPACE}}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: {DASHBOARD_SECRET}, namespace: {OPERATOR_NAMESPACE}}}\n\
         stringData: {{token: {token}}}\n"
    ))
    .await
    .context("the dashboard's token Secret")?;
    Ok(token)
}

async fn run(env: &mut RolloutEnv, args: &Args, token: &str) -> anyhow::Result<()> {
    let root = workspace_root();
    let path = if args.rollout.is_absolute() {
        args.rollout.clone()
    } else {
        root.join(&args.rollout)
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut rollout: Value = serde_yaml::from_str(&text)?;
    let name = rollout["metadata"]["name"]
        .as_str()
        .context("rollout without metadata.name")?
        .to_string();
    rollout["metadata"]["namespace"] = Value::from(args.namespace.clone());
    let spec = &mut rollout["spec"];
    let example_address = spec["analysis"]["prometheus"]["address"].clone();
    spec["analysis"]["prometheus"]["address"] = Value::from(env.prometheus.url());
    spec["candidate"]["image"] = Value::from(image("candle-embedder"));
    if let Some(s) = spec.as_object_mut() {
        s.remove("ingress");
    }
    spec["traffic"] = env.provider.traffic_spec();
    if !args.candidate_args.is_empty() {
        spec["candidate"]["args"] = serde_json::json!(args.candidate_args);
    }
    let services: Api<Service> = Api::namespaced(env.cp.admin.clone(), OPERATOR_NAMESPACE);
    // The chart's Service: `<fullname>-metrics`, with the dashboard's port when it is exposed.
    let operator_ip = services
        .get(&format!("{OPERATOR_SA}-metrics"))
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the operator's Service has no ClusterIP")?;
    env.start_traffic(args.rate);
    println!(
        "up in {:.0}s: API server {} | Prometheus {} (the example said {}) | Traefik {} (Host: {})",
        env.secs(),
        env.cp.api_url,
        env.prometheus.url(),
        example_address,
        env.traefik.base,
        env.host
    );
    print_pods(env).await;
    println!(
        "\nbaseline akidb-mlx (2 pods, candle-embedder --service-name=mlx) behind Traefik ({:?} provider); {} req/s of client traffic",
        env.provider, args.rate
    );
    println!(
        "dashboard: http://{operator_ip}:8082/rollouts/{}/{name} (token {token})",
        args.namespace
    );
    env.create_rollout(&rollout)
        .await
        .with_context(|| format!("creating rollout {name}"))?;
    println!(
        "applied {} (rollout {}/{name})\n",
        path.display(),
        args.namespace
    );
    println!(
        "{:>6}  {:<12} {:>5} {:>6}  {:>9} {:>9} {:>7} {:>8}  {:<12} message",
        "time", "phase", "step", "weight", "cand P95", "base P95", "errors", "step n", "verdict"
    );
    let steps = rollout["spec"]["steps"]
        .as_array()
        .map(|s| s.len())
        .unwrap_or(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut last_line = String::new();
    let fin = loop {
        let r = env.rollout(&name).await?;
        let line = status_line(&r, steps);
        if line != last_line {
            println!("{:>5.0}s  {line}", env.secs());
            last_line = line;
        }
        if matches!(
            phase(&r),
            "Promoted" | "Decommissioned" | "RolledBack" | "Failed"
        ) {
            break r;
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "no outcome within {} s; the operator's log:\n{}",
                args.timeout_secs,
                env.operator_log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    tokio::time::sleep(Duration::from_secs(6)).await;
    let samples = env.stop_traffic().await;
    let s = e2e::traffic::summarize(&samples);
    println!("\noutcome: {}", phase(&fin));
    println!("  {}", fin["status"]["message"].as_str().unwrap_or(""));
    if let Some(rb) = fin["status"]["rollback"].as_object() {
        println!(
            "  rollback: {}",
            rb.get("reason").and_then(Value::as_str).unwrap_or("")
        );
        if let (Some(first), Some(done)) = (
            rb.get("firstFailureAt").and_then(timestamp),
            rb.get("completedAt").and_then(timestamp),
        ) {
            println!(
                "  first failing check -> all traffic on the baseline: {:.1}s",
                secs_between(first, done)
            );
        }
    }
    println!(
        "  clients: {} requests, {} failed, {:.1}% answered by candle, p95 {:.1} ms",
        s.requests,
        s.failures,
        s.candle_share * 100.0,
        s.p95.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
    );
    print_pods(env).await;
    println!("\nwhere to look:");
    println!("  dashboard         http://{operator_ip}:8082/ (token {token})");
    println!("  operator metrics  http://{operator_ip}:8081/metrics");
    println!("  Prometheus UI     {}/graph", env.prometheus.url());
    println!(
        "  Traefik           curl -H 'Host: {}' {}/api/v1/version",
        env.host, env.traefik.base
    );
    println!(
        "  kubectl           KUBECONFIG={} kubectl -n {} get erollout {name} -o yaml",
        env.cp.kubeconfig_path.display(),
        args.namespace
    );
    println!(
        "  logs              {} (pod-logs/, kubelet.log, containerd.log, rollouts/{}/prometheus)",
        env.cp.workdir().display(),
        args.namespace
    );
    if !args.exit && std::io::stdin().is_terminal() {
        println!("\nCtrl-C to tear everything down.");
        tokio::signal::ctrl_c().await?;
    }
    Ok(())
}

/// The pods of the rollout's namespace and the operator's, as `kubectl get pods -o wide` shows.
async fn print_pods(env: &RolloutEnv) {
    println!(
        "\n{:<14} {:<44} {:>5} {:<18} {:>8}  IP",
        "NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS"
    );
    for ns in [OPERATOR_NAMESPACE, "traefik", env.ns.as_str()] {
        let pods: Api<Pod> = Api::namespaced(env.cp.admin.clone(), ns);
        let Ok(list) = pods.list(&ListParams::default()).await else {
            continue;
        };
        for p in list.items {
            let status = p.status.clone().unwrap_or_default();
            let cs = status.container_statuses.clone().unwrap_or_default();
            let ready = cs.iter().filter(|c| c.ready).count();
            let restarts: i32 = cs.iter().map(|c| c.restart_count).sum();
            // The waiting reason (CrashLoopBackOff, ...) says more than the phase.
            let state = cs
                .iter()
                .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
                .or(status.phase.clone())
                .unwrap_or_default();
            println!(
                "{:<14} {:<44} {:>5} {:<18} {:>8}  {}",
                ns,
                p.metadata.name.unwrap_or_default(),
                format!("{ready}/{}", cs.len()),
                state,
                restarts,
                status.pod_ip.unwrap_or_default()
            );
        }
    }
}

fn ms(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{x:.1}ms"))
        .unwrap_or_else(|| "-".into())
}

/// One line of the live view, from the rollout status only.
fn status_line(r: &Value, steps: usize) -> String {
    let st = &r["status"];
    let a = &st["lastAnalysis"];
    let step = st["currentStep"].as_i64().unwrap_or(0) + 1;
    format!(
        "{:<12} {:>5} {:>5}%  {:>9} {:>9} {:>7} {:>8}  {:<12} {}",
        phase(r),
        format!("{step}/{steps}"),
        st["currentWeight"].as_i64().unwrap_or(0),
        ms(&a["candidateP95Ms"]),
        ms(&a["baselineP95Ms"]),
        a["errorRate"]
            .as_f64()
            .map(|e| format!("{:.2}%", e * 100.0))
            .unwrap_or_else(|| "-".into()),
        a["stepRequests"]
            .as_u64()
            .map(|n| n.to_string())
            .unwrap_or_else(|| "-".into()),
        a["verdict"].as_str().unwrap_or("-"),
        st["message"].as_str().unwrap_or("")
    )
}
