//! The functional core: one pure function from (spec, status, what the edge observed, metrics,
//! now) to (new status, idempotent actions, events, requeue).
//!
//! Level-triggered: every call compares the desired state of the current phase with what the
//! edge observed and emits only the differences. All memory lives in the returned status, so a
//! restarted operator continues where the last status write left off. The edge applies the
//! actions in order (stopping at the first error), then writes the status in one patch.

pub mod analysis;
mod command;
pub mod gate_templates;
pub mod parity;
pub mod stats;
mod summary;
mod timing;

#[cfg(test)]
mod tests;

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::crd::{
    AnalysisRecord, EmbeddingRolloutSpec, EmbeddingRolloutStatus, NoDataPolicy, Phase,
    RollbackStatus, RolloutCondition, Verdict, HISTORY_LIMIT,
};
pub use analysis::{
    BucketsResult, Counts, CustomReading, Look, MetricsSnapshot, QueryResult, ServiceMetrics,
};
pub use command::Command;
use timing::{elapsed, Timing};

/// Requeue while waiting for pods or a rollback to converge.
pub const WAIT_REQUEUE: Duration = Duration::from_secs(3);
/// Requeue right after a transition, so the next phase starts promptly.
pub const TRANSITION_REQUEUE: Duration = Duration::from_secs(1);
/// Longest sleep: a resync bound for idle phases.
pub const MAX_REQUEUE: Duration = Duration::from_secs(300);

/// A Deployment as the edge read it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DeploymentObs {
    pub spec_replicas: i32,
    pub ready_replicas: i32,
    pub available_replicas: i32,
    pub updated_replicas: i32,
    pub generation: i64,
    pub observed_generation: i64,
    /// Candidate only: the `rollout.akidb.io/candidate-hash` annotation.
    pub candidate_hash: Option<String>,
}

impl DeploymentObs {
    /// The controller has seen the latest spec and `replicas` pods of it are ready and available.
    fn rolled_out(&self, replicas: i32) -> bool {
        self.observed_generation >= self.generation
            && self.spec_replicas == replicas
            && self.updated_replicas >= replicas
            && self.available_replicas >= replicas
            && self.ready_replicas >= replicas
    }

    /// As `rolled_out`, for an autoscaled Deployment: at least `replicas` (the autoscaler may
    /// have asked for more).
    fn rolled_out_at_least(&self, replicas: i32) -> bool {
        self.observed_generation >= self.generation
            && self.spec_replicas >= replicas
            && self.updated_replicas >= replicas
            && self.available_replicas >= replicas
            && self.ready_replicas >= replicas
    }
}

/// Where the primary Ingress's rules (those the operator manages) send traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrimaryBackend {
    Baseline,
    Candidate,
    /// Some other Service (e.g. a user edit).
    Other(String),
    /// The primary Ingress does not exist.
    Missing,
}

/// Which Service the primary Ingress should point at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    Baseline,
    Candidate,
}

/// What the edge read from the cluster for this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// `metadata.generation` of the rollout.
    pub generation: Option<i64>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// Value of the `rollout.akidb.io/command` annotation.
    pub command: Option<String>,
    /// Who wrote it, as far as the object tells.
    pub command_issuer: CommandIssuer,
    pub candidate: Option<DeploymentObs>,
    pub baseline: Option<DeploymentObs>,
    /// Weight of the canary Ingress; `None` = it does not exist.
    pub canary_weight: Option<u8>,
    pub primary_backend: PrimaryBackend,
    /// Why the traffic object cannot be changed safely (an HTTPRoute its Gateway did not accept,
    /// a rule that also routes to other Services); `None` when it can.
    pub traffic_blocked: Option<String>,
    /// The candidate's HorizontalPodAutoscaler (ours, from `candidate.autoscaling`).
    pub candidate_autoscaler: Option<AutoscalerObs>,
    /// A HorizontalPodAutoscaler of the user's that scales the baseline Deployment.
    pub baseline_autoscaler: Option<AutoscalerObs>,
}

/// Who wrote the command annotation: the `command-by` / `command-at` annotations its writer
/// added, and the field manager managedFields records for it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CommandIssuer {
    pub by: Option<String>,
    pub at: Option<String>,
    pub manager: Option<String>,
}

impl CommandIssuer {
    /// " (by alice via kubectl-embeddingrollout)", or "" when nothing is known.
    fn describe(&self) -> String {
        match (&self.by, &self.manager) {
            (Some(b), Some(m)) => format!(" (by {b} via {m})"),
            (Some(b), None) => format!(" (by {b})"),
            (None, Some(m)) => format!(" (via {m})"),
            (None, None) => String::new(),
        }
    }
}

/// A HorizontalPodAutoscaler as the edge read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoscalerObs {
    pub name: String,
    pub min_replicas: i32,
    pub max_replicas: i32,
}

/// A declarative, idempotent change for the edge to apply (in order).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Create or update the candidate Deployment + Service (+ models ConfigMap) from
    /// `spec.candidate`, with this many replicas, annotated with `hash`.
    EnsureCandidate {
        replicas: i32,
        hash: String,
    },
    /// Only change the candidate Deployment's replicas.
    ScaleCandidate(i32),
    /// Create or update the candidate's HorizontalPodAutoscaler from `candidate.autoscaling`,
    /// with this minimum.
    EnsureCandidateAutoscaler {
        min_replicas: i32,
    },
    /// Delete the candidate's HorizontalPodAutoscaler (before scaling the candidate to 0).
    DeleteCandidateAutoscaler,
    /// Create or update the canary Ingress with this weight.
    SetCanaryWeight(u8),
    DeleteCanaryIngress,
    /// Patch the managed rules of the primary Ingress to this Service.
    PointPrimaryIngressAt(Backend),
    /// Patch the baseline Deployment's replicas.
    ScaleBaseline(i32),
    /// Remove the `rollout.akidb.io/command` annotation.
    ClearCommand,
    /// Deletion is safe now: remove the finalizer.
    RemoveFinalizer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// A Kubernetes Event to record on the rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub type_: EventType,
    pub reason: String,
    pub message: String,
}

/// Everything the edge must do after one reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub status: EmbeddingRolloutStatus,
    pub actions: Vec<Action>,
    pub requeue_after: Duration,
    pub events: Vec<Event>,
}

/// Whether an analysis is due now (the edge may skip the Prometheus queries otherwise).
pub fn analysis_due(
    spec: &EmbeddingRolloutSpec,
    status: &EmbeddingRolloutStatus,
    now: DateTime<Utc>,
) -> bool {
    let Ok(t) = Timing::from_spec(spec) else {
        return false;
    };
    in_analysed_phase(status) && due(&t, status, now)
}

/// Whether the analysis that runs next probes embedding parity (the edge sends the texts
/// only then).
pub fn parity_due(spec: &EmbeddingRolloutSpec, status: &EmbeddingRolloutStatus) -> bool {
    spec.analysis
        .gates
        .parity
        .as_ref()
        .is_some_and(|p| parity::due(p, status.step_analyses.saturating_add(1)))
}

/// The range the gates' evidence covers when an analysis runs now: everything since the current
/// step's weight was applied, or since its evidence last started over (whole seconds, at least
/// one). `None` when no step is running.
pub fn evidence_range(status: &EmbeddingRolloutStatus, now: DateTime<Utc>) -> Option<Duration> {
    let started = evidence_start(status)?;
    let e = elapsed(started, now)?;
    Some(Duration::from_secs(e.as_secs().max(1)))
}

/// When the gates' evidence of the current step began.
fn evidence_start(status: &EmbeddingRolloutStatus) -> Option<DateTime<Utc>> {
    match (status.step_started_at, status.evidence_started_at) {
        (Some(s), Some(e)) => Some(s.max(e)),
        (s, _) => s,
    }
}

fn in_analysed_phase(status: &EmbeddingRolloutStatus) -> bool {
    matches!(
        status.phase,
        Phase::Progressing | Phase::Paused | Phase::Promoting
    ) && status.step_started_at.is_some()
}

/// One interval after the later of the last analysis and the start of the step: the first
/// analysis of a step measures traffic at the step's weight.
fn due(t: &Timing, status: &EmbeddingRolloutStatus, now: DateTime<Utc>) -> bool {
    let reference = match (&status.last_analysis, status.step_started_at) {
        (Some(a), Some(s)) => Some(a.time.max(s)),
        (Some(a), None) => Some(a.time),
        (None, s) => s,
    };
    match reference {
        None => true,
        // A reference in the future (clock skew) is not "due": wait for the clock to catch up.
        Some(r) => elapsed(r, now).is_some_and(|e| e >= t.interval),
    }
}

/// The decision. Pure: same inputs, same output.
pub fn reconcile(
    spec: &EmbeddingRolloutSpec,
    status: &EmbeddingRolloutStatus,
    observed: &Observed,
    metrics: Option<&MetricsSnapshot>,
    now: DateTime<Utc>,
) -> Decision {
    let mut r = Reconciler {
        spec,
        obs: observed,
        metrics,
        now,
        st: status.clone(),
        actions: Vec::new(),
        events: Vec::new(),
        requeue: Vec::new(),
        hash: crate::workload::pod_hash(&spec.candidate),
        forced: false,
    };
    // A rollout started by an operator version with an older hash (which missed metricsService,
    // or the default preStop sleep) continues: the spec it was started from is the spec now. The
    // candidate's pods then roll once to the new annotation; the rollout does not restart.
    if let Some(h) = r.st.candidate_hash.as_deref() {
        if crate::workload::earlier_pod_hashes(&spec.candidate).contains(&h.to_string()) {
            r.st.candidate_hash = Some(r.hash.clone());
        }
    }
    r.st.observed_generation = observed.generation.or(status.observed_generation);
    r.run();
    summary::update(status, &mut r.st, now);
    r.finish()
}

struct Reconciler<'a> {
    spec: &'a EmbeddingRolloutSpec,
    obs: &'a Observed,
    metrics: Option<&'a MetricsSnapshot>,
    now: DateTime<Utc>,
    st: EmbeddingRolloutStatus,
    actions: Vec<Action>,
    events: Vec<Event>,
    requeue: Vec<Duration>,
    /// Hash of the candidate pod fields in the current spec.
    hash: String,
    /// A `promote` command in this reconcile: apply the next weight even under spec.paused.
    forced: bool,
}

impl Reconciler<'_> {
    fn run(&mut self) {
        if self.obs.deleting {
            self.finalize();
            return;
        }
        if let Some(why) = &self.obs.traffic_blocked {
            // Changing weights on a route nobody serves, or one whose other backends we would
            // shift, is worse than waiting: hold everything, traffic untouched, and say why.
            let msg = format!("{why}; holding, traffic untouched");
            if self.st.message.as_deref() != Some(msg.as_str()) {
                self.warn("TrafficBlocked", &msg);
            }
            self.st.message = Some(msg);
            self.requeue.push(Duration::from_secs(10));
            return;
        }
        let t = match Timing::from_spec(self.spec) {
            Ok(t) => t,
            Err(e) => {
                // Cannot happen with the schema's validation; hold everything rather than guess.
                let msg = format!("invalid spec: {e}; holding until it is fixed");
                if self.st.message.as_deref() != Some(msg.as_str()) {
                    self.warn("InvalidSpec", &msg);
                }
                self.st.message = Some(msg);
                self.requeue.push(Duration::from_secs(60));
                return;
            }
        };
        self.handle_command(&t);
        self.step_phase(&t);
    }

    /// Runs the handler of the current phase, and again after each transition, so one reconcile
    /// goes as far as the observation allows (and feeding the result back in changes nothing).
    fn step_phase(&mut self, t: &Timing) {
        // Bounded: the longest chain is RolledBack -> Deploying -> Progressing/Paused.
        for _ in 0..6 {
            let before = self.st.phase;
            match self.st.phase {
                Phase::Pending => self.pending(),
                Phase::Deploying => self.deploying(t),
                Phase::Progressing | Phase::Paused => self.canary(t),
                Phase::Promoting => self.promoting(t),
                Phase::Promoted | Phase::Decommissioned => self.promoted(t),
                Phase::RollingBack => self.rolling_back(t),
                Phase::RolledBack | Phase::Failed => self.finished(t),
            }
            if self.st.phase == before {
                break;
            }
        }
    }

    fn finish(mut self) -> Decision {
        self.update_conditions();
        // As people count steps: "4/4" for the last of four (the printer column shows it).
        self.st.step =
            (self.st.phase != Phase::Pending && !self.spec.steps.is_empty()).then(|| {
                let n = self.spec.steps.len();
                format!("{}/{n}", (self.st.current_step as usize + 1).min(n))
            });
        let requeue_after = self
            .requeue
            .iter()
            .copied()
            .min()
            .unwrap_or(MAX_REQUEUE)
            .clamp(Duration::from_secs(1), MAX_REQUEUE);
        Decision {
            status: self.st,
            actions: self.actions,
            requeue_after,
            events: self.events,
        }
    }

    // ----- small helpers ------------------------------------------------------------------

    fn normal(&mut self, reason: &str, message: &str) {
        self.events.push(Event {
            type_: EventType::Normal,
            reason: reason.into(),
            message: message.into(),
        });
    }

    fn warn(&mut self, reason: &str, message: &str) {
        self.events.push(Event {
            type_: EventType::Warning,
            reason: reason.into(),
            message: message.into(),
        });
    }

    fn act(&mut self, a: Action) {
        if !self.actions.contains(&a) {
            self.actions.push(a);
        }
    }

    fn set_phase(&mut self, phase: Phase) {
        if self.st.phase != phase {
            self.st.phase = phase;
            self.st.phase_started_at = Some(self.now);
            self.requeue.push(TRANSITION_REQUEUE);
        }
    }

    fn paused(&self) -> bool {
        self.spec.paused || self.st.manual_pause
    }

    /// Candidate replicas for a canary weight: full capacity at 100 %.
    fn replicas_for(&self, weight: u8) -> i32 {
        if weight >= 100 {
            self.spec.candidate.full_replicas()
        } else {
            self.spec.candidate.replicas
        }
    }

    fn rollout_hash(&self) -> String {
        self.st
            .candidate_hash
            .clone()
            .unwrap_or_else(|| self.hash.clone())
    }

    fn autoscaled(&self) -> bool {
        self.spec.candidate.autoscaling.is_some()
    }

    /// Candidate Deployment matches the rollout in flight and has `replicas` ready (at least,
    /// with an autoscaler, which may have scaled it further).
    fn candidate_ready(&self, replicas: i32) -> bool {
        let hash = self.rollout_hash();
        let autoscaled = self.autoscaled();
        self.obs.candidate.as_ref().is_some_and(|c| {
            c.candidate_hash.as_deref() == Some(hash.as_str())
                && if autoscaled {
                    c.rolled_out_at_least(replicas)
                } else {
                    c.rolled_out(replicas)
                }
        })
    }

    /// The candidate Deployment of the rollout in flight with `replicas`; with `autoscaling`,
    /// `replicas` is the autoscaler's minimum and the Deployment keeps what the autoscaler
    /// scaled it to above it (the operator never scales it down against the autoscaler).
    fn ensure_candidate(&mut self, replicas: i32) {
        let hash = self.rollout_hash();
        let autoscaled = self.autoscaled();
        let current = self
            .obs
            .candidate
            .as_ref()
            .filter(|c| c.candidate_hash.as_deref() == Some(hash.as_str()));
        let ok = current.is_some_and(|c| {
            if autoscaled {
                c.spec_replicas >= replicas
            } else {
                c.spec_replicas == replicas
            }
        });
        if !ok {
            let replicas = match (autoscaled, current) {
                (true, Some(c)) => c.spec_replicas.max(replicas),
                _ => replicas,
            };
            self.act(Action::EnsureCandidate { replicas, hash });
        }
        if let Some(a) = &self.spec.candidate.autoscaling {
            let want = (replicas, a.max_replicas);
            let have = self
                .obs
                .candidate_autoscaler
                .as_ref()
                .map(|h| (h.min_replicas, h.max_replicas));
            if have != Some(want) {
                self.act(Action::EnsureCandidateAutoscaler {
                    min_replicas: replicas,
                });
            }
        } else if self.obs.candidate_autoscaler.is_some() {
            // autoscaling removed from the spec: the counts are the operator's again.
            self.act(Action::DeleteCandidateAutoscaler);
        }
    }

    /// Scale the candidate to 0, removing its autoscaler first (it would scale it back up).
    fn retire_candidate(&mut self) {
        if self.obs.candidate_autoscaler.is_some() {
            self.act(Action::DeleteCandidateAutoscaler);
        }
        if self
            .obs
            .candidate
            .as_ref()
            .is_some_and(|c| c.spec_replicas != 0)
        {
            self.act(Action::ScaleCandidate(0));
        }
    }

    fn ensure_canary_weight(&mut self, w: u8) {
        if self.obs.canary_weight != Some(w) {
            self.act(Action::SetCanaryWeight(w));
        }
    }

    /// Weight 0 first (instant and always safe), then the canary Ingress goes away.
    fn ensure_canary_absent(&mut self) {
        match self.obs.canary_weight {
            None => {}
            Some(0) => self.act(Action::DeleteCanaryIngress),
            Some(_) => {
                self.act(Action::SetCanaryWeight(0));
                self.act(Action::DeleteCanaryIngress);
            }
        }
    }

    /// After the cutover the canary routes to the primary's backend anyway: just delete it.
    fn ensure_canary_deleted(&mut self) {
        if self.obs.canary_weight.is_some() {
            self.act(Action::DeleteCanaryIngress);
        }
    }

    fn ensure_primary(&mut self, b: Backend) {
        let already = matches!(
            (&self.obs.primary_backend, b),
            (PrimaryBackend::Baseline, Backend::Baseline)
                | (PrimaryBackend::Candidate, Backend::Candidate)
        );
        if !already {
            self.act(Action::PointPrimaryIngressAt(b));
        }
    }

    /// Standby and decommission scale the baseline, unless its own autoscaler scales it: the
    /// operator does not fight it (it would scale the Deployment right back).
    fn ensure_baseline_replicas(&mut self, n: i32) {
        if self.obs.baseline_autoscaler.is_some() {
            return;
        }
        if let Some(b) = &self.obs.baseline {
            if b.spec_replicas != n {
                self.act(Action::ScaleBaseline(n));
            }
        }
    }

    /// Whether the baseline is where standby (or decommission) puts it.
    fn baseline_at(&self, n: i32) -> bool {
        self.obs.baseline_autoscaler.is_some()
            || self
                .obs
                .baseline
                .as_ref()
                .is_none_or(|b| b.spec_replicas == n)
    }

    /// Baseline replicas to restore on rollback (never 0: it must serve everything). With its
    /// own autoscaler: at least the autoscaler's minimum, at most its maximum.
    fn baseline_target(&self) -> i32 {
        let n = self
            .spec
            .baseline
            .replicas
            .or(self.st.baseline_replicas_at_start)
            .or(self.obs.baseline.as_ref().map(|b| b.spec_replicas))
            .unwrap_or(1)
            .max(1);
        match &self.obs.baseline_autoscaler {
            Some(h) => n.max(h.min_replicas).min(h.max_replicas.max(1)),
            None => n,
        }
    }

    /// Scale the baseline up to `n` for a rollback. With an autoscaler, only ever up: it scales
    /// the Deployment as load dictates afterwards.
    fn restore_baseline(&mut self, n: i32) {
        match (&self.obs.baseline, &self.obs.baseline_autoscaler) {
            (Some(b), Some(_)) if b.spec_replicas < n => self.act(Action::ScaleBaseline(n)),
            (Some(b), None) if b.spec_replicas != n => self.act(Action::ScaleBaseline(n)),
            _ => {}
        }
    }

    fn baseline_ready(&self, n: i32) -> bool {
        let autoscaled = self.obs.baseline_autoscaler.is_some();
        self.obs.baseline.as_ref().is_some_and(|b| {
            (b.spec_replicas == n || (autoscaled && b.spec_replicas >= n)) && b.ready_replicas >= n
        })
    }

    fn baseline_alive(&self) -> bool {
        self.obs
            .baseline
            .as_ref()
            .is_some_and(|b| b.ready_replicas >= 1)
    }

    // ----- commands -----------------------------------------------------------------------

    /// Applies the command annotation (the phase handlers run afterwards).
    fn handle_command(&mut self, t: &Timing) {
        let Some(raw) = self.obs.command.clone() else {
            self.st.handled_command = None;
            return;
        };
        self.act(Action::ClearCommand);
        if self.st.handled_command.as_deref() == Some(raw.as_str()) {
            // Stale read of a command already applied: only clear it again.
            return;
        }
        self.st.handled_command = Some(raw.clone());
        let events_before = self.events.len();
        let phase_before = self.st.phase;
        self.apply_command(&raw, t);
        // Who did it goes on what it did: its events, and status.commands.
        let issuer = self.obs.command_issuer.clone();
        let who = issuer.describe();
        for e in &mut self.events[events_before..] {
            if !e.message.contains(&who) {
                e.message.push_str(&who);
            }
        }
        let (result, message) = match self.events.get(events_before) {
            Some(e) => (
                match e.reason.as_str() {
                    "CommandIgnored" => "Ignored",
                    "UnknownCommand" => "Unknown",
                    _ => "Applied",
                },
                e.message.clone(),
            ),
            None => ("Applied", format!("{raw}{who}")),
        };
        self.st.commands.push(crate::crd::CommandRecord {
            command: raw,
            by: issuer.by,
            manager: issuer.manager,
            requested_at: issuer.at,
            handled_at: self.now,
            phase: phase_before,
            result: result.into(),
            message,
        });
        let excess = self
            .st
            .commands
            .len()
            .saturating_sub(crate::crd::COMMANDS_LIMIT);
        self.st.commands.drain(..excess);
    }

    fn apply_command(&mut self, raw: &str, t: &Timing) {
        let cmd = match raw.parse::<Command>() {
            Ok(c) => c,
            Err(e) => {
                self.warn("UnknownCommand", &e.to_string());
                return;
            }
        };
        let phase = self.st.phase;
        let ignored = |r: &mut Self, why: &str| {
            r.warn(
                "CommandIgnored",
                &format!("{cmd} ignored in phase {phase}: {why}"),
            );
        };
        match cmd {
            Command::Pause => match phase {
                Phase::Pending | Phase::Deploying | Phase::Progressing | Phase::Paused => {
                    self.st.manual_pause = true;
                    self.normal("CommandApplied", "pause: holding the current weight");
                }
                _ => ignored(self, "there is no traffic step to hold"),
            },
            Command::Resume => {
                self.st.manual_pause = false;
                if self.spec.paused {
                    self.warn(
                        "CommandApplied",
                        "resume: manual pause cleared, but spec.paused is still true",
                    );
                } else {
                    self.normal("CommandApplied", "resume");
                }
            }
            Command::Promote | Command::PromoteFull => match phase {
                Phase::Progressing | Phase::Paused => {
                    self.st.manual_pause = false;
                    let last = self.st.current_step as usize + 1 >= self.spec.steps.len();
                    if cmd == Command::PromoteFull || last {
                        self.normal("CommandApplied", &format!("{cmd}: promoting now"));
                        self.start_promoting();
                    } else {
                        let next = self.st.current_step as usize + 1;
                        self.normal(
                            "CommandApplied",
                            &format!("promote: skipping to step {next} without waiting"),
                        );
                        self.forced = true;
                        self.set_phase(Phase::Progressing);
                        self.enter_step(next, t);
                    }
                }
                _ => ignored(self, "promotion needs a candidate serving canary traffic"),
            },
            Command::Abort => match phase {
                Phase::RollingBack | Phase::RolledBack | Phase::Failed => {
                    ignored(self, "nothing to abort")
                }
                _ => {
                    let who = self.obs.command_issuer.describe();
                    self.start_rollback(format!("aborted by user{who}"), None)
                }
            },
            Command::Retry => match phase {
                Phase::RolledBack | Phase::Failed => {
                    self.normal(
                        "CommandApplied",
                        "retry: starting a new rollout from step 0",
                    );
                    self.start_new_rollout();
                }
                _ => ignored(self, "only a RolledBack or Failed rollout can be retried"),
            },
        }
    }

    // ----- phases -------------------------------------------------------------------------

    fn pending(&mut self) {
        if self.obs.baseline.is_none() {
            self.st.message = Some(format!(
                "waiting for the baseline Deployment {}",
                self.spec.baseline.deployment
            ));
            self.requeue.push(Duration::from_secs(10));
            return;
        }
        if self.obs.primary_backend == PrimaryBackend::Missing {
            self.st.message = Some(format!("waiting for the {}", self.spec.traffic_object()));
            self.requeue.push(Duration::from_secs(10));
            return;
        }
        self.start_new_rollout();
    }

    /// Fresh rollout of the current candidate spec, from step 0 with no traffic.
    fn start_new_rollout(&mut self) {
        let st = &mut self.st;
        if st.baseline_replicas_at_start.is_none() {
            st.baseline_replicas_at_start = self.obs.baseline.as_ref().map(|b| b.spec_replicas);
        }
        st.candidate_hash = Some(self.hash.clone());
        st.observed_image = Some(self.spec.candidate.image.clone());
        st.current_step = 0;
        st.current_weight = 0;
        st.step_started_at = None;
        st.step_analyses = 0;
        st.step_failed_gates.clear();
        st.evidence_started_at = None;
        st.evidence_restarts = 0;
        st.waiting_since = Some(self.now);
        st.last_analysis = None;
        st.consecutive_failures = 0;
        st.first_failure_at = None;
        st.p95_breach_since = None;
        st.rollback = None;
        st.promoted_at = None;
        st.conditions.retain(|c| c.type_ != COND_ROLLBACK_DEADLINE);
        st.message = Some(format!(
            "deploying candidate {} ({} replicas)",
            self.spec.candidate.image, self.spec.candidate.replicas
        ));
        self.set_phase(Phase::Deploying);
        self.normal(
            "Deploying",
            &format!("deploying candidate {}", self.spec.candidate.image),
        );
    }

    fn deploying(&mut self, t: &Timing) {
        // Still Deploying afterwards, with the new hash: carry on below.
        self.restart_if_candidate_changed();
        // A restart leaves the canary in place: make sure it carries no traffic.
        if self.obs.canary_weight.is_some_and(|w| w > 0) {
            self.act(Action::SetCanaryWeight(0));
        }
        let replicas = self.spec.candidate.replicas;
        self.ensure_candidate(replicas);
        if self.candidate_ready(replicas) {
            // Step 0 with no weight yet; the canary handler applies it (or holds it when paused).
            self.st.current_step = 0;
            self.st.step_started_at = None;
            self.st.waiting_since = Some(self.now);
            if self.paused() {
                self.set_phase(Phase::Paused);
                self.normal(
                    "Paused",
                    "candidate available; paused before sending traffic",
                );
            } else {
                self.set_phase(Phase::Progressing);
            }
            return;
        }
        let since = *self.st.waiting_since.get_or_insert(self.now);
        match elapsed(since, self.now) {
            Some(e) if e >= t.progress_deadline => {
                let msg = format!(
                    "candidate {} not available after {} ({}); traffic untouched",
                    self.spec.candidate.image,
                    crate::duration::format(t.progress_deadline),
                    self.candidate_progress(replicas)
                );
                self.set_phase(Phase::Failed);
                self.st.message = Some(msg.clone());
                self.warn("Failed", &msg);
            }
            e => {
                self.st.message = Some(format!(
                    "waiting for candidate to become available ({}){}",
                    self.candidate_progress(replicas),
                    if e.is_none() {
                        "; clock skew: now is before waitingSince"
                    } else {
                        ""
                    }
                ));
                self.requeue.push(WAIT_REQUEUE);
            }
        }
    }

    fn candidate_progress(&self, replicas: i32) -> String {
        match &self.obs.candidate {
            None => "Deployment not created yet".into(),
            Some(c) => format!("{}/{replicas} ready", c.ready_replicas),
        }
    }

    /// Moves to step `i`: scales the candidate if the step needs more replicas, and applies the
    /// weight once it has them. Weight only goes up here.
    fn enter_step(&mut self, i: usize, t: &Timing) {
        let i = i.min(self.spec.steps.len() - 1);
        if self.st.current_step as usize != i || self.st.step_started_at.is_none() {
            self.st.current_step = i as u32;
            self.st.step_started_at = None;
            self.st.waiting_since = Some(self.now);
        }
        self.apply_step_weight(t);
    }

    /// If the current step's weight is not applied yet, applies it when the candidate has the
    /// replicas for it (or gives up after progressDeadline).
    fn apply_step_weight(&mut self, t: &Timing) {
        let step = self.st.current_step as usize;
        let target = self.spec.steps[step].weight.max(self.st.current_weight);
        let replicas = self.replicas_for(target);
        self.ensure_candidate(replicas);
        if self.st.step_started_at.is_some() && self.st.current_weight == target {
            return;
        }
        if self.paused() && !self.forced {
            return;
        }
        if self.candidate_ready(replicas) {
            self.st.current_weight = target;
            self.st.step_started_at = Some(self.now);
            self.st.step_analyses = 0;
            self.st.step_failed_gates.clear();
            self.st.evidence_started_at = None;
            self.st.evidence_restarts = 0;
            self.st.waiting_since = None;
            self.ensure_canary_weight(target);
            let msg = format!(
                "step {}/{}: {}% of traffic on the candidate for at least {}",
                step + 1,
                self.spec.steps.len(),
                target,
                self.spec.steps[step].duration
            );
            self.st.message = Some(msg.clone());
            self.normal("StepStarted", &msg);
            self.requeue.push(TRANSITION_REQUEUE);
            return;
        }
        let since = *self.st.waiting_since.get_or_insert(self.now);
        if elapsed(since, self.now).is_some_and(|e| e >= t.progress_deadline) {
            let reason = format!(
                "candidate did not reach {replicas} ready replicas for {target}% within {}",
                crate::duration::format(t.progress_deadline)
            );
            self.start_rollback(reason, None);
            return;
        }
        self.st.message = Some(format!(
            "waiting for the candidate to scale to {replicas} replicas before {target}% ({})",
            self.candidate_progress(replicas)
        ));
        self.requeue.push(WAIT_REQUEUE);
    }

    /// Progressing and Paused: hold the weight, analyse, advance.
    fn canary(&mut self, t: &Timing) {
        if self.restart_if_candidate_changed() {
            return;
        }
        // A step is running once its weight is applied; 0 too (header traffic only).
        if self.st.step_started_at.is_some() {
            self.ensure_canary_weight(self.st.current_weight);
        }
        self.ensure_primary(Backend::Baseline);
        if self.analyse(t) {
            return;
        }
        // Pause/resume are levels: spec.paused or the pause command.
        match (self.st.phase, self.paused()) {
            (Phase::Progressing, true) => {
                self.set_phase(Phase::Paused);
                self.normal("Paused", &format!("holding at {}%", self.st.current_weight));
            }
            (Phase::Paused, false) => {
                self.set_phase(Phase::Progressing);
                self.normal(
                    "Resumed",
                    &format!("resuming at step {}", self.st.current_step + 1),
                );
            }
            _ => {}
        }
        let step = self.st.current_step as usize;
        self.apply_step_weight(t);
        if self.st.phase != Phase::Progressing && self.st.phase != Phase::Paused {
            return; // apply_step_weight rolled back
        }
        if self.st.phase == Phase::Paused {
            self.st.message = Some(format!(
                "paused at step {}/{} ({}%){}",
                step + 1,
                self.spec.steps.len(),
                self.st.current_weight,
                if self.spec.paused {
                    " by spec.paused"
                } else {
                    " by the pause command"
                }
            ));
            self.requeue_for_analysis(t);
            return;
        }
        let Some(started) = self.st.step_started_at else {
            return; // still waiting for the step's replicas
        };
        let Some(in_step) = elapsed(started, self.now) else {
            self.st.message = Some(format!(
                "clock skew: now ({}) is before stepStartedAt ({}); holding step {}",
                self.now.to_rfc3339(),
                started.to_rfc3339(),
                step + 1
            ));
            self.requeue.push(WAIT_REQUEUE);
            return;
        };
        let duration = t.steps[step];
        if in_step < duration {
            self.requeue.push(duration - in_step);
            self.requeue_for_analysis(t);
            return;
        }
        // Duration passed: advance only on a passing analysis taken during this step.
        let passed = self.st.consecutive_failures == 0
            && self
                .st
                .last_analysis
                .as_ref()
                .is_some_and(|a| a.verdict == Verdict::Pass && a.time >= started);
        if !passed {
            // Waiting counts from the end of the soak, or from the latest evidence restart. Each
            // restart waits twice as long as the one before: its tests spend a smaller share of
            // the budget and so need more requests, and a fixed wait could restart every time
            // just short of a decision (at low traffic, for good).
            let evidence_from = evidence_start(&self.st).unwrap_or(started);
            let waited = match elapsed(evidence_from, self.now) {
                Some(since_restart) if self.st.evidence_restarts > 0 => since_restart,
                _ => in_step.saturating_sub(duration),
            };
            let patience = t
                .evidence_timeout
                .saturating_mul(1u32 << self.st.evidence_restarts.min(16));
            if waited >= patience
                && self
                    .st
                    .last_analysis
                    .as_ref()
                    .is_some_and(|a| a.verdict == Verdict::Inconclusive && a.time >= evidence_from)
            {
                let reason = format!(
                    "step {}/{}: no conclusive evidence {} after its {}(evidenceTimeout)",
                    step + 1,
                    self.spec.steps.len(),
                    crate::duration::format(patience),
                    if self.st.evidence_restarts > 0 {
                        "evidence started over "
                    } else {
                        "duration "
                    }
                );
                if self.spec.analysis.no_data_policy == NoDataPolicy::Fail {
                    let first = self.st.first_failure_at.or(Some(self.now));
                    self.start_rollback(reason, first);
                    return;
                }
                // Starting over helps only when the evidence is plentiful yet undecided (held by
                // something in its past); thin evidence (a 1 % step at low traffic) is better
                // kept and added to ...
                let a = &self.spec.analysis;
                let alpha = stats::step_alpha(a.confidence, self.spec.steps.len())
                    * stats::restart_share(self.st.evidence_restarts);
                let plentiful = self
                    .st
                    .last_analysis
                    .as_ref()
                    .and_then(|r| r.step_requests)
                    .unwrap_or(0)
                    >= 2 * stats::requests_to_pass(a.gates.max_error_rate, alpha);
                // ... and only when every undecided test leans to a pass (the candidate looks fine
                // but cannot be proven so): evidence that leans to a failure is kept, or starting
                // over would let a regression escape its test again and again.
                let leans_to_pass = self.st.last_analysis.as_ref().is_some_and(|r| {
                    r.gates
                        .iter()
                        .filter(|g| {
                            g.verdict == Verdict::Inconclusive
                                && analysis::SEQUENTIAL_GATES.contains(&g.gate.as_str())
                        })
                        .all(|g| matches!((g.value, g.threshold), (Some(v), Some(t)) if v <= t))
                });
                if !(plentiful && leans_to_pass) {
                    let msg = format!(
                        "{reason}; noDataPolicy Hold: holding at {}% and collecting more",
                        self.st.current_weight
                    );
                    if self.st.message.as_deref() != Some(msg.as_str()) {
                        self.warn("EvidenceTimeout", &msg);
                    }
                    self.st.message = Some(msg);
                    self.requeue_for_analysis(t);
                    return;
                }
                // Hold: start the gates over on the requests from now on. An anytime-valid test
                // never forgets; a step whose early requests were hit by something passing (a
                // noisy neighbour, a cold cache, both services slow for a minute) could otherwise
                // stay undecided for good. Each restart's tests get a smaller share of the
                // budget, so the guarantee still holds over all of them.
                self.st.evidence_restarts = self.st.evidence_restarts.saturating_add(1);
                self.st.evidence_started_at = Some(self.now);
                self.st.step_failed_gates.clear();
                let msg = format!(
                    "{reason}; noDataPolicy Hold: holding at {}% and judging the requests from now on afresh (evidence restart {})",
                    self.st.current_weight, self.st.evidence_restarts
                );
                self.warn("EvidenceTimeout", &msg);
                self.st.message = Some(msg);
                self.requeue_for_analysis(t);
                return;
            }
            let why = match &self.st.last_analysis {
                Some(a) if a.time >= started => format!(
                    "latest analysis is {}: {}",
                    a.verdict.as_str(),
                    a.reasons.join("; ")
                ),
                _ => "no analysis in this step yet".into(),
            };
            let fresh = if self.st.evidence_restarts > 0 {
                format!(
                    " on the requests since {} (evidence restart {}, after evidenceTimeout)",
                    evidence_from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    self.st.evidence_restarts
                )
            } else {
                String::new()
            };
            self.st.message = Some(format!(
                "step {}/{} soak done; waiting for a passing analysis{fresh} ({why})",
                step + 1,
                self.spec.steps.len()
            ));
            self.requeue_for_analysis(t);
            return;
        }
        if self.spec.steps[step].approval {
            let msg = format!(
                "step {}/{} passed; waiting for approval: the promote command (kubectl erollout promote)",
                step + 1,
                self.spec.steps.len()
            );
            if self.st.message.as_deref() != Some(msg.as_str()) {
                self.normal("ApprovalNeeded", &msg);
            }
            self.st.message = Some(msg);
            self.requeue_for_analysis(t);
            return;
        }
        if step + 1 < self.spec.steps.len() {
            self.enter_step(step + 1, t);
        } else if self.spec.promotion.auto {
            self.start_promoting();
        } else {
            self.st.message = Some(
                "last step passed; promotion.auto is false: waiting for the promote command".into(),
            );
            self.requeue_for_analysis(t);
        }
    }

    fn requeue_for_analysis(&mut self, t: &Timing) {
        let reference = match (&self.st.last_analysis, self.st.step_started_at) {
            (Some(a), Some(s)) => Some(a.time.max(s)),
            (Some(a), None) => Some(a.time),
            (None, s) => s,
        };
        let wait = match reference.map(|r| elapsed(r, self.now)) {
            None => WAIT_REQUEUE,
            Some(Some(e)) if e < t.interval => t.interval - e,
            // Overdue without metrics: the edge did not query; do not spin.
            Some(Some(_)) => WAIT_REQUEUE,
            Some(None) => t.interval,
        };
        self.requeue.push(wait);
    }

    /// Runs the analysis when due. Returns true when it started a rollback.
    fn analyse(&mut self, t: &Timing) -> bool {
        if !in_analysed_phase(&self.st) || !due(t, &self.st, self.now) {
            return false;
        }
        let Some(m) = self.metrics else {
            // The edge did not query; ask again soon rather than analysing nothing.
            self.requeue.push(WAIT_REQUEUE);
            return false;
        };
        let a = &self.spec.analysis;
        self.st.step_analyses = self.st.step_analyses.saturating_add(1);
        let carried_parity = self
            .st
            .last_analysis
            .as_ref()
            .filter(|r| {
                r.step == self.st.current_step
                    && self.st.step_started_at.is_some_and(|s| r.time >= s)
            })
            .and_then(|r| r.gates.iter().find(|g| g.gate == parity::GATE))
            .cloned();
        let look = analysis::Look {
            weight: self.st.current_weight,
            index: self.st.step_analyses,
            steps: self.spec.steps.len(),
            restarts: self.st.evidence_restarts,
            carried_parity,
        };
        let e = analysis::evaluate(a, m, &look, &self.st.step_failed_gates);
        for g in &e.gates {
            if g.verdict == Verdict::Fail
                && analysis::SEQUENTIAL_GATES.contains(&g.gate.as_str())
                && !self.st.step_failed_gates.contains(&g.gate)
            {
                self.st.step_failed_gates.push(g.gate.clone());
            }
        }
        let record = AnalysisRecord {
            time: self.now,
            step: self.st.current_step,
            weight: self.st.current_weight,
            candidate_p95_ms: e.candidate_p95_ms,
            baseline_p95_ms: e.baseline_p95_ms,
            error_rate: e.error_rate,
            baseline_error_rate: e.baseline_error_rate,
            breaker_state: e.breaker_state,
            request_count: e.request_count,
            step_requests: e.step_requests,
            baseline_step_requests: e.baseline_step_requests,
            look: Some(look.index),
            gates: e.gates.clone(),
            verdict: e.verdict,
            reasons: e.reasons.clone(),
        };
        self.st.history.push(record.clone());
        let overflow = self.st.history.len().saturating_sub(HISTORY_LIMIT);
        self.st.history.drain(..overflow);
        self.st.last_analysis = Some(record);
        self.requeue.push(t.interval);

        let counts_as_failure = match e.verdict {
            Verdict::Pass => false,
            Verdict::Fail => true,
            // Missing data is what noDataPolicy is about; too little evidence only waits (up
            // to evidenceTimeout past the step's duration, see `canary`).
            Verdict::Inconclusive => e.missing_data && a.no_data_policy == NoDataPolicy::Fail,
        };
        if counts_as_failure {
            self.st.consecutive_failures += 1;
            self.st.first_failure_at.get_or_insert(self.now);
            self.warn(
                "AnalysisFailed",
                &format!(
                    "{} ({}/{}): {}",
                    e.verdict.as_str(),
                    self.st.consecutive_failures,
                    a.failure_limit,
                    e.reasons.join("; ")
                ),
            );
        } else if e.verdict == Verdict::Pass {
            self.st.consecutive_failures = 0;
            self.st.first_failure_at = None;
        }

        // Hard triggers first: they do not wait for failureLimit.
        if let Some(reason) = e.error_rate_trigger {
            let first = self.st.first_failure_at.or(Some(self.now));
            self.start_rollback(reason, first);
            return true;
        }
        match e.p95_above_trigger {
            Some(true) => {
                let since = *self.st.p95_breach_since.get_or_insert(self.now);
                if elapsed(since, self.now).is_some_and(|d| d >= t.p95_sustained_for) {
                    let reason = format!(
                        "candidate P95 above the rollback trigger {} ms for {}: {}",
                        a.rollback_triggers.p95_ms,
                        crate::duration::format(t.p95_sustained_for),
                        e.p95_trigger_evidence
                            .as_deref()
                            .unwrap_or("no evidence recorded")
                    );
                    let first = self.st.first_failure_at.or(Some(since));
                    self.start_rollback(reason, first);
                    return true;
                }
            }
            Some(false) => self.st.p95_breach_since = None,
            None => {} // unknown: neither starts nor clears a breach
        }
        if self.st.consecutive_failures >= a.failure_limit {
            let reason = format!(
                "{} consecutive failing analyses (failureLimit {}): {}",
                self.st.consecutive_failures,
                a.failure_limit,
                e.reasons.join("; ")
            );
            let first = self.st.first_failure_at;
            self.start_rollback(reason, first);
            return true;
        }
        false
    }

    fn start_promoting(&mut self) {
        self.st.waiting_since = Some(self.now);
        self.set_phase(Phase::Promoting);
        let msg = format!(
            "promoting: scaling the candidate to {} replicas, then switching the {}",
            self.spec.candidate.full_replicas(),
            self.spec.traffic_object()
        );
        self.st.message = Some(msg.clone());
        self.normal("Promoting", &msg);
    }

    fn promoting(&mut self, t: &Timing) {
        let switched = self.obs.primary_backend == PrimaryBackend::Candidate;
        if !switched && self.restart_if_candidate_changed() {
            return;
        }
        if switched && self.rollback_if_candidate_changed() {
            return;
        }
        if self.analyse(t) {
            return;
        }
        let full = self.spec.candidate.full_replicas();
        self.ensure_candidate(full);
        if !switched {
            if self.st.step_started_at.is_some() {
                self.ensure_canary_weight(self.st.current_weight);
            }
            if self.candidate_ready(full) {
                // currentWeight becomes 100 once the switch is observed.
                self.act(Action::PointPrimaryIngressAt(Backend::Candidate));
                self.st.message = Some(format!(
                    "switching the {} to the candidate",
                    self.spec.traffic_object()
                ));
                self.requeue.push(TRANSITION_REQUEUE);
                return;
            }
            let since = *self.st.waiting_since.get_or_insert(self.now);
            if elapsed(since, self.now).is_some_and(|e| e >= t.progress_deadline) {
                let reason = format!(
                    "candidate did not reach {full} ready replicas for promotion within {}",
                    crate::duration::format(t.progress_deadline)
                );
                self.start_rollback(reason, None);
                return;
            }
            self.st.message = Some(format!(
                "promoting: waiting for {full} candidate replicas ({})",
                self.candidate_progress(full)
            ));
            self.requeue.push(WAIT_REQUEUE);
            return;
        }
        if self.st.current_weight != 100 {
            // All traffic is on the candidate from now on; analyses measure from here.
            self.st.current_weight = 100;
            self.st.step_started_at = Some(self.now);
            self.st.evidence_started_at = None;
            self.st.evidence_restarts = 0;
        }
        self.ensure_canary_deleted();
        let standby = self.spec.baseline.standby_replicas;
        self.ensure_baseline_replicas(standby);
        if self.obs.canary_weight.is_none() && self.baseline_at(standby) {
            self.st.promoted_at = Some(self.now);
            self.st.waiting_since = None;
            self.set_phase(Phase::Promoted);
            let baseline = match &self.obs.baseline_autoscaler {
                Some(h) => format!(
                    "baseline left to its HorizontalPodAutoscaler {} (min {})",
                    h.name, h.min_replicas
                ),
                None => format!("baseline on standby with {standby} replicas"),
            };
            let msg = format!(
                "all traffic on candidate {}; {baseline}",
                self.spec.candidate.image
            );
            self.st.message = Some(msg.clone());
            self.normal("Promoted", &msg);
            if let Some(d) = t.decommission_after {
                self.requeue.push(d);
            }
            return;
        }
        self.st.message =
            Some("promoting: removing the canary and scaling the baseline to standby".into());
        self.requeue.push(WAIT_REQUEUE);
    }

    /// Promoted and Decommissioned: keep the end state, decommission when due.
    fn promoted(&mut self, t: &Timing) {
        if self.rollback_if_candidate_changed() {
            return;
        }
        self.ensure_candidate(self.spec.candidate.full_replicas());
        self.ensure_primary(Backend::Candidate);
        self.ensure_canary_deleted();
        if self.st.phase == Phase::Decommissioned {
            self.ensure_baseline_replicas(0);
            return;
        }
        self.ensure_baseline_replicas(self.spec.baseline.standby_replicas);
        let (Some(after), Some(at)) = (t.decommission_after, self.st.promoted_at) else {
            return;
        };
        match elapsed(at, self.now) {
            Some(e) if e >= after && self.obs.baseline_autoscaler.is_some() => {
                let h = self
                    .obs
                    .baseline_autoscaler
                    .as_ref()
                    .map(|h| h.name.clone());
                self.st.message = Some(format!(
                    "decommissionAfter has passed, but the baseline is scaled by its HorizontalPodAutoscaler {}: the operator does not scale it to 0 against it; delete the autoscaler to decommission",
                    h.unwrap_or_default()
                ));
            }
            Some(e) if e >= after => {
                // Replace the standby scale with the decommission.
                self.actions
                    .retain(|a| !matches!(a, Action::ScaleBaseline(_)));
                self.ensure_baseline_replicas(0);
                self.set_phase(Phase::Decommissioned);
                let msg = format!(
                    "baseline {} scaled to 0 after {} on the candidate",
                    self.spec.baseline.deployment,
                    crate::duration::format(after)
                );
                self.st.message = Some(msg.clone());
                self.normal("Decommissioned", &msg);
            }
            Some(e) => self.requeue.push(after - e),
            None => self.requeue.push(WAIT_REQUEUE),
        }
    }

    /// Begins (or re-begins) returning all traffic to the baseline, then runs the rollback step.
    fn start_rollback(&mut self, reason: String, first_failure: Option<DateTime<Utc>>) {
        let from = self.st.phase;
        self.st.rollback = Some(RollbackStatus {
            reason: reason.clone(),
            started_at: self.now,
            completed_at: None,
            seconds: None,
            first_failure_at: first_failure,
            seconds_since_first_failure: None,
            from_phase: from,
            baseline_ready_at: None,
            baseline_ready_seconds: None,
        });
        self.st.manual_pause = false;
        self.st.waiting_since = None;
        self.set_phase(Phase::RollingBack);
        self.st.message = Some(format!("rolling back: {reason}"));
        self.warn(
            "RollbackStarted",
            &format!("rolling back from {from}: {reason}"),
        );
    }

    fn rolling_back(&mut self, t: &Timing) {
        let target = self.baseline_target();
        self.ensure_canary_absent();
        self.restore_baseline(target);
        let ready = self.baseline_ready(target);
        let Some(rb) = self.st.rollback.as_mut() else {
            // RollingBack without a record (hand-edited status): start one now.
            self.start_rollback("rollback without a recorded reason".into(), None);
            return;
        };
        let started = rb.started_at;
        if ready && rb.baseline_ready_at.is_none() {
            rb.baseline_ready_at = Some(self.now);
            rb.baseline_ready_seconds = Some(seconds_between(started, self.now));
        }
        // After the cutover the baseline may be at standby (or 0): traffic moves back once it
        // has all its replicas ready, so it is not flooded, but no later than half the
        // rollbackDeadline: a failing candidate is worse than a baseline still scaling up.
        let primary_on_baseline = self.obs.primary_backend == PrimaryBackend::Baseline;
        let waited_enough =
            elapsed(started, self.now).is_some_and(|e| e >= t.rollback_deadline / 2);
        if !primary_on_baseline && self.baseline_alive() && (ready || waited_enough) {
            self.act(Action::PointPrimaryIngressAt(Backend::Baseline));
        }
        self.st.current_weight = 0;
        let done = primary_on_baseline && self.obs.canary_weight.is_none() && ready;
        let Some(rb) = self.st.rollback.as_mut() else {
            return;
        };
        if done {
            rb.completed_at = Some(self.now);
            rb.seconds = Some(seconds_between(rb.started_at, self.now));
            rb.seconds_since_first_failure =
                rb.first_failure_at.map(|f| seconds_between(f, self.now));
            let msg = format!(
                "rolled back in {:.1}s ({}; baseline {} replicas ready after {:.1}s): {}",
                rb.seconds.unwrap_or_default(),
                match rb.seconds_since_first_failure {
                    Some(s) => format!("{s:.1}s after the first failing check"),
                    None => "no failing check".into(),
                },
                target,
                rb.baseline_ready_seconds.unwrap_or_default(),
                rb.reason
            );
            self.retire_candidate_when_drained(t);
            self.set_phase(Phase::RolledBack);
            self.st.message = Some(msg.clone());
            self.normal("RolledBack", &msg);
            return;
        }
        if elapsed(started, self.now).is_some_and(|e| e > t.rollback_deadline) {
            let msg = format!(
                "rollback not finished within rollbackDeadline {}; still trying ({})",
                crate::duration::format(t.rollback_deadline),
                self.rollback_progress(target)
            );
            if self.set_condition(COND_ROLLBACK_DEADLINE, "True", "DeadlineExceeded", &msg) {
                self.warn("RollbackDeadlineExceeded", &msg);
            }
        }
        self.st.message = Some(format!("rolling back: {}", self.rollback_progress(target)));
        self.requeue.push(Duration::from_secs(2));
    }

    fn rollback_progress(&self, target: i32) -> String {
        let baseline = match &self.obs.baseline {
            None => format!(
                "baseline Deployment {} missing",
                self.spec.baseline.deployment
            ),
            Some(b) => format!("baseline {}/{target} ready", b.ready_replicas),
        };
        let canary = if self.obs.canary_weight.is_some() {
            "canary present"
        } else {
            "canary removed"
        };
        let primary = match &self.obs.primary_backend {
            PrimaryBackend::Baseline => "primary on baseline".to_string(),
            PrimaryBackend::Candidate => "primary on candidate".into(),
            PrimaryBackend::Other(s) => format!("primary on {s}"),
            PrimaryBackend::Missing => format!("{} missing", self.spec.traffic_object()),
        };
        format!("{canary}, {primary}, {baseline}")
    }

    /// After a rollback, the candidate's pods go once `rollbackScaleDownDelay` has passed since
    /// all traffic was back on the baseline (the ingress controller may still route to them).
    fn retire_candidate_when_drained(&mut self, t: &Timing) {
        let Some(done) = self.st.rollback.as_ref().and_then(|rb| rb.completed_at) else {
            // No record of when traffic came back (hand-edited status): nothing to wait for.
            self.retire_candidate();
            return;
        };
        match elapsed(done, self.now) {
            Some(e) if e >= t.rollback_scale_down_delay => self.retire_candidate(),
            Some(e) => self.requeue.push(t.rollback_scale_down_delay - e),
            // The clock is behind the record: wait the whole delay from now.
            None => self.requeue.push(t.rollback_scale_down_delay),
        }
    }

    /// RolledBack and Failed: keep traffic off the candidate; a new candidate spec starts over.
    fn finished(&mut self, t: &Timing) {
        let changed = self
            .st
            .candidate_hash
            .as_deref()
            .is_some_and(|h| h != self.hash);
        if changed {
            self.normal(
                "CandidateChanged",
                "candidate spec changed: starting a new rollout",
            );
            self.start_new_rollout();
            return;
        }
        if self.st.phase == Phase::RolledBack {
            self.ensure_canary_absent();
            if self.obs.primary_backend != PrimaryBackend::Baseline && self.baseline_alive() {
                self.act(Action::PointPrimaryIngressAt(Backend::Baseline));
            }
            self.retire_candidate_when_drained(t);
        }
    }

    /// Mid-rollout (primary still on the baseline): a new candidate spec restarts from step 0.
    fn restart_if_candidate_changed(&mut self) -> bool {
        if self.st.candidate_hash.is_none() || self.st.candidate_hash.as_deref() == Some(&self.hash)
        {
            return false;
        }
        let msg = format!(
            "candidate spec changed (image {}): traffic back to 0 %, redeploying from step 0",
            self.spec.candidate.image
        );
        self.normal("CandidateChanged", &msg);
        if self.obs.canary_weight.is_some_and(|w| w > 0) {
            self.act(Action::SetCanaryWeight(0));
        }
        self.start_new_rollout();
        true
    }

    /// After cutover: a new candidate spec first returns traffic to the baseline; the new
    /// rollout then starts from RolledBack (see `finished`).
    fn rollback_if_candidate_changed(&mut self) -> bool {
        if self.st.candidate_hash.is_none() || self.st.candidate_hash.as_deref() == Some(&self.hash)
        {
            return false;
        }
        self.start_rollback(
            "candidate spec changed after cutover: returning traffic to the baseline before the new rollout".into(),
            None,
        );
        true
    }

    /// Deletion: leave the primary Ingress on a live Service (the baseline) and remove the
    /// canary before letting the finalizer go.
    fn finalize(&mut self) {
        self.ensure_canary_absent();
        let on_baseline = self.obs.primary_backend == PrimaryBackend::Baseline;
        if !on_baseline {
            match &self.obs.primary_backend {
                PrimaryBackend::Missing | PrimaryBackend::Other(_) => {}
                _ => {
                    let target = self.baseline_target();
                    if self
                        .obs
                        .baseline
                        .as_ref()
                        .is_some_and(|b| b.spec_replicas < target)
                    {
                        self.act(Action::ScaleBaseline(target));
                    }
                    if self.baseline_alive() {
                        self.act(Action::PointPrimaryIngressAt(Backend::Baseline));
                    }
                }
            }
        }
        let primary_safe = matches!(
            self.obs.primary_backend,
            PrimaryBackend::Baseline | PrimaryBackend::Missing | PrimaryBackend::Other(_)
        );
        if primary_safe && self.obs.canary_weight.is_none() {
            self.act(Action::RemoveFinalizer);
            self.st.message = Some(format!(
                "deleted: {} on the baseline, canary removed",
                self.spec.traffic_object()
            ));
            return;
        }
        self.st.message = Some(if self.obs.baseline.is_none() {
            format!(
                "deleting: waiting for the baseline Deployment {} so the {} has a live backend",
                self.spec.baseline.deployment,
                self.spec.traffic_object()
            )
        } else {
            "deleting: returning traffic to the baseline before removing the finalizer".into()
        });
        self.requeue.push(Duration::from_secs(2));
    }

    // ----- conditions ---------------------------------------------------------------------

    /// Sets a condition; the transition time only moves when the status changes. Returns true
    /// when the status changed.
    fn set_condition(&mut self, type_: &str, status: &str, reason: &str, message: &str) -> bool {
        let generation = self.st.observed_generation;
        let now = self.now;
        if let Some(c) = self.st.conditions.iter_mut().find(|c| c.type_ == type_) {
            let changed = c.status != status;
            if changed {
                c.last_transition_time = now;
            }
            c.status = status.into();
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = generation;
            return changed;
        }
        self.st.conditions.push(RolloutCondition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: now,
            observed_generation: generation,
        });
        true
    }

    fn update_conditions(&mut self) {
        let phase = self.st.phase;
        let in_flight = matches!(
            phase,
            Phase::Deploying
                | Phase::Progressing
                | Phase::Paused
                | Phase::Promoting
                | Phase::RollingBack
        );
        self.set_condition(
            COND_PROGRESSING,
            if in_flight { "True" } else { "False" },
            phase.as_str(),
            "",
        );
        let paused = phase == Phase::Paused;
        self.set_condition(
            COND_PAUSED,
            if paused { "True" } else { "False" },
            phase.as_str(),
            "",
        );
        let completed = matches!(phase, Phase::Promoted | Phase::Decommissioned);
        self.set_condition(
            COND_COMPLETED,
            if completed { "True" } else { "False" },
            phase.as_str(),
            "",
        );
        if let Some(a) = self.st.last_analysis.clone() {
            let status = match a.verdict {
                Verdict::Pass => "True",
                Verdict::Fail => "False",
                Verdict::Inconclusive => "Unknown",
            };
            self.set_condition(
                COND_HEALTHY,
                status,
                a.verdict.as_str(),
                &a.reasons.join("; "),
            );
        }
    }
}

pub const COND_PROGRESSING: &str = "Progressing";
pub const COND_PAUSED: &str = "Paused";
pub const COND_COMPLETED: &str = "Completed";
pub const COND_HEALTHY: &str = "Healthy";
pub const COND_ROLLBACK_DEADLINE: &str = "RollbackDeadlineExceeded";

/// Seconds from `a` to `b`, never negative (clock skew reads as 0).
fn seconds_between(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_milliseconds().max(0) as f64 / 1000.0
}
