//! HTTP routes. Every response carries `x-served-by: <service-name>`; every error is
//! `{"error": {"type", "message"}}`.

pub mod embed;
pub mod error;
pub mod span;
pub mod types;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderName, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;

use crate::infer::Phase;
use crate::state::AppState;
pub use error::ApiError;
use types::{ModelsResponse, VersionResponse};

pub const SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");

pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.cfg.max_body_bytes;
    Router::new()
        .route("/api/v1/embed", post(embed::embed))
        .route("/v1/embeddings", post(embed::openai_embeddings))
        .route("/api/v1/models", get(models))
        .route("/api/v1/version", get(version))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(
            |panic: Box<dyn std::any::Any + Send>| {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                tracing::error!(panic = %msg, "handler panicked");
                ApiError::Internal("the request handler failed unexpectedly".into()).into_response()
            },
        ))
        .layer(middleware::map_response_with_state(
            Arc::clone(&state),
            served_by,
        ))
        // Outermost, so the span covers the rest; inside the routing, so it sees the route.
        .layer(middleware::from_fn(span::request_span))
        .with_state(state)
}

async fn served_by(State(state): State<Arc<AppState>>, mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(SERVED_BY, state.served_by.clone());
    resp
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::RouteNotFound(uri.path().to_string())
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}

async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "live"}))
}

/// 200 only once every model is loaded and warmed up; 503 while loading, after a failed load and
/// while shutting down (so load balancers stop sending before the listener closes).
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    match state.infer.phase() {
        Phase::Ready => {
            let models = state.infer.names();
            (
                StatusCode::OK,
                Json(json!({"status": "ready", "models": models})),
            )
                .into_response()
        }
        Phase::Loading => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response(),
        Phase::ShuttingDown => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting_down"})),
        )
            .into_response(),
        Phase::Failed => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "error": state.infer.load_error()})),
        )
            .into_response(),
    }
}

async fn models(State(state): State<Arc<AppState>>) -> Result<Json<ModelsResponse>, ApiError> {
    let (models, default) = state.infer.models().ok_or(ApiError::NotReady)?;
    Ok(Json(ModelsResponse {
        default: models[default].name().to_string(),
        models: models.iter().map(|m| m.info()).collect(),
    }))
}

async fn version(State(state): State<Arc<AppState>>) -> Json<VersionResponse> {
    Json(VersionResponse {
        service: state.cfg.service_name.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    // Refresh the breaker gauge: an elapsed cool-down makes it half-open without traffic.
    state.infer.refresh_breaker();
    if state.infer.models().is_some() {
        state
            .metrics
            .queue_depth
            .set(state.infer.queue_depth() as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
