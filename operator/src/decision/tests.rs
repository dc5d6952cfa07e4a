//! Exhaustive tests of the pure decision. A tiny simulated cluster (`Sim`) applies the actions
//! the way the edge would, so whole rollouts can be driven tick by tick.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::crd::{
    BaselineSpec, CandidateSpec, EmbeddingRolloutSpec, IngressSpec, PromotionSpec, Step,
};
use crate::duration::GoDuration;
use crate::workload::pod_hash;

// ----- fixtures ----------------------------------------------------------------------------

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

const MIN: i64 = 60;

/// Four 10-minute steps, 1-minute analyses, candidate 2 -> 4 replicas, baseline 3 -> standby 1.
fn spec() -> EmbeddingRolloutSpec {
    EmbeddingRolloutSpec {
        baseline: BaselineSpec {
            deployment: "akidb-mlx".into(),
            service: "akidb-mlx".into(),
            port: 8080,
            metrics_service: "mlx".into(),
            standby_replicas: 1,
            replicas: None,
        },
        candidate: CandidateSpec {
            name: Some("akidb-candle".into()),
            image: "candle:1.0.0".into(),
            replicas: 2,
            full_replicas: Some(4),
            port: 8080,
            args: vec![],
            env: vec![],
            resources: None,
            models: None,
            metrics_service: "candle".into(),
            progress_deadline: "10m".into(),
            template: None,
            autoscaling: None,
        },
        ingress: Some(IngressSpec {
            name: "akidb-ingress".into(),
        }),
        traffic: None,
        steps: [1u8, 10, 50, 100]
            .into_iter()
            .map(|weight| Step {
                weight,
                duration: "10m".into(),
                approval: false,
            })
            .collect(),
        analysis: Default::default(),
        promotion: PromotionSpec {
            auto: true,
            decommission_after: Some("1h".into()),
        },
        rollback_deadline: "5m".into(),
        // The candidate goes at once after a rollback in these tests; the delay has its own.
        rollback_scale_down_delay: "0s".into(),
        paused: false,
        notifications: None,
    }
}

fn dep(spec_replicas: i32, ready: i32) -> DeploymentObs {
    DeploymentObs {
        spec_replicas,
        ready_replicas: ready,
        available_replicas: ready,
        updated_replicas: ready,
        generation: 1,
        observed_generation: 1,
        candidate_hash: None,
    }
}

fn cand(spec: &EmbeddingRolloutSpec, replicas: i32, ready: i32) -> DeploymentObs {
    DeploymentObs {
        candidate_hash: Some(pod_hash(&spec.candidate)),
        ..dep(replicas, ready)
    }
}

fn obs() -> Observed {
    Observed {
        generation: Some(1),
        deleting: false,
        command: None,
        command_issuer: Default::default(),
        candidate: None,
        baseline: Some(dep(3, 3)),
        canary_weight: None,
        primary_backend: PrimaryBackend::Baseline,
        traffic_blocked: None,
        candidate_autoscaler: None,
        baseline_autoscaler: None,
    }
}

/// The embedder's latency buckets, seconds.
const BUCKETS: [f64; 22] = [
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.045, 0.05, 0.06,
    0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Counts of `req` requests that all took `latency` seconds, `err` of them failed.
fn counts_at(latency: f64, err: f64, req: f64) -> Counts {
    let mut latency_buckets: Vec<(f64, f64)> = BUCKETS
        .iter()
        .map(|le| (*le, if latency <= *le { req } else { 0.0 }))
        .collect();
    latency_buckets.push((f64::INFINITY, req));
    Counts {
        latency: Ok(Some(latency_buckets)),
        requests: Ok(Some(req)),
        errors: Ok(Some((err * req).round())),
    }
}

/// A service whose `req` requests (in the step and in the window alike) all took `p95`
/// seconds, with error rate `err`.
fn sm(p95: f64, err: f64, req: f64, breaker: f64) -> ServiceMetrics {
    ServiceMetrics {
        p95_seconds: Ok(Some(p95)),
        error_rate: Ok(Some(err)),
        breaker: Ok(Some(breaker)),
        window: counts_at(p95, err, req),
        step: counts_at(p95, err, req),
    }
}

fn healthy() -> MetricsSnapshot {
    MetricsSnapshot {
        candidate: sm(0.020, 0.0, 5000.0, 0.0),
        baseline: sm(0.030, 0.0, 50_000.0, 0.0),
        custom: Vec::new(),
        parity: None,
        gate_problems: Vec::new(),
    }
}

/// Fails the maxP95Ms gate, but stays under the 50 ms trigger.
fn slow() -> MetricsSnapshot {
    MetricsSnapshot {
        candidate: sm(0.040, 0.0, 5000.0, 0.0),
        baseline: sm(0.030, 0.0, 50_000.0, 0.0),
        custom: Vec::new(),
        parity: None,
        gate_problems: Vec::new(),
    }
}

/// Above the 50 ms hard trigger.
fn very_slow() -> MetricsSnapshot {
    MetricsSnapshot {
        candidate: sm(0.080, 0.0, 5000.0, 0.0),
        baseline: sm(0.030, 0.0, 50_000.0, 0.0),
        custom: Vec::new(),
        parity: None,
        gate_problems: Vec::new(),
    }
}

/// Fails a gate that judges the window only (the breaker), so a later Pass can follow it in
/// the same step; the sequential gates stay failed for the step once they fail.
fn breaker_open() -> MetricsSnapshot {
    MetricsSnapshot {
        candidate: sm(0.020, 0.0, 5000.0, 1.0),
        baseline: sm(0.030, 0.0, 50_000.0, 0.0),
        custom: Vec::new(),
        parity: None,
        gate_problems: Vec::new(),
    }
}

fn erroring() -> MetricsSnapshot {
    MetricsSnapshot {
        candidate: sm(0.020, 0.05, 5000.0, 0.0),
        baseline: sm(0.030, 0.0, 50_000.0, 0.0),
        custom: Vec::new(),
        parity: None,
        gate_problems: Vec::new(),
    }
}

fn no_data() -> MetricsSnapshot {
    MetricsSnapshot {
        candidate: ServiceMetrics::no_data(),
        baseline: ServiceMetrics::no_data(),
        custom: Vec::new(),
        parity: None,
        gate_problems: Vec::new(),
    }
}

fn prom_down() -> MetricsSnapshot {
    MetricsSnapshot {
        candidate: ServiceMetrics::failed("connection refused"),
        baseline: ServiceMetrics::failed("connection refused"),
        custom: Vec::new(),
        parity: None,
        gate_problems: Vec::new(),
    }
}

/// Every event with this reason the sim's reconciles emitted, in order.
fn events_named<'a>(s: &'a Sim, reason: &str) -> Vec<&'a Event> {
    s.log
        .iter()
        .flat_map(|d| &d.events)
        .filter(|e| e.reason == reason)
        .collect()
}

fn has_event(d: &Decision, reason: &str) -> bool {
    d.events.iter().any(|e| e.reason == reason)
}

// ----- the simulated cluster -----------------------------------------------------------------

/// Applies actions like the edge + Kubernetes would. Pods become ready on the next tick when
/// `pods_ready`, never otherwise.
#[derive(Clone)]
struct Sim {
    spec: EmbeddingRolloutSpec,
    status: EmbeddingRolloutStatus,
    obs: Observed,
    now: DateTime<Utc>,
    pods_ready: bool,
    /// Every canary weight the cluster saw, in order.
    weights: Vec<u8>,
    log: Vec<Decision>,
}

impl Sim {
    fn new(spec: EmbeddingRolloutSpec) -> Self {
        Self {
            spec,
            status: EmbeddingRolloutStatus::default(),
            obs: obs(),
            now: t0(),
            pods_ready: true,
            weights: vec![],
            log: vec![],
        }
    }

    /// Pods converge to their spec (called before each reconcile, like time passing).
    fn settle(&mut self) {
        if !self.pods_ready {
            return;
        }
        for d in [&mut self.obs.candidate, &mut self.obs.baseline]
            .into_iter()
            .flatten()
        {
            d.ready_replicas = d.spec_replicas;
            d.available_replicas = d.spec_replicas;
            d.updated_replicas = d.spec_replicas;
            d.observed_generation = d.generation;
        }
    }

    fn apply(&mut self, actions: &[Action]) {
        for a in actions {
            match a {
                Action::EnsureCandidate { replicas, hash } => {
                    let d = self.obs.candidate.get_or_insert_with(|| dep(0, 0));
                    if d.candidate_hash.as_ref() != Some(hash) {
                        d.ready_replicas = 0;
                        d.available_replicas = 0;
                        d.updated_replicas = 0;
                    }
                    d.candidate_hash = Some(hash.clone());
                    d.spec_replicas = *replicas;
                    d.generation += 1;
                }
                Action::ScaleCandidate(n) => {
                    if let Some(d) = &mut self.obs.candidate {
                        d.spec_replicas = *n;
                        d.generation += 1;
                    }
                }
                Action::SetCanaryWeight(w) => {
                    self.obs.canary_weight = Some(*w);
                    self.weights.push(*w);
                }
                Action::DeleteCanaryIngress => self.obs.canary_weight = None,
                Action::PointPrimaryIngressAt(Backend::Baseline) => {
                    self.obs.primary_backend = PrimaryBackend::Baseline
                }
                Action::PointPrimaryIngressAt(Backend::Candidate) => {
                    self.obs.primary_backend = PrimaryBackend::Candidate
                }
                Action::ScaleBaseline(n) => {
                    if let Some(d) = &mut self.obs.baseline {
                        d.spec_replicas = *n;
                        d.generation += 1;
                        d.ready_replicas = d.ready_replicas.min(*n);
                        d.available_replicas = d.ready_replicas;
                    }
                }
                Action::EnsureCandidateAutoscaler { min_replicas } => {
                    let max = self
                        .spec
                        .candidate
                        .autoscaling
                        .as_ref()
                        .unwrap()
                        .max_replicas;
                    self.obs.candidate_autoscaler = Some(AutoscalerObs {
                        name: "akidb-candle".into(),
                        min_replicas: *min_replicas,
                        max_replicas: max,
                    });
                }
                Action::DeleteCandidateAutoscaler => self.obs.candidate_autoscaler = None,
                Action::ClearCommand => self.obs.command = None,
                Action::RemoveFinalizer => {}
            }
        }
    }

    /// One reconcile at the current time, then the actions are applied.
    fn tick(&mut self, metrics: Option<&MetricsSnapshot>) -> Decision {
        self.settle();
        let d = reconcile(&self.spec, &self.status, &self.obs, metrics, self.now);
        self.apply(&d.actions);
        self.status = d.status.clone();
        self.log.push(d.clone());
        d
    }

    /// Advances the clock, then reconciles.
    fn after(&mut self, secs: i64, metrics: Option<&MetricsSnapshot>) -> Decision {
        self.now += chrono::Duration::seconds(secs);
        self.tick(metrics)
    }

    /// Runs reconciles every `every` seconds for `total` seconds.
    fn run(&mut self, every: i64, total: i64, m: &MetricsSnapshot) {
        let mut t = 0;
        while t < total {
            self.after(every, Some(m));
            t += every;
        }
    }

    fn phase(&self) -> Phase {
        self.status.phase
    }

    /// Analyses every minute, with `metrics(look)` (1 = this step's first), until the step
    /// advances; fails after `limit` analyses.
    fn soak_until_next_step(
        &mut self,
        limit: u32,
        mut metrics: impl FnMut(u32) -> MetricsSnapshot,
    ) {
        let step = self.status.current_step;
        let mut look = 0;
        while self.status.current_step == step {
            look += 1;
            assert!(
                look < limit,
                "stuck at step {step}: {:?}",
                self.status.message
            );
            let m = metrics(look);
            self.after(MIN, Some(&m));
        }
    }

    /// A sim already at step `i` (weight applied) with healthy pods.
    fn at_step(i: usize) -> Self {
        let mut s = Sim::new(spec());
        s.tick(None); // Pending -> Deploying
        s.after(5, None); // candidate ready -> Progressing, step 0 weight 1
        assert_eq!(s.phase(), Phase::Progressing);
        for _ in 0..i {
            // soak the step with passing analyses until it advances
            s.soak_until_next_step(40, |_| healthy());
            // at a 100 % step the weight comes one tick later (after the scale-up)
            if s.status.step_started_at.is_none() {
                s.after(5, None);
            }
        }
        s
    }
}

// ----- whole rollouts ------------------------------------------------------------------------

#[test]
fn happy_path_goes_all_the_way_to_decommissioned() {
    let mut s = Sim::new(spec());
    let d = s.tick(None);
    assert_eq!(s.phase(), Phase::Deploying);
    assert!(has_event(&d, "Deploying"));
    assert_eq!(
        d.actions,
        [Action::EnsureCandidate {
            replicas: 2,
            hash: pod_hash(&s.spec.candidate)
        }]
    );
    assert_eq!(s.status.baseline_replicas_at_start, Some(3));
    assert_eq!(s.status.observed_image.as_deref(), Some("candle:1.0.0"));

    s.run(30, 3 * 3600, &healthy());
    assert_eq!(s.phase(), Phase::Decommissioned, "{:?}", s.status.message);
    assert_eq!(
        s.weights,
        [1, 10, 50, 100],
        "weights only go up, one per step"
    );
    assert_eq!(s.obs.primary_backend, PrimaryBackend::Candidate);
    assert_eq!(s.obs.canary_weight, None);
    assert_eq!(s.obs.baseline.as_ref().unwrap().spec_replicas, 0);
    assert_eq!(s.obs.candidate.as_ref().unwrap().spec_replicas, 4);
    assert_eq!(s.status.current_weight, 100);

    let reasons: Vec<_> = s
        .log
        .iter()
        .flat_map(|d| d.events.iter())
        .map(|e| e.reason.clone())
        .collect();
    assert_eq!(reasons.iter().filter(|r| *r == "StepStarted").count(), 4);
    for r in ["Promoting", "Promoted", "Decommissioned"] {
        assert_eq!(reasons.iter().filter(|x| *x == r).count(), 1, "{r} once");
    }
    let conds = &s.status.conditions;
    let completed = conds.iter().find(|c| c.type_ == COND_COMPLETED).unwrap();
    assert_eq!(completed.status, "True");
}

#[test]
fn each_step_soaks_at_least_its_duration() {
    let mut s = Sim::new(spec());
    s.tick(None);
    s.run(30, 60 * MIN, &healthy());
    // Collect when each weight was first applied.
    let mut starts: Vec<(u8, DateTime<Utc>)> = vec![];
    let mut status_seen = EmbeddingRolloutStatus::default();
    for d in &s.log {
        if d.status.step_started_at != status_seen.step_started_at {
            if let Some(t) = d.status.step_started_at {
                starts.push((d.status.current_weight, t));
            }
        }
        status_seen = d.status.clone();
    }
    let weights: Vec<u8> = starts.iter().map(|(w, _)| *w).collect();
    assert_eq!(weights, [1, 10, 50, 100]);
    for pair in starts.windows(2) {
        let soak = (pair[1].1 - pair[0].1).num_seconds();
        assert!(soak >= 10 * MIN, "step at {}% lasted {soak}s", pair[0].0);
    }
}

#[test]
fn scales_candidate_to_full_replicas_before_sending_100_percent() {
    let mut s = Sim::at_step(2);
    assert_eq!(s.status.current_weight, 50);
    s.pods_ready = false;
    // soak step 3 (50 %)
    let mut guard = 0;
    while s.status.current_step == 2 {
        s.after(MIN, Some(&healthy()));
        guard += 1;
        assert!(guard < 30);
    }
    let d = s.log.last().unwrap();
    assert!(d.actions.contains(&Action::EnsureCandidate {
        replicas: 4,
        hash: pod_hash(&s.spec.candidate)
    }));
    assert!(!d.actions.contains(&Action::SetCanaryWeight(100)));
    assert_eq!(
        s.status.current_weight, 50,
        "weight held until the pods exist"
    );
    assert_eq!(s.status.step_started_at, None);
    let d = s.after(5, Some(&healthy()));
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    s.pods_ready = true;
    let d = s.after(5, Some(&healthy()));
    assert_eq!(d.actions, [Action::SetCanaryWeight(100)]);
    assert_eq!(s.status.current_weight, 100);
}

#[test]
fn candidate_that_never_scales_for_100_percent_rolls_back_after_progress_deadline() {
    let mut s = Sim::at_step(2);
    s.pods_ready = false;
    while s.status.current_step == 2 {
        s.after(MIN, Some(&healthy()));
    }
    s.run(MIN, 9 * MIN, &healthy());
    assert_eq!(s.phase(), Phase::Progressing);
    s.after(MIN, Some(&healthy()));
    assert_eq!(s.phase(), Phase::RollingBack, "at the deadline");
    assert!(s
        .status
        .rollback
        .as_ref()
        .unwrap()
        .reason
        .contains("did not reach 4 ready replicas"));
}

// ----- Pending and Deploying -----------------------------------------------------------------

#[test]
fn pending_waits_for_baseline_and_primary_ingress() {
    let mut o = obs();
    o.baseline = None;
    let d = reconcile(&spec(), &Default::default(), &o, None, t0());
    assert_eq!(d.status.phase, Phase::Pending);
    assert!(d.actions.is_empty());
    assert_eq!(
        d.status.message.as_deref(),
        Some("waiting for the baseline Deployment akidb-mlx")
    );

    let mut o = obs();
    o.primary_backend = PrimaryBackend::Missing;
    let d = reconcile(&spec(), &Default::default(), &o, None, t0());
    assert_eq!(d.status.phase, Phase::Pending);
    assert!(d.actions.is_empty());
    assert!(d
        .status
        .message
        .unwrap()
        .contains("primary Ingress akidb-ingress"));
}

#[test]
fn deploying_waits_for_available_replicas_of_the_right_hash() {
    let sp = spec();
    let mut s = Sim::new(sp.clone());
    s.pods_ready = false;
    s.tick(None);
    // Deployment exists with the right hash but 1/2 ready.
    s.obs.candidate.as_mut().unwrap().ready_replicas = 1;
    s.obs.candidate.as_mut().unwrap().available_replicas = 1;
    s.obs.candidate.as_mut().unwrap().updated_replicas = 1;
    let d = s.after(5, None);
    assert_eq!(s.phase(), Phase::Deploying);
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(d.requeue_after, WAIT_REQUEUE);
    assert!(s.status.message.as_ref().unwrap().contains("1/2 ready"));

    // All ready but the controller has not observed the latest generation yet.
    let c = s.obs.candidate.as_mut().unwrap();
    c.ready_replicas = 2;
    c.available_replicas = 2;
    c.updated_replicas = 2;
    c.observed_generation = c.generation - 1;
    s.after(5, None);
    assert_eq!(s.phase(), Phase::Deploying);

    // Ready pods of another hash (an old candidate) do not count.
    let c = s.obs.candidate.as_mut().unwrap();
    c.observed_generation = c.generation;
    c.candidate_hash = Some("old".into());
    let d = s.after(5, None);
    assert_eq!(s.phase(), Phase::Deploying);
    assert!(matches!(d.actions[..], [Action::EnsureCandidate { .. }]));

    s.obs.candidate = Some(cand(&sp, 2, 2));
    let d = s.after(5, None);
    assert_eq!(s.phase(), Phase::Progressing);
    assert_eq!(d.actions, [Action::SetCanaryWeight(1)]);
    assert_eq!(s.status.current_weight, 1);
    assert_eq!(s.status.step_started_at, Some(s.now));
    assert!(has_event(&d, "StepStarted"));
}

#[test]
fn progress_deadline_fails_without_touching_traffic() {
    let mut s = Sim::new(spec());
    s.pods_ready = false;
    s.tick(None);
    let d = s.after(10 * MIN - 1, None);
    assert_eq!(
        s.phase(),
        Phase::Deploying,
        "one second before the deadline"
    );
    assert!(!has_event(&d, "Failed"));
    let d = s.after(1, None);
    assert_eq!(s.phase(), Phase::Failed, "at the deadline");
    assert!(has_event(&d, "Failed"));
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert!(s.weights.is_empty());
    assert_eq!(s.obs.primary_backend, PrimaryBackend::Baseline);
    let msg = s.status.message.clone().unwrap();
    assert!(
        msg.contains("not available after 10m") && msg.contains("traffic untouched"),
        "{msg}"
    );
    // Failed is terminal and quiet.
    let d = s.after(MIN, None);
    assert!(d.actions.is_empty() && d.events.is_empty());
    assert_eq!(d.requeue_after, MAX_REQUEUE);
}

// ----- analysis and advancing ----------------------------------------------------------------

#[test]
fn does_not_advance_before_the_step_duration_even_when_passing() {
    let mut s = Sim::at_step(0);
    s.run(MIN, 9 * MIN, &healthy());
    assert_eq!(s.status.current_step, 0);
    assert_eq!(
        s.status.last_analysis.as_ref().unwrap().verdict,
        Verdict::Pass
    );
    s.after(MIN, Some(&healthy()));
    assert_eq!(s.status.current_step, 1);
    assert_eq!(s.status.current_weight, 10);
}

#[test]
fn first_analysis_of_a_step_waits_one_interval() {
    let s = Sim::at_step(0);
    let started = s.status.step_started_at.unwrap();
    assert!(!analysis_due(
        &s.spec,
        &s.status,
        started + chrono::Duration::seconds(59)
    ));
    assert!(analysis_due(
        &s.spec,
        &s.status,
        started + chrono::Duration::seconds(60)
    ));
    let d = reconcile(
        &s.spec,
        &s.status,
        &s.obs,
        Some(&healthy()),
        started + chrono::Duration::seconds(30),
    );
    assert!(d.status.last_analysis.is_none());
    assert_eq!(d.requeue_after, Duration::from_secs(30));
}

#[test]
fn analysis_due_but_not_queried_requeues_soon() {
    let s = Sim::at_step(0);
    let now = s.status.step_started_at.unwrap() + chrono::Duration::seconds(90);
    let d = reconcile(&s.spec, &s.status, &s.obs, None, now);
    assert!(d.status.last_analysis.is_none());
    assert_eq!(d.requeue_after, WAIT_REQUEUE);
}

#[test]
fn never_advances_on_inconclusive_or_failing_analyses() {
    for (name, m) in [
        ("no data", no_data()),
        ("prometheus down", prom_down()),
        (
            "few requests",
            MetricsSnapshot {
                candidate: sm(0.020, 0.0, 10.0, 0.0),
                baseline: sm(0.030, 0.0, 50_000.0, 0.0),
                custom: Vec::new(),
                parity: None,
                gate_problems: Vec::new(),
            },
        ),
    ] {
        let mut s = Sim::at_step(0);
        s.run(MIN, 60 * MIN, &m);
        assert_eq!(s.status.current_step, 0, "{name}");
        assert_eq!(
            s.phase(),
            Phase::Progressing,
            "{name}: Hold never rolls back"
        );
        assert_eq!(s.status.consecutive_failures, 0, "{name}");
        assert!(
            s.status.message.as_ref().unwrap().contains("Inconclusive"),
            "{name}: {:?}",
            s.status.message
        );
    }
}

#[test]
fn advances_only_after_a_pass_taken_in_this_step() {
    let mut s = Sim::at_step(0);
    // 10 minutes of failing-then-recovering: 2 failures, then passes.
    s.after(MIN, Some(&breaker_open()));
    s.after(MIN, Some(&breaker_open()));
    assert_eq!(s.status.consecutive_failures, 2);
    s.run(MIN, 8 * MIN, &no_data());
    assert_eq!(s.status.current_step, 0, "duration passed but no pass");
    assert_eq!(
        s.status.consecutive_failures, 2,
        "Hold neither adds nor resets"
    );
    s.after(MIN, Some(&healthy()));
    assert_eq!(s.status.consecutive_failures, 0);
    assert_eq!(s.status.current_step, 1);
}

#[test]
fn failure_limit_consecutive_failures_roll_back() {
    let mut s = Sim::at_step(1);
    s.after(MIN, Some(&slow()));
    let first_fail = s.now;
    s.after(MIN, Some(&slow()));
    assert_eq!(s.phase(), Phase::Progressing);
    let d = s.after(MIN, Some(&slow()));
    assert_eq!(s.phase(), Phase::RollingBack);
    assert!(has_event(&d, "RollbackStarted"));
    // Rollback actions go out in the same reconcile: weight 0 first, then the canary goes.
    assert_eq!(
        &d.actions[..2],
        [Action::SetCanaryWeight(0), Action::DeleteCanaryIngress]
    );
    let rb = s.status.rollback.clone().unwrap();
    assert!(
        rb.reason
            .starts_with("3 consecutive failing analyses (failureLimit 3)"),
        "{}",
        rb.reason
    );
    assert!(rb.reason.contains("not below maxP95Ms 35 ms"));
    assert_eq!(rb.first_failure_at, Some(first_fail));
    assert_eq!(rb.from_phase, Phase::Progressing);
    assert_eq!(s.status.current_weight, 0);
}

#[test]
fn a_sequential_gate_that_failed_stays_failed_until_the_step_ends() {
    let mut s = Sim::at_step(1);
    s.after(MIN, Some(&slow()));
    assert_eq!(
        s.status.step_failed_gates,
        ["maxP95Ms", "maxP95OverBaselineMs"]
    );
    // The counts look fine again, but the test already stopped: still failing, then rollback.
    s.after(MIN, Some(&healthy()));
    assert_eq!(s.status.consecutive_failures, 2);
    assert!(s.status.last_analysis.as_ref().unwrap().reasons[0]
        .starts_with("maxP95Ms failed confidently earlier in this step"));
    s.after(MIN, Some(&healthy()));
    assert_eq!(s.phase(), Phase::RollingBack);
}

#[test]
fn a_pass_between_failures_resets_the_count() {
    let mut s = Sim::at_step(1);
    for m in [
        breaker_open(),
        breaker_open(),
        healthy(),
        breaker_open(),
        breaker_open(),
        healthy(),
        breaker_open(),
        breaker_open(),
    ] {
        s.after(MIN, Some(&m));
    }
    assert_eq!(s.phase(), Phase::Progressing);
    assert_eq!(s.status.consecutive_failures, 2);
}

#[test]
fn no_data_policy_fail_counts_inconclusive_as_failure() {
    for m in [no_data(), prom_down()] {
        let mut sp = spec();
        sp.analysis.no_data_policy = crate::crd::NoDataPolicy::Fail;
        let mut s = Sim::new(sp);
        s.tick(None);
        s.after(5, None);
        s.after(MIN, Some(&m));
        s.after(MIN, Some(&m));
        assert_eq!(s.status.consecutive_failures, 2);
        assert_eq!(s.phase(), Phase::Progressing);
        s.after(MIN, Some(&m));
        assert_eq!(s.phase(), Phase::RollingBack);
    }
}

/// Data present but too little of it: waiting, not a failure, whatever the policy.
fn thin() -> MetricsSnapshot {
    MetricsSnapshot {
        candidate: sm(0.020, 0.0, 50.0, 0.0),
        baseline: sm(0.030, 0.0, 50_000.0, 0.0),
        custom: Vec::new(),
        parity: None,
        gate_problems: Vec::new(),
    }
}

/// 100 000 requests per service, exactly 5 % of the candidate's at 40 ms (the rest at 20 ms):
/// plenty of evidence and never a decision on "P95 < 35 ms".
fn undecided() -> MetricsSnapshot {
    let mix = |req: f64| {
        let mut b: Vec<(f64, f64)> = BUCKETS
            .iter()
            .map(|le| {
                let n = if *le >= 0.04 {
                    req
                } else if *le >= 0.02 {
                    0.95 * req
                } else {
                    0.0
                };
                (*le, n)
            })
            .collect();
        b.push((f64::INFINITY, req));
        Counts {
            latency: Ok(Some(b)),
            requests: Ok(Some(req)),
            errors: Ok(Some(0.0)),
        }
    };
    let mut m = healthy();
    m.candidate.step = mix(100_000.0);
    m.candidate.window = mix(5_000.0);
    m
}

#[test]
fn too_little_evidence_is_not_missing_data_even_under_the_fail_policy() {
    let mut sp = spec();
    sp.analysis.no_data_policy = crate::crd::NoDataPolicy::Fail;
    let mut s = Sim::new(sp);
    s.tick(None);
    s.after(5, None);
    s.run(MIN, 8 * MIN, &thin());
    assert_eq!(s.phase(), Phase::Progressing);
    assert_eq!(s.status.consecutive_failures, 0);
    assert_eq!(
        s.status.last_analysis.as_ref().unwrap().verdict,
        Verdict::Inconclusive
    );
}

#[test]
fn an_undecided_step_waits_up_to_the_evidence_timeout_then_follows_the_policy() {
    for policy in [
        crate::crd::NoDataPolicy::Hold,
        crate::crd::NoDataPolicy::Fail,
    ] {
        let mut sp = spec();
        sp.analysis.no_data_policy = policy;
        sp.analysis.evidence_timeout = "20m".into();
        let mut s = Sim::new(sp);
        s.tick(None);
        s.after(5, None);
        // The 10-minute step plus 19 minutes of waiting: still collecting.
        s.run(MIN, 29 * MIN, &thin());
        assert_eq!(s.phase(), Phase::Progressing, "{policy:?}");
        assert!(
            s.status
                .message
                .as_ref()
                .unwrap()
                .contains("waiting for a passing analysis"),
            "{:?}",
            s.status.message
        );
        s.run(MIN, 2 * MIN, &thin());
        match policy {
            crate::crd::NoDataPolicy::Hold => {
                assert_eq!(s.phase(), Phase::Progressing);
                assert_eq!(s.status.current_step, 0);
                let msg = s.status.message.clone().unwrap();
                // Thin evidence (50 requests) is kept and added to, not started over.
                assert!(
                    msg.contains("no conclusive evidence 20m after its duration (evidenceTimeout); noDataPolicy Hold: holding at 1% and collecting more"),
                    "{msg}"
                );
                assert_eq!(s.status.evidence_restarts, 0);
                let warnings = events_named(&s, "EvidenceTimeout");
                assert_eq!(warnings.len(), 1, "warned once");
                assert!(
                    warnings[0]
                        .message
                        .contains("no conclusive evidence 20m after its duration"),
                    "{}",
                    warnings[0].message
                );
            }
            crate::crd::NoDataPolicy::Fail => {
                assert!(
                    matches!(s.phase(), Phase::RollingBack | Phase::RolledBack),
                    "{:?}",
                    s.phase()
                );
                let rb = s.status.rollback.clone().unwrap();
                assert!(
                    rb.reason.contains("no conclusive evidence"),
                    "{}",
                    rb.reason
                );
            }
        }
    }
}

#[test]
fn under_hold_an_undecided_step_starts_its_evidence_over_then_passes_on_fresh_requests() {
    let mut sp = spec();
    sp.analysis.evidence_timeout = "20m".into();
    let mut s = Sim::new(sp);
    s.tick(None);
    s.after(5, None);
    let step_started = s.status.step_started_at.unwrap();
    // Plenty of evidence with exactly 5 % of the candidate's requests above maxP95Ms: never
    // decided. 10 minutes of soak + 20 of waiting: the evidence starts over once.
    let undecided = undecided();
    s.run(MIN, 31 * MIN, &undecided);
    assert_eq!(s.status.evidence_restarts, 1);
    let restarted = s.status.evidence_started_at.unwrap();
    assert!(restarted > step_started + chrono::Duration::minutes(29));
    assert!(s
        .status
        .message
        .as_ref()
        .unwrap()
        .contains("(evidence restart 1,"));
    // The gates now count only the requests since the restart.
    assert_eq!(
        evidence_range(&s.status, restarted + chrono::Duration::seconds(90)),
        Some(Duration::from_secs(90))
    );
    // Each restart waits twice as long as the last: still one restart 21 minutes on, a second
    // one 40 minutes after the first, and one warning each.
    s.run(MIN, 21 * MIN, &undecided);
    assert_eq!(s.status.evidence_restarts, 1);
    s.run(MIN, 20 * MIN, &undecided);
    assert_eq!(s.status.evidence_restarts, 2);
    let warnings = events_named(&s, "EvidenceTimeout");
    assert_eq!(warnings.len(), 2);
    assert!(
        warnings[1]
            .message
            .contains("40m after its evidence started over"),
        "{}",
        warnings[1].message
    );
    // Fresh, healthy requests decide it (at the restart's smaller budget share): next step, with
    // its own evidence from its start.
    s.soak_until_next_step(10, |_| healthy());
    assert_eq!(s.status.evidence_restarts, 0);
    assert_eq!(s.status.evidence_started_at, None);
}

#[test]
fn each_step_counts_its_own_looks_and_evidence_range() {
    let mut s = Sim::at_step(0);
    s.after(MIN, Some(&healthy()));
    s.after(MIN, Some(&healthy()));
    assert_eq!(s.status.step_analyses, 2);
    assert_eq!(
        evidence_range(&s.status, s.now),
        Some(Duration::from_secs(2 * MIN as u64))
    );
    // Past the 10-minute soak the step advances; the next step starts counting from 1.
    while s.status.current_step == 0 {
        s.after(MIN, Some(&healthy()));
    }
    assert_eq!(s.status.step_analyses, 0);
    s.after(MIN, Some(&healthy()));
    assert_eq!(s.status.last_analysis.as_ref().unwrap().step, 1);
    assert_eq!(s.status.last_analysis.as_ref().unwrap().look, Some(1));
    assert_eq!(
        evidence_range(&EmbeddingRolloutStatus::default(), s.now),
        None
    );
}

#[test]
fn error_rate_trigger_rolls_back_at_the_first_analysis() {
    let mut s = Sim::at_step(2);
    let d = s.after(MIN, Some(&erroring()));
    assert_eq!(s.phase(), Phase::RollingBack);
    let rb = s.status.rollback.clone().unwrap();
    assert_eq!(
        rb.reason,
        "candidate error rate 5 % (95 % CI 4.41 %-5.64 %, 250/5000 in the last 5m) is above the rollback trigger 1 %"
    );
    assert_eq!(rb.first_failure_at, Some(s.now));
    assert!(d.actions.contains(&Action::SetCanaryWeight(0)));
    assert!(d.actions.contains(&Action::DeleteCanaryIngress));
}

#[test]
fn p95_trigger_needs_to_be_sustained() {
    let mut s = Sim::at_step(0);
    let mut sp = s.spec.clone();
    sp.analysis.failure_limit = 100; // isolate the trigger from failureLimit
    s.spec = sp;
    s.after(MIN, Some(&very_slow()));
    let since = s.now;
    assert_eq!(s.status.p95_breach_since, Some(since));
    for _ in 0..4 {
        s.after(MIN, Some(&very_slow()));
        assert_eq!(s.phase(), Phase::Progressing);
    }
    // Missing data neither clears nor triggers.
    s.after(30, Some(&no_data()));
    assert_eq!(s.status.p95_breach_since, Some(since));
    assert_eq!(s.phase(), Phase::Progressing);
    s.after(30, Some(&very_slow()));
    assert_eq!(s.phase(), Phase::RollingBack, "5 minutes above 50 ms");
    let rb = s.status.rollback.unwrap();
    assert!(
        rb.reason
            .contains("above the rollback trigger 50 ms for 5m"),
        "{}",
        rb.reason
    );
    assert_eq!(rb.first_failure_at, Some(since));
}

#[test]
fn a_good_reading_clears_the_p95_breach() {
    let mut s = Sim::at_step(0);
    s.spec.analysis.failure_limit = 100;
    s.after(MIN, Some(&very_slow()));
    s.after(MIN, Some(&very_slow()));
    s.after(MIN, Some(&healthy()));
    assert_eq!(s.status.p95_breach_since, None);
    for _ in 0..4 {
        s.after(MIN, Some(&very_slow()));
    }
    assert_eq!(
        s.phase(),
        Phase::Progressing,
        "the breach restarted 4 minutes ago"
    );
}

#[test]
fn history_is_bounded_and_records_measurements() {
    let mut s = Sim::at_step(0);
    s.spec.steps[0].duration = GoDuration::from("1h");
    s.run(MIN, 30 * MIN, &healthy());
    assert_eq!(s.status.history.len(), crate::crd::HISTORY_LIMIT);
    let last = s.status.last_analysis.clone().unwrap();
    assert_eq!(s.status.history.last(), Some(&last));
    assert_eq!(last.candidate_p95_ms, Some(20.0));
    assert_eq!(last.baseline_p95_ms, Some(30.0));
    assert_eq!(last.request_count, Some(5000.0));
    assert_eq!(last.step_requests, Some(5000));
    assert_eq!(last.look, Some(30));
    assert!(last
        .gates
        .iter()
        .any(|g| g.gate == "maxErrorRate" && g.verdict == Verdict::Pass));
    assert_eq!(last.breaker_state, Some(crate::crd::BreakerState::Closed));
    assert_eq!(last.weight, 1);
    assert!(s.status.history.windows(2).all(|w| w[0].time < w[1].time));
}

#[test]
fn nan_measurements_are_stored_as_absent() {
    let mut s = Sim::at_step(0);
    let mut m = healthy();
    m.candidate.p95_seconds = Ok(Some(f64::NAN));
    m.candidate.error_rate = Ok(Some(f64::NAN));
    s.after(MIN, Some(&m));
    let a = s.status.last_analysis.clone().unwrap();
    // The shown values are NaN; the gates judge the counts, which are fine.
    assert_eq!(a.verdict, Verdict::Pass);
    assert_eq!(a.candidate_p95_ms, None);
    assert_eq!(a.error_rate, None);
    // ... so the status compares equal to itself and serialises without NaN.
    let json = serde_json::to_string(&s.status).unwrap();
    let back: EmbeddingRolloutStatus = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s.status);
}

#[test]
fn healthy_condition_follows_the_last_verdict() {
    let mut s = Sim::at_step(0);
    s.after(MIN, Some(&healthy()));
    let c = |s: &Sim| {
        s.status
            .conditions
            .iter()
            .find(|c| c.type_ == COND_HEALTHY)
            .unwrap()
            .clone()
    };
    assert_eq!(c(&s).status, "True");
    let pass_time = c(&s).last_transition_time;
    s.after(MIN, Some(&healthy()));
    assert_eq!(
        c(&s).last_transition_time,
        pass_time,
        "no transition, no new time"
    );
    s.after(MIN, Some(&slow()));
    assert_eq!(c(&s).status, "False");
    assert!(c(&s).message.contains("maxP95Ms"));
    s.after(MIN, Some(&no_data()));
    assert_eq!(c(&s).status, "Unknown");
}

// ----- promotion and decommission ------------------------------------------------------------

#[test]
fn promotion_switches_primary_then_retires_canary_and_baseline() {
    let mut s = Sim::at_step(3);
    assert_eq!(s.status.current_weight, 100);
    assert_eq!(s.obs.candidate.as_ref().unwrap().spec_replicas, 4);
    s.pods_ready = false;
    let mut guard = 0;
    while s.phase() != Phase::Promoting {
        s.after(MIN, Some(&healthy()));
        guard += 1;
        assert!(guard < 20);
    }
    // Candidate already at 4 ready from the 100 % step: the switch goes out at once.
    let d = s.log.last().unwrap().clone();
    assert!(
        d.actions
            .contains(&Action::PointPrimaryIngressAt(Backend::Candidate)),
        "{:?}",
        d.actions
    );
    assert!(
        !d.actions.contains(&Action::DeleteCanaryIngress),
        "canary stays until the switch is seen"
    );
    let d = s.after(2, None);
    assert_eq!(
        d.actions,
        [Action::DeleteCanaryIngress, Action::ScaleBaseline(1)]
    );
    assert_eq!(s.phase(), Phase::Promoting);
    let d = s.after(2, None);
    assert_eq!(s.phase(), Phase::Promoted);
    assert!(has_event(&d, "Promoted"));
    assert!(d.actions.is_empty());
    assert_eq!(s.status.promoted_at, Some(s.now));
}

#[test]
fn promoting_waits_for_full_replicas_when_promoted_early() {
    let mut s = Sim::at_step(1);
    s.pods_ready = false;
    s.obs.command = Some("promote-full".into());
    let d = s.after(1, None);
    assert_eq!(s.phase(), Phase::Promoting);
    assert!(d.actions.contains(&Action::ClearCommand));
    assert!(d.actions.contains(&Action::EnsureCandidate {
        replicas: 4,
        hash: pod_hash(&s.spec.candidate)
    }));
    assert!(!d
        .actions
        .contains(&Action::PointPrimaryIngressAt(Backend::Candidate)));
    let d = s.after(5, None);
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(
        s.obs.canary_weight,
        Some(10),
        "weight untouched while scaling"
    );
    s.pods_ready = true;
    let d = s.after(5, None);
    assert_eq!(
        d.actions,
        [Action::PointPrimaryIngressAt(Backend::Candidate)]
    );
}

#[test]
fn promotion_auto_false_waits_for_promote() {
    let mut sp = spec();
    sp.promotion.auto = false;
    let mut s = Sim::new(sp);
    s.tick(None);
    s.run(30, 4 * 3600, &healthy());
    assert_eq!(s.phase(), Phase::Progressing);
    assert_eq!(s.status.current_step, 3);
    assert!(s
        .status
        .message
        .as_ref()
        .unwrap()
        .contains("promotion.auto is false"));
    s.obs.command = Some("promote".into());
    s.after(1, None);
    assert_eq!(s.phase(), Phase::Promoting);
}

#[test]
fn decommission_after_the_soak() {
    let mut s = Sim::at_step(3);
    while s.phase() != Phase::Promoted {
        s.after(30, Some(&healthy()));
    }
    let promoted = s.status.promoted_at.unwrap();
    let d = reconcile(
        &s.spec,
        &s.status,
        &s.obs,
        None,
        promoted + chrono::Duration::seconds(600),
    );
    assert_eq!(d.status.phase, Phase::Promoted);
    assert_eq!(d.requeue_after, MAX_REQUEUE, "long sleeps are capped");
    let d = reconcile(
        &s.spec,
        &s.status,
        &s.obs,
        None,
        promoted + chrono::Duration::seconds(3590),
    );
    assert_eq!(d.requeue_after, Duration::from_secs(10));
    let d = reconcile(
        &s.spec,
        &s.status,
        &s.obs,
        None,
        promoted + chrono::Duration::seconds(3600),
    );
    assert_eq!(d.status.phase, Phase::Decommissioned);
    assert_eq!(d.actions, [Action::ScaleBaseline(0)]);
    assert!(has_event(&d, "Decommissioned"));
}

#[test]
fn without_decommission_after_the_baseline_stays_on_standby() {
    let mut s = Sim::at_step(3);
    s.spec.promotion.decommission_after = None;
    s.run(3600, 30 * 24 * 3600, &healthy()); // a month
    assert_eq!(s.phase(), Phase::Promoted);
    assert_eq!(s.obs.baseline.as_ref().unwrap().spec_replicas, 1);
}

#[test]
fn promoted_reasserts_its_end_state() {
    let mut s = Sim::at_step(3);
    while s.phase() != Phase::Promoted {
        s.after(30, Some(&healthy()));
    }
    // Someone edits the primary Ingress back and recreates a canary.
    s.obs.primary_backend = PrimaryBackend::Other("manual".into());
    s.obs.canary_weight = Some(5);
    let d = s.after(30, None);
    assert_eq!(
        d.actions,
        [
            Action::PointPrimaryIngressAt(Backend::Candidate),
            Action::DeleteCanaryIngress
        ]
    );
    assert!(d.events.is_empty());
}

// ----- rollback ------------------------------------------------------------------------------

/// A sim that just started rolling back from step 2 on failureLimit.
fn rolling_back() -> Sim {
    let mut s = Sim::at_step(2);
    for _ in 0..3 {
        s.after(MIN, Some(&slow()));
    }
    assert_eq!(s.phase(), Phase::RollingBack);
    s
}

#[test]
fn after_a_rollback_the_candidate_keeps_its_pods_for_the_scale_down_delay() {
    let mut s = rolling_back();
    s.spec.rollback_scale_down_delay = "30s".into();
    let d = s.after(3, None);
    assert_eq!(s.phase(), Phase::RolledBack);
    assert!(has_event(&d, "RolledBack"));
    assert!(
        d.actions.is_empty(),
        "the ingress controller may still route to the candidate: {:?}",
        d.actions
    );
    assert!(d.requeue_after <= Duration::from_secs(30));
    let d = s.after(29, None);
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert!(
        d.requeue_after <= Duration::from_secs(1),
        "{:?}",
        d.requeue_after
    );
    let d = s.after(1, None);
    assert_eq!(d.actions, [Action::ScaleCandidate(0)]);
    assert_eq!(s.phase(), Phase::RolledBack);
    let d = s.after(60, None);
    assert!(d.actions.is_empty(), "scaled down once: {:?}", d.actions);
}

#[test]
fn a_clock_behind_the_rollback_record_waits_the_whole_scale_down_delay() {
    let mut s = rolling_back();
    s.spec.rollback_scale_down_delay = "30s".into();
    s.after(3, None);
    assert_eq!(s.phase(), Phase::RolledBack);
    let d = s.after(-120, None);
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert!(d.requeue_after <= Duration::from_secs(30));
}

#[test]
fn rollback_completes_with_measured_times() {
    let mut s = rolling_back();
    let rb = s.status.rollback.clone().unwrap();
    let d = s.after(3, None);
    assert_eq!(s.phase(), Phase::RolledBack);
    assert!(has_event(&d, "RolledBack"));
    assert_eq!(d.actions, [Action::ScaleCandidate(0)]);
    let done = s.status.rollback.clone().unwrap();
    assert_eq!(done.completed_at, Some(s.now));
    assert_eq!(done.seconds, Some(3.0));
    // first failure was two analyses (2 minutes) before the rollback started
    assert_eq!(
        done.first_failure_at,
        Some(rb.started_at - chrono::Duration::seconds(120))
    );
    assert_eq!(done.seconds_since_first_failure, Some(123.0));
    assert!(s
        .status
        .message
        .as_ref()
        .unwrap()
        .starts_with("rolled back in 3.0s (123.0s after the first failing check; baseline 3 replicas ready after 0.0s)"));
    assert_eq!(s.status.current_weight, 0);
    assert_eq!(s.obs.canary_weight, None);
    assert_eq!(s.obs.primary_backend, PrimaryBackend::Baseline);
}

#[test]
fn rollback_waits_for_the_baseline_to_be_back_and_ready() {
    let mut s = rolling_back();
    // Someone had scaled the baseline down to 1 during the canary.
    s.obs.baseline = Some(dep(1, 1));
    s.pods_ready = false;
    let d = s.after(2, None);
    assert_eq!(d.actions, [Action::ScaleBaseline(3)]);
    s.obs.baseline.as_mut().unwrap().ready_replicas = 2;
    let d = s.after(2, None);
    assert!(d.actions.is_empty());
    assert_eq!(s.phase(), Phase::RollingBack);
    assert!(s
        .status
        .message
        .as_ref()
        .unwrap()
        .contains("baseline 2/3 ready"));
    s.obs.baseline.as_mut().unwrap().ready_replicas = 3;
    s.after(2, None);
    assert_eq!(s.phase(), Phase::RolledBack);
}

#[test]
fn baseline_replicas_override_wins_over_the_recorded_count() {
    let mut s = rolling_back();
    s.spec.baseline.replicas = Some(5);
    let d = s.after(2, None);
    assert_eq!(d.actions, [Action::ScaleBaseline(5)]);
}

#[test]
fn rollback_past_its_deadline_keeps_trying_and_says_so_once() {
    let mut s = rolling_back();
    s.pods_ready = false;
    s.obs.baseline = Some(dep(3, 0)); // baseline pods gone
    s.after(5 * MIN - 3, None);
    assert!(!s
        .status
        .conditions
        .iter()
        .any(|c| c.type_ == COND_ROLLBACK_DEADLINE));
    let d = s.after(5, None);
    assert!(has_event(&d, "RollbackDeadlineExceeded"));
    let c = s
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == COND_ROLLBACK_DEADLINE)
        .unwrap()
        .clone();
    assert_eq!(c.status, "True");
    assert!(c.message.contains("baseline 0/3 ready"), "{}", c.message);
    let d = s.after(2, None);
    assert!(
        !has_event(&d, "RollbackDeadlineExceeded"),
        "the event is not repeated"
    );
    assert_eq!(s.phase(), Phase::RollingBack);
    assert_eq!(d.requeue_after, Duration::from_secs(2));
    s.obs.baseline = Some(dep(3, 3));
    s.after(2, None);
    assert_eq!(s.phase(), Phase::RolledBack);
    let rb = s.status.rollback.unwrap();
    assert!(rb.seconds.unwrap() > 300.0);
}

#[test]
fn rollback_from_promoted_scales_baseline_before_switching() {
    let mut s = Sim::at_step(3);
    s.spec.promotion.decommission_after = Some("1m".into());
    while s.phase() != Phase::Decommissioned {
        s.after(30, Some(&healthy()));
    }
    s.after(5, None);
    assert_eq!(s.obs.baseline.as_ref().unwrap().ready_replicas, 0);
    s.pods_ready = false;
    s.obs.command = Some("abort".into());
    let d = s.after(1, None);
    assert_eq!(s.phase(), Phase::RollingBack);
    assert_eq!(
        s.status.rollback.as_ref().unwrap().from_phase,
        Phase::Decommissioned
    );
    assert!(d.actions.contains(&Action::ScaleBaseline(3)));
    assert!(
        !d.actions
            .contains(&Action::PointPrimaryIngressAt(Backend::Baseline)),
        "never point the primary at a baseline without ready pods"
    );
    s.obs.baseline.as_mut().unwrap().ready_replicas = 1;
    let d = s.after(2, None);
    assert!(
        !d.actions
            .contains(&Action::PointPrimaryIngressAt(Backend::Baseline)),
        "one ready replica of three would take all the traffic: wait for the rest"
    );
    assert_eq!(s.phase(), Phase::RollingBack);
    s.pods_ready = true;
    let d = s.after(2, None);
    assert_eq!(
        d.actions,
        [Action::PointPrimaryIngressAt(Backend::Baseline)]
    );
    let rb = s.status.rollback.clone().unwrap();
    assert_eq!(
        rb.baseline_ready_seconds,
        Some(4.0),
        "2 s + 2 s after the abort"
    );
    s.after(2, None);
    assert_eq!(s.phase(), Phase::RolledBack);
    assert_eq!(
        s.status
            .rollback
            .as_ref()
            .unwrap()
            .seconds_since_first_failure,
        None
    );
}

#[test]
fn rolled_back_stays_put_and_keeps_traffic_off_the_candidate() {
    let mut s = rolling_back();
    s.after(3, None);
    let d = s.after(MIN, Some(&healthy()));
    assert!(d.actions.is_empty() && d.events.is_empty());
    assert_eq!(s.phase(), Phase::RolledBack);
    s.obs.canary_weight = Some(20);
    let d = s.after(MIN, None);
    assert_eq!(
        d.actions,
        [Action::SetCanaryWeight(0), Action::DeleteCanaryIngress]
    );
}

// ----- candidate changes ---------------------------------------------------------------------

#[test]
fn image_change_mid_rollout_restarts_from_step_zero_with_traffic_off_first() {
    let mut s = Sim::at_step(2);
    assert_eq!(s.obs.canary_weight, Some(50));
    s.spec.candidate.image = "candle:1.0.1".into();
    s.pods_ready = false;
    let d = s.after(1, None);
    assert_eq!(s.phase(), Phase::Deploying);
    assert_eq!(
        d.actions,
        [
            Action::SetCanaryWeight(0),
            Action::EnsureCandidate {
                replicas: 2,
                hash: pod_hash(&s.spec.candidate)
            }
        ],
        "weight 0 before the redeploy"
    );
    assert!(has_event(&d, "CandidateChanged"));
    assert_eq!(s.status.current_step, 0);
    assert_eq!(s.status.current_weight, 0);
    assert_eq!(s.status.observed_image.as_deref(), Some("candle:1.0.1"));
    assert_eq!(s.status.candidate_hash, Some(pod_hash(&s.spec.candidate)));
    assert!(s.status.last_analysis.is_none());
    s.pods_ready = true;
    let d = s.after(5, None);
    assert_eq!(d.actions, [Action::SetCanaryWeight(1)]);
    assert_eq!(
        s.weights,
        [1, 10, 50, 0, 1],
        "only a restart lowers the weight"
    );
}

#[test]
fn any_pod_field_restarts_but_replica_counts_do_not() {
    let base = spec();
    let restart = |f: &dyn Fn(&mut EmbeddingRolloutSpec)| {
        let mut s = Sim::at_step(1);
        f(&mut s.spec);
        s.after(1, None);
        s.phase() == Phase::Deploying
    };
    assert!(restart(
        &|s| s.candidate.args = vec!["--chaos-latency-ms=40".into()]
    ));
    assert!(restart(&|s| s.candidate.models = Some("models: []".into())));
    assert!(restart(&|s| s.candidate.port = 9090));
    assert!(restart(&|s| s.candidate.env =
        vec![k8s_openapi::api::core::v1::EnvVar {
            name: "RUST_LOG".into(),
            value: Some("debug".into()),
            value_from: None,
        }]));
    // The gates query the metricsService label the pods export (EMBEDDER_SERVICE_NAME): a new
    // value must reach new pods and restart the analysis, not query a label nobody exports.
    assert!(restart(
        &|s| s.candidate.metrics_service = "candle-int8".into()
    ));
    assert!(restart(&|s| s.candidate.template = Some(
        serde_json::from_value(
            serde_json::json!({"spec": {"imagePullSecrets": [{"name": "ghcr"}]}})
        )
        .unwrap()
    )));
    assert!(!restart(&|s| s.candidate.replicas = 3));
    assert!(!restart(&|s| s.candidate.full_replicas = Some(8)));
    // A models file's content reaches the pod through its ConfigMap, not the pod template.
    let with_models = |m: &str| {
        let mut c = spec().candidate;
        c.models = Some(m.into());
        pod_hash(&c)
    };
    assert_ne!(
        with_models("models:\n  - {name: m, path: /models/m}\n"),
        with_models("models:\n  - {name: m, path: /models/m, quantization: int8}\n"),
        "a models-only change redeploys"
    );
    assert!(!restart(&|s| s.analysis.gates.max_p95_ms = 30.0));
    assert_eq!(
        pod_hash(&base.candidate),
        pod_hash(&spec().candidate),
        "hash is stable"
    );
}

#[test]
fn replica_change_mid_step_rescales_without_restart() {
    let mut s = Sim::at_step(1);
    s.spec.candidate.replicas = 3;
    let d = s.after(1, None);
    assert_eq!(
        d.actions,
        [Action::EnsureCandidate {
            replicas: 3,
            hash: pod_hash(&s.spec.candidate)
        }]
    );
    assert_eq!(s.status.current_step, 1);
}

#[test]
fn image_change_while_deploying_redeploys_at_once() {
    let mut s = Sim::new(spec());
    s.pods_ready = false;
    s.tick(None);
    s.spec.candidate.image = "candle:2".into();
    let d = s.after(5, None);
    assert_eq!(
        d.actions,
        [Action::EnsureCandidate {
            replicas: 2,
            hash: pod_hash(&s.spec.candidate)
        }]
    );
    assert_eq!(s.phase(), Phase::Deploying);
}

#[test]
fn image_change_after_promotion_returns_to_baseline_then_starts_over() {
    let mut s = Sim::at_step(3);
    while s.phase() != Phase::Promoted {
        s.after(30, Some(&healthy()));
    }
    s.spec.candidate.image = "candle:2.0.0".into();
    let d = s.after(1, None);
    assert_eq!(s.phase(), Phase::RollingBack);
    assert!(s
        .status
        .rollback
        .as_ref()
        .unwrap()
        .reason
        .contains("candidate spec changed after cutover"));
    assert!(d.actions.contains(&Action::ScaleBaseline(3)));
    assert!(
        !d.actions
            .contains(&Action::PointPrimaryIngressAt(Backend::Baseline)),
        "the standby replica alone would take all the traffic"
    );
    let d = s.after(3, None);
    assert_eq!(
        d.actions,
        [Action::PointPrimaryIngressAt(Backend::Baseline)],
        "all three ready: traffic moves back"
    );
    let d = s.after(3, None);
    // RolledBack, then at once a new rollout of the new image.
    assert_eq!(s.phase(), Phase::Deploying, "{:?}", s.status.message);
    assert!(has_event(&d, "RolledBack") && has_event(&d, "CandidateChanged"));
    assert_eq!(
        d.actions,
        [
            Action::ScaleCandidate(0),
            Action::EnsureCandidate {
                replicas: 2,
                hash: pod_hash(&s.spec.candidate)
            }
        ]
    );
    assert_eq!(s.status.observed_image.as_deref(), Some("candle:2.0.0"));
    s.run(30, 3 * 3600, &healthy());
    assert_eq!(s.phase(), Phase::Decommissioned);
}

#[test]
fn new_image_after_failure_starts_a_new_rollout() {
    let mut s = Sim::new(spec());
    s.pods_ready = false;
    s.tick(None);
    s.after(11 * MIN, None);
    assert_eq!(s.phase(), Phase::Failed);
    s.spec.candidate.image = "candle:fixed".into();
    s.pods_ready = true;
    let d = s.after(1, None);
    assert_eq!(s.phase(), Phase::Deploying);
    assert!(has_event(&d, "CandidateChanged"));
}

// ----- manual commands -----------------------------------------------------------------------

/// A status in each phase with a matching cluster observation.
fn in_phase(p: Phase) -> Sim {
    let mut s = match p {
        Phase::Pending => Sim::new(spec()),
        Phase::Deploying => {
            let mut s = Sim::new(spec());
            s.pods_ready = false;
            s.tick(None);
            s
        }
        Phase::Progressing => Sim::at_step(1),
        Phase::Paused => {
            let mut s = Sim::at_step(1);
            s.obs.command = Some("pause".into());
            s.after(1, None);
            s.after(1, None); // the cleared annotation is observed
            s
        }
        Phase::Promoting => {
            let mut s = Sim::at_step(1);
            s.pods_ready = false;
            s.obs.command = Some("promote-full".into());
            s.after(1, None);
            s.after(1, None); // the cleared annotation is observed
            s
        }
        Phase::Promoted | Phase::Decommissioned => {
            let mut s = Sim::at_step(3);
            s.spec.promotion.decommission_after = Some("1m".into());
            while s.phase() != p {
                s.after(30, Some(&healthy()));
            }
            s.after(5, None);
            s
        }
        Phase::RollingBack => {
            let mut s = rolling_back();
            s.pods_ready = false;
            s.obs.baseline = Some(dep(3, 0));
            s.after(1, None);
            s
        }
        Phase::RolledBack => {
            let mut s = rolling_back();
            s.after(3, None);
            s
        }
        Phase::Failed => {
            let mut s = Sim::new(spec());
            s.pods_ready = false;
            s.tick(None);
            s.after(11 * MIN, None);
            s
        }
    };
    s.log.clear();
    assert_eq!(s.phase(), p);
    s
}

#[test]
fn every_command_in_every_phase_is_defined() {
    use Phase::*;
    // (command, phase, phase afterwards, applied?)
    let table: &[(&str, Phase, Phase, bool)] = &[
        ("pause", Pending, Deploying, true),
        ("pause", Deploying, Deploying, true),
        ("pause", Progressing, Paused, true),
        ("pause", Paused, Paused, true),
        ("pause", Promoting, Promoting, false),
        ("pause", Promoted, Promoted, false),
        ("pause", Decommissioned, Decommissioned, false),
        ("pause", RollingBack, RollingBack, false),
        ("pause", RolledBack, RolledBack, false),
        ("pause", Failed, Failed, false),
        ("resume", Pending, Deploying, true),
        ("resume", Deploying, Deploying, true),
        ("resume", Progressing, Progressing, true),
        ("resume", Paused, Progressing, true),
        ("resume", Promoting, Promoting, true),
        ("resume", Promoted, Promoted, true),
        ("resume", Decommissioned, Decommissioned, true),
        ("resume", RollingBack, RollingBack, true),
        ("resume", RolledBack, RolledBack, true),
        ("resume", Failed, Failed, true),
        ("promote", Pending, Deploying, false),
        ("promote", Deploying, Deploying, false),
        ("promote", Progressing, Progressing, true),
        ("promote", Paused, Progressing, true),
        ("promote", Promoting, Promoting, false),
        ("promote", Promoted, Promoted, false),
        ("promote", Decommissioned, Decommissioned, false),
        ("promote", RollingBack, RollingBack, false),
        ("promote", RolledBack, RolledBack, false),
        ("promote", Failed, Failed, false),
        ("promote-full", Pending, Deploying, false),
        ("promote-full", Deploying, Deploying, false),
        ("promote-full", Progressing, Promoting, true),
        ("promote-full", Paused, Promoting, true),
        ("promote-full", Promoting, Promoting, false),
        ("promote-full", Promoted, Promoted, false),
        ("promote-full", Decommissioned, Decommissioned, false),
        ("promote-full", RollingBack, RollingBack, false),
        ("promote-full", RolledBack, RolledBack, false),
        ("promote-full", Failed, Failed, false),
        ("abort", Pending, RolledBack, true),
        // Nothing to undo: the rollback completes in the same reconcile.
        ("abort", Deploying, RolledBack, true),
        ("abort", Progressing, RollingBack, true),
        ("abort", Paused, RollingBack, true),
        ("abort", Promoting, RollingBack, true),
        ("abort", Promoted, RollingBack, true),
        ("abort", Decommissioned, RollingBack, true),
        ("abort", RollingBack, RollingBack, false),
        ("abort", RolledBack, RolledBack, false),
        ("abort", Failed, Failed, false),
        ("retry", Pending, Deploying, false),
        ("retry", Deploying, Deploying, false),
        ("retry", Progressing, Progressing, false),
        ("retry", Paused, Paused, false),
        ("retry", Promoting, Promoting, false),
        ("retry", Promoted, Promoted, false),
        ("retry", Decommissioned, Decommissioned, false),
        ("retry", RollingBack, RollingBack, false),
        ("retry", RolledBack, Deploying, true),
        ("retry", Failed, Deploying, true),
    ];
    assert_eq!(table.len(), 6 * Phase::ALL.len(), "every pair is listed");
    for &(cmd, from, to, applied) in table {
        let mut s = in_phase(from);
        s.pods_ready = false;
        s.obs.command = Some(cmd.into());
        let d = s.after(1, None);
        let ctx = format!("{cmd} in {from}: {:?} / {:?}", d.events, s.status.message);
        assert_eq!(s.phase(), to, "{ctx}");
        assert!(d.actions.contains(&Action::ClearCommand), "{ctx}");
        assert_eq!(s.status.handled_command.as_deref(), Some(cmd), "{ctx}");
        let ignored = has_event(&d, "CommandIgnored");
        assert_eq!(!ignored, applied, "{ctx}");
        // The cleared annotation resets the marker.
        s.after(1, None);
        assert_eq!(s.status.handled_command, None, "{ctx}");
    }
}

#[test]
fn promote_skips_to_the_next_step_without_waiting() {
    let mut s = Sim::at_step(0);
    s.obs.command = Some("promote".into());
    let d = s.after(5, None);
    assert_eq!(s.status.current_step, 1);
    assert_eq!(s.status.current_weight, 10);
    assert!(d.actions.contains(&Action::SetCanaryWeight(10)));
    assert!(d.actions.contains(&Action::ClearCommand));
}

#[test]
fn a_stale_command_is_not_applied_twice() {
    let mut s = Sim::at_step(0);
    s.obs.command = Some("promote".into());
    let d1 = reconcile(&s.spec, &s.status, &s.obs, None, s.now);
    assert_eq!(d1.status.current_step, 1);
    // The clear did not land (or the watch is stale): same annotation, output status fed back.
    let d2 = reconcile(&s.spec, &d1.status, &s.obs, None, s.now);
    assert_eq!(d2.status, d1.status);
    assert_eq!(d2.actions, d1.actions);
    assert!(d2.events.is_empty());
}

#[test]
fn unknown_command_is_reported_and_cleared() {
    let mut s = Sim::at_step(0);
    s.obs.command = Some("yolo".into());
    let d = s.after(1, None);
    assert_eq!(d.actions, [Action::ClearCommand]);
    let e = d
        .events
        .iter()
        .find(|e| e.reason == "UnknownCommand")
        .unwrap();
    assert_eq!(e.type_, EventType::Warning);
    assert!(e.message.contains("\"yolo\""));
    assert_eq!(s.phase(), Phase::Progressing);
}

#[test]
fn spec_paused_holds_the_weight_but_not_the_safety_net() {
    let mut s = Sim::at_step(0);
    s.spec.paused = true;
    let d = s.after(1, None);
    assert_eq!(s.phase(), Phase::Paused);
    assert!(has_event(&d, "Paused"));
    s.run(MIN, 30 * MIN, &healthy());
    assert_eq!(s.status.current_step, 0, "no advance while paused");
    assert!(s
        .status
        .message
        .as_ref()
        .unwrap()
        .contains("by spec.paused"));
    // Analyses keep running, and failures still roll back.
    s.run(MIN, 3 * MIN, &slow());
    assert_eq!(s.phase(), Phase::RollingBack);
}

#[test]
fn resuming_advances_when_the_soak_is_over() {
    let mut s = Sim::at_step(0);
    s.spec.paused = true;
    s.run(MIN, 30 * MIN, &healthy());
    s.spec.paused = false;
    let d = s.after(MIN, Some(&healthy()));
    assert!(has_event(&d, "Resumed"));
    assert_eq!(s.phase(), Phase::Progressing);
    assert_eq!(s.status.current_step, 1);
}

#[test]
fn resume_command_cannot_override_spec_paused() {
    let mut s = Sim::at_step(0);
    s.spec.paused = true;
    s.after(1, None);
    s.obs.command = Some("resume".into());
    let d = s.after(1, None);
    assert_eq!(s.phase(), Phase::Paused);
    let e = d
        .events
        .iter()
        .find(|e| e.reason == "CommandApplied")
        .unwrap();
    assert_eq!(e.type_, EventType::Warning);
    assert!(e.message.contains("spec.paused is still true"));
}

#[test]
fn paused_before_first_traffic_sends_none_until_resumed() {
    let mut sp = spec();
    sp.paused = true;
    let mut s = Sim::new(sp);
    s.tick(None);
    s.after(5, None);
    assert_eq!(s.phase(), Phase::Paused);
    assert_eq!(s.status.current_weight, 0);
    s.run(MIN, 20 * MIN, &healthy());
    assert!(s.weights.is_empty(), "no canary while paused before step 1");
    assert!(
        s.status.last_analysis.is_none(),
        "nothing to analyse without traffic"
    );
    s.spec.paused = false;
    let d = s.after(1, None);
    assert_eq!(s.phase(), Phase::Progressing);
    assert_eq!(d.actions, [Action::SetCanaryWeight(1)]);
}

#[test]
fn retry_after_rollback_starts_a_fresh_rollout() {
    let mut s = in_phase(Phase::RolledBack);
    let history = s.status.history.len();
    s.obs.command = Some("retry".into());
    let d = s.after(1, None);
    assert_eq!(s.phase(), Phase::Deploying);
    assert!(d.actions.contains(&Action::EnsureCandidate {
        replicas: 2,
        hash: pod_hash(&s.spec.candidate)
    }));
    assert_eq!(s.status.rollback, None);
    assert_eq!(s.status.consecutive_failures, 0);
    assert_eq!(s.status.current_step, 0);
    assert_eq!(s.status.history.len(), history, "history survives a retry");
    s.run(30, 3 * 3600, &healthy());
    assert_eq!(s.phase(), Phase::Decommissioned);
}

// ----- clock skew ----------------------------------------------------------------------------

#[test]
fn clock_behind_step_start_holds_without_panicking() {
    let s = Sim::at_step(0);
    let started = s.status.step_started_at.unwrap();
    // Another replica with a clock 2 hours behind takes over.
    let skewed = started - chrono::Duration::hours(2);
    let d = reconcile(&s.spec, &s.status, &s.obs, Some(&healthy()), skewed);
    assert_eq!(d.status.current_step, 0);
    assert_eq!(d.status.phase, Phase::Progressing);
    assert!(
        d.status.last_analysis.is_none(),
        "no analysis from the past"
    );
    assert!(d.status.message.as_ref().unwrap().starts_with("clock skew"));
    assert!(d.actions.is_empty());
    assert!(!analysis_due(&s.spec, &s.status, skewed));
}

#[test]
fn clock_skew_never_fails_a_deploy_or_triggers_a_rollback() {
    let mut s = Sim::new(spec());
    s.pods_ready = false;
    s.tick(None);
    let d = reconcile(
        &s.spec,
        &s.status,
        &s.obs,
        None,
        t0() - chrono::Duration::hours(1),
    );
    assert_eq!(d.status.phase, Phase::Deploying);
    assert!(d.status.message.unwrap().contains("clock skew"));

    let mut s = Sim::at_step(0);
    s.spec.analysis.failure_limit = 100;
    s.after(MIN, Some(&very_slow()));
    let since = s.status.p95_breach_since.unwrap();
    // An analysis stamped later than now (skewed writer) and a clock behind the breach start.
    let mut st = s.status.clone();
    st.last_analysis.as_mut().unwrap().time = since - chrono::Duration::hours(1);
    st.step_started_at = Some(since - chrono::Duration::hours(1));
    let d = reconcile(
        &s.spec,
        &st,
        &s.obs,
        Some(&very_slow()),
        since - chrono::Duration::minutes(10),
    );
    assert_eq!(
        d.status.phase,
        Phase::Progressing,
        "a breach 'from the future' is not sustained"
    );
}

#[test]
fn rollback_seconds_are_never_negative_under_skew() {
    let mut s = rolling_back();
    let started = s.status.rollback.as_ref().unwrap().started_at;
    s.settle();
    let d = reconcile(
        &s.spec,
        &s.status,
        &s.obs,
        None,
        started - chrono::Duration::seconds(30),
    );
    assert_eq!(d.status.phase, Phase::RolledBack);
    assert_eq!(d.status.rollback.unwrap().seconds, Some(0.0));
}

// ----- deletion ------------------------------------------------------------------------------

#[test]
fn deletion_mid_canary_removes_the_canary_then_the_finalizer() {
    let mut s = Sim::at_step(2);
    s.obs.deleting = true;
    let d = s.after(1, None);
    assert_eq!(
        d.actions,
        [Action::SetCanaryWeight(0), Action::DeleteCanaryIngress]
    );
    let d = s.after(1, None);
    assert_eq!(d.actions, [Action::RemoveFinalizer]);
}

#[test]
fn deletion_after_promotion_points_primary_back_to_a_live_baseline() {
    let mut s = in_phase(Phase::Promoted);
    s.obs.deleting = true;
    s.pods_ready = false;
    let d = s.after(1, None);
    assert_eq!(
        d.actions,
        [
            Action::ScaleBaseline(3),
            Action::PointPrimaryIngressAt(Backend::Baseline)
        ]
    );
    let d = s.after(1, None);
    assert_eq!(d.actions, [Action::RemoveFinalizer]);
}

#[test]
fn deletion_after_decommission_waits_for_baseline_pods() {
    let mut s = in_phase(Phase::Decommissioned);
    s.obs.deleting = true;
    s.pods_ready = false;
    let d = s.after(1, None);
    assert_eq!(d.actions, [Action::ScaleBaseline(3)]);
    assert!(!d.actions.contains(&Action::RemoveFinalizer));
    let d = s.after(1, None);
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    s.obs.baseline.as_mut().unwrap().ready_replicas = 1;
    let d = s.after(1, None);
    assert_eq!(
        d.actions,
        [Action::PointPrimaryIngressAt(Backend::Baseline)]
    );
    let d = s.after(1, None);
    assert_eq!(d.actions, [Action::RemoveFinalizer]);
}

#[test]
fn deletion_with_baseline_gone_keeps_the_finalizer_and_explains() {
    let mut s = in_phase(Phase::Promoted);
    s.obs.deleting = true;
    s.obs.baseline = None;
    let d = s.after(1, None);
    assert!(d.actions.is_empty());
    assert!(s
        .status
        .message
        .as_ref()
        .unwrap()
        .contains("waiting for the baseline Deployment akidb-mlx"));
}

// ----- restart safety ------------------------------------------------------------------------

/// Feeding the output status back in with the same observation (and clock) changes nothing:
/// same status, same idempotent actions, no new events. This is what a crash between "apply
/// actions" and "write status" (or a duplicate watch event) looks like.
#[test]
fn output_status_is_a_fixed_point_in_every_phase() {
    for p in Phase::ALL {
        for m in [None, Some(healthy()), Some(slow()), Some(no_data())] {
            for cmd in [
                None,
                Some("pause"),
                Some("promote"),
                Some("abort"),
                Some("retry"),
            ] {
                let mut s = in_phase(p);
                s.now += chrono::Duration::seconds(61);
                s.obs.command = cmd.map(String::from);
                s.settle();
                let d1 = reconcile(&s.spec, &s.status, &s.obs, m.as_ref(), s.now);
                let d2 = reconcile(&s.spec, &d1.status, &s.obs, m.as_ref(), s.now);
                let ctx = format!(
                    "{p} {cmd:?} {:?}",
                    m.as_ref().map(|m| &m.candidate.p95_seconds)
                );
                assert_eq!(d2.status, d1.status, "{ctx}");
                assert!(d2.events.is_empty(), "{ctx}: {:?}", d2.events);
                assert!(
                    d2.actions.iter().all(|a| d1.actions.contains(a)),
                    "{ctx}: {:?} then {:?}",
                    d1.actions,
                    d2.actions
                );
            }
        }
    }
}

/// Once the cluster matches, a reconcile asks for nothing.
#[test]
fn converged_cluster_needs_no_actions() {
    for p in Phase::ALL {
        let mut s = in_phase(p);
        s.pods_ready = true;
        for _ in 0..3 {
            s.after(1, None);
        }
        let before = s.status.phase;
        let d = s.after(1, None);
        if s.status.phase == before && before != Phase::Pending {
            assert!(d.actions.is_empty(), "{p} -> {before}: {:?}", d.actions);
        }
    }
}

/// An operator that restarts from the last written status at any tick ends in the same place.
#[test]
fn restart_from_persisted_status_at_any_tick_reaches_the_same_end() {
    let mut reference = Sim::new(spec());
    reference.tick(None);
    reference.run(30, 3 * 3600, &healthy());
    let n = reference.log.len();
    for crash_at in (0..n).step_by(37) {
        let mut s = Sim::new(spec());
        s.tick(None);
        for _ in 0..crash_at {
            s.after(30, Some(&healthy()));
        }
        // Round-trip the status through JSON, like the API server.
        let json = serde_json::to_string(&s.status).unwrap();
        s.status = serde_json::from_str(&json).unwrap();
        let remaining = 3 * 3600 - 30 * crash_at as i64;
        s.run(30, remaining.max(0), &healthy());
        assert_eq!(s.phase(), reference.phase(), "crash at tick {crash_at}");
    }
}

#[test]
fn weight_never_goes_down_within_a_rollout() {
    let mut s = Sim::new(spec());
    s.tick(None);
    let ms = [
        healthy(),
        no_data(),
        healthy(),
        breaker_open(),
        healthy(),
        prom_down(),
        healthy(),
    ];
    for i in 0..400 {
        s.after(30, Some(&ms[i % ms.len()]));
    }
    let mut last = 0;
    for d in &s.log {
        if d.status.phase == Phase::RollingBack {
            break;
        }
        assert!(d.status.current_weight >= last, "{:?}", d.status);
        last = d.status.current_weight;
    }
    assert!(s.weights.windows(2).all(|w| w[0] < w[1]), "{:?}", s.weights);
}

#[test]
fn invalid_spec_holds_and_reports_once() {
    let mut s = Sim::at_step(1);
    s.spec.steps[1].duration = GoDuration::from("ten minutes");
    let d = s.after(1, Some(&healthy()));
    assert!(d.actions.is_empty());
    assert!(has_event(&d, "InvalidSpec"));
    assert!(s
        .status
        .message
        .as_ref()
        .unwrap()
        .contains("steps[1].duration"));
    assert_eq!(s.phase(), Phase::Progressing);
    let d = s.after(1, Some(&healthy()));
    assert!(d.events.is_empty());
}

#[test]
fn requeue_follows_the_next_interesting_moment() {
    let s = Sim::at_step(0);
    let started = s.status.step_started_at.unwrap();
    let d = reconcile(
        &s.spec,
        &s.status,
        &s.obs,
        None,
        started + chrono::Duration::seconds(20),
    );
    assert_eq!(d.requeue_after, Duration::from_secs(40), "next analysis");
    let mut st = s.status.clone();
    st.phase = Phase::RolledBack;
    let d = reconcile(&s.spec, &st, &s.obs, None, started);
    assert!(d.requeue_after >= Duration::from_secs(1) && d.requeue_after <= MAX_REQUEUE);
}

#[test]
fn observed_generation_is_recorded() {
    let mut o = obs();
    o.generation = Some(7);
    let d = reconcile(&spec(), &Default::default(), &o, None, t0());
    assert_eq!(d.status.observed_generation, Some(7));
    assert!(d
        .status
        .conditions
        .iter()
        .all(|c| c.observed_generation == Some(7)));
}

// ----- randomised runs -----------------------------------------------------------------------

/// xorshift64*: a deterministic generator, so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Random clocks, metrics, pod readiness, commands, pauses and image changes. After every
/// reconcile the safety invariants must hold, and the output must be a fixed point.
#[test]
fn random_runs_keep_the_safety_invariants() {
    let commands = [
        "pause",
        "resume",
        "promote",
        "promote-full",
        "abort",
        "retry",
        "bogus",
    ];
    let metrics = [
        healthy(),
        healthy(),
        healthy(),
        slow(),
        very_slow(),
        erroring(),
        no_data(),
        prom_down(),
    ];
    let mut phases_seen = std::collections::HashSet::new();
    for seed in 1..=100u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut sp = spec();
        for s in &mut sp.steps {
            s.duration = GoDuration::from("3m");
        }
        sp.promotion.decommission_after = Some("10m".into());
        let mut s = Sim::new(sp);
        let mut last_weight = 0u8;
        for tick in 0..300 {
            s.now += chrono::Duration::seconds(1 + rng.below(90) as i64);
            if rng.chance(10) {
                s.pods_ready = !s.pods_ready;
            }
            if rng.chance(3) {
                s.obs.command = Some(commands[rng.below(commands.len() as u64) as usize].into());
            }
            if rng.chance(2) {
                s.spec.paused = !s.spec.paused;
            }
            if rng.chance(1) {
                s.spec.candidate.image = format!("candle:{tick}");
            }
            let m = if rng.chance(15) {
                None
            } else {
                Some(metrics[rng.below(metrics.len() as u64) as usize].clone())
            };
            s.settle();
            let before = s.obs.clone();
            let d = reconcile(&s.spec, &s.status, &s.obs, m.as_ref(), s.now);
            let ctx = format!(
                "seed {seed} tick {tick}: {} -> {} {:?}",
                s.status.phase, d.status.phase, d.actions
            );
            phases_seen.insert(s.status.phase);
            phases_seen.insert(d.status.phase);

            // Fixed point: the same inputs again change nothing and say nothing new.
            let again = reconcile(&s.spec, &d.status, &before, m.as_ref(), s.now);
            assert_eq!(again.status, d.status, "{ctx}");
            assert!(again.events.is_empty(), "{ctx}: {:?}", again.events);
            assert!(
                again.actions.iter().all(|a| d.actions.contains(a)),
                "{ctx}: {:?}",
                again.actions
            );

            let full = s.spec.candidate.full_replicas();
            let hash = d.status.candidate_hash.clone();
            let cand_full_ready = before.candidate.as_ref().is_some_and(|c| {
                c.candidate_hash == hash && c.ready_replicas >= full && c.spec_replicas == full
            });
            for a in &d.actions {
                match a {
                    Action::SetCanaryWeight(w) if *w > 0 => {
                        assert!(
                            *w >= last_weight,
                            "{ctx}: weight went down {last_weight} -> {w}"
                        );
                        if *w == 100 {
                            assert!(
                                cand_full_ready,
                                "{ctx}: 100 % before fullReplicas were ready"
                            );
                        }
                        last_weight = *w;
                    }
                    Action::SetCanaryWeight(_) | Action::DeleteCanaryIngress => last_weight = 0,
                    Action::PointPrimaryIngressAt(Backend::Candidate) => {
                        assert!(
                            cand_full_ready,
                            "{ctx}: primary to a candidate without full replicas"
                        )
                    }
                    Action::PointPrimaryIngressAt(Backend::Baseline) => assert!(
                        before
                            .baseline
                            .as_ref()
                            .is_some_and(|b| b.ready_replicas >= 1),
                        "{ctx}: primary to a baseline without ready pods"
                    ),
                    _ => {}
                }
            }
            if d.status.phase == Phase::RolledBack && s.status.phase != Phase::RolledBack {
                assert_eq!(before.canary_weight, None, "{ctx}");
                assert_eq!(before.primary_backend, PrimaryBackend::Baseline, "{ctx}");
            }
            if d.status.phase == Phase::Promoted && s.status.phase == Phase::Promoting {
                assert_eq!(before.primary_backend, PrimaryBackend::Candidate, "{ctx}");
                assert_eq!(before.canary_weight, None, "{ctx}");
            }
            if matches!(d.status.phase, Phase::Deploying | Phase::RolledBack) {
                assert_eq!(d.status.current_weight, 0, "{ctx}");
            }
            assert!(d.status.history.len() <= crate::crd::HISTORY_LIMIT);
            assert!(d.requeue_after >= Duration::from_secs(1) && d.requeue_after <= MAX_REQUEUE);

            s.apply(&d.actions);
            s.status = d.status;
        }
        // Whatever state the walk ended in, deletion converges to "primary on the live
        // baseline, no canary" before the finalizer goes.
        s.obs.deleting = true;
        s.pods_ready = true;
        let mut released = false;
        for _ in 0..5 {
            let d = s.after(2, None);
            if d.actions.contains(&Action::RemoveFinalizer) {
                released = true;
                break;
            }
        }
        assert!(
            released,
            "seed {seed}: finalizer never released: {:?}",
            s.status.message
        );
        assert_eq!(s.obs.canary_weight, None, "seed {seed}");
        assert_eq!(
            s.obs.primary_backend,
            PrimaryBackend::Baseline,
            "seed {seed}"
        );
        assert!(
            s.obs.baseline.as_ref().unwrap().ready_replicas >= 1,
            "seed {seed}"
        );
    }
    // The random walk reaches every phase (otherwise the invariants above prove little).
    for p in Phase::ALL {
        assert!(phases_seen.contains(&p), "{p} never reached");
    }
}

#[test]
fn a_rollout_started_with_the_legacy_hash_continues_at_its_step() {
    for earlier in crate::workload::earlier_pod_hashes(&Sim::at_step(2).spec.candidate) {
        continues_from(earlier);
    }
}

/// A rollout whose status and Deployment carry `legacy`, an earlier operator's hash of the same
/// spec, continues at its step.
fn continues_from(legacy: String) {
    let mut s = Sim::at_step(2);
    s.status.candidate_hash = Some(legacy.clone());
    if let Some(c) = s.obs.candidate.as_mut() {
        c.candidate_hash = Some(legacy);
    }
    let d = s.after(1, None);
    assert_eq!(s.phase(), Phase::Progressing, "{:?}", d.status.message);
    assert_eq!(s.status.current_step, 2);
    assert_eq!(s.status.candidate_hash, Some(pod_hash(&s.spec.candidate)));
    assert!(!has_event(&d, "CandidateChanged"));
    // The Deployment is re-annotated (its pods roll once), at the same replicas.
    assert!(d.actions.iter().any(|a| matches!(a,
        Action::EnsureCandidate { replicas: 2, hash } if *hash == pod_hash(&s.spec.candidate))));
    assert!(!d.actions.contains(&Action::SetCanaryWeight(0)));
}

#[test]
fn a_baseline_that_stays_short_gets_the_traffic_back_at_half_the_rollback_deadline() {
    let mut s = Sim::at_step(3);
    while s.phase() != Phase::Promoted {
        s.after(30, Some(&healthy()));
    }
    s.pods_ready = false;
    s.obs.command = Some("abort".into());
    s.after(1, None);
    s.obs.baseline.as_mut().unwrap().ready_replicas = 1;
    // rollbackDeadline 5m: waits up to 150 s for all three replicas.
    let d = s.after(140, None);
    assert!(!d
        .actions
        .contains(&Action::PointPrimaryIngressAt(Backend::Baseline)));
    let d = s.after(10, None);
    assert!(
        d.actions
            .contains(&Action::PointPrimaryIngressAt(Backend::Baseline)),
        "a failing candidate is worse than a baseline still scaling up"
    );
    assert_eq!(s.status.rollback.as_ref().unwrap().baseline_ready_at, None);
}

fn autoscaled_spec() -> EmbeddingRolloutSpec {
    let mut sp = spec();
    sp.candidate.autoscaling =
        Some(serde_json::from_value(serde_json::json!({"maxReplicas": 10})).unwrap());
    sp
}

#[test]
fn an_autoscaled_candidate_gets_each_steps_replicas_as_the_minimum_and_is_never_scaled_down() {
    let mut s = Sim::new(autoscaled_spec());
    let d = s.tick(None);
    assert!(d
        .actions
        .contains(&Action::EnsureCandidateAutoscaler { min_replicas: 2 }));
    assert_eq!(
        s.obs
            .candidate_autoscaler
            .as_ref()
            .map(|h| (h.min_replicas, h.max_replicas)),
        Some((2, 10))
    );
    while s.phase() != Phase::Progressing {
        s.after(5, None);
    }
    // The autoscaler scales the candidate to 7 under load: the operator leaves it there.
    if let Some(c) = s.obs.candidate.as_mut() {
        c.spec_replicas = 7;
    }
    let d = s.after(MIN, Some(&healthy()));
    assert!(
        !d.actions.iter().any(|a| matches!(
            a,
            Action::ScaleCandidate(_) | Action::EnsureCandidate { .. }
        )),
        "{:?}",
        d.actions
    );
    // At 100 % the minimum becomes fullReplicas (4): still below 7, nothing to scale.
    for _ in 0..120 {
        if s.phase() == Phase::Promoted {
            break;
        }
        s.after(MIN, Some(&healthy()));
    }
    assert_eq!(
        s.obs.candidate_autoscaler.as_ref().map(|h| h.min_replicas),
        Some(4)
    );
    assert_eq!(s.obs.candidate.as_ref().unwrap().spec_replicas, 7);
    assert!(
        matches!(s.phase(), Phase::Promoted | Phase::Decommissioned),
        "{:?} {:?}",
        s.phase(),
        s.status.message
    );
    assert!(
        s.obs.candidate_autoscaler.is_some(),
        "kept through promotion"
    );
}

#[test]
fn an_autoscaled_candidate_below_the_minimum_is_raised_to_it() {
    let mut s = Sim::new(autoscaled_spec());
    while s.phase() != Phase::Progressing {
        s.after(5, None);
    }
    s.run(MIN, 31 * MIN, &healthy());
    assert_eq!(s.status.current_step, 3, "{:?}", s.status.message);
    // fullReplicas 4 at 100 %: from 2 it is raised to 4, not left to the autoscaler's next sync.
    assert!(s.obs.candidate.as_ref().unwrap().spec_replicas >= 4);
}

#[test]
fn rolling_back_an_autoscaled_candidate_removes_its_autoscaler_before_scaling_to_zero() {
    let mut s = Sim::new(autoscaled_spec());
    while s.phase() != Phase::Progressing {
        s.after(5, None);
    }
    s.after(MIN, None);
    s.obs.command = Some("abort".into());
    s.after(1, None);
    let d = s.after(3, None);
    assert_eq!(s.phase(), Phase::RolledBack, "{:?}", s.status.message);
    assert_eq!(
        d.actions,
        [Action::DeleteCandidateAutoscaler, Action::ScaleCandidate(0)],
        "the autoscaler would scale a candidate at 0 right back up"
    );
}

fn baseline_hpa() -> AutoscalerObs {
    AutoscalerObs {
        name: "akidb-mlx".into(),
        min_replicas: 4,
        max_replicas: 12,
    }
}

#[test]
fn a_baseline_with_its_own_autoscaler_is_never_scaled_against_it() {
    let mut s = Sim::at_step(3);
    s.obs.baseline_autoscaler = Some(baseline_hpa());
    s.spec.promotion.decommission_after = Some("1m".into());
    let mut scaled = false;
    for _ in 0..60 {
        let d = s.after(30, Some(&healthy()));
        scaled |= d
            .actions
            .iter()
            .any(|a| matches!(a, Action::ScaleBaseline(_)));
    }
    assert_eq!(
        s.phase(),
        Phase::Promoted,
        "never Decommissioned against the autoscaler"
    );
    assert!(!scaled, "no standby, no decommission scaling");
    assert!(s
        .status
        .message
        .as_deref()
        .unwrap()
        .contains("HorizontalPodAutoscaler akidb-mlx"));
    // Its autoscaler scaled it down to 1 with no traffic (a hand-set min of 1, say): a
    // rollback scales it up to the larger of its count at start (3) and the HPA min (4) first.
    s.obs.baseline.as_mut().unwrap().spec_replicas = 1;
    s.obs.baseline.as_mut().unwrap().ready_replicas = 1;
    s.obs.command = Some("abort".into());
    let d = s.after(1, None);
    assert!(
        d.actions.contains(&Action::ScaleBaseline(4)),
        "{:?}",
        d.actions
    );
    let d = s.after(2, None);
    assert!(d
        .actions
        .contains(&Action::PointPrimaryIngressAt(Backend::Baseline)));
    // The autoscaler then goes to 6 under the load: the operator does not take it back to 4.
    s.obs.baseline.as_mut().unwrap().spec_replicas = 6;
    s.after(2, None);
    assert_eq!(s.phase(), Phase::RolledBack, "{:?}", s.status.message);
    let d = s.after(MIN, None);
    assert!(!d
        .actions
        .iter()
        .any(|a| matches!(a, Action::ScaleBaseline(_))));
}

#[test]
fn the_step_reads_as_people_count_it() {
    let mut s = Sim::new(spec());
    assert_eq!(s.status.step, None);
    s.tick(None);
    assert_eq!(s.status.step.as_deref(), Some("1/4"));
    let mut s = Sim::at_step(3);
    s.after(1, None);
    assert_eq!(
        s.status.step.as_deref(),
        Some("4/4"),
        "the last of four steps"
    );
}

#[test]
fn a_command_is_recorded_with_who_wrote_it_and_what_it_did() {
    let mut s = Sim::at_step(1);
    s.obs.command = Some("abort".into());
    s.obs.command_issuer = CommandIssuer {
        by: Some("alice@example.com".into()),
        at: Some("2026-01-01T00:10:00Z".into()),
        manager: Some("kubectl-embeddingrollout".into()),
    };
    let d = s.after(1, None);
    assert_eq!(s.phase(), Phase::RollingBack);
    let rec = s.status.commands.last().expect("recorded");
    assert_eq!(rec.command, "abort");
    assert_eq!(rec.by.as_deref(), Some("alice@example.com"));
    assert_eq!(rec.manager.as_deref(), Some("kubectl-embeddingrollout"));
    assert_eq!(rec.requested_at.as_deref(), Some("2026-01-01T00:10:00Z"));
    assert_eq!(rec.phase, Phase::Progressing);
    assert_eq!(rec.result, "Applied");
    assert_eq!(
        s.status.rollback.as_ref().unwrap().reason,
        "aborted by user (by alice@example.com via kubectl-embeddingrollout)"
    );
    let started = d
        .events
        .iter()
        .find(|e| e.reason == "RollbackStarted")
        .unwrap();
    assert_eq!(
        started.message.matches("alice@example.com").count(),
        1,
        "said once: {}",
        started.message
    );
    // An ignored command is recorded as such, with its issuer.
    s.obs.command_issuer = CommandIssuer {
        by: None,
        at: None,
        manager: Some("kubectl-annotate".into()),
    };
    s.obs.command = Some("retry".into());
    let d = s.after(1, None);
    let rec = s.status.commands.last().unwrap();
    assert_eq!(
        (rec.command.as_str(), rec.result.as_str()),
        ("retry", "Ignored")
    );
    assert!(d
        .events
        .iter()
        .any(|e| e.reason == "CommandIgnored" && e.message.ends_with("(via kubectl-annotate)")));
    // Bounded.
    for i in 0..15 {
        s.obs.command = Some(format!("nonsense-{i}"));
        s.after(1, None);
    }
    assert_eq!(s.status.commands.len(), crate::crd::COMMANDS_LIMIT);
    assert_eq!(s.status.commands.last().unwrap().result, "Unknown");
}

#[test]
fn a_step_with_approval_waits_for_the_promote_command_after_passing() {
    let mut s = Sim::at_step(1);
    s.spec.steps[1].approval = true;
    let mut asked = 0;
    for _ in 0..30 {
        let d = s.after(MIN, Some(&healthy()));
        asked += d
            .events
            .iter()
            .filter(|e| e.reason == "ApprovalNeeded")
            .count();
    }
    assert_eq!(s.status.current_step, 1, "held at step 2 for approval");
    assert_eq!(s.phase(), Phase::Progressing);
    assert_eq!(asked, 1, "asked once, not at every analysis");
    assert!(s
        .status
        .message
        .as_deref()
        .unwrap()
        .starts_with("step 2/4 passed; waiting for approval"));
    // The gates keep running while it waits: a regression still rolls back.
    let mut failing = s.clone();
    for _ in 0..3 {
        failing.after(MIN, Some(&slow()));
    }
    assert_eq!(failing.phase(), Phase::RollingBack);
    // The go: promote moves on, and says who.
    s.obs.command = Some("promote".into());
    s.obs.command_issuer = CommandIssuer {
        by: Some("release-manager".into()),
        at: None,
        manager: Some("kubectl-embeddingrollout".into()),
    };
    s.after(1, None);
    assert_eq!(s.status.current_step, 2);
    assert_eq!(
        s.status.commands.last().unwrap().by.as_deref(),
        Some("release-manager")
    );
    // The step's summary says who approved it.
    let approved = &s.status.step_summaries[1];
    assert_eq!(
        (
            approved.step,
            approved.outcome.as_deref(),
            approved.approved_by.as_deref()
        ),
        (1, Some("Advanced"), Some("release-manager"))
    );
    assert_eq!(s.status.step_summaries[0].approved_by, None);
}

// ----- step summaries -------------------------------------------------------------------------

#[test]
fn every_step_is_summed_up_with_its_evidence_and_how_it_ended() {
    let mut s = Sim::new(spec());
    s.tick(None);
    s.run(30, 3 * 3600, &healthy());
    assert_eq!(s.phase(), Phase::Decommissioned);
    let sums = &s.status.step_summaries;
    let shape: Vec<(u32, u8, Option<&str>)> = sums
        .iter()
        .map(|x| (x.step, x.weight, x.outcome.as_deref()))
        .collect();
    assert_eq!(
        shape,
        [
            (0, 1, Some("Advanced")),
            (1, 10, Some("Advanced")),
            (2, 50, Some("Advanced")),
            (3, 100, Some("Promoted"))
        ]
    );
    for x in sums {
        let d = x.duration_seconds.unwrap();
        assert!((600..=700).contains(&d), "step {} lasted {d}s", x.step);
        assert_eq!(
            x.ended_at.unwrap() - x.started_at,
            chrono::Duration::seconds(d as i64)
        );
        assert!(
            x.analyses >= 9 && x.passed + x.failed + x.inconclusive == x.analyses,
            "{x:?}"
        );
        assert_eq!(x.failed, 0);
        assert!(x.candidate_requests.unwrap() > 0);
        assert!(x.max_candidate_p95_ms.unwrap() > 0.0);
        assert_eq!(x.min_parity_cosine, None, "no parity gate");
    }
    // The history holds 10 analyses; the summaries count all of them.
    let total: u32 = sums.iter().map(|x| x.analyses).sum();
    assert!(total as usize > HISTORY_LIMIT, "{total}");
}

#[test]
fn a_rolled_back_step_says_so_and_a_new_candidate_starts_a_new_report() {
    let mut s = Sim::at_step(1);
    for _ in 0..3 {
        s.after(MIN, Some(&slow()));
    }
    assert_eq!(s.phase(), Phase::RollingBack);
    let last = s.status.step_summaries.last().unwrap();
    assert_eq!(
        (last.step, last.outcome.as_deref()),
        (1, Some("RolledBack"))
    );
    assert_eq!(last.failed, 3);
    assert!(last.max_candidate_p95_ms.unwrap() > 35.0);
    // A new image: a new rollout, a new report.
    s.spec.candidate.image = "candle:1.0.1".into();
    s.after(5, None);
    s.after(5, None);
    s.after(5, None);
    assert!(
        s.status
            .step_summaries
            .iter()
            .all(|x| x.step == 0 && x.outcome.is_none()),
        "{:?}",
        s.status.step_summaries
    );
}

// ----- embedding parity ------------------------------------------------------------------------

fn parity_spec(every: u32) -> EmbeddingRolloutSpec {
    let mut s = spec();
    let mut p: crate::crd::ParitySpec = serde_json::from_value(serde_json::json!({})).unwrap();
    p.every = every;
    s.analysis.gates.parity = Some(p);
    s
}

/// A healthy snapshot whose parity probe found `cosine` for its one text (None: not probed).
fn with_parity(cosine: Option<f32>) -> MetricsSnapshot {
    let mut m = healthy();
    m.parity = cosine.map(|c| parity::ParityProbe {
        texts: vec!["long text".into()],
        baseline: Ok(parity::Answer {
            model: "m".into(),
            embeddings: vec![vec![1.0, 0.0]],
        }),
        candidate: Ok(parity::Answer {
            model: "m".into(),
            embeddings: vec![vec![c, (1.0 - c * c).max(0.0).sqrt()]],
        }),
        notes: vec![],
    });
    m
}

fn parity_gate_of(s: &Sim) -> crate::crd::GateResult {
    let a = s.status.last_analysis.as_ref().unwrap();
    a.gates.iter().find(|g| g.gate == "parity").unwrap().clone()
}

#[test]
fn parity_below_min_cosine_rolls_back_after_failure_limit_with_the_parity_reason() {
    let mut s = Sim::at_step(0);
    s.spec = parity_spec(1);
    for _ in 0..3 {
        assert_eq!(s.phase(), Phase::Progressing);
        s.after(MIN, Some(&with_parity(Some(0.95))));
    }
    assert_eq!(s.phase(), Phase::RollingBack);
    let rb = s.status.rollback.clone().unwrap();
    assert!(
        rb.reason.contains("embeddings differ from the baseline's")
            && rb.reason.contains("min cosine 0.95 over 1 texts"),
        "{}",
        rb.reason
    );
    let g = parity_gate_of(&s);
    assert_eq!(
        (g.verdict, g.value.map(|v| (v * 100.0).round())),
        (Verdict::Fail, Some(95.0))
    );
}

#[test]
fn parity_at_the_threshold_lets_the_rollout_advance() {
    let mut s = Sim::at_step(0);
    s.spec = parity_spec(1);
    s.soak_until_next_step(30, |_| with_parity(Some(0.9995)));
    assert_eq!(parity_gate_of(&s).verdict, Verdict::Pass);
}

#[test]
fn a_step_without_a_parity_probe_cannot_pass() {
    let mut s = Sim::at_step(0);
    s.spec = parity_spec(1);
    // The edge did not probe (e.g. a bug, or the probe is not due): never a pass.
    for _ in 0..15 {
        s.after(MIN, Some(&with_parity(None)));
    }
    assert_eq!(s.status.current_step, 0);
    let g = parity_gate_of(&s);
    assert_eq!(g.verdict, Verdict::Inconclusive);
    assert_eq!(g.evidence, "no parity probe in this step yet");
}

#[test]
fn looks_between_probes_carry_the_steps_latest_finding() {
    let mut s = Sim::at_step(0);
    s.spec = parity_spec(3);
    // Look 1 probes and fails; looks 2 and 3 carry the failure: three failures in a row.
    assert!(parity_due(&s.spec, &s.status));
    s.after(MIN, Some(&with_parity(Some(0.5))));
    assert!(!parity_due(&s.spec, &s.status));
    s.after(MIN, Some(&with_parity(None)));
    assert_eq!(parity_gate_of(&s).verdict, Verdict::Fail);
    assert!(s.status.last_analysis.as_ref().unwrap().reasons[0]
        .starts_with("embedding parity Fail at the step's latest probe"));
    s.after(MIN, Some(&with_parity(None)));
    assert_eq!(s.phase(), Phase::RollingBack);
}

#[test]
fn a_new_step_does_not_inherit_the_last_steps_parity() {
    let mut s = Sim::at_step(0);
    s.spec = parity_spec(1000);
    // Probed once, at the step's first look; carried after.
    s.soak_until_next_step(30, |look| with_parity((look == 1).then_some(1.0)));
    // The next step's first look is due to probe again.
    assert!(parity_due(&s.spec, &s.status));
    s.after(MIN, Some(&with_parity(None)));
    assert_eq!(
        parity_gate_of(&s).evidence,
        "no parity probe in this step yet"
    );
}

// ----- traffic providers -----------------------------------------------------------------------

fn header_first_spec() -> EmbeddingRolloutSpec {
    let mut sp = spec();
    sp.traffic = Some(crate::crd::TrafficSpec {
        canary_header: Some(crate::crd::CanaryHeader {
            name: "X-Canary".into(),
            value: "always".into(),
        }),
        ..Default::default()
    });
    sp.steps.insert(
        0,
        Step {
            weight: 0,
            duration: "10m".into(),
            approval: false,
        },
    );
    sp
}

#[test]
fn a_header_only_first_step_is_judged_at_weight_0_before_any_weight() {
    let mut s = Sim::new(header_first_spec());
    s.run(30, 3 * 3600, &healthy());
    assert_eq!(s.phase(), Phase::Decommissioned, "{:?}", s.status.message);
    assert_eq!(
        s.weights,
        [0, 1, 10, 50, 100],
        "the canary exists at weight 0 first (header traffic only)"
    );
    let started: Vec<_> = s
        .log
        .iter()
        .flat_map(|d| d.events.iter())
        .filter(|e| e.reason == "StepStarted")
        .map(|e| e.message.clone())
        .collect();
    assert_eq!(started.len(), 5, "{started:?}");
    assert!(started[0].starts_with("step 1/5: 0%"), "{started:?}");
}

#[test]
fn a_header_only_step_that_fails_rolls_back() {
    let mut s = Sim::new(header_first_spec());
    s.run(30, 3600, &erroring());
    assert_eq!(s.phase(), Phase::RolledBack, "{:?}", s.status.message);
    assert_eq!(s.weights.iter().max(), Some(&0), "no weighted traffic ever");
    assert_eq!(s.obs.canary_weight, None);
    assert_eq!(s.obs.primary_backend, PrimaryBackend::Baseline);
}

#[test]
fn weight_0_needs_the_header_and_only_as_the_first_step() {
    let mut sp = header_first_spec();
    sp.traffic = None;
    let d = reconcile(&sp, &Default::default(), &obs(), None, t0());
    assert!(d.actions.is_empty());
    assert!(
        d.status
            .message
            .as_deref()
            .unwrap()
            .contains("needs traffic.canaryHeader"),
        "{:?}",
        d.status.message
    );
    let mut sp = header_first_spec();
    sp.steps.swap(0, 1);
    let d = reconcile(&sp, &Default::default(), &obs(), None, t0());
    assert!(d.actions.is_empty());
    assert!(
        d.status.message.as_deref().unwrap().contains("steps:"),
        "{:?}",
        d.status.message
    );
}

#[test]
fn no_provider_or_two_holds_with_the_spec_error() {
    let mut sp = spec();
    sp.ingress = None;
    let d = reconcile(&sp, &Default::default(), &obs(), None, t0());
    assert!(d.actions.is_empty());
    assert!(d
        .status
        .message
        .as_deref()
        .unwrap()
        .contains("exactly one traffic provider"));
}

#[test]
fn a_blocked_route_holds_everything_mid_rollout_and_resumes_when_fixed() {
    let mut s = Sim::new(spec());
    s.run(30, 25 * MIN, &healthy());
    assert_eq!(s.phase(), Phase::Progressing);
    let weight = s.obs.canary_weight;
    let step = s.status.current_step;
    s.obs.traffic_blocked = Some("HTTPRoute embed is not accepted by Gateway gw: x: y".into());
    // Even a failing candidate does not move traffic on a route nobody serves as written.
    let d = s.tick(Some(&erroring()));
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert!(has_event(&d, "TrafficBlocked"));
    assert_eq!(
        d.status.message.as_deref(),
        Some("HTTPRoute embed is not accepted by Gateway gw: x: y; holding, traffic untouched")
    );
    s.run(30, 30 * MIN, &healthy());
    assert_eq!(s.obs.canary_weight, weight);
    assert_eq!(s.status.current_step, step);
    let warnings = s
        .log
        .iter()
        .filter(|d| has_event(d, "TrafficBlocked"))
        .count();
    assert_eq!(warnings, 1, "one warning, not one per reconcile");
    s.obs.traffic_blocked = None;
    s.run(30, 3 * 3600, &healthy());
    assert_eq!(s.phase(), Phase::Decommissioned, "{:?}", s.status.message);
}
