//! The two embed routes share one pipeline: resolve the model, validate, tokenize (all at the
//! edge, so a bad request never reaches a batch), pass the breaker, queue, await the batch.

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
use crate::batcher::SubmitError;
use crate::breaker::Outcome;
use crate::metrics::UNKNOWN_MODEL;
use crate::model::{Encoded, Model, ModelError};
use crate::server::{AppState, Phase};

/// Requests with more text than this are tokenized on a blocking thread, not the runtime.
const INLINE_TOKENIZE_BYTES: usize = 16 * 1024;

pub struct Embedded {
    pub model: Arc<Model>,
    pub embeddings: Vec<Vec<f32>>,
    pub tokens: usize,
}

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

/// The shared pipeline. `field` names the texts in error messages; `label` receives the model
/// name for the metrics as soon as the model is known.
pub async fn embed_texts(
    state: &AppState,
    model: Option<&str>,
    texts: Vec<String>,
    truncate: bool,
    field: &str,
    label: &mut String,
) -> Result<Embedded, ApiError> {
    let serving = match state.serving() {
        Some(s) => s,
        None if state.phase() == Phase::ShuttingDown => return Err(ApiError::ShuttingDown),
        None => return Err(ApiError::NotReady),
    };
    let group = match model {
        None => serving.default,
        Some(name) => serving.find(name).ok_or_else(|| ApiError::ModelNotFound {
            requested: name.to_string(),
            available: serving.names(),
        })?,
    };
    let model = Arc::clone(&serving.models[group]);
    *label = model.name().to_string();

    validate(&texts, field, state.cfg.max_texts_per_request)?;
    let encoded = tokenize(&model, texts, truncate).await?;
    let tokens = encoded.iter().map(Encoded::len).sum();

    state.chaos.delay().await;
    let ticket = state.breaker.admit().map_err(|r| ApiError::BreakerOpen {
        retry_after: r.retry_after,
    })?;
    if state.chaos.should_fail() {
        // Injected as a backend failure, so it also drives the breaker like a real one.
        ticket.record(Outcome::Failure);
        return Err(ApiError::Chaos);
    }
    let pending = serving
        .batcher
        .submit(group, encoded)
        .map_err(|e| match e {
            SubmitError::QueueFull { .. } => ApiError::QueueFull(e.to_string()),
            SubmitError::ShuttingDown => ApiError::ShuttingDown,
        })?;
    let timeout = state.cfg.inference_timeout();
    match tokio::time::timeout(timeout, pending).await {
        Ok(Ok(Ok(embeddings))) => {
            ticket.record(Outcome::Success);
            Ok(Embedded {
                model,
                embeddings,
                tokens,
            })
        }
        Ok(Ok(Err(e))) => {
            ticket.record(Outcome::Failure);
            Err(ApiError::Inference(e.to_string()))
        }
        Ok(Err(_)) => {
            ticket.record(Outcome::Failure);
            Err(ApiError::Internal(
                "the inference threads dropped the request".into(),
            ))
        }
        Err(_) => {
            ticket.record(Outcome::Failure);
            Err(ApiError::Timeout(timeout))
        }
    }
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

async fn tokenize(
    model: &Arc<Model>,
    texts: Vec<String>,
    truncate: bool,
) -> Result<Vec<Encoded>, ApiError> {
    let bytes: usize = texts.iter().map(String::len).sum();
    let result = if bytes <= INLINE_TOKENIZE_BYTES {
        model.encode(&texts, truncate)
    } else {
        let m = Arc::clone(model);
        tokio::task::spawn_blocking(move || m.encode(&texts, truncate))
            .await
            .map_err(|e| ApiError::Internal(format!("tokenizer task failed: {e}")))?
    };
    result.map_err(|e| match e {
        ModelError::TooLong { index, tokens, max } => ApiError::TextTooLong(format!(
            "text {index} has {tokens} tokens, more than the model's maximum of {max}; \
             send \"truncate\": true to cut it"
        )),
        ModelError::InvalidInput(m) => ApiError::InvalidRequest(m),
        ModelError::Tokenizer(m) => ApiError::InvalidRequest(format!("cannot tokenize: {m}")),
        other => ApiError::Internal(other.to_string()),
    })
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
