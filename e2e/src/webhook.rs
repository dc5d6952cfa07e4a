//! A webhook receiver for the notification scenarios, on the node's bridge address so the
//! operator's pods reach it (TEST HARNESS, never shipped):
//! records every body it is sent, in arrival order, and answers 200.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use axum::{extract::State, routing::post, Json, Router};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// The Secret the scenarios' rollouts name for their webhook URL; the chart's RBAC is rendered
/// with it in `rbac.notificationSecrets` (see [`crate::scenario::chart_rbac_yaml`]).
pub const SECRET: &str = "rollout-webhooks";

pub struct Receiver {
    pub url: String,
    received: Arc<Mutex<Vec<Value>>>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// Listens on `ip` (the node's bridge address: the operator runs in pods), any free port.
    pub async fn start(ip: &str) -> anyhow::Result<Self> {
        let received = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route(
                "/hook",
                post(
                    |State(r): State<Arc<Mutex<Vec<Value>>>>, Json(body): Json<Value>| async move {
                        r.lock().unwrap().push(body);
                    },
                ),
            )
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .context("binding the webhook receiver")?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            url,
            received,
            task,
        })
    }

    /// Creates the Secret holding this receiver's URL in `ns`.
    pub async fn create_secret(&self, client: &kube::Client, ns: &str) -> anyhow::Result<()> {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": SECRET},
            "stringData": {"url": format!("{}\n", self.url)}
        }))?;
        Api::<Secret>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &secret)
            .await
            .context("creating the webhook Secret")?;
        Ok(())
    }

    /// A rollout's `spec.notifications` sending every default kind to this receiver.
    pub fn spec() -> Value {
        json!({"webhooks": [{"name": "e2e", "urlSecretRef": {"name": SECRET, "key": "url"},
                             "timeout": "2s", "attempts": 3}]})
    }

    /// What arrived so far.
    pub fn received(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until a body of `kind` has arrived (delivery follows the status write, so a test
    /// that has seen the phase may be a moment ahead of it) and returns everything received.
    pub async fn wait_for(&self, kind: &str, timeout: Duration) -> anyhow::Result<Vec<Value>> {
        let start = Instant::now();
        loop {
            let got = self.received();
            if got.iter().any(|b| b["kind"] == kind) {
                return Ok(got);
            }
            if start.elapsed() > timeout {
                bail!("no {kind} notification within {timeout:?}; received: {got:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
