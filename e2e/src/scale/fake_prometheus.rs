//! A fake Prometheus for the scale benchmark (TEST HARNESS, never shipped): `GET /api/v1/query`
//! answers the operator's default analysis queries (operator/src/prometheus.rs) with plausible
//! instant vectors of a healthy candidate and baseline, so that 500 rollouts' analyses reach
//! verdicts without 1000 embedders behind a real Prometheus (they do not fit two cores).
//!
//! Every service serves [`RATE`] requests per second, none fails, the breaker stays closed and
//! the latency buckets are the same for both sides: each analysis is a Pass once its step has
//! gathered enough requests. The counts grow with the range the query asks about (`[123s]`), as
//! `increase(...)` over a steady rate would. Anything else is an empty vector (no data).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{Query, State},
    routing::get,
    Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// Requests per second every service is said to serve.
pub const RATE: f64 = 40.0;
/// The P95 every service is said to have, in seconds.
pub const P95_SECONDS: f64 = 0.045;
/// Cumulative share of requests at or below each bucket bound (shared by both sides).
const BUCKETS: [(&str, f64); 8] = [
    ("0.01", 0.05),
    ("0.025", 0.55),
    ("0.05", 0.96),
    ("0.1", 0.995),
    ("0.25", 1.0),
    ("0.5", 1.0),
    ("1", 1.0),
    ("+Inf", 1.0),
];

#[derive(Default)]
pub struct Stats {
    pub queries: AtomicU64,
}

/// The running fake; it stops when the task is aborted.
pub struct FakePrometheus {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

impl FakePrometheus {
    pub async fn start() -> anyhow::Result<Self> {
        let stats = Arc::new(Stats::default());
        let app = Router::new()
            .route("/api/v1/query", get(query).post(query))
            .route("/-/ready", get(|| async { "ready" }))
            .with_state(stats.clone());
        let (addr, task) = super::serve_on_loopback(app).await?;
        Ok(Self { addr, stats, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakePrometheus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Deserialize)]
struct Params {
    query: String,
}

async fn query(State(stats): State<Arc<Stats>>, Query(p): Query<Params>) -> Json<Value> {
    stats.queries.fetch_add(1, Ordering::Relaxed);
    Json(answer(&p.query, now()))
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

fn vector(series: Vec<(Value, f64)>, t: f64) -> Value {
    let result: Vec<Value> = series
        .into_iter()
        .map(|(metric, v)| json!({"metric": metric, "value": [t, v.to_string()]}))
        .collect();
    json!({"status": "success", "data": {"resultType": "vector", "result": result}})
}

/// The answer to one PromQL query, by what it asks for.
pub fn answer(promql: &str, t: f64) -> Value {
    let range = range_seconds(promql).unwrap_or(60.0);
    let one = |v: f64| vector(vec![(json!({}), v)], t);
    if promql.contains("circuit_breaker_state") {
        one(0.0)
    } else if promql.contains("histogram_quantile") {
        one(P95_SECONDS)
    } else if promql.contains("_bucket") {
        let series = BUCKETS
            .iter()
            .map(|(le, share)| (json!({"le": le}), (RATE * range * share).round()))
            .collect();
        vector(series, t)
    } else if promql.contains("embedding_errors_total") {
        // The error rate (errors / requests) and the error count: none failed.
        one(0.0)
    } else if promql.contains("embedding_requests_total") {
        one((RATE * range).round())
    } else {
        vector(Vec::new(), t)
    }
}

/// The first `[<n><unit>]` range of the query, in seconds.
fn range_seconds(promql: &str) -> Option<f64> {
    let start = promql.find('[')? + 1;
    let end = start + promql[start..].find(']')?;
    let text = &promql[start..end];
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: f64 = digits.parse().ok()?;
    Some(match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_queries_get_plausible_answers() {
        let v = |q: &str| answer(q, 1.0)["data"]["result"].clone();
        let p95 = v(
            r#"histogram_quantile(0.95, sum by (le) (rate(embedding_request_duration_seconds_bucket{service="c"}[30s])))"#,
        );
        assert_eq!(p95[0]["value"][1], "0.045");
        let buckets = v(
            r#"sum by (le) (increase(embedding_request_duration_seconds_bucket{service="c"}[120s]))"#,
        );
        assert_eq!(buckets.as_array().unwrap().len(), BUCKETS.len());
        assert_eq!(buckets[7]["metric"]["le"], "+Inf");
        assert_eq!(buckets[7]["value"][1], (RATE * 120.0).to_string());
        let requests = v(r#"sum(increase(embedding_requests_total{service="c"}[2m]))"#);
        assert_eq!(requests[0]["value"][1], (RATE * 120.0).to_string());
        let errors = v(r#"sum(increase(embedding_errors_total{service="c"}[60s])) or vector(0)"#);
        assert_eq!(errors[0]["value"][1], "0");
        let breaker =
            v(r#"max(max_over_time(circuit_breaker_state{service="embedding",backend="c"}[30s]))"#);
        assert_eq!(breaker[0]["value"][1], "0");
        assert!(v("up").as_array().unwrap().is_empty());
    }
}
