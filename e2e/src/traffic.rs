//! TEST HARNESS: constant-rate traffic for the scenarios. Sends `POST /api/v1/embed` with two short
//! texts (as the user's k6 script does) at a fixed arrival rate through the ingress, until a stop
//! signal or a maximum duration, and records every response: when, status, latency, which service
//! answered (`x-served-by`). Arrivals do not wait for earlier
//! responses (open model), so a slow backend cannot lower the offered rate.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tokio::sync::{Mutex, Semaphore};

/// What to send.
#[derive(Debug, Clone)]
pub struct TrafficConfig {
    /// Full URL, e.g. `http://127.0.0.1:18080/api/v1/embed`.
    pub url: String,
    /// Host header (the Ingress rule's host).
    pub host: Option<String>,
    pub rate_per_sec: f64,
    pub max_duration: Duration,
    pub request_timeout: Duration,
    /// Arrivals beyond this many in-flight requests are recorded as failures, never queued.
    pub max_in_flight: usize,
    pub texts: Vec<String>,
    pub model: Option<String>,
    /// Extra request headers (e.g. the canary header `X-Canary: always`).
    pub headers: Vec<(String, String)>,
}

impl TrafficConfig {
    /// 20 req/s of the k6 script's body to `base_url` + `/api/v1/embed`.
    pub fn new(base_url: &str, host: Option<&str>) -> Self {
        Self {
            url: format!("{}/api/v1/embed", base_url.trim_end_matches('/')),
            host: host.map(str::to_string),
            rate_per_sec: 20.0,
            max_duration: Duration::from_secs(600),
            request_timeout: Duration::from_secs(10),
            max_in_flight: 256,
            texts: vec![
                "Machine learning and artificial intelligence".into(),
                "Natural language processing with transformers".into(),
            ],
            model: Some("all-MiniLM-L6-v2".into()),
            headers: Vec::new(),
        }
    }
}

/// One request's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Send time since the start of the run.
    pub at: Duration,
    pub wall: SystemTime,
    /// `None`: transport error (see `error`).
    pub status: Option<u16>,
    pub latency: Duration,
    /// `x-served-by`: `candle`, `mlx`, ...
    pub served_by: Option<String>,
    pub error: Option<String>,
}

impl Sample {
    pub fn ok(&self) -> bool {
        self.status == Some(200)
    }
}

/// Send traffic until `stop` resolves or `cfg.max_duration` passes; in-flight requests are awaited
/// (bounded by the request timeout). Samples are sorted by send time.
pub async fn run(cfg: TrafficConfig, stop: impl Future<Output = ()>) -> Vec<Sample> {
    let client = reqwest::Client::builder()
        .timeout(cfg.request_timeout)
        // One connection per request. A proxy may close an idle keep-alive connection at the
        // instant a request is written onto it, which then fails with "connection closed before
        // message completed" although the proxy never read it (the HTTP/1.1 keep-alive race every
        // client has; callers retry idempotent requests). That is not what the scenarios judge;
        // fresh connections keep every failure one that the proxy or an upstream caused.
        .pool_max_idle_per_host(0)
        .build()
        .expect("reqwest client");
    let mut body = json!({ "texts": cfg.texts });
    if let Some(m) = &cfg.model {
        body["model"] = json!(m);
    }
    let body = Arc::new(serde_json::to_vec(&body).expect("json body"));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let slots = Arc::new(Semaphore::new(cfg.max_in_flight.max(1)));
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / cfg.rate_per_sec.max(0.001));
    let mut ticker = tokio::time::interval(period);
    // Late ticks are sent at once (catch up) so the count over the run matches the rate.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let deadline = tokio::time::sleep(cfg.max_duration);
    tokio::pin!(stop, deadline);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = &mut deadline => break,
            _ = ticker.tick() => {}
        }
        let at = start.elapsed();
        let wall = SystemTime::now();
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            samples.lock().await.push(Sample {
                at,
                wall,
                status: None,
                latency: Duration::ZERO,
                served_by: None,
                error: Some(format!(
                    "more than {} requests in flight",
                    cfg.max_in_flight
                )),
            });
            continue;
        };
        let mut req = client
            .post(&cfg.url)
            .header("content-type", "application/json")
            .body((*body).clone());
        if let Some(h) = &cfg.host {
            req = req.header("host", h);
        }
        for (k, v) in &cfg.headers {
            req = req.header(k, v);
        }
        let samples = samples.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let sent = Instant::now();
            let sample = match req.send().await {
                Ok(resp) => {
                    let header = |k: &str| {
                        resp.headers()
                            .get(k)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    };
                    let served_by = header("x-served-by");
                    let status = resp.status().as_u16();
                    // The latency a client sees includes reading the body.
                    let body = resp.bytes().await;
                    Sample {
                        at,
                        wall,
                        status: Some(status),
                        latency: sent.elapsed(),
                        served_by,
                        error: body.err().map(|e| format!("reading body: {e}")),
                    }
                }
                Err(e) => Sample {
                    at,
                    wall,
                    status: None,
                    latency: sent.elapsed(),
                    served_by: None,
                    error: Some(error_chain(&e)),
                },
            };
            samples.lock().await.push(sample);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let mut out = std::mem::take(&mut *samples.lock().await);
    out.sort_by_key(|s| s.at);
    out
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Aggregates over a set of samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub start: Duration,
    pub requests: usize,
    /// Answers with `x-served-by: candle` (any status).
    pub candle: usize,
    /// `candle / answered` (requests with an `x-served-by`); 0 when none answered.
    pub candle_share: f64,
    /// Status != 200 or transport error.
    pub failures: usize,
    /// p95 latency of all answered requests.
    pub p95: Option<Duration>,
}

/// Summary of `samples` (pure).
pub fn summarize(samples: &[Sample]) -> Summary {
    summarize_from(Duration::ZERO, samples.iter())
}

fn summarize_from<'a>(start: Duration, samples: impl Iterator<Item = &'a Sample>) -> Summary {
    let mut requests = 0;
    let mut candle = 0;
    let mut answered = 0;
    let mut failures = 0;
    let mut latencies = Vec::new();
    for s in samples {
        requests += 1;
        if s.served_by.is_some() {
            answered += 1;
        }
        if s.served_by.as_deref() == Some("candle") {
            candle += 1;
        }
        if !s.ok() {
            failures += 1;
        }
        if s.status.is_some() {
            latencies.push(s.latency);
        }
    }
    latencies.sort();
    let p95 = (!latencies.is_empty()).then(|| {
        // Nearest-rank percentile.
        let rank = ((latencies.len() as f64) * 0.95).ceil() as usize;
        latencies[rank.clamp(1, latencies.len()) - 1]
    });
    Summary {
        start,
        requests,
        candle,
        candle_share: if answered == 0 {
            0.0
        } else {
            candle as f64 / answered as f64
        },
        failures,
        p95,
    }
}

/// One summary per `window` of send time, from the first window to the last sample's (pure).
pub fn windows(samples: &[Sample], window: Duration) -> Vec<Summary> {
    let Some(last) = samples.iter().map(|s| s.at).max() else {
        return Vec::new();
    };
    let n = (last.as_nanos() / window.as_nanos().max(1)) as usize + 1;
    (0..n)
        .map(|i| {
            let from = window * i as u32;
            let to = from + window;
            summarize_from(from, samples.iter().filter(|s| s.at >= from && s.at < to))
        })
        .collect()
}

/// Samples sent within `[from, to)` (pure).
pub fn between(samples: &[Sample], from: Duration, to: Duration) -> Vec<Sample> {
    samples
        .iter()
        .filter(|s| s.at >= from && s.at < to)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, status: Option<u16>, by: Option<&str>, latency_ms: u64) -> Sample {
        Sample {
            at: Duration::from_millis(at_ms),
            wall: SystemTime::UNIX_EPOCH,
            status,
            latency: Duration::from_millis(latency_ms),
            served_by: by.map(str::to_string),
            error: status.is_none().then(|| "refused".to_string()),
        }
    }

    #[test]
    fn summary_counts_share_failures_and_p95() {
        let mut s: Vec<Sample> = (0..100)
            .map(|i| {
                sample(
                    i * 10,
                    Some(200),
                    Some(if i % 4 == 0 { "candle" } else { "mlx" }),
                    i + 1,
                )
            })
            .collect();
        s.push(sample(1000, Some(500), Some("candle"), 5));
        s.push(sample(1010, None, None, 0));
        let sum = summarize(&s);
        assert_eq!(sum.requests, 102);
        assert_eq!(sum.failures, 2);
        assert_eq!(sum.candle, 26);
        assert!((sum.candle_share - 26.0 / 101.0).abs() < 1e-9);
        // 101 answered latencies: 1..=100 ms and 5 ms; the 96th smallest is 95 ms.
        assert_eq!(sum.p95, Some(Duration::from_millis(95)));
    }

    #[test]
    fn windows_split_by_send_time() {
        let s = vec![
            sample(0, Some(200), Some("mlx"), 1),
            sample(900, Some(200), Some("candle"), 1),
            sample(1500, Some(503), Some("mlx"), 1),
            sample(3200, Some(200), Some("candle"), 1),
        ];
        let w = windows(&s, Duration::from_secs(1));
        assert_eq!(w.len(), 4);
        assert_eq!((w[0].requests, w[0].candle, w[0].failures), (2, 1, 0));
        assert_eq!((w[1].requests, w[1].failures), (1, 1));
        assert_eq!(w[2].requests, 0);
        assert_eq!(w[2].p95, None);
        assert_eq!((w[3].requests, w[3].candle_share), (1, 1.0));
        assert_eq!(w[3].start, Duration::from_secs(3));
    }

    #[test]
    fn empty_runs_summarize_to_nothing() {
        assert!(windows(&[], Duration::from_secs(1)).is_empty());
        assert_eq!(summarize(&[]).requests, 0);
    }
}
