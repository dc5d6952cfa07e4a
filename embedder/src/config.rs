//! Command-line flags; every flag also reads `EMBEDDER_<FLAG>` from the environment.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::batcher::BatcherConfig;
use crate::breaker::BreakerConfig;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "candle-embedder",
    version,
    about = "HTTP embedding server over a Candle BERT inference core"
)]
pub struct Config {
    /// Listen address.
    #[arg(long, env = "EMBEDDER_HOST", default_value = "127.0.0.1")]
    pub host: String,

    #[arg(long, env = "EMBEDDER_PORT", default_value_t = 8080)]
    pub port: u16,

    /// Models file (YAML, see README). Without it, --model-dir is served as --model-name.
    #[arg(long, env = "EMBEDDER_MODELS")]
    pub models: Option<PathBuf>,

    /// The single model's directory when no --models file is given.
    #[arg(
        long,
        env = "EMBEDDER_MODEL_DIR",
        default_value = "models/all-MiniLM-L6-v2"
    )]
    pub model_dir: PathBuf,

    /// The single model's name when no --models file is given.
    #[arg(long, env = "EMBEDDER_MODEL_NAME", default_value = "all-MiniLM-L6-v2")]
    pub model_name: String,

    /// `service` label of the metrics and `service` of /api/v1/version.
    #[arg(long, env = "EMBEDDER_SERVICE_NAME", default_value = "candle")]
    pub service_name: String,

    #[arg(long, env = "EMBEDDER_MAX_BATCH_SIZE", default_value_t = 32)]
    pub max_batch_size: usize,

    /// Most tokens in one batch (a text longer than this still runs, alone): bounds a batch of
    /// long texts the way --max-batch-size bounds a batch of short ones. The default is 32 texts
    /// of the usual 256-token limit.
    #[arg(long, env = "EMBEDDER_MAX_BATCH_TOKENS", default_value_t = 8192)]
    pub max_batch_tokens: usize,

    /// How long the oldest queued text may wait for a batch to fill up.
    #[arg(long, env = "EMBEDDER_MAX_BATCH_WAIT_MS", default_value_t = 3)]
    pub max_batch_wait_ms: u64,

    /// Texts that may wait for inference; more -> 429 with Retry-After.
    #[arg(long, env = "EMBEDDER_QUEUE_CAPACITY", default_value_t = 1024)]
    pub queue_capacity: usize,

    #[arg(long, env = "EMBEDDER_MAX_TEXTS_PER_REQUEST", default_value_t = 64)]
    pub max_texts_per_request: usize,

    #[arg(long, env = "EMBEDDER_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Threads running inference batches; 0 means one per core.
    #[arg(long, env = "EMBEDDER_INFERENCE_THREADS", default_value_t = 0)]
    pub inference_threads: usize,

    /// Threads one batch's matrix products are split across; 0 means one per core. 1 trades
    /// latency at low load for a little throughput at saturation (docs/benchmarks.md).
    #[arg(long, env = "EMBEDDER_INTRA_OP_THREADS", default_value_t = 0)]
    pub intra_op_threads: usize,

    /// A request whose texts are not embedded within this time fails with 504 and counts as a
    /// breaker failure.
    #[arg(long, env = "EMBEDDER_INFERENCE_TIMEOUT_MS", default_value_t = 10_000)]
    pub inference_timeout_ms: u64,

    /// SIGTERM/SIGINT: stop accepting, finish in-flight and queued work, exit within this.
    #[arg(long, env = "EMBEDDER_SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,

    /// Breaker: rolling window of inference outcomes.
    #[arg(long, env = "EMBEDDER_BREAKER_WINDOW_SECS", default_value_t = 30)]
    pub breaker_window_secs: u64,

    /// Breaker: outcomes needed in the window before it may open.
    #[arg(long, env = "EMBEDDER_BREAKER_MIN_REQUESTS", default_value_t = 20)]
    pub breaker_min_requests: u32,

    /// Breaker: failure share (0..1] that opens it.
    #[arg(long, env = "EMBEDDER_BREAKER_FAILURE_RATIO", default_value_t = 0.5, value_parser = ratio)]
    pub breaker_failure_ratio: f64,

    /// Breaker: time open before half-open probes.
    #[arg(long, env = "EMBEDDER_BREAKER_COOLDOWN_SECS", default_value_t = 10)]
    pub breaker_cooldown_secs: u64,

    /// Breaker: probes admitted while half-open; that many successes close it.
    #[arg(long, env = "EMBEDDER_BREAKER_HALF_OPEN_PROBES", default_value_t = 3)]
    pub breaker_half_open_probes: u32,

    /// CHAOS, TEST ONLY: latency added to every embed request.
    #[arg(long, env = "EMBEDDER_CHAOS_LATENCY_MS", default_value_t = 0)]
    pub chaos_latency_ms: u64,

    /// CHAOS, TEST ONLY: share of embed requests failed with 500 (counted as errors, kind="chaos",
    /// and as breaker failures).
    #[arg(long, env = "EMBEDDER_CHAOS_ERROR_RATIO", default_value_t = 0.0, value_parser = ratio)]
    pub chaos_error_ratio: f64,
}

fn ratio(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not between 0 and 1"))
    }
}

impl Config {
    pub fn batcher(&self) -> BatcherConfig {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        BatcherConfig {
            max_batch_size: self.max_batch_size.max(1),
            max_batch_tokens: self.max_batch_tokens.max(1),
            max_wait: Duration::from_millis(self.max_batch_wait_ms),
            queue_capacity: self.queue_capacity,
            threads: if self.inference_threads == 0 {
                cores
            } else {
                self.inference_threads
            },
        }
    }

    pub fn breaker(&self) -> BreakerConfig {
        BreakerConfig {
            window: Duration::from_secs(self.breaker_window_secs.max(1)),
            min_requests: self.breaker_min_requests.max(1),
            failure_ratio: self.breaker_failure_ratio,
            cooldown: Duration::from_secs(self.breaker_cooldown_secs),
            half_open_probes: self.breaker_half_open_probes.max(1),
        }
    }

    pub fn inference_timeout(&self) -> Duration {
        Duration::from_millis(self.inference_timeout_ms.max(1))
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::parse_from(["candle-embedder"]);
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 8080));
        assert_eq!(c.service_name, "candle");
        assert_eq!((c.max_batch_size, c.max_batch_wait_ms), (32, 3));
        assert_eq!(c.queue_capacity, 1024);
        assert_eq!(c.max_texts_per_request, 64);
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert_eq!(c.shutdown_grace_secs, 20);
        assert_eq!((c.chaos_latency_ms, c.chaos_error_ratio), (0, 0.0));
        assert!(c.models.is_none());
        assert_eq!(c.model_dir, PathBuf::from("models/all-MiniLM-L6-v2"));
        assert!(c.batcher().threads >= 1);
    }

    #[test]
    fn ratios_outside_zero_one_are_rejected() {
        assert!(Config::try_parse_from(["x", "--chaos-error-ratio", "1.5"]).is_err());
        assert!(Config::try_parse_from(["x", "--breaker-failure-ratio", "-0.1"]).is_err());
        let c = Config::try_parse_from(["x", "--chaos-error-ratio", "0.25"]).unwrap();
        assert_eq!(c.chaos_error_ratio, 0.25);
    }
}
