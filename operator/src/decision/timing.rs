//! The spec's durations, parsed once per reconcile, and clock arithmetic that survives skew.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::crd::EmbeddingRolloutSpec;
use crate::duration::DurationError;

/// Every duration of the spec, parsed.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Timing {
    pub interval: Duration,
    pub p95_sustained_for: Duration,
    pub rollback_deadline: Duration,
    pub rollback_scale_down_delay: Duration,
    pub progress_deadline: Duration,
    pub decommission_after: Option<Duration>,
    pub evidence_timeout: Duration,
    /// Soak of each step.
    pub steps: Vec<Duration>,
}

/// Why the spec cannot be acted on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("{field}: {source}")]
    Duration {
        field: String,
        source: DurationError,
    },
    #[error("steps: {0}")]
    Steps(String),
    #[error("analysis.interval must be positive")]
    ZeroInterval,
    #[error("set exactly one traffic provider: ingress (or traffic.nginx) or traffic.gatewayAPI")]
    Provider,
}

impl Timing {
    pub(crate) fn from_spec(spec: &EmbeddingRolloutSpec) -> Result<Self, SpecError> {
        let d = |field: &str, g: &crate::duration::GoDuration| {
            g.parse().map_err(|source| SpecError::Duration {
                field: field.to_string(),
                source,
            })
        };
        let a = &spec.analysis;
        let mut steps = Vec::with_capacity(spec.steps.len());
        for (i, s) in spec.steps.iter().enumerate() {
            steps.push(d(&format!("steps[{i}].duration"), &s.duration)?);
        }
        // The schema says the same with CEL; checked again because the decision indexes by it.
        if spec.steps.is_empty() {
            return Err(SpecError::Steps("at least one step is required".into()));
        }
        if spec.steps.iter().any(|s| s.weight > 100) {
            return Err(SpecError::Steps("every weight must be 1..100".into()));
        }
        if spec.steps.iter().skip(1).any(|s| s.weight == 0) {
            return Err(SpecError::Steps(
                "only the first step may have weight 0".into(),
            ));
        }
        if spec.steps[0].weight == 0 && spec.canary_header().is_none() {
            return Err(SpecError::Steps(
                "a first step of weight 0 sends only header traffic: it needs traffic.canaryHeader"
                    .into(),
            ));
        }
        if spec.provider().is_none() {
            return Err(SpecError::Provider);
        }
        if spec.steps.windows(2).any(|w| w[0].weight >= w[1].weight) {
            return Err(SpecError::Steps(
                "weights must be strictly increasing".into(),
            ));
        }
        if spec.steps.last().map(|s| s.weight) != Some(100) {
            return Err(SpecError::Steps("the last weight must be 100".into()));
        }
        // Read by the edge (the probe's request timeout); checked here so a bad one is the
        // spec's error like every other duration.
        if let Some(p) = &a.gates.parity {
            d("analysis.gates.parity.timeout", &p.timeout)?;
        }
        let interval = d("analysis.interval", &a.interval)?;
        if interval.is_zero() {
            return Err(SpecError::ZeroInterval);
        }
        Ok(Self {
            interval,
            p95_sustained_for: d(
                "analysis.rollbackTriggers.p95SustainedFor",
                &a.rollback_triggers.p95_sustained_for,
            )?,
            rollback_deadline: d("rollbackDeadline", &spec.rollback_deadline)?,
            rollback_scale_down_delay: d(
                "rollbackScaleDownDelay",
                &spec.rollback_scale_down_delay,
            )?,
            progress_deadline: d(
                "candidate.progressDeadline",
                &spec.candidate.progress_deadline,
            )?,
            decommission_after: spec
                .promotion
                .decommission_after
                .as_ref()
                .map(|g| d("promotion.decommissionAfter", g))
                .transpose()?,
            evidence_timeout: d("analysis.evidenceTimeout", &a.evidence_timeout)?,
            steps,
        })
    }
}

/// Time from `since` to `now`; `None` when `now` is earlier (clock skew between operator
/// replicas, or a hand-edited status). Callers treat `None` as "not yet": nothing advances, and
/// nothing panics.
pub(crate) fn elapsed(since: DateTime<Utc>, now: DateTime<Utc>) -> Option<Duration> {
    (now - since).to_std().ok()
}
