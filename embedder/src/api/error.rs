//! Every failure a client can see, as one enum turned into `{"error": {"type", "message"}}`.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::infer::InferError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidRequest(String),
    /// Well-formed JSON of the wrong shape (missing field, wrong type).
    #[error("{0}")]
    WrongShape(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("request has {count} texts; the limit is {limit} texts per request")]
    TooManyTexts { count: usize, limit: usize },
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("model `{requested}` is not served; available models: {}", available.join(", "))]
    ModelNotFound {
        requested: String,
        available: Vec<String>,
    },
    #[error("{0}")]
    TextTooLong(String),
    #[error("no route for {0}")]
    RouteNotFound(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    #[error("models are still loading; retry when /health/ready answers 200")]
    NotReady,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the server is overloaded ({0}); retry later")]
    QueueFull(String),
    #[error("inference is failing, the circuit breaker is open; retry in {}s", retry_after.as_secs().max(1))]
    BreakerOpen { retry_after: Duration },
    #[error("inference did not finish within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("{0}")]
    Inference(String),
    #[error("injected failure (chaos testing: --chaos-error-ratio)")]
    Chaos,
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: String,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            InvalidJson(_) | InvalidRequest(_) => StatusCode::BAD_REQUEST,
            WrongShape(_) => StatusCode::UNPROCESSABLE_ENTITY,
            UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            TooManyTexts { .. } | PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ModelNotFound { .. } | RouteNotFound(_) => StatusCode::NOT_FOUND,
            TextTooLong(_) => StatusCode::UNPROCESSABLE_ENTITY,
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            NotReady | ShuttingDown | BreakerOpen { .. } => StatusCode::SERVICE_UNAVAILABLE,
            QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
            Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Inference(_) | Chaos | Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `type` field of the JSON error.
    pub fn type_name(&self) -> &'static str {
        use ApiError::*;
        match self {
            InvalidJson(_) => "invalid_json",
            InvalidRequest(_) | WrongShape(_) => "invalid_request",
            UnsupportedMediaType(_) => "unsupported_media_type",
            TooManyTexts { .. } => "too_many_texts",
            PayloadTooLarge(_) => "payload_too_large",
            ModelNotFound { .. } => "model_not_found",
            TextTooLong(_) => "text_too_long",
            RouteNotFound(_) => "not_found",
            MethodNotAllowed(_) => "method_not_allowed",
            NotReady => "not_ready",
            ShuttingDown => "shutting_down",
            QueueFull(_) => "overloaded",
            BreakerOpen { .. } => "circuit_open",
            Timeout(_) => "timeout",
            Inference(_) => "inference_error",
            Chaos => "chaos",
            Internal(_) => "internal_error",
        }
    }

    /// `kind` label of `embedding_errors_total`: only server-side failures (5xx and 429) count.
    /// Every value is in [`crate::metrics::ERROR_KINDS`].
    pub fn error_kind(&self) -> Option<&'static str> {
        use ApiError::*;
        match self {
            NotReady => Some("not_ready"),
            ShuttingDown => Some("shutting_down"),
            QueueFull(_) => Some("queue_full"),
            BreakerOpen { .. } => Some("breaker_open"),
            Timeout(_) => Some("timeout"),
            Inference(_) => Some("inference"),
            Chaos => Some("chaos"),
            Internal(_) => Some("internal"),
            _ => None,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::QueueFull(_) | ApiError::NotReady | ApiError::ShuttingDown => {
                Some(Duration::from_secs(1))
            }
            ApiError::BreakerOpen { retry_after } => Some(*retry_after),
            _ => None,
        }
    }
}

/// Where pipeline failures become HTTP ones.
impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        match e {
            InferError::NotReady => ApiError::NotReady,
            InferError::ShuttingDown => ApiError::ShuttingDown,
            InferError::ModelNotFound {
                requested,
                available,
            } => ApiError::ModelNotFound {
                requested,
                available,
            },
            e @ InferError::TextTooLong { .. } => {
                ApiError::TextTooLong(format!("{e}; send \"truncate\": true to cut it"))
            }
            InferError::InvalidInput(m) => ApiError::InvalidRequest(m),
            e @ InferError::QueueFull { .. } => ApiError::QueueFull(e.to_string()),
            InferError::BreakerOpen { retry_after } => ApiError::BreakerOpen { retry_after },
            InferError::Timeout(t) => ApiError::Timeout(t),
            InferError::Inference(m) => ApiError::Inference(m),
            InferError::Chaos => ApiError::Chaos,
            InferError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let msg = r.body_text();
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge(format!("request body is larger than the limit ({msg})"))
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(msg),
            // Well-formed JSON of the wrong shape (missing field, wrong type): 422.
            StatusCode::UNPROCESSABLE_ENTITY => ApiError::WrongShape(msg),
            _ => ApiError::InvalidJson(msg),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = Body {
            error: Detail {
                kind: self.type_name(),
                message: self.to_string(),
            },
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(after) = self.retry_after() {
            let secs = after.as_secs().max(1).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}
