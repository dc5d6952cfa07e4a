//! `embedding-rollout-operator`: runs the EmbeddingRollout controller.
//!
//! Kubeconfig comes from `KUBECONFIG` / `~/.kube/config`, else the in-cluster service account.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use embedding_rollout_operator::{
    controller::{self, ControllerConfig, RolloutCache},
    dashboard, duration,
    leader::{self, Elector, LeaseConfig},
    metrics::Metrics,
    notification_config::{self, GlobalWebhooks},
    server::{self, Readiness},
};
use embedding_telemetry::Telemetry;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "EmbeddingRollout operator: canary embedding traffic with Prometheus gates"
)]
struct Cli {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Address of /metrics, /healthz, /readyz.
    #[arg(long, env = "OPERATOR_METRICS_ADDR", default_value = "0.0.0.0:8081")]
    metrics_addr: SocketAddr,
    /// Run only while holding a coordination.k8s.io Lease.
    #[arg(long, env = "OPERATOR_LEADER_ELECT")]
    leader_elect: bool,
    /// Namespace of the Lease (default: --namespace, else POD_NAMESPACE, else "default").
    #[arg(long, env = "OPERATOR_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    #[arg(
        long,
        env = "OPERATOR_LEASE_NAME",
        default_value = "embedding-rollout-operator"
    )]
    lease_name: String,
    /// Identity in the Lease (default: POD_NAME, else hostname-pid).
    #[arg(long, env = "OPERATOR_LEASE_IDENTITY")]
    lease_identity: Option<String>,
    /// Lease validity without renewal (Go duration).
    #[arg(long, env = "OPERATOR_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
    /// Per-query Prometheus timeout (Go duration).
    #[arg(long, env = "OPERATOR_PROMETHEUS_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    prometheus_timeout: Duration,
    /// Watch Gateway API HTTPRoutes (rollouts with `traffic.gatewayAPI`); needs the Gateway API
    /// CRDs installed and RBAC on httproutes. Without it such rollouts still work, re-read on a
    /// timer instead of on every route change.
    #[arg(long, env = "OPERATOR_GATEWAY_API")]
    gateway_api: bool,
    /// Reconciles that may run at once (0: no limit). Rollouts created together analyse
    /// together: unbounded, 500 of them send their status writes and analysis appends at the
    /// same moment, the API server queues them (priority and fairness) for seconds, and every
    /// reconcile in flight holds its objects and buffers in memory meanwhile.
    #[arg(long, env = "OPERATOR_MAX_CONCURRENT_RECONCILES", default_value_t = 16)]
    max_concurrent_reconciles: u16,
    /// Operator-wide webhooks, told of every rollout's notifications besides the rollout's own: a
    /// YAML or JSON file `webhooks: [...]` with the fields of `spec.notifications.webhooks`. Their
    /// URL Secrets are read from the operator's own namespace (POD_NAMESPACE, else
    /// --lease-namespace, else --namespace, else "default"). An invalid file stops the start.
    #[arg(long, env = "OPERATOR_NOTIFICATIONS_CONFIG")]
    notifications_config: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long, env = "OPERATOR_LOG_JSON")]
    log_json: bool,
    #[command(flatten)]
    dashboard: dashboard::Args,
}

/// The namespace the operator runs in: the pod's (the chart sets POD_NAMESPACE), else the Lease's
/// or the watched one (a process outside the cluster), else "default".
fn own_namespace(cli: &Cli) -> String {
    std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| cli.lease_namespace.clone())
        .or_else(|| cli.namespace.clone())
        .unwrap_or_else(|| "default".to_string())
}

/// The `--notifications-config` file's webhooks; any error names the file and the field.
fn global_webhooks(cli: &Cli) -> anyhow::Result<GlobalWebhooks> {
    let Some(path) = &cli.notifications_config else {
        return Ok(GlobalWebhooks::default());
    };
    let what = || format!("--notifications-config {}", path.display());
    let text = std::fs::read_to_string(path).with_context(what)?;
    let webhooks = notification_config::parse(&text).with_context(what)?;
    let global = GlobalWebhooks {
        secret_namespace: own_namespace(cli),
        webhooks,
    };
    tracing::info!(
        file = %path.display(),
        webhooks = ?global.webhooks.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(),
        secret_namespace = %global.secret_namespace,
        "global webhooks: every rollout's notifications go to these too"
    );
    Ok(global)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s).map_err(|e| e.to_string())
}

/// Logs on stdout (`RUST_LOG`, default `info,kube=warn,hyper=warn`), and the spans over OTLP when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set; the handle flushes them at exit.
fn init_tracing(json: bool) -> anyhow::Result<Option<Telemetry>> {
    use tracing_subscriber::Layer as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,hyper=warn"));
    let fmt = if json {
        tracing_subscriber::fmt::layer().json().boxed()
    } else {
        // Colours only on a terminal: a container's stdout goes to log files and aggregators,
        // where escape codes garble every line (seen in the kubelet's pod logs).
        use std::io::IsTerminal as _;
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stdout().is_terminal())
            .boxed()
    };
    Ok(embedding_telemetry::install(
        embedding_rollout_operator::OTEL_SERVICE_NAME,
        filter,
        fmt,
    )?)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = match init_tracing(cli.log_json) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("embedding-rollout-operator: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let code = match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("embedding-rollout-operator: {e:#}");
            ExitCode::FAILURE
        }
    };
    // The spans of the last reconciles go out before the process does.
    if let Some(telemetry) = telemetry {
        if let Err(e) = telemetry.shutdown().await {
            eprintln!("embedding-rollout-operator: flushing spans at exit: {e}");
        }
    }
    code
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // First: a bad file stops the start before anything is served or connected.
    let global_webhooks = global_webhooks(&cli)?;
    // kube's TLS and every reqwest client (http_client.rs) use the process-wide rustls provider.
    // Err only means one is already set.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let metrics = Metrics::new();
    let readiness = Readiness::default();
    let (bound, server_task) = server::serve(cli.metrics_addr, metrics.clone(), readiness.clone())
        .await
        .with_context(|| format!("binding the metrics address {}", cli.metrics_addr))?;
    tracing::info!(%bound, "serving /metrics, /healthz, /readyz");

    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG, ~/.kube/config or in-cluster)")?;

    // Before leader election: a standby replica serves the dashboard too (from the API server).
    let rollout_cache = RolloutCache::default();
    let dashboard_task = dashboard::start(
        &cli.dashboard,
        client.clone(),
        cli.namespace.clone(),
        rollout_cache.clone(),
    )
    .await?;

    let elector = if cli.leader_elect {
        let namespace = cli
            .lease_namespace
            .clone()
            .or_else(|| cli.namespace.clone())
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "default".to_string());
        let identity = cli
            .lease_identity
            .clone()
            .unwrap_or_else(leader::default_identity);
        let mut cfg = LeaseConfig::new(cli.lease_name.clone(), namespace, identity);
        cfg.lease_duration = cli.lease_duration;
        cfg.renew_deadline = cli.lease_duration * 2 / 3;
        cfg.retry_period = (cli.lease_duration / 7).max(Duration::from_millis(500));
        let elector = Elector::new(client.clone(), cfg.clone());
        tracing::info!(lease = %cfg.name, namespace = %cfg.namespace, identity = %cfg.identity, "waiting for leadership");
        tokio::select! {
            () = elector.acquire() => {}
            () = shutdown_signal() => return Ok(()),
        }
        Some(elector)
    } else {
        None
    };

    let config = ControllerConfig {
        namespace: cli.namespace.clone(),
        prometheus_timeout: cli.prometheus_timeout,
        gateway_api: cli.gateway_api,
        max_concurrent_reconciles: cli.max_concurrent_reconciles,
        rollout_cache,
        global_webhooks,
    };
    let controller = controller::run(client, config, metrics, readiness.clone());

    let outcome = match &elector {
        Some(elector) => {
            tokio::select! {
                () = controller => Ok(()),
                lost = elector.hold() => Err(anyhow::anyhow!("stepping down: {lost}")),
                () = shutdown_signal() => Ok(()),
            }
        }
        None => {
            tokio::select! {
                () = controller => Ok(()),
                () = shutdown_signal() => Ok(()),
            }
        }
    };
    readiness.set_ready(false);
    if outcome.is_ok() {
        if let Some(elector) = &elector {
            elector.release().await;
        }
    }
    server_task.abort();
    if let Some(task) = dashboard_task {
        task.abort();
    }
    outcome
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received");
}
