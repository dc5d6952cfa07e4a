//! The HTTP API against a real server (127.0.0.1:0) serving the tiny random BERT.

mod common;

use std::time::{Duration, Instant};

use common::{embeddings, max_abs_diff, sample, start, TINY};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_routes_answer_with_the_service_name() {
    let s = start(&[]).await;

    let r = s.client.get(s.url("/api/v1/version")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-served-by"], "test-svc");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["service"], "test-svc");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));

    for path in ["/health/live", "/health/ready"] {
        let r = s.client.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["x-served-by"], "test-svc", "{path}");
    }

    let r = s.client.get(s.url("/api/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["default"], TINY);
    assert_eq!(v["models"][0]["name"], TINY);
    assert_eq!(v["models"][0]["dimension"], 32);

    let r = s.client.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-served-by"], "test-svc");
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));

    // Unknown routes and methods are JSON errors with the header too.
    let r = s.client.get(s.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-served-by"], "test-svc");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "not_found");
    let r = s.client.get(s.url("/api/v1/embed")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "method_not_allowed");

    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_returns_one_normalised_vector_per_text() {
    let s = start(&[]).await;
    let (status, body) = s
        .embed(json!({"texts": ["Hello world", "Test embedding"], "model": TINY}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], TINY);
    assert_eq!(body["dimension"], 32);
    let e = embeddings(&body);
    assert_eq!(e.len(), 2);
    for v in &e {
        assert_eq!(v.len(), 32);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    assert_ne!(e[0], e[1]);
    assert!(body["usage"]["tokens"].as_u64().unwrap() >= 6);

    // No model named: the default model.
    let (status, body2) = s.embed(json!({"texts": ["Hello world"]})).await;
    assert_eq!(status, 200);
    assert_eq!(body2["model"], TINY);
    assert!(max_abs_diff(&embeddings(&body2)[0], &e[0]) < 1e-5);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_route_matches_the_native_route() {
    let s = start(&[]).await;
    let (_, native) = s.embed(json!({"texts": ["alpha", "beta gamma"]})).await;
    let native = embeddings(&native);

    let (status, body) = s
        .post(
            "/v1/embeddings",
            json!({"input": ["alpha", "beta gamma"], "model": TINY}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], TINY);
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        let v: Vec<f32> = serde_json::from_value(d["embedding"].clone()).unwrap();
        assert!(max_abs_diff(&v, &native[i]) < 1e-5);
    }
    let tokens = body["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(tokens > 0);
    assert_eq!(body["usage"]["total_tokens"], tokens);

    // A single string is one input.
    let (status, body) = s
        .post("/v1/embeddings", json!({"input": "alpha", "model": TINY}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    let v: Vec<f32> = serde_json::from_value(body["data"][0]["embedding"].clone()).unwrap();
    assert!(max_abs_diff(&v, &native[0]) < 1e-5);

    // Unsupported encodings and token arrays are refused clearly.
    let (status, body) = s
        .post(
            "/v1/embeddings",
            json!({"input": "alpha", "encoding_format": "base64"}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("base64"));
    let (status, _) = s.post("/v1/embeddings", json!({"input": [1, 2, 3]})).await;
    assert_eq!(status, 422);
    s.stop().await.unwrap();
}

async fn expect_error(
    s: &common::TestServer,
    body: serde_json::Value,
    status: u16,
    kind: &str,
) -> String {
    let (got, resp) = s.embed(body.clone()).await;
    assert_eq!(got, status, "{body} -> {resp}");
    assert_eq!(resp["error"]["type"], kind, "{resp}");
    resp["error"]["message"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_json_errors() {
    let s = start(&["--max-texts-per-request", "4", "--max-body-bytes", "4096"]).await;

    // Not JSON at all.
    let r = s
        .client
        .post(s.url("/api/v1/embed"))
        .header("content-type", "application/json")
        .body("{\"texts\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-served-by"], "test-svc");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_json");

    // Not declared as JSON.
    let r = s
        .client
        .post(s.url("/api/v1/embed"))
        .body("{\"texts\": [\"a\"]}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    // Wrong shapes.
    expect_error(&s, json!({"texts": "one string"}), 422, "invalid_request").await;
    expect_error(&s, json!({"texts": [1, 2]}), 422, "invalid_request").await;
    expect_error(&s, json!({"text": ["a"]}), 422, "invalid_request").await;
    expect_error(
        &s,
        json!({"texts": ["a"], "truncate": "yes"}),
        422,
        "invalid_request",
    )
    .await;

    // Empty input.
    let m = expect_error(&s, json!({"texts": []}), 400, "invalid_request").await;
    assert!(m.contains("at least one"), "{m}");
    let m = expect_error(&s, json!({"texts": ["ok", ""]}), 400, "invalid_request").await;
    assert!(m.contains("texts[1]"), "{m}");
    expect_error(&s, json!({"texts": ["  \n"]}), 400, "invalid_request").await;

    // Too many texts: the limit is in the message.
    let m = expect_error(
        &s,
        json!({"texts": ["a", "b", "c", "d", "e"]}),
        413,
        "too_many_texts",
    )
    .await;
    assert!(m.contains("limit is 4"), "{m}");

    // Body over the size limit.
    let big = "word ".repeat(2000);
    let (status, resp) = s.embed(json!({"texts": [big]})).await;
    assert_eq!(status, 413, "{resp}");
    assert_eq!(resp["error"]["type"], "payload_too_large");

    // Over-long text: truncated by default, refused with truncate=false.
    let long = "token ".repeat(200);
    let (status, body) = s.embed(json!({"texts": [long.clone()]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["usage"]["tokens"], 64,
        "cut to the tiny model's 64 tokens"
    );
    let m = expect_error(
        &s,
        json!({"texts": ["short", long], "truncate": false}),
        422,
        "text_too_long",
    )
    .await;
    assert!(m.contains("text 1") && m.contains("64"), "{m}");

    // Unknown model: 404 listing what is served.
    let m = expect_error(
        &s,
        json!({"texts": ["a"], "model": "gpt-9"}),
        404,
        "model_not_found",
    )
    .await;
    assert!(m.contains("gpt-9") && m.contains(TINY), "{m}");

    // None of that hurt the server.
    let (status, _) = s.embed(json!({"texts": ["still fine"]})).await;
    assert_eq!(status, 200);

    // Client errors are counted as requests, not as errors.
    let metrics = s.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"embedding_requests_total{code="404",model="unknown",service="test-svc"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"embedding_requests_total{code="422",model="tiny-bert",service="test-svc"}"#
        ),
        Some(1.0)
    );
    // Client errors are not server errors: the error series exist (zero-initialised per model, so
    // rate() answers 0 rather than "no data") but none counted anything.
    let error_lines: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("embedding_errors_total{"))
        .collect();
    assert!(
        error_lines
            .iter()
            .any(|l| l.contains(r#"kind="inference",model="tiny-bert""#)),
        "{metrics}"
    );
    assert!(error_lines.iter().all(|l| l.ends_with(" 0")), "{metrics}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_429_with_retry_after() {
    // Batches wait up to 2 s to fill, so the first two requests sit in a queue of 4 texts.
    let s = start(&[
        "--queue-capacity",
        "4",
        "--max-batch-wait-ms",
        "2000",
        "--inference-threads",
        "1",
    ])
    .await;
    let a = {
        let c = s.client.clone();
        let u = s.url("/api/v1/embed");
        tokio::spawn(async move {
            c.post(u)
                .json(&json!({"texts": ["one", "two"]}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let b = {
        let c = s.client.clone();
        let u = s.url("/api/v1/embed");
        tokio::spawn(async move {
            c.post(u)
                .json(&json!({"texts": ["three", "four"]}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    // Wait until both are queued.
    let t0 = Instant::now();
    while sample(
        &s.metrics().await,
        r#"embedding_queue_depth{service="test-svc"}"#,
    ) != Some(4.0)
    {
        assert!(
            t0.elapsed() < Duration::from_millis(1800),
            "queue never filled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = s
        .client
        .post(s.url("/api/v1/embed"))
        .json(&json!({"texts": ["five"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "overloaded");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("queue is full"));

    // The queued requests are served.
    assert_eq!(a.await.unwrap(), 200);
    assert_eq!(b.await.unwrap(), 200);
    let m = s.metrics().await;
    assert_eq!(
        sample(
            &m,
            r#"embedding_errors_total{kind="queue_full",model="tiny-bert",service="test-svc"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"embedding_requests_total{code="429",model="tiny-bert",service="test-svc"}"#
        ),
        Some(1.0)
    );
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_inference_opens_the_breaker_and_503s() {
    let s = start(&[
        "--chaos-error-ratio",
        "1.0",
        "--breaker-min-requests",
        "3",
        "--breaker-failure-ratio",
        "0.5",
        "--breaker-cooldown-secs",
        "60",
    ])
    .await;
    for _ in 0..3 {
        let (status, body) = s.embed(json!({"texts": ["x"]})).await;
        assert_eq!(status, 500);
        assert_eq!(body["error"]["type"], "chaos");
    }
    let r = s
        .client
        .post(s.url("/api/v1/embed"))
        .json(&json!({"texts": ["x"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((55..=60).contains(&retry), "retry-after {retry}");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "circuit_open");

    let m = s.metrics().await;
    assert_eq!(
        sample(
            &m,
            r#"circuit_breaker_state{backend="test-svc",service="embedding"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"embedding_errors_total{kind="chaos",model="tiny-bert",service="test-svc"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"embedding_errors_total{kind="breaker_open",model="tiny-bert",service="test-svc"}"#
        ),
        Some(1.0)
    );
    // Liveness is unaffected: the process is fine, its backend is not.
    let r = s.client.get(s.url("/health/live")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_inference_times_out_with_504_and_counts_for_the_breaker() {
    // The batch waits 500 ms to fill; the request gives up after 50 ms.
    let s = start(&[
        "--max-batch-wait-ms",
        "500",
        "--inference-timeout-ms",
        "50",
        "--breaker-min-requests",
        "1",
        "--breaker-failure-ratio",
        "1.0",
        "--breaker-cooldown-secs",
        "60",
    ])
    .await;
    let (status, body) = s.embed(json!({"texts": ["x"]})).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["type"], "timeout");
    let (status, _) = s.embed(json!({"texts": ["x"]})).await;
    assert_eq!(status, 503, "one timeout opened the breaker");
    let m = s.metrics().await;
    assert_eq!(
        sample(
            &m,
            r#"embedding_errors_total{kind="timeout",model="tiny-bert",service="test-svc"}"#
        ),
        Some(1.0)
    );
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_latency_delays_every_embed_request() {
    let s = start(&["--chaos-latency-ms", "150"]).await;
    let t0 = Instant::now();
    let (status, _) = s.embed(json!({"texts": ["x"]})).await;
    assert_eq!(status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(150));
    // Only embed requests: health stays fast.
    let t0 = Instant::now();
    s.client.get(s.url("/health/live")).send().await.unwrap();
    assert!(t0.elapsed() < Duration::from_millis(150));
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_the_contract_names_and_labels_after_traffic() {
    let s = start(&[]).await;
    s.embed(json!({"texts": ["a", "b"]})).await;
    s.post("/v1/embeddings", json!({"input": "c"})).await;
    s.embed(json!({"texts": ["a"], "model": "nope"})).await;
    let m = s.metrics().await;
    for series in [
        r#"embedding_request_duration_seconds_bucket{model="tiny-bert",service="test-svc",le="0.035"}"#,
        r#"embedding_request_duration_seconds_count{model="tiny-bert",service="test-svc"}"#,
        r#"embedding_requests_total{code="200",model="tiny-bert",service="test-svc"}"#,
        r#"embedding_requests_total{code="404",model="unknown",service="test-svc"}"#,
        r#"circuit_breaker_state{backend="test-svc",service="embedding"}"#,
        r#"model_loaded_count{service="test-svc"}"#,
        r#"embedding_batch_size_count{service="test-svc"}"#,
        r#"embedding_queue_depth{service="test-svc"}"#,
    ] {
        assert!(sample(&m, series).is_some(), "missing {series} in\n{m}");
    }
    assert_eq!(
        sample(
            &m,
            r#"embedding_requests_total{code="200",model="tiny-bert",service="test-svc"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"embedding_request_duration_seconds_count{model="tiny-bert",service="test-svc"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(&m, r#"model_loaded_count{service="test-svc"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"circuit_breaker_state{backend="test-svc",service="embedding"}"#
        ),
        Some(0.0)
    );
    for bucket in [
        "0.001", "0.0025", "0.005", "0.0075", "0.05", "0.075", "1", "5",
    ] {
        let series = format!(
            r#"embedding_request_duration_seconds_bucket{{model="tiny-bert",service="test-svc",le="{bucket}"}}"#
        );
        assert!(sample(&m, &series).is_some(), "missing bucket {bucket}");
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_results_equal_unbatched_even_with_a_bad_request_in_the_mix() {
    // A 100 ms batch window makes the concurrent requests below share batches.
    let s = start(&["--max-batch-wait-ms", "100", "--inference-threads", "1"]).await;
    let texts = [
        "the cat sat on the mat",
        "a",
        "embedding servers batch requests together to use the hardware well",
        "rust",
        "short one",
        "another sentence of moderate length for the batch",
    ];
    // Unbatched: one request at a time, each alone in its batch.
    let mut alone = Vec::new();
    for t in texts {
        let (status, body) = s.embed(json!({"texts": [t]})).await;
        assert_eq!(status, 200);
        alone.push(embeddings(&body).remove(0));
    }
    let before = sample(
        &s.metrics().await,
        r#"embedding_batch_size_count{service="test-svc"}"#,
    )
    .unwrap();

    let mut tasks = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        let c = s.client.clone();
        let u = s.url("/api/v1/embed");
        let body = json!({"texts": [t]});
        tasks.push(tokio::spawn(async move {
            let r = c.post(u).json(&body).send().await.unwrap();
            (
                i,
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }));
        if i == 2 {
            // Invalid requests interleaved with the valid ones.
            for bad in [
                json!({"texts": ["ok", ""]}),
                json!({"texts": ["token ".repeat(300)], "truncate": false}),
                json!({"texts": ["x"], "model": "missing"}),
            ] {
                let c = s.client.clone();
                let u = s.url("/api/v1/embed");
                tasks.push(tokio::spawn(async move {
                    let r = c.post(u).json(&bad).send().await.unwrap();
                    (usize::MAX, r.status().as_u16(), r.json().await.unwrap())
                }));
            }
        }
    }
    for t in tasks {
        let (i, status, body) = t.await.unwrap();
        if i == usize::MAX {
            assert!([400, 404, 422].contains(&status), "{status} {body}");
            continue;
        }
        assert_eq!(status, 200, "{body}");
        let got = embeddings(&body).remove(0);
        let diff = max_abs_diff(&got, &alone[i]);
        assert!(diff < 1e-4, "text {i} differs by {diff} when batched");
    }
    let m = s.metrics().await;
    let after = sample(&m, r#"embedding_batch_size_count{service="test-svc"}"#).unwrap();
    assert!(
        after - before < texts.len() as f64,
        "the concurrent requests shared batches ({} batches for {} texts)",
        after - before,
        texts.len()
    );
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_of_a_client_that_went_away_are_not_computed() {
    // The batch waits 1.5 s to fill; the client gives up after 200 ms.
    let s = start(&["--max-batch-wait-ms", "1500", "--inference-threads", "1"]).await;
    let texts_before = sample(
        &s.metrics().await,
        r#"embedding_batch_size_sum{service="test-svc"}"#,
    )
    .unwrap();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let r = impatient
        .post(s.url("/api/v1/embed"))
        .json(&json!({"texts": ["never mind", "me neither"]}))
        .send()
        .await;
    assert!(r.is_err(), "the client timed out");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let m = s.metrics().await;
    assert_eq!(
        sample(&m, r#"embedding_batch_size_sum{service="test-svc"}"#),
        Some(texts_before),
        "no batch ran for the abandoned texts"
    );
    assert_eq!(
        sample(&m, r#"embedding_queue_depth{service="test-svc"}"#),
        Some(0.0)
    );
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_turns_half_open_after_the_cooldown_and_a_failed_probe_reopens_it() {
    let s = start(&[
        "--chaos-error-ratio",
        "1.0",
        "--breaker-min-requests",
        "2",
        "--breaker-cooldown-secs",
        "1",
        "--breaker-half-open-probes",
        "1",
    ])
    .await;
    let state = r#"circuit_breaker_state{backend="test-svc",service="embedding"}"#;
    for _ in 0..2 {
        assert_eq!(s.embed(json!({"texts": ["x"]})).await.0, 500);
    }
    assert_eq!(sample(&s.metrics().await, state), Some(1.0));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // No traffic needed: the scrape sees the elapsed cool-down.
    assert_eq!(sample(&s.metrics().await, state), Some(2.0));
    // The probe is let through, fails (chaos), and re-opens the breaker.
    assert_eq!(s.embed(json!({"texts": ["probe"]})).await.0, 500);
    assert_eq!(sample(&s.metrics().await, state), Some(1.0));
    assert_eq!(s.embed(json!({"texts": ["x"]})).await.0, 503);
    s.stop().await.unwrap();
}
