//! The generator against a tiny axum server on 127.0.0.1 whose speed and answers the test controls.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use embed_loadgen::api::sample_texts;
use embed_loadgen::{
    run_closed_loop, run_open_loop, Api, ClosedLoop, OpenLoopPlan, RequestTemplate, Target,
    DEFAULT_MODEL,
};
use serde_json::{json, Value};

#[derive(Default)]
struct Behaviour {
    delay: Duration,
    /// Answer this status to every n-th request (1-based count).
    fail_every: Option<(u64, StatusCode)>,
    /// Answer one embedding fewer than asked for.
    short_by_one: bool,
}

#[derive(Default)]
struct Fake {
    behaviour: Behaviour,
    received: AtomicU64,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    last_body: Mutex<Option<(String, Value)>>,
}

async fn embed(state: Arc<Fake>, route: &str, body: Value) -> Response {
    let n = state.received.fetch_add(1, Ordering::SeqCst) + 1;
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    *state.last_body.lock().unwrap() = Some((route.to_string(), body.clone()));
    tokio::time::sleep(state.behaviour.delay).await;
    state.in_flight.fetch_sub(1, Ordering::SeqCst);

    if let Some((every, status)) = state.behaviour.fail_every {
        if n.is_multiple_of(every) {
            return (status, Json(json!({"error": "nope"}))).into_response();
        }
    }
    let texts = body
        .get("texts")
        .or_else(|| body.get("input"))
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let count = if state.behaviour.short_by_one {
        texts.saturating_sub(1)
    } else {
        texts
    };
    let vector = vec![0.5_f32; 4];
    if route == "native" {
        Json(json!({"model": "m", "dimension": 4, "embeddings": vec![vector; count]}))
            .into_response()
    } else {
        let data: Vec<Value> = (0..count)
            .map(|i| json!({"object": "embedding", "index": i, "embedding": vector}))
            .collect();
        Json(json!({"object": "list", "data": data})).into_response()
    }
}

async fn serve(behaviour: Behaviour) -> (String, Arc<Fake>) {
    let state = Arc::new(Fake {
        behaviour,
        ..Fake::default()
    });
    let app = Router::new()
        .route(
            "/api/v1/embed",
            post(|State(s): State<Arc<Fake>>, Json(b): Json<Value>| embed(s, "native", b)),
        )
        .route(
            "/v1/embeddings",
            post(|State(s): State<Arc<Fake>>, Json(b): Json<Value>| embed(s, "openai", b)),
        )
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), state)
}

fn target(url: &str, api: Api, timeout: Duration) -> Target {
    Target {
        base_url: url.to_string(),
        template: RequestTemplate::new(api, &sample_texts(2), Some(DEFAULT_MODEL)),
        timeout,
    }
}

fn plan(rate: f64, millis: u64) -> OpenLoopPlan {
    OpenLoopPlan::new(rate, Duration::from_millis(millis), None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_sends_the_seed_payload_at_the_target_rate() {
    let (url, server) = serve(Behaviour::default()).await;
    let t = target(&url, Api::Native, Duration::from_secs(5));
    let report = run_open_loop(&t, &plan(200.0, 1000), 8).await.unwrap();

    assert_eq!(report.requests, 200);
    assert_eq!(report.ok, 200, "{report}");
    assert_eq!(report.errors, 0);
    assert_eq!(server.received.load(Ordering::SeqCst), 200);
    // 200 requests spread over one second, not sent in a burst.
    assert!(report.elapsed_s >= 0.99, "{report}");
    // A server that keeps up is credited with the target rate, not more.
    assert!(
        report.achieved_rps > 180.0 && report.achieved_rps <= 200.0 + 1e-9,
        "{report}"
    );
    let (route, body) = server.last_body.lock().unwrap().clone().unwrap();
    assert_eq!(route, "native");
    assert_eq!(
        body,
        json!({"texts": ["Machine learning and artificial intelligence",
                         "Natural language processing with transformers"],
               "model": "all-MiniLM-L6-v2"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_counts_queueing_delay_from_the_scheduled_time() {
    // The server needs 50 ms per request and gets one connection: it can do 20 req/s, we offer 50.
    // Requests pile up; their latency must include the wait, not just the 50 ms of service.
    let (url, _server) = serve(Behaviour {
        delay: Duration::from_millis(50),
        ..Behaviour::default()
    })
    .await;
    let t = target(&url, Api::Native, Duration::from_secs(10));
    let open = run_open_loop(&t, &plan(50.0, 1000), 1).await.unwrap();
    assert_eq!(open.ok, 50, "{open}");
    // The last request is due at 0.98 s but served at about 50 * 50 ms = 2.5 s.
    assert!(open.latency_ms.max > 1200.0, "{open}");
    assert!(open.latency_ms.p50 > 500.0, "{open}");
    assert!(open.achieved_rps < 25.0, "{open}");

    // The same server in a closed loop sees only the service time.
    let closed = ClosedLoop {
        concurrency: 1,
        duration: Duration::from_millis(500),
        max_requests: None,
    };
    let closed = run_closed_loop(&t, &closed).await.unwrap();
    assert!(closed.latency_ms.p99 < 150.0, "{closed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_never_has_more_requests_in_flight_than_connections() {
    let (url, server) = serve(Behaviour {
        delay: Duration::from_millis(40),
        ..Behaviour::default()
    })
    .await;
    let t = target(&url, Api::Native, Duration::from_secs(5));
    let report = run_open_loop(&t, &plan(300.0, 500), 4).await.unwrap();
    assert_eq!(report.ok, 150, "{report}");
    assert_eq!(server.max_in_flight.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_counted_by_status() {
    let (url, _server) = serve(Behaviour {
        fail_every: Some((4, StatusCode::TOO_MANY_REQUESTS)),
        ..Behaviour::default()
    })
    .await;
    let t = target(&url, Api::Native, Duration::from_secs(5));
    let report = run_open_loop(&t, &plan(400.0, 250), 4).await.unwrap();
    assert_eq!(report.requests, 100);
    assert_eq!(report.errors_by_kind["http_429"], 25, "{report}");
    assert_eq!(report.ok, 75);
    assert!((report.error_rate - 0.25).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2xx_with_the_wrong_number_of_embeddings_is_an_error() {
    let (url, _server) = serve(Behaviour {
        short_by_one: true,
        ..Behaviour::default()
    })
    .await;
    let t = target(&url, Api::Native, Duration::from_secs(5));
    let spec = ClosedLoop {
        concurrency: 2,
        duration: Duration::from_secs(5),
        max_requests: Some(10),
    };
    let report = run_closed_loop(&t, &spec).await.unwrap();
    assert_eq!(report.ok, 0);
    assert_eq!(report.errors_by_kind["invalid_response"], 10, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers_time_out_and_the_run_still_ends_on_time() {
    let (url, server) = serve(Behaviour {
        delay: Duration::from_millis(300),
        ..Behaviour::default()
    })
    .await;
    let t = target(&url, Api::Native, Duration::from_millis(150));
    let report = run_open_loop(&t, &plan(40.0, 500), 1).await.unwrap();
    assert_eq!(report.requests, 20);
    assert_eq!(report.ok, 0, "{report}");
    // A request that waited for the connection gets only what is left of its timeout, so it times
    // out (or, if nothing is left, is never sent): every one of them fails, none hangs.
    let timeouts = report.errors_by_kind.get("timeout").copied().unwrap_or(0);
    let not_sent = report.errors_by_kind.get("not_sent").copied().unwrap_or(0);
    assert_eq!(timeouts + not_sent, 20, "{report}");
    assert!(server.received.load(Ordering::SeqCst) <= 20);
    // Bounded in time: 0.5 s of schedule plus one timeout.
    assert!(report.elapsed_s < 0.8, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_stops_at_the_request_count() {
    let (url, server) = serve(Behaviour::default()).await;
    let t = target(&url, Api::Native, Duration::from_secs(5));
    let spec = ClosedLoop {
        concurrency: 4,
        duration: Duration::from_secs(30),
        max_requests: Some(37),
    };
    let report = run_closed_loop(&t, &spec).await.unwrap();
    assert_eq!(report.ok, 37, "{report}");
    assert_eq!(server.received.load(Ordering::SeqCst), 37);
    assert!(report.elapsed_s < 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_stops_at_the_duration() {
    let (url, _server) = serve(Behaviour {
        delay: Duration::from_millis(20),
        ..Behaviour::default()
    })
    .await;
    let t = target(&url, Api::Native, Duration::from_secs(5));
    let spec = ClosedLoop {
        concurrency: 2,
        duration: Duration::from_millis(400),
        max_requests: None,
    };
    let report = run_closed_loop(&t, &spec).await.unwrap();
    assert!(report.elapsed_s < 0.6, "{report}");
    // Two workers at about 20 ms each for 0.4 s: roughly 40 requests.
    assert!(report.ok >= 20 && report.ok <= 42, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_mode_posts_input_to_v1_embeddings() {
    let (url, server) = serve(Behaviour::default()).await;
    let t = target(&url, Api::OpenAi, Duration::from_secs(5));
    let report = run_open_loop(&t, &plan(100.0, 100), 2).await.unwrap();
    assert_eq!(report.ok, 10, "{report}");
    assert_eq!(report.api, "openai");
    let (route, body) = server.last_body.lock().unwrap().clone().unwrap();
    assert_eq!(route, "openai");
    assert_eq!(body["input"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_gives_connect_errors() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let t = target(
        &format!("http://127.0.0.1:{port}"),
        Api::Native,
        Duration::from_secs(2),
    );
    let report = run_open_loop(&t, &plan(50.0, 100), 2).await.unwrap();
    assert_eq!(report.ok, 0);
    assert_eq!(report.errors_by_kind["connect"], 5, "{report}");
}

#[tokio::test]
async fn a_bad_url_is_refused_before_sending() {
    let t = target("not a url", Api::Native, Duration::from_secs(1));
    let err = run_open_loop(&t, &plan(10.0, 100), 1).await.unwrap_err();
    assert!(err.to_string().contains("not a url"), "{err}");
    let t = target("ftp://127.0.0.1", Api::Native, Duration::from_secs(1));
    assert!(run_open_loop(&t, &plan(10.0, 100), 1).await.is_err());
}
