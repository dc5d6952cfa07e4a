//! Test fixtures shared with the server's integration tests (not `cfg(test)` on purpose): a tiny,
//! randomly initialised BERT sentence-transformers directory that loads and runs in milliseconds.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{Device, Tensor};
use serde_json::json;

pub const TINY_HIDDEN: usize = 32;
pub const TINY_LAYERS: usize = 2;
pub const TINY_HEADS: usize = 2;
pub const TINY_INTERMEDIATE: usize = 64;
pub const TINY_MAX_SEQ_LENGTH: usize = 64;
const TINY_POSITIONS: usize = 128;
const SEED: u64 = 0x005e_ed0f_b3e7;

/// Where `make model` puts all-MiniLM-L6-v2, seen from this crate.
/// Deterministic values in [-1, 1] (xorshift), for kernel tests that need reproducible data.
pub fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

pub fn minilm_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("models")
        .join("all-MiniLM-L6-v2")
}

/// Writes a tiny BERT sentence-transformers directory into `dir` (created if needed) and returns
/// it: config.json (hidden 32, 2 layers, 2 heads), tokenizer.json (MiniLM's when `make model` has
/// run, else a small WordPiece vocabulary built here), seeded random model.safetensors, mean
/// pooling in 1_Pooling/ and sentence_bert_config.json with max_seq_length 64.
pub fn write_tiny_bert(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir.join("1_Pooling"))
        .with_context(|| format!("creating {}", dir.display()))?;

    let tokenizer_path = dir.join("tokenizer.json");
    let minilm_tokenizer = minilm_dir().join("tokenizer.json");
    if minilm_tokenizer.is_file() {
        std::fs::copy(&minilm_tokenizer, &tokenizer_path)
            .with_context(|| format!("copying {}", minilm_tokenizer.display()))?;
    } else {
        write_json(&tokenizer_path, &small_wordpiece_tokenizer())?;
    }
    let vocab_size = tokenizers::Tokenizer::from_file(&tokenizer_path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", tokenizer_path.display()))?
        .get_vocab_size(true);

    write_json(
        &dir.join("config.json"),
        &json!({
            "architectures": ["BertModel"],
            "model_type": "bert",
            "hidden_act": "gelu",
            "hidden_size": TINY_HIDDEN,
            "intermediate_size": TINY_INTERMEDIATE,
            "num_attention_heads": TINY_HEADS,
            "num_hidden_layers": TINY_LAYERS,
            "max_position_embeddings": TINY_POSITIONS,
            "type_vocab_size": 2,
            "vocab_size": vocab_size,
            "layer_norm_eps": 1e-12,
            "pad_token_id": 0,
            "position_embedding_type": "absolute"
        }),
    )?;
    write_json(
        &dir.join("sentence_bert_config.json"),
        &json!({ "max_seq_length": TINY_MAX_SEQ_LENGTH, "do_lower_case": false }),
    )?;
    write_json(
        &dir.join("1_Pooling").join("config.json"),
        &json!({
            "word_embedding_dimension": TINY_HIDDEN,
            "pooling_mode_cls_token": false,
            "pooling_mode_mean_tokens": true,
            "pooling_mode_max_tokens": false,
            "pooling_mode_mean_sqrt_len_tokens": false
        }),
    )?;

    let weights = random_weights(vocab_size)?;
    let weights_path = dir.join("model.safetensors");
    candle_core::safetensors::save(&weights, &weights_path)
        .with_context(|| format!("writing {}", weights_path.display()))?;
    Ok(dir.to_path_buf())
}

fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// splitmix64: a fixed, dependency-free generator so the tiny model is identical everywhere.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [-scale, scale].
    fn tensor(&mut self, shape: &[usize], scale: f32) -> candle_core::Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| (self.next_f32() * 2.0 - 1.0) * scale)
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu)
    }
}

fn random_weights(vocab: usize) -> anyhow::Result<HashMap<String, Tensor>> {
    let mut rng = Rng(SEED);
    let (h, i) = (TINY_HIDDEN, TINY_INTERMEDIATE);
    let mut w = HashMap::new();
    let ones = |n: usize| Tensor::ones(n, candle_core::DType::F32, &Device::Cpu);
    let mut put = |name: String, t: Tensor| {
        w.insert(name, t);
    };
    put(
        "embeddings.word_embeddings.weight".into(),
        rng.tensor(&[vocab, h], 0.5)?,
    );
    put(
        "embeddings.position_embeddings.weight".into(),
        rng.tensor(&[TINY_POSITIONS, h], 0.5)?,
    );
    put(
        "embeddings.token_type_embeddings.weight".into(),
        rng.tensor(&[2, h], 0.5)?,
    );
    put("embeddings.LayerNorm.weight".into(), ones(h)?);
    put("embeddings.LayerNorm.bias".into(), rng.tensor(&[h], 0.1)?);
    for l in 0..TINY_LAYERS {
        let p = format!("encoder.layer.{l}");
        for (name, out, inp) in [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", i, h),
            ("output.dense", h, i),
        ] {
            let scale = 1.0 / (inp as f32).sqrt();
            put(
                format!("{p}.{name}.weight"),
                rng.tensor(&[out, inp], scale)?,
            );
            put(format!("{p}.{name}.bias"), rng.tensor(&[out], 0.1)?);
        }
        for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
            put(format!("{p}.{norm}.weight"), ones(h)?);
            put(format!("{p}.{norm}.bias"), rng.tensor(&[h], 0.1)?);
        }
    }
    Ok(w)
}

/// A BERT-style uncased WordPiece tokenizer over a small vocabulary: special tokens, single
/// characters, their `##` continuations and a few whole words.
fn small_wordpiece_tokenizer() -> serde_json::Value {
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let chars: Vec<char> = ('a'..='z').chain('0'..='9').collect();
    vocab.extend(chars.iter().map(|c| c.to_string()));
    vocab.extend(chars.iter().map(|c| format!("##{c}")));
    vocab.extend(".,!?;:'\"-()/".chars().map(|c| c.to_string()));
    vocab.extend(
        [
            "the",
            "a",
            "is",
            "of",
            "and",
            "to",
            "in",
            "hello",
            "world",
            "test",
            "text",
            "embedding",
            "model",
            "this",
            "that",
            "search",
            "query",
            "document",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let vocab_map: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let added: Vec<serde_json::Value> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab_map}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_tokenizer_is_valid_and_splits_words() {
        let dir = std::env::temp_dir().join(format!("tiny-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        write_json(&path, &small_wordpiece_tokenizer()).unwrap();
        let tok = tokenizers::Tokenizer::from_file(&path).unwrap();
        let enc = tok.encode("Hello xyz", true).unwrap();
        assert_eq!(
            enc.get_tokens(),
            &["[CLS]", "hello", "x", "##y", "##z", "[SEP]"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
