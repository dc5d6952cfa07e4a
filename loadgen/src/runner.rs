//! The imperative shell: sends the requests over HTTP and feeds the outcomes to a [`Recorder`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout_at, Instant};

use crate::api::RequestTemplate;
use crate::schedule::{OpenLoopPlan, PlanError};
use crate::stats::{ErrorKind, Recorder, Report, RunInfo};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("the number of connections/workers must be at least 1")]
    NoConnections,
    #[error("could not build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Where and what to send.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL of the server, e.g. `http://127.0.0.1:8080`; the API path is appended.
    pub base_url: String,
    pub template: RequestTemplate,
    /// Per request. In the open loop it counts from the scheduled time, so time spent waiting for a
    /// free connection counts too.
    pub timeout: Duration,
}

/// Closed loop: `concurrency` workers send back to back until `duration` or `max_requests`.
#[derive(Debug, Clone)]
pub struct ClosedLoop {
    pub concurrency: usize,
    pub duration: Duration,
    pub max_requests: Option<u64>,
}

struct Sender {
    client: reqwest::Client,
    url: reqwest::Url,
    template: RequestTemplate,
}

impl Sender {
    fn new(target: &Target, connections: usize) -> Result<Self, LoadError> {
        let raw = format!(
            "{}{}",
            target.base_url.trim_end_matches('/'),
            target.template.api.path()
        );
        let url = reqwest::Url::parse(&raw).map_err(|e| LoadError::InvalidUrl {
            url: target.base_url.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(LoadError::InvalidUrl {
                url: target.base_url.clone(),
                reason: "the scheme must be http or https".into(),
            });
        }
        let client = reqwest::Client::builder()
            // Load goes to the given server only, never through a proxy from the environment.
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(connections)
            .timeout(target.timeout)
            .build()
            .map_err(LoadError::Client)?;
        Ok(Sender {
            client,
            url,
            template: target.template.clone(),
        })
    }

    async fn send(&self) -> Result<(), ErrorKind> {
        let response = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(self.template.body.clone())
            .send()
            .await
            .map_err(|e| classify(&e))?;
        let status = response.status();
        // Read the body even on errors so the connection can be reused.
        let body = response.bytes().await.map_err(|e| classify(&e))?;
        if !status.is_success() {
            return Err(ErrorKind::Status(status.as_u16()));
        }
        self.template
            .check_response(&body)
            .map_err(|_| ErrorKind::InvalidResponse)
    }
}

fn classify(e: &reqwest::Error) -> ErrorKind {
    if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_connect() {
        ErrorKind::Connect
    } else {
        ErrorKind::Transport
    }
}

/// Constant arrival rate. Request `i` is due at `start + plan.offset(i)` whatever happened to the
/// earlier ones; at most `connections` are in flight and the rest wait their turn, their latency
/// still counted from when they were due.
pub async fn run_open_loop(
    target: &Target,
    plan: &OpenLoopPlan,
    connections: usize,
) -> Result<Report, LoadError> {
    if connections == 0 {
        return Err(LoadError::NoConnections);
    }
    let sender = Arc::new(Sender::new(target, connections)?);
    // Tokio's semaphore is fair: requests get a connection in the order they were due.
    let slots = Arc::new(Semaphore::new(connections));
    let recorder = Arc::new(Mutex::new(Recorder::new()));
    let timeout = target.timeout;
    let mut tasks = JoinSet::new();

    let start = Instant::now();
    for i in 0..plan.total_requests() {
        let due = start + plan.offset(i);
        sleep_until(due).await;
        let (sender, slots, recorder) = (sender.clone(), slots.clone(), recorder.clone());
        tasks.spawn(async move {
            let deadline = due + timeout;
            let outcome = match timeout_at(deadline, slots.acquire_owned()).await {
                Err(_) => Err(ErrorKind::NotSent),
                Ok(slot) => {
                    let _slot = slot.expect("the semaphore is never closed");
                    timeout_at(deadline, sender.send())
                        .await
                        .unwrap_or(Err(ErrorKind::Timeout))
                }
            };
            let latency = due.elapsed();
            let mut recorder = recorder.lock().expect("recorder lock");
            match outcome {
                Ok(()) => recorder.record_ok(latency),
                Err(kind) => recorder.record_error(kind),
            }
        });
        // Reap finished tasks as we go so the set stays as small as the requests in flight.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    // A 3 s schedule whose last request is due at 2.99 s and answered at 2.995 s ran at the target
    // rate, not a bit above it: count at least the scheduled window.
    let elapsed = start.elapsed().max(plan.window());

    let recorder = recorder.lock().expect("recorder lock");
    Ok(recorder.report(
        RunInfo {
            mode: "open",
            api: target.template.api.name(),
            url: sender.url.to_string(),
            target_rate: Some(plan.rate()),
            connections,
            texts_per_request: target.template.expected_embeddings,
        },
        elapsed,
    ))
}

/// Maximum throughput: each worker sends its next request as soon as the previous one is answered.
pub async fn run_closed_loop(target: &Target, spec: &ClosedLoop) -> Result<Report, LoadError> {
    if spec.concurrency == 0 {
        return Err(LoadError::NoConnections);
    }
    let sender = Arc::new(Sender::new(target, spec.concurrency)?);
    let started = Arc::new(AtomicU64::new(0));
    let max_requests = spec.max_requests.unwrap_or(u64::MAX);
    let start = Instant::now();
    let deadline = start + spec.duration;

    let mut workers = JoinSet::new();
    for _ in 0..spec.concurrency {
        let (sender, started) = (sender.clone(), started.clone());
        workers.spawn(async move {
            let mut recorder = Recorder::new();
            while Instant::now() < deadline
                && started.fetch_add(1, Ordering::Relaxed) < max_requests
            {
                let sent_at = Instant::now();
                match sender.send().await {
                    Ok(()) => recorder.record_ok(sent_at.elapsed()),
                    Err(kind) => recorder.record_error(kind),
                }
            }
            recorder
        });
    }
    let mut total = Recorder::new();
    while let Some(done) = workers.join_next().await {
        total.merge(&done.expect("a load worker panicked"));
    }
    let elapsed = start.elapsed();

    Ok(total.report(
        RunInfo {
            mode: "closed",
            api: target.template.api.name(),
            url: sender.url.to_string(),
            target_rate: None,
            connections: spec.concurrency,
            texts_per_request: target.template.expected_embeddings,
        },
        elapsed,
    ))
}

/// Polls `GET {base_url}{path}` until it answers 2xx or `within` has passed.
pub async fn wait_ready(base_url: &str, path: &str, within: Duration) -> bool {
    let Ok(client) = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
    else {
        return false;
    };
    let url = format!("{}{}", base_url.trim_end_matches('/'), path);
    let deadline = Instant::now() + within;
    loop {
        if let Ok(r) = client.get(&url).send().await {
            if r.status().is_success() {
                return true;
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
