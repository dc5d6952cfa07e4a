//! The process around the routes: background model loading + warm-up, serving until a shutdown
//! signal, then draining within the grace period.

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::model::ModelError;
use crate::registry::ModelRegistry;
use crate::state::AppState;

/// Produces the models to serve; runs on a blocking thread after the listener is bound.
pub type Loader = Box<dyn FnOnce() -> Result<ModelRegistry, ModelError> + Send>;

/// The loader the binary uses: the models file, or the single model directory.
pub fn loader_from(cfg: &Config) -> Loader {
    let models = cfg.models.clone();
    let name = cfg.model_name.clone();
    let dir = cfg.model_dir.clone();
    Box::new(move || match models {
        Some(file) => ModelRegistry::from_file(&file),
        None => ModelRegistry::single(&name, &dir),
    })
}

/// Loads the models, then starts and warms up the inference pipeline over them.
async fn load_and_warm_up(state: Arc<AppState>, loader: Loader) -> anyhow::Result<()> {
    let started = Instant::now();
    let registry = tokio::task::spawn_blocking(loader).await??;
    let models = registry.models();
    let default_name = registry.default_model().name().to_string();
    let default = models
        .iter()
        .position(|m| m.name() == default_name)
        .unwrap_or(0);
    state.infer.start(models, default).await?;
    info!(
        models = ?state.infer.names(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "models loaded and warmed up; ready"
    );
    Ok(())
}

/// Serves on `listener` until `shutdown` resolves (or model loading fails), then stops
/// accepting, lets in-flight and queued requests finish, and returns within the grace period.
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    loader: Loader,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = AppState::new(cfg)?;
    run_with_state(state, listener, loader, shutdown).await
}

pub async fn run_with_state(
    state: Arc<AppState>,
    listener: TcpListener,
    loader: Loader,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let grace = state.cfg.shutdown_grace();
    let addr = listener.local_addr()?;
    info!(%addr, service = %state.cfg.service_name, "listening; loading models");

    let (load_failed_tx, load_failed_rx) = tokio::sync::oneshot::channel::<()>();
    let loading = Arc::clone(&state);
    tokio::spawn(async move {
        if let Err(e) = load_and_warm_up(Arc::clone(&loading), loader).await {
            let msg = format!("{e:#}");
            error!(error = %msg, "loading models failed");
            loading.infer.fail(msg);
            let _ = load_failed_tx.send(());
        }
    });

    // Carries the moment the shutdown began: the grace period counts from there.
    let (stopping_tx, mut stopping_rx) = watch::channel(None::<Instant>);
    let stopping = stopping_rx.clone();
    let trigger_state = Arc::clone(&state);
    let trigger = async move {
        tokio::select! {
            _ = shutdown => info!("shutdown requested; draining"),
            Ok(()) = load_failed_rx => {},
        }
        trigger_state.infer.begin_shutdown();
        let _ = stopping_tx.send(Some(Instant::now()));
    };

    let app = crate::api::router(Arc::clone(&state));
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(trigger)
        .into_future();
    let deadline = async move {
        // The value is copied out at once: the watch guard must not live across an await.
        let since = stopping_rx.wait_for(|s| s.is_some()).await.map(|s| *s);
        let Ok(since) = since else {
            // The trigger is gone only once the server stopped on its own.
            return std::future::pending().await;
        };
        let since = since.unwrap_or_else(Instant::now);
        tokio::time::sleep_until((since + grace).into()).await;
    };
    tokio::select! {
        r = server => r?,
        _ = deadline => warn!(grace_secs = grace.as_secs(), "grace period over; abandoning in-flight requests"),
    }

    // Connections are closed; whatever is still queued belongs to abandoned requests.
    {
        let st = Arc::clone(&state);
        let since = (*stopping.borrow()).unwrap_or_else(Instant::now);
        let left = grace.saturating_sub(since.elapsed());
        let join = tokio::task::spawn_blocking(move || st.infer.shutdown_batcher());
        if tokio::time::timeout(left.max(Duration::from_millis(100)), join)
            .await
            .is_err()
        {
            warn!("inference threads still busy at exit");
        }
    }
    if let Some(e) = state.infer.load_error() {
        anyhow::bail!("loading models failed: {e}");
    }
    info!("stopped");
    Ok(())
}
