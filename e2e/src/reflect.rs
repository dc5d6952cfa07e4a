//! TEST HARNESS: namespaced caches of API objects that wake a reconcile loop on every change.

use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// A reflector cache of one kind in one namespace; the watch task stops when this is dropped.
pub struct Watched<K: Resource + 'static>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    pub store: Store<K>,
    task: JoinHandle<()>,
}

impl<K> Watched<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + std::hash::Hash + Eq + Clone,
{
    /// Start watching `K` in `namespace`; `changed` is notified after every event.
    pub fn start(client: Client, namespace: &str, changed: Arc<Notify>) -> Self {
        let api: Api<K> = Api::namespaced(client, namespace);
        let (store, writer) = reflector::store();
        let stream = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default()).default_backoff(),
        );
        let task = tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                if let Err(e) = ev {
                    tracing::warn!(error = %e, kind = %K::kind(&Default::default()), "watch error (retrying)");
                }
                changed.notify_one();
            }
        });
        Self { store, task }
    }

    /// Current objects (empty until the first list completed).
    pub fn objects(&self) -> Vec<K> {
        self.store.state().iter().map(|o| (**o).clone()).collect()
    }

    /// Wait until the first list completed.
    pub async fn ready(&self) {
        let _ = self.store.wait_until_ready().await;
    }
}

impl<K: Resource + 'static> Drop for Watched<K>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    fn drop(&mut self) {
        self.task.abort();
    }
}
