//! Start-up (live at once, ready only after load + warm-up) and graceful shutdown.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use candle_embedder::model::testutil::write_tiny_bert;
use candle_embedder::registry::ModelRegistry;
use candle_embedder::server::Loader;
use common::{config, sample, start, start_with, TINY};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_at_once_ready_only_after_models_are_loaded_and_warmed_up() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = write_tiny_bert(&dir.path().join("tiny")).unwrap();
    // The loader blocks until the test lets it go, standing in for a slow model load.
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let loader: Loader = Box::new(move || {
        go_rx.recv().expect("test releases the loader");
        ModelRegistry::single(TINY, &model_dir)
    });
    let s = start_with(config(&[]), loader, dir).await;

    let r = s.client.get(s.url("/health/live")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = s.client.get(s.url("/health/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "loading");
    let (status, body) = s.embed(json!({"texts": ["early"]})).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["type"], "not_ready");
    let m = s.metrics().await;
    assert_eq!(
        sample(&m, r#"model_loaded_count{service="test-svc"}"#),
        Some(0.0)
    );

    go_tx.send(()).unwrap();
    let t0 = Instant::now();
    loop {
        let r = s.client.get(s.url("/health/ready")).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "never ready");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // By the time it said ready, the warm-up batch had gone through the batcher.
    let m = s.metrics().await;
    assert_eq!(
        sample(&m, r#"model_loaded_count{service="test-svc"}"#),
        Some(1.0)
    );
    assert!(sample(&m, r#"embedding_batch_size_count{service="test-svc"}"#).unwrap() >= 1.0);
    let (status, _) = s.embed(json!({"texts": ["now"]})).await;
    assert_eq!(status, 200);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_model_load_is_reported_and_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-model");
    let loader: Loader = Box::new(move || ModelRegistry::single(TINY, &missing));
    let s = start_with(config(&[]), loader, dir).await;
    let handle_result = tokio::time::timeout(Duration::from_secs(10), async {
        let mut s = s;
        s.handle.take().unwrap().await.unwrap()
    })
    .await
    .expect("server stops on its own");
    let err = format!("{:#}", handle_result.unwrap_err());
    assert!(err.contains("no-such-model"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_in_flight_request_then_stops() {
    // Each embed request takes >= 600 ms, so one is in flight when the signal comes.
    let mut s = start(&["--chaos-latency-ms", "600", "--shutdown-grace-secs", "10"]).await;
    let c = s.client.clone();
    let u = s.url("/api/v1/embed");
    let in_flight = tokio::spawn(async move {
        let r = c
            .post(u)
            .json(&json!({"texts": ["finish me"]}))
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    s.signal_shutdown();

    // Readiness flips at once so load balancers stop sending.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        s.state.infer.phase(),
        candle_embedder::infer::Phase::ShuttingDown
    );

    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["embeddings"].as_array().unwrap().len(), 1);

    let result = tokio::time::timeout(Duration::from_secs(5), s.handle.take().unwrap())
        .await
        .expect("stopped within the grace period")
        .unwrap();
    result.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5));
    // The listener is closed.
    assert!(reqwest::Client::new()
        .get(s.url("/health/live"))
        .send()
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_period_bounds_the_shutdown() {
    // A request that would take 5 s cannot hold the process beyond a 1 s grace period.
    let mut s = start(&["--chaos-latency-ms", "5000", "--shutdown-grace-secs", "1"]).await;
    let c = s.client.clone();
    let u = s.url("/api/v1/embed");
    let _stuck =
        tokio::spawn(async move { c.post(u).json(&json!({"texts": ["slow"]})).send().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    s.signal_shutdown();
    tokio::time::timeout(Duration::from_secs(4), s.handle.take().unwrap())
        .await
        .expect("stopped near the grace period")
        .unwrap()
        .unwrap();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

/// The real binary: env-var flags, JSON logs, SIGTERM drains an in-flight request and exits 0.
#[test]
fn binary_serves_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = write_tiny_bert(&dir.path().join("tiny")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_candle-embedder"))
        .args(["--port", "0", "--model-name", "bin-tiny"])
        // Flags also come from EMBEDDER_* environment variables.
        .env("EMBEDDER_SERVICE_NAME", "bin-env")
        .env("EMBEDDER_MAX_TEXTS_PER_REQUEST", "1")
        .arg("--model-dir")
        .arg(&model_dir)
        .args(["--chaos-latency-ms", "500"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (line_tx, line_rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    let mut addr = None;
    let mut ready = false;
    let t0 = Instant::now();
    while !(addr.is_some() && ready) {
        let line = line_rx
            .recv_timeout(Duration::from_secs(30).saturating_sub(t0.elapsed()))
            .expect("log lines before the timeout");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("log is not JSON ({e}): {line}"));
        if let Some(a) = v["fields"]["addr"].as_str() {
            addr = Some(a.to_string());
        }
        if v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("ready"))
        {
            ready = true;
        }
    }
    let base = format!("http://{}", addr.unwrap());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    let (served_by, version, too_many) = rt.block_on(async {
        let r = client
            .get(format!("{base}/api/v1/version"))
            .send()
            .await
            .unwrap();
        let served_by = r.headers()["x-served-by"].to_str().unwrap().to_string();
        let v: serde_json::Value = r.json().await.unwrap();
        let too_many = client
            .post(format!("{base}/api/v1/embed"))
            .json(&json!({"texts": ["a", "b"]}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        (served_by, v, too_many)
    });
    assert_eq!(served_by, "bin-env");
    assert_eq!(version["service"], "bin-env");
    assert_eq!(too_many, 413);
    let url = format!("{base}/api/v1/embed");
    let in_flight = rt.spawn({
        let client = client.clone();
        async move {
            client
                .post(url)
                .json(&json!({"texts": ["hello"]}))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    std::thread::sleep(Duration::from_millis(150));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert_eq!(rt.block_on(in_flight).unwrap().unwrap(), 200);
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}
