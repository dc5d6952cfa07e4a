//! What a sentence-transformers directory says about its model: the BERT shape (config.json),
//! the pooling (1_Pooling/config.json) and the maximum sequence length (sentence_bert_config.json).
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::ModelError;

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Mean,
    Cls,
    Max,
}

impl FromStr for Pooling {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            "max" => Ok(Pooling::Max),
            _ => Err(ModelError::UnknownPooling(s.to_string())),
        }
    }
}

impl fmt::Display for Pooling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Max => "max",
        })
    }
}

/// Weights of the linear layers: plain f32; `int8`: per-column INT8 weights with per-token INT8
/// activations on our AVX2 kernel (`qgemm.rs`); or `q8_0`: ggml's 32-value INT8 blocks through
/// candle's quantised matmul (finer-grained, slower).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Quantization {
    #[default]
    #[serde(rename = "none")]
    None,
    #[serde(rename = "int8")]
    Int8,
    #[serde(rename = "q8_0")]
    Q8_0,
}

impl FromStr for Quantization {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "" | "f32" => Ok(Quantization::None),
            "int8" | "i8" => Ok(Quantization::Int8),
            "q8_0" | "q8" => Ok(Quantization::Q8_0),
            _ => Err(ModelError::UnknownQuantization(s.to_string())),
        }
    }
}

impl fmt::Display for Quantization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Quantization::None => "none",
            Quantization::Int8 => "int8",
            Quantization::Q8_0 => "q8_0",
        })
    }
}

/// The fields of a Hugging Face BERT config.json that the forward pass needs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default = "default_model_type")]
    pub model_type: String,
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_model_type() -> String {
    "bert".into()
}
fn default_position_type() -> String {
    "absolute".into()
}

#[derive(Debug, Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

/// Everything read from the directory, before any weight is touched.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub dir: PathBuf,
    pub bert: BertConfig,
    /// From 1_Pooling/config.json; `None` when the directory has no pooling module.
    pub pooling: Option<Pooling>,
    /// From sentence_bert_config.json; `None` when absent.
    pub max_seq_length: Option<usize>,
}

impl ModelDir {
    pub fn weights(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }
    pub fn tokenizer(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }
}

pub fn require(path: &Path) -> Result<(), ModelError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(ModelError::MissingFile {
            path: path.to_path_buf(),
        })
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ModelError::BadJson {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the configs of a sentence-transformers directory and checks that the files the model
/// needs are there.
pub fn read_model_dir(dir: &Path) -> Result<ModelDir, ModelError> {
    let config_path = dir.join("config.json");
    require(&config_path)?;
    let bert: BertConfig = read_json(&config_path)?;
    validate_bert(&bert, &config_path)?;

    let pooling_path = dir.join("1_Pooling").join("config.json");
    let pooling = if pooling_path.is_file() {
        Some(pooling_from(&read_json(&pooling_path)?, &pooling_path)?)
    } else {
        None
    };

    let sbert_path = dir.join("sentence_bert_config.json");
    let max_seq_length = if sbert_path.is_file() {
        read_json::<SentenceBertConfig>(&sbert_path)?.max_seq_length
    } else {
        None
    };

    let model = ModelDir {
        dir: dir.to_path_buf(),
        bert,
        pooling,
        max_seq_length,
    };
    require(&model.weights())?;
    require(&model.tokenizer())?;
    Ok(model)
}

fn pooling_from(cfg: &PoolingConfig, path: &Path) -> Result<Pooling, ModelError> {
    let modes = [
        (cfg.pooling_mode_mean_tokens, Pooling::Mean),
        (cfg.pooling_mode_cls_token, Pooling::Cls),
        (cfg.pooling_mode_max_tokens, Pooling::Max),
    ];
    if cfg.pooling_mode_mean_sqrt_len_tokens {
        return Err(ModelError::UnknownPooling("mean_sqrt_len_tokens".into()));
    }
    let chosen: Vec<Pooling> = modes
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, p)| *p)
        .collect();
    match chosen.as_slice() {
        [one] => Ok(*one),
        [] => Err(ModelError::InvalidConfig {
            path: path.to_path_buf(),
            reason: "no pooling mode is enabled".into(),
        }),
        many => Err(ModelError::InvalidConfig {
            path: path.to_path_buf(),
            reason: format!("several pooling modes are enabled ({many:?}); only one is supported"),
        }),
    }
}

fn validate_bert(cfg: &BertConfig, path: &Path) -> Result<(), ModelError> {
    let invalid = |reason: String| ModelError::InvalidConfig {
        path: path.to_path_buf(),
        reason,
    };
    if !matches!(cfg.model_type.as_str(), "bert") {
        return Err(invalid(format!(
            "model_type `{}` is not supported (only bert)",
            cfg.model_type
        )));
    }
    if cfg.position_embedding_type != "absolute" {
        return Err(invalid(format!(
            "position_embedding_type `{}` is not supported",
            cfg.position_embedding_type
        )));
    }
    if !matches!(
        cfg.hidden_act.as_str(),
        "gelu" | "gelu_new" | "gelu_pytorch_tanh"
    ) {
        return Err(invalid(format!(
            "hidden_act `{}` is not supported",
            cfg.hidden_act
        )));
    }
    if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
        return Err(invalid(format!(
            "hidden_size {} is not a multiple of num_attention_heads {}",
            cfg.hidden_size, cfg.num_attention_heads
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_names_parse_case_insensitively() {
        assert_eq!("MEAN".parse::<Pooling>().unwrap(), Pooling::Mean);
        assert_eq!("cls".parse::<Pooling>().unwrap(), Pooling::Cls);
        assert!(matches!(
            "avg".parse::<Pooling>(),
            Err(ModelError::UnknownPooling(s)) if s == "avg"
        ));
    }

    #[test]
    fn exactly_one_pooling_mode_is_accepted() {
        let p = Path::new("x");
        let mean = PoolingConfig {
            pooling_mode_cls_token: false,
            pooling_mode_mean_tokens: true,
            pooling_mode_max_tokens: false,
            pooling_mode_mean_sqrt_len_tokens: false,
        };
        assert_eq!(pooling_from(&mean, p).unwrap(), Pooling::Mean);
        let both = PoolingConfig {
            pooling_mode_cls_token: true,
            ..mean
        };
        assert!(pooling_from(&both, p).is_err());
    }

    #[test]
    fn quantization_names_parse() {
        assert_eq!("q8_0".parse::<Quantization>().unwrap(), Quantization::Q8_0);
        assert_eq!("int8".parse::<Quantization>().unwrap(), Quantization::Int8);
        assert_eq!(Quantization::Int8.to_string(), "int8");
        assert_eq!("none".parse::<Quantization>().unwrap(), Quantization::None);
        assert!("q4_k".parse::<Quantization>().is_err());
    }
}
