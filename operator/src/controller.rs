//! The kube-runtime controller, the imperative shell around [`crate::decision::reconcile`].
//!
//! One reconcile: read the cluster into [`Observed`], query Prometheus when an analysis is due,
//! call the pure decision, apply its actions in order (stopping at the first error), publish its
//! events, then write the status in one server-side-apply patch (only when it changed, so our own
//! write does not wake us up forever). Errors requeue; 409 conflicts requeue within a second.
//!
//! The rollout a reconcile starts from comes from the watch cache, which can lag our own last
//! status write by a few milliseconds (an owned object's event, caused by our own action, often
//! arrives first). Deciding from that older status repeats the last transition: a step started
//! twice, a primary Ingress switched to the candidate, back, and again. So the shell remembers the
//! status it last wrote per rollout and, when the cached one differs, reads the rollout afresh
//! from the API server before deciding.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::Deployment,
    autoscaling::v2::HorizontalPodAutoscaler,
    core::v1::{ConfigMap, ObjectReference, Service},
    networking::v1::Ingress,
};
use kube::{
    api::{Api, Patch, PatchParams},
    runtime::{
        controller::{Action as Requeue, Controller},
        events::{Event as KubeEvent, EventType as KubeEventType, Recorder, Reporter},
        reflector::{self, reflector, ObjectRef, Store},
        watcher::{self, watcher},
        WatchStreamExt,
    },
    Client, Resource, ResourceExt,
};
use serde_json::json;

use crate::{
    caches::{self, Caches},
    cluster::{self, ClusterError},
    crd::{
        EmbeddingRollout, EmbeddingRolloutSpec, EmbeddingRolloutStatus, GatewayApiSpec, Phase,
        Provider, Verdict, COMMAND_ANNOTATION, FINALIZER, ROLLOUT_LABEL,
    },
    decision::{self, parity::ParityProbe, Action, Backend, Decision, EventType, MetricsSnapshot},
    gate_template_reader, history_store,
    metrics::Metrics,
    notification,
    notification_config::GlobalWebhooks,
    notifier::{self, Notifier},
    observe, parity_probe,
    prometheus::{AnalysisQueries, Prometheus, QueryError},
    prometheus_access::{self, Access},
    server::Readiness,
    traffic::{
        gateway,
        httproute::HttpRoute,
        nginx::{self, ServiceTarget, TrafficError},
    },
    workload::{self, CandidateWorkload, WorkloadError, MANAGER},
};

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Watch one namespace, or all when `None`.
    pub namespace: Option<String>,
    pub prometheus_timeout: Duration,
    /// Watch HTTPRoutes (the Gateway API provider); needs their CRD and RBAC.
    pub gateway_api: bool,
    /// Reconciles running at once (`--max-concurrent-reconciles`); 0 for no limit.
    pub max_concurrent_reconciles: u16,
    /// Where the controller publishes its rollout cache once synced (read by the dashboard).
    pub rollout_cache: RolloutCache,
    /// Webhooks told of every rollout's notifications besides its own (`--notifications-config`).
    pub global_webhooks: GlobalWebhooks,
}

/// The controller's EmbeddingRollout cache, published once it has synced, for readers outside the
/// controller (the web dashboard). Empty on a replica that does not lead (its controller does not run).
#[derive(Clone, Debug, Default)]
pub struct RolloutCache(Arc<OnceLock<Store<EmbeddingRollout>>>);

impl RolloutCache {
    pub fn publish(&self, store: Store<EmbeddingRollout>) {
        let _ = self.0.set(store);
    }

    /// The synced cache, or `None` before it is.
    pub fn get(&self) -> Option<&Store<EmbeddingRollout>> {
        self.0.get()
    }
}

/// Distinct tenants or credentials one Prometheus address keeps clients for.
const MAX_CLIENTS_PER_ADDRESS: usize = 16;

/// Shared by all reconciles.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    prometheus: Mutex<HashMap<(String, u64), Prometheus>>,
    prometheus_timeout: Duration,
    /// The parity probe's client (no proxy: it talks to pods).
    http: reqwest::Client,
    /// The status this process last wrote, by rollout uid (see the module docs).
    written: Mutex<HashMap<String, EmbeddingRolloutStatus>>,
    /// The rollouts' webhooks (never awaited by a reconcile).
    notifier: Notifier,
    /// Where each rollout's kept analyses end (`EmbeddingRolloutAnalysis` objects).
    history: history_store::Keeper,
    /// The watches' stores `observe` reads from; `None`: every read is live.
    caches: Option<Caches>,
}

impl Context {
    pub fn new(client: Client, metrics: Metrics, prometheus_timeout: Duration) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.to_string(),
                instance: std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()),
            },
        );
        let notifier = notifier(client.clone(), recorder.clone());
        Self {
            client,
            recorder,
            metrics,
            prometheus: Mutex::new(HashMap::new()),
            prometheus_timeout,
            http: crate::http_client::builder()
                .no_proxy()
                .build()
                .expect("a plain HTTP client with a TLS provider"),
            written: Mutex::new(HashMap::new()),
            notifier,
            history: history_store::Keeper::new(),
            caches: None,
        }
    }

    /// Read the observed objects from these stores (filled by the controller's watches).
    pub fn with_caches(mut self, caches: Caches) -> Self {
        self.caches = Some(caches);
        self
    }

    /// Remember a write of `ns/name` (the resourceVersion it returned), so the next reads of
    /// it stay live until the store holds it.
    fn wrote<K: Resource<DynamicType = ()>>(&self, ns: &str, name: &str, version: Option<String>) {
        if let Some(c) = &self.caches {
            c.wrote::<K>(ns, name, version);
        }
    }

    /// [`Context::wrote`] for a deletion: live reads until the store has dropped it.
    fn deleted<K: Resource<DynamicType = ()>>(&self, ns: &str, name: &str) {
        if let Some(c) = &self.caches {
            c.deleted::<K>(ns, name);
        }
    }

    /// Tells these operator-wide webhooks of every rollout's notifications too.
    pub fn with_global_webhooks(mut self, global: GlobalWebhooks) -> Self {
        self.notifier = self.notifier.with_global(global);
        self
    }

    fn written(&self) -> std::sync::MutexGuard<'_, HashMap<String, EmbeddingRolloutStatus>> {
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the cached rollout predates the status this process last wrote for it.
    fn cache_behind(&self, rollout: &EmbeddingRollout) -> bool {
        let Some(uid) = rollout.meta().uid.as_deref() else {
            return false;
        };
        self.written()
            .get(uid)
            .is_some_and(|w| rollout.status.as_ref() != Some(w))
    }

    fn remember(&self, rollout: &EmbeddingRollout, status: &EmbeddingRolloutStatus) {
        if let Some(uid) = rollout.meta().uid.clone() {
            self.written().insert(uid, status.clone());
        }
    }

    fn forget_written(&self, rollout: &EmbeddingRollout) {
        if let Some(uid) = rollout.meta().uid.as_deref() {
            self.written().remove(uid);
        }
    }

    /// One client per Prometheus address and access (rollouts may point at different ones, or
    /// at one with different tenants); a rotated credential gets a new client. Clients of
    /// credentials no longer in use are dropped, so the pool stays as small as the rollouts.
    fn prometheus(&self, address: &str, access: &Access) -> Result<Prometheus, QueryError> {
        let key = (address.to_string(), access.fingerprint());
        let mut pool = self.prometheus.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pool.get(&key) {
            return Ok(p.clone());
        }
        let p = Prometheus::connect(address, access, self.prometheus_timeout)?;
        // Same address, other fingerprint: an older credential of (most likely) this rollout.
        if pool.keys().filter(|(a, _)| a == address).count() >= MAX_CLIENTS_PER_ADDRESS {
            pool.retain(|(a, _), _| a != address);
        }
        pool.insert(key, p.clone());
        Ok(p)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("building the candidate: {0}")]
    Workload(#[from] WorkloadError),
    #[error("building the canary Ingress: {0}")]
    Traffic(#[from] TrafficError),
    #[error("writing status: {0}")]
    Status(#[source] ClusterError),
}

impl Error {
    fn cluster(&self) -> Option<&ClusterError> {
        match self {
            Error::Cluster(c) | Error::Status(c) => Some(c),
            _ => None,
        }
    }

    /// Label value of `embedding_rollout_reconcile_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            _ if self.cluster().is_some_and(ClusterError::is_conflict) => "Conflict",
            _ if matches!(self.cluster(), Some(ClusterError::Forbidden { .. })) => "Forbidden",
            _ if matches!(self.cluster(), Some(ClusterError::Invalid { .. })) => "Invalid",
            Error::Cluster(ClusterError::Missing(_)) => "Missing",
            Error::Cluster(_) => "Kube",
            Error::Status(_) => "Status",
            Error::Workload(_) => "Workload",
            Error::Traffic(_) => "Traffic",
        }
    }

    /// How soon to try again.
    pub fn retry_after(&self) -> Duration {
        match self {
            // Someone else wrote in between: re-read soon.
            _ if self.cluster().is_some_and(ClusterError::is_conflict) => Duration::from_secs(1),
            // Waiting for a user to create something (the primary Ingress, the baseline).
            Error::Cluster(ClusterError::Missing(_)) => Duration::from_secs(10),
            // A missing permission or an object the API server refuses: nothing changes until
            // an administrator or a new operator version does; do not hammer the API server.
            _ if matches!(
                self.cluster(),
                Some(ClusterError::Forbidden { .. } | ClusterError::Invalid { .. })
            ) =>
            {
                Duration::from_secs(60)
            }
            _ => Duration::from_secs(5),
        }
    }
}

/// Run the controller until the future is dropped.
pub async fn run(client: Client, config: ControllerConfig, metrics: Metrics, readiness: Readiness) {
    let ctx = Context::new(client.clone(), metrics, config.prometheus_timeout)
        .with_global_webhooks(config.global_webhooks.clone());
    let ns = config.namespace.as_deref();
    let rollouts: Api<EmbeddingRollout> = scoped(&client, ns);
    // Everything we create carries the rollout label; watching only those keeps caches small.
    let owned = || watcher::Config::default().labels(ROLLOUT_LABEL);

    // Services and ConfigMaps are never read back: their metadata wakes their rollout.
    let controller = Controller::new(rollouts, watcher::Config::default())
        .with_config(
            kube::runtime::controller::Config::default()
                .concurrency(config.max_concurrent_reconciles),
        )
        .owns(scoped::<Service>(&client, ns), owned())
        .owns(scoped::<ConfigMap>(&client, ns), owned());
    let store = controller.store();
    // Deployments, Ingresses and autoscalers: one watch of every object of the kind in scope,
    // through a reflector into the store `observe` reads (crate::caches), waking the rollout
    // that owns the object (the candidate, the canary, the candidate's autoscaler) and those
    // that name it (the baseline, the primary Ingress, the baseline's autoscaler: not ours, but
    // baseline pods becoming ready during a rollback or an Ingress edit must wake us).
    let (deployments, deployment_writer) = reflector::store();
    let (ingresses, ingress_writer) = reflector::store();
    let (autoscalers, autoscaler_writer) = reflector::store();
    let controller = controller
        .watches_stream(
            reflected(
                deployment_writer,
                scoped::<Deployment>(&client, ns),
                caches::trim_deployment,
            ),
            owner_or_referencing(store.clone(), |r, d: &Deployment| {
                d.metadata.name.as_deref() == Some(r.spec.baseline.deployment.as_str())
            }),
        )
        .watches_stream(
            reflected(
                ingress_writer,
                scoped::<Ingress>(&client, ns),
                caches::trim_ingress,
            ),
            owner_or_referencing(store.clone(), |r, i: &Ingress| {
                r.spec
                    .nginx()
                    .is_some_and(|n| i.metadata.name.as_deref() == Some(n.name.as_str()))
            }),
        )
        .watches_stream(
            reflected(
                autoscaler_writer,
                scoped::<HorizontalPodAutoscaler>(&client, ns),
                caches::trim_autoscaler,
            ),
            owner_or_referencing(store.clone(), |r, h: &HorizontalPodAutoscaler| {
                h.spec.as_ref().is_some_and(|s| {
                    s.scale_target_ref.kind == "Deployment"
                        && s.scale_target_ref.name == r.spec.baseline.deployment
                })
            }),
        );
    // The user's HTTPRoutes (Gateway API provider), only when enabled: without the CRD or the
    // RBAC, a watch would fail forever. Weight edits and status (Accepted) changes wake us.
    let (controller, routes) = if config.gateway_api {
        let (routes, route_writer) = reflector::store();
        let controller = controller.watches_stream(
            reflected(
                route_writer,
                scoped::<HttpRoute>(&client, ns),
                caches::trim_meta::<HttpRoute>,
            ),
            routes_to_rollouts(store.clone()),
        );
        (controller, Some(routes))
    } else {
        (controller, None)
    };
    let ctx = Arc::new(ctx.with_caches(Caches::new(
        deployments,
        ingresses,
        autoscalers,
        routes,
        config.namespace.clone(),
    )));

    let ready_store = store.clone();
    let rollout_cache = config.rollout_cache.clone();
    tokio::spawn(async move {
        // Re-poll with a timeout: the store's readiness future keeps only the most recent
        // waker, and the controller polls it too, so a single long wait here may never wake.
        loop {
            let wait =
                tokio::time::timeout(Duration::from_millis(250), ready_store.wait_until_ready());
            match wait.await {
                Ok(Ok(())) => {
                    tracing::info!("EmbeddingRollout cache synced; ready");
                    rollout_cache.publish(ready_store);
                    readiness.set_ready(true);
                    return;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "the EmbeddingRollout cache never synced");
                    return;
                }
                Err(_) => continue,
            }
        }
    });

    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(rollout = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile not run"),
            }
        })
        .await;
}

fn scoped<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Every object of `api`, trimmed by `trim`, through a reflector into `writer`'s store: the
/// objects touched, for a trigger stream.
fn reflected<K>(
    writer: reflector::store::Writer<K>,
    api: Api<K>,
    trim: fn(&mut K),
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    reflector(
        writer,
        watcher(api, watcher::Config::default()).modify(trim),
    )
    .default_backoff()
    .touched_objects()
}

/// Map an object to the rollout that controls it (its owner reference, as `Controller::owns`
/// does) and to the rollouts in its namespace that name it.
fn owner_or_referencing<K>(
    store: Store<EmbeddingRollout>,
    refers: fn(&EmbeddingRollout, &K) -> bool,
) -> impl Fn(K) -> Vec<ObjectRef<EmbeddingRollout>> + Send + Sync + Clone + 'static
where
    K: Resource + 'static,
{
    move |obj: K| {
        let ns = obj.meta().namespace.clone();
        let kind = EmbeddingRollout::kind(&());
        let api_version = EmbeddingRollout::api_version(&());
        let mut out: Vec<ObjectRef<EmbeddingRollout>> = obj
            .meta()
            .owner_references
            .iter()
            .flatten()
            .filter(|o| {
                o.controller == Some(true) && o.kind == kind && o.api_version == api_version
            })
            .map(|o| {
                let r = ObjectRef::new(&o.name);
                match &ns {
                    Some(ns) => r.within(ns),
                    None => r,
                }
            })
            .collect();
        out.extend(
            store
                .state()
                .iter()
                .filter(|r| r.metadata.namespace == ns && refers(r, &obj))
                .map(|r| ObjectRef::from_obj(r.as_ref())),
        );
        out
    }
}

/// Map an HTTPRoute to the rollouts naming it (it may live in another namespace than they do).
fn routes_to_rollouts(
    store: Store<EmbeddingRollout>,
) -> impl Fn(HttpRoute) -> Vec<ObjectRef<EmbeddingRollout>> + Send + Sync + Clone + 'static {
    move |route: HttpRoute| {
        let name = route.metadata.name.clone().unwrap_or_default();
        let ns = route.metadata.namespace.clone().unwrap_or_default();
        store
            .state()
            .iter()
            .filter(|r| match r.spec.provider() {
                Some(Provider::GatewayApi(g)) => {
                    let rollout_ns = r.metadata.namespace.as_deref().unwrap_or_default();
                    g.http_route.name == name
                        && g.http_route.namespace.as_deref().unwrap_or(rollout_ns) == ns
                }
                _ => false,
            })
            .map(|r| ObjectRef::from_obj(r.as_ref()))
            .collect()
    }
}

fn error_policy(rollout: Arc<EmbeddingRollout>, error: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.count_error(error.kind());
    let retry = error.retry_after();
    tracing::warn!(
        rollout = %rollout.name_any(),
        namespace = rollout.namespace().unwrap_or_default(),
        error = %error,
        ?retry,
        "reconcile failed"
    );
    Requeue::requeue(retry)
}

/// One span per reconcile, so every log line of it (Prometheus queries, actions, events) carries
/// the rollout, where it stands and what it decided, and one trace id to find them all by. With
/// OTLP export on (`embedding_telemetry`), the same span is exported: its attributes are these
/// fields, and `trace_id` is the exported trace's id, so the logs and the trace join.
async fn reconcile(rollout: Arc<EmbeddingRollout>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    use tracing::{field, Instrument};
    let Some(rollout) = current(&ctx, rollout).await? else {
        return Ok(Requeue::await_change());
    };
    let status = rollout.status.clone().unwrap_or_default();
    let span = tracing::info_span!(
        "reconcile",
        rollout = %rollout.name_any(),
        namespace = %rollout.namespace().unwrap_or_default(),
        phase = %status.phase,
        step = status.current_step + 1,
        weight = status.current_weight,
        trace_id = field::Empty,
        decided = field::Empty,
        otel.status_code = field::Empty,
        otel.status_description = field::Empty,
    );
    // Without export, a random id of the same shape, for the logs alone.
    let id = embedding_telemetry::trace_id(&span).unwrap_or_else(trace_id);
    span.record("trace_id", field::display(&id));
    let started = Instant::now();
    let result = reconcile_inner(&rollout, &ctx)
        .instrument(span.clone())
        .await;
    ctx.metrics
        .observe_reconcile(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_description", field::display(e));
    }
    result
}

/// The rollout to decide from: the cached one, or a fresh read when the cache has not yet seen
/// our last status write. `None` when it is gone.
async fn current(
    ctx: &Context,
    rollout: Arc<EmbeddingRollout>,
) -> Result<Option<Arc<EmbeddingRollout>>, Error> {
    if !ctx.cache_behind(&rollout) {
        return Ok(Some(rollout));
    }
    let name = rollout.name_any();
    let api: Api<EmbeddingRollout> =
        Api::namespaced(ctx.client.clone(), &rollout.namespace().unwrap_or_default());
    let fresh = api.get_opt(&name).await.map_err(|e| {
        Error::Cluster(ClusterError::from_kube(
            format!("EmbeddingRollout {name}"),
            e,
        ))
    })?;
    match fresh {
        Some(fresh) => {
            tracing::debug!(rollout = %name, cached = ?rollout.metadata.resource_version,
                fresh = ?fresh.metadata.resource_version, "watch cache behind our status write; read afresh");
            if ctx.cache_behind(&fresh) {
                // Someone else wrote the status since (or a former leader did): theirs stands,
                // and there is nothing of ours left to wait for.
                ctx.forget_written(&fresh);
            }
            Ok(Some(Arc::new(fresh)))
        }
        None => {
            ctx.forget_written(&rollout);
            Ok(None)
        }
    }
}

/// A W3C trace id (32 hex digits, random, never all zeros).
fn trace_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded per process and per instance: enough entropy for a correlation id
    // without another dependency.
    let mut id = [0u64; 2];
    for (i, part) in id.iter_mut().enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        h.write_usize(i);
        *part = h.finish() | 1;
    }
    format!("{:016x}{:016x}", id[0], id[1])
}

async fn reconcile_inner(rollout: &EmbeddingRollout, ctx: &Context) -> Result<Requeue, Error> {
    let ns = rollout.namespace().unwrap_or_default();
    let name = rollout.name_any();
    let api: Api<EmbeddingRollout> = Api::namespaced(ctx.client.clone(), &ns);
    let deleting = rollout.meta().deletion_timestamp.is_some();

    if deleting && !rollout.finalizers().iter().any(|f| f == FINALIZER) {
        // Our cleanup already ran (or never had to): nothing to do but forget the metrics.
        forget(ctx, &ns, &name);
        ctx.forget_written(rollout);
        ctx.history.forget(rollout);
        return Ok(Requeue::await_change());
    }
    if !deleting && !rollout.finalizers().iter().any(|f| f == FINALIZER) {
        // Before touching anything, make sure deletion will wait for our cleanup.
        add_finalizer(&api, rollout).await?;
    }

    let t0 = Instant::now();
    let observed = observe::read(&ctx.client, ctx.caches.as_ref(), rollout).await?;
    let observe_time = t0.elapsed();
    let status = rollout.status.clone().unwrap_or_default();
    let now = Utc::now();
    let t1 = Instant::now();
    // An analysis judges the gates of the templates too: the decision and the queries see the
    // spec with them merged into `gates.custom`.
    let (spec, snapshot) = if decision::analysis_due(&rollout.spec, &status, now) {
        let (spec, problems) = with_gate_templates(ctx, rollout).await;
        let mut snapshot = query_metrics(ctx, rollout, &spec, &status, now).await;
        snapshot.gate_problems = problems;
        (std::borrow::Cow::Owned(spec), Some(snapshot))
    } else {
        (std::borrow::Cow::Borrowed(&rollout.spec), None)
    };
    let query_time = t1.elapsed();
    let decided = decision::reconcile(&spec, &status, &observed, snapshot.as_ref(), now);
    tracing::Span::current().record("decided", tracing::field::display(decided.status.phase));
    tracing::debug!(rollout = %name, namespace = %ns, phase = %decided.status.phase, actions = ?decided.actions, "decided");

    let t2 = Instant::now();
    let mut finalizer_removed = false;
    for action in &decided.actions {
        if let Err(e) = apply_action(ctx, rollout, action).await {
            // The status is not written when an action fails (it would claim what is not
            // true), so tell the user here; conflicts are routine and only logged.
            if !e.cluster().is_some_and(ClusterError::is_conflict) {
                let warning = decision::Event {
                    type_: EventType::Warning,
                    reason: "ActionFailed".to_string(),
                    message: format!("{action:?}: {e}"),
                };
                publish(ctx, rollout, &warning).await;
            }
            return Err(e);
        }
        finalizer_removed |= *action == Action::RemoveFinalizer;
    }
    for event in &decided.events {
        publish(ctx, rollout, event).await;
    }
    record_metrics(ctx, &ns, &name, &status, &decided);

    if finalizer_removed {
        // The object is (about to be) gone; a status write would 404.
        forget(ctx, &ns, &name);
        ctx.forget_written(rollout);
        ctx.history.forget(rollout);
        return Ok(Requeue::await_change());
    }
    let apply_time = t2.elapsed();
    let t3 = Instant::now();
    if rollout.status.as_ref() != Some(&decided.status) {
        write_status(&api, &name, &decided.status).await?;
        ctx.remember(rollout, &decided.status);
    }
    // Only now: a failed status write repeats the decision, and its events, next time.
    notify(ctx, rollout, &decided);
    let requeue = keep_history(ctx, rollout, &decided).await;
    tracing::debug!(
        rollout = %name,
        ?observe_time,
        ?query_time,
        ?apply_time,
        status_time = ?t3.elapsed(),
        "reconcile timings"
    );
    Ok(Requeue::requeue(requeue))
}

/// Appends the analyses of the status just written that no `EmbeddingRolloutAnalysis` holds yet
/// (see [`history_store`] for why after the write). A failure holds up nothing: a Warning event,
/// and the next reconcile, sooner than the decision asked for, tries again.
async fn keep_history(ctx: &Context, rollout: &EmbeddingRollout, decided: &Decision) -> Duration {
    let kept = ctx
        .history
        .keep(&ctx.client, rollout, &decided.status)
        .await;
    for gap in kept.gaps {
        let event = decision::Event {
            type_: EventType::Warning,
            reason: "HistoryGap".to_string(),
            message: gap,
        };
        publish(ctx, rollout, &event).await;
    }
    match kept.failed {
        None => decided.requeue_after,
        Some(why) => {
            ctx.metrics.count_error("History");
            let event = decision::Event {
                type_: EventType::Warning,
                reason: "HistoryAppendFailed".to_string(),
                message: why,
            };
            publish(ctx, rollout, &event).await;
            decided.requeue_after.min(history_store::RETRY)
        }
    }
}

/// The rollout's spec with its gate templates' gates in `analysis.gates.custom`, and what kept
/// any of them out.
async fn with_gate_templates(
    ctx: &Context,
    rollout: &EmbeddingRollout,
) -> (EmbeddingRolloutSpec, Vec<String>) {
    let mut spec = rollout.spec.clone();
    let refs = &spec.analysis.gates.templates;
    if refs.is_empty() {
        return (spec, Vec::new());
    }
    let ns = rollout.namespace().unwrap_or_default();
    let fetched = gate_template_reader::read(&ctx.client, &ns, refs).await;
    let resolved = decision::gate_templates::resolve(&spec.analysis.gates, &fetched);
    spec.analysis.gates = resolved.gates;
    (spec, resolved.problems)
}

async fn query_metrics(
    ctx: &Context,
    rollout: &EmbeddingRollout,
    spec: &EmbeddingRolloutSpec,
    status: &EmbeddingRolloutStatus,
    now: chrono::DateTime<Utc>,
) -> MetricsSnapshot {
    let queries = AnalysisQueries {
        candidate_service: &spec.candidate.metrics_service,
        baseline_service: &spec.baseline.metrics_service,
        spec: &spec.analysis,
    };
    let prom = &spec.analysis.prometheus;
    let ns = rollout.namespace().unwrap_or_default();
    let client = match prometheus_access::resolve(&ctx.client, &ns, prom).await {
        Ok(access) => ctx.prometheus(&prom.address, &access),
        Err(e) => Err(QueryError::Access(e)),
    };
    let metrics = async {
        match client {
            Ok(p) => {
                p.snapshot(&queries, decision::evidence_range(status, now))
                    .await
            }
            Err(e) => {
                let msg = Prometheus::describe(&prom.address, &e);
                tracing::warn!(rollout = %rollout.name_any(), namespace = %ns, error = %msg, "no Prometheus client");
                MetricsSnapshot::failed(&msg, &spec.analysis.gates.custom)
            }
        }
    };
    let (mut snapshot, parity) = tokio::join!(metrics, probe_parity(ctx, rollout, status));
    snapshot.parity = parity;
    snapshot
}

/// The embedding parity probe of this analysis, when `gates.parity` is set and one is due.
async fn probe_parity(
    ctx: &Context,
    rollout: &EmbeddingRollout,
    status: &EmbeddingRolloutStatus,
) -> Option<ParityProbe> {
    let spec = &rollout.spec;
    let p = spec.analysis.gates.parity.as_ref()?;
    if !decision::parity_due(spec, status) {
        return None;
    }
    let ns = rollout.namespace().unwrap_or_default();
    let candidate = rollout.candidate_name();
    // A bad duration is the spec's error (status message); probe with the default meanwhile.
    let timeout = p.timeout.parse().unwrap_or(Duration::from_secs(10));
    let round = u64::from(status.current_step) * 1009 + u64::from(status.step_analyses);
    let request = parity_probe::Request {
        namespace: &ns,
        spec: p,
        baseline: parity_probe::Side {
            service: &spec.baseline.service,
            port: spec.baseline.port,
            api: p.baseline_api.unwrap_or(p.api),
            model: p.baseline_model.as_deref().or(p.model.as_deref()),
        },
        candidate: parity_probe::Side {
            service: &candidate,
            port: spec.candidate.port,
            api: p.api,
            model: p.model.as_deref(),
        },
        round,
        timeout,
    };
    Some(parity_probe::probe(&ctx.client, &ctx.http, &request).await)
}

async fn apply_action(
    ctx: &Context,
    rollout: &EmbeddingRollout,
    action: &Action,
) -> Result<(), Error> {
    let ns = rollout.namespace().unwrap_or_default();
    let spec = &rollout.spec;
    let candidate = rollout.candidate_name();
    let client = &ctx.client;
    let deployments: Api<Deployment> = cluster::api(client, &ns);
    match action {
        Action::EnsureCandidate { replicas, hash } => {
            let mut w = CandidateWorkload::for_rollout(rollout, &candidate, *replicas)?;
            w.pod_hash = hash.clone();
            let config_maps: Api<ConfigMap> = cluster::api(client, &ns);
            match workload::models_config_map(&w) {
                // The ConfigMap first: pods mount it.
                Some(cm) => {
                    cluster::apply(&config_maps, &cm).await?;
                }
                None => {
                    cluster::delete_if_exists(
                        &config_maps,
                        &workload::models_config_map_name(&candidate),
                    )
                    .await?;
                }
            }
            let written = cluster::apply(&deployments, &workload::deployment(&w)).await?;
            ctx.wrote::<Deployment>(&ns, &candidate, written.metadata.resource_version);
            cluster::apply(
                &cluster::api::<Service>(client, &ns),
                &workload::service(&w),
            )
            .await?;
        }
        Action::ScaleCandidate(replicas) => {
            let version = cluster::scale_deployment(&deployments, &candidate, *replicas).await?;
            ctx.wrote::<Deployment>(&ns, &candidate, version);
        }
        Action::EnsureCandidateAutoscaler { min_replicas } => {
            let w = CandidateWorkload::for_rollout(rollout, &candidate, *min_replicas)?;
            if let Some(hpa) = workload::autoscaler(&w, *min_replicas) {
                let api = cluster::api::<HorizontalPodAutoscaler>(client, &ns);
                let written = cluster::apply(&api, &hpa).await?;
                ctx.wrote::<HorizontalPodAutoscaler>(
                    &ns,
                    &candidate,
                    written.metadata.resource_version,
                );
            }
        }
        Action::DeleteCandidateAutoscaler => {
            let api = cluster::api::<HorizontalPodAutoscaler>(client, &ns);
            if cluster::delete_if_exists(&api, &candidate).await? {
                ctx.deleted::<HorizontalPodAutoscaler>(&ns, &candidate);
            }
        }
        Action::SetCanaryWeight(_)
        | Action::DeleteCanaryIngress
        | Action::PointPrimaryIngressAt(_) => match spec.provider() {
            Some(Provider::Nginx(ingress)) => {
                nginx_action(ctx, rollout, ingress, &candidate, action).await?;
            }
            Some(Provider::GatewayApi(g)) => {
                gateway_action(ctx, rollout, g, &candidate, action).await?;
            }
            // The decision holds on such a spec before any action; nothing to move here.
            None => return Err(Error::Traffic(TrafficError::NoProvider)),
        },
        Action::ScaleBaseline(replicas) => {
            let baseline = &spec.baseline.deployment;
            let version = cluster::scale_deployment(&deployments, baseline, *replicas).await?;
            ctx.wrote::<Deployment>(&ns, baseline, version);
        }
        Action::ClearCommand => {
            let api: Api<EmbeddingRollout> = Api::namespaced(client.clone(), &ns);
            clear_command(&api, rollout).await?;
        }
        Action::RemoveFinalizer => {
            let api: Api<EmbeddingRollout> = Api::namespaced(client.clone(), &ns);
            remove_finalizer(&api, rollout).await?;
        }
    }
    Ok(())
}

async fn nginx_action(
    ctx: &Context,
    rollout: &EmbeddingRollout,
    ingress: &crate::crd::IngressSpec,
    candidate: &str,
    action: &Action,
) -> Result<(), Error> {
    let spec = &rollout.spec;
    let ns = rollout.namespace().unwrap_or_default();
    let ingresses = cluster::api::<Ingress>(&ctx.client, &ns);
    match action {
        Action::SetCanaryWeight(weight) => {
            // Live, not from the store: the canary copies the primary's rules as they are now
            // (once per step, not per reconcile).
            let primary = cluster::get_opt(&ingresses, &ingress.name)
                .await?
                .ok_or_else(|| ClusterError::Missing(format!("Ingress {}", ingress.name)))?;
            let target = ServiceTarget {
                name: candidate.to_string(),
                port: spec.candidate.port,
            };
            let params = nginx::CanaryParams {
                baseline_service: &spec.baseline.service,
                candidate: &target,
                weight: i32::from(*weight),
                header: spec.canary_header(),
                owner: owner_ref(rollout)?,
                labels: owned_labels(rollout),
            };
            let canary = nginx::build_canary(&primary, &params)?;
            let written = cluster::apply(&ingresses, &canary).await?;
            ctx.wrote::<Ingress>(
                &ns,
                &ingress.canary_name(),
                written.metadata.resource_version,
            );
        }
        Action::DeleteCanaryIngress => {
            let canary = ingress.canary_name();
            let deleted = cluster::delete_if_exists(&ingresses, &canary).await?;
            if deleted {
                ctx.deleted::<Ingress>(&ns, &canary);
            }
        }
        Action::PointPrimaryIngressAt(backend) => {
            let baseline = ServiceTarget {
                name: spec.baseline.service.clone(),
                port: spec.baseline.port,
            };
            let cand = ServiceTarget {
                name: candidate.to_string(),
                port: spec.candidate.port,
            };
            let (from, to) = match backend {
                Backend::Candidate => (&baseline, &cand),
                Backend::Baseline => (&cand, &baseline),
            };
            let (changes, version) =
                cluster::retarget_primary(&ingresses, &ingress.name, &from.name, to).await?;
            if !changes.is_empty() {
                ctx.wrote::<Ingress>(&ns, &ingress.name, version);
            }
            for c in &changes {
                tracing::info!(ingress = %ingress.name, route = %c.route, from = %c.from, to = %c.to, "primary Ingress retargeted");
            }
        }
        _ => {}
    }
    Ok(())
}

/// One traffic action on the HTTPRoute: read it as stored (live, not from the store: the patch
/// is guarded by a `test` of what was read), patch only what the action changes.
async fn gateway_action(
    ctx: &Context,
    rollout: &EmbeddingRollout,
    g: &GatewayApiSpec,
    candidate: &str,
    action: &Action,
) -> Result<(), Error> {
    let ns = rollout.namespace().unwrap_or_default();
    let route_ns = g.http_route.namespace.as_deref().unwrap_or(&ns);
    let name = &g.http_route.name;
    let what = format!("HTTPRoute {route_ns}/{name}");
    let resource = kube::api::ApiResource::erase::<HttpRoute>(&());
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), route_ns, &resource);
    let raw = api
        .get_opt(name)
        .await
        .map_err(|e| ClusterError::from_kube(format!("reading {what}"), e))?
        .ok_or_else(|| ClusterError::Missing(what.clone()))?;
    let raw = serde_json::to_value(&raw).map_err(|e| TrafficError::Route(e.to_string()))?;
    let names = gateway::names(rollout, g, candidate);
    let Some(patch) =
        gateway::patch_for(&raw, &names, action).map_err(|e| TrafficError::Route(e.to_string()))?
    else {
        return Ok(());
    };
    let written = api
        .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .map_err(|e| ClusterError::from_kube_guarded(format!("patching {what}"), e))?;
    ctx.wrote::<HttpRoute>(route_ns, name, written.metadata.resource_version);
    tracing::info!(route = %what, ?action, "HTTPRoute weights changed");
    Ok(())
}

fn owner_ref(
    rollout: &EmbeddingRollout,
) -> Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference, WorkloadError> {
    rollout
        .controller_owner_ref(&())
        .ok_or(WorkloadError::Unidentified)
}

fn owned_labels(rollout: &EmbeddingRollout) -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::from([
        (ROLLOUT_LABEL.to_string(), rollout.name_any()),
        (workload::MANAGED_BY_LABEL.to_string(), MANAGER.to_string()),
    ])
}

/// JSON patch guarded by a `test` of the current list, so a concurrent finalizer edit fails
/// (and is retried) instead of being overwritten.
async fn add_finalizer(
    api: &Api<EmbeddingRollout>,
    rollout: &EmbeddingRollout,
) -> Result<(), Error> {
    let name = rollout.name_any();
    let patch = match rollout.meta().finalizers.as_deref() {
        None | Some([]) => json!([
            {"op": "test", "path": "/metadata/finalizers", "value": rollout.meta().finalizers},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ]),
        Some(current) => json!([
            {"op": "test", "path": "/metadata/finalizers", "value": current},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ]),
    };
    let patch: json_patch::Patch = serde_json::from_value(patch).expect("well-formed JSON patch");
    api.patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .map_err(|e| {
            ClusterError::from_kube_guarded(
                format!("adding the finalizer to EmbeddingRollout {name}"),
                e,
            )
        })?;
    Ok(())
}

async fn remove_finalizer(
    api: &Api<EmbeddingRollout>,
    rollout: &EmbeddingRollout,
) -> Result<(), Error> {
    let name = rollout.name_any();
    let Some(index) = rollout.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{index}");
    let patch = json!([
        {"op": "test", "path": path, "value": FINALIZER},
        {"op": "remove", "path": path},
    ]);
    let patch: json_patch::Patch = serde_json::from_value(patch).expect("well-formed JSON patch");
    match api
        .patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(ClusterError::from_kube_guarded(
            format!("removing the finalizer from EmbeddingRollout {name}"),
            e,
        )
        .into()),
    }
}

/// Remove the command annotation, but only if it still holds the command we acted on (a newer
/// command written meanwhile must survive): the JSON patch tests the value first.
async fn clear_command(
    api: &Api<EmbeddingRollout>,
    rollout: &EmbeddingRollout,
) -> Result<(), Error> {
    let name = rollout.name_any();
    let Some(value) = rollout.annotations().get(COMMAND_ANNOTATION) else {
        return Ok(());
    };
    let path = format!(
        "/metadata/annotations/{}",
        COMMAND_ANNOTATION.replace('~', "~0").replace('/', "~1")
    );
    let patch = json!([
        {"op": "test", "path": path, "value": value},
        {"op": "remove", "path": path},
    ]);
    let patch: json_patch::Patch = serde_json::from_value(patch).expect("well-formed JSON patch");
    api.patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .map_err(|e| {
            ClusterError::from_kube_guarded(
                format!("clearing {COMMAND_ANNOTATION} on EmbeddingRollout {name}"),
                e,
            )
        })?;
    Ok(())
}

/// Best effort: an event that cannot be written must not fail the reconcile or a delivery.
async fn record(
    recorder: &Recorder,
    regarding: &ObjectReference,
    type_: KubeEventType,
    reason: &str,
    action: &str,
    message: String,
) {
    let ev = KubeEvent {
        type_,
        reason: truncate(reason.to_string(), 128),
        note: Some(truncate(message, 1000)),
        action: truncate(action.to_string(), 128),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, regarding).await {
        tracing::warn!(error = %e, %reason, "could not publish event");
    }
}

async fn publish(ctx: &Context, rollout: &EmbeddingRollout, event: &decision::Event) {
    let type_ = match event.type_ {
        EventType::Normal => KubeEventType::Normal,
        EventType::Warning => KubeEventType::Warning,
    };
    record(
        &ctx.recorder,
        &rollout.object_ref(&()),
        type_,
        &event.reason,
        &event.reason,
        event.message.clone(),
    )
    .await;
    tracing::info!(
        rollout = %rollout.name_any(),
        namespace = rollout.namespace().unwrap_or_default(),
        reason = %event.reason,
        "{}",
        event.message
    );
}

/// The webhooks' notifications of this decision (to the rollout's own webhooks and the global
/// ones), queued (see [`crate::notifier`]).
fn notify(ctx: &Context, rollout: &EmbeddingRollout, decided: &Decision) {
    let own = rollout
        .spec
        .notifications
        .as_ref()
        .map_or(&[][..], |n| n.webhooks.as_slice());
    let notes = notification::from_decision(
        &rollout.namespace().unwrap_or_default(),
        &rollout.name_any(),
        rollout.metadata.uid.as_deref(),
        &rollout.spec,
        &decided.status,
        &decided.events,
        Utc::now(),
    );
    ctx.notifier.notify(own, notes);
}

/// Webhook URLs from Secrets (the rollout's namespace, or the operator's for a global webhook);
/// each outcome an event on its rollout.
fn notifier(client: Client, recorder: Recorder) -> Notifier {
    let urls: notifier::UrlSource =
        Arc::new(move |ns, key| Box::pin(notifier::url_from_secret(client.clone(), ns, key)));
    let report: notifier::Report = Arc::new(move |d: notifier::Delivery| {
        let recorder = recorder.clone();
        Box::pin(async move {
            let ok = matches!(d.outcome, notifier::Outcome::Delivered { .. });
            let (type_, reason) = if ok {
                (KubeEventType::Normal, "NotificationSent")
            } else {
                (KubeEventType::Warning, "NotificationFailed")
            };
            let message = d.describe();
            if ok {
                tracing::debug!(rollout = %d.notification.rollout, namespace = %d.notification.namespace, "{message}");
            } else {
                tracing::warn!(rollout = %d.notification.rollout, namespace = %d.notification.namespace, "{message}");
            }
            let reference = ObjectReference {
                api_version: Some(EmbeddingRollout::api_version(&()).into_owned()),
                kind: Some(EmbeddingRollout::kind(&()).into_owned()),
                name: Some(d.notification.rollout.clone()),
                namespace: Some(d.notification.namespace.clone()),
                uid: d.notification.uid.clone(),
                ..Default::default()
            };
            record(&recorder, &reference, type_, reason, "Notify", message).await;
        })
    });
    Notifier::new(urls, report)
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn record_metrics(
    ctx: &Context,
    ns: &str,
    name: &str,
    before: &EmbeddingRolloutStatus,
    decided: &Decision,
) {
    let after = &decided.status;
    let m = &ctx.metrics;
    m.set_phase(
        ns,
        name,
        after.phase.as_str(),
        &Phase::ALL.map(Phase::as_str),
    );
    m.set_weight(ns, name, i64::from(after.current_weight));
    if let Some(a) = &after.last_analysis {
        if before.last_analysis.as_ref().map(|b| b.time) != Some(a.time) {
            m.count_verdict(ns, name, a.verdict.as_str());
        }
    }
    if let Some(r) = &after.rollback {
        if before.rollback.as_ref().map(|b| b.started_at) != Some(r.started_at) {
            m.count_rollback(ns, name);
        }
    }
}

fn forget(ctx: &Context, ns: &str, name: &str) {
    ctx.notifier.forget(ns, name);
    ctx.metrics.forget(
        ns,
        name,
        &Phase::ALL.map(Phase::as_str),
        &[Verdict::Pass, Verdict::Fail, Verdict::Inconclusive].map(Verdict::as_str),
    );
}

/// The one status write of a reconcile: server-side apply of the whole status, so fields the new
/// status no longer has are removed (a merge patch would leave them behind).
async fn write_status(
    api: &Api<EmbeddingRollout>,
    name: &str,
    status: &EmbeddingRolloutStatus,
) -> Result<(), Error> {
    let patch = json!({
        "apiVersion": EmbeddingRollout::api_version(&()),
        "kind": EmbeddingRollout::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|e| {
        Error::Status(ClusterError::from_kube(
            format!("EmbeddingRollout {name} status"),
            e,
        ))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_are_w3c_shaped_and_differ() {
        let (a, b) = (trace_id(), trace_id());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_ne!(a, "0".repeat(32));
    }

    #[test]
    fn conflicts_retry_fast_and_are_counted_apart() {
        let conflict = Error::Cluster(ClusterError::Conflict("Ingress x".into()));
        assert_eq!(conflict.kind(), "Conflict");
        assert_eq!(conflict.retry_after(), Duration::from_secs(1));
        let status_conflict = Error::Status(ClusterError::Conflict("status".into()));
        assert_eq!(status_conflict.kind(), "Conflict");
        let missing = Error::Cluster(ClusterError::Missing("Ingress akidb".into()));
        assert_eq!(missing.kind(), "Missing");
        assert!(missing.retry_after() > conflict.retry_after());
        let traffic = Error::Traffic(TrafficError::WeightOutOfRange(200));
        assert_eq!(traffic.kind(), "Traffic");
        assert_eq!(traffic.retry_after(), Duration::from_secs(5));
    }

    #[test]
    fn event_texts_are_cut_on_char_boundaries() {
        assert_eq!(truncate("äbc".into(), 1), "");
        assert_eq!(truncate("äbc".into(), 2), "ä");
        assert_eq!(truncate("abc".into(), 10), "abc");
    }
}

#[cfg(test)]
#[path = "controller_shell_tests.rs"]
mod shell_tests;
