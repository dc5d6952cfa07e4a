//! The Prometheus edge against a local server that answers like `/api/v1/query`.

use std::{net::SocketAddr, time::Duration};

use axum::{
    extract::Query,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use embedding_rollout_operator::prometheus::{Prometheus, QueryError, Reading};

const JSON: [(header::HeaderName, &str); 1] = [(header::CONTENT_TYPE, "application/json")];

fn vector(values: &[&str]) -> String {
    let series: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!(r#"{{"metric":{{"pod":"p{i}"}},"value":[1700000000.123,"{v}"]}}"#))
        .collect();
    format!(
        r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
        series.join(",")
    )
}

/// The fake picks its answer from the query text, so one server covers every case.
async fn answer(Query(params): Query<std::collections::HashMap<String, String>>) -> Response {
    let q = params.get("query").cloned().unwrap_or_default();
    match q.as_str() {
        "value" => (JSON, vector(&["0.0123"])).into_response(),
        "empty" => (JSON, vector(&[])).into_response(),
        // A custom gate's `{{service}}-{{baseline}}-{{window}}-{{step}}`, rendered.
        "candle-mlx-300s-42s" => (JSON, vector(&["7"])).into_response(),
        "nan" => (JSON, vector(&["NaN"])).into_response(),
        "inf" => (JSON, vector(&["+Inf"])).into_response(),
        "many" => (JSON, vector(&["1", "NaN", "3", "2"])).into_response(),
        "scalar" => (
            JSON,
            r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"42"]}}"#,
        )
            .into_response(),
        "matrix" => (
            JSON,
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"]]}]}}"#,
        )
            .into_response(),
        "bad_promql" => (
            StatusCode::BAD_REQUEST,
            JSON,
            r#"{"status":"error","errorType":"bad_data","error":"1:7: parse error: unexpected end of input"}"#,
        )
            .into_response(),
        "prom_timeout" => (
            StatusCode::SERVICE_UNAVAILABLE,
            JSON,
            r#"{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}"#,
        )
            .into_response(),
        "http500" => (StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded").into_response(),
        "garbage" => (JSON, "{this is not json").into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            (JSON, vector(&["1"])).into_response()
        }
        _ => (StatusCode::NOT_FOUND, "unknown test query").into_response(),
    }
}

async fn fake_prometheus() -> SocketAddr {
    let app = Router::new().route("/api/v1/query", get(answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn client() -> Prometheus {
    let addr = fake_prometheus().await;
    Prometheus::new(&format!("http://{addr}"), Duration::from_millis(500)).unwrap()
}

#[tokio::test]
async fn a_value_is_read_from_a_one_series_vector() {
    assert_eq!(
        client().await.instant("value").await,
        Ok(Reading::Value(0.0123))
    );
}

#[tokio::test]
async fn an_empty_vector_is_no_data() {
    assert_eq!(client().await.instant("empty").await, Ok(Reading::NoData));
}

#[tokio::test]
async fn nan_is_reported_as_not_a_number() {
    assert_eq!(client().await.instant("nan").await, Ok(Reading::NotANumber));
}

#[tokio::test]
async fn plus_inf_is_an_infinite_value() {
    assert_eq!(
        client().await.instant("inf").await,
        Ok(Reading::Value(f64::INFINITY))
    );
}

#[tokio::test]
async fn several_series_give_the_worst_value() {
    assert_eq!(
        client().await.instant("many").await,
        Ok(Reading::Value(3.0))
    );
}

#[tokio::test]
async fn a_scalar_result_is_a_value() {
    assert_eq!(
        client().await.instant("scalar").await,
        Ok(Reading::Value(42.0))
    );
}

#[tokio::test]
async fn a_range_vector_is_an_error_not_a_guess() {
    assert!(matches!(
        client().await.instant("matrix").await,
        Err(QueryError::UnexpectedShape(_))
    ));
}

#[tokio::test]
async fn bad_promql_is_rejected_with_prometheus_message() {
    match client().await.instant("bad_promql").await {
        Err(QueryError::Rejected { kind, message }) => {
            assert_eq!(kind, "bad_data");
            assert!(message.contains("parse error"), "{message}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
}

#[tokio::test]
async fn prometheus_side_timeout_is_a_timeout() {
    assert!(matches!(
        client().await.instant("prom_timeout").await,
        Err(QueryError::Timeout(_))
    ));
}

#[tokio::test]
async fn http_500_with_text_body_is_a_bad_response_naming_the_status() {
    match client().await.instant("http500").await {
        Err(QueryError::BadResponse(msg)) => assert!(msg.contains("500"), "{msg}"),
        other => panic!("expected BadResponse, got {other:?}"),
    }
}

#[tokio::test]
async fn garbage_json_is_a_bad_response() {
    assert!(matches!(
        client().await.instant("garbage").await,
        Err(QueryError::BadResponse(_))
    ));
}

#[tokio::test]
async fn a_slow_server_times_out_within_the_budget() {
    let c = client().await;
    let started = std::time::Instant::now();
    let got = c.instant("slow").await;
    assert_eq!(got, Err(QueryError::Timeout(Duration::from_millis(500))));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    // Bind then drop to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = Prometheus::new(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2)).unwrap();
    match c.instant("value").await {
        Err(QueryError::Unreachable(msg)) => assert!(!msg.is_empty()),
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[test]
fn a_malformed_address_is_reported_not_panicked() {
    assert!(matches!(
        Prometheus::new("not a url", Duration::from_secs(1)),
        Err(QueryError::BadAddress { .. })
    ));
}

#[tokio::test]
async fn a_closed_port_is_described_by_address_and_cause_without_the_query() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let address = format!("http://127.0.0.1:{port}");
    let c = Prometheus::new(&address, Duration::from_secs(2)).unwrap();
    let e = c
        .instant(r#"sum(increase(embedding_requests_total{service="candle"}[5m]))"#)
        .await
        .unwrap_err();
    let text = Prometheus::describe(&address, &e);
    assert!(
        text.starts_with(&format!("Prometheus at {address} is unreachable: ")),
        "{text}"
    );
    assert!(text.contains("Connection refused"), "{text}");
    assert!(
        !text.contains("embedding_requests_total") && !text.contains("query="),
        "the query belongs in the log, not the status: {text}"
    );
}

/// The bearer token and the tenant header from Secrets reach Prometheus on every query.
#[tokio::test]
async fn credentials_and_tenant_headers_are_sent() {
    use embedding_rollout_operator::{
        crd::{HttpHeader, PrometheusSpec, SecretKeyRef},
        prometheus_access::{assemble, Objects},
    };
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = Router::new().route(
        "/api/v1/query",
        get(move |headers: axum::http::HeaderMap| {
            let record = record.clone();
            async move {
                let get = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                record
                    .lock()
                    .unwrap()
                    .push((get("authorization"), get("x-scope-orgid")));
                (JSON, vector(&["1"])).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let spec = PrometheusSpec {
        address: format!("http://{addr}"),
        bearer_token: Some(SecretKeyRef {
            name: "mimir".into(),
            key: "token".into(),
        }),
        headers: vec![HttpHeader {
            name: "X-Scope-OrgID".into(),
            value: Some("search-prod".into()),
            secret_key_ref: None,
        }],
        ..PrometheusSpec::default()
    };
    let mut objects = Objects::default();
    objects.secrets.insert(
        "mimir".into(),
        Ok(Some(
            [("token".to_string(), b"t0ken".to_vec())]
                .into_iter()
                .collect(),
        )),
    );
    let access = assemble(&spec, "prod", &objects).unwrap();
    let c = Prometheus::connect(&spec.address, &access, Duration::from_secs(2)).unwrap();
    assert_eq!(c.instant("x").await, Ok(Reading::Value(1.0)));
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [("Bearer t0ken".to_string(), "search-prod".to_string())]
    );
}

/// Custom gates run with the analysis: placeholders filled, several series reduced to the worst
/// for the bound (largest against max, smallest against min).
#[tokio::test]
async fn custom_gate_queries_are_rendered_and_reduced_towards_their_bound() {
    use embedding_rollout_operator::{crd::AnalysisSpec, prometheus::AnalysisQueries};
    let mut spec = AnalysisSpec::default();
    spec.gates.custom = serde_json::from_value(serde_json::json!([
        {"name": "upper", "query": "many", "max": 5},
        {"name": "lower", "query": "many", "min": 0.5, "samplesQuery": "scalar", "minSamples": 10},
        {"name": "placeholders", "query": "{{service}}-{{baseline}}-{{window}}-{{step}}", "max": 1}
    ]))
    .unwrap();
    let q = AnalysisQueries {
        candidate_service: "candle",
        baseline_service: "mlx",
        spec: &spec,
    };
    let m = client()
        .await
        .snapshot(&q, Some(Duration::from_secs(42)))
        .await;
    let get = |n: &str| m.custom.iter().find(|c| c.name == n).unwrap().clone();
    assert_eq!(get("upper").value, Ok(Some(3.0)));
    assert_eq!(get("lower").value, Ok(Some(1.0)));
    assert_eq!(get("lower").samples, Some(Ok(Some(42.0))));
    // Only the rendered text has an answer: the placeholders were filled.
    assert_eq!(get("placeholders").value, Ok(Some(7.0)));
}
