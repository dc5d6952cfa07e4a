//! The inference core: a sentence-transformers BERT model loaded from a directory, turning texts
//! into pooled (and by default L2-normalised) embeddings.
pub mod bert;
pub mod calibration;
pub mod config;
pub mod error;
pub mod gemm;
pub mod linear;
pub mod ops;
pub mod pooling;
pub mod qgemm;
pub mod testutil;
pub mod tokenize;

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::Serialize;

pub use config::{Pooling, Quantization};
pub use error::ModelError;
pub use tokenize::Encoded;

use bert::{Bert, Sequence};
use tokenize::TextEncoder;

/// Per-model settings that may override what the directory says.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelOptions {
    /// Overrides 1_Pooling/config.json.
    pub pooling: Option<Pooling>,
    /// Overrides sentence_bert_config.json's max_seq_length.
    pub max_tokens: Option<usize>,
    pub quantization: Quantization,
    pub normalize: bool,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            pooling: None,
            max_tokens: None,
            quantization: Quantization::None,
            normalize: true,
        }
    }
}

/// What `/api/v1/models` shows about a served model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub dimension: usize,
    pub max_tokens: usize,
    pub pooling: Pooling,
    pub quantization: Quantization,
    pub normalize: bool,
    pub path: String,
}

#[derive(Debug)]
pub struct Model {
    name: String,
    path: PathBuf,
    bert: Bert,
    encoder: TextEncoder,
    pooling: Pooling,
    quantization: Quantization,
    normalize: bool,
}

impl Model {
    /// Loads a BERT-family sentence-transformers directory (config.json, tokenizer.json,
    /// model.safetensors, optional 1_Pooling/ and sentence_bert_config.json).
    pub fn load(name: &str, dir: &Path, opts: &ModelOptions) -> Result<Self, ModelError> {
        if name.trim().is_empty() {
            return Err(ModelError::EmptyName);
        }
        let md = config::read_model_dir(dir)?;
        let pooling = opts.pooling.or(md.pooling).unwrap_or(Pooling::Mean);
        let positions = md.bert.max_position_embeddings;
        let max_tokens = opts
            .max_tokens
            .or(md.max_seq_length)
            .unwrap_or(positions)
            .min(positions);
        if max_tokens < 2 {
            return Err(ModelError::InvalidConfig {
                path: dir.to_path_buf(),
                reason: format!("max_tokens {max_tokens} leaves no room for text"),
            });
        }
        let weights_path = md.weights();
        let weights = candle_core::safetensors::load(&weights_path, &Device::Cpu).map_err(|e| {
            ModelError::InvalidConfig {
                path: weights_path.clone(),
                reason: e.to_string(),
            }
        })?;
        let encoder = TextEncoder::load(&md.tokenizer(), max_tokens)?;
        let bert = match opts.quantization {
            // INT8 needs the f32 model first: its activation ranges choose the outlier channels.
            Quantization::Int8 => {
                let texts: Vec<String> = calibration::TEXTS.iter().map(|t| t.to_string()).collect();
                let enc = encoder.encode(&texts, true)?;
                let seqs: Vec<Sequence<'_>> = enc.iter().map(Encoded::sequence).collect();
                Bert::load(&md.bert, weights, Quantization::None)?.into_int8(&seqs)?
            }
            q => Bert::load(&md.bert, weights, q)?,
        };
        Ok(Self {
            name: name.to_string(),
            path: dir.to_path_buf(),
            bert,
            encoder,
            pooling,
            quantization: opts.quantization,
            normalize: opts.normalize,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dimension(&self) -> usize {
        self.bert.hidden_size()
    }

    pub fn max_tokens(&self) -> usize {
        self.encoder.max_tokens()
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    pub fn quantization(&self) -> Quantization {
        self.quantization
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            name: self.name.clone(),
            dimension: self.dimension(),
            max_tokens: self.max_tokens(),
            pooling: self.pooling,
            quantization: self.quantization,
            normalize: self.normalize,
            path: self.path.display().to_string(),
        }
    }

    /// Tokenizes; over-long texts are truncated to `max_tokens`, or rejected with
    /// `ModelError::TooLong { index, tokens, max }` when `truncate` is false.
    pub fn encode(&self, texts: &[String], truncate: bool) -> Result<Vec<Encoded>, ModelError> {
        self.encoder.encode(texts, truncate)
    }

    /// One forward pass over a batch, pooled and (unless disabled) L2-normalised;
    /// `output[i]` is the embedding of `batch[i]`. Pure CPU work.
    pub fn embed(&self, batch: &[&Encoded]) -> Result<Vec<Vec<f32>>, ModelError> {
        let seqs: Vec<Sequence<'_>> = batch.iter().map(|e| e.sequence()).collect();
        let hidden = self.bert.forward(&seqs)?;
        Ok(self.pool(&hidden, batch))
    }

    /// The encoder's forward pass over a batch, adding each stage's wall time to `prof`: where
    /// the time of a request goes (benchmarks). Returns the last hidden states packed as
    /// [`bert::Bert::forward`] does, for [`Model::pool`].
    pub fn profile_forward(
        &self,
        batch: &[&Encoded],
        prof: &mut bert::Profile,
    ) -> Result<Vec<f32>, ModelError> {
        let seqs: Vec<Sequence<'_>> = batch.iter().map(|e| e.sequence()).collect();
        self.bert.forward_profiled(&seqs, prof)
    }

    /// Pooled (and, unless disabled, L2-normalised) embeddings from packed hidden states.
    pub fn pool(&self, hidden: &[f32], batch: &[&Encoded]) -> Vec<Vec<f32>> {
        let lens: Vec<usize> = batch.iter().map(|e| e.len()).collect();
        let dim = self.dimension();
        bert::split_packed(hidden, &lens, dim)
            .into_iter()
            .map(|tokens| {
                let mut v = pooling::pool(tokens, dim, self.pooling);
                if self.normalize {
                    pooling::l2_normalize(&mut v);
                }
                v
            })
            .collect()
    }

    /// Runs a small mixed-length batch once so the first real request does not pay for
    /// first-touch allocations.
    pub fn warmup(&self) -> Result<(), ModelError> {
        let texts = vec![
            "warm up".to_string(),
            "a slightly longer sentence to warm up the attention path".to_string(),
        ];
        let enc = self.encode(&texts, true)?;
        let refs: Vec<&Encoded> = enc.iter().collect();
        self.embed(&refs)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_can_be_shared_across_threads() {
        fn is<T: Send + Sync>() {}
        is::<Model>();
    }
}
