//! TEST HARNESS: the Deployment status the deployment runner writes, computed as the Deployment
//! controller would (pure).

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Resolve an IntOrString against `total` (percent rounds up for surge, down for unavailable).
fn resolve(v: Option<&IntOrString>, default_percent: i32, total: i32, round_up: bool) -> i32 {
    match v {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let p = s
                .trim_end_matches('%')
                .parse::<i32>()
                .unwrap_or(default_percent);
            percent_of(p, total, round_up)
        }
        None => percent_of(default_percent, total, round_up),
    }
}

fn percent_of(p: i32, total: i32, round_up: bool) -> i32 {
    let x = p as i64 * total as i64;
    (if round_up { (x + 99) / 100 } else { x / 100 }) as i32
}

/// (maxSurge, maxUnavailable) as the Deployment controller resolves them.
pub fn fenceposts(d: &Deployment, desired: i32) -> (i32, i32) {
    let strategy = d.spec.as_ref().and_then(|s| s.strategy.as_ref());
    if strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate") {
        return (0, desired);
    }
    let ru = strategy.and_then(|s| s.rolling_update.as_ref());
    let surge = resolve(ru.and_then(|r| r.max_surge.as_ref()), 25, desired, true);
    let mut unavailable = resolve(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        25,
        desired,
        false,
    );
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge.max(0), unavailable.clamp(0, desired.max(0)))
}

/// Inputs of the status computation.
#[derive(Debug, Clone, Copy)]
pub struct StatusInput<'a> {
    pub name: &'a str,
    pub hash: &'a str,
    pub generation: i64,
    pub desired: i32,
    pub max_unavailable: i32,
    pub total: i32,
    pub updated: i32,
    pub ready: i32,
    pub available: i32,
    pub progress_deadline_exceeded: bool,
}

impl StatusInput<'_> {
    fn complete(&self) -> bool {
        self.updated == self.desired && self.total == self.desired && self.available == self.desired
    }
}

fn condition(
    prev: Option<&DeploymentStatus>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    now: &Time,
) -> DeploymentCondition {
    let status = if status { "True" } else { "False" }.to_string();
    let old = prev
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_));
    if let Some(old) = old {
        if old.status == status
            && old.reason.as_deref() == Some(reason)
            && old.message.as_deref() == Some(message.as_str())
        {
            return old.clone();
        }
    }
    let transition = match old {
        Some(o) if o.status == status => o.last_transition_time.clone(),
        _ => Some(now.clone()),
    };
    DeploymentCondition {
        type_: type_.to_string(),
        status,
        reason: Some(reason.to_string()),
        message: Some(message),
        last_update_time: Some(now.clone()),
        last_transition_time: transition,
    }
}

/// The Deployment status the controller would write. Pure: timestamps of unchanged conditions are
/// kept from `prev`; fields this runner does not own are kept as they are.
pub fn deployment_status(
    prev: Option<&DeploymentStatus>,
    i: StatusInput<'_>,
    now: &Time,
) -> DeploymentStatus {
    let min_available = i.desired - i.max_unavailable;
    let available = condition(
        prev,
        "Available",
        i.available >= min_available,
        if i.available >= min_available {
            "MinimumReplicasAvailable"
        } else {
            "MinimumReplicasUnavailable"
        },
        if i.available >= min_available {
            "Deployment has minimum availability.".to_string()
        } else {
            "Deployment does not have minimum availability.".to_string()
        },
        now,
    );
    let rs = format!("{}-{}", i.name, i.hash);
    let progressing = if i.complete() {
        condition(
            prev,
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{rs}\" has successfully progressed."),
            now,
        )
    } else if i.progress_deadline_exceeded {
        condition(
            prev,
            "Progressing",
            false,
            "ProgressDeadlineExceeded",
            format!("ReplicaSet \"{rs}\" has timed out progressing."),
            now,
        )
    } else {
        condition(
            prev,
            "Progressing",
            true,
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{rs}\" is progressing."),
            now,
        )
    };
    let mut s = prev.cloned().unwrap_or_default();
    s.observed_generation = Some(i.generation);
    s.replicas = Some(i.total);
    s.updated_replicas = Some(i.updated);
    s.ready_replicas = Some(i.ready);
    s.available_replicas = Some(i.available);
    s.unavailable_replicas = Some((i.desired - i.available).max(0));
    s.conditions = Some(vec![available, progressing]);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(v: serde_json::Value) -> Deployment {
        serde_json::from_value(v).unwrap()
    }

    fn input(
        desired: i32,
        total: i32,
        updated: i32,
        ready: i32,
        available: i32,
    ) -> StatusInput<'static> {
        StatusInput {
            name: "d",
            hash: "h",
            generation: 3,
            desired,
            max_unavailable: 0,
            total,
            updated,
            ready,
            available,
            progress_deadline_exceeded: false,
        }
    }

    fn cond<'a>(s: &'a DeploymentStatus, t: &str) -> &'a DeploymentCondition {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
    }

    #[test]
    fn status_reports_counts_and_kubernetes_condition_reasons() {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let s = deployment_status(None, input(2, 2, 2, 1, 1), &now);
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(
            (
                s.replicas,
                s.ready_replicas,
                s.available_replicas,
                s.updated_replicas
            ),
            (Some(2), Some(1), Some(1), Some(2))
        );
        assert_eq!(s.unavailable_replicas, Some(1));
        assert_eq!(cond(&s, "Available").status, "False");
        assert_eq!(
            cond(&s, "Progressing").reason.as_deref(),
            Some("ReplicaSetUpdated")
        );

        let later = Time(now.0 + k8s_openapi::jiff::SignedDuration::from_secs(5));
        let s2 = deployment_status(Some(&s), input(2, 2, 2, 2, 2), &later);
        assert_eq!(cond(&s2, "Available").status, "True");
        assert_eq!(
            cond(&s2, "Available").reason.as_deref(),
            Some("MinimumReplicasAvailable")
        );
        assert_eq!(
            cond(&s2, "Progressing").reason.as_deref(),
            Some("NewReplicaSetAvailable")
        );
        // Progressing stayed True: its transition time is kept.
        assert_eq!(
            cond(&s2, "Progressing").last_transition_time,
            Some(now.clone())
        );
        assert_eq!(
            cond(&s2, "Available").last_transition_time,
            Some(later.clone())
        );
        // Nothing changed: the very same status (no write needed).
        let s3 = deployment_status(
            Some(&s2),
            input(2, 2, 2, 2, 2),
            &Time(later.0 + k8s_openapi::jiff::SignedDuration::from_secs(5)),
        );
        assert_eq!(s3, s2);
    }

    #[test]
    fn zero_counts_are_written_explicitly() {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let s = deployment_status(None, input(0, 0, 0, 0, 0), &now);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["readyReplicas"], 0, "a merge patch must carry zeros: {v}");
        assert_eq!(v["availableReplicas"], 0);
    }

    #[test]
    fn deadline_exceeded_sets_progressing_false() {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let mut i = input(2, 2, 1, 1, 1);
        i.progress_deadline_exceeded = true;
        let s = deployment_status(None, i, &now);
        assert_eq!(cond(&s, "Progressing").status, "False");
        assert_eq!(
            cond(&s, "Progressing").reason.as_deref(),
            Some("ProgressDeadlineExceeded")
        );
    }

    #[test]
    fn fenceposts_follow_the_deployment_controller() {
        let d = deployment(serde_json::json!({"spec": {"selector": {}, "template": {}}}));
        assert_eq!(fenceposts(&d, 4), (1, 1));
        assert_eq!(fenceposts(&d, 2), (1, 0));
        assert_eq!(fenceposts(&d, 1), (1, 0));
        let d = deployment(serde_json::json!({"spec": {"selector": {}, "template": {},
            "strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}}}));
        assert_eq!(fenceposts(&d, 3), (0, 1));
        let d = deployment(
            serde_json::json!({"spec": {"selector": {}, "template": {}, "strategy": {"type": "Recreate"}}}),
        );
        assert_eq!(fenceposts(&d, 3), (0, 3));
    }
}
