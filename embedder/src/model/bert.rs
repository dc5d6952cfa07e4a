//! A BERT encoder forward pass written for batched CPU inference.
//!
//! Layout choices (why this is not candle-transformers' BertModel):
//! - Token-wise work (embeddings, every linear layer, GELU, LayerNorm) runs on the batch *packed*:
//!   all sequences' tokens stacked as one [tokens, hidden] matrix with no padding, so each linear
//!   layer is a single GEMM and short texts in a batch with a long one cost nothing extra.
//! - Attention runs per sequence and head at the sequence's own length, reading Q, K and V in
//!   place from the packed QKV matrix: no padding, no mask, no transposed copies of the batch.
//! - Q, K and V are one fused [3*hidden, hidden] projection; the 1/sqrt(head_dim) scale is folded
//!   into the Q weights at load.
//! - f32 weights are packed once at load for our GEMM (`gemm.rs`); LayerNorm, GELU and softmax
//!   are vectorised loops (`ops.rs`). candle loads the safetensors and runs the INT8 (q8_0)
//!   variant's matmuls (`linear.rs`).
use std::collections::HashMap;

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::config::{BertConfig, Quantization};
use super::error::ModelError;
use super::gemm::{gemm, PackedB};
use super::linear::Linear;
use super::ops;
use super::qgemm::Int8Scheme;

/// Attention of all heads of a batch runs on rayon's threads from this many multiply-adds on.
const PARALLEL_ATTENTION_MACS: usize = 1 << 18;

/// The linear layers of an encoder layer, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Proj {
    Qkv,
    AttnOut,
    FfnUp,
    FfnDown,
}

/// Shown the input of every linear layer of a forward pass, `(layer, projection, input)`: the
/// INT8 calibration records activation ranges with it. What it returns, if anything, replaces
/// that input for the projection only (studies of quantisation error, tests).
type Tap<'a> = &'a mut dyn FnMut(usize, Proj, &[f32]) -> Option<Vec<f32>>;

/// Stages of a forward pass, for [`Bert::forward_profiled`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Embedding lookup and its LayerNorm.
    Embeddings,
    /// The fused Q, K, V projection.
    Qkv,
    /// Q·Kᵀ, softmax and ·V of every head (repacks included).
    Attention,
    /// The attention output projection.
    AttentionOutput,
    /// Both LayerNorms of every layer.
    LayerNorm,
    /// The FFN up-projection.
    FfnUp,
    /// GELU.
    Gelu,
    /// The FFN down-projection.
    FfnDown,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::Embeddings,
        Stage::Qkv,
        Stage::Attention,
        Stage::AttentionOutput,
        Stage::LayerNorm,
        Stage::FfnUp,
        Stage::Gelu,
        Stage::FfnDown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Embeddings => "embeddings",
            Stage::Qkv => "qkv projection",
            Stage::Attention => "attention",
            Stage::AttentionOutput => "attention output",
            Stage::LayerNorm => "layernorm",
            Stage::FfnUp => "ffn up",
            Stage::Gelu => "gelu",
            Stage::FfnDown => "ffn down",
        }
    }
}

/// Wall time per [`Stage`], summed over the layers of one or more forward passes.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    seconds: [f64; Stage::ALL.len()],
}

impl Profile {
    pub fn seconds(&self, stage: Stage) -> f64 {
        self.seconds[stage as usize]
    }

    pub fn total(&self) -> f64 {
        self.seconds.iter().sum()
    }

    pub fn add(&mut self, other: &Profile) {
        for (a, b) in self.seconds.iter_mut().zip(other.seconds) {
            *a += b;
        }
    }
}

/// Runs `f`, adding its wall time to `stage` of `prof` when profiling (otherwise no clock read).
fn timed<T>(prof: &mut Option<&mut Profile>, stage: Stage, f: impl FnOnce() -> T) -> T {
    match prof {
        None => f(),
        Some(p) => {
            let start = std::time::Instant::now();
            let out = f();
            p.seconds[stage as usize] += start.elapsed().as_secs_f64();
            out
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    GeluErf,
    GeluTanh,
}

#[derive(Debug)]
struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    fn forward(&self, x: &mut [f32]) {
        ops::layer_norm(x, self.weight.len(), &self.weight, &self.bias, self.eps);
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
    word_embeddings: Vec<f32>,
    position_embeddings: Vec<f32>,
    token_type_embeddings: Vec<f32>,
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

/// Names of the weights, with or without the `bert.` prefix some checkpoints carry.
struct Weights {
    map: HashMap<String, Tensor>,
    prefix: &'static str,
}

/// A weight as f32 values with its shape.
struct Loaded {
    values: Vec<f32>,
    dims: Vec<usize>,
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

    fn get(&self, name: &str) -> Result<Loaded, ModelError> {
        let full = format!("{}{name}", self.prefix);
        let t = self.map.get(&full).ok_or(ModelError::MissingWeight(full))?;
        Ok(Loaded {
            values: t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
            dims: t.dims().to_vec(),
        })
    }

    /// A weight that must have exactly `dims`; checkpoints that disagree with their config
    /// fail at load with the name of the tensor, not with an index panic in the first request.
    fn get_shaped(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>, ModelError> {
        let w = self.get(name)?;
        if w.dims != dims {
            return Err(ModelError::WeightShape(format!(
                "weight {}{name} has shape {:?}, the config implies {dims:?}",
                self.prefix, w.dims
            )));
        }
        Ok(w.values)
    }

    /// LayerNorm parameters are `weight`/`bias` in newer checkpoints, `gamma`/`beta` in older ones.
    fn layer_norm(&self, name: &str, width: usize, eps: f64) -> Result<LayerNorm, ModelError> {
        let pick = |a: &str, b: &str| {
            self.get_shaped(&format!("{name}.{a}"), &[width])
                .or_else(|_| self.get_shaped(&format!("{name}.{b}"), &[width]))
        };
        Ok(LayerNorm {
            weight: pick("weight", "gamma")?,
            bias: pick("bias", "beta")?,
            eps: eps as f32,
        })
    }

    fn linear(
        &self,
        name: &str,
        outputs: usize,
        inputs: usize,
        q: Quantization,
    ) -> Result<Linear, ModelError> {
        let w = self.get_shaped(&format!("{name}.weight"), &[outputs, inputs])?;
        let b = self.get_shaped(&format!("{name}.bias"), &[outputs])?;
        Ok(Linear::new(&w, b, outputs, inputs, q)?)
    }
}

impl Bert {
    /// Builds the encoder from a safetensors weight map (consumed: the tensors are dropped once
    /// packed or quantised).
    pub fn load(
        cfg: &BertConfig,
        weights: HashMap<String, Tensor>,
        quantization: Quantization,
    ) -> Result<Self, ModelError> {
        let w = Weights::new(weights);
        let hidden = cfg.hidden_size;
        let heads = cfg.num_attention_heads;
        let head_dim = hidden / heads;
        let inter = cfg.intermediate_size;
        let eps = cfg.layer_norm_eps;
        let scale = 1.0 / (head_dim as f32).sqrt();

        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let mut qkv_w = Vec::with_capacity(3 * hidden * hidden);
            let mut qkv_b = Vec::with_capacity(3 * hidden);
            for (part, factor) in [("query", scale), ("key", 1.0), ("value", 1.0)] {
                let name = format!("{p}.attention.self.{part}");
                let pw = w.get_shaped(&format!("{name}.weight"), &[hidden, hidden])?;
                let pb = w.get_shaped(&format!("{name}.bias"), &[hidden])?;
                qkv_w.extend(pw.iter().map(|v| v * factor));
                qkv_b.extend(pb.iter().map(|v| v * factor));
            }
            layers.push(Layer {
                qkv: Linear::new(&qkv_w, qkv_b, 3 * hidden, hidden, quantization)?,
                attn_out: w.linear(
                    &format!("{p}.attention.output.dense"),
                    hidden,
                    hidden,
                    quantization,
                )?,
                attn_norm: w.layer_norm(&format!("{p}.attention.output.LayerNorm"), hidden, eps)?,
                intermediate: w.linear(
                    &format!("{p}.intermediate.dense"),
                    inter,
                    hidden,
                    quantization,
                )?,
                output: w.linear(&format!("{p}.output.dense"), hidden, inter, quantization)?,
                output_norm: w.layer_norm(&format!("{p}.output.LayerNorm"), hidden, eps)?,
            });
        }

        let activation = match cfg.hidden_act.as_str() {
            "gelu" => Activation::GeluErf,
            _ => Activation::GeluTanh,
        };
        Ok(Self {
            word_embeddings: w.get_shaped(
                "embeddings.word_embeddings.weight",
                &[cfg.vocab_size, hidden],
            )?,
            position_embeddings: w.get_shaped(
                "embeddings.position_embeddings.weight",
                &[cfg.max_position_embeddings, hidden],
            )?,
            token_type_embeddings: w.get_shaped(
                "embeddings.token_type_embeddings.weight",
                &[cfg.type_vocab_size, hidden],
            )?,
            embeddings_norm: w.layer_norm("embeddings.LayerNorm", hidden, eps)?,
            layers,
            activation,
            hidden,
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
        self.forward_observed(batch, None, None)
    }

    /// `forward`, adding the wall time of each [`Stage`] to `prof` (benchmarks).
    pub fn forward_profiled(
        &self,
        batch: &[Sequence<'_>],
        prof: &mut Profile,
    ) -> Result<Vec<f32>, ModelError> {
        self.forward_observed(batch, None, Some(prof))
    }

    /// `forward`, showing `tap` the input of every linear layer (see [`Tap`]).
    fn forward_observed(
        &self,
        batch: &[Sequence<'_>],
        mut tap: Option<Tap<'_>>,
        mut prof: Option<&mut Profile>,
    ) -> Result<Vec<f32>, ModelError> {
        self.check(batch)?;
        let h = self.hidden;
        let lens: Vec<usize> = batch.iter().map(|s| s.ids.len()).collect();
        let total: usize = lens.iter().sum();
        if total == 0 {
            return Ok(Vec::new());
        }

        let mut x = vec![0f32; total * h];
        timed(&mut prof, Stage::Embeddings, || {
            let rows = batch
                .iter()
                .flat_map(|s| s.ids.iter().zip(s.type_ids).enumerate());
            for (row, (pos, (&id, &ty))) in x.chunks_exact_mut(h).zip(rows) {
                let word = &self.word_embeddings[id as usize * h..][..h];
                let position = &self.position_embeddings[pos * h..][..h];
                let token_type = &self.token_type_embeddings[ty as usize * h..][..h];
                for (((v, a), b), c) in row.iter_mut().zip(word).zip(position).zip(token_type) {
                    *v = a + b + c;
                }
            }
            self.embeddings_norm.forward(&mut x);
        });

        for (i, layer) in self.layers.iter().enumerate() {
            let tap = tap.as_deref_mut().map(|t| (i, t));
            x = self.layer_forward(layer, x, &lens, total, tap, prof.as_deref_mut())?;
        }
        Ok(x)
    }

    /// Converts the linear layers to INT8 (`qgemm.rs`) as [`Int8Scheme::MINILM`] says, from
    /// per-channel input ranges observed while running `calibration` through the f32 model: the
    /// 16 input channels of the largest range of each layer stay f32 (outlier decomposition).
    ///
    /// The FFN's down-projection stays f32: its input (GELU output, 1536 wide, sparse with a
    /// long positive tail, and a few channels at 15-24 on the [CLS] row) is where per-row 8-bit
    /// rounding loses the most: in INT8 too, with 16 to 96 outlier channels, short texts fall to
    /// 0.9967-0.9975 (`bert_study.rs`). The other three carry 2/3 of the FLOPs. Worst cosine
    /// to f32 as shipped: 0.99922 on 16 short texts, 0.99950 on the operator's 16 parity texts,
    /// 0.99971 over the bench's 64 (smoothing alone, as before: 0.99692, 0.99894, 0.99950).
    pub fn into_int8(self, calibration: &[Sequence<'_>]) -> Result<Self, ModelError> {
        self.into_int8_where(
            calibration,
            |_, proj| proj != Proj::FfnDown,
            Int8Scheme::MINILM,
        )
    }

    /// `into_int8` for the projections `pick(layer, projection)` selects; the others stay f32.
    pub(crate) fn into_int8_where(
        mut self,
        calibration: &[Sequence<'_>],
        pick: impl Fn(usize, Proj) -> bool,
        scheme: Int8Scheme,
    ) -> Result<Self, ModelError> {
        let stats = self.calibrate(calibration)?;
        for (i, (layer, st)) in self.layers.iter_mut().zip(&stats).enumerate() {
            for (proj, linear, act_max) in [
                (Proj::Qkv, &mut layer.qkv, &st.qkv),
                (Proj::AttnOut, &mut layer.attn_out, &st.attn_out),
                (Proj::FfnUp, &mut layer.intermediate, &st.intermediate),
                (Proj::FfnDown, &mut layer.output, &st.output),
            ] {
                if !pick(i, proj) {
                    continue;
                }
                if let Some(q) = linear.to_int8(act_max, scheme) {
                    *linear = q;
                }
            }
        }
        Ok(self)
    }

    /// Per layer, the largest |input| per channel of every linear layer over `calibration`.
    fn calibrate(&self, calibration: &[Sequence<'_>]) -> Result<Vec<InputStats>, ModelError> {
        let mut stats: Vec<InputStats> = self.layers.iter().map(InputStats::new).collect();
        self.forward_observed(
            calibration,
            Some(&mut |layer, proj, x| {
                record_channel_max(stats[layer].of(proj), x);
                None
            }),
            None,
        )?;
        Ok(stats)
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

    #[allow(clippy::type_complexity)]
    fn layer_forward(
        &self,
        layer: &Layer,
        x: Vec<f32>,
        lens: &[usize],
        total: usize,
        mut tap: Option<(
            usize,
            &mut (dyn FnMut(usize, Proj, &[f32]) -> Option<Vec<f32>> + '_),
        )>,
        mut prof: Option<&mut Profile>,
    ) -> candle_core::Result<Vec<f32>> {
        // What the tap replaces an input with, if anything (studies only; None when serving).
        let mut observe = |proj: Proj, x: &[f32]| match tap.as_mut() {
            Some((i, t)) => t(*i, proj, x),
            None => None,
        };
        let seen = observe(Proj::Qkv, &x);
        let mut qkv = vec![0f32; total * layer.qkv.outputs()];
        timed(&mut prof, Stage::Qkv, || {
            layer
                .qkv
                .forward_add(seen.as_deref().unwrap_or(&x), total, &mut qkv)
        })?;
        let mut ctx = vec![0f32; total * self.hidden];
        timed(&mut prof, Stage::Attention, || {
            self.attention(&qkv, lens, &mut ctx)
        });
        let seen = observe(Proj::AttnOut, &ctx);

        // The residual is the starting value of the projection's output.
        let mut attn = x;
        timed(&mut prof, Stage::AttentionOutput, || {
            layer
                .attn_out
                .forward_add(seen.as_deref().unwrap_or(&ctx), total, &mut attn)
        })?;
        timed(&mut prof, Stage::LayerNorm, || {
            layer.attn_norm.forward(&mut attn)
        });
        let seen = observe(Proj::FfnUp, &attn);

        let mut inter = vec![0f32; total * layer.intermediate.outputs()];
        timed(&mut prof, Stage::FfnUp, || {
            layer
                .intermediate
                .forward_add(seen.as_deref().unwrap_or(&attn), total, &mut inter)
        })?;
        timed(&mut prof, Stage::Gelu, || match self.activation {
            Activation::GeluErf => ops::gelu_erf(&mut inter),
            Activation::GeluTanh => ops::gelu_tanh(&mut inter),
        });
        let seen = observe(Proj::FfnDown, &inter);
        let mut out = attn;
        timed(&mut prof, Stage::FfnDown, || {
            layer
                .output
                .forward_add(seen.as_deref().unwrap_or(&inter), total, &mut out)
        })?;
        timed(&mut prof, Stage::LayerNorm, || {
            layer.output_norm.forward(&mut out)
        });
        Ok(out)
    }

    /// Multi-head attention of every sequence; `qkv` is packed [tokens, 3*hidden] (Q, K, V
    /// side by side), `ctx` packed [tokens, hidden] (overwritten).
    ///
    /// Every (sequence, head) task writes its [len, head_dim] result into its own contiguous
    /// slice of a head-major buffer ([head][token][dim]), split with `chunks_exact_mut` and
    /// `split_at_mut`: the tasks hold disjoint `&mut` slices and need no `unsafe`. One copy then
    /// interleaves the heads into `ctx` (a few hundred KiB per layer, next to megaflops of GEMM).
    fn attention(&self, qkv: &[f32], lens: &[usize], ctx: &mut [f32]) {
        let (h, d) = (self.hidden, self.head_dim);
        let total: usize = lens.iter().sum();
        let mut by_head = vec![0f32; self.heads * total * d];
        let mut tasks = Vec::with_capacity(lens.len() * self.heads);
        for (head, mut rest) in by_head.chunks_exact_mut(total * d).enumerate() {
            let mut offset = 0;
            for &len in lens {
                let (out, tail) = rest.split_at_mut(len * d);
                rest = tail;
                tasks.push(HeadTask {
                    offset,
                    len,
                    head,
                    out,
                });
                offset += len;
            }
        }
        let macs: usize = lens.iter().map(|l| 2 * l * l * h).sum();
        // Scratch buffers are reused across the tasks one thread runs, not allocated per head.
        let run = |scratch: &mut AttentionScratch, t: HeadTask<'_>| {
            attend_one(qkv, h, d, t.offset, t.len, t.head, t.out, scratch);
        };
        if macs >= PARALLEL_ATTENTION_MACS && rayon::current_num_threads() > 1 {
            tasks
                .into_par_iter()
                .for_each_init(AttentionScratch::default, run);
        } else {
            let mut scratch = AttentionScratch::default();
            tasks.into_iter().for_each(|t| run(&mut scratch, t));
        }
        for (head, src) in by_head.chunks_exact(total * d).enumerate() {
            for (row, from) in ctx.chunks_exact_mut(h).zip(src.chunks_exact(d)) {
                row[head * d..(head + 1) * d].copy_from_slice(from);
            }
        }
    }
}

/// One head of one sequence: tokens [offset, offset + len) of the batch, and the [len, head_dim]
/// slice its result goes to.
struct HeadTask<'a> {
    offset: usize,
    len: usize,
    head: usize,
    out: &'a mut [f32],
}

/// Per input channel, the largest |activation| seen by the linear layers of one encoder layer.
struct InputStats {
    qkv: Vec<f32>,
    attn_out: Vec<f32>,
    intermediate: Vec<f32>,
    output: Vec<f32>,
}

impl InputStats {
    fn new(layer: &Layer) -> Self {
        Self {
            qkv: vec![0.0; layer.qkv.inputs()],
            attn_out: vec![0.0; layer.attn_out.inputs()],
            intermediate: vec![0.0; layer.intermediate.inputs()],
            output: vec![0.0; layer.output.inputs()],
        }
    }

    fn of(&mut self, proj: Proj) -> &mut [f32] {
        match proj {
            Proj::Qkv => &mut self.qkv,
            Proj::AttnOut => &mut self.attn_out,
            Proj::FfnUp => &mut self.intermediate,
            Proj::FfnDown => &mut self.output,
        }
    }
}

fn record_channel_max(max: &mut [f32], x: &[f32]) {
    for row in x.chunks_exact(max.len()) {
        for (m, v) in max.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
}

#[derive(Default)]
struct AttentionScratch {
    keys: PackedB,
    values: PackedB,
    scores: Vec<f32>,
}

/// softmax(Q Kᵀ) V for one head of one sequence, added into `out` ([len, d], zero on entry).
#[allow(clippy::too_many_arguments)]
fn attend_one(
    qkv: &[f32],
    h: usize,
    d: usize,
    offset: usize,
    len: usize,
    head: usize,
    out: &mut [f32],
    s: &mut AttentionScratch,
) {
    let stride = 3 * h;
    let q = &qkv[offset * stride + head * d..];
    let k = &qkv[offset * stride + h + head * d..];
    let v = &qkv[offset * stride + 2 * h + head * d..];
    // Kᵀ: element (dim, token) = k[token * stride + dim]; V: (token, dim) = v[token * stride + dim].
    s.keys.repack_strided(k, d, len, 1, stride);
    s.values.repack_strided(v, len, d, stride, 1);
    s.scores.clear();
    s.scores.resize(len * len, 0.0);
    gemm(q, stride, len, &s.keys, None, &mut s.scores, len, false);
    ops::softmax_rows(&mut s.scores, len);
    gemm(&s.scores, len, len, &s.values, None, out, d, false);
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

#[cfg(test)]
#[path = "bert_study.rs"]
mod study;
