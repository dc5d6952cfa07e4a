//! Where the dashboard reads rollouts and events.
//!
//! Rollouts come from the controller's watch cache when this replica leads and the cache has
//! synced (no API call per page view). A standby replica runs no controller and so has no cache;
//! it lists the rollouts from the API server instead, at most once per [`API_LIST_TTL`] however
//! many pages poll. Events are not cached by the controller: they are listed per rollout, at most
//! once per [`EVENTS_TTL`].

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::events::v1::Event;
use kube::{
    api::{Api, ListParams},
    runtime::reflector::ObjectRef,
    Client, ResourceExt,
};

use super::view::{recent_events, EventView, Origin};
use crate::{controller::RolloutCache, crd::EmbeddingRollout};

/// How long a list of rollouts read from the API server is reused.
pub const API_LIST_TTL: Duration = Duration::from_secs(2);
/// How long one rollout's events are reused.
pub const EVENTS_TTL: Duration = Duration::from_secs(5);
/// The events the page shows.
pub const EVENTS_SHOWN: usize = 30;
/// Rollouts whose events are kept cached at once (each page view of another one adds one).
const EVENTS_CACHED: usize = 256;

type Rollouts = Arc<Vec<Arc<EmbeddingRollout>>>;
/// One rollout's events by (namespace, name), with when they were listed.
type EventsCache = HashMap<(String, String), (Instant, Arc<Vec<EventView>>)>;

pub struct Source {
    client: Client,
    namespace: Option<String>,
    cache: RolloutCache,
    listed: Mutex<Option<(Instant, Rollouts)>>,
    events: Mutex<EventsCache>,
}

impl Source {
    pub fn new(client: Client, namespace: Option<String>, cache: RolloutCache) -> Self {
        Self {
            client,
            namespace,
            cache,
            listed: Mutex::new(None),
            events: Mutex::new(HashMap::new()),
        }
    }

    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// Every rollout the operator watches.
    pub async fn rollouts(&self) -> Result<(Rollouts, Origin), kube::Error> {
        if let Some(store) = self.cache.get() {
            return Ok((Arc::new(store.state()), Origin::Cache));
        }
        if let Some((at, list)) = self
            .listed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            if at.elapsed() < API_LIST_TTL {
                return Ok((list.clone(), Origin::Api));
            }
        }
        let api: Api<EmbeddingRollout> = match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let list: Rollouts = Arc::new(
            api.list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .map(Arc::new)
                .collect(),
        );
        *self.listed.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), list.clone()));
        Ok((list, Origin::Api))
    }

    /// One rollout, `None` when it does not exist or is outside the watched namespace.
    pub async fn rollout(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<(Arc<EmbeddingRollout>, Origin)>, kube::Error> {
        if self.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            return Ok(None);
        }
        if let Some(store) = self.cache.get() {
            let key = ObjectRef::new(name).within(namespace);
            return Ok(store.get(&key).map(|r| (r, Origin::Cache)));
        }
        let (list, origin) = self.rollouts().await?;
        Ok(list
            .iter()
            .find(|r| r.namespace().as_deref() == Some(namespace) && r.name_any() == name)
            .map(|r| (r.clone(), origin)))
    }

    /// The rollout's recent events (events.k8s.io/v1, regarding this object: name and uid),
    /// newest first.
    pub async fn events(&self, rollout: &EmbeddingRollout) -> Result<Vec<EventView>, kube::Error> {
        let namespace = rollout.namespace().unwrap_or_default();
        let name = rollout.name_any();
        let key = (namespace.clone(), name.clone());
        if let Some((at, events)) = self.events_cache().get(&key) {
            if at.elapsed() < EVENTS_TTL {
                return Ok(events.as_ref().clone());
            }
        }
        let mut fields = format!("regarding.name={name}");
        if let Some(uid) = rollout.metadata.uid.as_deref() {
            fields.push_str(&format!(",regarding.uid={uid}"));
        }
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let listed = api.list(&ListParams::default().fields(&fields)).await?;
        let events = recent_events(&listed.items, EVENTS_SHOWN);
        let mut cache = self.events_cache();
        if cache.len() >= EVENTS_CACHED {
            cache.retain(|_, (at, _)| at.elapsed() < EVENTS_TTL);
        }
        if cache.len() < EVENTS_CACHED {
            cache.insert(key, (Instant::now(), Arc::new(events.clone())));
        }
        Ok(events)
    }

    fn events_cache(&self) -> std::sync::MutexGuard<'_, EventsCache> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }
}
