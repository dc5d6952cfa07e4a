//! The go/no-go gates of one analysis and the hard rollback triggers, judged as tests on counts.
//!
//! Each statistical gate has three outcomes: **Pass** (confident it holds), **Fail** (confident
//! it does not), **Inconclusive** (not enough evidence yet). The evidence of the gates is every
//! request since the current step's weight was applied; the triggers judge the recent `window`.
//! docs/analysis.md explains the tests, the budget and the guarantees; in short:
//!
//! - `maxP95Ms`: "P95 < 35 ms" is "fewer than 5 % of requests take over 35 ms". The requests above
//!   the bound are counted from the histogram bucket at the bound and tested with an exact
//!   binomial test. A bound that is not a bucket bound is judged on the bucket below it to pass and
//!   the bucket above it to fail (both conservative), and the evidence says so.
//! - `maxP95OverBaselineMs`: distribution-free confidence bounds of both P95s (order statistics,
//!   read off the binned data by interpolation, as `histogram_quantile` does): Pass when the
//!   candidate's upper bound is within the baseline's lower bound + margin, Fail when its lower
//!   bound is above the baseline's upper bound + margin. Skipped at 100 % (no baseline traffic).
//! - `maxErrorRate`: exact binomial test on errors out of requests.
//! - breaker: the worst state over the window must be 0 (closed), as before.
//! - `minRequests` / `minBaselineRequests`: fewer requests in the step can never pass.
//! - triggers: the same tests at the trigger thresholds on the window, at ten times the evidence.
//!
//! Thresholds keep their meaning: `maxP95Ms` and `maxErrorRate` are strict ("< 35 ms",
//! "< 0.5 %"), the comparison is inclusive ("≤ MLX + 5 ms").

use super::parity::{self, ParityProbe};
use super::stats::{
    self, binomial_test, clopper_pearson, pct, sequential_test, Finding, Histogram,
};
use crate::crd::{AnalysisSpec, BreakerState, CustomGate, GateResult, ParitySpec, Verdict};

/// One PromQL result: `Err` = the query failed, `Ok(None)` = empty result, `Ok(Some(NaN))` happens
/// too (e.g. 0/0 when no requests) and counts as no data.
pub type QueryResult = Result<Option<f64>, String>;

/// A `sum by (le)` histogram query: `(le, count)` per bucket, `le` = +Inf for the last one.
pub type BucketsResult = Result<Option<Vec<(f64, f64)>>, String>;

/// Counts over one range: the latency histogram, the requests and the failed requests.
#[derive(Clone, Debug, PartialEq)]
pub struct Counts {
    pub latency: BucketsResult,
    pub requests: QueryResult,
    pub errors: QueryResult,
}

impl Counts {
    pub fn no_data() -> Self {
        Self {
            latency: Ok(None),
            requests: Ok(None),
            errors: Ok(None),
        }
    }

    pub fn failed(err: &str) -> Self {
        Self {
            latency: Err(err.to_string()),
            requests: Err(err.to_string()),
            errors: Err(err.to_string()),
        }
    }
}

/// What Prometheus said about one service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceMetrics {
    /// `histogram_quantile(0.95, ...)` over the window, seconds (shown, not judged).
    pub p95_seconds: QueryResult,
    /// errors / requests over the window, 0..1 (shown, not judged).
    pub error_rate: QueryResult,
    /// worst circuit breaker state in the window: 0 closed, 1 open, 2 half-open.
    pub breaker: QueryResult,
    /// Counts over the window: the triggers' evidence.
    pub window: Counts,
    /// Counts since the step's weight was applied: the gates' evidence.
    pub step: Counts,
}

impl ServiceMetrics {
    /// Every query returned an empty result.
    pub fn no_data() -> Self {
        Self {
            p95_seconds: Ok(None),
            error_rate: Ok(None),
            breaker: Ok(None),
            window: Counts::no_data(),
            step: Counts::no_data(),
        }
    }

    /// Every query failed with `err` (e.g. Prometheus unreachable).
    pub fn failed(err: &str) -> Self {
        Self {
            p95_seconds: Err(err.to_string()),
            error_rate: Err(err.to_string()),
            breaker: Err(err.to_string()),
            window: Counts::failed(err),
            step: Counts::failed(err),
        }
    }
}

/// What the edge read from Prometheus for one analysis.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsSnapshot {
    pub candidate: ServiceMetrics,
    /// Its step histogram feeds the comparison gate; the rest is recorded.
    pub baseline: ServiceMetrics,
    /// One reading per `analysis.gates.custom` entry, by name.
    pub custom: Vec<CustomReading>,
    /// The embedding parity probe, when `gates.parity` is set and a probe was due.
    pub parity: Option<ParityProbe>,
    /// Why the gates of `gates.templates` are not all there (decision::gate_templates): each
    /// makes the analysis Inconclusive.
    pub gate_problems: Vec<String>,
}

impl MetricsSnapshot {
    /// Every query of an analysis failed with `err` (no Prometheus client could be built).
    pub fn failed(err: &str, custom: &[CustomGate]) -> Self {
        Self {
            candidate: ServiceMetrics::failed(err),
            baseline: ServiceMetrics::failed(err),
            custom: custom
                .iter()
                .map(|g| CustomReading {
                    name: g.name.clone(),
                    value: Err(err.to_string()),
                    samples: g.samples_query.as_ref().map(|_| Err(err.to_string())),
                })
                .collect(),
            parity: None,
            gate_problems: Vec::new(),
        }
    }
}

/// The value of one custom gate's query (reduced to the worst series by the edge) and of its
/// samples query.
#[derive(Clone, Debug, PartialEq)]
pub struct CustomReading {
    pub name: String,
    pub value: QueryResult,
    pub samples: Option<QueryResult>,
}

/// Where an analysis stands in the rollout: what the confidence budget is spent over.
#[derive(Clone, Debug, PartialEq)]
pub struct Look {
    /// The candidate's current share, 1..100.
    pub weight: u8,
    /// 1 for the first analysis of the step.
    pub index: u32,
    /// Steps of the rollout.
    pub steps: usize,
    /// How often the step's evidence started over (`status.evidenceRestarts`).
    pub restarts: u32,
    /// The parity gate's latest finding in this step, for the looks that do not probe.
    pub carried_parity: Option<GateResult>,
}

/// What one analysis found.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub verdict: Verdict,
    pub reasons: Vec<String>,
    /// Inconclusive because data is missing (query failed, empty, NaN), not only for want of
    /// evidence: `noDataPolicy` applies to this at once.
    pub missing_data: bool,
    pub gates: Vec<GateResult>,
    pub candidate_p95_ms: Option<f64>,
    pub baseline_p95_ms: Option<f64>,
    pub error_rate: Option<f64>,
    pub baseline_error_rate: Option<f64>,
    pub breaker_state: Option<BreakerState>,
    pub request_count: Option<f64>,
    pub step_requests: Option<u64>,
    pub baseline_step_requests: Option<u64>,
    /// Hard trigger: error rate above `rollbackTriggers.errorRate`, with strong evidence.
    pub error_rate_trigger: Option<String>,
    /// P95 against `rollbackTriggers.p95Ms`: Some(true) confidently above, Some(false)
    /// confidently at or below, None not known.
    pub p95_above_trigger: Option<bool>,
    /// The evidence of the P95 trigger finding, for the rollback reason.
    pub p95_trigger_evidence: Option<String>,
}

/// The significance levels of one analysis (docs/analysis.md, "The budget").
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Levels {
    /// Each gate's sequential test, valid over every look of the step.
    pub gate: f64,
    /// The baseline's P95 bounds of the comparison gate: sequential too, at the gates' level.
    pub baseline: f64,
    /// Each trigger's fixed-sample test on the window, spent per look, ten times stronger.
    pub trigger: f64,
}

pub fn levels(a: &AnalysisSpec, look: &Look) -> Levels {
    let per_look = stats::look_alpha(a.confidence, look.steps, look.index);
    let share = stats::restart_share(look.restarts);
    Levels {
        gate: stats::step_alpha(a.confidence, look.steps) * share,
        baseline: stats::step_alpha(a.confidence, look.steps) * share,
        trigger: per_look / stats::TRIGGER_EVIDENCE_FACTOR,
    }
}

/// Which test decides.
#[derive(Clone, Copy, Debug)]
enum Test {
    /// Anytime-valid over the growing evidence of a step.
    Sequential(f64),
    /// One look at one window.
    Fixed(f64),
}

impl Test {
    fn run(self, k: u64, n: u64, p0: f64) -> Finding {
        match self {
            Test::Sequential(a) => sequential_test(k, n, p0, a),
            Test::Fixed(a) => binomial_test(k, n, p0, a),
        }
    }
}

/// The descriptive interval shown with every count (the tests decide, at their own levels).
const SHOWN_ALPHA: f64 = 0.025;

/// A usable number, or why there is none.
enum Reading<T> {
    Value(T),
    Missing(String),
}

/// A gate's evidence when its query failed. The error itself is said once per analysis, with how
/// many queries it hit ([`query_failures`]), not once per gate.
fn failed_query(what: &str) -> String {
    format!("{FAILED_QUERY_PREFIX}{what} failed (see the analysis reasons)")
}
const FAILED_QUERY_PREFIX: &str = "the Prometheus query for ";

/// "11 of 18 Prometheus queries failed: Prometheus at http://... is unreachable: ...", one line
/// per distinct error, most frequent first.
fn query_failures(m: &MetricsSnapshot) -> Vec<String> {
    let mut total = 0usize;
    let mut errors: Vec<(String, usize)> = Vec::new();
    let mut count = |e: Option<&String>| {
        total += 1;
        if let Some(e) = e {
            match errors.iter_mut().find(|(known, _)| known == e) {
                Some((_, n)) => *n += 1,
                None => errors.push((e.clone(), 1)),
            }
        }
    };
    for s in [&m.candidate, &m.baseline] {
        for q in [&s.p95_seconds, &s.error_rate, &s.breaker] {
            count(q.as_ref().err());
        }
        for c in [&s.window, &s.step] {
            count(c.latency.as_ref().err());
            count(c.requests.as_ref().err());
            count(c.errors.as_ref().err());
        }
    }
    for c in &m.custom {
        count(c.value.as_ref().err());
        if let Some(q) = &c.samples {
            count(q.as_ref().err());
        }
    }
    // Stable: most frequent first, then first seen.
    errors.sort_by_key(|e| std::cmp::Reverse(e.1));
    errors
        .into_iter()
        .map(|(e, n)| {
            let queries = if total == 1 { "query" } else { "queries" };
            format!("{n} of {total} Prometheus {queries} failed: {e}")
        })
        .collect()
}

fn read(q: &QueryResult, what: &str) -> Reading<f64> {
    match q {
        Err(_) => Reading::Missing(failed_query(what)),
        Ok(None) => Reading::Missing(format!("no data for {what}")),
        Ok(Some(v)) if !v.is_finite() => Reading::Missing(format!("{what} is {v} (no samples)")),
        Ok(Some(v)) => Reading::Value(*v),
    }
}

fn read_count(q: &QueryResult, what: &str) -> Reading<u64> {
    match read(q, what) {
        Reading::Value(v) => Reading::Value(v.max(0.0).round() as u64),
        Reading::Missing(m) => Reading::Missing(m),
    }
}

fn read_histogram(q: &BucketsResult, what: &str) -> Reading<Histogram> {
    match q {
        Err(_) => Reading::Missing(failed_query(what)),
        Ok(None) => Reading::Missing(format!("no data for {what}")),
        Ok(Some(samples)) => match Histogram::from_samples(samples) {
            Ok(h) => Reading::Value(h),
            Err(e) => Reading::Missing(format!("{what} is not a histogram: {e}")),
        },
    }
}

fn value(q: &QueryResult) -> Option<f64> {
    match q {
        Ok(Some(v)) if v.is_finite() => Some(*v),
        _ => None,
    }
}

/// Seconds to milliseconds, rounded to the microsecond.
pub fn seconds_to_ms(s: f64) -> f64 {
    (s * 1_000_000.0).round() / 1_000.0
}

fn ms(s: f64) -> String {
    if s.is_infinite() {
        return "+Inf ms".into();
    }
    let v = seconds_to_ms(s);
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{:.1} ms", v)
    }
}

fn breaker_state(v: f64) -> Option<BreakerState> {
    match v.round() as i64 {
        0 => Some(BreakerState::Closed),
        1 => Some(BreakerState::Open),
        2 => Some(BreakerState::HalfOpen),
        _ => None,
    }
}

/// One gate's outcome before it is recorded.
struct Judged {
    /// false for report-only custom gates: recorded, never part of the verdict.
    blocking: bool,
    verdict: Verdict,
    /// Why it is not Pass (for the reasons list); empty for Pass.
    reason: Option<String>,
    missing: bool,
    result: GateResult,
}

/// A blocking gate that cannot pass for a reason other than missing data (too few requests, a
/// gate template problem): Inconclusive, and `noDataPolicy` does not apply to it.
fn not_judgeable(gate: &str, why: String) -> Judged {
    Judged {
        missing: false,
        reason: Some(why.clone()),
        ..missing(gate, why)
    }
}

fn missing(gate: &str, why: String) -> Judged {
    Judged {
        blocking: true,
        verdict: Verdict::Inconclusive,
        // A failed query is in the reasons once, for all the gates it hit.
        reason: (!why.starts_with(FAILED_QUERY_PREFIX)).then(|| why.clone()),
        missing: true,
        result: GateResult {
            gate: gate.into(),
            verdict: Verdict::Inconclusive,
            evidence: why,
            value: None,
            low: None,
            high: None,
            threshold: None,
            samples: None,
        },
    }
}

/// "Fewer than 5 % of the requests take over `bound_ms`", tested on the histogram at `alpha`.
/// Returns the finding and the evidence text.
struct TailTest {
    finding: Finding,
    evidence: String,
    fraction: f64,
    low: f64,
    high: f64,
    n: u64,
}

fn tail_test(h: &Histogram, bound_ms: f64, test: Test) -> TailTest {
    const TAIL: f64 = 0.05;
    let n = h.total();
    let bound = bound_ms / 1000.0;
    let (below, above) = h.neighbours(bound);
    let over = |le: Option<f64>| match le {
        Some(le) if le.is_finite() => n - h.at_or_below(le).unwrap_or(0).min(n),
        Some(_) => 0,
        None => n, // no bucket at or below the bound: every request may be slower
    };
    // To pass, count the requests above the bucket at or below the bound (more than the truth);
    // to fail, above the bucket at or above it (fewer than the truth).
    let k_pass = over(below);
    let k_fail = over(Some(above));
    let finding = match (test.run(k_fail, n, TAIL), test.run(k_pass, n, TAIL)) {
        (Finding::Above, _) => Finding::Above,
        (_, Finding::Below) => Finding::Below,
        _ => Finding::Unsure,
    };
    let exact = below.is_some_and(|b| (b * 1e6).round() == (bound * 1e6).round());
    let describe = |k: u64, le: String| {
        let (lo, hi) = clopper_pearson(k, n, SHOWN_ALPHA);
        format!(
            "P(>{le}) = {} (95 % CI {}-{}, n = {n})",
            pct(if n == 0 { 0.0 } else { k as f64 / n as f64 }),
            pct(lo),
            pct(hi)
        )
    };
    let bound_text = format!("{} ms", trim_ms(bound_ms));
    let (k_shown, evidence) = if exact {
        (k_pass, describe(k_pass, bound_text))
    } else {
        let lower = below.map_or("0 ms".into(), |b| format!("{} ms", trim_ms(b * 1000.0)));
        let upper = if above.is_finite() {
            format!("{} ms", trim_ms(above * 1000.0))
        } else {
            "+Inf".into()
        };
        (
            k_pass,
            format!(
                "{} to pass, {} to fail ({bound_text} is not a bucket bound: judged on the neighbouring buckets)",
                describe(k_pass, lower),
                describe(k_fail, upper)
            ),
        )
    };
    let (low, high) = clopper_pearson(k_shown, n, SHOWN_ALPHA);
    TailTest {
        finding,
        evidence,
        fraction: if n == 0 {
            0.0
        } else {
            k_shown as f64 / n as f64
        },
        low,
        high,
        n,
    }
}

fn trim_ms(v: f64) -> String {
    let r = (v * 1000.0).round() / 1000.0;
    format!("{r}")
}

fn verdict_of(f: Finding) -> Verdict {
    match f {
        Finding::Below => Verdict::Pass,
        Finding::Above => Verdict::Fail,
        Finding::Unsure => Verdict::Inconclusive,
    }
}

fn max_p95_gate(h: &Histogram, max_p95_ms: f64, alpha: f64) -> Judged {
    let t = tail_test(h, max_p95_ms, Test::Sequential(alpha));
    let verdict = verdict_of(t.finding);
    let reason = match verdict {
        Verdict::Pass => None,
        Verdict::Fail => Some(format!(
            "candidate P95 is not below maxP95Ms {} ms: {}",
            trim_ms(max_p95_ms),
            t.evidence
        )),
        Verdict::Inconclusive => Some(format!(
            "not yet sure the candidate P95 is below maxP95Ms {} ms: {}",
            trim_ms(max_p95_ms),
            t.evidence
        )),
    };
    Judged {
        blocking: true,
        verdict,
        reason,
        missing: false,
        result: GateResult {
            gate: "maxP95Ms".into(),
            verdict,
            evidence: t.evidence,
            value: Some(t.fraction),
            low: Some(t.low),
            high: Some(t.high),
            threshold: Some(0.05),
            samples: Some(t.n),
        },
    }
}

/// "Candidate P95 ≤ baseline P95 + margin". The baseline's P95 is bounded from its own
/// histogram (order statistics, `baseline_alpha` per side); the candidate is then tested like the
/// absolute gate, at the lower bound + margin to pass and at the upper bound + margin to fail, its
/// requests above a bound between buckets counted by interpolation (as `histogram_quantile`
/// assumes).
fn comparison_gate(
    c: &Histogram,
    b: &Histogram,
    margin_ms: f64,
    gate_alpha: f64,
    baseline_alpha: f64,
) -> Judged {
    const TAIL: f64 = 0.05;
    let (b_lo, b_hi) = b.quantile_bounds(0.95, baseline_alpha);
    let margin = margin_ms / 1000.0;
    let n = c.total();
    let test = Test::Sequential(gate_alpha);
    let count_above = |x: f64| c.above(x).round().max(0.0) as u64;
    let pass_at = b_lo.unwrap_or(0.0) + margin;
    let pass = test.run(count_above(pass_at), n, TAIL) == Finding::Below;
    let fail_at = b_hi.map(|h| h + margin);
    let fail = fail_at.is_some_and(|x| test.run(count_above(x), n, TAIL) == Finding::Above);
    let verdict = if fail {
        Verdict::Fail
    } else if pass {
        Verdict::Pass
    } else {
        Verdict::Inconclusive
    };
    let frac = |x: f64| {
        if n == 0 {
            0.0
        } else {
            count_above(x) as f64 / n as f64
        }
    };
    let evidence = format!(
        "candidate P95 {} (n = {n}; P(>{}) = {}) vs baseline P95 {} (bounds {}-{}, n = {}) + {} ms",
        c.quantile(0.95).map_or("n/a".into(), ms),
        ms(pass_at),
        pct(frac(pass_at)),
        b.quantile(0.95).map_or("n/a".into(), ms),
        b_lo.map_or("0 ms".into(), ms),
        b_hi.map_or("+Inf ms".into(), ms),
        b.total(),
        trim_ms(margin_ms)
    );
    let reason = match verdict {
        Verdict::Pass => None,
        Verdict::Fail => Some(format!(
            "candidate P95 exceeds the baseline's by more than maxP95OverBaselineMs {} ms: {evidence}",
            trim_ms(margin_ms)
        )),
        Verdict::Inconclusive => Some(format!(
            "not yet sure the candidate P95 is within baseline + {} ms: {evidence}",
            trim_ms(margin_ms)
        )),
    };
    let to_ms = |s: Option<f64>| s.filter(|v| v.is_finite()).map(seconds_to_ms);
    Judged {
        blocking: true,
        verdict,
        reason,
        missing: false,
        result: GateResult {
            gate: "maxP95OverBaselineMs".into(),
            verdict,
            evidence,
            value: to_ms(c.quantile(0.95)),
            low: to_ms(b_lo),
            high: to_ms(b_hi),
            threshold: to_ms(b.quantile(0.95).map(|q| q + margin)),
            samples: Some(n),
        },
    }
}

fn error_gate(errors: u64, n: u64, max_rate: f64, alpha: f64) -> Judged {
    let errors = errors.min(n);
    let verdict = verdict_of(sequential_test(errors, n, max_rate, alpha));
    let (lo, hi) = clopper_pearson(errors, n, SHOWN_ALPHA);
    let rate = if n == 0 {
        0.0
    } else {
        errors as f64 / n as f64
    };
    let evidence = format!(
        "errors {} (95 % CI {}-{}, {errors}/{n})",
        pct(rate),
        pct(lo),
        pct(hi)
    );
    let reason = match verdict {
        Verdict::Pass => None,
        Verdict::Fail => Some(format!(
            "candidate error rate is not below maxErrorRate {}: {evidence}",
            pct(max_rate)
        )),
        Verdict::Inconclusive => Some(format!(
            "not yet sure the candidate error rate is below maxErrorRate {}: {evidence}",
            pct(max_rate)
        )),
    };
    Judged {
        blocking: true,
        verdict,
        reason,
        missing: false,
        result: GateResult {
            gate: "maxErrorRate".into(),
            verdict,
            evidence,
            value: Some(rate),
            low: Some(lo),
            high: Some(hi),
            threshold: Some(max_rate),
            samples: Some(n),
        },
    }
}

fn breaker_gate(q: &QueryResult) -> (Judged, Option<BreakerState>) {
    let raw = read(q, "candidate circuit breaker state");
    let state = match &raw {
        Reading::Value(v) => breaker_state(*v),
        Reading::Missing(_) => None,
    };
    let judged = |verdict: Verdict, reason: Option<String>, evidence: &str| Judged {
        blocking: true,
        verdict,
        reason,
        missing: false,
        result: GateResult {
            gate: "requireBreakerClosed".into(),
            verdict,
            evidence: evidence.into(),
            value: value(q),
            low: None,
            high: None,
            threshold: Some(0.0),
            samples: None,
        },
    };
    let j = match (&raw, state) {
        (_, Some(BreakerState::Closed)) => judged(Verdict::Pass, None, "closed over the window"),
        (_, Some(BreakerState::Open)) => {
            let why = "candidate circuit breaker was open in the window";
            judged(Verdict::Fail, Some(why.into()), why)
        }
        (_, Some(BreakerState::HalfOpen)) => {
            let why = "candidate circuit breaker was half-open in the window";
            judged(Verdict::Fail, Some(why.into()), why)
        }
        (Reading::Value(v), None) => {
            let why = format!("candidate circuit breaker state {v} is not 0, 1 or 2");
            missing("requireBreakerClosed", why)
        }
        (Reading::Missing(why), None) => missing("requireBreakerClosed", why.clone()),
    };
    (j, state)
}

/// The gates judged by sequential tests over the step's growing evidence.
/// One custom gate: the reading against its bound. A threshold check on the user's number, not a
/// test: the operator does not know what it counts. `failureLimit` consecutive failing analyses
/// roll back, as for every gate; `minSamples` keeps a thin reading Inconclusive.
fn custom_gate(g: &CustomGate, r: Option<&CustomReading>) -> Judged {
    let gate = format!("custom:{}", g.name);
    let mut j = match r {
        None => missing(&gate, format!("no reading for custom gate {}", g.name)),
        Some(r) => custom_judged(g, &gate, r),
    };
    j.blocking = g.blocking;
    j
}

fn custom_judged(g: &CustomGate, gate: &str, r: &CustomReading) -> Judged {
    let what = format!("custom gate {}", g.name);
    let value = match read(&r.value, &what) {
        Reading::Value(v) => v,
        Reading::Missing(why) => return missing(gate, why),
    };
    let samples = match (&r.samples, g.min_samples) {
        (Some(q), Some(min)) => match read(q, &format!("{what} samples")) {
            Reading::Value(n) if n < min => {
                let why = format!(
                    "{what}: only {} samples, minSamples is {}",
                    trim_number(n),
                    trim_number(min)
                );
                let mut j = missing(gate, why);
                j.missing = false;
                j.result.value = Some(value);
                j.result.samples = Some(n.max(0.0).round() as u64);
                return j;
            }
            Reading::Value(n) => Some(n.max(0.0).round() as u64),
            Reading::Missing(why) => return missing(gate, why),
        },
        _ => None,
    };
    let (ok, bound, relation) = match (g.max, g.min) {
        (Some(max), _) => (value <= max, max, "at most"),
        (None, Some(min)) => (value >= min, min, "at least"),
        (None, None) => (true, f64::NAN, "bounded by"),
    };
    let evidence = format!(
        "{} = {} ({relation} {})",
        g.name,
        trim_number(value),
        trim_number(bound)
    );
    let verdict = if ok { Verdict::Pass } else { Verdict::Fail };
    Judged {
        blocking: g.blocking,
        verdict,
        reason: (!ok).then(|| format!("custom gate {}: {evidence}", g.name)),
        missing: false,
        result: GateResult {
            gate: gate.to_string(),
            verdict,
            evidence,
            value: Some(value),
            low: None,
            high: None,
            threshold: Some(bound),
            samples,
        },
    }
}

/// 0.05, 1234.5, 3e-7: short and exact enough for a status line.
fn trim_number(v: f64) -> String {
    if v.is_finite() && v.abs() >= 1e-3 && v.abs() < 1e9 {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v}")
    }
}

/// The parity gate of this look: judged on its probe, else the step's latest finding carried
/// (an earlier failure keeps failing until a new probe says otherwise).
fn parity_gate(
    spec: &ParitySpec,
    probe: Option<&ParityProbe>,
    carried: Option<&GateResult>,
) -> Judged {
    if let Some(probe) = probe {
        let j = parity::judge(probe, spec);
        return Judged {
            blocking: spec.blocking,
            verdict: j.verdict,
            reason: j.reason,
            missing: j.missing,
            result: j.result,
        };
    }
    match carried {
        Some(r) => Judged {
            blocking: spec.blocking,
            verdict: r.verdict,
            reason: (r.verdict != Verdict::Pass).then(|| {
                format!(
                    "embedding parity {} at the step's latest probe: {}",
                    r.verdict.as_str(),
                    r.evidence
                )
            }),
            missing: false,
            result: r.clone(),
        },
        None => {
            let why = "no parity probe in this step yet".to_string();
            Judged {
                blocking: spec.blocking,
                verdict: Verdict::Inconclusive,
                reason: Some(why.clone()),
                missing: true,
                result: GateResult {
                    gate: parity::GATE.into(),
                    verdict: Verdict::Inconclusive,
                    evidence: why,
                    value: None,
                    low: None,
                    high: None,
                    threshold: Some(spec.min_cosine),
                    samples: None,
                },
            }
        }
    }
}

pub const SEQUENTIAL_GATES: [&str; 3] = ["maxP95Ms", "maxP95OverBaselineMs", "maxErrorRate"];

/// Evaluates the gates and the triggers of one analysis at `look`. `failed_in_step` names the
/// sequential gates that already failed confidently in this step: a sequential test stops at its
/// first crossing (that is what its guarantee is about), so they stay failed, with their current
/// evidence, however the count wanders afterwards.
pub fn evaluate(
    a: &AnalysisSpec,
    m: &MetricsSnapshot,
    look: &Look,
    failed_in_step: &[String],
) -> Evaluation {
    let gates = &a.gates;
    let triggers = &a.rollback_triggers;
    let lv = levels(a, look);
    let alpha = lv.gate;
    let mut judged: Vec<Judged> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    let cand_hist = read_histogram(
        &m.candidate.step.latency,
        "candidate latency buckets (step)",
    );
    let base_hist = read_histogram(&m.baseline.step.latency, "baseline latency buckets (step)");
    let step_requests = read_count(&m.candidate.step.requests, "candidate requests (step)");
    let step_n = match &step_requests {
        Reading::Value(n) => Some(*n),
        Reading::Missing(_) => None,
    };
    let base_n = match &base_hist {
        Reading::Value(h) => Some(h.total()),
        Reading::Missing(_) => None,
    };

    // Gate 1: absolute P95.
    judged.push(match &cand_hist {
        Reading::Value(h) => max_p95_gate(h, gates.max_p95_ms, alpha),
        Reading::Missing(why) => missing("maxP95Ms", why.clone()),
    });

    // Gate 2: P95 against the baseline, inclusive; the baseline needs its own evidence.
    if look.weight >= 100 {
        notes.push("baseline comparison skipped: the baseline receives no traffic at 100 %".into());
    } else {
        judged.push(match (&cand_hist, &base_hist) {
            (Reading::Value(c), Reading::Value(b)) => {
                let mut j =
                    comparison_gate(c, b, gates.max_p95_over_baseline_ms, alpha, lv.baseline);
                if j.verdict == Verdict::Pass && b.total() < gates.min_baseline_requests {
                    j.verdict = Verdict::Inconclusive;
                    j.result.verdict = Verdict::Inconclusive;
                    j.reason = Some(format!(
                        "only {} baseline requests in this step, minBaselineRequests is {}",
                        b.total(),
                        gates.min_baseline_requests
                    ));
                }
                j
            }
            (_, Reading::Missing(why)) => missing("maxP95OverBaselineMs", why.clone()),
            (Reading::Missing(_), _) => missing(
                "maxP95OverBaselineMs",
                "no candidate latency buckets to compare".into(),
            ),
        });
    }

    // Gate 3: error rate.
    judged.push(
        match (
            &step_requests,
            read_count(&m.candidate.step.errors, "candidate errors (step)"),
        ) {
            (Reading::Value(n), Reading::Value(k)) => {
                error_gate(k, *n, gates.max_error_rate, alpha)
            }
            (Reading::Missing(why), _) => missing("maxErrorRate", why.clone()),
            (_, Reading::Missing(why)) => missing("maxErrorRate", why),
        },
    );

    // Gate 4: circuit breaker closed over the window.
    let (breaker, breaker_state) = breaker_gate(&m.candidate.breaker);
    if gates.require_breaker_closed {
        judged.push(breaker);
    }

    // Gate 5: sample size. Too few requests can never pass; a confident Fail still fails.
    if let Some(n) = step_n {
        if n < gates.min_requests {
            let why = format!(
                "only {n} candidate requests in this step, minRequests is {}",
                gates.min_requests
            );
            let mut j = not_judgeable("minRequests", why);
            j.result.value = Some(n as f64);
            j.result.threshold = Some(gates.min_requests as f64);
            j.result.samples = Some(n);
            judged.push(j);
        }
    }

    // The user's gates.
    for g in &gates.custom {
        judged.push(custom_gate(g, m.custom.iter().find(|r| r.name == g.name)));
    }

    // Gate templates that are missing or clash: the gates they name cannot be judged, so
    // neither can the analysis.
    for why in &m.gate_problems {
        judged.push(not_judgeable("gateTemplates", why.clone()));
    }

    // Embedding parity: probed, or the step's latest probe carried.
    if let Some(p) = &gates.parity {
        judged.push(parity_gate(
            p,
            m.parity.as_ref(),
            look.carried_parity.as_ref(),
        ));
    }

    // The latency gates count the embedder's histogram unless told otherwise.
    let q = &a.queries;
    if q.p95.is_some() && q.latency_buckets.is_none() {
        notes.push(
            "queries.p95 is overridden but queries.latencyBuckets is not: the latency gates count embedding_request_duration_seconds_bucket".into(),
        );
    }
    if q.error_rate.is_some() && q.errors.is_none() {
        notes.push(
            "queries.errorRate is overridden but queries.errors is not: the error gate counts embedding_errors_total".into(),
        );
    }

    // Hard triggers, on the recent window, at ten times the evidence.
    let window_hist = read_histogram(&m.candidate.window.latency, "candidate latency buckets");
    let (p95_above_trigger, p95_trigger_evidence) = match &window_hist {
        Reading::Value(h) => {
            let t = tail_test(h, triggers.p95_ms, Test::Fixed(lv.trigger));
            let above = match t.finding {
                Finding::Above => Some(true),
                Finding::Below => Some(false),
                Finding::Unsure => None,
            };
            (above, Some(t.evidence))
        }
        Reading::Missing(_) => (None, None),
    };
    let error_rate_trigger = match (
        read_count(&m.candidate.window.errors, "errors"),
        read_count(&m.candidate.window.requests, "requests"),
    ) {
        (Reading::Value(k), Reading::Value(n))
            if binomial_test(k.min(n), n, triggers.error_rate, lv.trigger) == Finding::Above =>
        {
            let (lo, hi) = clopper_pearson(k.min(n), n, SHOWN_ALPHA);
            Some(format!(
                "candidate error rate {} (95 % CI {}-{}, {}/{n} in the last {}) is above the rollback trigger {}",
                pct(k.min(n) as f64 / n as f64),
                pct(lo),
                pct(hi),
                k.min(n),
                a.window,
                pct(triggers.error_rate)
            ))
        }
        _ => None,
    };

    for j in judged.iter_mut() {
        if j.verdict != Verdict::Fail && !j.missing && failed_in_step.contains(&j.result.gate) {
            j.verdict = Verdict::Fail;
            j.result.verdict = Verdict::Fail;
            let now = j.result.evidence.clone();
            j.reason = Some(format!(
                "{} failed confidently earlier in this step (now: {now})",
                j.result.gate
            ));
        }
    }

    let blocking = || judged.iter().filter(|j| j.blocking);
    let verdict = if blocking().any(|j| j.verdict == Verdict::Fail) {
        Verdict::Fail
    } else if blocking().any(|j| j.verdict == Verdict::Inconclusive) {
        Verdict::Inconclusive
    } else {
        Verdict::Pass
    };
    let missing_data = verdict == Verdict::Inconclusive && blocking().any(|j| j.missing);
    // Failing gates first, then the undecided ones, then report-only gates, then notes.
    let mut reasons: Vec<String> = blocking()
        .filter(|j| j.verdict == Verdict::Fail)
        .filter_map(|j| j.reason.clone())
        .collect();
    reasons.extend(query_failures(m));
    reasons.extend(
        blocking()
            .filter(|j| j.verdict == Verdict::Inconclusive)
            .filter_map(|j| j.reason.clone()),
    );
    reasons.extend(
        judged
            .iter()
            .filter(|j| !j.blocking)
            .filter_map(|j| j.reason.as_ref().map(|r| format!("{r} (report only)"))),
    );
    reasons.extend(notes);

    let cand_p95_ms = match &m.candidate.p95_seconds {
        Ok(Some(v)) if v.is_finite() => Some(seconds_to_ms(*v)),
        _ => None,
    };
    Evaluation {
        verdict,
        reasons,
        missing_data,
        gates: judged.into_iter().map(|j| j.result).collect(),
        candidate_p95_ms: cand_p95_ms,
        baseline_p95_ms: value(&m.baseline.p95_seconds).map(seconds_to_ms),
        error_rate: value(&m.candidate.error_rate),
        baseline_error_rate: value(&m.baseline.error_rate),
        breaker_state,
        request_count: value(&m.candidate.window.requests),
        step_requests: step_n,
        baseline_step_requests: base_n,
        error_rate_trigger,
        p95_above_trigger,
        p95_trigger_evidence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Gates, QueryOverrides};

    /// The embedder's latency buckets, ms.
    const BUCKETS_MS: [f64; 22] = [
        1.0, 2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 60.0, 75.0,
        100.0, 150.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
    ];

    /// Counts of requests at the given latencies (ms, with multiplicity), errors among them.
    fn counts(latencies: &[(f64, u64)], errors: u64) -> Counts {
        let mut buckets: Vec<(f64, f64)> = BUCKETS_MS
            .iter()
            .map(|le| {
                let c: u64 = latencies
                    .iter()
                    .filter(|(l, _)| l <= le)
                    .map(|(_, n)| n)
                    .sum();
                (le / 1000.0, c as f64)
            })
            .collect();
        let total: u64 = latencies.iter().map(|(_, n)| n).sum();
        buckets.push((f64::INFINITY, total as f64));
        Counts {
            latency: Ok(Some(buckets)),
            requests: Ok(Some(total as f64)),
            errors: Ok(Some(errors as f64)),
        }
    }

    /// A spread of latencies around `center` ms (±4 ms), `n` requests in all.
    fn spread(center: f64, n: u64) -> Vec<(f64, u64)> {
        let offsets = [-4.0, -2.0, -1.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 4.0];
        offsets
            .iter()
            .map(|o| (center + o, n / offsets.len() as u64))
            .collect()
    }

    fn service(step: Counts, window: Counts, p95: f64) -> ServiceMetrics {
        ServiceMetrics {
            p95_seconds: Ok(Some(p95)),
            error_rate: Ok(Some(0.0)),
            breaker: Ok(Some(0.0)),
            window,
            step,
        }
    }

    fn snapshot(cand: Counts, base: Counts) -> MetricsSnapshot {
        MetricsSnapshot {
            candidate: service(cand.clone(), cand, 0.02),
            baseline: service(base.clone(), base, 0.03),
            custom: Vec::new(),
            parity: None,
            gate_problems: Vec::new(),
        }
    }

    fn healthy() -> MetricsSnapshot {
        snapshot(
            counts(&spread(20.0, 5000), 0),
            counts(&spread(26.0, 50_000), 0),
        )
    }

    fn look(weight: u8) -> Look {
        Look {
            weight,
            index: 1,
            steps: 4,
            restarts: 0,
            carried_parity: None,
        }
    }

    fn eval(m: &MetricsSnapshot) -> Evaluation {
        evaluate(&AnalysisSpec::default(), m, &look(10), &[])
    }

    fn gate<'a>(e: &'a Evaluation, name: &str) -> &'a GateResult {
        e.gates.iter().find(|g| g.gate == name).unwrap()
    }

    #[test]
    fn a_gate_template_problem_keeps_a_healthy_analysis_from_passing() {
        assert_eq!(eval(&healthy()).verdict, Verdict::Pass);
        let mut m = healthy();
        m.gate_problems =
            vec!["gate template EmbeddingGateTemplate team: not found in namespace prod".into()];
        let e = eval(&m);
        assert_eq!(e.verdict, Verdict::Inconclusive);
        assert_eq!(
            e.reasons,
            ["gate template EmbeddingGateTemplate team: not found in namespace prod"]
        );
        assert_eq!(gate(&e, "gateTemplates").verdict, Verdict::Inconclusive);
        // Not missing data: a configuration problem holds the step until the user fixes it;
        // noDataPolicy: Fail does not roll a candidate back for it.
        assert!(!e.missing_data);
    }

    #[test]
    fn healthy_candidate_passes_every_gate_with_its_evidence() {
        let e = eval(&healthy());
        assert_eq!(e.verdict, Verdict::Pass, "{:?}", e.reasons);
        assert!(e.reasons.is_empty(), "{:?}", e.reasons);
        let g = gate(&e, "maxP95Ms");
        assert_eq!(g.samples, Some(5000));
        assert!(
            g.evidence.starts_with("P(>35 ms) = 0 % (95 % CI 0 %-"),
            "{}",
            g.evidence
        );
        assert!(g.evidence.ends_with("n = 5000)"), "{}", g.evidence);
        assert_eq!(e.step_requests, Some(5000));
        assert_eq!(e.baseline_step_requests, Some(50_000));
        assert_eq!(e.p95_above_trigger, Some(false));
        assert_eq!(e.error_rate_trigger, None);
        assert!(!e.missing_data);
    }

    #[test]
    fn one_slow_request_out_of_five_is_not_a_failure() {
        // The old judge failed this: a point P95 of 5 requests is the slowest one.
        let m = snapshot(
            counts(&[(20.0, 4), (80.0, 1)], 0),
            counts(&spread(26.0, 5000), 0),
        );
        let e = eval(&m);
        assert_eq!(e.verdict, Verdict::Inconclusive, "{:?}", e.reasons);
        assert_eq!(gate(&e, "maxP95Ms").verdict, Verdict::Inconclusive);
        assert_eq!(e.p95_above_trigger, None);
        assert!(!e.missing_data);
    }

    #[test]
    fn a_clearly_slow_candidate_fails_on_few_requests() {
        let m = snapshot(counts(&[(80.0, 8)], 0), counts(&spread(26.0, 5000), 0));
        let e = eval(&m);
        assert_eq!(e.verdict, Verdict::Fail, "{:?}", e.reasons);
        assert_eq!(gate(&e, "maxP95Ms").verdict, Verdict::Fail);
        assert_eq!(gate(&e, "maxP95OverBaselineMs").verdict, Verdict::Fail);
        assert!(e.reasons[0]
            .starts_with("candidate P95 is not below maxP95Ms 35 ms: P(>35 ms) = 100 %"));
        // Too few requests to pass is still said.
        assert!(e
            .reasons
            .iter()
            .any(|r| r.contains("only 8 candidate requests")));
    }

    #[test]
    fn evidence_decides_between_inconclusive_and_pass() {
        // No slow request at all: 0.95^n must be below the look's level (~3e-4 at look 1).
        let at = |n: u64| {
            let mut a = AnalysisSpec::default();
            a.gates.min_requests = 0;
            let m = snapshot(
                counts(&spread(20.0, n), 0),
                counts(&spread(20.0, 50_000), 0),
            );
            let e = evaluate(&a, &m, &look(10), &[]);
            gate(&e, "maxP95Ms").verdict
        };
        assert_eq!(at(100), Verdict::Inconclusive);
        assert_eq!(at(200), Verdict::Pass);
        // The gates' tests are sequential: a later look of the same evidence says the same.
        let mut a = AnalysisSpec::default();
        a.gates.min_requests = 0;
        let m = snapshot(
            counts(&spread(20.0, 200), 0),
            counts(&spread(20.0, 50_000), 0),
        );
        let late = evaluate(
            &a,
            &m,
            &Look {
                index: 500,
                ..look(10)
            },
            &[],
        );
        assert_eq!(gate(&late, "maxP95Ms").verdict, Verdict::Pass);
        // More steps share the budget: each test asks for more.
        let many = evaluate(
            &a,
            &m,
            &Look {
                steps: 20,
                ..look(10)
            },
            &[],
        );
        assert_eq!(gate(&many, "maxP95Ms").verdict, Verdict::Inconclusive);
    }

    #[test]
    fn min_requests_blocks_a_pass_only() {
        let mut a = AnalysisSpec::default();
        a.gates.min_requests = 10_000;
        let e = evaluate(&a, &healthy(), &look(10), &[]);
        assert_eq!(e.verdict, Verdict::Inconclusive);
        assert_eq!(
            e.reasons,
            ["only 5000 candidate requests in this step, minRequests is 10000"]
        );
        a.gates.min_requests = 5000;
        assert_eq!(
            evaluate(&a, &healthy(), &look(10), &[]).verdict,
            Verdict::Pass
        );
    }

    #[test]
    fn a_bound_between_buckets_is_judged_on_its_neighbours() {
        let mut a = AnalysisSpec::default();
        a.gates.max_p95_ms = 37.0;
        // 10 % of the requests at 38 ms: above 35 and 37, below 40.
        let m = snapshot(
            counts(&[(20.0, 900), (38.0, 100)], 0),
            counts(&spread(36.0, 50_000), 0),
        );
        let e = evaluate(&a, &m, &look(10), &[]);
        let g = gate(&e, "maxP95Ms");
        // Above the 35 ms bucket: cannot pass; above the 40 ms bucket: nothing, cannot fail.
        assert_eq!(g.verdict, Verdict::Inconclusive);
        assert!(
            g.evidence
                .contains("37 ms is not a bucket bound: judged on the neighbouring buckets"),
            "{}",
            g.evidence
        );
        assert!(g.evidence.starts_with("P(>35 ms) = 10 %"), "{}", g.evidence);
        assert!(g.evidence.contains("P(>40 ms) = 0 %"), "{}", g.evidence);
    }

    #[test]
    fn exactly_at_the_threshold_is_never_a_confident_pass() {
        // 5 % of requests above 35 ms: the gate says strictly fewer.
        let m = snapshot(
            counts(&[(20.0, 95_000), (38.0, 5000)], 0),
            counts(&spread(36.0, 100_000), 0),
        );
        assert_ne!(gate(&eval(&m), "maxP95Ms").verdict, Verdict::Pass);
        let m = snapshot(
            counts(&[(20.0, 90_000), (38.0, 10_000)], 0),
            counts(&spread(36.0, 100_000), 0),
        );
        assert_eq!(gate(&eval(&m), "maxP95Ms").verdict, Verdict::Fail);
    }

    #[test]
    fn comparison_gate_compares_bounds_of_both_p95s() {
        let base = counts(&spread(26.0, 50_000), 0);
        // Same distribution: within + 5 ms.
        let same = snapshot(counts(&spread(26.0, 5000), 0), base.clone());
        let e = eval(&same);
        let g = gate(&e, "maxP95OverBaselineMs");
        assert_eq!(g.verdict, Verdict::Pass, "{}", g.evidence);
        assert!(g.evidence.starts_with("candidate P95 "), "{}", g.evidence);
        assert!(
            g.evidence
                .contains("(n = 5000; P(>34.6 ms) = 0 %) vs baseline P95 29.6 ms"),
            "{}",
            g.evidence
        );
        // + 10 ms: out.
        let slower = snapshot(counts(&spread(36.0, 5000), 0), base.clone());
        let g = gate(&eval(&slower), "maxP95OverBaselineMs").clone();
        assert_eq!(g.verdict, Verdict::Fail, "{}", g.evidence);
        // A handful of baseline requests: cannot pass.
        let thin = snapshot(counts(&spread(26.0, 5000), 0), counts(&spread(26.0, 50), 0));
        let e = eval(&thin);
        assert_eq!(
            gate(&e, "maxP95OverBaselineMs").verdict,
            Verdict::Inconclusive
        );
        assert!(
            e.reasons.iter().any(|r| r
                .contains("only 50 baseline requests in this step, minBaselineRequests is 100")
                || r.contains("not yet sure the candidate P95 is within baseline")),
            "{:?}",
            e.reasons
        );
    }

    #[test]
    fn comparison_is_skipped_at_full_weight() {
        let m = snapshot(counts(&spread(20.0, 5000), 0), Counts::no_data());
        let e = evaluate(&AnalysisSpec::default(), &m, &look(100), &[]);
        assert_eq!(e.verdict, Verdict::Pass, "{:?}", e.reasons);
        assert!(e.reasons[0].contains("comparison skipped"));
        let e = eval(&m);
        assert_eq!(e.verdict, Verdict::Inconclusive);
        assert!(e.missing_data);
    }

    #[test]
    fn error_gate_is_an_exact_binomial_test() {
        let with_errors = |errors: u64| {
            let mut m = healthy();
            m.candidate.step.errors = Ok(Some(errors as f64));
            m.candidate.window.errors = Ok(Some(errors as f64));
            eval(&m)
        };
        assert_eq!(gate(&with_errors(0), "maxErrorRate").verdict, Verdict::Pass);
        // 0.4 % of 5000: not sure either way.
        let e = with_errors(20);
        assert_eq!(gate(&e, "maxErrorRate").verdict, Verdict::Inconclusive);
        assert!(
            e.reasons[0].starts_with(
                "not yet sure the candidate error rate is below maxErrorRate 0.5 %: errors 0.4 % (95 % CI "
            ),
            "{:?}",
            e.reasons
        );
        // 1.2 %: a Fail for the gate, not yet strong enough for the 1 % trigger.
        let e = with_errors(60);
        assert_eq!(gate(&e, "maxErrorRate").verdict, Verdict::Fail);
        assert_eq!(e.error_rate_trigger, None);
        let e = with_errors(250);
        let trigger = e.error_rate_trigger.unwrap();
        assert!(
            trigger.starts_with("candidate error rate 5 % (95 % CI "),
            "{trigger}"
        );
        assert!(
            trigger.ends_with("250/5000 in the last 5m) is above the rollback trigger 1 %"),
            "{trigger}"
        );
    }

    #[test]
    fn one_error_in_three_requests_never_triggers_a_rollback() {
        let mut m = healthy();
        m.candidate.window = counts(&[(20.0, 3)], 1);
        let e = eval(&m);
        assert_eq!(e.error_rate_trigger, None);
        // Three out of three does.
        m.candidate.window = counts(&[(20.0, 3)], 3);
        assert!(eval(&m).error_rate_trigger.is_some());
    }

    #[test]
    fn p95_trigger_needs_strong_evidence_both_ways() {
        let mut m = healthy();
        m.candidate.window = counts(&[(80.0, 20)], 0);
        let e = eval(&m);
        assert_eq!(e.p95_above_trigger, Some(true));
        assert!(e
            .p95_trigger_evidence
            .unwrap()
            .starts_with("P(>50 ms) = 100 %"));
        m.candidate.window = counts(&[(80.0, 1), (20.0, 2)], 0);
        assert_eq!(eval(&m).p95_above_trigger, None);
        // All requests slower than the top bucket: +Inf fails, does not look like missing data.
        m.candidate.window = counts(&[(9000.0, 20)], 0);
        assert_eq!(eval(&m).p95_above_trigger, Some(true));
    }

    #[test]
    fn missing_data_is_inconclusive_with_reasons() {
        let down = MetricsSnapshot {
            candidate: ServiceMetrics::failed("connection refused"),
            baseline: ServiceMetrics::failed("connection refused"),
            custom: Vec::new(),
            parity: None,
            gate_problems: Vec::new(),
        };
        let e = eval(&down);
        assert_eq!(e.verdict, Verdict::Inconclusive);
        assert!(e.missing_data);
        // Said once, with how many queries it hit; each gate's evidence points at it.
        assert_eq!(
            e.reasons,
            ["18 of 18 Prometheus queries failed: connection refused"]
        );
        assert_eq!(
            e.gates[0].evidence,
            "the Prometheus query for candidate latency buckets (step) failed (see the analysis reasons)"
        );
        assert_eq!(e.p95_above_trigger, None);
        assert_eq!(e.error_rate_trigger, None);

        let empty = MetricsSnapshot {
            candidate: ServiceMetrics::no_data(),
            baseline: ServiceMetrics::no_data(),
            custom: Vec::new(),
            parity: None,
            gate_problems: Vec::new(),
        };
        let e = eval(&empty);
        assert_eq!(e.verdict, Verdict::Inconclusive);
        assert!(e.missing_data);
        assert!(e
            .reasons
            .contains(&"no data for candidate latency buckets (step)".to_string()));

        let mut broken = healthy();
        broken.candidate.step.latency = Ok(Some(vec![(0.01, 5.0)]));
        let e = eval(&broken);
        assert!(e
            .reasons
            .iter()
            .any(|r| r == "candidate latency buckets (step) is not a histogram: no +Inf bucket"));
    }

    #[test]
    fn distinct_query_errors_are_counted_apart() {
        let mut m = healthy();
        let refused = "Prometheus at http://p:9090 is unreachable: connection refused".to_string();
        m.candidate.step.latency = Err(refused.clone());
        m.candidate.step.requests = Err(refused.clone());
        m.baseline.breaker = Err("Prometheus at http://p:9090 did not answer within 5s".into());
        let e = eval(&m);
        assert_eq!(e.verdict, Verdict::Inconclusive);
        assert_eq!(
            &e.reasons[..2],
            [
                format!("2 of 18 Prometheus queries failed: {refused}"),
                "1 of 18 Prometheus queries failed: Prometheus at http://p:9090 did not answer within 5s".to_string()
            ]
        );
        assert!(
            !e.reasons.iter().any(|r| r.starts_with(FAILED_QUERY_PREFIX)),
            "{:?}",
            e.reasons
        );
    }

    #[test]
    fn a_failing_gate_beats_missing_data() {
        let mut m = snapshot(counts(&[(80.0, 100)], 0), counts(&spread(26.0, 5000), 0));
        m.candidate.breaker = Ok(None);
        let e = eval(&m);
        assert_eq!(e.verdict, Verdict::Fail);
        assert!(!e.missing_data);
        assert!(e.reasons[0].contains("not below maxP95Ms"));
    }

    #[test]
    fn a_confident_failure_stays_failed_for_the_step() {
        // 0.4 % errors now: undecided on its own ...
        let mut m = healthy();
        m.candidate.step.errors = Ok(Some(20.0));
        let fresh = eval(&m);
        assert_eq!(gate(&fresh, "maxErrorRate").verdict, Verdict::Inconclusive);
        // ... but the gate crossed earlier in the step: a sequential test has stopped.
        let e = evaluate(
            &AnalysisSpec::default(),
            &m,
            &look(10),
            &["maxErrorRate".into()],
        );
        assert_eq!(e.verdict, Verdict::Fail);
        assert!(
            e.reasons[0].starts_with(
                "maxErrorRate failed confidently earlier in this step (now: errors 0.4 %"
            ),
            "{:?}",
            e.reasons
        );
        // Missing data is still missing data.
        let down = MetricsSnapshot {
            candidate: ServiceMetrics::failed("connection refused"),
            baseline: ServiceMetrics::failed("connection refused"),
            custom: Vec::new(),
            parity: None,
            gate_problems: Vec::new(),
        };
        let e = evaluate(
            &AnalysisSpec::default(),
            &down,
            &look(10),
            &["maxErrorRate".into()],
        );
        assert_eq!(e.verdict, Verdict::Inconclusive);
    }

    #[test]
    fn breaker_gate() {
        let mut m = healthy();
        m.candidate.breaker = Ok(Some(1.0));
        assert_eq!(eval(&m).verdict, Verdict::Fail);
        m.candidate.breaker = Ok(Some(2.0));
        assert!(eval(&m).reasons[0].contains("half-open"));
        m.candidate.breaker = Ok(Some(7.0));
        assert_eq!(eval(&m).verdict, Verdict::Inconclusive);
        let a = AnalysisSpec {
            gates: Gates {
                require_breaker_closed: false,
                ..Gates::default()
            },
            ..AnalysisSpec::default()
        };
        m.candidate.breaker = Ok(None);
        assert_eq!(evaluate(&a, &m, &look(10), &[]).verdict, Verdict::Pass);
    }

    #[test]
    fn overridden_quantile_without_buckets_is_pointed_out() {
        let a = AnalysisSpec {
            queries: QueryOverrides {
                p95: Some("histogram_quantile(0.95, x)".into()),
                ..Default::default()
            },
            ..AnalysisSpec::default()
        };
        let e = evaluate(&a, &healthy(), &look(10), &[]);
        assert_eq!(e.verdict, Verdict::Pass);
        assert!(e.reasons[0].contains("queries.latencyBuckets is not"));
    }

    fn custom_spec(gates: serde_json::Value) -> AnalysisSpec {
        let mut a = AnalysisSpec::default();
        a.gates.custom = serde_json::from_value(gates).unwrap();
        a
    }

    fn with_custom(readings: &[(&str, QueryResult, Option<QueryResult>)]) -> MetricsSnapshot {
        let mut m = healthy();
        m.custom = readings
            .iter()
            .map(|(n, v, s)| CustomReading {
                name: n.to_string(),
                value: v.clone(),
                samples: s.clone(),
            })
            .collect();
        m
    }

    #[test]
    fn custom_gates_pass_and_fail_on_their_bound_with_the_value_in_the_evidence() {
        let a = custom_spec(serde_json::json!([
            {"name": "p99", "query": "histogram_quantile(0.99, ...)", "max": 0.05},
            {"name": "replicas", "query": "kube_hpa_status_current_replicas", "min": 2}
        ]));
        let ok = with_custom(&[
            ("p99", Ok(Some(0.031)), None),
            ("replicas", Ok(Some(3.0)), None),
        ]);
        let e = evaluate(&a, &ok, &look(10), &[]);
        assert_eq!(e.verdict, Verdict::Pass, "{:?}", e.reasons);
        assert_eq!(
            gate(&e, "custom:p99").evidence,
            "p99 = 0.031 (at most 0.05)"
        );
        assert_eq!(gate(&e, "custom:p99").threshold, Some(0.05));

        let slow = with_custom(&[
            ("p99", Ok(Some(0.07)), None),
            ("replicas", Ok(Some(3.0)), None),
        ]);
        let e = evaluate(&a, &slow, &look(10), &[]);
        assert_eq!(e.verdict, Verdict::Fail);
        assert_eq!(e.reasons[0], "custom gate p99: p99 = 0.07 (at most 0.05)");

        let short = with_custom(&[
            ("p99", Ok(Some(0.01)), None),
            ("replicas", Ok(Some(1.0)), None),
        ]);
        let e = evaluate(&a, &short, &look(10), &[]);
        assert_eq!(e.verdict, Verdict::Fail);
        assert!(
            e.reasons[0].contains("replicas = 1 (at least 2)"),
            "{:?}",
            e.reasons
        );
    }

    #[test]
    fn a_custom_gate_without_data_or_samples_is_inconclusive() {
        let a = custom_spec(serde_json::json!([
            {"name": "rss-growth", "query": "deriv(...)", "max": 1e6,
             "samplesQuery": "count_over_time(...)", "minSamples": 10}
        ]));
        let thin = with_custom(&[("rss-growth", Ok(Some(5e6)), Some(Ok(Some(3.0))))]);
        let e = evaluate(&a, &thin, &look(10), &[]);
        assert_eq!(
            e.verdict,
            Verdict::Inconclusive,
            "a thin reading neither fails nor passes"
        );
        assert!(!e.missing_data, "too little evidence is not missing data");
        assert_eq!(
            e.reasons,
            ["custom gate rss-growth: only 3 samples, minSamples is 10"]
        );
        let empty = with_custom(&[("rss-growth", Ok(None), Some(Ok(Some(30.0))))]);
        let e = evaluate(&a, &empty, &look(10), &[]);
        assert_eq!(e.verdict, Verdict::Inconclusive);
        assert!(e.missing_data);
        let failed = with_custom(&[(
            "rss-growth",
            Err("Prometheus at p is unreachable: x".into()),
            None,
        )]);
        let e = evaluate(&a, &failed, &look(10), &[]);
        assert_eq!(e.verdict, Verdict::Inconclusive);
        assert_eq!(
            e.reasons,
            ["1 of 19 Prometheus queries failed: Prometheus at p is unreachable: x"]
        );
        // No reading at all (the edge did not run it) is missing data too, never a pass.
        let e = evaluate(&a, &healthy(), &look(10), &[]);
        assert_eq!(e.verdict, Verdict::Inconclusive);
    }

    #[test]
    fn a_report_only_gate_is_shown_but_never_decides() {
        let a = custom_spec(serde_json::json!([
            {"name": "no-critical-alerts", "query": "count(ALERTS{severity=\"critical\"})", "max": 0, "blocking": false}
        ]));
        let firing = with_custom(&[("no-critical-alerts", Ok(Some(2.0)), None)]);
        let e = evaluate(&a, &firing, &look(10), &[]);
        assert_eq!(e.verdict, Verdict::Pass, "{:?}", e.reasons);
        assert_eq!(gate(&e, "custom:no-critical-alerts").verdict, Verdict::Fail);
        assert_eq!(
            e.reasons,
            ["custom gate no-critical-alerts: no-critical-alerts = 2 (at most 0) (report only)"]
        );
    }
}
