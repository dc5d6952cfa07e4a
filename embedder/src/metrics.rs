//! Prometheus metrics, names and labels exactly as docs/interfaces.md states them.
//!
//! A private registry (not the process-global default) so several servers can live in one test
//! process without mixing their numbers.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Request latency buckets (seconds) from the contract: 1 ms .. 5 s.
const LATENCY_BUCKETS_MS: [f64; 22] = [
    1.0, 2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 60.0, 75.0, 100.0,
    150.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];

const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Label value for requests that named no served model.
pub const UNKNOWN_MODEL: &str = "unknown";

/// Every `kind` label value of `embedding_errors_total` (server-side failures: 5xx and 429).
pub const ERROR_KINDS: [&str; 8] = [
    "not_ready",
    "shutting_down",
    "queue_full",
    "breaker_open",
    "timeout",
    "inference",
    "chaos",
    "internal",
];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    service: String,
    pub request_duration: HistogramVec,
    pub requests_total: IntCounterVec,
    pub errors_total: IntCounterVec,
    pub breaker_state: IntGauge,
    pub models_loaded: IntGauge,
    pub batch_size: Histogram,
    pub queue_depth: IntGauge,
}

impl Metrics {
    pub fn new(service: &str) -> Self {
        let registry = Registry::new();
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "embedding_request_duration_seconds",
                "Latency of successful embed requests, from handler entry to response",
            )
            .buckets(LATENCY_BUCKETS_MS.iter().map(|ms| ms / 1000.0).collect()),
            &["service", "model"],
        )
        .expect("valid histogram");
        let requests_total = IntCounterVec::new(
            Opts::new(
                "embedding_requests_total",
                "Embed requests that reached a handler, by HTTP status",
            ),
            &["service", "model", "code"],
        )
        .expect("valid counter");
        let errors_total = IntCounterVec::new(
            Opts::new(
                "embedding_errors_total",
                "Embed requests answered 5xx or 429 (server-side failures), by kind",
            ),
            &["service", "model", "kind"],
        )
        .expect("valid counter");
        let breaker_state = IntGauge::with_opts(
            Opts::new(
                "circuit_breaker_state",
                "Inference circuit breaker: 0 closed, 1 open, 2 half-open",
            )
            .const_label("service", "embedding")
            .const_label("backend", service),
        )
        .expect("valid gauge");
        let models_loaded = IntGauge::with_opts(
            Opts::new("model_loaded_count", "Models loaded and warmed up")
                .const_label("service", service),
        )
        .expect("valid gauge");
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("embedding_batch_size", "Texts per inference batch")
                .const_label("service", service)
                .buckets(BATCH_BUCKETS.to_vec()),
        )
        .expect("valid histogram");
        let queue_depth = IntGauge::with_opts(
            Opts::new("embedding_queue_depth", "Texts waiting for inference")
                .const_label("service", service),
        )
        .expect("valid gauge");

        for c in [
            Box::new(request_duration.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(requests_total.clone()),
            Box::new(errors_total.clone()),
            Box::new(breaker_state.clone()),
            Box::new(models_loaded.clone()),
            Box::new(batch_size.clone()),
            Box::new(queue_depth.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }

        Self {
            registry,
            service: service.to_string(),
            request_duration,
            requests_total,
            errors_total,
            breaker_state,
            models_loaded,
            batch_size,
            queue_depth,
        }
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// Creates the zero-valued error series of a served model, so `rate(embedding_errors_total[..])`
    /// answers 0 for a healthy server instead of "no data" (labelled counters appear on first use).
    pub fn init_model_series(&self, model: &str) {
        for kind in ERROR_KINDS {
            self.errors_total
                .with_label_values(&[&self.service, model, kind])
                .inc_by(0);
        }
    }

    /// Counts one finished embed request.
    pub fn observe_request(&self, model: &str, status: u16, error_kind: Option<&str>, secs: f64) {
        let code = status.to_string();
        self.requests_total
            .with_label_values(&[&self.service, model, &code])
            .inc();
        if let Some(kind) = error_kind {
            self.errors_total
                .with_label_values(&[&self.service, model, kind])
                .inc();
        }
        if (200..300).contains(&status) {
            self.request_duration
                .with_label_values(&[&self.service, model])
                .observe(secs);
        }
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_contract_names_and_labels() {
        let m = Metrics::new("candle");
        m.observe_request("all-MiniLM-L6-v2", 200, None, 0.012);
        m.observe_request(UNKNOWN_MODEL, 429, Some("queue_full"), 0.001);
        m.batch_size.observe(3.0);
        m.queue_depth.set(2);
        m.models_loaded.set(1);
        m.breaker_state.set(0);
        let text = m.render();
        for needle in [
            r#"embedding_request_duration_seconds_bucket{model="all-MiniLM-L6-v2",service="candle",le="0.035"} 1"#,
            r#"embedding_requests_total{code="200",model="all-MiniLM-L6-v2",service="candle"} 1"#,
            r#"embedding_requests_total{code="429",model="unknown",service="candle"} 1"#,
            r#"embedding_errors_total{kind="queue_full",model="unknown",service="candle"} 1"#,
            r#"circuit_breaker_state{backend="candle",service="embedding"} 0"#,
            r#"model_loaded_count{service="candle"} 1"#,
            r#"embedding_batch_size_count{service="candle"} 1"#,
            r#"embedding_queue_depth{service="candle"} 2"#,
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        // Failed requests do not enter the latency histogram.
        assert!(text.contains(
            r#"embedding_request_duration_seconds_count{model="all-MiniLM-L6-v2",service="candle"} 1"#
        ));
        assert!(!text.contains(r#"embedding_request_duration_seconds_count{model="unknown""#));
    }
}
