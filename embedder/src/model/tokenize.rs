//! Text to token ids with the model's own tokenizer.json, truncating to the model's max length.
use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::error::ModelError;

/// Token ids of one text, ready for `Model::embed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// The text had more than `max_tokens` tokens and was cut.
    pub truncated: bool,
}

impl Encoded {
    /// The encoder's view of this text.
    pub fn sequence(&self) -> super::bert::Sequence<'_> {
        super::bert::Sequence {
            ids: &self.ids,
            type_ids: &self.type_ids,
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

pub struct TextEncoder {
    /// Truncates to `max_tokens` (special tokens included), never pads: padding is the batch's job.
    truncating: Tokenizer,
    /// No truncation: used only to count the tokens of a text that is too long.
    full: Tokenizer,
    max_tokens: usize,
}

impl std::fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEncoder")
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

impl TextEncoder {
    pub fn load(path: &Path, max_tokens: usize) -> Result<Self, ModelError> {
        let mut full = Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        // The shipped tokenizer.json may fix padding/truncation (MiniLM's pads and cuts at 128):
        // override both with the model's own max length and no padding.
        full.with_padding(None);
        full.with_truncation(None).map_err(tok_err)?;
        let mut truncating = full.clone();
        truncating
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(tok_err)?;
        Ok(Self {
            truncating,
            full,
            max_tokens,
        })
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn encode(&self, texts: &[String], truncate: bool) -> Result<Vec<Encoded>, ModelError> {
        let mut out = Vec::with_capacity(texts.len());
        for (index, text) in texts.iter().enumerate() {
            let enc = self
                .truncating
                .encode(text.as_str(), true)
                .map_err(tok_err)?;
            let truncated = !enc.get_overflowing().is_empty();
            if truncated && !truncate {
                let tokens = self
                    .full
                    .encode(text.as_str(), true)
                    .map_err(tok_err)?
                    .len();
                return Err(ModelError::TooLong {
                    index,
                    tokens,
                    max: self.max_tokens,
                });
            }
            out.push(Encoded {
                ids: enc.get_ids().to_vec(),
                type_ids: enc.get_type_ids().to_vec(),
                truncated,
            });
        }
        Ok(out)
    }
}
