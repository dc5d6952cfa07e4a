//! The server against the fuzzer's request stream (loadgen's `fuzz`): valid, malformed and
//! hostile requests as raw bytes. Every answer must be 2xx/4xx/429/503/504, never a 500 (a caught
//! panic) or a well-formed request dropped without an answer, and the server must stay up.
//! `make bench` runs the same stream a million times against the real model (embed-fuzz).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::start;
use embed_loadgen::fuzz::case;
use embed_loadgen::fuzz_client::{acceptable, health, send, Outcome};

const CASES: u64 = 20_000;
const CONNECTIONS: u64 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_generated_request_gets_a_declared_answer_and_the_server_stays_up() {
    let s = start(&["--max-body-bytes", "1048576"]).await;
    let addr = s.addr.to_string();
    let statuses: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let violations: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for worker in 0..CONNECTIONS {
        let (addr, statuses, violations) =
            (addr.clone(), Arc::clone(&statuses), Arc::clone(&violations));
        tasks.push(tokio::spawn(async move {
            let mut conn = None;
            let mut buf = Vec::new();
            for n in (worker..CASES).step_by(CONNECTIONS as usize) {
                let c = case(42, n);
                let (outcome, _) = send(&addr, &mut conn, &c, &mut buf).await;
                let key = match &outcome {
                    Outcome::Status(s) => format!("{}/{s}", c.kind.split('/').next().unwrap()),
                    other => format!("{}/{other:?}", c.kind),
                };
                *statuses.lock().unwrap().entry(key).or_default() += 1;
                if !acceptable(&c, &outcome) {
                    violations
                        .lock()
                        .unwrap()
                        .push(format!("case {n} ({}): {outcome:?}", c.kind));
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let statuses = statuses.lock().unwrap().clone();
    let violations = violations.lock().unwrap().clone();
    assert!(
        violations.is_empty(),
        "{} violations, first: {:?}\nall outcomes: {statuses:?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );
    // The stream reached the model and the validation both.
    let count = |prefix: &str| -> u64 {
        statuses
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    };
    assert!(count("valid/200") > 100, "{statuses:?}");
    assert!(count("texts/4") > 1000, "{statuses:?}");
    assert!(count("oversized/413") > 0, "{statuses:?}");
    if let Err(e) = health(&addr).await {
        panic!("the server stopped answering /health/live: {e}");
    }
    let (code, _) = s.embed(serde_json::json!({"texts": ["still here"]})).await;
    assert_eq!(code, 200);
}
