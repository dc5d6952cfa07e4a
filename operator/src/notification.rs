//! What the webhooks are told, and in which words. Pure: the reconcile's decision in, the
//! notifications and their request bodies out. Delivery is [`crate::notifier`]'s.
//!
//! Notifications are the decision's own events (one per transition, so one message per step,
//! promotion or rollback, never one per reconcile), mapped to a [`NotificationKind`] and
//! filtered by each webhook's `events`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::crd::{
    EmbeddingRolloutSpec, EmbeddingRolloutStatus, NotificationKind, WebhookFormat, WebhookSpec,
};
use crate::decision::{Event, EventType};

/// The kinds a webhook with an empty `events` list receives: the milestones, not the warnings
/// (those repeat while a condition lasts; Flagger #427 is users asking for less noise).
pub const DEFAULT_KINDS: [NotificationKind; 7] = [
    NotificationKind::StepStarted,
    NotificationKind::ApprovalNeeded,
    NotificationKind::Promoted,
    NotificationKind::RollbackStarted,
    NotificationKind::RolledBack,
    NotificationKind::Failed,
    NotificationKind::Command,
];

/// The kind of a decision event, `None` for those nobody is notified of (`Promoting`,
/// `Paused` by the spec, `CandidateChanged`, `Decommissioned`: the next milestone follows).
pub fn kind_of(event: &Event) -> Option<NotificationKind> {
    Some(match event.reason.as_str() {
        "StepStarted" => NotificationKind::StepStarted,
        "ApprovalNeeded" => NotificationKind::ApprovalNeeded,
        "Promoted" => NotificationKind::Promoted,
        "RollbackStarted" => NotificationKind::RollbackStarted,
        "RolledBack" => NotificationKind::RolledBack,
        "Failed" => NotificationKind::Failed,
        "CommandApplied" | "CommandIgnored" | "UnknownCommand" => NotificationKind::Command,
        _ if event.type_ == EventType::Warning => NotificationKind::Warning,
        _ => return None,
    })
}

/// Whether `webhook` wants `kind`.
pub fn wants(webhook: &WebhookSpec, kind: NotificationKind) -> bool {
    if webhook.events.is_empty() {
        DEFAULT_KINDS.contains(&kind)
    } else {
        webhook.events.contains(&kind)
    }
}

/// One thing that happened to a rollout, with what a reader needs to act on it.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    pub kind: NotificationKind,
    pub warning: bool,
    pub namespace: String,
    pub rollout: String,
    /// The rollout's uid, so the delivery's event is listed with the rollout's own.
    pub uid: Option<String>,
    /// The event's message: for a rollback its reason and timing.
    pub message: String,
    pub time: DateTime<Utc>,
    pub phase: String,
    /// As people count: `2/4`.
    pub step: String,
    pub weight: u8,
    pub candidate_image: String,
    pub baseline: String,
    /// For commands: who sent it (`command-by`, not authenticated) and the field manager that
    /// wrote the annotation (the client, from managedFields).
    pub by: Option<String>,
    pub manager: Option<String>,
}

/// The notifications of one reconcile's events, in their order.
pub fn from_decision(
    namespace: &str,
    rollout: &str,
    uid: Option<&str>,
    spec: &EmbeddingRolloutSpec,
    status: &EmbeddingRolloutStatus,
    events: &[Event],
    now: DateTime<Utc>,
) -> Vec<Notification> {
    let steps = spec.steps.len().max(1);
    let step = (status.current_step as usize + 1).min(steps);
    events
        .iter()
        .filter_map(|e| {
            let kind = kind_of(e)?;
            let command = (kind == NotificationKind::Command)
                .then(|| status.commands.last())
                .flatten();
            Some(Notification {
                kind,
                warning: e.type_ == EventType::Warning,
                namespace: namespace.to_string(),
                rollout: rollout.to_string(),
                uid: uid.map(str::to_string),
                message: e.message.clone(),
                time: now,
                phase: status.phase.to_string(),
                step: format!("{step}/{steps}"),
                weight: status.current_weight,
                candidate_image: spec.candidate.image.clone(),
                baseline: spec.baseline.deployment.clone(),
                by: command.and_then(|c| c.by.clone()),
                manager: command.and_then(|c| c.manager.clone()),
            })
        })
        .collect()
}

/// The request body for `format`.
pub fn body(n: &Notification, format: WebhookFormat) -> Value {
    let kind = format!("{:?}", n.kind);
    let time = n.time.to_rfc3339_opts(SecondsFormat::Millis, true);
    match format {
        WebhookFormat::Generic => json!({
            "kind": kind,
            "severity": if n.warning { "warning" } else { "info" },
            "namespace": n.namespace,
            "rollout": n.rollout,
            "message": n.message,
            "time": time,
            "phase": n.phase,
            "step": n.step,
            "weight": n.weight,
            "candidateImage": n.candidate_image,
            "baseline": n.baseline,
            "by": n.by,
            "manager": n.manager,
        }),
        WebhookFormat::Slack => {
            let color = match n.kind {
                NotificationKind::Promoted => "good",
                NotificationKind::RollbackStarted
                | NotificationKind::RolledBack
                | NotificationKind::Failed => "danger",
                _ if n.warning => "warning",
                _ => "#439FE0",
            };
            let mut fields = vec![
                json!({"title": "Phase", "value": n.phase, "short": true}),
                json!({"title": "Step", "value": format!("{} at {} %", n.step, n.weight), "short": true}),
                json!({"title": "Candidate", "value": n.candidate_image, "short": true}),
                json!({"title": "Baseline", "value": n.baseline, "short": true}),
            ];
            if let Some(by) = n.by.as_ref().or(n.manager.as_ref()) {
                fields.push(json!({"title": "By", "value": by, "short": true}));
            }
            json!({
                "text": format!("*{}* {}/{}: {}", slack_escape(&kind), slack_escape(&n.namespace),
                                slack_escape(&n.rollout), slack_escape(&n.message)),
                "attachments": [{
                    "color": color,
                    "fallback": format!("{kind} {}/{}", n.namespace, n.rollout),
                    "fields": fields,
                    "ts": n.time.timestamp(),
                }],
            })
        }
    }
}

/// Slack's three control characters in message text.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{CommandRecord, Phase, SecretKeyRef};

    fn spec() -> EmbeddingRolloutSpec {
        serde_json::from_value(json!({
            "baseline": {"deployment": "akidb-mlx", "service": "akidb-mlx"},
            "candidate": {"image": "candle-embedder:v2"},
            "ingress": {"name": "akidb"},
            "steps": [
                {"weight": 1, "duration": "1m"},
                {"weight": 10, "duration": "1m"},
                {"weight": 50, "duration": "1m"},
                {"weight": 100, "duration": "1m"},
            ],
        }))
        .unwrap()
    }

    fn webhook(events: &[NotificationKind]) -> WebhookSpec {
        WebhookSpec {
            name: "team".into(),
            url_secret_ref: SecretKeyRef {
                name: "hooks".into(),
                key: "url".into(),
            },
            format: WebhookFormat::Generic,
            events: events.to_vec(),
            timeout: "5s".into(),
            attempts: 4,
        }
    }

    fn ev(type_: EventType, reason: &str, message: &str) -> Event {
        Event {
            type_,
            reason: reason.into(),
            message: message.into(),
        }
    }

    #[test]
    fn milestones_are_notified_and_warnings_only_when_asked() {
        let all = webhook(&[]);
        for reason in [
            "StepStarted",
            "ApprovalNeeded",
            "Promoted",
            "RolledBack",
            "CommandApplied",
        ] {
            let k = kind_of(&ev(EventType::Normal, reason, "")).unwrap();
            assert!(wants(&all, k), "{reason}");
        }
        assert_eq!(
            kind_of(&ev(EventType::Warning, "Failed", "")),
            Some(NotificationKind::Failed)
        );
        assert_eq!(
            kind_of(&ev(EventType::Warning, "RollbackStarted", "")),
            Some(NotificationKind::RollbackStarted),
            "a rollback is told when it begins, not only when it ends"
        );
        assert!(wants(&all, NotificationKind::RollbackStarted));
        let w = kind_of(&ev(EventType::Warning, "TrafficBlocked", "")).unwrap();
        assert_eq!(w, NotificationKind::Warning);
        assert!(!wants(&all, w), "warnings are opt-in");
        assert!(wants(&webhook(&[NotificationKind::Warning]), w));
        assert!(!wants(
            &webhook(&[NotificationKind::RolledBack]),
            NotificationKind::StepStarted
        ));
        for reason in ["Promoting", "CandidateChanged", "Decommissioned", "Paused"] {
            assert_eq!(
                kind_of(&ev(EventType::Normal, reason, "")),
                None,
                "{reason}"
            );
        }
    }

    #[test]
    fn a_rollback_says_why_where_and_how_fast() {
        let status = EmbeddingRolloutStatus {
            phase: Phase::RolledBack,
            current_step: 1,
            current_weight: 0,
            ..Default::default()
        };
        let msg =
            "rolled back in 0.1s (10.1s after the first failing check): candidate P95 49.9 ms";
        let now = DateTime::parse_from_rfc3339("2026-12-03T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let n = from_decision(
            "prod",
            "embed",
            Some("0b9c-uid"),
            &spec(),
            &status,
            &[
                ev(EventType::Normal, "Promoting", "x"),
                ev(EventType::Normal, "RolledBack", msg),
            ],
            now,
        );
        assert_eq!(n.len(), 1);
        assert_eq!(
            n[0].uid.as_deref(),
            Some("0b9c-uid"),
            "its event is the rollout's"
        );
        let b = body(&n[0], WebhookFormat::Generic);
        assert_eq!(b["kind"], "RolledBack");
        assert_eq!(b["rollout"], "embed");
        assert_eq!(b["namespace"], "prod");
        assert_eq!(b["message"], msg);
        assert_eq!(b["step"], "2/4", "people count steps from 1");
        assert_eq!(b["phase"], "RolledBack");
        assert_eq!(b["time"], "2026-12-03T00:00:00.000Z");
        assert_eq!(b["candidateImage"], "candle-embedder:v2");
        let s = body(&n[0], WebhookFormat::Slack);
        assert!(s["text"]
            .as_str()
            .unwrap()
            .starts_with("*RolledBack* prod/embed: rolled back in 0.1s"));
        assert_eq!(s["attachments"][0]["color"], "danger");
    }

    #[test]
    fn a_command_names_who_sent_it_and_slack_text_is_escaped() {
        let status = EmbeddingRolloutStatus {
            phase: Phase::Paused,
            commands: vec![CommandRecord {
                command: "pause".into(),
                by: Some("alice@example.com".into()),
                manager: Some("kubectl-embeddingrollout".into()),
                requested_at: None,
                handled_at: Utc::now(),
                phase: Phase::Progressing,
                result: "Applied".into(),
                message: "pause: holding the current weight".into(),
            }],
            ..Default::default()
        };
        let n = from_decision(
            "prod",
            "embed",
            None,
            &spec(),
            &status,
            &[ev(
                EventType::Normal,
                "CommandApplied",
                "pause <now> & hold",
            )],
            Utc::now(),
        );
        let b = body(&n[0], WebhookFormat::Generic);
        assert_eq!(b["kind"], "Command");
        assert_eq!(b["by"], "alice@example.com");
        assert_eq!(b["manager"], "kubectl-embeddingrollout");
        let s = body(&n[0], WebhookFormat::Slack);
        assert!(s["text"]
            .as_str()
            .unwrap()
            .ends_with("pause &lt;now&gt; &amp; hold"));
        let fields = s["attachments"][0]["fields"].as_array().unwrap();
        assert!(fields
            .iter()
            .any(|f| f["title"] == "By" && f["value"] == "alice@example.com"));
    }
}
