//! Leader election on a `coordination.k8s.io/v1` Lease (kube 5 ships none).
//!
//! Expiry is judged on the local monotonic clock: a lease is free when its record (holder +
//! renewTime) has not changed for a full lease duration *as we observed it*, like client-go does.
//! Comparing the holder's `renewTime` with our wall clock would let clock skew between nodes
//! produce two leaders. Writes use the Lease's resourceVersion, so two candidates racing for a
//! free lease cannot both win: the loser gets 409 Conflict and keeps waiting.
//!
//! Losing the lease ends the process (the caller exits): a restart is simpler to reason about
//! than a controller that must stop mid-reconcile and later resume.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    api::{Api, PostParams},
    Client,
};

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub lease_duration: Duration,
    /// The leader gives up (and exits) when it could not renew for this long; must be shorter
    /// than `lease_duration` so it stops before anyone else may take over.
    pub renew_deadline: Duration,
    /// Pause between attempts (acquiring and renewing).
    pub retry_period: Duration,
}

impl LeaseConfig {
    pub fn new(name: String, namespace: String, identity: String) -> Self {
        Self {
            name,
            namespace,
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// The parts of a Lease the election looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub holder: Option<String>,
    pub duration: Duration,
    /// Opaque marker of the holder's last renewal; a change means the holder is alive.
    pub renew_marker: Option<String>,
}

impl LeaseRecord {
    fn from_lease(lease: &Lease, default_duration: Duration) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            duration: spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(default_duration, Duration::from_secs),
            renew_marker: spec.renew_time.map(|t| t.0.to_string()),
        }
    }
}

/// Answer of "may I take (or keep) the lease?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// There is no Lease object: create it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Nobody holds it, or the holder stopped renewing: take it over.
    TakeOver,
    /// Someone else holds a live lease; look again after at most `recheck_in`.
    Wait {
        holder: String,
        recheck_in: Duration,
    },
}

/// Pure election rule. `unchanged_for` is how long (local monotonic time) we have seen the
/// current record without any change.
pub fn judge(record: Option<&LeaseRecord>, me: &str, unchanged_for: Duration) -> Verdict {
    let Some(record) = record else {
        return Verdict::Create;
    };
    match record.holder.as_deref() {
        None => Verdict::TakeOver,
        Some(h) if h == me => Verdict::Renew,
        Some(_) if unchanged_for >= record.duration => Verdict::TakeOver,
        Some(h) => Verdict::Wait {
            holder: h.to_string(),
            recheck_in: record.duration - unchanged_for,
        },
    }
}

/// Tracks when the observed record last changed, on the local monotonic clock.
#[derive(Debug, Default)]
pub struct Observation {
    last: Option<(LeaseRecord, Instant)>,
}

impl Observation {
    /// Record what we just read; returns how long it has been unchanged.
    pub fn observe(&mut self, record: &LeaseRecord, now: Instant) -> Duration {
        match &self.last {
            Some((prev, since)) if prev == record => now.saturating_duration_since(*since),
            _ => {
                self.last = Some((record.clone(), now));
                Duration::ZERO
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("could not renew lease {name} within {deadline:?}: {last}")]
    Lost {
        name: String,
        deadline: Duration,
        last: String,
    },
    #[error("lease {0} was taken by {1}")]
    TakenBy(String, String),
}

pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
}

enum Attempt {
    Acquired,
    Wait(Duration),
}

impl Elector {
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        let api = Api::namespaced(client, &cfg.namespace);
        Self { api, cfg }
    }

    /// Block until we hold the lease.
    pub async fn acquire(&self) {
        let mut seen = Observation::default();
        loop {
            match self.try_acquire(&mut seen).await {
                Ok(Attempt::Acquired) => {
                    tracing::info!(lease = %self.cfg.name, identity = %self.cfg.identity, "acquired leadership");
                    return;
                }
                Ok(Attempt::Wait(d)) => tokio::time::sleep(d.min(self.cfg.retry_period)).await,
                Err(e) => {
                    // 409 (lost a race) and transient API errors alike: look again later.
                    tracing::debug!(error = %e, "lease acquisition attempt failed");
                    tokio::time::sleep(self.cfg.retry_period).await;
                }
            }
        }
    }

    async fn try_acquire(&self, seen: &mut Observation) -> Result<Attempt, kube::Error> {
        let current = self.api.get_opt(&self.cfg.name).await?;
        let record = current
            .as_ref()
            .map(|l| LeaseRecord::from_lease(l, self.cfg.lease_duration));
        let unchanged = record
            .as_ref()
            .map_or(Duration::ZERO, |r| seen.observe(r, Instant::now()));
        match judge(record.as_ref(), &self.cfg.identity, unchanged) {
            Verdict::Create => {
                self.api
                    .create(&PostParams::default(), &self.lease(None, true))
                    .await?;
                Ok(Attempt::Acquired)
            }
            Verdict::Renew | Verdict::TakeOver => {
                let current = current.expect("a verdict other than Create has a lease");
                let taking_over =
                    record.and_then(|r| r.holder).as_deref() != Some(self.cfg.identity.as_str());
                self.write(&current, taking_over).await?;
                Ok(Attempt::Acquired)
            }
            Verdict::Wait { holder, recheck_in } => {
                tracing::debug!(%holder, ?recheck_in, "lease held by another instance");
                Ok(Attempt::Wait(recheck_in))
            }
        }
    }

    /// Renew forever; returns only when leadership is lost.
    pub async fn hold(&self) -> LeaseError {
        let mut last_renewal = Instant::now();
        let mut last_error = String::from("no attempt yet");
        loop {
            tokio::time::sleep(self.cfg.retry_period).await;
            match self.renew_once().await {
                Ok(()) => last_renewal = Instant::now(),
                Err(RenewError::TakenBy(holder)) => {
                    return LeaseError::TakenBy(self.cfg.name.clone(), holder)
                }
                Err(RenewError::Api(e)) => {
                    tracing::warn!(error = %e, "lease renewal failed");
                    last_error = e.to_string();
                }
            }
            if last_renewal.elapsed() >= self.cfg.renew_deadline {
                return LeaseError::Lost {
                    name: self.cfg.name.clone(),
                    deadline: self.cfg.renew_deadline,
                    last: last_error,
                };
            }
        }
    }

    async fn renew_once(&self) -> Result<(), RenewError> {
        let current = self
            .api
            .get(&self.cfg.name)
            .await
            .map_err(RenewError::Api)?;
        let holder = current
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone());
        match holder.as_deref() {
            Some(h) if h == self.cfg.identity => {
                self.write(&current, false).await.map_err(RenewError::Api)
            }
            other => Err(RenewError::TakenBy(other.unwrap_or("nobody").to_string())),
        }
    }

    /// Give the lease up on clean shutdown so a successor need not wait for expiry.
    pub async fn release(&self) {
        let Ok(Some(current)) = self.api.get_opt(&self.cfg.name).await else {
            return;
        };
        let mine = current
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(self.cfg.identity.as_str());
        if !mine {
            return;
        }
        let mut released = current.clone();
        if let Some(spec) = released.spec.as_mut() {
            spec.holder_identity = None;
            spec.renew_time = Some(MicroTime(Timestamp::now()));
        }
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &released)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.cfg.name, "released leadership"),
            Err(e) => tracing::warn!(error = %e, "could not release the lease"),
        }
    }

    fn lease(&self, previous: Option<&Lease>, taking_over: bool) -> Lease {
        let now = MicroTime(Timestamp::now());
        let prev_spec = previous.and_then(|l| l.spec.clone()).unwrap_or_default();
        let transitions = prev_spec.lease_transitions.unwrap_or(0);
        Lease {
            metadata: match previous {
                // Keeping resourceVersion makes the replace conditional on what we read.
                Some(l) => l.metadata.clone(),
                None => ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.cfg.identity.clone()),
                lease_duration_seconds: Some(
                    i32::try_from(self.cfg.lease_duration.as_secs()).unwrap_or(i32::MAX),
                ),
                acquire_time: if taking_over || previous.is_none() {
                    Some(now.clone())
                } else {
                    prev_spec.acquire_time
                },
                renew_time: Some(now),
                lease_transitions: Some(if taking_over && previous.is_some() {
                    transitions + 1
                } else {
                    transitions
                }),
                ..LeaseSpec::default()
            }),
        }
    }

    async fn write(&self, current: &Lease, taking_over: bool) -> Result<(), kube::Error> {
        self.api
            .replace(
                &self.cfg.name,
                &PostParams::default(),
                &self.lease(Some(current), taking_over),
            )
            .await
            .map(|_| ())
    }
}

enum RenewError {
    TakenBy(String),
    Api(kube::Error),
}

/// Default identity: the pod name when the Downward API provides it, else host name and pid so
/// two local instances never share one.
pub fn default_identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME") {
        if !pod.is_empty() {
            return pod;
        }
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "operator".to_string());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str) -> LeaseRecord {
        LeaseRecord {
            holder: Some(holder.into()),
            duration: Duration::from_secs(15),
            renew_marker: Some("t1".into()),
        }
    }

    #[test]
    fn no_lease_object_means_create_it() {
        assert_eq!(judge(None, "me", Duration::ZERO), Verdict::Create);
    }

    #[test]
    fn own_lease_is_renewed() {
        assert_eq!(
            judge(Some(&held_by("me")), "me", Duration::from_secs(100)),
            Verdict::Renew
        );
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let mut r = held_by("other");
        r.holder = None;
        assert_eq!(judge(Some(&r), "me", Duration::ZERO), Verdict::TakeOver);
    }

    #[test]
    fn a_live_lease_of_another_is_respected_until_it_expires() {
        let r = held_by("other");
        assert_eq!(
            judge(Some(&r), "me", Duration::from_secs(5)),
            Verdict::Wait {
                holder: "other".into(),
                recheck_in: Duration::from_secs(10)
            }
        );
        assert!(matches!(
            judge(Some(&r), "me", Duration::from_millis(14_999)),
            Verdict::Wait { .. }
        ));
        assert_eq!(
            judge(Some(&r), "me", Duration::from_secs(15)),
            Verdict::TakeOver
        );
    }

    #[test]
    fn expiry_counts_from_the_last_change_we_saw_not_from_the_holders_clock() {
        let start = Instant::now();
        let mut seen = Observation::default();
        let r1 = held_by("other");
        assert_eq!(seen.observe(&r1, start), Duration::ZERO);
        assert_eq!(
            seen.observe(&r1, start + Duration::from_secs(10)),
            Duration::from_secs(10)
        );
        // The holder renewed: the clock restarts, whatever renewTime says.
        let mut r2 = r1.clone();
        r2.renew_marker = Some("t2".into());
        assert_eq!(
            seen.observe(&r2, start + Duration::from_secs(12)),
            Duration::ZERO
        );
        let unchanged = seen.observe(&r2, start + Duration::from_secs(20));
        assert!(matches!(
            judge(Some(&r2), "me", unchanged),
            Verdict::Wait { .. }
        ));
        let unchanged = seen.observe(&r2, start + Duration::from_secs(27));
        assert_eq!(judge(Some(&r2), "me", unchanged), Verdict::TakeOver);
    }

    #[test]
    fn a_new_holder_restarts_the_clock() {
        let start = Instant::now();
        let mut seen = Observation::default();
        seen.observe(&held_by("a"), start);
        assert_eq!(
            seen.observe(&held_by("b"), start + Duration::from_secs(30)),
            Duration::ZERO
        );
    }

    #[test]
    fn identities_differ_between_processes_on_one_host() {
        if std::env::var_os("POD_NAME").is_some() {
            return;
        }
        assert!(default_identity().ends_with(&format!("-{}", std::process::id())));
    }
}
