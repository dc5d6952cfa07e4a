//! Request and response bodies of the HTTP API.

use serde::{Deserialize, Serialize};

use crate::model::ModelInfo;

fn yes() -> bool {
    true
}

/// `POST /api/v1/embed`
#[derive(Debug, Clone, Deserialize)]
pub struct EmbedRequest {
    pub texts: Vec<String>,
    #[serde(default)]
    pub model: Option<String>,
    /// Cut over-long texts to the model's maximum (default) instead of rejecting them.
    #[serde(default = "yes")]
    pub truncate: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbedResponse {
    pub model: String,
    pub dimension: usize,
    pub embeddings: Vec<Vec<f32>>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Usage {
    pub tokens: usize,
}

/// `POST /v1/embeddings` (OpenAI-compatible).
#[derive(Debug, Clone, Deserialize)]
pub struct OpenAiRequest {
    pub input: OpenAiInput,
    #[serde(default)]
    pub model: Option<String>,
    /// Only `float` is supported.
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Accepted only when equal to the model's dimension (no Matryoshka truncation).
    #[serde(default)]
    pub dimensions: Option<usize>,
    /// Accepted and ignored, as OpenAI clients send it.
    #[serde(default)]
    #[allow(dead_code)]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OpenAiInput {
    One(String),
    Many(Vec<String>),
}

impl OpenAiInput {
    pub fn into_texts(self) -> Vec<String> {
        match self {
            OpenAiInput::One(s) => vec![s],
            OpenAiInput::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenAiResponse {
    pub object: String,
    pub data: Vec<OpenAiEmbedding>,
    pub model: String,
    pub usage: OpenAiUsage,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenAiEmbedding {
    pub object: String,
    pub embedding: Vec<f32>,
    pub index: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenAiUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// `GET /api/v1/models`
#[derive(Debug, Clone, Serialize)]
pub struct ModelsResponse {
    pub default: String,
    pub models: Vec<ModelInfo>,
}

/// `GET /api/v1/version`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionResponse {
    pub service: String,
    pub version: String,
}
