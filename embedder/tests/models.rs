//! Loading sentence-transformers directories and models files: the tiny random BERT from
//! `testutil` (fast, no download) and the shipped example models file over all-MiniLM-L6-v2.
use std::path::{Path, PathBuf};

use candle_embedder::model::pooling::cosine;
use candle_embedder::model::testutil::{write_tiny_bert, TINY_HIDDEN, TINY_MAX_SEQ_LENGTH};
use candle_embedder::model::{Model, ModelError, ModelOptions, Pooling, Quantization};
use candle_embedder::registry::{ModelRegistry, ModelsConfig};

fn tiny() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_tiny_bert(&tmp.path().join("tiny")).unwrap();
    (tmp, dir)
}

fn load(dir: &Path, opts: ModelOptions) -> Model {
    Model::load("tiny", dir, &opts).unwrap()
}

fn strings(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|s| s.to_string()).collect()
}

fn embed(model: &Model, texts: &[&str]) -> Vec<Vec<f32>> {
    let enc = model.encode(&strings(texts), true).unwrap();
    model.embed(&enc.iter().collect::<Vec<_>>()).unwrap()
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

fn long_text() -> String {
    "the quick brown fox jumps over the lazy dog ".repeat(20)
}

#[test]
fn tiny_bert_loads_with_its_directory_settings_and_embeds() {
    let (_tmp, dir) = tiny();
    let m = load(&dir, ModelOptions::default());
    assert_eq!(m.dimension(), TINY_HIDDEN);
    assert_eq!(m.max_tokens(), TINY_MAX_SEQ_LENGTH);
    assert_eq!(m.info().pooling, Pooling::Mean);
    let v = embed(&m, &["hello world", "a different text", "hello world"]);
    assert_eq!(v.len(), 3);
    for e in &v {
        assert_eq!(e.len(), TINY_HIDDEN);
        assert!((norm(e) - 1.0).abs() < 1e-5);
    }
    assert_eq!(v[0], v[2], "same text, same vector");
    assert!(cosine(&v[0], &v[1]) < 0.9999, "different texts must differ");
    m.warmup().unwrap();
    assert!(m.embed(&[]).unwrap().is_empty());
}

#[test]
fn the_same_seed_writes_the_same_model() {
    let (_a, da) = tiny();
    let (_b, db) = tiny();
    let a = embed(&load(&da, ModelOptions::default()), &["determinism"]);
    let b = embed(&load(&db, ModelOptions::default()), &["determinism"]);
    assert_eq!(a, b);
}

#[test]
fn long_texts_are_truncated_or_rejected() {
    let (_tmp, dir) = tiny();
    let m = load(&dir, ModelOptions::default());
    let texts = strings(&["short", &long_text()]);
    let enc = m.encode(&texts, true).unwrap();
    assert_eq!(enc[1].len(), TINY_MAX_SEQ_LENGTH);
    assert!(enc[1].truncated && !enc[0].truncated);
    assert_eq!(m.embed(&[&enc[1]]).unwrap()[0].len(), TINY_HIDDEN);
    match m.encode(&texts, false) {
        Err(ModelError::TooLong { index, tokens, max }) => {
            assert_eq!((index, max), (1, TINY_MAX_SEQ_LENGTH));
            assert!(tokens > max);
        }
        other => panic!("expected TooLong, got {other:?}"),
    }
}

#[test]
fn overrides_change_pooling_length_and_normalisation() {
    let (_tmp, dir) = tiny();
    let mean = embed(&load(&dir, ModelOptions::default()), &["pooling test"]);
    for pooling in [Pooling::Cls, Pooling::Max] {
        let m = load(
            &dir,
            ModelOptions {
                pooling: Some(pooling),
                ..ModelOptions::default()
            },
        );
        assert_eq!(m.info().pooling, pooling);
        let v = embed(&m, &["pooling test"]);
        assert!((norm(&v[0]) - 1.0).abs() < 1e-5);
        assert!(cosine(&v[0], &mean[0]) < 0.9999, "{pooling} equals mean");
    }
    let short = load(
        &dir,
        ModelOptions {
            max_tokens: Some(16),
            ..ModelOptions::default()
        },
    );
    assert_eq!(short.max_tokens(), 16);
    assert_eq!(short.encode(&[long_text()], true).unwrap()[0].len(), 16);
    let raw = load(
        &dir,
        ModelOptions {
            normalize: false,
            ..ModelOptions::default()
        },
    );
    let v = embed(&raw, &["pooling test"]);
    assert!(
        (norm(&v[0]) - 1.0).abs() > 1e-3,
        "unnormalised vector has unit norm"
    );
    assert!(
        cosine(&v[0], &mean[0]) > 0.99999,
        "normalising only rescales"
    );
}

#[test]
fn int8_tiny_model_stays_close_to_f32() {
    let (_tmp, dir) = tiny();
    let f = embed(
        &load(&dir, ModelOptions::default()),
        &["hello world", "the lazy dog"],
    );
    for quantization in [Quantization::Int8, Quantization::Q8_0] {
        let q = load(
            &dir,
            ModelOptions {
                quantization,
                ..ModelOptions::default()
            },
        );
        assert_eq!(q.info().quantization, quantization);
        let v = embed(&q, &["hello world", "the lazy dog"]);
        for (a, b) in f.iter().zip(&v) {
            assert!(
                cosine(a, b) > 0.99,
                "{quantization}: cosine {}",
                cosine(a, b)
            );
        }
    }
}

#[test]
fn broken_directories_give_typed_errors() {
    let (_tmp, dir) = tiny();
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let err = Model::load("tiny", &dir, &ModelOptions::default()).unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingFile { path } if path.ends_with("tokenizer.json")),
        "{err}"
    );

    let (_tmp2, dir) = tiny();
    std::fs::write(
        dir.join("1_Pooling/config.json"),
        r#"{"pooling_mode_mean_tokens": false}"#,
    )
    .unwrap();
    let err = Model::load("tiny", &dir, &ModelOptions::default()).unwrap_err();
    assert!(matches!(err, ModelError::InvalidConfig { .. }), "{err}");

    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    let err = Model::load("tiny", &dir, &ModelOptions::default()).unwrap_err();
    assert!(matches!(err, ModelError::BadJson { .. }), "{err}");
}

#[test]
fn single_registry_serves_one_default_model() {
    let (_tmp, dir) = tiny();
    let reg = ModelRegistry::single("tiny-model", &dir).unwrap();
    assert_eq!(reg.names(), vec!["tiny-model"]);
    assert_eq!(reg.default_model().name(), "tiny-model");
    assert!(reg.get("tiny-model").is_some());
    assert!(reg.get("other").is_none());
    assert_eq!(reg.models().len(), 1);
}

#[test]
fn models_file_loads_every_entry_with_its_options() {
    let (tmp, dir) = tiny();
    let file = tmp.path().join("models.yaml");
    std::fs::write(
        &file,
        format!(
            "models:\n  - name: tiny\n    path: {d}\n  - name: tiny-int8\n    path: {d}\n    \
             quantization: q8_0\n    pooling: cls\n    max_tokens: 32\n    default: true\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let reg = ModelRegistry::from_file(&file).unwrap();
    assert_eq!(reg.names(), vec!["tiny", "tiny-int8"]);
    let d = reg.default_model();
    assert_eq!(d.name(), "tiny-int8");
    let info = serde_json::to_value(d.info()).unwrap();
    assert_eq!(info["quantization"], "q8_0");
    assert_eq!(info["pooling"], "cls");
    assert_eq!(info["max_tokens"], 32);
    assert_eq!(info["dimension"], TINY_HIDDEN);
    assert_eq!(info["path"], dir.display().to_string());
}

#[test]
fn models_file_errors_name_the_problem() {
    let (tmp, dir) = tiny();
    let file = tmp.path().join("models.yaml");
    let write = |yaml: String| std::fs::write(&file, yaml).unwrap();

    write(format!(
        "models:\n  - {{name: a, path: {d}}}\n  - {{name: a, path: {d}}}\n",
        d = dir.display()
    ));
    let err = ModelRegistry::from_file(&file).unwrap_err();
    assert!(matches!(err, ModelError::DuplicateName(_)), "{err}");

    write(format!(
        "models:\n  - {{name: a, path: {}, pooling: avg}}\n",
        dir.display()
    ));
    let err = ModelRegistry::from_file(&file).unwrap_err();
    assert!(err.to_string().contains("unknown pooling `avg`"), "{err}");

    write("models:\n  - name: [oops\n".into());
    let err = ModelRegistry::from_file(&file).unwrap_err();
    assert!(matches!(err, ModelError::BadYaml { .. }), "{err}");

    write("models:\n  - {name: a, path: /no/such/model}\n".into());
    let err = ModelRegistry::from_file(&file).unwrap_err();
    assert!(
        err.to_string().contains("/no/such/model/config.json"),
        "{err}"
    );
}

#[test]
fn example_models_file_serves_minilm_in_f32_and_int8() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    assert!(
        root.join("models/all-MiniLM-L6-v2/model.safetensors")
            .is_file(),
        "models/all-MiniLM-L6-v2 is missing: run `make model`"
    );
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("models.example.yaml");
    let mut cfg =
        ModelsConfig::parse(&std::fs::read_to_string(&example).unwrap(), &example).unwrap();
    // The file's paths are relative to the repository root, where the server runs.
    for m in &mut cfg.models {
        m.path = root.join(&m.path);
    }
    let reg = ModelRegistry::from_config(cfg).unwrap();
    assert_eq!(
        reg.names(),
        vec!["all-MiniLM-L6-v2", "all-MiniLM-L6-v2-int8"]
    );
    assert_eq!(reg.default_model().name(), "all-MiniLM-L6-v2");
    let f = reg.get("all-MiniLM-L6-v2").unwrap();
    let q = reg.get("all-MiniLM-L6-v2-int8").unwrap();
    assert_eq!((f.dimension(), f.max_tokens()), (384, 256));
    assert_eq!(q.quantization(), Quantization::Int8);
    let texts = strings(&["canary rollouts move traffic step by step"]);
    let a = f.embed(&[&f.encode(&texts, true).unwrap()[0]]).unwrap();
    let b = q.embed(&[&q.encode(&texts, true).unwrap()[0]]).unwrap();
    assert!(cosine(&a[0], &b[0]) > 0.99);
}
