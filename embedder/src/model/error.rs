//! Everything that can go wrong while loading or running a model, as one typed error.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model file {path} is missing (for all-MiniLM-L6-v2 run `make model`)")]
    MissingFile { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid JSON in {path}: {source}")]
    BadJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid models file {path}: {source}")]
    BadYaml {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("invalid model config in {path}: {reason}")]
    InvalidConfig { path: PathBuf, reason: String },
    #[error("model weight `{0}` is missing from model.safetensors")]
    MissingWeight(String),
    #[error("model weights do not match the config: {0}")]
    WeightShape(String),
    #[error("unknown pooling `{0}` (expected mean, cls or max)")]
    UnknownPooling(String),
    #[error("unknown quantization `{0}` (expected none, int8 or q8_0)")]
    UnknownQuantization(String),
    #[error("unknown dtype `{0}` (only f32 is supported)")]
    UnknownDtype(String),
    #[error("model name `{0}` is listed twice")]
    DuplicateName(String),
    #[error("model name must not be empty")]
    EmptyName,
    #[error("the models file lists no model")]
    NoModels,
    #[error("more than one model is marked default: {0:?}")]
    MultipleDefaults(Vec<String>),
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("input {index} has {tokens} tokens, more than the model's maximum of {max}")]
    TooLong {
        index: usize,
        tokens: usize,
        max: usize,
    },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("inference failed: {0}")]
    Candle(#[from] candle_core::Error),
}
