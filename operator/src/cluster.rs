//! Small, idempotent writes to the API server, each one call the decision's actions map onto.
//!
//! Owned objects (candidate Deployment/Service/ConfigMap, canary Ingress) are server-side
//! applied with our field manager, so re-applying the same object is a no-op and fields other
//! controllers own (e.g. an HPA's replicas, kubectl annotations) are left alone. Objects we do not
//! own (primary Ingress, baseline Deployment) get narrow merge patches; the primary's backend
//! patch carries the resourceVersion it was computed from, so a concurrent edit gives 409 and a
//! fresh reconcile instead of a lost update.

use std::fmt::Debug;

use k8s_openapi::{
    api::{apps::v1::Deployment, networking::v1::Ingress},
    NamespaceResourceScope,
};
use kube::{
    api::{Api, DeleteParams, Patch, PatchParams},
    Client, Resource,
};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::json;

use crate::{
    traffic::nginx::{retarget_backends, BackendChange, ServiceTarget},
    workload::MANAGER,
};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0} changed while we worked on it (409 Conflict); will re-read and retry")]
    Conflict(String),
    #[error("{0} not found")]
    Missing(String),
    /// 403: the operator's role lacks a verb; retrying soon will not help.
    #[error("{what}: forbidden (403): {message}")]
    Forbidden { what: String, message: String },
    /// 422: the API server refused the object as invalid; nothing changes until the spec or
    /// the operator does.
    #[error("{what}: rejected as invalid (422): {message}")]
    Invalid { what: String, message: String },
}

impl ClusterError {
    /// The one mapping from kube's errors to the operator's.
    pub fn from_kube(what: String, e: kube::Error) -> Self {
        match &e {
            kube::Error::Api(s) if s.code == 409 => ClusterError::Conflict(what),
            kube::Error::Api(s) if s.code == 403 => ClusterError::Forbidden {
                what,
                message: s.message.clone(),
            },
            kube::Error::Api(s) if s.code == 422 => ClusterError::Invalid {
                what,
                message: s.message.clone(),
            },
            _ => ClusterError::Api { what, source: e },
        }
    }

    /// For a JSON patch guarded by a `test` operation: a failed test (422, "test operation
    /// failed" / "testing value") means someone changed the field meanwhile, a conflict.
    pub fn from_kube_guarded(what: String, e: kube::Error) -> Self {
        match &e {
            kube::Error::Api(s)
                if s.code == 422 && s.message.to_ascii_lowercase().contains("test") =>
            {
                ClusterError::Conflict(what)
            }
            _ => Self::from_kube(what, e),
        }
    }

    pub fn is_conflict(&self) -> bool {
        matches!(self, ClusterError::Conflict(_))
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Merge patches are recorded under our name too, so `managedFields` says who changed what.
fn merge_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.to_string()),
        ..PatchParams::default()
    }
}

fn describe<K: Resource<DynamicType = ()>>(name: &str) -> String {
    format!("{} {name}", K::kind(&()))
}

/// The namespaced typed API for `K` in `ns`.
/// "403 Forbidden: secrets \"x\" is forbidden: ..." for API errors, the error chain otherwise:
/// what the status and events say when a read the user's spec asks for fails.
pub fn describe_kube_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => other.to_string(),
    }
}

pub fn api<K>(client: &Client, ns: &str) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(client.clone(), ns)
}

pub async fn get_opt<K>(api: &Api<K>, name: &str) -> Result<Option<K>, ClusterError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    api.get_opt(name)
        .await
        .map_err(|e| ClusterError::from_kube(format!("reading {}", describe::<K>(name)), e))
}

/// Every object of `api` (one page; a namespace holds few autoscalers).
pub async fn list<K>(api: &Api<K>) -> Result<Vec<K>, ClusterError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    api.list(&kube::api::ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|e| ClusterError::from_kube(format!("listing {}s", K::kind(&())), e))
}

/// Server-side apply `obj` (which must carry its name) with our field manager.
pub async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K, ClusterError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|e| ClusterError::from_kube(format!("applying {}", describe::<K>(&name)), e))
}

/// Delete if present; absent is success.
pub async fn delete_if_exists<K>(api: &Api<K>, name: &str) -> Result<bool, ClusterError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(ClusterError::from_kube(
            format!("deleting {}", describe::<K>(name)),
            e,
        )),
    }
}

/// Set `spec.replicas` of a Deployment we may not own (the baseline) with a narrow merge patch.
/// Returns the resourceVersion it wrote.
pub async fn scale_deployment(
    api: &Api<Deployment>,
    name: &str,
    replicas: i32,
) -> Result<Option<String>, ClusterError> {
    let patch = json!({"spec": {"replicas": replicas}});
    match api
        .patch(name, &merge_params(), &Patch::Merge(&patch))
        .await
    {
        Ok(d) => Ok(d.metadata.resource_version),
        Err(e) if is_not_found(&e) => Err(ClusterError::Missing(describe::<Deployment>(name))),
        Err(e) => Err(ClusterError::from_kube(
            format!("scaling {} to {replicas}", describe::<Deployment>(name)),
            e,
        )),
    }
}

/// Point the primary Ingress's backends on Service `from` at `to`. Returns what changed (empty
/// when it already routes there, in which case nothing is written) and the resourceVersion
/// written. Reads the Ingress live: the patch is guarded by the version it was computed from.
pub async fn retarget_primary(
    api: &Api<Ingress>,
    name: &str,
    from: &str,
    to: &ServiceTarget,
) -> Result<(Vec<BackendChange>, Option<String>), ClusterError> {
    let ingress = get_opt(api, name)
        .await?
        .ok_or_else(|| ClusterError::Missing(describe::<Ingress>(name)))?;
    let spec = ingress.spec.clone().unwrap_or_default();
    let (new_spec, changes) = retarget_backends(&spec, from, to);
    if changes.is_empty() {
        return Ok((changes, None));
    }
    // Merge patch replaces `rules` as a whole; the resourceVersion makes that safe.
    let patch = json!({
        "metadata": {"resourceVersion": ingress.metadata.resource_version},
        "spec": {"rules": new_spec.rules, "defaultBackend": new_spec.default_backend},
    });
    let written = api
        .patch(name, &merge_params(), &Patch::Merge(&patch))
        .await
        .map_err(|e| {
            ClusterError::from_kube(format!("retargeting {}", describe::<Ingress>(name)), e)
        })?;
    Ok((changes, written.metadata.resource_version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("boom", "Reason")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn a_409_is_a_conflict_everything_else_an_api_error() {
        assert!(ClusterError::from_kube("x".into(), api_error(409)).is_conflict());
        let other = ClusterError::from_kube("writing x".into(), api_error(500));
        assert!(!other.is_conflict());
        assert!(other.to_string().starts_with("writing x: "), "{other}");
        assert!(is_not_found(&api_error(404)));
        assert!(!is_not_found(&api_error(403)));
    }
}
