//! What the dashboard's JSON API returns: rollouts as the page shows them, and the series its
//! charts draw. Pure functions of the rollouts (and the events read for one), so they are tested
//! without a server.

use chrono::{DateTime, Utc};
use k8s_openapi::api::events::v1::Event;
use serde::Serialize;

use crate::crd::{
    AnalysisRecord, CommandRecord, EmbeddingRollout, Phase, RollbackStatus, RolloutCondition,
    StepSummary, Verdict,
};

/// Where the rollouts came from.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Origin {
    /// The controller's watch cache (this replica leads).
    Cache,
    /// A list/get on the API server (a standby replica, or before the cache synced).
    Api,
}

/// One row of the rollout list.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSummary {
    pub namespace: String,
    pub name: String,
    /// `Pending` until the operator wrote a status.
    pub phase: String,
    /// The step as people count it, `2/4`; `-/4` before the operator wrote a status.
    pub step: String,
    /// `status.currentStep` (0-based), absent before any status.
    pub step_index: Option<u32>,
    pub steps: usize,
    /// The canary weight the operator set, in percent.
    pub weight: u8,
    pub candidate_image: String,
    /// The verdict of the last analysis.
    pub verdict: Option<Verdict>,
    pub last_analysis_at: Option<DateTime<Utc>>,
    pub message: Option<String>,
    pub phase_started_at: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    /// `spec.paused` or the `pause` command.
    pub paused: bool,
}

#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct RolloutList {
    pub origin: Origin,
    pub generated_at: DateTime<Utc>,
    /// How often the page polls, in seconds.
    pub refresh_seconds: u64,
    /// The one namespace the operator watches, if it watches one.
    pub namespace: Option<String>,
    /// By namespace, then name.
    pub rollouts: Vec<RolloutSummary>,
}

/// One step of the spec.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SpecStep {
    pub weight: u8,
    pub duration: String,
    pub approval: bool,
}

/// The canary weight at a time (a step function: it holds until the next point).
#[derive(Serialize, Clone, Copy, Debug, PartialEq)]
pub struct WeightPoint {
    pub t: DateTime<Utc>,
    pub weight: u8,
}

/// One gate's finding in one analysis.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatePoint {
    pub t: DateTime<Utc>,
    /// 0-based step index and weight of the analysis.
    pub step: u32,
    pub weight: u8,
    pub value: Option<f64>,
    pub low: Option<f64>,
    pub high: Option<f64>,
    pub threshold: Option<f64>,
    pub verdict: Verdict,
    pub evidence: String,
    pub samples: Option<u64>,
}

/// Every finding of one gate in `status.history`, oldest first.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GateSeries {
    pub gate: String,
    pub points: Vec<GatePoint>,
}

/// Both services' window P95 at one analysis.
#[derive(Serialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LatencyPoint {
    pub t: DateTime<Utc>,
    pub candidate_p95_ms: Option<f64>,
    pub baseline_p95_ms: Option<f64>,
}

/// A Kubernetes Event about the rollout.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    /// When it last happened (series, eventTime, deprecated timestamps, creation, in that order).
    pub time: Option<DateTime<Utc>>,
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub note: String,
    pub count: i32,
    pub reporter: String,
}

/// One rollout's page.
#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct RolloutDetail {
    #[serde(flatten)]
    pub summary: RolloutSummary,
    pub origin: Origin,
    pub generated_at: DateTime<Utc>,
    pub refresh_seconds: u64,
    pub spec_steps: Vec<SpecStep>,
    pub weight_series: Vec<WeightPoint>,
    pub latency_series: Vec<LatencyPoint>,
    pub gate_series: Vec<GateSeries>,
    /// `status.history`, oldest first, as the operator wrote it.
    pub history: Vec<AnalysisRecord>,
    pub step_summaries: Vec<StepSummary>,
    pub commands: Vec<CommandRecord>,
    pub rollback: Option<RollbackStatus>,
    pub conditions: Vec<RolloutCondition>,
    /// Newest first.
    pub events: Vec<EventView>,
    /// Why the events could not be read (e.g. RBAC), when they could not.
    pub events_error: Option<String>,
}

pub fn summary(r: &EmbeddingRollout) -> RolloutSummary {
    let steps = r.spec.steps.len();
    let status = r.status.as_ref();
    RolloutSummary {
        namespace: r.metadata.namespace.clone().unwrap_or_default(),
        name: r.metadata.name.clone().unwrap_or_default(),
        phase: status.map_or(Phase::Pending, |s| s.phase).to_string(),
        step: match status {
            Some(s) => format!("{}/{steps}", s.current_step as usize + 1),
            None => format!("-/{steps}"),
        },
        step_index: status.map(|s| s.current_step),
        steps,
        weight: status.map_or(0, |s| s.current_weight),
        candidate_image: r.spec.candidate.image.clone(),
        verdict: status.and_then(|s| last_analysis(s).map(|a| a.verdict)),
        last_analysis_at: status.and_then(|s| last_analysis(s).map(|a| a.time)),
        message: status.and_then(|s| s.message.clone()),
        phase_started_at: status.and_then(|s| s.phase_started_at),
        created_at: r
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0)),
        paused: r.spec.paused || status.is_some_and(|s| s.manual_pause),
    }
}

/// `lastAnalysis`, else the newest of `history`.
fn last_analysis(s: &crate::crd::EmbeddingRolloutStatus) -> Option<&AnalysisRecord> {
    s.last_analysis.as_ref().or(s.history.last())
}

pub fn list(
    rollouts: &[std::sync::Arc<EmbeddingRollout>],
    origin: Origin,
    namespace: Option<String>,
    refresh_seconds: u64,
    now: DateTime<Utc>,
) -> RolloutList {
    let mut rows: Vec<RolloutSummary> = rollouts.iter().map(|r| summary(r)).collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    RolloutList {
        origin,
        generated_at: now,
        refresh_seconds,
        namespace,
        rollouts: rows,
    }
}

pub struct DetailInput<'a> {
    pub rollout: &'a EmbeddingRollout,
    pub origin: Origin,
    pub events: Result<Vec<EventView>, String>,
    pub refresh_seconds: u64,
    pub now: DateTime<Utc>,
}

pub fn detail(input: DetailInput<'_>) -> RolloutDetail {
    let r = input.rollout;
    let status = r.status.clone().unwrap_or_default();
    let (events, events_error) = match input.events {
        Ok(e) => (e, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    RolloutDetail {
        summary: summary(r),
        origin: input.origin,
        generated_at: input.now,
        refresh_seconds: input.refresh_seconds,
        spec_steps: r
            .spec
            .steps
            .iter()
            .map(|s| SpecStep {
                weight: s.weight,
                duration: s.duration.to_string(),
                approval: s.approval,
            })
            .collect(),
        weight_series: weight_series(r, input.now),
        latency_series: status
            .history
            .iter()
            .map(|a| LatencyPoint {
                t: a.time,
                candidate_p95_ms: a.candidate_p95_ms,
                baseline_p95_ms: a.baseline_p95_ms,
            })
            .collect(),
        gate_series: gate_series(&status.history),
        history: status.history,
        step_summaries: status.step_summaries,
        commands: status.commands,
        rollback: status.rollback,
        conditions: status.conditions,
        events,
        events_error,
    }
}

/// The canary weight over time, from what the status records: each step's start (and a
/// redeploy's or failure's end, back to 0), every analysis in `history` (the weight it was taken
/// at), a finished rollback (0), and, while the rollout is in flight, the weight now.
pub fn weight_series(r: &EmbeddingRollout, now: DateTime<Utc>) -> Vec<WeightPoint> {
    let Some(status) = r.status.as_ref() else {
        return Vec::new();
    };
    let mut points = Vec::new();
    for s in &status.step_summaries {
        points.push(WeightPoint {
            t: s.started_at,
            weight: s.weight,
        });
        if let (Some(end), Some(outcome)) = (s.ended_at, s.outcome.as_deref()) {
            if matches!(outcome, "RolledBack" | "Restarted" | "Failed") {
                points.push(WeightPoint { t: end, weight: 0 });
            }
        }
    }
    for a in &status.history {
        points.push(WeightPoint {
            t: a.time,
            weight: a.weight,
        });
    }
    if let Some(done) = status.rollback.as_ref().and_then(|rb| rb.completed_at) {
        points.push(WeightPoint { t: done, weight: 0 });
    }
    if matches!(
        status.phase,
        Phase::Deploying | Phase::Progressing | Phase::Paused | Phase::Promoting
    ) {
        points.push(WeightPoint {
            t: now,
            weight: status.current_weight,
        });
    }
    // Stable: at one instant the later record (a step's end, the rollback) wins.
    points.sort_by_key(|p| p.t);
    points.dedup_by(|later, earlier| later.t == earlier.t && later.weight == earlier.weight);
    points
}

/// Each gate's findings over `history`, gates in the order they first appear.
pub fn gate_series(history: &[AnalysisRecord]) -> Vec<GateSeries> {
    let mut out: Vec<GateSeries> = Vec::new();
    for a in history {
        for g in &a.gates {
            let point = GatePoint {
                t: a.time,
                step: a.step,
                weight: a.weight,
                value: g.value,
                low: g.low,
                high: g.high,
                threshold: g.threshold,
                verdict: g.verdict,
                evidence: g.evidence.clone(),
                samples: g.samples,
            };
            match out.iter_mut().find(|s| s.gate == g.gate) {
                Some(s) => s.points.push(point),
                None => out.push(GateSeries {
                    gate: g.gate.clone(),
                    points: vec![point],
                }),
            }
        }
    }
    out
}

fn timestamp(t: &k8s_openapi::jiff::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32)
}

/// An events.k8s.io/v1 Event as the page shows it.
pub fn event_view(e: &Event) -> EventView {
    let time = e
        .series
        .as_ref()
        .map(|s| &s.last_observed_time.0)
        .or(e.event_time.as_ref().map(|t| &t.0))
        .or(e.deprecated_last_timestamp.as_ref().map(|t| &t.0))
        .or(e.metadata.creation_timestamp.as_ref().map(|t| &t.0))
        .and_then(timestamp);
    EventView {
        time,
        type_: e.type_.clone().unwrap_or_default(),
        reason: e.reason.clone().unwrap_or_default(),
        note: e.note.clone().unwrap_or_default(),
        count: e
            .series
            .as_ref()
            .map(|s| s.count)
            .or(e.deprecated_count)
            .unwrap_or(1),
        reporter: e.reporting_controller.clone().unwrap_or_default(),
    }
}

/// The newest `limit` events, newest first.
pub fn recent_events(events: &[Event], limit: usize) -> Vec<EventView> {
    let mut v: Vec<EventView> = events.iter().map(event_view).collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.time));
    v.truncate(limit);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rollout(status: serde_json::Value) -> EmbeddingRollout {
        serde_json::from_value(json!({
            "apiVersion": "rollout.akidb.io/v1alpha1", "kind": "EmbeddingRollout",
            "metadata": {"name": "embed", "namespace": "production",
                         "creationTimestamp": "2025-03-01T09:00:00Z"},
            "spec": {
                "baseline": {"deployment": "mlx", "service": "mlx"},
                "candidate": {"image": "candle:1.2"},
                "ingress": {"name": "embed"},
                "steps": [{"weight": 10, "duration": "1m"}, {"weight": 25, "duration": "1m"},
                          {"weight": 50, "duration": "1m", "approval": true}, {"weight": 100, "duration": "1m"}]
            },
            "status": status
        }))
        .unwrap()
    }

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_step_is_a_people_count_and_dashes_before_any_status() {
        let r = rollout(json!({"phase": "Progressing", "currentStep": 1, "currentWeight": 25}));
        let s = summary(&r);
        assert_eq!(
            (s.step.as_str(), s.weight, s.phase.as_str()),
            ("2/4", 25, "Progressing")
        );
        let mut pending = rollout(json!(null));
        pending.status = None;
        let s = summary(&pending);
        assert_eq!((s.step.as_str(), s.phase.as_str()), ("-/4", "Pending"));
        assert_eq!(s.created_at, Some(t("2025-03-01T09:00:00Z")));
    }

    #[test]
    fn weight_series_follows_steps_analyses_and_the_rollback() {
        let r = rollout(json!({
            "phase": "RolledBack", "currentStep": 1, "currentWeight": 0,
            "stepSummaries": [
                {"step": 0, "weight": 10, "startedAt": "2025-03-01T10:00:00Z", "endedAt": "2025-03-01T10:01:00Z", "outcome": "Advanced"},
                {"step": 1, "weight": 25, "startedAt": "2025-03-01T10:01:00Z", "endedAt": "2025-03-01T10:03:00Z", "outcome": "RolledBack"}
            ],
            "history": [
                {"time": "2025-03-01T10:00:30Z", "step": 0, "weight": 10, "verdict": "Pass", "reasons": []},
                {"time": "2025-03-01T10:02:00Z", "step": 1, "weight": 25, "verdict": "Fail", "reasons": ["x"]}
            ],
            "rollback": {"reason": "gates failed", "startedAt": "2025-03-01T10:02:30Z",
                         "completedAt": "2025-03-01T10:03:00Z", "fromPhase": "Progressing"}
        }));
        let w: Vec<(String, u8)> = weight_series(&r, t("2025-03-01T11:00:00Z"))
            .iter()
            .map(|p| (p.t.format("%H:%M:%S").to_string(), p.weight))
            .collect();
        let want = [
            ("10:00:00", 10),
            ("10:00:30", 10),
            ("10:01:00", 25),
            ("10:02:00", 25),
            ("10:03:00", 0),
        ];
        assert_eq!(
            w,
            want.iter()
                .map(|(a, b)| (a.to_string(), *b))
                .collect::<Vec<_>>(),
            "a finished rollout has no point at now"
        );
    }

    #[test]
    fn an_active_rollout_ends_its_weight_series_now() {
        let r = rollout(json!({
            "phase": "Progressing", "currentStep": 1, "currentWeight": 25,
            "stepSummaries": [{"step": 1, "weight": 25, "startedAt": "2025-03-01T10:01:00Z"}]
        }));
        let now = t("2025-03-01T10:05:00Z");
        assert_eq!(
            weight_series(&r, now),
            vec![
                WeightPoint {
                    t: t("2025-03-01T10:01:00Z"),
                    weight: 25
                },
                WeightPoint { t: now, weight: 25 }
            ]
        );
    }

    #[test]
    fn gate_series_group_findings_by_gate_in_first_seen_order() {
        let a = |time: &str, v: f64, verdict: &str| {
            serde_json::from_value::<AnalysisRecord>(json!({
                "time": time, "step": 1, "weight": 25, "verdict": verdict, "reasons": [],
                "gates": [
                    {"gate": "maxP95Ms", "verdict": verdict, "evidence": "e", "value": v, "threshold": 0.05},
                    {"gate": "maxErrorRate", "verdict": "Pass", "evidence": "e", "value": 0.001, "threshold": 0.005}
                ]
            }))
            .unwrap()
        };
        let series = gate_series(&[
            a("2025-03-01T10:00:00Z", 0.01, "Pass"),
            a("2025-03-01T10:01:00Z", 0.09, "Fail"),
        ]);
        assert_eq!(
            series.iter().map(|s| s.gate.as_str()).collect::<Vec<_>>(),
            ["maxP95Ms", "maxErrorRate"]
        );
        assert_eq!(
            series[0]
                .points
                .iter()
                .map(|p| (p.value, p.threshold, p.verdict))
                .collect::<Vec<_>>(),
            [
                (Some(0.01), Some(0.05), Verdict::Pass),
                (Some(0.09), Some(0.05), Verdict::Fail)
            ]
        );
    }

    #[test]
    fn events_newest_first_with_series_counts() {
        let e = |name: &str, time: &str, series: Option<i32>| {
            let mut v = json!({
                "metadata": {"name": name, "namespace": "production"},
                "eventTime": time, "reason": name, "note": format!("{name} happened"),
                "type": "Normal", "reportingController": "embedding-rollout-operator",
                "reportingInstance": "x", "action": "Reconcile"
            });
            if let Some(count) = series {
                v["series"] =
                    json!({"count": count, "lastObservedTime": "2025-03-01T12:00:00.000000Z"});
            }
            serde_json::from_value::<Event>(v).unwrap()
        };
        let out = recent_events(
            &[
                e("Old", "2025-03-01T10:00:00.000000Z", None),
                e("Repeated", "2025-03-01T09:00:00.000000Z", Some(4)),
                e("New", "2025-03-01T11:00:00.000000Z", None),
            ],
            2,
        );
        assert_eq!(
            out.iter()
                .map(|e| (e.reason.as_str(), e.count))
                .collect::<Vec<_>>(),
            [("Repeated", 4), ("New", 1)]
        );
        assert_eq!(out[1].note, "New happened");
    }
}
