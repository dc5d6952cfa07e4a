//! The INT8 model passes the operator's embedding-parity gate at its default threshold: cosine to
//! the f32 model >= 0.999 on every built-in parity text, on short texts (where 8-bit rounding
//! moves an embedding the most) and over the inference bench's 64 texts, batched or not.
//! Needs `make model`.
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_embedder::model::pooling::cosine;
use candle_embedder::model::{Encoded, Model, ModelOptions, Quantization};

/// The operator's default `minCosine` (issue 14: "a candidate that serves the INT8 model passes
/// at 0.999").
const PARITY_THRESHOLD: f32 = 0.999;

fn model_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("models")
        .join("all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file() && dir.join("tokenizer.json").is_file(),
        "{} is missing or incomplete: run `make model` first",
        dir.display()
    );
    dir
}

fn load(quantization: Quantization) -> Model {
    let opts = ModelOptions {
        quantization,
        ..ModelOptions::default()
    };
    Model::load("all-MiniLM-L6-v2", &model_dir(), &opts).expect("model loads")
}

fn models() -> &'static (Model, Model) {
    static M: OnceLock<(Model, Model)> = OnceLock::new();
    M.get_or_init(|| (load(Quantization::None), load(Quantization::Int8)))
}

/// A copy of the operator's built-in probe texts, `builtin_texts()` in
/// operator/src/decision/parity.rs (what the gate sends when the user names no ConfigMap).
fn operator_builtin_texts() -> Vec<String> {
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

/// One- to three-token texts: [CLS] and [SEP] are most of what their mean pools.
fn short_texts() -> Vec<String> {
    [
        "yes",
        "no",
        "ok",
        "hello",
        "a",
        "I",
        "thanks",
        "hi there",
        "🚀",
        "👍",
        "😀",
        "?",
        "!!!",
        "...",
        "-",
        "?!... ,;:",
    ]
    .map(String::from)
    .to_vec()
}

/// benches/inference.rs's 64 texts (its INT8 cosine line).
fn bench_texts() -> Vec<String> {
    const SHORT: [&str; 8] = [
        "How do I reset my password?",
        "Best hiking trails near the lake",
        "The embedding server answers in a few milliseconds.",
        "Rust makes systems programming safer",
        "What is the capital of France?",
        "A man is eating food.",
        "canary rollout with automatic rollback",
        "Quarterly revenue grew by twelve percent",
    ];
    (0..64)
        .map(|i| format!("{} #{i}", SHORT[i % SHORT.len()]))
        .collect()
}

/// Per text, the cosine between the f32 and INT8 embeddings, each text embedded alone; and the
/// INT8 embeddings of the whole set in one batch must be the same bits.
fn cosines(texts: &[String]) -> Vec<f32> {
    let (f, q) = models();
    let enc = f.encode(texts, true).unwrap();
    let one = |m: &Model, e: &Encoded| m.embed(&[e]).unwrap().remove(0);
    let batched = q.embed(&enc.iter().collect::<Vec<_>>()).unwrap();
    enc.iter()
        .zip(&batched)
        .zip(texts)
        .map(|((e, b), t)| {
            let single = one(q, e);
            assert!(
                single
                    .iter()
                    .zip(b)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{t:?}: INT8 batched differs from unbatched"
            );
            cosine(&one(f, e), &single)
        })
        .collect()
}

fn assert_parity(set: &str, texts: &[String]) {
    let cos = cosines(texts);
    let mut failed = Vec::new();
    for (t, c) in texts.iter().zip(&cos) {
        let shown: String = t.chars().take(40).collect();
        println!("{set}: {c:.5} {shown:?}");
        if *c < PARITY_THRESHOLD {
            failed.push(format!("{shown:?}: {c:.5}"));
        }
    }
    let min = cos.iter().copied().fold(f32::INFINITY, f32::min);
    println!(
        "{set}: min cosine INT8 vs f32 {min:.5} over {} texts",
        cos.len()
    );
    assert!(
        failed.is_empty(),
        "{set}: INT8 below the parity threshold {PARITY_THRESHOLD}: {failed:?}"
    );
}

#[test]
fn int8_passes_the_parity_gate_on_the_operators_builtin_texts() {
    assert_parity("operator built-in", &operator_builtin_texts());
}

#[test]
fn int8_passes_the_parity_gate_on_short_texts() {
    assert_parity("short", &short_texts());
}

#[test]
fn int8_passes_the_parity_gate_over_the_bench_texts() {
    assert_parity("bench", &bench_texts());
}
