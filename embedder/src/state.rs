//! What the HTTP handlers share: the configuration, the metrics, the `x-served-by` value and the
//! inference pipeline.

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;

use crate::chaos::Chaos;
use crate::config::Config;
use crate::infer::{Infer, InferConfig};
use crate::metrics::Metrics;

pub struct AppState {
    pub cfg: Config,
    pub metrics: Metrics,
    pub served_by: HeaderValue,
    pub infer: Infer,
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
        let infer = Infer::new(
            InferConfig {
                batcher: cfg.batcher(),
                breaker: cfg.breaker(),
                chaos: Chaos {
                    latency: Duration::from_millis(cfg.chaos_latency_ms),
                    error_ratio: cfg.chaos_error_ratio,
                },
                timeout: cfg.inference_timeout(),
            },
            metrics.clone(),
        );
        Ok(Arc::new(Self {
            cfg,
            metrics,
            served_by,
            infer,
        }))
    }
}
