//! The inference pipeline, as a domain layer the HTTP handlers call (TEI's router/core split):
//! model lookup, tokenization, chaos, the circuit breaker, the batching queue and the inference
//! timeout, plus the lifecycle of the served models (loading, ready, shutting down, failed).
//!
//! Nothing here knows about HTTP: failures are [`InferError`]s, which the edge (`api::error`)
//! turns into status codes and JSON bodies.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tracing::Instrument;

use crate::batcher::{BatchItem, Batcher, BatcherConfig, SubmitError, WorkFn};
use crate::breaker::{Breaker, BreakerConfig, Outcome, SystemClock};
use crate::chaos::Chaos;
use crate::metrics::Metrics;
use crate::model::{Encoded, Model, ModelError};

/// Requests with more text than this are tokenized on a blocking thread, not the runtime.
const INLINE_TOKENIZE_BYTES: usize = 16 * 1024;

impl BatchItem for Encoded {
    fn cost(&self) -> usize {
        self.len()
    }
}

/// Why an embedding was not produced.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InferError {
    #[error("models are still loading")]
    NotReady,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("model `{requested}` is not served; available models: {}", available.join(", "))]
    ModelNotFound {
        requested: String,
        available: Vec<String>,
    },
    #[error("text {index} has {tokens} tokens, more than the model's maximum of {max}")]
    TextTooLong {
        index: usize,
        tokens: usize,
        max: usize,
    },
    /// The texts cannot be tokenized or fed to the model.
    #[error("{0}")]
    InvalidInput(String),
    #[error("the queue is full ({depth} of {capacity} texts waiting)")]
    QueueFull { depth: usize, capacity: usize },
    #[error("inference is failing, the circuit breaker is open")]
    BreakerOpen { retry_after: Duration },
    #[error("inference did not finish within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("{0}")]
    Inference(String),
    /// Injected by `--chaos-error-ratio`.
    #[error("injected failure")]
    Chaos,
    #[error("{0}")]
    Internal(String),
}

impl From<SubmitError> for InferError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::QueueFull { depth, capacity } => InferError::QueueFull { depth, capacity },
            SubmitError::ShuttingDown => InferError::ShuttingDown,
        }
    }
}

/// Where the served models are in their life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Loading = 0,
    Ready = 1,
    ShuttingDown = 2,
    Failed = 3,
}

/// Loaded models and the batcher feeding them; the batch group of a model is its index.
struct Serving {
    models: Vec<Arc<Model>>,
    default: usize,
    batcher: Batcher<Encoded, Vec<f32>>,
}

/// A served model, resolved from a request's model name.
#[derive(Clone)]
pub struct ModelHandle {
    group: usize,
    model: Arc<Model>,
}

impl ModelHandle {
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }
}

/// The embeddings of one request's texts, in order.
pub struct Embedded {
    pub model: Arc<Model>,
    pub embeddings: Vec<Vec<f32>>,
    pub tokens: usize,
}

/// Settings of the pipeline.
#[derive(Debug, Clone)]
pub struct InferConfig {
    pub batcher: BatcherConfig,
    pub breaker: BreakerConfig,
    pub chaos: Chaos,
    /// Queue + inference time after which a request fails with [`InferError::Timeout`].
    pub timeout: Duration,
}

pub struct Infer {
    cfg: InferConfig,
    metrics: Metrics,
    breaker: Arc<Breaker>,
    serving: OnceLock<Serving>,
    phase: AtomicU8,
    load_error: Mutex<Option<String>>,
}

impl Infer {
    /// A pipeline with no models yet (phase `Loading`); `start` installs them.
    pub fn new(cfg: InferConfig, metrics: Metrics) -> Self {
        let gauge = metrics.breaker_state.clone();
        let breaker = Breaker::new(cfg.breaker.clone(), Arc::new(SystemClock), move |s| {
            gauge.set(s.gauge_value())
        });
        Self {
            cfg,
            metrics,
            breaker,
            serving: OnceLock::new(),
            phase: AtomicU8::new(Phase::Loading as u8),
            load_error: Mutex::new(None),
        }
    }

    pub fn chaos(&self) -> &Chaos {
        &self.cfg.chaos
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

    /// Stops admitting new work (phase `ShuttingDown`), unless loading already failed.
    pub fn begin_shutdown(&self) {
        if self.phase() != Phase::Failed {
            self.set_phase(Phase::ShuttingDown);
        }
    }

    /// Records why loading failed (phase `Failed`).
    pub fn fail(&self, error: String) {
        *self.load_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
        self.set_phase(Phase::Failed);
    }

    pub fn load_error(&self) -> Option<String> {
        self.load_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The models, once loaded and warmed up. Still served while draining for shutdown.
    fn serving(&self) -> Option<&Serving> {
        match self.phase() {
            Phase::Ready | Phase::ShuttingDown => self.serving.get(),
            Phase::Loading | Phase::Failed => None,
        }
    }

    /// Names of the served models (empty until ready).
    pub fn names(&self) -> Vec<String> {
        self.serving().map(Serving::names).unwrap_or_default()
    }

    /// The served models and the index of the default one; `None` until ready.
    pub fn models(&self) -> Option<(&[Arc<Model>], usize)> {
        self.serving().map(|s| (&s.models[..], s.default))
    }

    /// Texts waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.serving.get().map_or(0, |s| s.batcher.depth())
    }

    /// Refreshes the breaker (an elapsed cool-down makes it half-open without traffic).
    pub fn refresh_breaker(&self) {
        let _ = self.breaker.state();
    }

    /// Starts the batcher over `models`, warms every model up through it (short and
    /// maximum-length texts, so the first real requests find buffers warm), then marks the
    /// pipeline ready.
    pub async fn start(&self, models: Vec<Arc<Model>>, default: usize) -> Result<(), InferError> {
        let for_work = models.clone();
        let work: Arc<WorkFn<Encoded, Vec<f32>, ModelError>> =
            Arc::new(move |group: usize, batch: &[&Encoded]| for_work[group].embed(batch));
        let batcher = Batcher::start(
            self.cfg.batcher.clone(),
            self.metrics.queue_depth.clone(),
            self.metrics.batch_size.clone(),
            work,
        );
        let serving = Serving {
            models: models.clone(),
            default,
            batcher,
        };
        if self.serving.set(serving).is_err() {
            return Err(InferError::Internal("models were loaded twice".into()));
        }
        let serving = self.serving.get().expect("just set");
        for (group, model) in models.iter().enumerate() {
            let max = model.max_tokens();
            let texts = vec![
                "warm up".to_string(),
                "a slightly longer sentence to warm up the attention path".to_string(),
                "warm ".repeat(max),
            ];
            let encoded = tokenize(model, texts, true).await?;
            serving
                .batcher
                .submit(group, encoded)?
                .await
                .map_err(|_| {
                    InferError::Internal(format!("warm-up of {} was dropped", model.name()))
                })?
                .map_err(|e| InferError::Inference(e.to_string()))?;
        }
        for model in &models {
            self.metrics.init_model_series(model.name());
        }
        self.metrics.models_loaded.set(models.len() as i64);
        if self.phase() == Phase::Loading {
            self.set_phase(Phase::Ready);
        }
        Ok(())
    }

    /// Stops the batcher once its queue is drained (blocks: call off the async runtime).
    pub fn shutdown_batcher(&self) {
        if let Some(s) = self.serving.get() {
            s.batcher.shutdown();
        }
    }

    fn ready(&self) -> Result<&Serving, InferError> {
        match self.serving() {
            Some(s) => Ok(s),
            None if self.phase() == Phase::ShuttingDown => Err(InferError::ShuttingDown),
            None => Err(InferError::NotReady),
        }
    }

    /// The served model called `name`, or the default one.
    pub fn model(&self, name: Option<&str>) -> Result<ModelHandle, InferError> {
        let serving = self.ready()?;
        let group = match name {
            None => serving.default,
            Some(name) => serving
                .find(name)
                .ok_or_else(|| InferError::ModelNotFound {
                    requested: name.to_string(),
                    available: serving.names(),
                })?,
        };
        Ok(ModelHandle {
            group,
            model: Arc::clone(&serving.models[group]),
        })
    }

    /// Tokenizes `texts`, passes chaos and the breaker, queues them and awaits their batch,
    /// within the inference timeout. Texts over the model's maximum are cut when `truncate`.
    pub async fn embed(
        &self,
        handle: &ModelHandle,
        texts: Vec<String>,
        truncate: bool,
    ) -> Result<Embedded, InferError> {
        let serving = self.ready()?;
        let encoded = tokenize(&handle.model, texts, truncate).await?;
        let tokens: usize = encoded.iter().map(Encoded::len).sum();

        self.cfg.chaos.delay().await;
        let ticket = self.breaker.admit().map_err(|r| InferError::BreakerOpen {
            retry_after: r.retry_after,
        })?;
        if self.cfg.chaos.should_fail() {
            // Injected as a backend failure, so it also drives the breaker like a real one.
            ticket.record(Outcome::Failure);
            return Err(InferError::Chaos);
        }
        let texts = encoded.len();
        let pending = serving.batcher.submit(handle.group, encoded)?;
        // A child of the request's span: the texts' wait in the queue and their batch's
        // inference, until the results are back (or the timeout).
        let span = tracing::info_span!("inference", model = handle.model.name(), texts, tokens);
        let timeout = self.cfg.timeout;
        let waited = tokio::time::timeout(timeout, pending).instrument(span);
        let result = match waited.await {
            Ok(Ok(Ok(embeddings))) => Ok(embeddings),
            Ok(Ok(Err(e))) => Err(InferError::Inference(e.to_string())),
            Ok(Err(_)) => Err(InferError::Internal(
                "the inference threads dropped the request".into(),
            )),
            Err(_) => Err(InferError::Timeout(timeout)),
        };
        ticket.record(if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        });
        Ok(Embedded {
            model: Arc::clone(&handle.model),
            embeddings: result?,
            tokens,
        })
    }
}

impl Serving {
    fn find(&self, name: &str) -> Option<usize> {
        self.models.iter().position(|m| m.name() == name)
    }

    fn names(&self) -> Vec<String> {
        self.models.iter().map(|m| m.name().to_string()).collect()
    }
}

async fn tokenize(
    model: &Arc<Model>,
    texts: Vec<String>,
    truncate: bool,
) -> Result<Vec<Encoded>, InferError> {
    let bytes: usize = texts.iter().map(String::len).sum();
    let result = if bytes <= INLINE_TOKENIZE_BYTES {
        model.encode(&texts, truncate)
    } else {
        let m = Arc::clone(model);
        tokio::task::spawn_blocking(move || m.encode(&texts, truncate))
            .await
            .map_err(|e| InferError::Internal(format!("tokenizer task failed: {e}")))?
    };
    result.map_err(|e| match e {
        ModelError::TooLong { index, tokens, max } => {
            InferError::TextTooLong { index, tokens, max }
        }
        ModelError::InvalidInput(m) => InferError::InvalidInput(m),
        ModelError::Tokenizer(m) => InferError::InvalidInput(format!("cannot tokenize: {m}")),
        other => InferError::Internal(other.to_string()),
    })
}
