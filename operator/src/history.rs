//! The evidence kept: every analysis of a rollout, for its whole life, in
//! `EmbeddingRolloutAnalysis` objects (pure: names, labels, the compact record, where the next
//! analysis goes, the append patch). The API calls are in [`crate::history_store`].
//!
//! `status.history` keeps only the last [`HISTORY_LIMIT`](crate::crd::HISTORY_LIMIT) analyses: a two-week step analysing
//! every minute makes about 20,000, far past what one object may hold (the API server refuses
//! a request over 3 MiB and etcd an object over 1.5 MiB). So each run of a step gets objects of
//! its own, [`ANALYSES_PER_OBJECT`] analyses or [`OBJECT_BYTES`] each, whichever comes first,
//! named and labelled after the rollout, the step, when the step began and the object's place
//! in it; owned by the rollout, they are garbage-collected with it.
//!
//! `status.history` is also the outbox: after the status write, every analysis in it newer than
//! the newest one kept (the watermark) is appended, oldest first. A failed append stays in the
//! status and is tried again at the next reconcile; one that stays out longer than
//! `HISTORY_LIMIT` analyses leaves a gap, which the look numbers show (see [`missing_before`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::json;

use crate::crd::{
    AnalysisRecord, EmbeddingRolloutAnalysis, EmbeddingRolloutAnalysisSpec, EmbeddingRolloutStatus,
    GateResult, StoredAnalysis, StoredGate, Verdict, ANALYSES_PER_OBJECT, CHUNK_LABEL,
    ROLLOUT_LABEL, STEP_LABEL, STEP_STARTED_LABEL,
};
use crate::workload::{MANAGED_BY_LABEL, MANAGER};

/// The most bytes of analyses (their JSON) one object takes before the next one is started:
/// a quarter of the 1 MiB that keeps a Kubernetes object comfortable (etcd refuses 1.5 MiB), so
/// an append rewrites at most this much and a record at its largest (see [`REASON_BYTES`])
/// still fits behind it.
pub const OBJECT_BYTES: usize = 256 * 1024;
/// Each reason is cut to this many bytes, and a record keeps at most [`REASONS`] of them.
pub const REASON_BYTES: usize = 1024;
pub const REASONS: usize = 64;
/// Significant digits kept of each measurement.
const DIGITS: i32 = 6;

/// One run of a step: the step index and weight, and when its weight was applied. A retry or a
/// new candidate runs the same step again, with another start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepRun {
    pub step: u32,
    pub weight: u8,
    pub started_at: DateTime<Utc>,
}

/// The run of the step an analysis was taken in: the step summary it counts in, else the
/// status's current step, else (an analysis older than both) a run of its own.
pub fn run_of(status: &EmbeddingRolloutStatus, a: &AnalysisRecord) -> StepRun {
    let started_at = status
        .step_summaries
        .iter()
        .rfind(|s| s.step == a.step && s.started_at <= a.time)
        .map(|s| s.started_at)
        .or(status
            .step_started_at
            .filter(|s| status.current_step == a.step && *s <= a.time))
        .unwrap_or(a.time);
    StepRun {
        step: a.step,
        weight: a.weight,
        started_at,
    }
}

/// The analyses of `status.history` not kept yet: newer than `watermark` (the newest kept),
/// oldest first.
pub fn pending(
    status: &EmbeddingRolloutStatus,
    watermark: Option<DateTime<Utc>>,
) -> Vec<&AnalysisRecord> {
    let mut out: Vec<&AnalysisRecord> = status
        .history
        .iter()
        .filter(|a| watermark.is_none_or(|w| a.time > w))
        .collect();
    out.sort_by_key(|a| a.time);
    out
}

/// `<rollout>-step<n>-<YYYYMMDD-HHMMSS>-<chunk>` (n counted from 1), e.g.
/// `embed-step2-20250301-100000-0000`; a rollout name too long for that is cut and a hash of
/// it added, so the name stays a valid, distinct object name.
pub fn object_name(rollout: &str, run: &StepRun, chunk: u32) -> String {
    let suffix = format!(
        "-step{}-{}-{chunk:04}",
        run.step + 1,
        run.started_at.format("%Y%m%d-%H%M%S")
    );
    const MAX: usize = 253;
    if rollout.len() + suffix.len() <= MAX {
        return format!("{rollout}{suffix}");
    }
    let hash = format!("{:08x}", fnv1a(rollout.as_bytes()) as u32);
    let mut keep = MAX - suffix.len() - hash.len() - 1;
    while !rollout.is_char_boundary(keep) {
        keep -= 1;
    }
    let head = rollout[..keep].trim_end_matches(['-', '.']);
    format!("{head}-{hash}{suffix}")
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The value of [`STEP_STARTED_LABEL`]: `20250301T100000Z` (sorts as time does).
pub fn started_label(at: DateTime<Utc>) -> String {
    at.format("%Y%m%dT%H%M%SZ").to_string()
}

/// Labels of an object: the rollout, the step, when it began, the object's place in it.
pub fn labels(rollout: &str, run: &StepRun, chunk: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        (ROLLOUT_LABEL.to_string(), rollout.to_string()),
        (STEP_LABEL.to_string(), run.step.to_string()),
        (
            STEP_STARTED_LABEL.to_string(),
            started_label(run.started_at),
        ),
        (CHUNK_LABEL.to_string(), chunk.to_string()),
        (MANAGED_BY_LABEL.to_string(), MANAGER.to_string()),
    ])
}

/// The compact form of an analysis (see [`StoredAnalysis`]).
pub fn compact(a: &AnalysisRecord) -> StoredAnalysis {
    let mut reasons: Vec<String> = a
        .reasons
        .iter()
        .take(REASONS)
        .map(|r| cut(r, REASON_BYTES))
        .collect();
    if a.reasons.len() > REASONS {
        reasons.push(format!("... and {} more", a.reasons.len() - REASONS));
    }
    StoredAnalysis {
        t: a.time,
        v: a.verdict,
        n: a.look,
        c95: sig(a.candidate_p95_ms),
        b95: sig(a.baseline_p95_ms),
        ce: sig(a.error_rate),
        be: sig(a.baseline_error_rate),
        br: a.breaker_state,
        rq: sig(a.request_count),
        cs: a.step_requests,
        bs: a.baseline_step_requests,
        g: a.gates
            .iter()
            .map(|g| StoredGate {
                n: g.gate.clone(),
                v: g.verdict,
                x: sig(g.value),
                lo: sig(g.low),
                hi: sig(g.high),
                th: sig(g.threshold),
                s: g.samples,
            })
            .collect(),
        r: reasons,
    }
}

/// An analysis back in the status's shape (for tables); the gates' evidence sentences are not
/// kept, so each says what its numbers are.
pub fn expand(spec: &EmbeddingRolloutAnalysisSpec, a: &StoredAnalysis) -> AnalysisRecord {
    AnalysisRecord {
        time: a.t,
        step: spec.step,
        weight: spec.weight,
        candidate_p95_ms: a.c95,
        baseline_p95_ms: a.b95,
        error_rate: a.ce,
        baseline_error_rate: a.be,
        breaker_state: a.br,
        request_count: a.rq,
        step_requests: a.cs,
        baseline_step_requests: a.bs,
        look: a.n,
        gates: a
            .g
            .iter()
            .map(|g| GateResult {
                gate: g.n.clone(),
                verdict: g.v,
                evidence: String::new(),
                value: g.x,
                low: g.lo,
                high: g.hi,
                threshold: g.th,
                samples: g.s,
            })
            .collect(),
        verdict: a.v,
        reasons: a.r.clone(),
    }
}

/// Bytes the analysis adds to an object (its JSON and a separator).
pub fn stored_bytes(a: &StoredAnalysis) -> usize {
    serde_json::to_vec(a).map_or(0, |v| v.len()) + 1
}

/// `x` with [`DIGITS`] significant digits (printed as such: the division is exact to the double
/// nearest the decimal).
fn sig(x: Option<f64>) -> Option<f64> {
    let x = x.filter(|v| v.is_finite())?;
    if x == 0.0 {
        return Some(0.0);
    }
    let d = DIGITS - 1 - x.abs().log10().floor() as i32;
    Some(if d > 22 {
        // Below 1e-17: no power of ten to divide by exactly; such values are rare and short.
        x
    } else if d >= 0 {
        let p = 10f64.powi(d);
        (x * p).round() / p
    } else {
        let q = 10f64.powi(-d);
        (x / q).round() * q
    })
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max - "...".len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The newest object of a rollout as last read or written: where the next analysis goes.
#[derive(Clone, Debug, PartialEq)]
pub struct Tail {
    pub name: String,
    pub run: StepRun,
    pub chunk: u32,
    pub count: u32,
    pub passed: u32,
    pub failed: u32,
    pub inconclusive: u32,
    /// Bytes of its analyses (their JSON).
    pub bytes: usize,
    pub last_time: DateTime<Utc>,
    pub last_look: Option<u32>,
}

impl Tail {
    pub fn of(obj: &EmbeddingRolloutAnalysis) -> Tail {
        let s = &obj.spec;
        Tail {
            name: obj.metadata.name.clone().unwrap_or_default(),
            run: StepRun {
                step: s.step,
                weight: s.weight,
                started_at: s.step_started_at,
            },
            chunk: s.chunk,
            count: s.count,
            passed: s.passed,
            failed: s.failed,
            inconclusive: s.inconclusive,
            bytes: s.analyses.iter().map(stored_bytes).sum(),
            // What the analyses say, should the counters ever disagree with them.
            last_time: s.analyses.iter().map(|a| a.t).max().unwrap_or(s.last_time),
            last_look: s.analyses.last().and_then(|a| a.n),
        }
    }

    /// After `a` was appended.
    pub fn push(&mut self, a: &StoredAnalysis) {
        self.count += 1;
        match a.v {
            Verdict::Pass => self.passed += 1,
            Verdict::Fail => self.failed += 1,
            Verdict::Inconclusive => self.inconclusive += 1,
        }
        self.bytes += stored_bytes(a);
        self.last_time = a.t;
        self.last_look = a.n;
    }

    /// Whether `a` is kept already (in this object, or in one before it).
    pub fn holds(&self, a: &StoredAnalysis) -> bool {
        a.t <= self.last_time
    }
}

/// Where an analysis of `run` goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// At the end of the tail object.
    Append,
    /// Into a new object, the `chunk`th of its run.
    New { chunk: u32 },
}

pub fn place(tail: Option<&Tail>, run: &StepRun, a: &StoredAnalysis) -> Place {
    match tail {
        Some(t) if t.run == *run => {
            if (t.count as usize) < ANALYSES_PER_OBJECT && t.bytes + stored_bytes(a) <= OBJECT_BYTES
            {
                Place::Append
            } else {
                Place::New { chunk: t.chunk + 1 }
            }
        }
        _ => Place::New { chunk: 0 },
    }
}

/// Analyses of the tail's run taken (by their look numbers) between the tail's last one and
/// `a`, that no object holds: they left `status.history` before they could be appended.
pub fn missing_before(tail: Option<&Tail>, run: &StepRun, a: &StoredAnalysis) -> u32 {
    match (tail, a.n) {
        (Some(t), Some(n)) if t.run == *run => match t.last_look {
            Some(last) => n.saturating_sub(last).saturating_sub(1),
            None => 0,
        },
        _ => 0,
    }
}

/// The JSON patch that appends `a` to the tail object: guarded by a `test` of the count the
/// tail was computed from, so a second writer (a retried request that did land, a former
/// leader) makes it fail instead of appending twice or losing a count.
pub fn append_patch(tail: &Tail, a: &StoredAnalysis) -> serde_json::Value {
    let (counter, value) = match a.v {
        Verdict::Pass => ("/spec/passed", tail.passed + 1),
        Verdict::Fail => ("/spec/failed", tail.failed + 1),
        Verdict::Inconclusive => ("/spec/inconclusive", tail.inconclusive + 1),
    };
    json!([
        {"op": "test", "path": "/spec/count", "value": tail.count},
        {"op": "add", "path": "/spec/analyses/-", "value": a},
        {"op": "replace", "path": "/spec/count", "value": tail.count + 1},
        {"op": "replace", "path": counter, "value": value},
        {"op": "replace", "path": "/spec/lastTime", "value": a.t},
        {"op": "replace", "path": "/spec/lastVerdict", "value": a.v},
    ])
}

/// A new object holding `a`, the `chunk`th of its run, owned by the rollout (not as its
/// controller: nothing reconciles these; `blockOwnerDeletion`, so a foreground deletion of the
/// rollout removes its evidence first).
pub fn new_object(
    owner: &OwnerReference,
    namespace: &str,
    steps: usize,
    run: &StepRun,
    chunk: u32,
    a: &StoredAnalysis,
) -> EmbeddingRolloutAnalysis {
    let rollout = owner.name.as_str();
    let count = |v| u32::from(a.v == v);
    let spec = EmbeddingRolloutAnalysisSpec {
        rollout: rollout.to_string(),
        step: run.step,
        step_of: format!("{}/{steps}", run.step + 1),
        weight: run.weight,
        step_started_at: run.started_at,
        chunk,
        count: 1,
        passed: count(Verdict::Pass),
        failed: count(Verdict::Fail),
        inconclusive: count(Verdict::Inconclusive),
        first_time: a.t,
        last_time: a.t,
        last_verdict: a.v,
        analyses: vec![a.clone()],
    };
    EmbeddingRolloutAnalysis {
        metadata: ObjectMeta {
            name: Some(object_name(rollout, run, chunk)),
            namespace: Some(namespace.to_string()),
            labels: Some(labels(rollout, run, chunk)),
            owner_references: Some(vec![OwnerReference {
                controller: Some(false),
                block_owner_deletion: Some(true),
                ..owner.clone()
            }]),
            ..ObjectMeta::default()
        },
        spec,
    }
}

/// Of a rollout's objects (as listed, metadata only), the newest: the latest step start, then
/// the highest chunk. Objects owned by another object of the rollout's name (a rollout deleted
/// and created again, its evidence not yet collected) are left out when `owner_uid` is known.
pub fn newest<'a>(objects: &'a [ObjectMeta], owner_uid: Option<&str>) -> Option<&'a ObjectMeta> {
    objects
        .iter()
        .filter(|m| owned_by(m, owner_uid))
        .max_by_key(|m| {
            let label = |k: &str| {
                m.labels
                    .as_ref()
                    .and_then(|l| l.get(k))
                    .cloned()
                    .unwrap_or_default()
            };
            (
                label(STEP_STARTED_LABEL),
                label(CHUNK_LABEL).parse::<u32>().unwrap_or(0),
            )
        })
}

fn owned_by(m: &ObjectMeta, owner_uid: Option<&str>) -> bool {
    match owner_uid {
        None => true,
        Some(uid) => m
            .owner_references
            .as_ref()
            .is_some_and(|o| o.iter().any(|r| r.uid == uid)),
    }
}

/// Every analysis of a rollout, oldest first: those its objects hold (in step-start, then chunk
/// order), then those of `status.history` newer than the newest held (not appended yet). No
/// objects: `status.history` alone (a rollout from before they were kept, or a cluster without
/// their CRD).
pub fn all_analyses(
    objects: &[EmbeddingRolloutAnalysis],
    owner_uid: Option<&str>,
    status: Option<&EmbeddingRolloutStatus>,
) -> Vec<AnalysisRecord> {
    let mut objects: Vec<&EmbeddingRolloutAnalysis> = objects
        .iter()
        .filter(|o| owned_by(&o.metadata, owner_uid))
        .collect();
    objects.sort_by_key(|o| (o.spec.step_started_at, o.spec.chunk));
    let mut out: Vec<AnalysisRecord> = objects
        .iter()
        .flat_map(|o| o.spec.analyses.iter().map(|a| expand(&o.spec, a)))
        .collect();
    let kept = out.last().map(|a| a.time);
    if let Some(st) = status {
        out.extend(
            st.history
                .iter()
                .filter(|a| kept.is_none_or(|k| a.time > k))
                .cloned(),
        );
    }
    out
}

/// Where looks are missing between consecutive analyses of one step run in `records` (in
/// order): (the analysis after the gap, how many are missing).
pub fn gaps(records: &[AnalysisRecord]) -> Vec<(DateTime<Utc>, u32)> {
    records
        .windows(2)
        .filter_map(|w| {
            let (a, b) = (&w[0], &w[1]);
            match (a.look, b.look) {
                (Some(x), Some(y)) if a.step == b.step && a.weight == b.weight && y > x + 1 => {
                    Some((b.time, y - x - 1))
                }
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{BreakerState, StepSummary, HISTORY_LIMIT};
    use chrono::TimeZone;

    fn t(min: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 1, 10, 0, 0).unwrap() + chrono::Duration::minutes(min)
    }

    fn gate(
        name: &str,
        verdict: Verdict,
        value: f64,
        bounds: Option<(f64, f64)>,
        threshold: f64,
        n: Option<u64>,
    ) -> GateResult {
        GateResult {
            gate: name.into(),
            verdict,
            evidence: format!("{name}: P(>35 ms) = 1.1 % (99.97 % CI 0.6-1.8 %, n = 1500)"),
            value: Some(value),
            low: bounds.map(|b| b.0),
            high: bounds.map(|b| b.1),
            threshold: Some(threshold),
            samples: n,
        }
    }

    /// An analysis as the decision writes one: the four built-in gates with the numbers
    /// `decision::analysis` gives each (fractions with their bounds, the comparison in ms).
    fn record(min: i64, step: u32, look: u32, verdict: Verdict) -> AnalysisRecord {
        let gates = vec![
            gate(
                "maxP95Ms",
                verdict,
                0.011_234_567_8,
                Some((0.006_012_3, 0.019_876_5)),
                0.05,
                Some(1523),
            ),
            gate(
                "maxP95OverBaselineMs",
                Verdict::Pass,
                21.503_125,
                Some((17.25, 19.987_654_3)),
                23.5,
                Some(1523),
            ),
            gate(
                "maxErrorRate",
                Verdict::Pass,
                0.001_969_8,
                Some((0.000_4, 0.005_123_4)),
                0.005,
                Some(1523),
            ),
            gate("requireBreakerClosed", Verdict::Pass, 0.0, None, 0.0, None),
        ];
        AnalysisRecord {
            time: t(min),
            step,
            weight: 10,
            candidate_p95_ms: Some(21.503_125_000_000_2),
            baseline_p95_ms: Some(18.499_999_999),
            error_rate: Some(0.001_969_816_143_1),
            baseline_error_rate: Some(0.000_620_732_464),
            breaker_state: Some(BreakerState::Closed),
            request_count: Some(1_523.000_000_1),
            step_requests: Some(1523),
            baseline_step_requests: Some(1611),
            look: Some(look),
            gates,
            verdict,
            reasons: if verdict == Verdict::Pass {
                vec![]
            } else {
                vec!["maxP95Ms: P(>35 ms) = 6.1 % (99.97 % CI 5.2-7.0 %, n = 1500)".into()]
            },
        }
    }

    fn run(step: u32, min: i64) -> StepRun {
        StepRun {
            step,
            weight: 10,
            started_at: t(min),
        }
    }

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "rollout.akidb.io/v1alpha1".into(),
            kind: "EmbeddingRollout".into(),
            name: "embed".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: None,
        }
    }

    #[test]
    fn a_compact_record_keeps_the_numbers_in_less_than_half_the_bytes() {
        let full = record(3, 1, 4, Verdict::Pass);
        let a = compact(&full);
        let full_bytes = serde_json::to_vec(&full).unwrap().len();
        let bytes = stored_bytes(&a);
        println!("bytes per analysis: status record {full_bytes}, kept {bytes}");
        assert!(bytes * 2 < full_bytes, "{bytes} vs {full_bytes}");
        assert!(
            bytes <= 700,
            "{bytes}: {}",
            serde_json::to_string(&a).unwrap()
        );
        // Six significant digits, printed as such.
        assert_eq!(a.c95, Some(21.5031));
        assert_eq!(a.b95, Some(18.5));
        assert_eq!(a.ce, Some(0.001_969_82));
        assert_eq!(a.rq, Some(1523.0));
        let json = serde_json::to_string(&a).unwrap();
        assert!(json.contains("\"c95\":21.5031,"), "{json}");
        assert!(json.contains("\"x\":0.0112346,"), "{json}");
        assert!(!json.contains("CI"), "no evidence sentences: {json}");
        // Back in the status's shape: everything but the evidence sentences.
        let spec = new_object(&owner(), "prod", 4, &run(1, 0), 0, &a).spec;
        let back = expand(&spec, &a);
        assert_eq!(back.time, full.time);
        assert_eq!((back.step, back.weight, back.look), (1, 10, Some(4)));
        assert_eq!(back.verdict, full.verdict);
        assert_eq!(back.step_requests, Some(1523));
        assert_eq!(back.gates.len(), 4);
        assert_eq!(back.gates[0].gate, "maxP95Ms");
        assert_eq!(back.gates[0].threshold, Some(0.05));
        assert_eq!(back.gates[0].samples, Some(1523));
        assert_eq!(back.gates[3].low, None);
        assert!(back.gates.iter().all(|g| g.evidence.is_empty()));
    }

    #[test]
    fn significant_digits_are_exact_decimals_at_every_scale() {
        for (x, want) in [
            (123_456_789.0, 123_457_000.0),
            (0.000_123_456_789, 0.000_123_457),
            (35.0, 35.0),
            (-2.468_135_79, -2.468_14),
            (0.0, 0.0),
            (1e-300, 1e-300),
        ] {
            assert_eq!(sig(Some(x)), Some(want), "{x}");
        }
        assert_eq!(sig(Some(f64::NAN)), None);
        assert_eq!(sig(Some(f64::INFINITY)), None);
        assert_eq!(sig(None), None);
    }

    #[test]
    fn reasons_are_bounded_in_length_and_number() {
        let mut r = record(0, 0, 1, Verdict::Inconclusive);
        r.reasons = (0..100)
            .map(|i| format!("{i}: {}", "é".repeat(900)))
            .collect();
        let a = compact(&r);
        assert_eq!(a.r.len(), REASONS + 1);
        assert!(a.r.iter().all(|s| s.len() <= REASON_BYTES));
        assert!(a.r[0].ends_with("..."));
        assert_eq!(a.r[REASONS], "... and 36 more");
    }

    #[test]
    fn a_step_run_analysing_every_minute_for_two_weeks_fills_objects_well_below_the_limit() {
        // 20,160 analyses (14 days, one a minute), each failing now and then, with a reason.
        let r = run(2, 0);
        let mut tail: Option<Tail> = None;
        let mut objects: Vec<EmbeddingRolloutAnalysis> = Vec::new();
        let minutes = 14 * 24 * 60;
        for i in 0..minutes {
            let verdict = if i % 97 == 0 {
                Verdict::Fail
            } else {
                Verdict::Pass
            };
            let mut rec = record(i, 2, (i + 1) as u32, verdict);
            rec.weight = 10;
            let a = compact(&rec);
            match place(tail.as_ref(), &r, &a) {
                Place::Append => {
                    let sampled = objects.len() == 1;
                    let t = tail.as_mut().unwrap();
                    let o = objects.last_mut().unwrap();
                    if sampled {
                        // What the API server does with the patch, and the tail kept in step.
                        let mut v = serde_json::to_value(&*o).unwrap();
                        let patch: json_patch::Patch =
                            serde_json::from_value(append_patch(t, &a)).unwrap();
                        json_patch::patch(&mut v, &patch).unwrap();
                        *o = serde_json::from_value(v).unwrap();
                        t.push(&a);
                        assert_eq!(Tail::of(o), *t);
                    } else {
                        // The same, without a round trip per analysis (debug builds are slow).
                        let s = &mut o.spec;
                        s.analyses.push(a.clone());
                        s.count += 1;
                        s.passed += u32::from(a.v == Verdict::Pass);
                        s.failed += u32::from(a.v == Verdict::Fail);
                        s.last_time = a.t;
                        s.last_verdict = a.v;
                        t.push(&a);
                    }
                }
                Place::New { chunk } => {
                    assert_eq!(chunk as usize, objects.len());
                    let o = new_object(&owner(), "prod", 4, &r, chunk, &a);
                    tail = Some(Tail::of(&o));
                    objects.push(o);
                }
            }
        }
        let sizes: Vec<usize> = objects
            .iter()
            .map(|o| serde_json::to_vec(o).unwrap().len())
            .collect();
        let largest = *sizes.iter().max().unwrap();
        println!(
            "{minutes} analyses in {} objects of {ANALYSES_PER_OBJECT}; largest {largest} bytes",
            objects.len()
        );
        assert_eq!(
            objects.len(),
            (minutes as usize).div_ceil(ANALYSES_PER_OBJECT)
        );
        assert!(largest < 200 * 1024, "{largest}");
        let all = all_analyses(&objects, Some("uid-1"), None);
        assert_eq!(all.len(), minutes as usize);
        assert!(all.windows(2).all(|w| w[0].time < w[1].time));
        assert!(gaps(&all).is_empty());
        let o = &objects[3].spec;
        assert_eq!((o.chunk, o.count), (3, ANALYSES_PER_OBJECT as u32));
        assert_eq!(o.passed + o.failed + o.inconclusive, o.count);
        assert_eq!(o.first_time, o.analyses[0].t);
        assert_eq!(o.last_time, o.analyses.last().unwrap().t);
    }

    #[test]
    fn large_analyses_start_a_new_object_before_the_byte_budget() {
        let r = run(0, 0);
        let mut rec = record(1, 0, 1, Verdict::Inconclusive);
        rec.reasons = (0..60)
            .map(|i| format!("{i}: {}", "x".repeat(1000)))
            .collect();
        let a = compact(&rec);
        let bytes = stored_bytes(&a);
        assert!(bytes > 60_000, "{bytes}");
        let mut tail = Tail::of(&new_object(&owner(), "prod", 4, &r, 0, &a));
        let mut appended = 1;
        while place(Some(&tail), &r, &a) == Place::Append {
            tail.push(&a);
            appended += 1;
        }
        assert_eq!(appended, OBJECT_BYTES / bytes);
        assert_eq!(place(Some(&tail), &r, &a), Place::New { chunk: 1 });
        // Another run of the step (a retry) starts over at chunk 0.
        assert_eq!(place(Some(&tail), &run(0, 50), &a), Place::New { chunk: 0 });
        assert_eq!(place(None, &r, &a), Place::New { chunk: 0 });
    }

    #[test]
    fn the_append_patch_tests_the_count_and_moves_every_counter() {
        let r = run(1, 0);
        let first = compact(&record(1, 1, 1, Verdict::Pass));
        let tail = Tail::of(&new_object(&owner(), "prod", 4, &r, 0, &first));
        let a = compact(&record(2, 1, 2, Verdict::Fail));
        let p = append_patch(&tail, &a);
        assert_eq!(
            p[0],
            json!({"op": "test", "path": "/spec/count", "value": 1})
        );
        assert_eq!(p[1]["path"], "/spec/analyses/-");
        assert_eq!(p[1]["value"]["t"], "2025-03-01T10:02:00Z");
        assert_eq!(
            p[2],
            json!({"op": "replace", "path": "/spec/count", "value": 2})
        );
        assert_eq!(
            p[3],
            json!({"op": "replace", "path": "/spec/failed", "value": 1})
        );
        assert_eq!(p[4]["value"], "2025-03-01T10:02:00Z");
        assert_eq!(
            p[5],
            json!({"op": "replace", "path": "/spec/lastVerdict", "value": "Fail"})
        );
        assert!(tail.holds(&first));
        assert!(!tail.holds(&a));
    }

    #[test]
    fn objects_are_named_labelled_and_owned_after_the_rollout_step_and_start() {
        let r = StepRun {
            step: 1,
            weight: 10,
            started_at: Utc.with_ymd_and_hms(2025, 3, 1, 9, 5, 7).unwrap(),
        };
        let a = compact(&record(1, 1, 1, Verdict::Pass));
        let o = new_object(&owner(), "prod", 4, &r, 3, &a);
        assert_eq!(
            o.metadata.name.as_deref(),
            Some("embed-step2-20250301-090507-0003")
        );
        assert_eq!(o.metadata.namespace.as_deref(), Some("prod"));
        let l = o.metadata.labels.as_ref().unwrap();
        assert_eq!(l[ROLLOUT_LABEL], "embed");
        assert_eq!(l[STEP_LABEL], "1");
        assert_eq!(l[STEP_STARTED_LABEL], "20250301T090507Z");
        assert_eq!(l[CHUNK_LABEL], "3");
        assert_eq!(l[MANAGED_BY_LABEL], MANAGER);
        let own = &o.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((own.name.as_str(), own.uid.as_str()), ("embed", "uid-1"));
        assert_eq!(own.controller, Some(false));
        assert_eq!(own.block_owner_deletion, Some(true));
        assert_eq!(o.spec.step_of, "2/4");
        assert_eq!((o.spec.count, o.spec.passed, o.spec.failed), (1, 1, 0));

        let long = "r".repeat(250);
        let name = object_name(&long, &r, 12);
        assert_eq!(name.len(), 253, "{name}");
        assert!(name.ends_with("-step2-20250301-090507-0012"), "{name}");
        assert_ne!(name, object_name(&format!("{}x", &long[1..]), &r, 12));
    }

    #[test]
    fn the_run_of_an_analysis_is_its_step_summary() {
        let mut st = EmbeddingRolloutStatus {
            current_step: 1,
            step_started_at: Some(t(30)),
            ..Default::default()
        };
        for (step, start) in [(0, 0), (1, 30)] {
            st.step_summaries.push(StepSummary {
                step,
                weight: 10,
                started_at: t(start),
                ..Default::default()
            });
        }
        // A rollout that went back to step 0 (retry) has two runs of it.
        st.step_summaries.push(StepSummary {
            step: 0,
            started_at: t(90),
            ..Default::default()
        });
        assert_eq!(
            run_of(&st, &record(29, 0, 3, Verdict::Pass)).started_at,
            t(0)
        );
        assert_eq!(
            run_of(&st, &record(31, 1, 1, Verdict::Pass)).started_at,
            t(30)
        );
        assert_eq!(
            run_of(&st, &record(95, 0, 1, Verdict::Pass)).started_at,
            t(90)
        );
        // Without summaries: the current step's start, else the analysis alone.
        st.step_summaries.clear();
        assert_eq!(
            run_of(&st, &record(31, 1, 1, Verdict::Pass)).started_at,
            t(30)
        );
        assert_eq!(
            run_of(&st, &record(12, 0, 1, Verdict::Pass)).started_at,
            t(12)
        );
    }

    #[test]
    fn pending_is_what_the_status_holds_past_the_watermark_oldest_first() {
        let st = EmbeddingRolloutStatus {
            history: (0..HISTORY_LIMIT as i64)
                .map(|i| record(i, 0, i as u32 + 1, Verdict::Pass))
                .collect(),
            ..Default::default()
        };
        assert_eq!(pending(&st, None).len(), HISTORY_LIMIT);
        let p = pending(&st, Some(t(6)));
        assert_eq!(
            p.iter().map(|a| a.time).collect::<Vec<_>>(),
            [t(7), t(8), t(9)]
        );
        assert!(pending(&st, Some(t(9))).is_empty());
    }

    #[test]
    fn a_gap_in_the_looks_is_counted() {
        let r = run(0, 0);
        let tail = Tail::of(&new_object(
            &owner(),
            "prod",
            2,
            &r,
            0,
            &compact(&record(1, 0, 4, Verdict::Pass)),
        ));
        let next = |look| compact(&record(20, 0, look, Verdict::Pass));
        assert_eq!(missing_before(Some(&tail), &r, &next(5)), 0);
        assert_eq!(missing_before(Some(&tail), &r, &next(17)), 12);
        assert_eq!(missing_before(Some(&tail), &run(0, 15), &next(17)), 0);
        assert_eq!(missing_before(None, &r, &next(17)), 0);
        let records = vec![
            record(1, 0, 4, Verdict::Pass),
            record(20, 0, 17, Verdict::Pass),
            record(21, 1, 1, Verdict::Pass),
        ];
        assert_eq!(gaps(&records), [(t(20), 12)]);
    }

    #[test]
    fn all_analyses_reads_objects_in_order_then_the_status_tail_or_the_status_alone() {
        let owner = owner();
        let mk = |step: u32, start: i64, chunk: u32, mins: &[i64]| {
            let r = run(step, start);
            let mut o = new_object(
                &owner,
                "prod",
                2,
                &r,
                chunk,
                &compact(&record(mins[0], step, 1, Verdict::Pass)),
            );
            for (i, m) in mins.iter().enumerate().skip(1) {
                o.spec
                    .analyses
                    .push(compact(&record(*m, step, i as u32 + 1, Verdict::Pass)));
            }
            o
        };
        let mut stranger = mk(0, 0, 0, &[0]);
        stranger.metadata.owner_references.as_mut().unwrap()[0].uid = "uid-0".into();
        // Listed in no particular order.
        let objects = vec![
            mk(1, 20, 0, &[21, 22]),
            mk(0, 0, 1, &[3, 4]),
            stranger,
            mk(0, 0, 0, &[1, 2]),
        ];
        let st = EmbeddingRolloutStatus {
            history: [2, 21, 22, 23, 24]
                .map(|m| record(m, 1, 1, Verdict::Pass))
                .to_vec(),
            ..Default::default()
        };
        let all = all_analyses(&objects, Some("uid-1"), Some(&st));
        let times: Vec<_> = all.iter().map(|a| a.time).collect();
        assert_eq!(times, [1, 2, 3, 4, 21, 22, 23, 24].map(t));
        let alone = all_analyses(&[], Some("uid-1"), Some(&st));
        assert_eq!(alone, st.history);
        let metas: Vec<ObjectMeta> = objects.iter().map(|o| o.metadata.clone()).collect();
        let newest_meta = newest(&metas, Some("uid-1")).unwrap();
        assert_eq!(
            newest_meta.name.as_deref(),
            Some("embed-step2-20250301-102000-0000")
        );
    }
}
