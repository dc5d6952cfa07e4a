//! A BERT encoder forward pass written for batched CPU inference.
//!
//! Layout choices (why this is not candle-transformers' BertModel):
//! - Token-wise work (embeddings, every linear layer, GELU, LayerNorm) runs on the batch *packed*:
//!   all sequences' tokens stacked as one [tokens, hidden] matrix with no padding, so each linear
//!   layer is a single GEMM and short texts in a batch with a long one cost nothing extra.
//! - Only attention needs a per-sequence view. When every sequence has the same length it is a
//!   plain reshape; otherwise rows are gathered into a padded [batch, len, ..] view and a key mask is
//!   added, and the result is scattered back to the packed layout.
//! - Q, K and V are one fused [3*hidden, hidden] projection; the 1/sqrt(head_dim) scale is folded
//!   into the Q weights at load.
//! - Linear layers are f32 or INT8 q8_0 (see `linear.rs`).
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use super::config::{BertConfig, Quantization};
use super::error::ModelError;
use super::linear::Linear;

/// Added to attention scores of padding keys; large enough that exp() underflows to exactly 0.
const MASKED: f32 = -1.0e9;

#[derive(Debug, Clone, Copy)]
enum Activation {
    GeluErf,
    GeluTanh,
}

#[derive(Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

#[derive(Debug)]
struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

#[derive(Debug)]
pub struct Bert {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    activation: Activation,
    hidden: usize,
    heads: usize,
    head_dim: usize,
    max_positions: usize,
    vocab_size: usize,
    type_vocab_size: usize,
}

/// One input sequence: token ids and token type ids of the same length.
#[derive(Debug, Clone, Copy)]
pub struct Sequence<'a> {
    pub ids: &'a [u32],
    pub type_ids: &'a [u32],
}

/// How attention sees the packed batch.
enum AttentionView {
    /// All sequences have the same length: a reshape suffices, no mask.
    Uniform { batch: usize, len: usize },
    /// Mixed lengths: gather packed rows into [batch, len] slots, mask padding keys, scatter back.
    Padded {
        batch: usize,
        len: usize,
        gather: Tensor,
        scatter: Tensor,
        mask: Tensor,
    },
}

/// Names of the weights, with or without the `bert.` prefix some checkpoints carry.
struct Weights {
    map: HashMap<String, Tensor>,
    prefix: &'static str,
}

impl Weights {
    fn new(map: HashMap<String, Tensor>) -> Self {
        let prefix = if map.contains_key("embeddings.word_embeddings.weight") {
            ""
        } else {
            "bert."
        };
        Self { map, prefix }
    }

    fn get(&self, name: &str) -> Result<Tensor, ModelError> {
        let full = format!("{}{name}", self.prefix);
        let t = self.map.get(&full).ok_or(ModelError::MissingWeight(full))?;
        Ok(t.to_dtype(DType::F32)?)
    }

    /// LayerNorm parameters are `weight`/`bias` in newer checkpoints, `gamma`/`beta` in older ones.
    fn layer_norm(&self, name: &str, eps: f64) -> Result<LayerNorm, ModelError> {
        let pick = |a: &str, b: &str| {
            self.get(&format!("{name}.{a}"))
                .or_else(|_| self.get(&format!("{name}.{b}")))
        };
        Ok(LayerNorm {
            weight: pick("weight", "gamma")?,
            bias: pick("bias", "beta")?,
            eps: eps as f32,
        })
    }

    fn linear(&self, name: &str, q: Quantization) -> Result<Linear, ModelError> {
        let w = self.get(&format!("{name}.weight"))?;
        let b = self.get(&format!("{name}.bias"))?;
        Ok(Linear::new(&w, b, q)?)
    }
}

impl Bert {
    /// Builds the encoder from a safetensors weight map (consumed: f32 copies of quantised
    /// weights are dropped once quantised).
    pub fn load(
        cfg: &BertConfig,
        weights: HashMap<String, Tensor>,
        quantization: Quantization,
    ) -> Result<Self, ModelError> {
        let w = Weights::new(weights);
        let heads = cfg.num_attention_heads;
        let head_dim = cfg.hidden_size / heads;
        let eps = cfg.layer_norm_eps;
        let scale = 1.0 / (head_dim as f64).sqrt();

        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let part = |n: &str| -> Result<(Tensor, Tensor), ModelError> {
                Ok((
                    w.get(&format!("{p}.attention.self.{n}.weight"))?,
                    w.get(&format!("{p}.attention.self.{n}.bias"))?,
                ))
            };
            let (qw, qb) = part("query")?;
            let (kw, kb) = part("key")?;
            let (vw, vb) = part("value")?;
            let qkv_w = Tensor::cat(&[&(qw * scale)?, &kw, &vw], 0)?;
            let qkv_b = Tensor::cat(&[&(qb * scale)?, &kb, &vb], 0)?;
            layers.push(Layer {
                qkv: Linear::new(&qkv_w, qkv_b, quantization)?,
                attn_out: w.linear(&format!("{p}.attention.output.dense"), quantization)?,
                attn_norm: w.layer_norm(&format!("{p}.attention.output.LayerNorm"), eps)?,
                intermediate: w.linear(&format!("{p}.intermediate.dense"), quantization)?,
                output: w.linear(&format!("{p}.output.dense"), quantization)?,
                output_norm: w.layer_norm(&format!("{p}.output.LayerNorm"), eps)?,
            });
        }

        let activation = match cfg.hidden_act.as_str() {
            "gelu" => Activation::GeluErf,
            _ => Activation::GeluTanh,
        };
        Ok(Self {
            word_embeddings: w.get("embeddings.word_embeddings.weight")?,
            position_embeddings: w.get("embeddings.position_embeddings.weight")?,
            token_type_embeddings: w.get("embeddings.token_type_embeddings.weight")?,
            embeddings_norm: w.layer_norm("embeddings.LayerNorm", eps)?,
            layers,
            activation,
            hidden: cfg.hidden_size,
            heads,
            head_dim,
            max_positions: cfg.max_position_embeddings,
            vocab_size: cfg.vocab_size,
            type_vocab_size: cfg.type_vocab_size,
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Runs the encoder over a batch; returns the last hidden states packed row-major:
    /// sequence 0's tokens, then sequence 1's, ..., `hidden_size()` floats per token.
    pub fn forward(&self, batch: &[Sequence<'_>]) -> Result<Vec<f32>, ModelError> {
        self.check(batch)?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let dev = Device::Cpu;
        let lens: Vec<usize> = batch.iter().map(|s| s.ids.len()).collect();
        let total: usize = lens.iter().sum();

        let mut ids = Vec::with_capacity(total);
        let mut types = Vec::with_capacity(total);
        let mut positions = Vec::with_capacity(total);
        for s in batch {
            ids.extend_from_slice(s.ids);
            types.extend_from_slice(s.type_ids);
            positions.extend(0..s.ids.len() as u32);
        }
        let ids = Tensor::from_vec(ids, total, &dev)?;
        let types = Tensor::from_vec(types, total, &dev)?;
        let positions = Tensor::from_vec(positions, total, &dev)?;

        let x = self.word_embeddings.index_select(&ids, 0)?;
        let x = (x + self.position_embeddings.index_select(&positions, 0)?)?;
        let x = (x + self.token_type_embeddings.index_select(&types, 0)?)?;
        let mut x = self.embeddings_norm.forward(&x)?;

        let view = attention_view(&lens, &dev)?;
        for layer in &self.layers {
            x = self.layer_forward(layer, &x, &view)?;
        }
        Ok(x.flatten_all()?.to_vec1::<f32>()?)
    }

    fn check(&self, batch: &[Sequence<'_>]) -> Result<(), ModelError> {
        for (i, s) in batch.iter().enumerate() {
            let bad = |why: String| ModelError::InvalidInput(format!("sequence {i}: {why}"));
            if s.ids.is_empty() {
                return Err(bad("no tokens".into()));
            }
            if s.ids.len() != s.type_ids.len() {
                return Err(bad("ids and type_ids differ in length".into()));
            }
            if s.ids.len() > self.max_positions {
                return Err(bad(format!(
                    "{} tokens exceed the {} positions of the model",
                    s.ids.len(),
                    self.max_positions
                )));
            }
            if let Some(id) = s.ids.iter().find(|&&id| id as usize >= self.vocab_size) {
                return Err(bad(format!("token id {id} is outside the vocabulary")));
            }
            if let Some(t) = s
                .type_ids
                .iter()
                .find(|&&t| t as usize >= self.type_vocab_size)
            {
                return Err(bad(format!(
                    "token type {t} is outside the type vocabulary"
                )));
            }
        }
        Ok(())
    }

    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        view: &AttentionView,
    ) -> candle_core::Result<Tensor> {
        let qkv = layer.qkv.forward(x)?;
        let ctx = self.attention(&qkv, view)?;
        let attn = (layer.attn_out.forward(&ctx)? + x)?;
        let attn = layer.attn_norm.forward(&attn)?;

        let h = layer.intermediate.forward(&attn)?;
        let h = match self.activation {
            Activation::GeluErf => h.gelu_erf()?,
            Activation::GeluTanh => h.gelu()?,
        };
        let out = (layer.output.forward(&h)? + attn)?;
        layer.output_norm.forward(&out)
    }

    /// `qkv` is packed [tokens, 3*hidden]; returns the attention context packed [tokens, hidden].
    fn attention(&self, qkv: &Tensor, view: &AttentionView) -> candle_core::Result<Tensor> {
        let (h, d) = (self.heads, self.head_dim);
        match view {
            AttentionView::Uniform { batch, len } => {
                let ctx = self.attend(qkv, *batch, *len, None)?;
                ctx.reshape((batch * len, h * d))
            }
            AttentionView::Padded {
                batch,
                len,
                gather,
                scatter,
                mask,
            } => {
                let padded = qkv.index_select(gather, 0)?;
                let ctx = self.attend(&padded, *batch, *len, Some(mask))?;
                ctx.reshape((batch * len, h * d))?.index_select(scatter, 0)
            }
        }
    }

    /// Multi-head attention over `qkv` laid out as [batch*len, 3*hidden]; returns
    /// [batch, len, heads, head_dim] contiguous.
    fn attend(
        &self,
        qkv: &Tensor,
        batch: usize,
        len: usize,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (h, d) = (self.heads, self.head_dim);
        // [b, t, 3, h, d] -> [3, b, h, t, d]: one copy, after which q, k and v are each a
        // contiguous block that the batched matmul can use directly.
        let qkv = qkv
            .reshape((batch, len, 3, h, d))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let q = qkv.get(0)?;
        let k = qkv.get(1)?;
        let v = qkv.get(2)?;
        let scores = q.matmul(&k.t()?)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        probs.matmul(&v)?.transpose(1, 2)?.contiguous()
    }
}

fn attention_view(lens: &[usize], dev: &Device) -> candle_core::Result<AttentionView> {
    let batch = lens.len();
    let len = lens.iter().copied().max().unwrap_or(0);
    if lens.iter().all(|&l| l == len) {
        return Ok(AttentionView::Uniform { batch, len });
    }
    let total: usize = lens.iter().sum();
    let mut gather = Vec::with_capacity(batch * len);
    let mut scatter = Vec::with_capacity(total);
    let mut mask = Vec::with_capacity(batch * len);
    let mut offset = 0u32;
    for (i, &l) in lens.iter().enumerate() {
        for j in 0..len {
            // Padding slots read any real row of their own sequence; their keys are masked and
            // their outputs are never scattered back.
            gather.push(offset + j.min(l - 1) as u32);
            mask.push(if j < l { 0.0 } else { MASKED });
        }
        scatter.extend((0..l).map(|j| (i * len + j) as u32));
        offset += l as u32;
    }
    Ok(AttentionView::Padded {
        batch,
        len,
        gather: Tensor::from_vec(gather, batch * len, dev)?,
        scatter: Tensor::from_vec(scatter, total, dev)?,
        mask: Tensor::from_vec(mask, (batch, 1, 1, len), dev)?,
    })
}

/// Splits the packed output of `Bert::forward` into one slice per sequence.
pub fn split_packed<'a>(packed: &'a [f32], lens: &[usize], hidden: usize) -> Vec<&'a [f32]> {
    let mut out = Vec::with_capacity(lens.len());
    let mut start = 0;
    for &l in lens {
        out.push(&packed[start..start + l * hidden]);
        start += l * hidden;
    }
    out
}
