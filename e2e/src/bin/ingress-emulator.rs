//! TEST HARNESS binary: the ingress emulator (nginx with ingress-nginx canary-by-weight semantics)
//! for one namespace. Never shipped. See `e2e::ingress`.

use std::path::PathBuf;

use clap::Parser;

/// Serve the Ingresses of a namespace with a local nginx (TEST HARNESS).
#[derive(Parser, Debug)]
#[command(name = "ingress-emulator")]
struct Args {
    /// Namespace to watch.
    #[arg(long, env = "E2E_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Port nginx listens on (127.0.0.1); 0 picks a free one.
    #[arg(long, default_value_t = 18080)]
    port: u16,
    /// nginx prefix directory (config, pid, logs).
    #[arg(long, default_value = ".work/ingress-emulator")]
    workdir: PathBuf,
    /// nginx binary (default: nginx on PATH, then /usr/sbin/nginx).
    #[arg(long, env = "E2E_NGINX_BIN")]
    nginx_bin: Option<PathBuf>,
    /// Serve only Ingresses of this class (and those without a class).
    #[arg(long)]
    ingress_class: Option<String>,
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
    let mut cfg = e2e::ingress::IngressEmulatorConfig::new(args.namespace, args.workdir);
    cfg.listen_port = args.port;
    cfg.ingress_class = args.ingress_class;
    if let Some(b) = args.nginx_bin {
        cfg.nginx_bin = b;
    }
    let emulator = e2e::ingress::IngressEmulator::start(client, cfg).await?;
    println!(
        "ingress emulator serving on {} (workdir {})",
        emulator.url(),
        emulator.workdir().display()
    );
    e2e::shutdown_signal().await;
    // Stops nginx (its whole process group).
    drop(emulator);
    Ok(())
}
