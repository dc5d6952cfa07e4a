//! The go/no-go gates of one analysis and the hard rollback triggers.
//!
//! Threshold semantics follow the seed's wording (see operator/README.md):
//! - `maxP95Ms`: candidate P95 must be strictly below (seed "P95 <35ms"): 35 ms fails.
//! - `maxP95OverBaselineMs`: candidate P95 <= baseline P95 + margin (seed "≤ MLX + 5ms"): equal passes.
//! - `maxErrorRate`: strictly below (seed "Error rate <0.5%"): exactly 0.5 % fails.
//! - breaker: the worst state over the window must be 0 (closed) (seed "never opened").
//! - `minRequests`: at least this many candidate requests (equal is enough), else Inconclusive.
//! - triggers: P95 strictly above `p95Ms`, error rate strictly above `errorRate` (seed ">50ms", ">1%").
//!
//! Milliseconds are rounded to the microsecond before comparing, so a Prometheus value of
//! 0.035 s is exactly 35 ms and the threshold tests do not depend on float noise.

use crate::crd::{BreakerState, Gates, RollbackTriggers, Verdict};

/// One PromQL result: `Err` = the query failed, `Ok(None)` = empty result, `Ok(Some(NaN))` happens
/// too (e.g. 0/0 when no requests) and counts as no data.
pub type QueryResult = Result<Option<f64>, String>;

/// The four queries for one service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceMetrics {
    /// `histogram_quantile(0.95, ...)`, seconds.
    pub p95_seconds: QueryResult,
    /// errors / requests, 0..1.
    pub error_rate: QueryResult,
    /// requests in the window.
    pub requests: QueryResult,
    /// worst circuit breaker state in the window: 0 closed, 1 open, 2 half-open.
    pub breaker: QueryResult,
}

impl ServiceMetrics {
    /// Every query returned an empty result.
    pub fn no_data() -> Self {
        Self {
            p95_seconds: Ok(None),
            error_rate: Ok(None),
            requests: Ok(None),
            breaker: Ok(None),
        }
    }

    /// Every query failed with `err` (e.g. Prometheus unreachable).
    pub fn failed(err: &str) -> Self {
        Self {
            p95_seconds: Err(err.to_string()),
            error_rate: Err(err.to_string()),
            requests: Err(err.to_string()),
            breaker: Err(err.to_string()),
        }
    }
}

/// What the edge read from Prometheus for one analysis.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsSnapshot {
    pub candidate: ServiceMetrics,
    /// Only `p95_seconds` and `error_rate` are used (comparison gate, and the record).
    pub baseline: ServiceMetrics,
}

/// What one analysis found.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub verdict: Verdict,
    pub reasons: Vec<String>,
    pub candidate_p95_ms: Option<f64>,
    pub baseline_p95_ms: Option<f64>,
    pub error_rate: Option<f64>,
    pub baseline_error_rate: Option<f64>,
    pub breaker_state: Option<BreakerState>,
    pub request_count: Option<f64>,
    /// Hard trigger: error rate above `rollbackTriggers.errorRate` (with enough requests).
    pub error_rate_trigger: Option<String>,
    /// P95 against `rollbackTriggers.p95Ms`: Some(true) above, Some(false) at or below, None unknown.
    pub p95_above_trigger: Option<bool>,
}

/// A usable number, or why there is none.
enum Reading {
    Value(f64),
    Missing(String),
}

fn read(q: &QueryResult, what: &str) -> Reading {
    match q {
        Err(e) => Reading::Missing(format!("Prometheus query for {what} failed: {e}")),
        Ok(None) => Reading::Missing(format!("no data for {what}")),
        Ok(Some(v)) if !v.is_finite() => Reading::Missing(format!("{what} is {v} (no samples)")),
        Ok(Some(v)) => Reading::Value(*v),
    }
}

/// Like [`read`], but +Inf is a real latency: histogram_quantile answers it when the quantile
/// falls in the top (+Inf) bucket, i.e. requests slower than the largest bucket. It must fail the
/// gates rather than look like missing data.
fn read_latency(q: &QueryResult, what: &str) -> Reading {
    match q {
        Ok(Some(v)) if *v == f64::INFINITY => Reading::Value(*v),
        _ => read(q, what),
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

fn breaker_state(v: f64) -> Option<BreakerState> {
    match v.round() as i64 {
        0 => Some(BreakerState::Closed),
        1 => Some(BreakerState::Open),
        2 => Some(BreakerState::HalfOpen),
        _ => None,
    }
}

/// Evaluates the gates and triggers. `weight` is the candidate's current share: at 100 % the
/// baseline receives no traffic, so the comparison gate is skipped (noted in the reasons).
pub fn evaluate(
    gates: &Gates,
    triggers: &RollbackTriggers,
    m: &MetricsSnapshot,
    weight: u8,
) -> Evaluation {
    let mut fails: Vec<String> = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    let cand_p95 = read_latency(&m.candidate.p95_seconds, "candidate P95");
    let cand_p95_ms = match &cand_p95 {
        Reading::Value(s) => Some(seconds_to_ms(*s)),
        Reading::Missing(_) => None,
    };
    let base_p95_ms = value(&m.baseline.p95_seconds).map(seconds_to_ms);

    // Gate 1: absolute P95, strictly below.
    match (&cand_p95, cand_p95_ms) {
        (_, Some(ms)) if ms < gates.max_p95_ms => {}
        (_, Some(ms)) => fails.push(format!(
            "candidate P95 {ms} ms is not below maxP95Ms {} ms",
            gates.max_p95_ms
        )),
        (Reading::Missing(why), None) => unknown.push(why.clone()),
        (Reading::Value(_), None) => unreachable!("a value always converts"),
    }

    // Gate 2: P95 relative to the baseline, inclusive.
    if weight >= 100 {
        notes.push("baseline comparison skipped: the baseline receives no traffic at 100 %".into());
    } else {
        match (
            cand_p95_ms,
            read_latency(&m.baseline.p95_seconds, "baseline P95"),
        ) {
            (Some(c), Reading::Value(b_seconds)) => {
                let b = seconds_to_ms(b_seconds);
                let limit = b + gates.max_p95_over_baseline_ms;
                // Round the limit like the inputs so "exactly baseline + margin" compares equal.
                if c > (limit * 1_000.0).round() / 1_000.0 {
                    fails.push(format!(
                        "candidate P95 {c} ms exceeds baseline P95 {b} ms + {} ms",
                        gates.max_p95_over_baseline_ms
                    ));
                }
            }
            (_, Reading::Missing(why)) => unknown.push(why),
            (None, Reading::Value(_)) => {} // already reported by gate 1
        }
    }

    // Gate 3: error rate, strictly below.
    let error_rate = value(&m.candidate.error_rate);
    match read(&m.candidate.error_rate, "candidate error rate") {
        Reading::Value(r) if r < gates.max_error_rate => {}
        Reading::Value(r) => fails.push(format!(
            "candidate error rate {} is not below maxErrorRate {}",
            percent(r),
            percent(gates.max_error_rate)
        )),
        Reading::Missing(why) => unknown.push(why),
    }

    // Gate 4: circuit breaker closed over the whole window.
    let breaker_raw = read(&m.candidate.breaker, "candidate circuit breaker state");
    let breaker = match &breaker_raw {
        Reading::Value(v) => breaker_state(*v),
        Reading::Missing(_) => None,
    };
    if gates.require_breaker_closed {
        match (&breaker_raw, breaker) {
            (_, Some(BreakerState::Closed)) => {}
            (_, Some(BreakerState::Open)) => {
                fails.push("candidate circuit breaker was open in the window".into())
            }
            (_, Some(BreakerState::HalfOpen)) => {
                fails.push("candidate circuit breaker was half-open in the window".into())
            }
            (Reading::Value(v), None) => unknown.push(format!(
                "candidate circuit breaker state {v} is not 0, 1 or 2"
            )),
            (Reading::Missing(why), None) => unknown.push(why.clone()),
        }
    }

    // Gate 5: sample size. Too few requests can never pass, but a failing gate still fails:
    // a rollback is cheap and safe, a promotion on a handful of requests is not.
    let requests = value(&m.candidate.requests);
    let enough_requests = match read(&m.candidate.requests, "candidate request count") {
        Reading::Value(n) if n >= gates.min_requests as f64 => true,
        Reading::Value(n) => {
            unknown.push(format!(
                "only {} candidate requests in the window, minRequests is {}",
                n.round(),
                gates.min_requests
            ));
            false
        }
        Reading::Missing(why) => {
            unknown.push(why);
            false
        }
    };

    // Hard triggers. They act at once, so they need a real sample: a single failed request out
    // of three must not roll back instantly (the failureLimit path still catches it).
    let error_rate_trigger = match error_rate {
        Some(r) if enough_requests && r > triggers.error_rate => Some(format!(
            "candidate error rate {} is above the rollback trigger {}",
            percent(r),
            percent(triggers.error_rate)
        )),
        _ => None,
    };
    let p95_above_trigger = match cand_p95_ms {
        Some(ms) if enough_requests => Some(ms > triggers.p95_ms),
        _ => None,
    };

    let verdict = if !fails.is_empty() {
        Verdict::Fail
    } else if !unknown.is_empty() {
        Verdict::Inconclusive
    } else {
        Verdict::Pass
    };
    let mut reasons = fails;
    reasons.extend(unknown);
    reasons.extend(notes);
    Evaluation {
        verdict,
        reasons,
        // Status holds only finite numbers (JSON has no +Inf); the reasons carry the +Inf.
        candidate_p95_ms: cand_p95_ms.filter(|v| v.is_finite()),
        baseline_p95_ms: base_p95_ms,
        error_rate,
        baseline_error_rate: value(&m.baseline.error_rate),
        breaker_state: breaker,
        request_count: requests,
        error_rate_trigger,
        p95_above_trigger,
    }
}

fn percent(r: f64) -> String {
    format!("{}%", (r * 100_000.0).round() / 1_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> MetricsSnapshot {
        MetricsSnapshot {
            candidate: ServiceMetrics {
                p95_seconds: Ok(Some(0.020)),
                error_rate: Ok(Some(0.0)),
                requests: Ok(Some(1000.0)),
                breaker: Ok(Some(0.0)),
            },
            baseline: ServiceMetrics {
                p95_seconds: Ok(Some(0.030)),
                error_rate: Ok(Some(0.0)),
                requests: Ok(Some(99_000.0)),
                breaker: Ok(Some(0.0)),
            },
        }
    }

    fn eval(m: &MetricsSnapshot) -> Evaluation {
        evaluate(&Gates::default(), &RollbackTriggers::default(), m, 10)
    }

    #[test]
    fn infinite_p95_fails_and_fires_the_trigger_but_is_not_stored() {
        // Every request slower than the top bucket: histogram_quantile answers +Inf.
        let mut m = healthy();
        m.candidate.p95_seconds = Ok(Some(f64::INFINITY));
        let e = eval(&m);
        assert_eq!(e.verdict, Verdict::Fail);
        assert_eq!(e.p95_above_trigger, Some(true));
        assert_eq!(e.candidate_p95_ms, None);
        assert!(
            e.reasons.iter().any(|r| r.contains("inf ms")),
            "{:?}",
            e.reasons
        );
    }

    #[test]
    fn infinite_baseline_p95_does_not_panic_or_fail_the_candidate() {
        let mut m = healthy();
        m.baseline.p95_seconds = Ok(Some(f64::INFINITY));
        let e = eval(&m);
        assert_eq!(e.verdict, Verdict::Pass, "{:?}", e.reasons);
        assert_eq!(e.baseline_p95_ms, None);
    }

    fn with(f: impl FnOnce(&mut MetricsSnapshot)) -> MetricsSnapshot {
        let mut m = healthy();
        f(&mut m);
        m
    }

    #[test]
    fn healthy_candidate_passes_without_reasons() {
        let e = eval(&healthy());
        assert_eq!(e.verdict, Verdict::Pass);
        assert!(e.reasons.is_empty(), "{:?}", e.reasons);
        assert_eq!(e.candidate_p95_ms, Some(20.0));
        assert_eq!(e.baseline_p95_ms, Some(30.0));
        assert_eq!(e.breaker_state, Some(BreakerState::Closed));
        assert_eq!(e.request_count, Some(1000.0));
        assert_eq!(e.error_rate_trigger, None);
        assert_eq!(e.p95_above_trigger, Some(false));
    }

    /// Every gate at, just below and just above its threshold. Baseline P95 is 40 ms here so
    /// the comparison gate does not interfere with the absolute one.
    #[test]
    fn gates_exactly_at_their_thresholds() {
        struct Case {
            name: &'static str,
            set: fn(&mut MetricsSnapshot),
            verdict: Verdict,
        }
        let cases = [
            Case {
                name: "p95 34.999 ms",
                set: |m| m.candidate.p95_seconds = Ok(Some(0.034999)),
                verdict: Verdict::Pass,
            },
            Case {
                name: "p95 = 35 ms fails (strictly below)",
                set: |m| m.candidate.p95_seconds = Ok(Some(0.035)),
                verdict: Verdict::Fail,
            },
            Case {
                name: "p95 35.001 ms",
                set: |m| m.candidate.p95_seconds = Ok(Some(0.035001)),
                verdict: Verdict::Fail,
            },
            Case {
                name: "error rate just below 0.5 %",
                set: |m| m.candidate.error_rate = Ok(Some(0.004999)),
                verdict: Verdict::Pass,
            },
            Case {
                name: "error rate = 0.5 % fails (strictly below)",
                set: |m| m.candidate.error_rate = Ok(Some(0.005)),
                verdict: Verdict::Fail,
            },
            Case {
                name: "requests = minRequests is enough",
                set: |m| m.candidate.requests = Ok(Some(100.0)),
                verdict: Verdict::Pass,
            },
            Case {
                name: "requests one short",
                set: |m| m.candidate.requests = Ok(Some(99.0)),
                verdict: Verdict::Inconclusive,
            },
            Case {
                name: "breaker open",
                set: |m| m.candidate.breaker = Ok(Some(1.0)),
                verdict: Verdict::Fail,
            },
            Case {
                name: "breaker half-open",
                set: |m| m.candidate.breaker = Ok(Some(2.0)),
                verdict: Verdict::Fail,
            },
            Case {
                name: "breaker garbage",
                set: |m| m.candidate.breaker = Ok(Some(7.0)),
                verdict: Verdict::Inconclusive,
            },
        ];
        for c in cases {
            let mut m = healthy();
            m.baseline.p95_seconds = Ok(Some(0.040));
            (c.set)(&mut m);
            assert_eq!(eval(&m).verdict, c.verdict, "{}", c.name);
        }
    }

    #[test]
    fn comparison_gate_is_inclusive() {
        // baseline 25 ms + 5 ms margin: 30 ms passes, 30.001 ms fails.
        let at = with(|m| {
            m.baseline.p95_seconds = Ok(Some(0.025));
            m.candidate.p95_seconds = Ok(Some(0.030));
        });
        assert_eq!(eval(&at).verdict, Verdict::Pass);
        let above = with(|m| {
            m.baseline.p95_seconds = Ok(Some(0.025));
            m.candidate.p95_seconds = Ok(Some(0.030001));
        });
        let e = eval(&above);
        assert_eq!(e.verdict, Verdict::Fail);
        assert_eq!(
            e.reasons,
            ["candidate P95 30.001 ms exceeds baseline P95 25 ms + 5 ms"]
        );
    }

    #[test]
    fn comparison_gate_needs_baseline_data_below_100_percent() {
        let m = with(|m| m.baseline.p95_seconds = Ok(Some(f64::NAN)));
        let e = eval(&m);
        assert_eq!(e.verdict, Verdict::Inconclusive);
        assert_eq!(e.reasons, ["baseline P95 is NaN (no samples)"]);
        let at_full = evaluate(&Gates::default(), &RollbackTriggers::default(), &m, 100);
        assert_eq!(at_full.verdict, Verdict::Pass);
        assert!(at_full.reasons[0].contains("comparison skipped"));
    }

    #[test]
    fn nan_empty_and_errors_are_inconclusive_with_reasons() {
        let nan = with(|m| m.candidate.p95_seconds = Ok(Some(f64::NAN)));
        let e = eval(&nan);
        assert_eq!(e.verdict, Verdict::Inconclusive);
        assert_eq!(e.candidate_p95_ms, None);
        assert_eq!(e.reasons, ["candidate P95 is NaN (no samples)"]);

        let empty = MetricsSnapshot {
            candidate: ServiceMetrics::no_data(),
            baseline: ServiceMetrics::no_data(),
        };
        let e = eval(&empty);
        assert_eq!(e.verdict, Verdict::Inconclusive);
        assert!(e.reasons.contains(&"no data for candidate P95".to_string()));
        assert!(e
            .reasons
            .contains(&"no data for candidate request count".to_string()));

        let down = MetricsSnapshot {
            candidate: ServiceMetrics::failed("connection refused"),
            baseline: ServiceMetrics::failed("connection refused"),
        };
        let e = eval(&down);
        assert_eq!(e.verdict, Verdict::Inconclusive);
        assert!(e.reasons[0]
            .starts_with("Prometheus query for candidate P95 failed: connection refused"));
        assert_eq!(e.p95_above_trigger, None);
        assert_eq!(e.error_rate_trigger, None);

        let inf = with(|m| m.candidate.error_rate = Ok(Some(f64::INFINITY)));
        assert_eq!(eval(&inf).verdict, Verdict::Inconclusive);
    }

    #[test]
    fn a_failing_gate_beats_missing_data() {
        let m = with(|m| {
            m.candidate.p95_seconds = Ok(Some(0.080));
            m.candidate.requests = Ok(Some(3.0));
        });
        let e = eval(&m);
        assert_eq!(e.verdict, Verdict::Fail);
        // Fails come first, then unknowns.
        assert!(e.reasons[0].contains("not below maxP95Ms"));
        assert!(e
            .reasons
            .iter()
            .any(|r| r.contains("only 3 candidate requests")));
    }

    #[test]
    fn breaker_gate_can_be_disabled() {
        let gates = Gates {
            require_breaker_closed: false,
            ..Gates::default()
        };
        let m = with(|m| m.candidate.breaker = Ok(None));
        assert_eq!(
            evaluate(&gates, &RollbackTriggers::default(), &m, 10).verdict,
            Verdict::Pass
        );
        assert_eq!(eval(&m).verdict, Verdict::Inconclusive);
    }

    #[test]
    fn triggers_strictly_above_and_only_with_enough_requests() {
        let t = |p95: f64, err: f64, req: f64| {
            let m = with(|m| {
                m.candidate.p95_seconds = Ok(Some(p95));
                m.candidate.error_rate = Ok(Some(err));
                m.candidate.requests = Ok(Some(req));
            });
            let e = eval(&m);
            (e.p95_above_trigger, e.error_rate_trigger.is_some())
        };
        assert_eq!(
            t(0.050, 0.01, 1000.0),
            (Some(false), false),
            "at the trigger is not above"
        );
        assert_eq!(t(0.050001, 0.010001, 1000.0), (Some(true), true));
        assert_eq!(
            t(0.200, 0.5, 10.0),
            (None, false),
            "too few requests to act at once"
        );
    }

    #[test]
    fn error_rate_trigger_message_is_readable() {
        let m = with(|m| m.candidate.error_rate = Ok(Some(0.05)));
        let e = eval(&m);
        assert_eq!(
            e.error_rate_trigger.as_deref(),
            Some("candidate error rate 5% is above the rollback trigger 1%")
        );
        assert!(e
            .reasons
            .contains(&"candidate error rate 5% is not below maxErrorRate 0.5%".to_string()));
    }
}
