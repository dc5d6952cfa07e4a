//! The imperative shell: shared state, background model loading + warm-up, serving until a
//! shutdown signal, then draining within the grace period.

use std::future::{Future, IntoFuture};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::batcher::{BatchItem, Batcher, WorkFn};
use crate::breaker::{Breaker, SystemClock};
use crate::chaos::Chaos;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::{Encoded, Model, ModelError};
use crate::registry::ModelRegistry;

impl BatchItem for Encoded {
    fn cost(&self) -> usize {
        self.len()
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Loading = 0,
    Ready = 1,
    ShuttingDown = 2,
    Failed = 3,
}

/// Loaded models and the batcher feeding them; the batch group of a model is its index.
pub struct Serving {
    pub models: Vec<Arc<Model>>,
    pub default: usize,
    pub batcher: Batcher<Encoded, Vec<f32>>,
}

impl Serving {
    pub fn find(&self, name: &str) -> Option<usize> {
        self.models.iter().position(|m| m.name() == name)
    }

    pub fn names(&self) -> Vec<String> {
        self.models.iter().map(|m| m.name().to_string()).collect()
    }
}

pub struct AppState {
    pub cfg: Config,
    pub metrics: Metrics,
    pub breaker: Arc<Breaker>,
    pub chaos: Chaos,
    pub served_by: HeaderValue,
    serving: OnceLock<Serving>,
    phase: AtomicU8,
    load_error: Mutex<Option<String>>,
}

impl AppState {
    pub fn new(cfg: Config) -> anyhow::Result<Arc<Self>> {
        let served_by = HeaderValue::from_str(&cfg.service_name).map_err(|_| {
            anyhow::anyhow!(
                "--service-name {:?} is not a valid header value",
                cfg.service_name
            )
        })?;
        let metrics = Metrics::new(&cfg.service_name);
        let gauge = metrics.breaker_state.clone();
        let breaker = Breaker::new(cfg.breaker(), Arc::new(SystemClock), move |s| {
            gauge.set(s.gauge_value())
        });
        let chaos = Chaos {
            latency: Duration::from_millis(cfg.chaos_latency_ms),
            error_ratio: cfg.chaos_error_ratio,
        };
        Ok(Arc::new(Self {
            cfg,
            metrics,
            breaker,
            chaos,
            served_by,
            serving: OnceLock::new(),
            phase: AtomicU8::new(Phase::Loading as u8),
            load_error: Mutex::new(None),
        }))
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Loading,
            1 => Phase::Ready,
            2 => Phase::ShuttingDown,
            _ => Phase::Failed,
        }
    }

    fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Release);
    }

    /// The models, once loaded and warmed up. Still served while draining for shutdown.
    pub fn serving(&self) -> Option<&Serving> {
        match self.phase() {
            Phase::Ready | Phase::ShuttingDown => self.serving.get(),
            Phase::Loading | Phase::Failed => None,
        }
    }

    pub fn load_error(&self) -> Option<String> {
        self.load_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Loads the models, starts the batcher, warms every model up through the batcher, then marks
/// the server ready.
async fn load_and_warm_up(state: Arc<AppState>, loader: Loader) -> anyhow::Result<()> {
    let started = Instant::now();
    let registry = tokio::task::spawn_blocking(loader).await??;
    let models = registry.models();
    let default_name = registry.default_model().name().to_string();
    let default = models
        .iter()
        .position(|m| m.name() == default_name)
        .unwrap_or(0);
    let for_work = models.clone();
    let work: Arc<WorkFn<Encoded, Vec<f32>, ModelError>> =
        Arc::new(move |group: usize, batch: &[&Encoded]| for_work[group].embed(batch));
    let batcher = Batcher::start(
        state.cfg.batcher(),
        state.metrics.queue_depth.clone(),
        state.metrics.batch_size.clone(),
        work,
    );
    let serving = Serving {
        models: models.clone(),
        default,
        batcher,
    };
    if state.serving.set(serving).is_err() {
        anyhow::bail!("models were loaded twice");
    }
    let serving = state.serving.get().expect("just set");
    for (group, model) in models.iter().enumerate() {
        let m = Arc::clone(model);
        let max = m.max_tokens();
        let encoded = tokio::task::spawn_blocking(move || {
            // Short and maximum-length texts: the first real requests find buffers warm.
            let texts = vec![
                "warm up".to_string(),
                "a slightly longer sentence to warm up the attention path".to_string(),
                "warm ".repeat(max),
            ];
            m.encode(&texts, true)
        })
        .await??;
        serving
            .batcher
            .submit(group, encoded)?
            .await
            .map_err(|_| anyhow::anyhow!("warm-up of {} was dropped", model.name()))??;
    }
    for model in &models {
        state.metrics.init_model_series(model.name());
    }
    state.metrics.models_loaded.set(models.len() as i64);
    if state.phase() == Phase::Loading {
        state.set_phase(Phase::Ready);
    }
    info!(
        models = ?serving.names(),
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
            *loading.load_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
            loading.set_phase(Phase::Failed);
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
        if trigger_state.phase() != Phase::Failed {
            trigger_state.set_phase(Phase::ShuttingDown);
        }
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
    if state.serving.get().is_some() {
        let st = Arc::clone(&state);
        let since = (*stopping.borrow()).unwrap_or_else(Instant::now);
        let left = grace.saturating_sub(since.elapsed());
        let join = tokio::task::spawn_blocking(move || {
            if let Some(s) = st.serving.get() {
                s.batcher.shutdown();
            }
        });
        if tokio::time::timeout(left.max(Duration::from_millis(100)), join)
            .await
            .is_err()
        {
            warn!("inference threads still busy at exit");
        }
    }
    if let Some(e) = state.load_error() {
        anyhow::bail!("loading models failed: {e}");
    }
    info!("stopped");
    Ok(())
}
