//! What a request looks like on the wire and what counts as a correct answer.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

/// The two texts of the seed's k6 script; more texts per request cycle through the rest.
pub const SAMPLE_TEXTS: &[&str] = &[
    "Machine learning and artificial intelligence",
    "Natural language processing with transformers",
    "Rust makes systems programming safe and fast",
    "Embeddings map sentences to points in a vector space",
    "The canary receives one percent of the traffic",
    "Vector search finds the nearest neighbours of a query",
    "Kubernetes operators reconcile the desired state",
    "A quick brown fox jumps over the lazy dog",
];

pub const DEFAULT_MODEL: &str = "all-MiniLM-L6-v2";

/// Which API dialect to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST /api/v1/embed` `{"texts": [...], "model": ...}` -> `{"embeddings": [[...]], ...}`
    Native,
    /// `POST /v1/embeddings` `{"input": [...], "model": ...}` -> `{"data": [{"embedding": [...]}], ...}`
    OpenAi,
}

impl Api {
    pub fn path(self) -> &'static str {
        match self {
            Api::Native => "/api/v1/embed",
            Api::OpenAi => "/v1/embeddings",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Api::Native => "native",
            Api::OpenAi => "openai",
        }
    }
}

/// `n` texts: the sample texts in order, repeated as needed.
pub fn sample_texts(n: usize) -> Vec<String> {
    SAMPLE_TEXTS
        .iter()
        .cycle()
        .take(n)
        .map(|s| s.to_string())
        .collect()
}

/// One request body, serialised once and sent many times.
#[derive(Debug, Clone)]
pub struct RequestTemplate {
    pub api: Api,
    pub body: Bytes,
    /// Embeddings a correct answer carries (one per text).
    pub expected_embeddings: usize,
}

impl RequestTemplate {
    pub fn new(api: Api, texts: &[String], model: Option<&str>) -> Self {
        let mut body = match api {
            Api::Native => json!({ "texts": texts }),
            Api::OpenAi => json!({ "input": texts }),
        };
        if let Some(model) = model {
            body["model"] = json!(model);
        }
        RequestTemplate {
            api,
            body: Bytes::from(serde_json::to_vec(&body).expect("a JSON value always serialises")),
            expected_embeddings: texts.len(),
        }
    }

    /// Whether a 2xx body is a correct answer: parseable and one embedding per text.
    pub fn check_response(&self, body: &[u8]) -> Result<(), String> {
        let count = embedding_count(self.api, body)?;
        if count == self.expected_embeddings {
            Ok(())
        } else {
            Err(format!(
                "expected {} embeddings, got {count}",
                self.expected_embeddings
            ))
        }
    }
}

/// Number of embeddings in a response, without materialising the floats.
fn embedding_count(api: Api, body: &[u8]) -> Result<usize, String> {
    use serde::de::IgnoredAny;
    #[derive(Deserialize)]
    struct Native {
        embeddings: Vec<IgnoredAny>,
    }
    #[derive(Deserialize)]
    struct OpenAiItem {
        #[allow(dead_code)] // only its presence is checked
        embedding: IgnoredAny,
    }
    #[derive(Deserialize)]
    struct OpenAi {
        data: Vec<OpenAiItem>,
    }
    let parsed = match api {
        Api::Native => serde_json::from_slice::<Native>(body).map(|r| r.embeddings.len()),
        Api::OpenAi => serde_json::from_slice::<OpenAi>(body).map(|r| r.data.len()),
    };
    parsed.map_err(|e| format!("unparseable response: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_body_matches_the_seed_k6_payload() {
        let t = RequestTemplate::new(Api::Native, &sample_texts(2), Some(DEFAULT_MODEL));
        let v: serde_json::Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(
            v,
            json!({
                "texts": ["Machine learning and artificial intelligence",
                          "Natural language processing with transformers"],
                "model": "all-MiniLM-L6-v2"
            })
        );
        assert_eq!(t.expected_embeddings, 2);
    }

    #[test]
    fn openai_body_uses_input_and_may_omit_the_model() {
        let t = RequestTemplate::new(Api::OpenAi, &sample_texts(3), None);
        let v: serde_json::Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(v["input"].as_array().unwrap().len(), 3);
        assert!(v.get("model").is_none());
    }

    #[test]
    fn more_texts_than_samples_cycle() {
        let texts = sample_texts(SAMPLE_TEXTS.len() + 1);
        assert_eq!(texts.last().unwrap(), SAMPLE_TEXTS[0]);
    }

    #[test]
    fn a_correct_answer_has_one_embedding_per_text() {
        let t = RequestTemplate::new(Api::Native, &sample_texts(2), None);
        assert!(t
            .check_response(br#"{"model":"m","embeddings":[[0.1,0.2],[0.3,0.4]]}"#)
            .is_ok());
        let short = t
            .check_response(br#"{"embeddings":[[0.1,0.2]]}"#)
            .unwrap_err();
        assert!(short.contains("expected 2 embeddings, got 1"), "{short}");
        assert!(t.check_response(b"not json").is_err());

        let o = RequestTemplate::new(Api::OpenAi, &sample_texts(1), None);
        assert!(o
            .check_response(br#"{"data":[{"index":0,"embedding":[0.5]}],"usage":{}}"#)
            .is_ok());
        assert!(o.check_response(br#"{"data":[{"index":0}]}"#).is_err());
    }
}
