//! The server with the real all-MiniLM-L6-v2 (`make model` puts it in models/).

mod common;

use std::sync::Arc;

use candle_embedder::model::testutil::minilm_dir;
use candle_embedder::registry::ModelRegistry;
use candle_embedder::server::Loader;
use common::{config, embeddings, max_abs_diff, start_with};
use serde_json::json;

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_serves_384_dimensional_semantic_embeddings() {
    let dir = minilm_dir();
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run make model",
        dir.display()
    );
    let loader: Loader = Box::new(move || ModelRegistry::single("all-MiniLM-L6-v2", &dir));
    let s = start_with(config(&[]), loader, tempfile::tempdir().unwrap()).await;
    s.wait_ready().await;

    let texts = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The new movie is awesome.",
        "Hello world",
    ];
    let (status, body) = s
        .embed(json!({"texts": texts, "model": "all-MiniLM-L6-v2"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "all-MiniLM-L6-v2");
    assert_eq!(body["dimension"], 384);
    let e = embeddings(&body);
    assert_eq!(e.len(), 4);
    for v in &e {
        assert_eq!(v.len(), 384);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
    let related = cosine(&e[0], &e[1]);
    let unrelated = cosine(&e[0], &e[2]);
    assert!(
        related > 0.6 && unrelated < 0.3 && related > unrelated + 0.3,
        "related {related}, unrelated {unrelated}"
    );

    // Concurrent single-text requests (batched together) equal the batch answer.
    let s = Arc::new(s);
    let mut tasks = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        let s = Arc::clone(&s);
        let t = t.to_string();
        tasks.push(tokio::spawn(async move {
            let (status, body) = s.embed(json!({"texts": [t]})).await;
            assert_eq!(status, 200);
            (i, embeddings(&body).remove(0))
        }));
    }
    for t in tasks {
        let (i, v) = t.await.unwrap();
        assert!(max_abs_diff(&v, &e[i]) < 1e-4, "text {i}");
    }

    let (status, body) = s
        .post(
            "/v1/embeddings",
            json!({"input": "Hello world", "model": "all-MiniLM-L6-v2"}),
        )
        .await;
    assert_eq!(status, 200);
    let v: Vec<f32> = serde_json::from_value(body["data"][0]["embedding"].clone()).unwrap();
    assert!(max_abs_diff(&v, &e[3]) < 1e-4);
}
