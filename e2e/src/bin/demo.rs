//! `make demo`: the whole system on this machine, one rollout watched live (TEST HARNESS stand-ins
//! for the cluster: deployment runner, ingress emulator; real kube-apiserver, Prometheus, nginx,
//! candle-embedder processes and the operator binary). Tears everything down on exit or Ctrl-C.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use e2e::runner::workspace_root;
use e2e::scenario::{self, phase, secs_between, timestamp, Env};
use serde_json::Value;

/// Run the local environment and watch examples/demo-rollout.yaml roll out.
#[derive(Parser, Debug)]
#[command(name = "demo")]
struct Args {
    /// The rollout to apply (its namespace is replaced by --namespace).
    #[arg(long, default_value = "examples/demo-rollout.yaml")]
    rollout: PathBuf,
    #[arg(long, default_value = "demo")]
    namespace: String,
    /// Client requests per second through nginx.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Extra candidate args, e.g. `--candidate-arg=--chaos-latency-ms=40` to watch a rollback.
    #[arg(long = "candidate-arg", allow_hyphen_values = true)]
    candidate_args: Vec<String>,
    /// Where the environment keeps its files (logs, configs).
    #[arg(long, default_value = ".work/demo")]
    workdir: PathBuf,
    /// Exit after the outcome instead of waiting for Ctrl-C (default when stdin is not a terminal).
    #[arg(long)]
    exit: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = workspace_root();
    let workdir = if args.workdir.is_absolute() {
        args.workdir.clone()
    } else {
        root.join(&args.workdir)
    };
    println!(
        "starting the local environment in {} ...",
        workdir.display()
    );
    let mut env = Env::start(&args.namespace, &workdir).await?;
    let result = tokio::select! {
        r = run(&mut env, &args) => r,
        _ = tokio::signal::ctrl_c() => {
            println!("\ninterrupted");
            Ok(())
        }
    };
    println!("tearing down (operator, embedders, nginx, Prometheus, API server) ...");
    env.shutdown().await;
    result
}

async fn run(env: &mut Env, args: &Args) -> anyhow::Result<()> {
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
    let analysis = &mut rollout["spec"]["analysis"];
    let example_address = analysis["prometheus"]["address"].clone();
    analysis["prometheus"]["address"] = Value::from(env.prometheus.url());
    if !args.candidate_args.is_empty() {
        rollout["spec"]["candidate"]["args"] = serde_json::json!(args.candidate_args);
    }

    // The operator's read-only web dashboard, on loopback (no token: only this machine reaches it).
    let dashboard = format!("127.0.0.1:{}", e2e::ingress::free_port()?);
    env.set_operator_args(&["--dashboard-addr", &dashboard, "--dashboard-refresh", "1s"]);
    env.start_operator().await?;
    env.start_traffic(args.rate);
    println!(
        "up in {:.0}s: API server {} | Prometheus {} (the example said {}) | nginx {} | operator metrics http://{}/metrics",
        env.secs(),
        env.cp.api_url,
        env.prometheus.url(),
        example_address,
        env.ingress.url(),
        env.operator_metrics
    );
    println!(
        "baseline akidb-mlx (2 x candle-embedder --service-name=mlx) behind nginx; {} req/s of client traffic",
        args.rate
    );
    println!(
        "dashboard: http://{dashboard}/rollouts/{}/{name} (open it in a browser on this machine)",
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
        if !env.operator_alive() {
            anyhow::bail!(
                "the operator exited; log:\n{}",
                scenario::tail(&env.operator_log(), 30)
            );
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("no outcome within {} s", args.timeout_secs);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
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
    println!("\nwhere to look:");
    println!(
        "  operator metrics  http://{}/metrics",
        env.operator_metrics
    );
    println!("  dashboard         http://{dashboard}/");
    println!("  Prometheus UI     {}/graph", env.prometheus.url());
    println!("  nginx (ingress)   {}/api/v1/version", env.ingress.url());
    println!(
        "  kubectl           KUBECONFIG={} kubectl -n {} get erollout {name} -o yaml",
        env.cp.kubeconfig_path.display(),
        args.namespace
    );
    println!(
        "  logs              {} (operator.log, runner/logs/, nginx/, prometheus/)",
        env.workdir.display()
    );
    if !args.exit && std::io::stdin().is_terminal() {
        println!("\nCtrl-C to tear everything down.");
        tokio::signal::ctrl_c().await?;
    }
    Ok(())
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
