//! Delivers [`Notification`]s to webhooks without ever holding up a reconcile.
//!
//! [`Notifier::send`] only puts the notification on the queue of its (rollout, webhook) pair and
//! returns; one task per pair delivers in order, so a receiver sees a rollout's messages in the
//! order they happened, and a slow or hanging receiver delays nobody but itself.
//! [`Notifier::notify`] sends each notification to the rollout's own webhooks and to the
//! operator-wide ones (`--notifications-config`, [`crate::notification_config`]) that want it;
//! a global webhook is a receiver of its own per rollout, delivered exactly like the rollout's
//! (its own queue and worker, keyed apart from the rollout's webhooks so equal names never share
//! one), its URL read from a Secret of the operator's namespace. Each attempt is
//! bounded by the webhook's `timeout`; timeouts, connection errors, 429 and 5xx are retried with
//! a backoff doubling from 1 s up to `attempts`; other answers are final. The outcome of each
//! notification goes to [`Report`] (the controller makes it an event on the rollout).
//!
//! At most once: a notification still queued when the operator stops is lost (the next leader
//! does not repeat transitions already in the status). A full queue (a receiver down for a long
//! time) drops the newest and reports it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use crate::crd::{SecretKeyRef, WebhookSpec};
use crate::notification::{body, wants, Notification};
use crate::notification_config::GlobalWebhooks;

/// Notifications waiting per (rollout, webhook) before new ones are dropped.
pub const QUEUE: usize = 64;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Reads a webhook's URL: (namespace, Secret key) -> URL, or why not (never the value).
pub type UrlSource =
    Arc<dyn Fn(String, SecretKeyRef) -> BoxFuture<'static, Result<String, String>> + Send + Sync>;
/// Told the outcome of every notification.
pub type Report = Arc<dyn Fn(Delivery) -> BoxFuture<'static, ()> + Send + Sync>;

/// Whose webhook a receiver is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One of the rollout's `spec.notifications.webhooks`; its Secret in the rollout's namespace.
    Rollout,
    /// An operator-wide webhook; its Secret in the operator's namespace.
    Global,
}

/// What became of one notification.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub notification: Notification,
    pub webhook: String,
    pub scope: Scope,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A 2xx answer, at this attempt.
    Delivered { status: u16, attempts: u32 },
    /// No 2xx after these attempts; the last error.
    Failed { error: String, attempts: u32 },
    /// Not queued: the receiver's queue was full.
    Dropped,
}

impl Delivery {
    /// One line for an event or a log: what, to whom, and what happened.
    pub fn describe(&self) -> String {
        let whose = match self.scope {
            Scope::Rollout => "webhook",
            Scope::Global => "global webhook",
        };
        let what = format!(
            "{:?} notification to {whose} {}",
            self.notification.kind, self.webhook
        );
        match &self.outcome {
            Outcome::Delivered { status, attempts } => {
                format!("{what} delivered (HTTP {status}, attempt {attempts})")
            }
            Outcome::Failed { error, attempts } => {
                format!("{what} failed after {attempts} attempt(s): {error}")
            }
            Outcome::Dropped => {
                format!("{what} dropped: {QUEUE} notifications already wait for this receiver")
            }
        }
    }
}

struct Job {
    notification: Notification,
    webhook: WebhookSpec,
    scope: Scope,
    /// Where the webhook's URL Secret is.
    secret_namespace: String,
}

/// (namespace, rollout, scope, webhook name): one queue, one worker, one order each. The scope
/// keeps a rollout's webhook and a global one of the same name apart.
type QueueKey = (String, String, Scope, String);

#[derive(Clone)]
pub struct Notifier {
    http: reqwest::Client,
    urls: UrlSource,
    report: Report,
    global: Arc<GlobalWebhooks>,
    queues: Arc<Mutex<HashMap<QueueKey, mpsc::Sender<Job>>>>,
}

impl Notifier {
    pub fn new(urls: UrlSource, report: Report) -> Self {
        Self {
            http: crate::http_client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("a plain HTTP client with a TLS provider"),
            urls,
            report,
            global: Arc::default(),
            queues: Arc::default(),
        }
    }

    /// Also tells `global`'s webhooks of every rollout's notifications (see [`Self::notify`]).
    pub fn with_global(mut self, global: GlobalWebhooks) -> Self {
        self.global = Arc::new(global);
        self
    }

    /// Queues each of `notes` (one rollout's, in their order) for each of the rollout's own
    /// `webhooks` and each global webhook that wants it; returns at once.
    pub fn notify(&self, webhooks: &[WebhookSpec], notes: Vec<Notification>) {
        for n in notes {
            for w in webhooks.iter().filter(|w| wants(w, n.kind)) {
                self.send(w, n.clone());
            }
            for w in self.global.webhooks.iter().filter(|w| wants(w, n.kind)) {
                self.queue(w, Scope::Global, &self.global.secret_namespace, n.clone());
            }
        }
    }

    /// Queues `n` for `webhook`, one of the rollout's own; returns at once.
    pub fn send(&self, webhook: &WebhookSpec, n: Notification) {
        let ns = n.namespace.clone();
        self.queue(webhook, Scope::Rollout, &ns, n);
    }

    fn queue(&self, webhook: &WebhookSpec, scope: Scope, secret_namespace: &str, n: Notification) {
        let key = (
            n.namespace.clone(),
            n.rollout.clone(),
            scope,
            webhook.name.clone(),
        );
        let job = Job {
            notification: n,
            webhook: webhook.clone(),
            scope,
            secret_namespace: secret_namespace.to_string(),
        };
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let tx = queues
            .entry(key)
            .or_insert_with(|| self.spawn_worker())
            .clone();
        drop(queues);
        if let Err(e) = tx.try_send(job) {
            let job = match e {
                mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
            };
            let report = self.report.clone();
            tokio::spawn(report(Delivery {
                notification: job.notification,
                webhook: job.webhook.name,
                scope: job.scope,
                outcome: Outcome::Dropped,
            }));
        }
    }

    /// Stops the workers of a deleted rollout (after what they hold is delivered).
    pub fn forget(&self, namespace: &str, rollout: &str) {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        queues.retain(|(ns, r, _, _), _| !(ns == namespace && r == rollout));
    }

    fn spawn_worker(&self) -> mpsc::Sender<Job> {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        let (http, urls, report) = (self.http.clone(), self.urls.clone(), self.report.clone());
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let outcome = deliver(&http, &urls, &job).await;
                report(Delivery {
                    notification: job.notification,
                    webhook: job.webhook.name,
                    scope: job.scope,
                    outcome,
                })
                .await;
            }
        });
        tx
    }
}

/// The retry loop is written out rather than a `tower::retry` policy: each of its decisions
/// (re-read the Secret, which status classes retry, errors told without the URL) would be custom
/// policy code anyway, and the loop is a dozen lines.
async fn deliver(http: &reqwest::Client, urls: &UrlSource, job: &Job) -> Outcome {
    let w = &job.webhook;
    let timeout = w.timeout.parse().unwrap_or(Duration::from_secs(5));
    let attempts = w.attempts.clamp(1, 10);
    let payload = body(&job.notification, w.format);
    let mut backoff = FIRST_BACKOFF;
    let mut last = String::new();
    for attempt in 1..=attempts {
        if attempt > 1 {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        // Read at every attempt: a Secret fixed between two attempts is used at once.
        let url = match urls(job.secret_namespace.clone(), w.url_secret_ref.clone()).await {
            Ok(u) => u,
            Err(e) => {
                last = e;
                continue;
            }
        };
        let sent = http.post(&url).timeout(timeout).json(&payload).send().await;
        match sent {
            Ok(resp) if resp.status().is_success() => {
                return Outcome::Delivered {
                    status: resp.status().as_u16(),
                    attempts: attempt,
                };
            }
            Ok(resp) => {
                let status = resp.status();
                last = format!("HTTP {}", status.as_u16());
                if !(status.is_server_error() || status.as_u16() == 429) {
                    return Outcome::Failed {
                        error: last,
                        attempts: attempt,
                    };
                }
            }
            // The error's text would carry the URL (and its token): say only what kind it was.
            Err(e) if e.is_timeout() => last = format!("no answer within {}", w.timeout),
            Err(e) if e.is_connect() => last = "connection failed".into(),
            Err(_) => last = "request failed".into(),
        }
    }
    Outcome::Failed {
        error: last,
        attempts,
    }
}

/// The URL from a Secret of `namespace` (the rollout's, or the operator's for a global webhook),
/// checked to be http(s).
pub async fn url_from_secret(
    client: kube::Client,
    namespace: String,
    key: SecretKeyRef,
) -> Result<String, String> {
    let r = crate::object_keys::KeyRef {
        kind: "Secret",
        namespace: &namespace,
        name: &key.name,
        key: &key.key,
        field: "notifications.webhooks[].urlSecretRef",
    };
    let value = crate::object_keys::read(&client, r)
        .await
        .map_err(|e| e.to_string())?;
    parse_url(&value)
        .map_err(|why| format!("Secret {namespace}/{} key {}: {why}", key.name, key.key))
}

/// A webhook URL from a Secret's bytes (trailing newline allowed, as `kubectl create secret
/// --from-file` leaves it). The error never repeats the value.
pub fn parse_url(raw: &[u8]) -> Result<String, &'static str> {
    let s = std::str::from_utf8(raw).map_err(|_| "not UTF-8")?.trim();
    let u = reqwest::Url::parse(s).map_err(|_| "not a URL")?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err("not an http or https URL");
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{NotificationKind, WebhookFormat};
    use axum::{extract::State, http::StatusCode, routing::post, Json, Router};
    use chrono::Utc;
    use serde_json::Value;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::mpsc::UnboundedReceiver;

    /// A receiver on a loopback port: answers each POST with the next of `answers` (the last one
    /// repeats; 0 = hang), records the bodies.
    async fn receiver(answers: Vec<u16>) -> (String, Arc<Mutex<Vec<Value>>>) {
        #[derive(Clone)]
        struct S {
            got: Arc<Mutex<Vec<Value>>>,
            answers: Arc<Vec<u16>>,
            n: Arc<AtomicUsize>,
        }
        async fn hook(State(s): State<S>, Json(v): Json<Value>) -> StatusCode {
            s.got.lock().unwrap().push(v);
            let i = s.n.fetch_add(1, Ordering::SeqCst);
            let code = *s.answers.get(i).or(s.answers.last()).unwrap();
            if code == 0 {
                std::future::pending::<()>().await;
            }
            StatusCode::from_u16(code).unwrap()
        }
        let got = Arc::new(Mutex::new(Vec::new()));
        let s = S {
            got: got.clone(),
            answers: Arc::new(answers),
            n: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/hook", post(hook)).with_state(s);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}/hook"), got)
    }

    fn notifier(urls: HashMap<&'static str, String>) -> (Notifier, UnboundedReceiver<Delivery>) {
        let urls = Arc::new(urls);
        let (tx, rx) = mpsc::unbounded_channel();
        let n = Notifier::new(
            Arc::new(move |_ns, key: SecretKeyRef| {
                let u = urls.get(key.name.as_str()).cloned();
                Box::pin(async move { u.ok_or_else(|| format!("Secret {} not found", key.name)) })
            }),
            Arc::new(move |d| {
                let tx = tx.clone();
                Box::pin(async move {
                    let _ = tx.send(d);
                })
            }),
        );
        (n, rx)
    }

    /// Like [`notifier`] with global webhooks; Secrets by (namespace, name), so a URL read from
    /// the wrong namespace is "not found". Each delivery comes with its scope's name.
    fn notifier_with_global(
        urls: HashMap<(&'static str, &'static str), String>,
        global: GlobalWebhooks,
    ) -> (Notifier, UnboundedReceiver<Delivery>) {
        let urls = Arc::new(urls);
        let (tx, rx) = mpsc::unbounded_channel();
        let n = Notifier::new(
            Arc::new(move |ns: String, key: SecretKeyRef| {
                let u = urls
                    .iter()
                    .find(|((n, s), _)| *n == ns && *s == key.name)
                    .map(|(_, u)| u.clone());
                Box::pin(
                    async move { u.ok_or_else(|| format!("Secret {ns}/{} not found", key.name)) },
                )
            }),
            Arc::new(move |d| {
                let tx = tx.clone();
                Box::pin(async move {
                    let _ = tx.send(d);
                })
            }),
        )
        .with_global(global);
        (n, rx)
    }

    fn hook(secret: &str, timeout: &str, attempts: u32) -> WebhookSpec {
        WebhookSpec {
            name: secret.into(),
            url_secret_ref: SecretKeyRef {
                name: secret.into(),
                key: "url".into(),
            },
            format: WebhookFormat::Generic,
            events: vec![],
            timeout: timeout.into(),
            attempts,
        }
    }

    fn note(kind: NotificationKind, message: &str) -> Notification {
        Notification {
            kind,
            warning: false,
            namespace: "prod".into(),
            rollout: "embed".into(),
            uid: None,
            message: message.into(),
            time: Utc::now(),
            phase: "Progressing".into(),
            step: "1/4".into(),
            weight: 1,
            candidate_image: "candle:v2".into(),
            baseline: "mlx".into(),
            by: None,
            manager: None,
        }
    }

    #[tokio::test]
    async fn messages_arrive_in_order_once_each() {
        let (url, got) = receiver(vec![200]).await;
        let (n, mut rx) = notifier(HashMap::from([("ok", url)]));
        let w = hook("ok", "5s", 4);
        for i in 0..5 {
            n.send(
                &w,
                note(NotificationKind::StepStarted, &format!("step {i}")),
            );
        }
        for _ in 0..5 {
            let d = rx.recv().await.unwrap();
            assert_eq!(
                d.outcome,
                Outcome::Delivered {
                    status: 200,
                    attempts: 1
                }
            );
        }
        let got = got.lock().unwrap();
        let messages: Vec<_> = got.iter().map(|v| v["message"].as_str().unwrap()).collect();
        assert_eq!(messages, ["step 0", "step 1", "step 2", "step 3", "step 4"]);
    }

    #[tokio::test]
    async fn server_errors_are_retried_client_errors_are_final() {
        let (url, got) = receiver(vec![503, 500, 200]).await;
        let (bad, bad_got) = receiver(vec![400]).await;
        let (n, mut rx) = notifier(HashMap::from([("flaky", url), ("bad", bad)]));
        n.send(
            &hook("flaky", "5s", 4),
            note(NotificationKind::Promoted, "p"),
        );
        let d = rx.recv().await.unwrap();
        assert_eq!(
            d.outcome,
            Outcome::Delivered {
                status: 200,
                attempts: 3
            },
            "{}",
            d.describe()
        );
        assert_eq!(got.lock().unwrap().len(), 3);
        n.send(&hook("bad", "5s", 4), note(NotificationKind::Promoted, "p"));
        let d = rx.recv().await.unwrap();
        assert_eq!(
            d.outcome,
            Outcome::Failed {
                error: "HTTP 400".into(),
                attempts: 1
            }
        );
        assert_eq!(bad_got.lock().unwrap().len(), 1, "a 400 is not retried");
    }

    #[tokio::test]
    async fn a_hanging_receiver_delays_nobody_else_and_times_out() {
        let (hang, _) = receiver(vec![0]).await;
        let (ok, ok_got) = receiver(vec![200]).await;
        let (n, mut rx) = notifier(HashMap::from([("hang", hang), ("ok", ok)]));
        let t = std::time::Instant::now();
        n.send(
            &hook("hang", "300ms", 2),
            note(NotificationKind::RolledBack, "r"),
        );
        n.send(
            &hook("ok", "5s", 1),
            note(NotificationKind::RolledBack, "r"),
        );
        assert!(
            t.elapsed() < Duration::from_millis(50),
            "send does not wait for a receiver: {:?}",
            t.elapsed()
        );
        let first = rx.recv().await.unwrap();
        assert_eq!(
            first.webhook, "ok",
            "the healthy receiver is not queued behind the hanging one"
        );
        assert_eq!(ok_got.lock().unwrap().len(), 1);
        let second = rx.recv().await.unwrap();
        assert_eq!(second.webhook, "hang");
        assert_eq!(
            second.outcome,
            Outcome::Failed {
                error: "no answer within 300ms".into(),
                attempts: 2
            }
        );
    }

    #[tokio::test]
    async fn a_missing_secret_is_named_and_a_full_queue_drops_and_says_so() {
        let (n, mut rx) = notifier(HashMap::new());
        n.send(&hook("nope", "1s", 1), note(NotificationKind::Failed, "f"));
        let d = rx.recv().await.unwrap();
        assert_eq!(
            d.outcome,
            Outcome::Failed {
                error: "Secret nope not found".into(),
                attempts: 1
            }
        );

        let (hang, _) = receiver(vec![0]).await;
        let (n, mut rx) = notifier(HashMap::from([("hang", hang)]));
        let w = hook("hang", "60s", 1);
        // The worker cannot start before this test yields (one thread): QUEUE queued, 3 dropped.
        for i in 0..QUEUE + 3 {
            n.send(&w, note(NotificationKind::StepStarted, &i.to_string()));
        }
        let mut dropped = 0;
        while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
            assert_eq!(d.outcome, Outcome::Dropped, "{}", d.describe());
            dropped += 1;
        }
        assert_eq!(dropped, 3);
    }

    fn messages(got: &Mutex<Vec<Value>>) -> Vec<String> {
        got.lock()
            .unwrap()
            .iter()
            .map(|v| v["message"].as_str().unwrap().to_string())
            .collect()
    }

    /// No more deliveries come within a while.
    async fn nothing_more(rx: &mut UnboundedReceiver<Delivery>) {
        let more = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
        assert!(
            more.is_err(),
            "unexpected: {:?}",
            more.map(|d| d.map(|d| d.describe()))
        );
    }

    #[tokio::test]
    async fn notify_a_rollout_without_webhooks_of_its_own_reaches_the_global_receiver() {
        let (url, got) = receiver(vec![200]).await;
        // The Secret is in the operator's namespace; the rollout ("prod/embed") has none.
        let (n, mut rx) = notifier_with_global(
            HashMap::from([(("rollout-system", "platform-hooks"), url)]),
            GlobalWebhooks {
                secret_namespace: "rollout-system".into(),
                webhooks: vec![WebhookSpec {
                    name: "platform".into(),
                    ..hook("platform-hooks", "5s", 4)
                }],
            },
        );
        let mut notes: Vec<_> = (0..4)
            .map(|i| note(NotificationKind::StepStarted, &format!("step {i}")))
            .collect();
        // Warnings are opt-in for a global webhook too.
        notes.insert(2, note(NotificationKind::Warning, "traffic blocked"));
        notes.push(note(NotificationKind::RolledBack, "rolled back"));
        let t = std::time::Instant::now();
        n.notify(&[], notes);
        assert!(
            t.elapsed() < Duration::from_millis(50),
            "notify does not wait"
        );
        for _ in 0..5 {
            let d = rx.recv().await.unwrap();
            assert_eq!(d.scope, Scope::Global);
            assert_eq!(d.webhook, "platform");
            assert_eq!(
                d.outcome,
                Outcome::Delivered {
                    status: 200,
                    attempts: 1
                },
                "{}",
                d.describe()
            );
            assert!(
                d.describe()
                    .contains(" notification to global webhook platform delivered"),
                "{}",
                d.describe()
            );
        }
        nothing_more(&mut rx).await;
        assert_eq!(
            messages(&got),
            ["step 0", "step 1", "step 2", "step 3", "rolled back"],
            "in order, once each"
        );
    }

    #[tokio::test]
    async fn notify_a_rollout_with_its_own_webhook_reaches_both_even_with_one_name() {
        let (own_url, own_got) = receiver(vec![200]).await;
        let (global_url, global_got) = receiver(vec![200]).await;
        let (n, mut rx) = notifier_with_global(
            HashMap::from([
                (("prod", "team-hooks"), own_url),
                (("rollout-system", "platform-hooks"), global_url),
            ]),
            GlobalWebhooks {
                secret_namespace: "rollout-system".into(),
                webhooks: vec![WebhookSpec {
                    name: "team".into(),
                    events: vec![NotificationKind::StepStarted, NotificationKind::RolledBack],
                    ..hook("platform-hooks", "5s", 4)
                }],
            },
        );
        let own = WebhookSpec {
            name: "team".into(),
            ..hook("team-hooks", "5s", 4)
        };
        n.notify(
            std::slice::from_ref(&own),
            vec![
                note(NotificationKind::StepStarted, "step 1"),
                note(NotificationKind::Command, "pause"),
                note(NotificationKind::StepStarted, "step 2"),
                note(NotificationKind::RolledBack, "rolled back"),
            ],
        );
        let mut described = Vec::new();
        for _ in 0..7 {
            let d = rx.recv().await.unwrap();
            assert!(
                matches!(d.outcome, Outcome::Delivered { .. }),
                "{}",
                d.describe()
            );
            described.push((d.scope, d.describe()));
        }
        nothing_more(&mut rx).await;
        assert_eq!(
            messages(&own_got),
            ["step 1", "pause", "step 2", "rolled back"]
        );
        assert_eq!(
            messages(&global_got),
            ["step 1", "step 2", "rolled back"],
            "the global webhook's own events filter"
        );
        let count = |scope| described.iter().filter(|(s, _)| *s == scope).count();
        assert_eq!((count(Scope::Rollout), count(Scope::Global)), (4, 3));
        assert!(described.iter().any(|(s, d)| *s == Scope::Rollout
            && d.starts_with("Command notification to webhook team delivered")));
        assert!(described
            .iter()
            .all(|(s, d)| (*s == Scope::Global) == d.contains("to global webhook team")));
    }

    #[tokio::test]
    async fn a_hanging_rollout_webhook_does_not_hold_up_the_global_one_of_the_same_name() {
        let (hang, _) = receiver(vec![0]).await;
        let (ok, ok_got) = receiver(vec![200]).await;
        let (n, mut rx) = notifier_with_global(
            HashMap::from([(("prod", "hang"), hang), (("ops", "ok"), ok)]),
            GlobalWebhooks {
                secret_namespace: "ops".into(),
                webhooks: vec![WebhookSpec {
                    name: "same".into(),
                    ..hook("ok", "5s", 1)
                }],
            },
        );
        let own = WebhookSpec {
            name: "same".into(),
            ..hook("hang", "60s", 1)
        };
        n.notify(
            std::slice::from_ref(&own),
            vec![
                note(NotificationKind::StepStarted, "a"),
                note(NotificationKind::Promoted, "b"),
            ],
        );
        for _ in 0..2 {
            let d = rx.recv().await.unwrap();
            assert_eq!(d.scope, Scope::Global, "{}", d.describe());
        }
        assert_eq!(
            messages(&ok_got),
            ["a", "b"],
            "not queued behind the rollout's hanging webhook of the same name"
        );
    }

    #[test]
    fn urls_from_secrets_are_checked_without_repeating_them() {
        assert_eq!(
            parse_url(b"https://hooks.slack.com/services/T/B/x\n").unwrap(),
            "https://hooks.slack.com/services/T/B/x"
        );
        assert_eq!(parse_url(b"ftp://x/y"), Err("not an http or https URL"));
        assert_eq!(parse_url(b"secret-token"), Err("not a URL"));
        assert_eq!(parse_url(&[0xff, 0xfe]), Err("not UTF-8"));
    }
}
