//! Where INT8's error against f32 comes from on all-MiniLM-L6-v2, and what removes it: ignored
//! tests that print tables, run by hand (needs `make model`):
//!
//! `cargo test -p candle-embedder --lib bert::study -- --ignored --nocapture --test-threads 1`
use std::collections::HashMap;

use super::*;
use crate::model::pooling::{cosine, l2_normalize, pool};
use crate::model::qgemm::Int8Scheme;
use crate::model::testutil::minilm_dir;
use crate::model::{calibration, Encoded, Model, ModelOptions, Pooling};

/// The short texts the operator's parity probe and users send, where INT8 is weakest.
const SHORT: &[&str] = &[
    "yes",
    "no",
    "ok",
    "hello",
    "a",
    "I",
    "?",
    "!!!",
    "...",
    "🚀",
    "👍",
    "😀",
    "?!... ,;:",
    "-",
    "hi there",
    "thanks",
];

/// operator/src/decision/parity.rs `builtin_texts()` (read-only copy).
fn builtin() -> Vec<String> {
    let long =
        "The migration moves production embedding traffic from the legacy service to the new \
                server one step at a time, and every step is judged on latency, errors and the \
                embeddings themselves. "
            .repeat(12);
    [
        "hello",
        "What is the capital of France?",
        "Vector databases index embeddings for approximate nearest neighbour search.",
        long.trim_end(),
        "Der schnelle braune Fuchs springt über den faulen Hund.",
        "東京は日本の首都であり、世界最大の都市圏の一つです。",
        "机器学习模型将文本转换为向量。",
        "Привет, как дела? Это тестовое предложение.",
        "مرحبا بالعالم، هذه جملة للاختبار",
        "🚀🔥 launch day! 🎉🎉 👩‍💻",
        "?!... --- ;;; ((( ))) !!!",
        "1234567890 3.14159 2026-12-02T05:13:12Z",
        "fn main() { println!(\"{}\", 1 + 1); }",
        "a",
        "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
        "naïve café façade coöperate résumé",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// benches/inference.rs's 64 texts.
fn bench64() -> Vec<String> {
    const S: [&str; 8] = [
        "How do I reset my password?",
        "Best hiking trails near the lake",
        "The embedding server answers in a few milliseconds.",
        "Rust makes systems programming safer",
        "What is the capital of France?",
        "A man is eating food.",
        "canary rollout with automatic rollback",
        "Quarterly revenue grew by twelve percent",
    ];
    (0..64).map(|i| format!("{} #{i}", S[i % 8])).collect()
}

struct Sets {
    groups: Vec<(&'static str, Vec<String>, Vec<Encoded>)>,
    calib: Vec<Encoded>,
}

fn f32_model() -> Model {
    Model::load("minilm", &minilm_dir(), &ModelOptions::default()).expect("make model")
}

fn sets(m: &Model) -> Sets {
    let enc = |t: &[String]| m.encode(t, true).unwrap();
    let short: Vec<String> = SHORT.iter().map(|s| s.to_string()).collect();
    let calib: Vec<String> = calibration::TEXTS.iter().map(|s| s.to_string()).collect();
    Sets {
        groups: vec![
            ("short", short.clone(), enc(&short)),
            ("builtin", builtin(), enc(&builtin())),
            ("bench64", bench64(), enc(&bench64())),
        ],
        calib: enc(&calib),
    }
}

fn seqs(enc: &[Encoded]) -> Vec<Sequence<'_>> {
    enc.iter().map(Encoded::sequence).collect()
}

fn embed_with(bert: &Bert, enc: &[Encoded], tap: Option<Tap<'_>>) -> Vec<Vec<f32>> {
    let s = seqs(enc);
    let hidden = bert.forward_observed(&s, tap, None).unwrap();
    let lens: Vec<usize> = enc.iter().map(Encoded::len).collect();
    split_packed(&hidden, &lens, bert.hidden)
        .into_iter()
        .map(|t| {
            let mut v = pool(t, bert.hidden, Pooling::Mean);
            l2_normalize(&mut v);
            v
        })
        .collect()
}

/// Min cosine per set and the worst text overall.
fn report(label: &str, sets: &Sets, base: &[Vec<Vec<f32>>], got: &[Vec<Vec<f32>>]) -> f32 {
    let mut line = format!("{label:<44}");
    let mut worst = (f32::INFINITY, String::new());
    for ((name, texts, _), (b, g)) in sets.groups.iter().zip(base.iter().zip(got)) {
        let cos: Vec<f32> = b.iter().zip(g).map(|(x, y)| cosine(x, y)).collect();
        let (i, min) = cos
            .iter()
            .copied()
            .enumerate()
            .fold(
                (0, f32::INFINITY),
                |a, (i, c)| if c < a.1 { (i, c) } else { a },
            );
        line += &format!(" {name} {min:.5}");
        if min < worst.0 {
            worst = (min, texts[i].chars().take(20).collect());
        }
    }
    println!("{line}  worst {:.5} {:?}", worst.0, worst.1);
    worst.0
}

fn all_embeddings(bert: &Bert, sets: &Sets) -> Vec<Vec<Vec<f32>>> {
    sets.groups
        .iter()
        .map(|(_, _, e)| embed_with(bert, e, None))
        .collect()
}

/// The scheme INT8 used before outlier decomposition (SmoothQuant 0.6 alone).
const SMOOTH_ONLY: Int8Scheme = Int8Scheme {
    smooth_alpha: 0.6,
    outliers: 0,
};

/// Per-text cosines to f32 of the real INT8 kernels (FFN down-projection in f32), before (smoothing
/// only) and with the shipped scheme, and a few alternatives' minima.
#[test]
#[ignore]
fn per_text_cosines() {
    let m = f32_model();
    let sets = sets(&m);
    let base = all_embeddings(&m.bert, &sets);
    let calib = seqs(&sets.calib);
    let today = |_: usize, p: Proj| p != Proj::FfnDown;
    let with = |scheme: Int8Scheme| {
        let Model { bert, .. } = f32_model();
        let q = bert.into_int8_where(&calib, today, scheme).unwrap();
        all_embeddings(&q, &sets)
    };
    let before = with(SMOOTH_ONLY);
    let after = with(Int8Scheme::MINILM);
    println!("set      before  after   text");
    for (g, (name, texts, _)) in sets.groups.iter().enumerate() {
        if *name == "bench64" {
            continue;
        }
        for (i, t) in texts.iter().enumerate() {
            println!(
                "{name:<8} {:.5} {:.5} {:?}",
                cosine(&base[g][i], &before[g][i]),
                cosine(&base[g][i], &after[g][i]),
                t.chars().take(30).collect::<String>()
            );
        }
    }
    report("before: smoothing 0.6", &sets, &base, &before);
    report("after: Int8Scheme::MINILM", &sets, &base, &after);
    for (alpha, outliers) in [(0.0, 8), (0.0, 32), (0.3, 16), (0.3, 24), (0.6, 16)] {
        let scheme = Int8Scheme {
            smooth_alpha: alpha,
            outliers,
        };
        report(&format!("{scheme:?}"), &sets, &base, &with(scheme));
    }
}

/// One projection (or one kind of projection across layers) in INT8 at a time, the rest f32.
#[test]
#[ignore]
fn one_projection_at_a_time() {
    let m = f32_model();
    let sets = sets(&m);
    let base = all_embeddings(&m.bert, &sets);
    let calib = seqs(&sets.calib);
    let run = |label: String, pick: &dyn Fn(usize, Proj) -> bool| {
        let Model { bert, .. } = f32_model();
        let q = bert.into_int8_where(&calib, pick, SMOOTH_ONLY).unwrap();
        report(&label, &sets, &base, &all_embeddings(&q, &sets));
    };
    run("today (qkv, attn out, ffn up)".into(), &|_, p| {
        p != Proj::FfnDown
    });
    run("all four".into(), &|_, _| true);
    for proj in [Proj::Qkv, Proj::AttnOut, Proj::FfnUp, Proj::FfnDown] {
        run(format!("{proj:?} in every layer"), &|_, p| p == proj);
    }
    for layer in 0..6 {
        run(format!("layer {layer}: today's three"), &|l, p| {
            l == layer && p != Proj::FfnDown
        });
    }
    for layer in 0..6 {
        for proj in [Proj::Qkv, Proj::AttnOut, Proj::FfnUp] {
            run(format!("layer {layer} {proj:?}"), &|l, p| {
                l == layer && p == proj
            });
        }
    }
}

/// For short texts: per layer and projection input, per token row, the largest |x| and its
/// channel, the row's median |x|, and the same after today's smoothing.
#[test]
#[ignore]
fn activation_outliers_on_short_texts() {
    let m = f32_model();
    let sets = sets(&m);
    let stats = m.bert.calibrate(&seqs(&sets.calib)).unwrap();
    let texts: Vec<String> = ["hello", "yes", "What is the capital of France?"]
        .map(String::from)
        .to_vec();
    let enc = m.encode(&texts, true).unwrap();
    for e in &enc {
        println!("== {:?} ({} tokens)", e.ids, e.len());
        let mut tap = |layer: usize, proj: Proj, x: &[f32]| {
            let k = x.len() / e.len();
            let lin = m.bert.layers[layer].linear(proj);
            let (w, _) = lin.f32_parts().unwrap();
            let mut st = InputStats::new(&m.bert.layers[layer]);
            st.of(proj).copy_from_slice(stats[layer].clone_of(proj));
            let s = smoothing(&w, k, st.of(proj));
            for (r, row) in x.chunks_exact(k).enumerate() {
                let desc = |row: &[f32]| {
                    let mut a: Vec<(f32, usize)> = row.iter().map(|v| v.abs()).zip(0..).collect();
                    a.sort_by(|x, y| y.0.total_cmp(&x.0));
                    format!(
                        "max {:7.2} @{:<4} 2nd {:7.2} @{:<4} median {:.3} ratio {:5.0}",
                        a[0].0,
                        a[0].1,
                        a[1].0,
                        a[1].1,
                        a[k / 2].0,
                        a[0].0 / a[k / 2].0
                    )
                };
                let sm: Vec<f32> = row.iter().zip(&s).map(|(v, s)| v / s).collect();
                println!(
                    "L{layer} {proj:<8?} tok {r}: raw {} | smoothed {} | rel.err/row {:.4}",
                    desc(row),
                    desc(&sm),
                    row_error(&sm, None)
                );
            }
            None
        };
        let s = seqs(std::slice::from_ref(e));
        m.bert.forward_observed(&s, Some(&mut tap), None).unwrap();
    }
}

/// ||x - deq(q(x))|| / ||x|| of one row, quantised per row or per group of `group` channels.
fn row_error(x: &[f32], group: Option<usize>) -> f32 {
    let q = fake_quant_row(x, group);
    let num: f32 = x.iter().zip(&q).map(|(a, b)| (a - b) * (a - b)).sum();
    let den: f32 = x.iter().map(|a| a * a).sum();
    (num / den.max(1e-30)).sqrt()
}

fn fake_quant_row(x: &[f32], group: Option<usize>) -> Vec<f32> {
    let g = group.unwrap_or(x.len());
    x.chunks(g)
        .flat_map(|c| {
            let max = c.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = max / 127.0;
            let inv = if max > 0.0 { 1.0 / scale } else { 0.0 };
            c.iter()
                .map(move |&v| f32::from(crate::model::qgemm::quantize(v, inv)) * scale)
        })
        .collect()
}

/// Today's smoothing factors s (activations / s, weights * s) for a [n, k] weight.
fn smoothing(w: &[f32], k: usize, act_max: &[f32]) -> Vec<f32> {
    smoothing_alpha(w, k, act_max, 0.6)
}

fn smoothing_alpha(w: &[f32], k: usize, act_max: &[f32], alpha: f32) -> Vec<f32> {
    let mut w_max = vec![0f32; k];
    for row in w.chunks_exact(k) {
        for (m, v) in w_max.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
    act_max
        .iter()
        .zip(&w_max)
        .map(|(&a, &w)| {
            if a <= 0.0 || w <= 0.0 || alpha == 0.0 {
                1.0
            } else {
                (a.powf(alpha) / w.powf(1.0 - alpha)).clamp(1e-3, 1e3)
            }
        })
        .collect()
}

impl Layer {
    fn linear(&self, proj: Proj) -> &Linear {
        match proj {
            Proj::Qkv => &self.qkv,
            Proj::AttnOut => &self.attn_out,
            Proj::FfnUp => &self.intermediate,
            Proj::FfnDown => &self.output,
        }
    }
    fn linear_mut(&mut self, proj: Proj) -> &mut Linear {
        match proj {
            Proj::Qkv => &mut self.qkv,
            Proj::AttnOut => &mut self.attn_out,
            Proj::FfnUp => &mut self.intermediate,
            Proj::FfnDown => &mut self.output,
        }
    }
}

impl InputStats {
    fn clone_of(&self, proj: Proj) -> &[f32] {
        match proj {
            Proj::Qkv => &self.qkv,
            Proj::AttnOut => &self.attn_out,
            Proj::FfnUp => &self.intermediate,
            Proj::FfnDown => &self.output,
        }
    }
}

/// A quantisation scheme simulated in f32: weights and activations rounded to INT8 and back.
#[derive(Clone, Copy, Debug)]
struct Scheme {
    alpha: f32,
    /// Activation scale per group of this many channels (None: per row).
    group: Option<usize>,
    /// Channels with the largest smoothed calibration range kept in f32 (both operands).
    outliers: usize,
    /// Weights kept exact (only the activations rounded).
    w_exact: bool,
    /// Which rows' activations stay exact: 0 none, 1 each sequence's first ([CLS]), 2 first and
    /// last ([SEP]).
    exact_rows: u8,
    /// Activations rounded twice (the residual of the first rounding at its own scale): ~16 bits.
    two_pass: bool,
}

/// The simulated projection: weights deq(q(W * s)) / s with outlier channels exact, and the
/// activation transform the tap applies.
struct Sim {
    s: Vec<f32>,
    keep: Vec<bool>,
    scheme: Scheme,
}

impl Sim {
    /// `special[r]`: row r is a sequence's first (1) or last (2) token.
    fn act(&self, x: &[f32], special: &[u8]) -> Vec<f32> {
        let k = self.s.len();
        let mut out = Vec::with_capacity(x.len());
        for (r, row) in x.chunks_exact(k).enumerate() {
            if special[r] != 0 && special[r] <= self.scheme.exact_rows {
                out.extend_from_slice(row);
                continue;
            }
            let z: Vec<f32> = row
                .iter()
                .zip(&self.s)
                .zip(&self.keep)
                .map(|((v, s), &keep)| if keep { 0.0 } else { v / s })
                .collect();
            let mut q = fake_quant_row(&z, self.scheme.group);
            if self.scheme.two_pass {
                let res: Vec<f32> = z.iter().zip(&q).map(|(a, b)| a - b).collect();
                let q2 = fake_quant_row(&res, self.scheme.group);
                q.iter_mut().zip(&q2).for_each(|(a, b)| *a += b);
            }
            out.extend(
                q.iter()
                    .zip(row)
                    .zip(&self.s)
                    .zip(&self.keep)
                    .map(|(((q, v), s), &keep)| if keep { *v } else { q * s }),
            );
        }
        out
    }
}

fn simulate(
    bert: &mut Bert,
    stats: &[InputStats],
    scheme: Scheme,
    pick: &dyn Fn(usize, Proj) -> bool,
) -> HashMap<(usize, Proj), Sim> {
    let mut sims = HashMap::new();
    for (l, layer) in bert.layers.iter_mut().enumerate() {
        for proj in [Proj::Qkv, Proj::AttnOut, Proj::FfnUp, Proj::FfnDown] {
            if !pick(l, proj) {
                continue;
            }
            let lin = layer.linear_mut(proj);
            let (k, n) = (lin.inputs(), lin.outputs());
            let (w, bias) = lin.f32_parts().unwrap();
            let bias = bias.to_vec();
            let act_max = stats[l].clone_of(proj);
            let s = smoothing_alpha(&w, k, act_max, scheme.alpha);
            let mut order: Vec<usize> = (0..k).collect();
            order.sort_by(|&a, &b| (act_max[b] / s[b]).total_cmp(&(act_max[a] / s[a])));
            let mut keep = vec![false; k];
            for &c in order.iter().take(scheme.outliers) {
                keep[c] = true;
            }
            let mut weff = Vec::with_capacity(n * k);
            for row in w.chunks_exact(k) {
                let z: Vec<f32> = row
                    .iter()
                    .zip(&s)
                    .zip(&keep)
                    .map(|((w, s), &keep)| if keep { 0.0 } else { w * s })
                    .collect();
                let q = if scheme.w_exact {
                    z.clone()
                } else {
                    fake_quant_row(&z, None)
                };
                weff.extend(
                    q.iter()
                        .zip(row)
                        .zip(&s)
                        .zip(&keep)
                        .map(|(((q, w), s), &keep)| if keep { *w } else { q / s }),
                );
            }
            *lin = Linear::new(&weff, bias, n, k, crate::model::Quantization::None).unwrap();
            sims.insert((l, proj), Sim { s, keep, scheme });
        }
    }
    sims
}

/// Candidate fixes, simulated in f32 (the rounding is the real one; sums are f32).
#[test]
#[ignore]
fn simulated_schemes() {
    let m = f32_model();
    let sets = sets(&m);
    let base = all_embeddings(&m.bert, &sets);
    let stats = m.bert.calibrate(&seqs(&sets.calib)).unwrap();
    let today = |_: usize, p: Proj| p != Proj::FfnDown;
    let all = |_: usize, _: Proj| true;
    let run = |label: &str, scheme: Scheme, pick: &dyn Fn(usize, Proj) -> bool| {
        let Model { mut bert, .. } = f32_model();
        let sims = simulate(&mut bert, &stats, scheme, pick);
        let got: Vec<_> = sets
            .groups
            .iter()
            .map(|(_, _, e)| {
                let special: Vec<u8> = e
                    .iter()
                    .flat_map(|e| {
                        (0..e.len()).map(move |i| {
                            if i == 0 {
                                1
                            } else if i + 1 == e.len() {
                                2
                            } else {
                                0
                            }
                        })
                    })
                    .collect();
                let mut tap =
                    |l: usize, p: Proj, x: &[f32]| sims.get(&(l, p)).map(|s| s.act(x, &special));
                embed_with(&bert, e, Some(&mut tap))
            })
            .collect();
        report(&format!("{label} {scheme:?}"), &sets, &base, &got);
    };
    let sc = |alpha, group, outliers| Scheme {
        alpha,
        group,
        outliers,
        w_exact: false,
        exact_rows: 0,
        two_pass: false,
    };
    let only = std::env::var("STUDY").unwrap_or_default();
    if only.is_empty() || only == "1" {
        run("today (sim)", sc(0.6, None, 0), &today);
        for alpha in [0.0, 0.4, 0.5, 0.7, 0.8] {
            run("today", sc(alpha, None, 0), &today);
        }
        for g in [32, 64, 128] {
            run("group", sc(0.6, Some(g), 0), &today);
            run("group a0", sc(0.0, Some(g), 0), &today);
        }
        for o in [1, 2, 4, 8, 16] {
            run("outliers", sc(0.6, None, o), &today);
            run("outliers a0", sc(0.0, None, o), &today);
        }
        run("all4 group 64", sc(0.6, Some(64), 0), &all);
        run("all4 outliers 8", sc(0.6, None, 8), &all);
    }
    if only == "4" {
        for (o, alpha) in [(16, 0.0), (16, 0.3), (32, 0.0)] {
            let b = sc(alpha, None, o);
            run("cls+sep exact", Scheme { exact_rows: 2, ..b }, &today);
            run(
                "two-pass",
                Scheme {
                    two_pass: true,
                    ..b
                },
                &today,
            );
            run(
                "group 32",
                Scheme {
                    group: Some(32),
                    ..b
                },
                &today,
            );
            run(
                "group 64",
                Scheme {
                    group: Some(64),
                    ..b
                },
                &today,
            );
            run("w exact", Scheme { w_exact: true, ..b }, &today);
        }
    }
    if only == "5" {
        for (o, alpha) in [
            (16, 0.0),
            (16, 0.3),
            (32, 0.0),
            (32, 0.3),
            (64, 0.3),
            (96, 0.3),
        ] {
            run("all four", sc(alpha, None, o), &all);
        }
    }
    if only == "3" {
        for o in [16, 24, 32, 48, 64] {
            for alpha in [0.0, 0.3, 0.5, 0.6] {
                run("outliers", sc(alpha, None, o), &today);
            }
        }
    }
    if only.is_empty() || only == "2" {
        for o in [0, 1] {
            for alpha in [0.0, 0.6] {
                let b = sc(alpha, None, o);
                run("w exact", Scheme { w_exact: true, ..b }, &today);
                run(
                    "two-pass act",
                    Scheme {
                        two_pass: true,
                        ..b
                    },
                    &today,
                );
                run("cls exact", Scheme { exact_rows: 1, ..b }, &today);
                run("cls+sep exact", Scheme { exact_rows: 2, ..b }, &today);
                run(
                    "group 32",
                    Scheme {
                        group: Some(32),
                        ..b
                    },
                    &today,
                );
            }
        }
    }
}
