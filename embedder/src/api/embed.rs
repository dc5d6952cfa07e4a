//! The two embed routes: parse and validate the request at the edge (so a bad request never
//! reaches a batch), then hand the texts to the inference pipeline (`crate::infer`), and turn
//! its answer or error into the route's JSON.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tracing::warn;

use super::error::ApiError;
use super::types::{
    EmbedRequest, EmbedResponse, OpenAiEmbedding, OpenAiRequest, OpenAiResponse, OpenAiUsage, Usage,
};
use crate::infer::Embedded;
use crate::metrics::UNKNOWN_MODEL;
use crate::state::AppState;

pub async fn embed(
    State(state): State<Arc<AppState>>,
    body: Result<Json<EmbedRequest>, JsonRejection>,
) -> Response {
    let started = Instant::now();
    let mut label = UNKNOWN_MODEL.to_string();
    let result = async {
        let Json(req) = body?;
        let out = embed_texts(
            &state,
            req.model.as_deref(),
            req.texts,
            req.truncate,
            "texts",
            &mut label,
        )
        .await?;
        Ok(EmbedResponse {
            model: out.model.name().to_string(),
            dimension: out.model.dimension(),
            embeddings: out.embeddings,
            usage: Usage { tokens: out.tokens },
        })
    }
    .await;
    finish(&state, &label, started, result)
}

pub async fn openai_embeddings(
    State(state): State<Arc<AppState>>,
    body: Result<Json<OpenAiRequest>, JsonRejection>,
) -> Response {
    let started = Instant::now();
    let mut label = UNKNOWN_MODEL.to_string();
    let result = async {
        let Json(req) = body?;
        if let Some(f) = req.encoding_format.as_deref() {
            if f != "float" {
                return Err(ApiError::InvalidRequest(format!(
                    "encoding_format `{f}` is not supported; use `float`"
                )));
            }
        }
        let texts = req.input.into_texts();
        let out = embed_texts(
            &state,
            req.model.as_deref(),
            texts,
            true,
            "input",
            &mut label,
        )
        .await?;
        if let Some(d) = req.dimensions {
            if d != out.model.dimension() {
                return Err(ApiError::InvalidRequest(format!(
                    "dimensions {d} is not supported; model {} has {}",
                    out.model.name(),
                    out.model.dimension()
                )));
            }
        }
        Ok(OpenAiResponse {
            object: "list".into(),
            model: out.model.name().to_string(),
            data: out
                .embeddings
                .into_iter()
                .enumerate()
                .map(|(index, embedding)| OpenAiEmbedding {
                    object: "embedding".into(),
                    embedding,
                    index,
                })
                .collect(),
            usage: OpenAiUsage {
                prompt_tokens: out.tokens,
                total_tokens: out.tokens,
            },
        })
    }
    .await;
    finish(&state, &label, started, result)
}

/// Records the request in the metrics and renders the response.
fn finish<T: serde::Serialize>(
    state: &AppState,
    label: &str,
    started: Instant,
    result: Result<T, ApiError>,
) -> Response {
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(body) => {
            state.metrics.observe_request(label, 200, None, secs);
            Json(body).into_response()
        }
        Err(e) => {
            let status = e.status();
            if status.is_server_error() {
                warn!(model = label, status = status.as_u16(), error = %e, "embed request failed");
            }
            state
                .metrics
                .observe_request(label, status.as_u16(), e.error_kind(), secs);
            e.into_response()
        }
    }
}

/// Both routes: resolve the model, validate, embed. `field` names the texts in error messages;
/// `label` receives the model name for the metrics as soon as the model is known.
async fn embed_texts(
    state: &AppState,
    model: Option<&str>,
    texts: Vec<String>,
    truncate: bool,
    field: &str,
    label: &mut String,
) -> Result<Embedded, ApiError> {
    // The request's span (`span.rs`) gets what the request asked for and what it cost.
    let span = tracing::Span::current();
    span.record("texts", texts.len());
    let handle = state.infer.model(model)?;
    *label = handle.model().name().to_string();
    span.record("model", label.as_str());
    validate(&texts, field, state.cfg.max_texts_per_request)?;
    let out = state.infer.embed(&handle, texts, truncate).await?;
    span.record("tokens", out.tokens);
    Ok(out)
}

/// Request-level checks that need no model.
pub fn validate(texts: &[String], field: &str, max_texts: usize) -> Result<(), ApiError> {
    if texts.is_empty() {
        return Err(ApiError::InvalidRequest(format!(
            "`{field}` must contain at least one text"
        )));
    }
    if texts.len() > max_texts {
        return Err(ApiError::TooManyTexts {
            count: texts.len(),
            limit: max_texts,
        });
    }
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        return Err(ApiError::InvalidRequest(format!(
            "`{field}[{i}]` is empty; every text needs at least one non-blank character"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn validation_rules() {
        assert!(validate(&texts(&["a", "b"]), "texts", 2).is_ok());
        assert!(matches!(
            validate(&[], "texts", 2),
            Err(ApiError::InvalidRequest(m)) if m.contains("at least one")
        ));
        assert_eq!(
            validate(&texts(&["a", "b", "c"]), "texts", 2),
            Err(ApiError::TooManyTexts { count: 3, limit: 2 })
        );
        assert!(matches!(
            validate(&texts(&["a", " "]), "input", 4),
            Err(ApiError::InvalidRequest(m)) if m.contains("`input[1]`")
        ));
    }
}
