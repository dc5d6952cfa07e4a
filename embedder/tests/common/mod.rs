//! A real server on 127.0.0.1:0 serving the tiny random BERT from `model::testutil`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use candle_embedder::config::Config;
use candle_embedder::model::testutil::write_tiny_bert;
use candle_embedder::registry::ModelRegistry;
use candle_embedder::server::{self, Loader};
use candle_embedder::state::AppState;
use clap::Parser;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const TINY: &str = "tiny-bert";

pub struct TestServer {
    pub base: String,
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    pub handle: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

pub fn config(args: &[&str]) -> Config {
    let mut all = vec!["candle-embedder", "--service-name", "test-svc"];
    all.extend_from_slice(args);
    Config::parse_from(all)
}

/// A tiny model directory and a loader serving it as `tiny-bert`.
pub fn tiny_loader() -> (tempfile::TempDir, Loader) {
    let dir = tempfile::tempdir().expect("tempdir");
    let model_dir = write_tiny_bert(&dir.path().join("tiny")).expect("tiny bert");
    let loader: Loader = Box::new(move || ModelRegistry::single(TINY, &model_dir));
    (dir, loader)
}

/// Starts a server with the tiny model and waits until it is ready.
pub async fn start(args: &[&str]) -> TestServer {
    let (dir, loader) = tiny_loader();
    let s = start_with(config(args), loader, dir).await;
    s.wait_ready().await;
    s
}

/// Starts a server without waiting for readiness.
pub async fn start_with(cfg: Config, loader: Loader, dir: tempfile::TempDir) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AppState::new(cfg).unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(server::run_with_state(
        Arc::clone(&state),
        listener,
        loader,
        async move {
            let _ = rx.await;
        },
    ));
    TestServer {
        base: format!("http://{addr}"),
        addr,
        state,
        client: reqwest::Client::new(),
        shutdown: Some(tx),
        handle: Some(handle),
        _dir: dir,
    }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn wait_ready(&self) {
        for _ in 0..600 {
            if let Ok(r) = self.client.get(self.url("/health/ready")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server not ready after 30 s");
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("non-JSON body ({e}) with status {status}: {text}"));
        (status, json)
    }

    pub async fn embed(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.post("/api/v1/embed", body).await
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Sends the shutdown signal and waits for the server to stop.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.take().unwrap().await.unwrap()
    }

    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The value of one sample line of the Prometheus text, e.g. `name{a="b"}`.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

pub fn embeddings(body: &serde_json::Value) -> Vec<Vec<f32>> {
    serde_json::from_value(body["embeddings"].clone()).expect("embeddings array")
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
