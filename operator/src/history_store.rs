//! The shell of [`crate::history`]: after the reconcile's status write, appends every analysis
//! of `status.history` that no `EmbeddingRolloutAnalysis` holds yet.
//!
//! **After the status write, not before.** The status is what the rollout acted on: an analysis
//! appended before a status write that then fails (a 409, a 422) would be kept although the
//! rollout never counted it, and the next reconcile takes another one at another time. Written
//! after, the kept analyses are exactly those of the status. Nor may keeping evidence hold up
//! the safety net: a missing CRD, a missing permission or a slow API server delays no status
//! write, no rollback.
//!
//! **Restart-safe, never twice.** `status.history` (the last ten analyses) is the outbox. The
//! watermark, the time of the newest analysis kept, is read back from the newest object after a
//! restart (one metadata-only list of the rollout's objects and one GET), and only analyses newer
//! than it are appended, oldest first, stopping at the first failure. Each append is a JSON
//! patch that `test`s the object's count first: a retried request that had landed, or a former
//! leader's append, makes it fail (422), and the object is read again; one that already holds
//! the analysis (by its time) is not appended again.
//!
//! **Never lost silently.** A failed append is a Warning event (`HistoryAppendFailed`) and is
//! tried again at the next reconcile (requeued within [`RETRY`]). An outage longer than ten
//! analyses leaves a gap: the look numbers show it, the `HistoryGap` event counts it.
//!
//! **Why a JSON patch and not server-side apply or an update.** The patch carries the one new
//! analysis (about 0.5 KiB); an update or a merge patch would send the whole object (up to
//! [`crate::history::OBJECT_BYTES`]) every minute, read first. Server-side apply of a list
//! removes the items the same manager applied before and now leaves out, so it too would send
//! the whole list. The `test` of the count is the optimistic lock a resourceVersion would be,
//! without failing on unrelated writes (labels, annotations by people).

use std::{collections::HashMap, sync::Mutex, time::Duration};

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{
    api::{Api, ListParams, Patch, PatchParams, PostParams},
    Client, Resource, ResourceExt,
};

use crate::{
    cluster::ClusterError,
    crd::{
        AnalysisRecord, EmbeddingRollout, EmbeddingRolloutAnalysis, EmbeddingRolloutStatus,
        HISTORY_LIMIT, ROLLOUT_LABEL,
    },
    history::{self, Place, Tail},
    workload::MANAGER,
};

/// A rollout whose analyses could not all be kept is reconciled again within this.
pub const RETRY: Duration = Duration::from_secs(30);
/// Tries per analysis when the object changes under us (another writer, a deleted object).
const ATTEMPTS: usize = 3;

/// What this process knows of each rollout's objects, by rollout uid.
#[derive(Default)]
pub struct Keeper {
    known: Mutex<HashMap<String, Known>>,
}

#[derive(Clone, Debug, Default)]
struct Known {
    /// The newest analysis kept.
    watermark: Option<DateTime<Utc>>,
    /// The object the next analysis of its run goes to.
    tail: Option<Tail>,
}

/// What one call did.
#[derive(Debug, Default, PartialEq)]
pub struct Kept {
    /// Analyses appended now.
    pub appended: usize,
    /// Analyses no object will hold (they left `status.history` during an outage), in words.
    pub gaps: Vec<String>,
    /// Why the analyses not appended wait for the next reconcile.
    pub failed: Option<String>,
}

impl Keeper {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops what is known of a deleted rollout.
    pub fn forget(&self, rollout: &EmbeddingRollout) {
        if let Some(uid) = rollout.metadata.uid.as_deref() {
            self.lock().remove(uid);
        }
    }

    /// Appends the analyses of `status` (as written) that no object holds yet.
    pub async fn keep(
        &self,
        client: &Client,
        rollout: &EmbeddingRollout,
        status: &EmbeddingRolloutStatus,
    ) -> Kept {
        let mut kept = Kept::default();
        // Without a uid the rollout is not from the API server: nothing can own the objects.
        let (Some(uid), Some(owner)) = (rollout.metadata.uid.clone(), owner(rollout)) else {
            return kept;
        };
        if status.history.is_empty() {
            return kept;
        }
        let ns = rollout.namespace().unwrap_or_default();
        let api: Api<EmbeddingRolloutAnalysis> = Api::namespaced(client.clone(), &ns);
        // Taken out while in use; kube-runtime never reconciles one object twice at once.
        let cached = self.lock().remove(&uid);
        let mut known = match cached {
            Some(k) => k,
            None => match load(&api, &owner).await {
                Ok(k) => k,
                Err(e) => {
                    kept.failed = Some(format!(
                        "{} analyses not kept yet: {e}; they wait in status.history (the last \
                         {HISTORY_LIMIT}) for the next reconcile",
                        history::pending(status, None).len()
                    ));
                    return kept;
                }
            },
        };
        let pending = history::pending(status, known.watermark);
        let steps = rollout.spec.steps.len();
        for (i, a) in pending.iter().enumerate() {
            match append(&api, &owner, steps, status, &mut known, a).await {
                Ok(missing) => {
                    kept.appended += 1;
                    if missing > 0 {
                        let look = a.look.unwrap_or(0);
                        kept.gaps.push(format!(
                            "{missing} analyses of step {}/{steps} (looks {}-{}) were never kept: \
                             they left status.history (the last {HISTORY_LIMIT}) before they could \
                             be appended",
                            a.step + 1,
                            look - missing,
                            look - 1
                        ));
                    }
                }
                Err(e) => {
                    kept.failed = Some(format!(
                        "the analysis of {} (step {}/{steps}) was not kept: {e}; it and {} newer \
                         wait in status.history (the last {HISTORY_LIMIT}) for the next reconcile",
                        a.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        a.step + 1,
                        pending.len() - i - 1
                    ));
                    break;
                }
            }
        }
        self.lock().insert(uid, known);
        kept
    }
}

/// Owned by the rollout (see [`history::new_object`] for the flags).
fn owner(rollout: &EmbeddingRollout) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: EmbeddingRollout::api_version(&()).into_owned(),
        kind: EmbeddingRollout::kind(&()).into_owned(),
        name: rollout.metadata.name.clone()?,
        uid: rollout.metadata.uid.clone()?,
        controller: Some(false),
        block_owner_deletion: Some(true),
    })
}

/// The newest object of the rollout and its newest analysis: one metadata-only list (labels
/// tell the newest), one GET.
async fn load(
    api: &Api<EmbeddingRolloutAnalysis>,
    owner: &OwnerReference,
) -> Result<Known, ClusterError> {
    let params = ListParams::default().labels(&format!("{ROLLOUT_LABEL}={}", owner.name));
    let list = api
        .list_metadata(&params)
        .await
        .map_err(|e| explain("listing EmbeddingRolloutAnalyses".into(), e))?;
    let metas: Vec<_> = list.items.into_iter().map(|m| m.metadata).collect();
    let Some(name) = history::newest(&metas, Some(&owner.uid)).and_then(|m| m.name.clone()) else {
        return Ok(Known::default());
    };
    let obj = api
        .get_opt(&name)
        .await
        .map_err(|e| explain(format!("reading EmbeddingRolloutAnalysis {name}"), e))?;
    Ok(match obj {
        Some(obj) => {
            let tail = Tail::of(&obj);
            Known {
                watermark: Some(tail.last_time),
                tail: Some(tail),
            }
        }
        None => Known::default(),
    })
}

/// Appends one analysis; returns how many analyses of its run are missing before it.
async fn append(
    api: &Api<EmbeddingRolloutAnalysis>,
    owner: &OwnerReference,
    steps: usize,
    status: &EmbeddingRolloutStatus,
    known: &mut Known,
    record: &AnalysisRecord,
) -> Result<u32, ClusterError> {
    if known.watermark.is_some_and(|w| record.time <= w) {
        // Kept meanwhile (found so when an earlier append met another writer's).
        return Ok(0);
    }
    let run = history::run_of(status, record);
    let a = history::compact(record);
    let missing = history::missing_before(known.tail.as_ref(), &run, &a);
    let params = PatchParams {
        field_manager: Some(MANAGER.to_string()),
        ..PatchParams::default()
    };
    let mut place = history::place(known.tail.as_ref(), &run, &a);
    for _ in 0..ATTEMPTS {
        let name = match (&place, known.tail.as_ref()) {
            (Place::Append, Some(tail)) => {
                let patch: json_patch::Patch =
                    serde_json::from_value(history::append_patch(tail, &a))
                        .expect("a well-formed JSON patch");
                match api
                    .patch(&tail.name, &params, &Patch::Json::<()>(patch))
                    .await
                {
                    Ok(_) => {
                        if let Some(t) = known.tail.as_mut() {
                            t.push(&a);
                        }
                        known.watermark = Some(a.t);
                        return Ok(missing);
                    }
                    // Deleted meanwhile (by hand): it starts again, at the same place.
                    Err(kube::Error::Api(s)) if s.code == 404 => {
                        place = Place::New { chunk: tail.chunk };
                        known.tail = None;
                        continue;
                    }
                    Err(e) => {
                        let what = format!("appending to EmbeddingRolloutAnalysis {}", tail.name);
                        match ClusterError::from_kube_guarded(what, e) {
                            // The count moved: someone else appended (maybe this very one).
                            ClusterError::Conflict(_) => tail.name.clone(),
                            other => return Err(other),
                        }
                    }
                }
            }
            (Place::New { chunk }, _) => {
                let obj = history::new_object(
                    owner,
                    api.namespace().unwrap_or_default(),
                    steps,
                    &run,
                    *chunk,
                    &a,
                );
                let name = obj.name_any();
                let params = PostParams {
                    field_manager: Some(MANAGER.to_string()),
                    ..PostParams::default()
                };
                match api.create(&params, &obj).await {
                    Ok(_) => {
                        known.tail = Some(Tail::of(&obj));
                        known.watermark = Some(a.t);
                        return Ok(missing);
                    }
                    // Created meanwhile (a former leader, a request that landed after all).
                    Err(kube::Error::Api(s)) if s.code == 409 => name,
                    Err(e) => {
                        return Err(explain(
                            format!("creating EmbeddingRolloutAnalysis {name}"),
                            e,
                        ))
                    }
                }
            }
            (Place::Append, None) => unreachable!("history::place appends only to a tail"),
        };
        // Read it as it is now: holding the analysis already, or where to go instead.
        let fresh = api
            .get_opt(&name)
            .await
            .map_err(|e| explain(format!("reading EmbeddingRolloutAnalysis {name}"), e))?;
        known.tail = fresh.as_ref().map(Tail::of);
        if let Some(t) = known.tail.as_ref().filter(|t| t.run == run && t.holds(&a)) {
            known.watermark = Some(t.last_time.max(a.t));
            return Ok(0);
        }
        place = match fresh {
            Some(_) => history::place(known.tail.as_ref(), &run, &a),
            // Gone again: create it at its place.
            None => match place {
                Place::New { chunk } => Place::New { chunk },
                Place::Append => Place::New { chunk: 0 },
            },
        };
    }
    Err(ClusterError::Conflict(format!(
        "EmbeddingRolloutAnalysis of step {} ({ATTEMPTS} attempts)",
        run.step + 1
    )))
}

/// kube's error in the operator's terms; a 404 on the resource itself says which CRD is missing.
fn explain(what: String, e: kube::Error) -> ClusterError {
    match &e {
        kube::Error::Api(s) if s.code == 404 => ClusterError::Missing(format!(
            "{what}: 404 {} (is the CRD embeddingrolloutanalyses.rollout.akidb.io installed? \
             kubectl apply --server-side -f crds/)",
            s.message
        )),
        _ => ClusterError::from_kube(what, e),
    }
}
