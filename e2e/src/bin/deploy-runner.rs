//! TEST HARNESS binary: the deployment runner (stand-in for kubelet + Deployment/EndpointSlice
//! controllers) for one namespace. Never shipped. See `e2e::runner`.

use std::path::PathBuf;

use clap::Parser;

/// Run local candle-embedder processes for the Deployments of a namespace (TEST HARNESS).
#[derive(Parser, Debug)]
#[command(name = "deploy-runner")]
struct Args {
    /// Namespace to watch.
    #[arg(long, env = "E2E_NAMESPACE", default_value = "default")]
    namespace: String,
    /// candle-embedder binary (default: target/debug/candle-embedder).
    #[arg(long, env = "E2E_EMBEDDER_BIN")]
    embedder_bin: Option<PathBuf>,
    /// Logs and ConfigMap files go here.
    #[arg(long, default_value = ".work/deploy-runner")]
    workdir: PathBuf,
    /// Prometheus file_sd JSON to keep current.
    #[arg(long)]
    file_sd: Option<PathBuf>,
    /// Working directory of the embedder processes (default: the workspace root).
    #[arg(long)]
    cwd: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    e2e::use_ring_crypto();
    let client = kube::Client::try_default().await?;
    let mut cfg = e2e::runner::RunnerConfig::new(args.namespace, args.workdir);
    if let Some(b) = args.embedder_bin {
        cfg.embedder_bin = b;
    }
    if let Some(c) = args.cwd {
        cfg.cwd = c;
    }
    cfg.file_sd = args.file_sd;
    e2e::runner::run(client, cfg, e2e::shutdown_signal()).await?;
    Ok(())
}
