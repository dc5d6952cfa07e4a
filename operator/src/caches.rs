//! The reflector stores the controller's watches fill, read by [`crate::observe`] instead of a
//! live GET of the same object on every reconcile (issue 13, "Read from the reflector stores").
//!
//! The controller watches every Deployment, Ingress and HorizontalPodAutoscaler in its scope (and
//! the HTTPRoutes with the Gateway API provider): their changes wake the rollouts that own or name
//! them. The same watch streams now go through [`kube::runtime::reflector`] into these stores, so
//! a reconcile reads the candidate and the baseline Deployment, both Ingresses, the autoscalers
//! and the route from memory. What is read where, and why:
//!
//! - **From the store**: the objects [`crate::observe::read`] turns into `Observed`. A watch event
//!   reaches the store before it wakes a reconcile (the reflector applies it first), so a
//!   reconcile caused by a change sees that change.
//! - **Live, always**: the rollout itself when the cache is behind our own status write
//!   ([`crate::controller`]'s `current`), and every read that is the input of a guarded write (the
//!   primary Ingress before retargeting it, which the resourceVersion guards; the HTTPRoute before
//!   its `test`-guarded JSON patch; the primary Ingress the canary is built from): a stale copy
//!   there is a certain 409 or a canary built from old rules, and these run once per step, not
//!   once per reconcile. Secrets, ConfigMaps, gate templates and EndpointSlices are not watched
//!   and stay GETs (Secrets deliberately: the operator keeps no copy of every Secret).
//! - **Live, for a while**: an object this process just wrote, until the store holds the
//!   resourceVersion the write returned (or [`WRITE_MEMORY`] passed). The store lags a write by
//!   the watch's latency, and a reconcile woken by something else in between (our own status
//!   write) would otherwise see the candidate it just created as missing and create it again.
//! - **Live, before the store synced**: an empty store is not "no such object".
//! - **Live, outside the watched scope**: an HTTPRoute in another namespace than the one a
//!   namespaced operator watches.
//!
//! The stores hold trimmed copies ([`trim_deployment`], [`trim_meta`]): the fields `observe` and
//! the watch mappers read, without managedFields, the last-applied annotation and a Deployment's
//! pod template, so that watching every Deployment in the cluster costs little memory.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::FutureExt;
use k8s_openapi::api::{
    apps::v1::{Deployment, DeploymentSpec, DeploymentStatus},
    autoscaling::v2::HorizontalPodAutoscaler,
    networking::v1::Ingress,
};
use kube::{
    runtime::reflector::{ObjectRef, Store},
    Resource,
};

use crate::{crd::CANDIDATE_HASH_ANNOTATION, traffic::httproute::HttpRoute};

/// How long an object this process wrote is read live while the store has not caught up.
pub const WRITE_MEMORY: Duration = Duration::from_secs(30);

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The stores, and what this process wrote that they may not hold yet.
pub struct Caches {
    pub deployments: Store<Deployment>,
    pub ingresses: Store<Ingress>,
    pub autoscalers: Store<HorizontalPodAutoscaler>,
    /// With the Gateway API provider only.
    pub routes: Option<Store<HttpRoute>>,
    /// The namespace the watches cover, or all when `None`.
    pub scope: Option<String>,
    written: Mutex<HashMap<Key, Written>>,
}

/// Kind, namespace, name.
type Key = (&'static str, String, String);

struct Written {
    /// The resourceVersion our write returned (empty if it returned none, which then never
    /// matches); `None` for a deletion.
    version: Option<String>,
    at: Instant,
}

impl Caches {
    pub fn new(
        deployments: Store<Deployment>,
        ingresses: Store<Ingress>,
        autoscalers: Store<HorizontalPodAutoscaler>,
        routes: Option<Store<HttpRoute>>,
        scope: Option<String>,
    ) -> Self {
        Self {
            deployments,
            ingresses,
            autoscalers,
            routes,
            scope,
            written: Mutex::new(HashMap::new()),
        }
    }

    fn written(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Written>> {
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remember that we wrote `ns/name` of kind `K`, and the resourceVersion the write returned.
    pub fn wrote<K: Resource<DynamicType = ()>>(
        &self,
        ns: &str,
        name: &str,
        version: Option<String>,
    ) {
        self.remember::<K>(ns, name, Some(version.unwrap_or_default()));
    }

    /// Remember that we deleted `ns/name` of kind `K`.
    pub fn deleted<K: Resource<DynamicType = ()>>(&self, ns: &str, name: &str) {
        self.remember::<K>(ns, name, None);
    }

    fn remember<K: Resource<DynamicType = ()>>(
        &self,
        ns: &str,
        name: &str,
        version: Option<String>,
    ) {
        let mut written = self.written();
        written.retain(|_, w| w.at.elapsed() < WRITE_MEMORY);
        written.insert(
            (kind::<K>(), ns.to_string(), name.to_string()),
            Written {
                version,
                at: Instant::now(),
            },
        );
    }

    /// Whether the store may be read for `ns/name` of kind `K`: it has synced, and it holds
    /// what we last wrote there (or that write is older than [`WRITE_MEMORY`]).
    fn usable<K>(&self, store: &Store<K>, ns: &str, name: &str) -> bool
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        if !synced(store) {
            return false;
        }
        let key = (kind::<K>(), ns.to_string(), name.to_string());
        let mut written = self.written();
        let Some(w) = written.get(&key) else {
            return true;
        };
        let stored = store
            .get(&ObjectRef::new(name).within(ns))
            .and_then(|o| o.meta().resource_version.clone());
        if w.at.elapsed() >= WRITE_MEMORY || stored == w.version {
            written.remove(&key);
            return true;
        }
        false
    }

    /// `ns/name` from `store`, or `None` when the store cannot answer for it (see the module docs):
    /// then the caller reads it live. `Some(None)` is "the store has synced and holds no such object".
    pub fn get<K>(&self, store: &Store<K>, ns: &str, name: &str) -> Option<Option<Arc<K>>>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        self.usable(store, ns, name)
            .then(|| store.get(&ObjectRef::new(name).within(ns)))
    }

    /// The live read of `ns/name` found `version`: when the store holds the same, it has caught
    /// up (perhaps with a newer write than ours) and the memory of our write can go.
    pub fn read_live<K>(&self, store: &Store<K>, ns: &str, name: &str, version: Option<&str>)
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        let stored = store.get(&ObjectRef::new(name).within(ns));
        if stored
            .as_ref()
            .and_then(|o| o.meta().resource_version.as_deref())
            == version
        {
            self.written()
                .remove(&(kind::<K>(), ns.to_string(), name.to_string()));
        }
    }

    /// Every autoscaler of `ns` from the store, or `None` when it has not synced or this
    /// process wrote one of them that the store does not hold yet.
    pub fn autoscalers_in(&self, ns: &str) -> Option<Vec<HorizontalPodAutoscaler>> {
        if !synced(&self.autoscalers) {
            return None;
        }
        let pending: Vec<String> = self
            .written()
            .keys()
            .filter(|(k, n, _)| *k == kind::<HorizontalPodAutoscaler>() && n == ns)
            .map(|(_, _, name)| name.clone())
            .collect();
        if pending
            .iter()
            .any(|name| !self.usable(&self.autoscalers, ns, name))
        {
            return None;
        }
        Some(
            self.autoscalers
                .state()
                .iter()
                .filter(|h| h.metadata.namespace.as_deref() == Some(ns))
                .map(|h| h.as_ref().clone())
                .collect(),
        )
    }

    /// The route store, when it covers `ns`.
    pub fn routes_in(&self, ns: &str) -> Option<&Store<HttpRoute>> {
        match &self.scope {
            Some(scope) if scope != ns => None,
            _ => self.routes.as_ref(),
        }
    }
}

fn kind<K: Resource<DynamicType = ()>>() -> &'static str {
    // The kinds stored here are static strings in k8s-openapi and kube-derive.
    match K::kind(&()) {
        std::borrow::Cow::Borrowed(k) => k,
        std::borrow::Cow::Owned(_) => "Other",
    }
}

/// Whether the store has seen its first complete list.
pub fn synced<K>(store: &Store<K>) -> bool
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

/// Without managedFields and `kubectl apply`'s copy of the whole object (neither is read).
pub fn trim_meta<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

/// What [`crate::observe::deployment_obs`] and the watch mappers read: name, namespace,
/// resourceVersion, generation, owners, our hash annotation, `spec.replicas` and the replica
/// counts of the status. The pod template (most of a Deployment's bytes), the selector, the
/// other annotations, the labels and the status conditions are dropped.
pub fn trim_deployment(d: &mut Deployment) {
    trim_meta(d);
    let meta = &mut d.metadata;
    meta.labels = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.retain(|k, _| k == CANDIDATE_HASH_ANNOTATION);
    }
    d.spec = d.spec.take().map(|s| DeploymentSpec {
        replicas: s.replicas,
        ..Default::default()
    });
    d.status = d.status.take().map(|s| DeploymentStatus {
        conditions: None,
        ..s
    });
}

/// Ingresses and autoscalers are read whole but for their metadata's bulk and status (an
/// Ingress's load balancer addresses, an autoscaler's current metrics).
pub fn trim_ingress(i: &mut Ingress) {
    trim_meta(i);
    i.status = None;
}

pub fn trim_autoscaler(h: &mut HorizontalPodAutoscaler) {
    trim_meta(h);
    h.status = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::deployment_obs;
    use kube::runtime::{reflector, watcher};

    fn deployment(rv: &str) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "c", "namespace": "prod", "resourceVersion": rv, "generation": 3,
                         "labels": {"app": "c"},
                         "annotations": {CANDIDATE_HASH_ANNOTATION: "h1", LAST_APPLIED: "{...}", "other": "x"},
                         "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
                         "ownerReferences": [{"apiVersion": "rollout.akidb.io/v1alpha1", "kind": "EmbeddingRollout",
                                              "name": "r1", "uid": "u1", "controller": true}]},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "c"}},
                     "template": {"metadata": {"labels": {"app": "c"}},
                                  "spec": {"containers": [{"name": "e", "image": "candle:1"}]}}},
            "status": {"observedGeneration": 3, "replicas": 2, "readyReplicas": 1, "availableReplicas": 1,
                       "updatedReplicas": 2, "conditions": [{"type": "Available", "status": "True"}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_trimmed_deployment_observes_the_same() {
        let whole = deployment("5");
        let mut trimmed = whole.clone();
        trim_deployment(&mut trimmed);
        assert_eq!(deployment_obs(&trimmed), deployment_obs(&whole));
        assert_eq!(
            trimmed.metadata.owner_references,
            whole.metadata.owner_references
        );
        assert_eq!(trimmed.metadata.resource_version.as_deref(), Some("5"));
        assert_eq!(trimmed.metadata.managed_fields, None);
        assert!(trimmed.spec.unwrap().template.spec.is_none());
        assert_eq!(
            trimmed.metadata.annotations.unwrap().len(),
            1,
            "only the hash annotation"
        );
    }

    fn synced_store(
        objects: Vec<Deployment>,
    ) -> (Store<Deployment>, reflector::store::Writer<Deployment>) {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for o in objects {
            writer.apply_watcher_event(&watcher::Event::InitApply(o));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        (store, writer)
    }

    fn caches(deployments: Store<Deployment>) -> Caches {
        let (ingresses, _) = reflector::store();
        let (autoscalers, _) = reflector::store();
        Caches::new(deployments, ingresses, autoscalers, None, None)
    }

    #[test]
    fn an_unsynced_store_answers_nothing() {
        let (store, _writer) = reflector::store::<Deployment>();
        let c = caches(store.clone());
        assert!(c.get(&store, "prod", "c").is_none(), "read live instead");
        assert!(c.autoscalers_in("prod").is_none());
    }

    #[test]
    fn a_synced_store_answers_present_and_absent() {
        let (store, _writer) = synced_store(vec![deployment("5")]);
        let c = caches(store.clone());
        assert_eq!(
            c.get(&store, "prod", "c")
                .flatten()
                .unwrap()
                .metadata
                .resource_version
                .as_deref(),
            Some("5")
        );
        assert!(matches!(c.get(&store, "prod", "gone"), Some(None)));
        assert!(matches!(c.get(&store, "other", "c"), Some(None)));
    }

    #[test]
    fn our_own_write_is_read_live_until_the_store_holds_it() {
        let (store, mut writer) = synced_store(vec![deployment("5")]);
        let c = caches(store.clone());
        c.wrote::<Deployment>("prod", "c", Some("6".into()));
        assert!(
            c.get(&store, "prod", "c").is_none(),
            "the store still has 5"
        );
        // A write that returned no version is read live (for WRITE_MEMORY).
        c.wrote::<Deployment>("prod", "e", None);
        assert!(c.get(&store, "prod", "e").is_none());
        // Another object is not affected.
        assert!(c.get(&store, "prod", "d").is_some());
        writer.apply_watcher_event(&watcher::Event::Apply(deployment("6")));
        assert!(c.get(&store, "prod", "c").is_some(), "caught up");
        // A deletion: live until the store drops the object.
        c.deleted::<Deployment>("prod", "c");
        assert!(c.get(&store, "prod", "c").is_none());
        writer.apply_watcher_event(&watcher::Event::Delete(deployment("6")));
        assert!(matches!(c.get(&store, "prod", "c"), Some(None)));
    }

    #[test]
    fn a_newer_write_by_someone_else_ends_the_memory_at_the_live_read() {
        let (store, mut writer) = synced_store(vec![deployment("5")]);
        let c = caches(store.clone());
        c.wrote::<Deployment>("prod", "c", Some("6".into()));
        writer.apply_watcher_event(&watcher::Event::Apply(deployment("7")));
        assert!(c.get(&store, "prod", "c").is_none());
        c.read_live(&store, "prod", "c", Some("7"));
        assert!(c.get(&store, "prod", "c").is_some());
    }

    #[test]
    fn routes_outside_a_namespaced_scope_are_not_watched() {
        let (routes, _) = reflector::store::<HttpRoute>();
        let (d, _) = reflector::store();
        let (i, _) = reflector::store();
        let (h, _) = reflector::store();
        let c = Caches::new(d, i, h, Some(routes), Some("prod".into()));
        assert!(c.routes_in("prod").is_some());
        assert!(c.routes_in("gateways").is_none());
    }
}
