//! One whole rollout, driven by the real decision core (or, for comparison, by the old
//! point-estimate judge) against a [`World`].

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use embedding_rollout_operator::{
    crd::{EmbeddingRolloutSpec, EmbeddingRolloutStatus, NoDataPolicy, Phase, Verdict},
    decision::{
        self, analysis::seconds_to_ms, Action, Backend, DeploymentObs, Observed, PrimaryBackend,
    },
};

use crate::world::World;

/// How a rollout ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Promoted,
    RolledBack,
    /// Still holding when the simulation stopped.
    Held,
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub end: End,
    /// Seconds from the first candidate traffic to the rollback decision.
    pub rollback_after: Option<f64>,
    pub analyses: u32,
    /// The first analysis (1-based) that was not Inconclusive.
    pub first_conclusive: Option<u32>,
    /// Analyses from the first conclusive one to the rollback (inclusive of both).
    pub analyses_to_rollback: Option<u32>,
    /// Per step reached: seconds it ran past its duration waiting for evidence (None: not
    /// finished).
    pub step_waits: Vec<Option<f64>>,
    pub seconds: f64,
}

/// What is simulated besides the spec.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Prometheus scrape interval, s.
    pub scrape: f64,
    /// Stop after this much simulated time, s.
    pub max_time: f64,
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn at(t: f64) -> DateTime<Utc> {
    t0() + chrono::Duration::milliseconds((t * 1000.0).round() as i64)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn parse(g: &embedding_rollout_operator::duration::GoDuration) -> f64 {
    g.parse().map(secs).unwrap_or(0.0)
}

fn ready(replicas: i32, hash: Option<String>) -> DeploymentObs {
    DeploymentObs {
        spec_replicas: replicas,
        ready_replicas: replicas,
        available_replicas: replicas,
        updated_replicas: replicas,
        generation: 1,
        observed_generation: 1,
        candidate_hash: hash,
    }
}

fn share(obs: &Observed) -> f64 {
    match obs.primary_backend {
        PrimaryBackend::Candidate => 1.0,
        _ => f64::from(obs.canary_weight.unwrap_or(0)) / 100.0,
    }
}

fn apply(obs: &mut Observed, actions: &[Action], world: &mut World) {
    for a in actions {
        match a {
            Action::EnsureCandidate { replicas, hash } => {
                obs.candidate = Some(ready(*replicas, Some(hash.clone())));
                world.candidate_running = true;
            }
            Action::ScaleCandidate(n) => {
                if let Some(c) = &mut obs.candidate {
                    *c = ready(*n, c.candidate_hash.clone());
                }
            }
            Action::SetCanaryWeight(w) => obs.canary_weight = Some(*w),
            Action::DeleteCanaryIngress => obs.canary_weight = None,
            Action::PointPrimaryIngressAt(Backend::Baseline) => {
                obs.primary_backend = PrimaryBackend::Baseline
            }
            Action::PointPrimaryIngressAt(Backend::Candidate) => {
                obs.primary_backend = PrimaryBackend::Candidate
            }
            Action::ScaleBaseline(n) => obs.baseline = Some(ready(*n, None)),
            // The simulated rollouts have no autoscaler.
            Action::EnsureCandidateAutoscaler { .. } | Action::DeleteCandidateAutoscaler => {}
            Action::ClearCommand => obs.command = None,
            Action::RemoveFinalizer => {}
        }
    }
}

/// A rollout under the operator's decision core. Pods are ready at once: the simulator is about
/// the judge, not the scheduler.
pub fn with_core(spec: &EmbeddingRolloutSpec, world: &mut World, clock: Clock) -> Outcome {
    let window = parse(&spec.analysis.window);
    let mut obs = Observed {
        generation: Some(1),
        deleting: false,
        command: None,
        command_issuer: Default::default(),
        candidate: None,
        baseline: Some(ready(3, None)),
        canary_weight: None,
        primary_backend: PrimaryBackend::Baseline,
        traffic_blocked: None,
        candidate_autoscaler: None,
        baseline_autoscaler: None,
    };
    let mut status = EmbeddingRolloutStatus::default();
    let (mut now, mut next_scrape, mut next_reconcile) = (0.0f64, 0.0f64, 0.0f64);
    let mut first_traffic: Option<f64> = None;
    let mut analyses = 0u32;
    let mut first_conclusive = None;
    let mut step_started: Vec<Option<f64>> = vec![None; spec.steps.len()];
    let mut step_waits: Vec<Option<f64>> = vec![None; spec.steps.len()];
    let durations: Vec<f64> = spec.steps.iter().map(|s| parse(&s.duration)).collect();
    let end = loop {
        let t = next_scrape.min(next_reconcile);
        world.advance(t - now, share(&obs));
        now = t;
        if now > clock.max_time {
            break End::Held;
        }
        if now >= next_scrape {
            world.scrape(now);
            next_scrape += clock.scrape;
        }
        if now < next_reconcile {
            continue;
        }
        let when = at(now);
        let metrics = decision::analysis_due(spec, &status, when).then(|| {
            let step = decision::evidence_range(&status, when).map(secs);
            world.snapshot(now, window, step)
        });
        let before = status.clone();
        let d = decision::reconcile(spec, &status, &obs, metrics.as_ref(), when);
        apply(&mut obs, &d.actions, world);
        status = d.status;
        if share(&obs) > 0.0 && first_traffic.is_none() {
            first_traffic = Some(now);
        }
        if status.last_analysis.as_ref().map(|a| a.time)
            != before.last_analysis.as_ref().map(|a| a.time)
        {
            analyses += 1;
            let v = status.last_analysis.as_ref().map(|a| a.verdict);
            if first_conclusive.is_none() && v != Some(Verdict::Inconclusive) {
                first_conclusive = Some(analyses);
            }
        }
        let step = status.current_step as usize;
        if status.step_started_at.is_some() && step_started[step].is_none() {
            step_started[step] = Some(now);
        }
        let left_step = |i: usize, now: f64, waits: &mut Vec<Option<f64>>| {
            if let Some(s) = step_started[i] {
                waits[i].get_or_insert((now - s - durations[i]).max(0.0));
            }
        };
        if step > before.current_step as usize {
            left_step(before.current_step as usize, now, &mut step_waits);
        }
        match status.phase {
            Phase::RollingBack | Phase::RolledBack | Phase::Failed => break End::RolledBack,
            Phase::Promoting | Phase::Promoted | Phase::Decommissioned => {
                left_step(step, now, &mut step_waits);
                break End::Promoted;
            }
            _ => {}
        }
        next_reconcile = now + secs(d.requeue_after).max(0.5);
    };
    let rollback_after = (end == End::RolledBack).then(|| now - first_traffic.unwrap_or(now));
    Outcome {
        end,
        rollback_after,
        analyses,
        first_conclusive,
        analyses_to_rollback: match (end, first_conclusive) {
            (End::RolledBack, Some(f)) => Some(analyses + 1 - f),
            _ => None,
        },
        step_waits,
        seconds: now,
    }
}

/// The judge before this change, kept here only to compare: point estimates over the window
/// against the thresholds, `minRequests` only blocking a pass, triggers with `minRequests`.
pub fn with_point_estimates(
    spec: &EmbeddingRolloutSpec,
    world: &mut World,
    clock: Clock,
) -> Outcome {
    let a = &spec.analysis;
    let (g, tr) = (&a.gates, &a.rollback_triggers);
    let window = parse(&a.window);
    let interval = parse(&a.interval);
    let sustained = parse(&tr.p95_sustained_for);
    let durations: Vec<f64> = spec.steps.iter().map(|s| parse(&s.duration)).collect();
    world.candidate_running = true;
    // Warm up the series before the first step, as a deploy would.
    let mut now = 0.0f64;
    let mut next_scrape = 0.0f64;
    let mut step = 0usize;
    let mut step_start = 2.0 * clock.scrape;
    let mut next_analysis = step_start + interval;
    let mut fails = 0u32;
    let mut breach_since: Option<f64> = None;
    let mut analyses = 0u32;
    let mut first_conclusive = None;
    let mut step_waits = vec![None; spec.steps.len()];
    let first_traffic = step_start;
    let weight = |step: usize, now: f64, start: f64| {
        if now >= start {
            f64::from(spec.steps[step].weight) / 100.0
        } else {
            0.0
        }
    };
    let end = loop {
        let t = next_scrape.min(next_analysis);
        world.advance(t - now, weight(step, now, step_start));
        now = t;
        if now > clock.max_time {
            break End::Held;
        }
        if now >= next_scrape {
            world.scrape(now);
            next_scrape += clock.scrape;
        }
        if now < next_analysis {
            continue;
        }
        next_analysis = now + interval;
        analyses += 1;
        let [c, b] = world.window_points(now, window);
        let w = spec.steps[step].weight;
        let mut fail = false;
        let mut unknown = false;
        let c_ms = c.p95.map(seconds_to_ms);
        match c_ms {
            Some(ms) if ms < g.max_p95_ms => {}
            Some(_) => fail = true,
            None => unknown = true,
        }
        if w < 100 {
            match (c_ms, b.p95.map(seconds_to_ms)) {
                (Some(c), Some(b)) if c > b + g.max_p95_over_baseline_ms => fail = true,
                (_, None) => unknown = true,
                _ => {}
            }
        }
        match c.error_rate {
            Some(r) if r < g.max_error_rate => {}
            Some(_) => fail = true,
            None => unknown = true,
        }
        let enough = c.requests.is_some_and(|n| n >= g.min_requests as f64);
        if !enough {
            unknown = true;
        }
        let verdict = if fail {
            Verdict::Fail
        } else if unknown {
            Verdict::Inconclusive
        } else {
            Verdict::Pass
        };
        if first_conclusive.is_none() && verdict != Verdict::Inconclusive {
            first_conclusive = Some(analyses);
        }
        let counts = match verdict {
            Verdict::Fail => true,
            Verdict::Inconclusive => a.no_data_policy == NoDataPolicy::Fail,
            Verdict::Pass => false,
        };
        if counts {
            fails += 1;
        } else if verdict == Verdict::Pass {
            fails = 0;
        }
        if enough && c.error_rate.is_some_and(|r| r > tr.error_rate) {
            break End::RolledBack;
        }
        match c_ms {
            Some(ms) if enough && ms > tr.p95_ms => {
                let s = *breach_since.get_or_insert(now);
                if now - s >= sustained {
                    break End::RolledBack;
                }
            }
            Some(_) if enough => breach_since = None,
            _ => {}
        }
        if fails >= a.failure_limit {
            break End::RolledBack;
        }
        if now - step_start >= durations[step] && verdict == Verdict::Pass && fails == 0 {
            step_waits[step] = Some((now - step_start - durations[step]).max(0.0));
            if step + 1 == spec.steps.len() {
                break End::Promoted;
            }
            step += 1;
            step_start = now;
            next_analysis = now + interval;
        }
    };
    Outcome {
        end,
        rollback_after: (end == End::RolledBack).then_some(now - first_traffic),
        analyses,
        first_conclusive,
        analyses_to_rollback: match (end, first_conclusive) {
            (End::RolledBack, Some(f)) => Some(analyses + 1 - f),
            _ => None,
        },
        step_waits,
        seconds: now,
    }
}
