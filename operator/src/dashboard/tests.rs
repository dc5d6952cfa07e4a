//! The dashboard's router with tower's `oneshot`: fixture rollouts in a controller cache (a
//! reflector `Writer`), or listed from a mock API server, which also answers the Events list and
//! records every request it gets.

use std::sync::{Arc, Mutex};

use axum::body::Body as AxumBody;
use http::{Request, Response, StatusCode};
use kube::{
    client::Body,
    runtime::{reflector, watcher},
    Client,
};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;
use crate::crd::EmbeddingRollout;

/// A mock API server: `(path, body)` answers, status 200 unless the body is a `Status` object
/// (then its `code`); every request is recorded as `METHOD path?decoded-query`.
#[derive(Clone, Default)]
struct MockApi {
    answers: Arc<Mutex<Vec<(String, Value)>>>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl MockApi {
    fn answer(self, path: &str, body: Value) -> Self {
        self.answers.lock().unwrap().push((path.to_string(), body));
        self
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    fn client(&self) -> Client {
        let me = self.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let me = me.clone();
            async move {
                let query = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("&");
                let path = req.uri().path().to_string();
                me.seen
                    .lock()
                    .unwrap()
                    .push(format!("{} {path}?{query}", req.method()));
                let body = me
                    .answers
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map(|(_, b)| b.clone())
                    .unwrap_or_else(|| status(500, &format!("mock: nothing at {path}")));
                let code = if body["kind"] == "Status" {
                    body["code"].as_u64().unwrap() as u16
                } else {
                    200
                };
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&body).unwrap()))
                        .unwrap(),
                )
            }
        });
        Client::new(service, "default")
    }
}

fn status(code: u16, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
           "message": message, "reason": if code == 403 { "Forbidden" } else { "InternalError" }})
}

fn analysis(time: &str, weight: u8, verdict: &str, p95_fraction: f64) -> Value {
    json!({
        "time": time, "step": 1, "weight": weight, "candidateP95Ms": 41.0, "baselineP95Ms": 38.5,
        "errorRate": 0.001, "breakerState": "Closed", "stepRequests": 900, "verdict": verdict,
        "reasons": [],
        "gates": [
            {"gate": "maxP95Ms", "verdict": verdict, "evidence": "P(>35 ms) measured",
             "value": p95_fraction, "low": p95_fraction / 2.0, "high": p95_fraction * 1.5,
             "threshold": 0.05, "samples": 900},
            {"gate": "maxErrorRate", "verdict": "Pass", "evidence": "1 of 900 failed",
             "value": 0.001, "threshold": 0.005, "samples": 900}
        ]
    })
}

fn rollout(ns: &str, name: &str, status: Option<Value>) -> EmbeddingRollout {
    let mut v = json!({
        "apiVersion": "rollout.akidb.io/v1alpha1", "kind": "EmbeddingRollout",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"),
                     "creationTimestamp": "2025-03-01T09:00:00Z"},
        "spec": {
            "baseline": {"deployment": "mlx", "service": "mlx"},
            "candidate": {"image": "ghcr.io/akidb/candle-embedder:1.2.0"},
            "ingress": {"name": "embed"},
            "steps": [{"weight": 10, "duration": "10m"}, {"weight": 25, "duration": "10m"},
                      {"weight": 50, "duration": "10m"}, {"weight": 100, "duration": "10m"}]
        }
    });
    if let Some(s) = status {
        v["status"] = s;
    }
    serde_json::from_value(v).unwrap()
}

fn fixtures() -> Vec<EmbeddingRollout> {
    vec![
        rollout(
            "production",
            "embed",
            Some(json!({
                "phase": "Progressing", "currentStep": 1, "step": "2/4", "currentWeight": 25,
                "phaseStartedAt": "2025-03-01T10:00:00Z",
                "stepSummaries": [
                    {"step": 0, "weight": 10, "startedAt": "2025-03-01T10:00:00Z",
                     "endedAt": "2025-03-01T10:10:00Z", "outcome": "Advanced", "analyses": 2, "passed": 2},
                    {"step": 1, "weight": 25, "startedAt": "2025-03-01T10:10:00Z", "analyses": 2, "passed": 1, "failed": 1}
                ],
                "history": [
                    analysis("2025-03-01T10:11:00Z", 25, "Pass", 0.01),
                    analysis("2025-03-01T10:12:00Z", 25, "Fail", 0.09)
                ],
                "lastAnalysis": analysis("2025-03-01T10:12:00Z", 25, "Fail", 0.09),
                "message": "step 2/4 at 25 %"
            })),
        ),
        rollout("staging", "new", None),
        rollout(
            "production",
            "after",
            Some(json!({"phase": "Promoted", "currentStep": 3, "currentWeight": 0})),
        ),
    ]
}

fn events_list() -> Value {
    json!({
        "apiVersion": "events.k8s.io/v1", "kind": "EventList", "metadata": {},
        "items": [
            {"metadata": {"name": "e1", "namespace": "production"}, "eventTime": "2025-03-01T10:10:00.000000Z",
             "reason": "StepStarted", "note": "step 2/4: weight 25 %", "type": "Normal",
             "reportingController": "embedding-rollout-operator", "reportingInstance": "op-0", "action": "Reconcile"},
            {"metadata": {"name": "e2", "namespace": "production"}, "eventTime": "2025-03-01T10:12:00.000000Z",
             "reason": "AnalysisFailed", "note": "maxP95Ms failed", "type": "Warning",
             "reportingController": "embedding-rollout-operator", "reportingInstance": "op-0", "action": "Reconcile"}
        ]
    })
}

const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/production/events";

/// A cache holding `rollouts`, as the controller publishes it.
fn cache_of(rollouts: Vec<EmbeddingRollout>) -> RolloutCache {
    let (store, mut writer) = reflector::store::<EmbeddingRollout>();
    for r in rollouts {
        writer.apply_watcher_event(&watcher::Event::Apply(r));
    }
    let cache = RolloutCache::default();
    cache.publish(store);
    cache
}

struct Fixture {
    app: Router,
    api: MockApi,
    _dir: Option<tempdir::Dir>,
}

/// A tiny temporary directory (removed on drop) for token files.
mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "dashboard-test-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn fixture(cache: RolloutCache, namespace: Option<&str>, token: Option<&str>) -> Fixture {
    let api = MockApi::default().answer(EVENTS_PATH, events_list());
    let dir = token.map(|_| tempdir::Dir::new("token"));
    let token_file = match (&dir, token) {
        (Some(d), Some(t)) => {
            let path = d.0.join("token");
            std::fs::write(&path, format!("{t}\n")).unwrap();
            Some(TokenFile::open(&path).unwrap())
        }
        _ => None,
    };
    let source = Source::new(api.client(), namespace.map(str::to_string), cache);
    let app = router(Arc::new(App::new(
        source,
        token_file,
        Duration::from_secs(2),
    )));
    Fixture {
        app,
        api,
        _dir: dir,
    }
}

async fn send(
    app: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> Response<AxumBody> {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "127.0.0.1:8082");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    app.clone()
        .oneshot(req.body(AxumBody::empty()).unwrap())
        .await
        .unwrap()
}

async fn body_of(resp: Response<AxumBody>) -> Vec<u8> {
    axum::body::to_bytes(resp.into_body(), 1 << 22)
        .await
        .unwrap()
        .to_vec()
}

async fn json_of(resp: Response<AxumBody>) -> Value {
    let bytes = body_of(resp).await;
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)))
}

fn content_type(resp: &Response<AxumBody>) -> &str {
    resp.headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

#[tokio::test]
async fn the_list_shows_phase_people_step_and_weight_from_the_cache() {
    let f = fixture(cache_of(fixtures()), None, None);
    let resp = send(&f.app, "GET", "/api/rollouts", &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(content_type(&resp), "application/json");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let list = json_of(resp).await;
    assert_eq!(list["origin"], "cache");
    assert_eq!(list["refreshSeconds"], 2);
    let rows: Vec<(String, String, String, u64)> = list["rollouts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                format!(
                    "{}/{}",
                    r["namespace"].as_str().unwrap(),
                    r["name"].as_str().unwrap()
                ),
                r["phase"].as_str().unwrap().to_string(),
                r["step"].as_str().unwrap().to_string(),
                r["weight"].as_u64().unwrap(),
            )
        })
        .collect();
    let want = [
        ("production/after", "Promoted", "4/4", 0),
        ("production/embed", "Progressing", "2/4", 25),
        ("staging/new", "Pending", "-/4", 0),
    ];
    assert_eq!(
        rows,
        want.iter()
            .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), *d))
            .collect::<Vec<_>>()
    );
    let embed = &list["rollouts"][1];
    assert_eq!(embed["verdict"], "Fail");
    assert_eq!(
        embed["candidateImage"],
        "ghcr.io/akidb/candle-embedder:1.2.0"
    );
    assert!(
        f.api.seen().is_empty(),
        "the cache answers the list: {:?}",
        f.api.seen()
    );
}

#[tokio::test]
async fn one_rollout_has_its_series_history_and_events() {
    let f = fixture(cache_of(fixtures()), None, None);
    let resp = send(&f.app, "GET", "/api/rollouts/production/embed", &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let d = json_of(resp).await;
    assert_eq!(
        (d["phase"].as_str(), d["step"].as_str()),
        (Some("Progressing"), Some("2/4"))
    );
    assert_eq!(d["weight"], 25);
    let weights: Vec<u64> = d["weightSeries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["weight"].as_u64().unwrap())
        .collect();
    // Step 1 at 10, step 2 at 25, two analyses at 25, and now.
    assert_eq!(weights, [10, 25, 25, 25, 25]);
    let gates: Vec<(&str, usize)> = d["gateSeries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["gate"].as_str().unwrap(),
                g["points"].as_array().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(gates, [("maxP95Ms", 2), ("maxErrorRate", 2)]);
    let p95 = &d["gateSeries"][0]["points"];
    assert_eq!(
        (p95[1]["value"].as_f64(), p95[1]["threshold"].as_f64()),
        (Some(0.09), Some(0.05))
    );
    assert_eq!(p95[1]["verdict"], "Fail");
    assert_eq!(d["history"].as_array().unwrap().len(), 2);
    assert_eq!(d["stepSummaries"].as_array().unwrap().len(), 2);
    assert_eq!(
        d["specSteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["weight"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [10, 25, 50, 100]
    );
    let reasons: Vec<&str> = d["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["AnalysisFailed", "StepStarted"], "newest first");
    assert_eq!(d["eventsError"], Value::Null);
    assert_eq!(
        f.api.seen(),
        [format!(
            "GET {EVENTS_PATH}?fieldSelector=regarding.name=embed,regarding.uid=uid-embed"
        )],
        "only the rollout's own events are listed"
    );
    // A second view within EVENTS_TTL reuses them.
    send(&f.app, "GET", "/api/rollouts/production/embed", &[]).await;
    assert_eq!(f.api.seen().len(), 1);
}

#[tokio::test]
async fn unknown_rollouts_and_other_namespaces_are_404() {
    let f = fixture(cache_of(fixtures()), Some("production"), None);
    for uri in [
        "/api/rollouts/production/nope",
        "/api/rollouts/staging/new",
        "/api/nothing",
        "/nothing",
    ] {
        let resp = send(&f.app, "GET", uri, &[]).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{uri}");
    }
}

#[tokio::test]
async fn unreadable_events_are_reported_not_fatal() {
    let api = MockApi::default().answer(
        EVENTS_PATH,
        status(
            403,
            "events.events.k8s.io is forbidden: cannot list resource",
        ),
    );
    let app = router(Arc::new(App::new(
        Source::new(api.client(), None, cache_of(fixtures())),
        None,
        Duration::from_secs(2),
    )));
    let resp = send(&app, "GET", "/api/rollouts/production/embed", &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let d = json_of(resp).await;
    assert_eq!(d["events"], json!([]));
    let err = d["eventsError"].as_str().unwrap();
    assert!(err.contains("forbidden"), "{err}");
}

#[tokio::test]
async fn without_the_cache_rollouts_are_listed_from_the_api_server() {
    let items: Vec<Value> = fixtures()
        .iter()
        .filter(|r| r.metadata.namespace.as_deref() == Some("production"))
        .map(|r| serde_json::to_value(r).unwrap())
        .collect();
    let path = "/apis/rollout.akidb.io/v1alpha1/namespaces/production/embeddingrollouts";
    let api = MockApi::default()
        .answer(
            path,
            json!({"apiVersion": "rollout.akidb.io/v1alpha1", "kind": "EmbeddingRolloutList",
                   "metadata": {}, "items": items}),
        )
        .answer(EVENTS_PATH, events_list());
    // A standby replica: its controller does not run, so nothing is published.
    let app = router(Arc::new(App::new(
        Source::new(
            api.client(),
            Some("production".into()),
            RolloutCache::default(),
        ),
        None,
        Duration::from_secs(2),
    )));
    let list = json_of(send(&app, "GET", "/api/rollouts", &[]).await).await;
    assert_eq!(list["origin"], "api");
    assert_eq!(list["namespace"], "production");
    assert_eq!(list["rollouts"].as_array().unwrap().len(), 2);
    let d = json_of(send(&app, "GET", "/api/rollouts/production/embed", &[]).await).await;
    assert_eq!(
        (d["origin"].as_str(), d["step"].as_str()),
        (Some("api"), Some("2/4"))
    );
    let lists = f_count(&api.seen(), path);
    assert_eq!(
        lists,
        1,
        "the list is reused for API_LIST_TTL: {:?}",
        api.seen()
    );
}

fn f_count(seen: &[String], path: &str) -> usize {
    seen.iter()
        .filter(|s| s.starts_with(&format!("GET {path}?")))
        .count()
}

#[tokio::test]
async fn the_api_needs_the_bearer_token_and_the_page_does_not() {
    let f = fixture(cache_of(fixtures()), None, Some("s3cr3t-token"));
    let resp = send(&f.app, "GET", "/api/rollouts", &[]).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    for bad in [
        "Bearer wrong",
        "Bearer s3cr3t-toke",
        "Bearer s3cr3t-token2",
        "Basic s3cr3t-token",
        "s3cr3t-token",
        "Bearer ",
    ] {
        let resp = send(
            &f.app,
            "GET",
            "/api/rollouts/production/embed",
            &[("authorization", bad)],
        )
        .await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{bad}");
    }
    for good in ["Bearer s3cr3t-token", "bearer s3cr3t-token"] {
        let resp = send(&f.app, "GET", "/api/rollouts", &[("authorization", good)]).await;
        assert_eq!(resp.status(), StatusCode::OK, "{good}");
    }
    // The page and its assets carry no data: served without the token, so the page can ask for it.
    for uri in ["/", "/rollouts/production/embed", "/assets/app.js"] {
        assert_eq!(
            send(&f.app, "GET", uri, &[]).await.status(),
            StatusCode::OK,
            "{uri}"
        );
    }
    // With a token, any Host may ask (the browser of a DNS-rebinding page has no token).
    let req = Request::builder()
        .uri("/api/rollouts")
        .header("host", "dashboard.example.com")
        .header("authorization", "Bearer s3cr3t-token")
        .body(AxumBody::empty())
        .unwrap();
    assert_eq!(
        f.app.clone().oneshot(req).await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_rotated_token_file_is_read_again() {
    let dir = tempdir::Dir::new("rotate");
    let path = dir.0.join("token");
    std::fs::write(&path, "first-token").unwrap();
    let api = MockApi::default();
    let app = router(Arc::new(App::new(
        Source::new(api.client(), None, cache_of(fixtures())),
        Some(TokenFile::open(&path).unwrap()),
        Duration::from_secs(2),
    )));
    let get = |t: &'static str| {
        let app = app.clone();
        async move {
            send(&app, "GET", "/api/rollouts", &[("authorization", t)])
                .await
                .status()
        }
    };
    assert_eq!(get("Bearer first-token").await, StatusCode::OK);
    std::fs::write(&path, "the-second-token\n").unwrap();
    assert_eq!(get("Bearer first-token").await, StatusCode::UNAUTHORIZED);
    assert_eq!(get("Bearer the-second-token").await, StatusCode::OK);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        get("Bearer the-second-token").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "fails closed"
    );
    assert!(TokenFile::open(&dir.0.join("missing")).is_err());
    std::fs::write(&path, "  \n").unwrap();
    assert!(TokenFile::open(&path).unwrap_err().contains("empty"));
}

#[tokio::test]
async fn nothing_but_get_and_head_is_answered() {
    let f = fixture(cache_of(fixtures()), None, Some("tok"));
    for method in ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        for uri in [
            "/",
            "/api/rollouts",
            "/api/rollouts/production/embed",
            "/rollouts/production/embed",
            "/assets/app.js",
            "/api/rollouts/production/embed/promote",
        ] {
            // Even with the token: there is nothing to send.
            let resp = send(&f.app, method, uri, &[("authorization", "Bearer tok")]).await;
            assert_eq!(
                resp.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {uri}"
            );
            assert_eq!(resp.headers()["allow"], "GET, HEAD");
        }
    }
    let head = send(
        &f.app,
        "HEAD",
        "/api/rollouts",
        &[("authorization", "Bearer tok")],
    )
    .await;
    assert_eq!(head.status(), StatusCode::OK);
    assert!(body_of(head).await.is_empty());
    assert!(
        f.api.seen().iter().all(|s| s.starts_with("GET ")),
        "{:?}",
        f.api.seen()
    );
}

#[tokio::test]
async fn assets_are_served_with_their_types_and_a_strict_policy() {
    let f = fixture(cache_of(fixtures()), None, None);
    for (uri, ty, needle) in [
        (
            "/",
            "text/html; charset=utf-8",
            "<script src=\"/assets/app.js\"",
        ),
        (
            "/rollouts/production/embed",
            "text/html; charset=utf-8",
            "/assets/style.css",
        ),
        (
            "/assets/app.js",
            "text/javascript; charset=utf-8",
            "function chart(",
        ),
        ("/assets/style.css", "text/css; charset=utf-8", "svg.chart"),
        ("/assets/favicon.svg", "image/svg+xml", "<svg"),
    ] {
        let resp = send(&f.app, "GET", uri, &[]).await;
        assert_eq!(resp.status(), StatusCode::OK, "{uri}");
        assert_eq!(content_type(&resp), ty, "{uri}");
        let csp = resp.headers()["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
        let body = String::from_utf8(body_of(resp).await).unwrap();
        assert!(body.contains(needle), "{uri} lacks {needle}");
    }
    assert_eq!(
        send(&f.app, "GET", "/assets/other.js", &[]).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[test]
fn every_asset_is_local() {
    // No CDN, no font service, no analytics: the only absolute URL is the SVG namespace name.
    for (name, text) in [
        ("index.html", INDEX_HTML),
        ("app.js", APP_JS),
        ("style.css", STYLE_CSS),
        ("favicon.svg", FAVICON_SVG),
    ] {
        let urls: Vec<&str> = text
            .match_indices("http")
            .map(|(i, _)| &text[i..(i + 40).min(text.len())])
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
            .filter(|u| !u.starts_with("http://www.w3.org/2000/svg"))
            .collect();
        assert!(urls.is_empty(), "{name} refers to {urls:?}");
        assert!(!text.contains("//cdn"), "{name}");
    }
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        assert!(
            !APP_JS.contains(&format!("\"{method}\"")),
            "app.js sends {method}"
        );
    }
}

#[tokio::test]
async fn without_a_token_only_local_hosts_are_answered() {
    let f = fixture(cache_of(fixtures()), None, None);
    for (host, want) in [
        ("127.0.0.1:8082", StatusCode::OK),
        ("localhost:8082", StatusCode::OK),
        ("localhost", StatusCode::OK),
        ("[::1]:8082", StatusCode::OK),
        ("10.1.2.3:8082", StatusCode::OK),
        ("evil.example:8082", StatusCode::FORBIDDEN),
        ("127.0.0.1.evil.example", StatusCode::FORBIDDEN),
        ("dashboard.internal", StatusCode::FORBIDDEN),
    ] {
        let req = Request::builder()
            .uri("/api/rollouts")
            .header("host", host)
            .body(AxumBody::empty())
            .unwrap();
        let resp = f.app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), want, "{host}");
    }
}

#[test]
fn addresses_default_to_loopback() {
    assert_eq!(parse_addr("8082").unwrap().to_string(), "127.0.0.1:8082");
    assert_eq!(
        parse_addr("0.0.0.0:9000").unwrap().to_string(),
        "0.0.0.0:9000"
    );
    assert_eq!(parse_addr("[::1]:9000").unwrap().to_string(), "[::1]:9000");
    assert!(parse_addr("localhost:x").is_err());
    assert!(parse_refresh("500ms").is_err());
    assert_eq!(parse_refresh("3s").unwrap(), Duration::from_secs(3));
}
