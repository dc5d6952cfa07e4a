//! One `request` span per HTTP request, around everything the router does for it (panics caught
//! and `x-served-by` included), named and attributed after OpenTelemetry's HTTP server
//! conventions so an OTLP backend shows `POST /api/v1/embed` with its status; the embed handlers
//! add the model, the number of texts and the tokens (`embed.rs`), and the inference pipeline
//! opens a child span for the time in the queue and the batch (`infer.rs`). Exported only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (`embedding_telemetry`); otherwise the span only gives
//! the request's log lines their context.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use tracing::{field, Instrument};

pub async fn request_span(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    // The route template (`/api/v1/embed`), never the raw path: the span name stays bounded.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let name = match &route {
        Some(route) => format!("{method} {route}"),
        None => method.to_string(),
    };
    let span = tracing::info_span!(
        "request",
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = field::Empty,
        http.request.method = %method,
        http.route = route.as_deref(),
        http.response.status_code = field::Empty,
        model = field::Empty,
        texts = field::Empty,
        tokens = field::Empty,
    );
    let response = next.run(req).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}
