//! One summary per step in the status: the seed's weekly go/no-go report, readable with
//! `kubectl get -o yaml` long after the 10-entry analysis history has moved on.
//!
//! Derived after each reconcile from the status before and after it (pure): a step opens when
//! its weight is applied, each new analysis adds to it, and it closes when the rollout moves on
//! (next step, promotion, rollback, a redeploy after a spec change).

use chrono::{DateTime, Utc};

use crate::crd::{EmbeddingRolloutStatus, Phase, StepSummary, Verdict};

use super::parity;

/// Steps kept (a rollout that restarts over and over keeps its latest ones).
pub const SUMMARY_LIMIT: usize = 50;

/// Brings `st.stepSummaries` up to date with what this reconcile did.
pub fn update(
    before: &EmbeddingRolloutStatus,
    st: &mut EmbeddingRolloutStatus,
    now: DateTime<Utc>,
) {
    if before.candidate_hash.is_some() && before.candidate_hash != st.candidate_hash {
        // Another candidate (a spec change restarted the rollout): it reports on its own steps.
        st.step_summaries.clear();
    }
    // This reconcile's analysis belongs to the step that was running when it was taken, which
    // it may have just ended (a third failure rolls back in the same reconcile).
    let new_analysis = st
        .last_analysis
        .as_ref()
        .filter(|a| before.last_analysis.as_ref().map(|b| b.time) != Some(a.time));
    if let (Some(a), Some(s)) = (
        new_analysis,
        st.step_summaries.iter_mut().rfind(|s| s.ended_at.is_none()),
    ) {
        if a.step == s.step && a.time >= s.started_at {
            s.analyses += 1;
            match a.verdict {
                Verdict::Pass => s.passed += 1,
                Verdict::Fail => s.failed += 1,
                Verdict::Inconclusive => s.inconclusive += 1,
            }
            s.candidate_requests = max_u(s.candidate_requests, a.step_requests);
            s.baseline_requests = max_u(s.baseline_requests, a.baseline_step_requests);
            s.max_candidate_p95_ms = max_f(s.max_candidate_p95_ms, a.candidate_p95_ms);
            s.max_baseline_p95_ms = max_f(s.max_baseline_p95_ms, a.baseline_p95_ms);
            s.max_error_rate = max_f(s.max_error_rate, a.error_rate);
            if let Some(c) = a
                .gates
                .iter()
                .find(|g| g.gate == parity::GATE)
                .and_then(|g| g.value)
            {
                s.min_parity_cosine = Some(s.min_parity_cosine.map_or(c, |m| m.min(c)));
            }
        }
    }
    let running = matches!(
        st.phase,
        Phase::Progressing | Phase::Paused | Phase::Promoting
    ) && st.step_started_at.is_some();
    let key = (st.current_step, st.step_started_at);
    if let Some(open) = st.step_summaries.iter().position(|s| s.ended_at.is_none()) {
        let s = &st.step_summaries[open];
        if !running || (s.step, Some(s.started_at)) != key {
            let outcome = match st.phase {
                Phase::RollingBack | Phase::RolledBack => "RolledBack",
                Phase::Promoted | Phase::Decommissioned => "Promoted",
                Phase::Failed => "Failed",
                Phase::Pending | Phase::Deploying => "Restarted",
                _ => "Advanced",
            };
            approve(st, open, now);
            close(st, open, now, outcome);
        }
    }
    if running && !st.step_summaries.iter().any(|s| s.ended_at.is_none()) {
        st.step_summaries.push(StepSummary {
            step: st.current_step,
            weight: st.current_weight,
            started_at: st.step_started_at.unwrap_or(now),
            ..StepSummary::default()
        });
    }
    let overflow = st.step_summaries.len().saturating_sub(SUMMARY_LIMIT);
    st.step_summaries.drain(..overflow);
}

fn close(st: &mut EmbeddingRolloutStatus, i: usize, now: DateTime<Utc>, outcome: &str) {
    let s = &mut st.step_summaries[i];
    s.ended_at = Some(now);
    s.duration_seconds = (now - s.started_at).to_std().ok().map(|d| d.as_secs());
    s.outcome = Some(outcome.to_string());
}

/// A promote command applied in this reconcile moved the step on: who approved it.
fn approve(st: &mut EmbeddingRolloutStatus, i: usize, now: DateTime<Utc>) {
    let who = st
        .commands
        .iter()
        .rev()
        .find(|c| c.handled_at == now && c.command.starts_with("promote") && c.result == "Applied")
        .map(|c| {
            c.by.clone()
                .or_else(|| c.manager.clone())
                .unwrap_or_else(|| "unknown".into())
        });
    if let Some(who) = who {
        st.step_summaries[i].approved_by = Some(who);
    }
}

fn max_u(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

fn max_f(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b.filter(|v| v.is_finite())) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}
