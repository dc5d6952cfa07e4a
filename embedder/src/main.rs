//! candle-embedder: see embedder/README.md for flags, routes and metrics.

use clap::Parser;
use embedding_telemetry::Telemetry;
use tracing_subscriber::{EnvFilter, Layer as _};

use candle_embedder::config::Config;
use candle_embedder::server;

fn main() -> std::process::ExitCode {
    let cfg = Config::parse();
    if cfg.intra_op_threads > 0 {
        // The GEMMs and attention split work on rayon's global pool; size it before first use.
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.intra_op_threads)
            .build_global()
        {
            eprintln!("cannot size the intra-op thread pool: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(serve(cfg));
    // A model still loading on a blocking thread must not hold the exit past the grace period.
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    code
}

async fn serve(cfg: Config) -> std::process::ExitCode {
    let telemetry = match init_tracing() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("candle-embedder: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = serve_until_shutdown(cfg).await;
    // The spans of the last requests go out before the process does.
    if let Some(telemetry) = telemetry {
        if let Err(e) = telemetry.shutdown().await {
            tracing::warn!(error = %e, "flushing spans at exit");
        }
    }
    code
}

/// JSON logs on stdout (`RUST_LOG`, default `info`), and the spans over OTLP when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set.
fn init_tracing() -> Result<Option<Telemetry>, embedding_telemetry::Error> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(false)
        .boxed();
    embedding_telemetry::install(candle_embedder::OTEL_SERVICE_NAME, filter, fmt)
}

async fn serve_until_shutdown(cfg: Config) -> std::process::ExitCode {
    if cfg.chaos_latency_ms > 0 || cfg.chaos_error_ratio > 0.0 {
        tracing::warn!(
            latency_ms = cfg.chaos_latency_ms,
            error_ratio = cfg.chaos_error_ratio,
            "CHAOS flags are on: this server injects latency/errors (test use only)"
        );
    }
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot listen");
            return std::process::ExitCode::FAILURE;
        }
    };
    let loader = server::loader_from(&cfg);
    match server::run(cfg, listener, loader, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "exiting");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
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
        _ = ctrl_c => {},
        _ = term => {},
    }
}
