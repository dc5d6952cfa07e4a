//! With OTLP export on, the server's requests are exported as spans (`api::span`, `infer.rs`):
//! a local OTLP/HTTP receiver (`embedding_telemetry::testing`) decodes what the exporter sends.
//! The flush waits for the receiver's answer: no sleeps, no polling.

mod common;

use embedding_telemetry::testing::{ReceivedSpan, Receiver};
use embedding_telemetry::{OtlpConfig, Telemetry};
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt as _;

/// The exporting layer, configured from the variables the process would read (without touching
/// the process environment), installed for this thread (the test's runtime runs the server).
fn export_to(receiver: &Receiver) -> (Telemetry, tracing::subscriber::DefaultGuard) {
    let endpoint = receiver.endpoint();
    let config = OtlpConfig::from_vars(
        |k| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| endpoint.clone()),
        candle_embedder::OTEL_SERVICE_NAME,
    )
    .unwrap()
    .expect("an endpoint turns export on");
    let (layer, telemetry) = embedding_telemetry::layer(&config).unwrap();
    let guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
    (telemetry, guard)
}

fn with_status<'a>(spans: &'a [ReceivedSpan], name: &str, status: &str) -> &'a ReceivedSpan {
    spans
        .iter()
        .find(|s| s.name == name && s.attr("http.response.status_code") == Some(status))
        .unwrap_or_else(|| panic!("no {name} span with status {status}: {spans:#?}"))
}

#[tokio::test]
async fn embed_requests_are_exported_as_server_spans_of_candle_embedder_with_their_inference() {
    let receiver = Receiver::start().await;
    let (telemetry, _guard) = export_to(&receiver);

    let server = common::start(&[]).await;
    let (status, body) = server
        .embed(json!({"texts": ["hello world", "a second, longer text"]}))
        .await;
    assert_eq!(status, 200, "{body}");
    let tokens = body["usage"]["tokens"].as_u64().unwrap().to_string();
    let (status, body) = server.embed(json!({"texts": []})).await;
    assert_eq!(status, 400, "{body}");
    server.stop().await.unwrap();
    // A backend failure (injected) is an error span.
    let failing = common::start(&["--chaos-error-ratio", "1"]).await;
    let (status, body) = failing.embed(json!({"texts": ["hello"]})).await;
    assert_eq!(status, 500, "{body}");
    failing.stop().await.unwrap();
    telemetry.force_flush().await.unwrap();

    assert!(receiver.rejected().is_empty(), "{:?}", receiver.rejected());
    let spans = receiver.spans();
    let ok = with_status(&spans, "POST /api/v1/embed", "200");
    assert_eq!(ok.service_name.as_deref(), Some("candle-embedder"));
    assert_eq!(ok.kind, "SPAN_KIND_SERVER");
    assert_eq!(ok.parent_span_id, "", "a request is a root span");
    assert_eq!(ok.attr("http.request.method"), Some("POST"));
    assert_eq!(ok.attr("http.route"), Some("/api/v1/embed"));
    assert_eq!(ok.attr("model"), Some(common::TINY));
    assert_eq!(ok.attr("texts"), Some("2"));
    assert_eq!(ok.attr("tokens"), Some(tokens.as_str()));
    assert_eq!(ok.status, "STATUS_CODE_UNSET");

    let inference: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "inference" && s.parent_span_id == ok.span_id)
        .collect();
    assert_eq!(inference.len(), 1, "one inference child: {spans:#?}");
    assert_eq!(inference[0].trace_id, ok.trace_id);
    assert_eq!(inference[0].attr("texts"), Some("2"));
    assert_eq!(inference[0].attr("tokens"), Some(tokens.as_str()));
    assert_eq!(inference[0].attr("model"), Some(common::TINY));

    let refused = with_status(&spans, "POST /api/v1/embed", "400");
    assert_eq!(refused.attr("texts"), Some("0"));
    assert_eq!(
        refused.status, "STATUS_CODE_UNSET",
        "a client error is not ours"
    );
    assert!(
        !spans.iter().any(|s| s.parent_span_id == refused.span_id),
        "a refused request reaches no inference"
    );

    let failed = with_status(&spans, "POST /api/v1/embed", "500");
    assert_eq!(failed.status, "STATUS_CODE_ERROR");

    let ready = with_status(&spans, "GET /health/ready", "200");
    assert_eq!(ready.attr("http.route"), Some("/health/ready"));
    assert_eq!(ready.attr("model"), None);
    telemetry.shutdown().await.unwrap();
}
