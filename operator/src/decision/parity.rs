//! The embedding parity gate: the same texts embedded by the baseline and by the candidate must
//! point the same way. Latency and errors cannot see a server that tokenizes, truncates or pools
//! differently; every vector index built from the baseline's embeddings would silently degrade.
//!
//! The edge (`parity_probe`) sends the texts to one ready endpoint of each Service and hands the
//! raw answers here; this module compares them (cosine per text, dimension, model, count) and
//! judges. Embeddings are deterministic, so one probe is the evidence: the worst text below
//! `minCosine` fails the analysis at once (and `failureLimit` analyses in a row roll back); a
//! probe that could not be completed is Inconclusive, never a pass.

use crate::crd::{GateResult, ParitySpec, Verdict};

/// What one side answered: the served model's name and one embedding per text, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub model: String,
    pub embeddings: Vec<Vec<f32>>,
}

/// One probe: the texts sent, and each side's answer or why there is none.
#[derive(Clone, Debug, PartialEq)]
pub struct ParityProbe {
    pub texts: Vec<String>,
    pub baseline: Result<Answer, String>,
    pub candidate: Result<Answer, String>,
    /// Notes from the edge for the reasons (e.g. texts cut to `maxTextBytes`).
    pub notes: Vec<String>,
}

impl ParityProbe {
    /// A probe that could not be sent at all (e.g. the texts' ConfigMap is missing).
    pub fn unprobed(why: String) -> Self {
        Self {
            texts: Vec::new(),
            baseline: Err(why.clone()),
            candidate: Err(why),
            notes: Vec::new(),
        }
    }
}

/// The comparison of one probe, before judging.
#[derive(Clone, Debug, PartialEq)]
pub enum Comparison {
    /// Both answered consistently: cosine per text.
    Cosines(Vec<f64>),
    /// The answers cannot be compared: dimension, count or model disagree. A finding, not
    /// missing data: a candidate that answers with another dimension is not at parity.
    Mismatch(String),
    /// A side did not answer (connection, timeout, HTTP error, unreadable body).
    Missing(String),
}

/// Cosine similarity; `None` when either vector is zero or not finite (no direction to compare).
pub fn cosine(a: &[f32], b: &[f32]) -> Option<f64> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    let c = dot / (na.sqrt() * nb.sqrt());
    c.is_finite().then(|| c.clamp(-1.0, 1.0))
}

/// Compares the two answers text by text. When neither side was asked for a named model, the
/// two default models must have the same name.
pub fn compare(probe: &ParityProbe, spec: &ParitySpec) -> Comparison {
    let (b, c) = match (&probe.baseline, &probe.candidate) {
        (Err(e), Err(f)) if e == f => return Comparison::Missing(e.clone()),
        (Err(e), _) => return Comparison::Missing(format!("baseline: {e}")),
        (_, Err(e)) => return Comparison::Missing(format!("candidate: {e}")),
        (Ok(b), Ok(c)) => (b, c),
    };
    let n = probe.texts.len();
    for (side, a) in [("baseline", b), ("candidate", c)] {
        if a.embeddings.len() != n {
            return Comparison::Mismatch(format!(
                "the {side} returned {} embeddings for {n} texts",
                a.embeddings.len()
            ));
        }
    }
    if let Some(want) = &spec.model {
        if &c.model != want {
            return Comparison::Mismatch(format!(
                "the candidate answered with model {:?}, parity.model asks for {want:?}",
                c.model
            ));
        }
    }
    if let Some(want) = spec.baseline_model.as_ref().or(spec.model.as_ref()) {
        if &b.model != want {
            return Comparison::Mismatch(format!(
                "the baseline answered with model {:?}, parity asks it for {want:?}",
                b.model
            ));
        }
    }
    if spec.model.is_none() && spec.baseline_model.is_none() && b.model != c.model {
        return Comparison::Mismatch(format!(
            "the candidate serves model {:?}, the baseline {:?} (name them in parity.model and parity.baselineModel if they are meant to differ)",
            c.model, b.model
        ));
    }
    let mut cosines = Vec::with_capacity(n);
    for (i, (x, y)) in b.embeddings.iter().zip(&c.embeddings).enumerate() {
        if x.len() != y.len() {
            return Comparison::Mismatch(format!(
                "dimension {} (candidate) vs {} (baseline) for text {}",
                y.len(),
                x.len(),
                quote(&probe.texts[i])
            ));
        }
        match cosine(x, y) {
            Some(v) => cosines.push(v),
            None => {
                return Comparison::Mismatch(format!(
                    "a zero or non-finite embedding for text {}",
                    quote(&probe.texts[i])
                ))
            }
        }
    }
    Comparison::Cosines(cosines)
}

/// The gate's finding for one probe.
pub fn judge(probe: &ParityProbe, spec: &ParitySpec) -> Judgement {
    let threshold = spec.min_cosine;
    let n = probe.texts.len() as u64;
    let (verdict, evidence, value, missing) = match compare(probe, spec) {
        Comparison::Missing(why) => (
            Verdict::Inconclusive,
            format!("parity probe incomplete: {why}"),
            None,
            true,
        ),
        Comparison::Mismatch(why) => (Verdict::Fail, why, None, false),
        Comparison::Cosines(c) if c.is_empty() => (
            Verdict::Inconclusive,
            "parity probe had no texts".to_string(),
            None,
            true,
        ),
        Comparison::Cosines(c) => {
            let (worst_i, worst) = c
                .iter()
                .copied()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .expect("non-empty");
            let below = c.iter().filter(|v| **v < threshold).count();
            let evidence = format!(
                "min cosine {} over {n} texts (worst: {}){}",
                fmt_cos(worst),
                quote(&probe.texts[worst_i]),
                if below > 0 {
                    format!(", {below} below {}", fmt_cos(threshold))
                } else {
                    String::new()
                }
            );
            let verdict = if worst >= threshold {
                Verdict::Pass
            } else {
                Verdict::Fail
            };
            (verdict, evidence, Some(worst), false)
        }
    };
    let mut evidence = evidence;
    for note in &probe.notes {
        evidence.push_str("; ");
        evidence.push_str(note);
    }
    let reason = match verdict {
        Verdict::Pass => None,
        Verdict::Fail => Some(format!(
            "the candidate's embeddings differ from the baseline's (parity.minCosine {}): {evidence}",
            fmt_cos(threshold)
        )),
        Verdict::Inconclusive => Some(evidence.clone()),
    };
    Judgement {
        verdict,
        reason,
        missing,
        result: GateResult {
            gate: GATE.into(),
            verdict,
            evidence,
            value,
            low: None,
            high: None,
            threshold: Some(threshold),
            samples: Some(n),
        },
    }
}

/// The gate's name in analyses, history and events.
pub const GATE: &str = "parity";

/// What [`judge`] found, in the shape the other gates take.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub reason: Option<String>,
    /// Inconclusive for want of an answer: `noDataPolicy` applies.
    pub missing: bool,
    pub result: GateResult,
}

/// Whether the analysis at `look` (1 = the step's first) probes: the first look of every step
/// and then every `every`-th.
pub fn due(spec: &ParitySpec, look: u32) -> bool {
    let every = spec.every.max(1);
    look <= 1 || (look - 1).is_multiple_of(every)
}

/// A text for a status line: its first 40 characters, quoted, with its length when cut.
fn quote(text: &str) -> String {
    const SHOWN: usize = 40;
    let chars = text.chars().count();
    if chars <= SHOWN {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(SHOWN).collect();
        format!("{head:?}… ({chars} characters)")
    }
}

/// 0.99953: enough digits to tell 0.999 from 0.9995.
fn fmt_cos(v: f64) -> String {
    let s = format!("{v:.5}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// Built-in probe texts when the user names none: what breaks a port of a tokenizer or a model
/// (short, longer than the 256-token truncation, non-Latin scripts, emoji, punctuation only,
/// numbers and code).
pub fn builtin_texts() -> Vec<String> {
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

/// The texts of a user's ConfigMap value: a JSON or YAML list of strings, else one text per
/// non-empty line.
pub fn parse_texts(value: &str) -> Result<Vec<String>, String> {
    let trimmed = value.trim_start();
    if trimmed.starts_with('[') || trimmed.starts_with("- ") {
        return serde_yaml::from_str::<Vec<String>>(value)
            .map_err(|e| format!("the texts look like a list but are not one of strings: {e}"));
    }
    Ok(value
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect())
}

/// The texts one probe sends: at most `max_texts`, rotating through a larger set by `round` so
/// every text is probed over time; each cut to `max_text_bytes` at a character boundary. Returns
/// the texts and a note when some were cut.
pub fn select_texts(
    all: &[String],
    max_texts: usize,
    max_text_bytes: usize,
    round: u64,
) -> (Vec<String>, Option<String>) {
    let take = max_texts.min(all.len());
    let start = if all.len() > take && take > 0 {
        ((round as usize).wrapping_mul(take)) % all.len()
    } else {
        0
    };
    let mut cut = 0;
    let texts = (0..take)
        .map(|i| {
            let t = &all[(start + i) % all.len()];
            if t.len() <= max_text_bytes {
                t.clone()
            } else {
                cut += 1;
                let mut end = max_text_bytes;
                while !t.is_char_boundary(end) {
                    end -= 1;
                }
                t[..end].to_string()
            }
        })
        .collect();
    let note =
        (cut > 0).then(|| format!("{cut} texts cut to parity.maxTextBytes {max_text_bytes}"));
    (texts, note)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ParitySpec {
        serde_json::from_value(serde_json::json!({})).unwrap()
    }

    fn answer(model: &str, e: Vec<Vec<f32>>) -> Result<Answer, String> {
        Ok(Answer {
            model: model.into(),
            embeddings: e,
        })
    }

    fn probe(b: Vec<Vec<f32>>, c: Vec<Vec<f32>>) -> ParityProbe {
        ParityProbe {
            texts: (0..b.len()).map(|i| format!("text {i}")).collect(),
            baseline: answer("m", b),
            candidate: answer("m", c),
            notes: vec![],
        }
    }

    #[test]
    fn cosine_is_scale_free_and_refuses_zero_vectors() {
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((cosine(&[1.0, 0.0], &[0.0, 3.0]).unwrap()).abs() < 1e-12);
        assert!((cosine(&[1.0, 1.0], &[-1.0, -1.0]).unwrap() + 1.0).abs() < 1e-12);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), None);
        assert_eq!(cosine(&[f32::NAN, 0.0], &[1.0, 0.0]), None);
        assert_eq!(cosine(&[1.0], &[1.0, 0.0]), None);
    }

    #[test]
    fn equal_embeddings_pass_and_the_worst_text_is_named() {
        let j = judge(
            &probe(
                vec![vec![1.0, 0.0], vec![0.0, 1.0]],
                vec![vec![1.0, 0.001], vec![0.0, 1.0]],
            ),
            &spec(),
        );
        assert_eq!(j.verdict, Verdict::Pass, "{:?}", j.result.evidence);
        assert!(
            j.result.evidence.contains("\"text 0\""),
            "{}",
            j.result.evidence
        );
        assert_eq!(j.result.threshold, Some(0.999));
        assert_eq!(j.result.samples, Some(2));
        assert!(j.reason.is_none());
    }

    #[test]
    fn one_text_below_the_threshold_fails_with_its_cosine() {
        // cos = 0.98 for the second text.
        let j = judge(
            &probe(
                vec![vec![1.0, 0.0], vec![1.0, 0.0]],
                vec![vec![1.0, 0.0], vec![0.98, (1.0f32 - 0.98 * 0.98).sqrt()]],
            ),
            &spec(),
        );
        assert_eq!(j.verdict, Verdict::Fail);
        let r = j.reason.unwrap();
        assert!(r.contains("min cosine 0.98 over 2 texts"), "{r}");
        assert!(r.contains("\"text 1\""), "{r}");
        assert!(r.contains("1 below 0.999"), "{r}");
        assert!(!j.missing);
    }

    #[test]
    fn the_threshold_is_inclusive() {
        let mut s = spec();
        s.min_cosine = 1.0;
        let j = judge(&probe(vec![vec![1.0, 0.0]], vec![vec![2.0, 0.0]]), &s);
        assert_eq!(j.verdict, Verdict::Pass, "{}", j.result.evidence);
    }

    #[test]
    fn a_different_dimension_or_count_fails_as_a_mismatch() {
        let j = judge(
            &probe(vec![vec![1.0, 0.0]], vec![vec![1.0, 0.0, 0.0]]),
            &spec(),
        );
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(j
            .result
            .evidence
            .contains("dimension 3 (candidate) vs 2 (baseline)"));
        let mut p = probe(vec![vec![1.0], vec![1.0]], vec![vec![1.0], vec![1.0]]);
        p.candidate = answer("m", vec![vec![1.0]]);
        let j = judge(&p, &spec());
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(j
            .result
            .evidence
            .contains("candidate returned 1 embeddings for 2 texts"));
    }

    #[test]
    fn models_must_agree_unless_named() {
        let mut p = probe(vec![vec![1.0]], vec![vec![1.0]]);
        p.candidate = answer("other", vec![vec![1.0]]);
        let j = judge(&p, &spec());
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.result.evidence.contains("\"other\""),
            "{}",
            j.result.evidence
        );
        // Named on both sides: the names may differ, each must be what was asked for.
        let mut s = spec();
        s.model = Some("other".into());
        s.baseline_model = Some("m".into());
        assert_eq!(judge(&p, &s).verdict, Verdict::Pass);
        s.baseline_model = Some("x".into());
        let j = judge(&p, &s);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(j
            .result
            .evidence
            .contains("baseline answered with model \"m\""));
    }

    #[test]
    fn an_unanswered_probe_is_inconclusive_missing_data_never_a_pass() {
        let mut p = probe(vec![vec![1.0]], vec![vec![1.0]]);
        p.candidate = Err("timed out after 5s".into());
        let j = judge(&p, &spec());
        assert_eq!(j.verdict, Verdict::Inconclusive);
        assert!(j.missing);
        assert!(j.reason.unwrap().contains("candidate: timed out after 5s"));
        let j = judge(&probe(vec![], vec![]), &spec());
        assert_eq!(j.verdict, Verdict::Inconclusive);
    }

    #[test]
    fn edge_notes_reach_the_evidence() {
        let mut p = probe(vec![vec![1.0]], vec![vec![1.0]]);
        p.notes.push("2 texts cut to parity.maxTextBytes 10".into());
        assert!(judge(&p, &spec())
            .result
            .evidence
            .ends_with("; 2 texts cut to parity.maxTextBytes 10"));
    }

    #[test]
    fn the_probe_runs_on_the_first_look_and_every_nth() {
        let mut s = spec();
        assert!((1..6).all(|l| due(&s, l)));
        s.every = 3;
        let due_at: Vec<u32> = (1..9).filter(|l| due(&s, *l)).collect();
        assert_eq!(due_at, vec![1, 4, 7]);
    }

    #[test]
    fn texts_rotate_through_a_larger_set_and_are_cut_at_char_boundaries() {
        let all: Vec<String> = (0..5).map(|i| format!("t{i}")).collect();
        assert_eq!(select_texts(&all, 2, 100, 0).0, vec!["t0", "t1"]);
        assert_eq!(select_texts(&all, 2, 100, 1).0, vec!["t2", "t3"]);
        assert_eq!(select_texts(&all, 2, 100, 2).0, vec!["t4", "t0"]);
        assert_eq!(select_texts(&all, 9, 100, 7).0.len(), 5);
        let (t, note) = select_texts(&["ééé".to_string()], 4, 3, 0);
        assert_eq!(t, vec!["é"]);
        assert_eq!(note.unwrap(), "1 texts cut to parity.maxTextBytes 3");
    }

    #[test]
    fn user_texts_come_as_lines_or_as_a_list() {
        assert_eq!(parse_texts("a\n\n b \nc\n").unwrap(), vec!["a", " b", "c"]);
        assert_eq!(parse_texts("[\"x, y\", \"z\"]").unwrap(), vec!["x, y", "z"]);
        assert_eq!(parse_texts("- one\n- two\n").unwrap(), vec!["one", "two"]);
        assert!(parse_texts("[1, [2]]").is_err());
    }

    #[test]
    fn builtin_texts_cover_what_breaks_ports() {
        let t = builtin_texts();
        assert_eq!(t.len(), 16);
        assert!(
            t.iter().any(|s| s.len() > 2000),
            "one text beyond 256 tokens"
        );
        assert!(t
            .iter()
            .any(|s| !s.is_ascii() && s.chars().any(|c| c as u32 > 0x1F000)));
        assert!(t
            .iter()
            .any(|s| s.chars().all(|c| c.is_ascii_punctuation() || c == ' ')));
    }
}
