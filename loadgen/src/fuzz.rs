//! Request fuzzing for the embedding server: seeded generation of valid, malformed and hostile
//! HTTP/1.1 requests as raw bytes (bodies, headers, sizes, methods, paths, encodings, framing),
//! and the rule for which answers a robust server may give.
//!
//! Raw bytes, not an HTTP client: a client library would refuse to send most of these (a
//! Content-Length that lies, bytes that are not a header, a chunked body cut short). Generation is
//! pure and deterministic for a seed, so a failing case can be regenerated from its number.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One generated request.
#[derive(Debug, Clone)]
pub struct Case {
    /// What the case tries, e.g. `body/deep-nesting` (for the report's breakdown).
    pub kind: &'static str,
    /// The whole request as sent on the wire.
    pub bytes: Vec<u8>,
    /// The request ends its connection (`Connection: close` and the write side shut after it):
    /// used where framing is broken on purpose, so the server sees the end instead of waiting.
    pub close: bool,
}

/// The seed's request body, the mutation base of most cases.
const VALID: &str = r#"{"texts": ["Machine learning and artificial intelligence", "Natural language processing with transformers"], "model": "all-MiniLM-L6-v2"}"#;
const VALID_OPENAI: &str =
    r#"{"input": ["Machine learning and artificial intelligence"], "model": "all-MiniLM-L6-v2"}"#;

/// Statuses a robust server may answer with: success, a client error, or overload/timeouts it
/// declares itself (429, 503, 504). 500 (a panic caught or a bug), 502 and anything else are not.
pub fn allowed_status(status: u16) -> bool {
    (200..300).contains(&status) || (400..500).contains(&status) || matches!(status, 503 | 504)
}

/// Generates the `n`-th case of the stream for `seed` (independent of the others).
pub fn case(seed: u64, n: u64) -> Case {
    let mut rng = StdRng::seed_from_u64(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let pick = rng.random_range(0..1000u32);
    // Weights in per mille; the expensive valid requests (real inference) stay rare so a million
    // cases fit in minutes on two cores, the cheap rejections are most of the stream.
    match pick {
        0..=14 => valid(&mut rng),
        15..=214 => mutated_body(&mut rng),
        215..=414 => bad_json(&mut rng),
        415..=534 => bad_texts(&mut rng),
        535..=614 => openai(&mut rng),
        615..=714 => headers(&mut rng),
        715..=794 => methods_and_paths(&mut rng),
        795..=894 => framing(&mut rng),
        895..=994 => garbage(&mut rng),
        _ => oversized(&mut rng),
    }
}

fn request(
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
    close: bool,
) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n").into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn json_post(path: &str, body: &[u8]) -> Vec<u8> {
    request(
        "POST",
        path,
        &[
            ("Content-Type", "application/json".into()),
            ("Content-Length", body.len().to_string()),
        ],
        body,
        false,
    )
}

fn embed_path(rng: &mut StdRng) -> &'static str {
    if rng.random_bool(0.8) {
        "/api/v1/embed"
    } else {
        "/v1/embeddings"
    }
}

fn short_text(rng: &mut StdRng) -> String {
    const WORDS: [&str; 10] = [
        "rollout",
        "embedding",
        "canary",
        "latency",
        "vector",
        "Grüße",
        "東京",
        "🙂",
        "naïve",
        "x",
    ];
    (0..rng.random_range(1..6))
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

fn valid(rng: &mut StdRng) -> Case {
    let texts: Vec<String> = (0..rng.random_range(1..4))
        .map(|_| short_text(rng))
        .collect();
    let body = if rng.random_bool(0.5) {
        serde_json::json!({ "texts": texts })
    } else {
        serde_json::json!({ "input": texts, "model": "all-MiniLM-L6-v2" })
    };
    let path = if body.get("texts").is_some() {
        "/api/v1/embed"
    } else {
        "/v1/embeddings"
    };
    Case {
        kind: "valid",
        bytes: json_post(path, body.to_string().as_bytes()),
        close: false,
    }
}

/// The seed's body with a few bytes flipped, inserted or removed: mostly invalid JSON or UTF-8,
/// sometimes valid JSON with odd texts.
fn mutated_body(rng: &mut StdRng) -> Case {
    let mut body = if rng.random_bool(0.8) {
        VALID
    } else {
        VALID_OPENAI
    }
    .as_bytes()
    .to_vec();
    for _ in 0..rng.random_range(1..8) {
        let at = rng.random_range(0..body.len());
        match rng.random_range(0..3) {
            0 => body[at] = rng.random(),
            1 => body.insert(at, rng.random()),
            _ => {
                body.remove(at);
            }
        }
        if body.is_empty() {
            break;
        }
    }
    Case {
        kind: "body/mutated",
        bytes: json_post(embed_path(rng), &body),
        close: false,
    }
}

fn bad_json(rng: &mut StdRng) -> Case {
    let (kind, body): (&'static str, Vec<u8>) = match rng.random_range(0..9) {
        0 => ("json/empty", Vec::new()),
        1 => (
            "json/truncated",
            VALID.as_bytes()[..rng.random_range(0..VALID.len())].to_vec(),
        ),
        2 => {
            let depth = rng.random_range(100..20_000);
            let mut b = "[".repeat(depth);
            b.push_str(&"]".repeat(depth));
            (
                "json/deep-nesting",
                format!(r#"{{"texts": {b}}}"#).into_bytes(),
            )
        }
        3 => (
            "json/lone-surrogate",
            br#"{"texts": ["\ud800 broken"]}"#.to_vec(),
        ),
        4 => {
            let mut b = br#"{"texts": [""#.to_vec();
            b.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28, 0xa0]);
            b.extend_from_slice(br#""]}"#);
            ("json/invalid-utf8", b)
        }
        5 => {
            let mut b = vec![0xef, 0xbb, 0xbf];
            b.extend_from_slice(VALID.as_bytes());
            ("json/bom", b)
        }
        6 => ("json/not-object", b"[\"a\", \"b\"]".to_vec()),
        7 => (
            "json/duplicate-keys",
            br#"{"texts": ["a"], "texts": 5}"#.to_vec(),
        ),
        _ => (
            "json/huge-number",
            br#"{"texts": ["a"], "model": 1e99999}"#.to_vec(),
        ),
    };
    Case {
        kind,
        bytes: json_post(embed_path(rng), &body),
        close: false,
    }
}

fn bad_texts(rng: &mut StdRng) -> Case {
    let (kind, body) = match rng.random_range(0..10) {
        0 => ("texts/empty-list", serde_json::json!({ "texts": [] })),
        1 => (
            "texts/empty-string",
            serde_json::json!({ "texts": ["", "a"] }),
        ),
        2 => (
            "texts/whitespace",
            serde_json::json!({ "texts": ["   \t\n"] }),
        ),
        3 => (
            "texts/not-strings",
            serde_json::json!({ "texts": [1, null, {"a": 1}, [2]] }),
        ),
        4 => ("texts/null", serde_json::json!({ "texts": null })),
        5 => (
            "texts/too-many",
            serde_json::json!({ "texts": vec!["a"; rng.random_range(65..5000)] }),
        ),
        6 => (
            "texts/unknown-model",
            serde_json::json!({ "texts": ["a"], "model": "gpt-5" }),
        ),
        7 => (
            "texts/model-not-string",
            serde_json::json!({ "texts": ["a"], "model": [1] }),
        ),
        8 => (
            "texts/control-chars",
            serde_json::json!({ "texts": ["\u{0000}\u{0007}\u{001b}[31m\u{202e}"] }),
        ),
        _ => (
            "texts/extra-fields",
            serde_json::json!({ "texts": ["a"], "truncate": "maybe", "normalize": 7 }),
        ),
    };
    Case {
        kind,
        bytes: json_post("/api/v1/embed", body.to_string().as_bytes()),
        close: false,
    }
}

fn openai(rng: &mut StdRng) -> Case {
    let (kind, body) = match rng.random_range(0..7) {
        0 => (
            "openai/token-ids",
            serde_json::json!({ "input": [[101, 2023, 102]] }),
        ),
        1 => (
            "openai/base64",
            serde_json::json!({ "input": "a", "encoding_format": "base64" }),
        ),
        2 => (
            "openai/bad-format",
            serde_json::json!({ "input": "a", "encoding_format": "bits" }),
        ),
        3 => (
            "openai/dimensions",
            serde_json::json!({ "input": "a", "dimensions": -3 }),
        ),
        4 => ("openai/input-number", serde_json::json!({ "input": 42 })),
        5 => (
            "openai/input-missing",
            serde_json::json!({ "model": "all-MiniLM-L6-v2" }),
        ),
        _ => ("openai/empty-input", serde_json::json!({ "input": "" })),
    };
    Case {
        kind,
        bytes: json_post("/v1/embeddings", body.to_string().as_bytes()),
        close: false,
    }
}

fn headers(rng: &mut StdRng) -> Case {
    let body = VALID.as_bytes();
    let len = body.len().to_string();
    let (kind, hs): (&'static str, Vec<(&str, String)>) = match rng.random_range(0..8) {
        0 => ("headers/no-content-type", vec![("Content-Length", len)]),
        1 => (
            "headers/wrong-content-type",
            vec![
                ("Content-Type", "text/plain".into()),
                ("Content-Length", len),
            ],
        ),
        2 => (
            "headers/charset-latin1",
            vec![
                ("Content-Type", "application/json; charset=latin1".into()),
                ("Content-Length", len),
            ],
        ),
        3 => (
            "headers/gzip-claimed",
            vec![
                ("Content-Type", "application/json".into()),
                ("Content-Encoding", "gzip".into()),
                ("Content-Length", len),
            ],
        ),
        4 => (
            "headers/long-value",
            vec![
                ("Content-Type", "application/json".into()),
                ("Content-Length", len),
                ("X-Long", "v".repeat(rng.random_range(8_000..200_000))),
            ],
        ),
        5 => {
            let mut hs = vec![
                ("Content-Type", "application/json".to_string()),
                ("Content-Length", len),
            ];
            hs.extend((0..rng.random_range(100..400)).map(|_| ("X-Many", "1".to_string())));
            ("headers/many", hs)
        }
        6 => (
            "headers/expect-continue",
            vec![
                ("Content-Type", "application/json".into()),
                ("Content-Length", len),
                ("Expect", "100-continue".into()),
            ],
        ),
        _ => (
            "headers/accept-odd",
            vec![
                ("Content-Type", "application/json".into()),
                ("Content-Length", len),
                ("Accept", "application/xml;q=2, */*;q=nope".into()),
                ("Accept-Encoding", "br, zstd, identity;q=0".into()),
            ],
        ),
    };
    Case {
        kind,
        bytes: request("POST", "/api/v1/embed", &hs, body, false),
        close: false,
    }
}

fn methods_and_paths(rng: &mut StdRng) -> Case {
    const METHODS: [&str; 6] = ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"];
    const PATHS: [&str; 10] = [
        "/api/v1/embed",
        "/v1/embeddings",
        "/api/v1/embed/../../etc/passwd",
        "/api/v1/embed?texts=a&model=%00",
        "/%ff%fe",
        "/metrics",
        "/health/ready",
        "/api/v2/embed",
        "//api//v1//embed",
        "/api/v1/models",
    ];
    let method = METHODS[rng.random_range(0..METHODS.len())];
    let path = PATHS[rng.random_range(0..PATHS.len())];
    let body = if rng.random_bool(0.5) {
        VALID.as_bytes()
    } else {
        b""
    };
    let hs = vec![("Content-Length", body.len().to_string())];
    Case {
        kind: "method-or-path",
        bytes: request(method, path, &hs, body, false),
        close: false,
    }
}

/// Message framing: broken ones end their connection (write side shut) so the server sees where
/// they stop; a valid chunked body keeps it open.
fn framing(rng: &mut StdRng) -> Case {
    let body = VALID.as_bytes();
    let (kind, bytes) = match rng.random_range(0..6) {
        0 => (
            "framing/length-too-long",
            request(
                "POST",
                "/api/v1/embed",
                &[
                    ("Content-Type", "application/json".into()),
                    ("Content-Length", (body.len() + 50).to_string()),
                ],
                body,
                true,
            ),
        ),
        1 => (
            "framing/length-too-short",
            request(
                "POST",
                "/api/v1/embed",
                &[
                    ("Content-Type", "application/json".into()),
                    ("Content-Length", (body.len() / 2).to_string()),
                ],
                body,
                true,
            ),
        ),
        2 => {
            // A valid chunked body, in pieces of random sizes.
            let mut chunked = Vec::new();
            let mut rest = body;
            while !rest.is_empty() {
                let n = rng.random_range(1..=rest.len().min(40));
                chunked.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                chunked.extend_from_slice(&rest[..n]);
                chunked.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            chunked.extend_from_slice(b"0\r\n\r\n");
            (
                "framing/chunked",
                // Well-framed: the server must answer it. Connection: close, but the write side
                // stays open (hyper drops a request whose client half-closed, see
                // docs/benchmarks.md).
                request(
                    "POST",
                    "/api/v1/embed",
                    &[
                        ("Content-Type", "application/json".into()),
                        ("Transfer-Encoding", "chunked".into()),
                    ],
                    &chunked,
                    true,
                ),
            )
        }
        3 => (
            "framing/chunked-cut",
            request(
                "POST",
                "/api/v1/embed",
                &[
                    ("Content-Type", "application/json".into()),
                    ("Transfer-Encoding", "chunked".into()),
                ],
                b"ffff\r\n{\"texts\": [\"a",
                true,
            ),
        ),
        4 => (
            "framing/both-lengths",
            request(
                "POST",
                "/api/v1/embed",
                &[
                    ("Content-Type", "application/json".into()),
                    ("Content-Length", body.len().to_string()),
                    ("Transfer-Encoding", "chunked".into()),
                ],
                body,
                true,
            ),
        ),
        _ => (
            "framing/bad-length",
            request(
                "POST",
                "/api/v1/embed",
                &[
                    ("Content-Type", "application/json".into()),
                    ("Content-Length", "-1, 12".into()),
                ],
                body,
                true,
            ),
        ),
    };
    Case {
        kind,
        bytes,
        close: kind != "framing/chunked",
    }
}

/// Bytes that are not HTTP, or barely.
fn garbage(rng: &mut StdRng) -> Case {
    let (kind, bytes) = match rng.random_range(0..4) {
        0 => {
            let n = rng.random_range(1..2000);
            ("garbage/random", (0..n).map(|_| rng.random()).collect())
        }
        1 => (
            "garbage/http2-preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        ),
        2 => (
            "garbage/bad-request-line",
            b"POST /api/v1/embed HTTP/9.9 extra\r\n\r\n".to_vec(),
        ),
        _ => (
            "garbage/header-without-colon",
            b"POST /api/v1/embed HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n".to_vec(),
        ),
    };
    Case {
        kind,
        bytes,
        close: true,
    }
}

/// Bodies past the server's limits: one long text, or a body over the byte limit (1 MiB default).
fn oversized(rng: &mut StdRng) -> Case {
    let (kind, body) = if rng.random_bool(0.5) {
        let text = "token ".repeat(rng.random_range(1_000..150_000));
        (
            "oversized/long-text",
            serde_json::json!({ "texts": [text] }),
        )
    } else {
        let texts: Vec<String> = (0..rng.random_range(20..64))
            .map(|_| "z".repeat(40_000))
            .collect();
        ("oversized/body", serde_json::json!({ "texts": texts }))
    };
    Case {
        kind,
        bytes: json_post("/api/v1/embed", body.to_string().as_bytes()),
        close: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_deterministic_for_a_seed() {
        for n in [0, 1, 17, 999_999] {
            assert_eq!(case(7, n).bytes, case(7, n).bytes);
        }
        let differ = (0..50)
            .filter(|&n| case(7, n).bytes != case(8, n).bytes)
            .count();
        assert!(
            differ > 40,
            "seeds 7 and 8 share {} of 50 cases",
            50 - differ
        );
    }

    #[test]
    fn the_stream_covers_every_family() {
        let kinds: std::collections::BTreeSet<&str> = (0..20_000)
            .map(|n| case(1, n).kind.split('/').next().unwrap())
            .collect();
        for family in [
            "valid",
            "body",
            "json",
            "texts",
            "openai",
            "headers",
            "method-or-path",
            "framing",
            "garbage",
            "oversized",
        ] {
            assert!(kinds.contains(family), "{family} missing from {kinds:?}");
        }
    }

    #[test]
    fn well_framed_cases_state_their_length() {
        for n in 0..5000 {
            let c = case(3, n);
            if c.close || c.kind == "framing/chunked" {
                continue;
            }
            let text = String::from_utf8_lossy(&c.bytes);
            let (head, _) = text.split_once("\r\n\r\n").expect("a header block");
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap_or_else(|| panic!("{}: no Content-Length", c.kind));
            let body_bytes = c.bytes.len() - (head.len() + 4);
            assert_eq!(len.parse::<usize>().unwrap(), body_bytes, "{}", c.kind);
        }
    }

    #[test]
    fn only_declared_statuses_are_allowed() {
        for ok in [200, 204, 400, 404, 405, 413, 415, 422, 429, 503, 504] {
            assert!(allowed_status(ok), "{ok}");
        }
        for bad in [100, 301, 500, 501, 502, 505] {
            assert!(!allowed_status(bad), "{bad}");
        }
    }
}
