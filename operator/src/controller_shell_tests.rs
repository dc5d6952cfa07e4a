//! The imperative shell against a mock API server (kube-rs's controller-rs `fixtures.rs` idea):
//! a `tower` service answers each request from a table of canned responses and records it, so
//! a test asserts the exact paths, verbs and bodies one reconcile sends, and how each API error
//! (403, 404, 409, 422) is handled. No network, no API server process.

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};

use super::*;

/// One request as the mock received it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    query: String,
    body: Value,
}

/// A canned answer for `method path` (exact path; the query ignored unless `query` is set,
/// then the decoded query must contain it).
#[derive(Clone)]
struct Route {
    method: Method,
    path: String,
    query: Option<String>,
    status: u16,
    body: Value,
}

impl Route {
    fn matches(&self, method: &Method, path: &str, query: &str) -> bool {
        self.method == method
            && self.path == path
            && self.query.as_deref().is_none_or(|q| query.contains(q))
    }
}

#[derive(Clone, Default)]
struct MockApi {
    routes: Arc<Mutex<Vec<Route>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl MockApi {
    fn new(routes: Vec<Route>) -> Self {
        Self {
            routes: Arc::new(Mutex::new(routes)),
            seen: Arc::default(),
        }
    }

    /// Answer one more request from now on (what the API server holds changed).
    fn add(&self, route: Route) {
        self.routes.lock().unwrap().insert(0, route);
    }

    fn client(&self) -> Client {
        let me = self.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let me = me.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let path = parts.uri.path().to_string();
                // Decoded (`labelSelector=kubernetes.io/service-name=x`) so routes read plainly.
                let query = form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("&");
                let seen = Seen {
                    method: parts.method.clone(),
                    path: path.clone(),
                    query: query.clone(),
                    body,
                };
                me.seen.lock().unwrap().push(seen);
                let (status, body) = me
                    .routes
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|r| r.matches(&parts.method, &path, &query))
                    .map(|r| (r.status, r.body.clone()))
                    .unwrap_or_else(|| {
                        (
                            500,
                            status_body(
                                500,
                                &format!("mock: no route for {} {path}", parts.method),
                            ),
                        )
                    });
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(StatusCode::from_u16(status).unwrap())
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&body).unwrap()))
                        .unwrap(),
                )
            }
        });
        Client::new(service, "prod")
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests other than reads.
    fn writes(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method != Method::GET)
            .collect()
    }

    fn unrouted(&self) -> Vec<String> {
        self.seen()
            .iter()
            .filter(|s| {
                !self
                    .routes
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|r| r.matches(&s.method, &s.path, &s.query))
            })
            .map(|s| format!("{} {}", s.method, s.path))
            .collect()
    }
}

fn status_body(code: u16, message: &str) -> Value {
    let reason = match code {
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        422 => "Invalid",
        _ => "InternalError",
    };
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn route(method: Method, path: &str, status: u16, body: Value) -> Route {
    Route {
        method,
        path: path.into(),
        query: None,
        status,
        body,
    }
}

const NS: &str = "/apis/apps/v1/namespaces/prod";
const ROLLOUTS: &str = "/apis/rollout.akidb.io/v1alpha1/namespaces/prod/embeddingrollouts";

fn rollout(status: Value, annotations: Value, finalizers: Value) -> EmbeddingRollout {
    serde_json::from_value(json!({
        "apiVersion": "rollout.akidb.io/v1alpha1",
        "kind": "EmbeddingRollout",
        "metadata": {"name": "r1", "namespace": "prod", "uid": "uid-1", "generation": 1,
                     "resourceVersion": "7", "annotations": annotations, "finalizers": finalizers},
        "spec": {
            "baseline": {"deployment": "akidb-mlx", "service": "akidb-mlx"},
            "candidate": {"name": "akidb-candle", "image": "candle:1.0.0"},
            "ingress": {"name": "akidb-ingress"},
            "steps": [{"weight": 10, "duration": "10m"}, {"weight": 100, "duration": "10m"}]
        },
        "status": status
    }))
    .unwrap()
}

fn deployment(name: &str, replicas: i32, ready: i32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": name, "namespace": "prod", "generation": 1},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": []}}},
           "status": {"observedGeneration": 1, "replicas": replicas, "readyReplicas": ready,
                      "availableReplicas": ready, "updatedReplicas": ready}})
}

fn primary_ingress() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
           "metadata": {"name": "akidb-ingress", "namespace": "prod", "resourceVersion": "11"},
           "spec": {"ingressClassName": "nginx", "rules": [{"host": "embed.example", "http": {"paths": [
               {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "akidb-mlx", "port": {"number": 8080}}}}]}}]}})
}

fn not_found(what: &str) -> Value {
    status_body(404, &format!("{what} not found"))
}

/// The reads a reconcile makes when the watches' stores cannot answer (before they synced, or
/// without them): baseline and primary exist, no candidate, no canary, no autoscalers. With
/// synced stores ([`ctx`]) none of these is sent.
fn live_reads() -> Vec<Route> {
    vec![
        route(
            Method::GET,
            &format!("{NS}/deployments/akidb-mlx"),
            200,
            deployment("akidb-mlx", 3, 3),
        ),
        route(
            Method::GET,
            &format!("{NS}/deployments/akidb-candle"),
            404,
            not_found("deployments.apps \"akidb-candle\""),
        ),
        route(
            Method::GET,
            "/apis/networking.k8s.io/v1/namespaces/prod/ingresses/akidb-ingress",
            200,
            primary_ingress(),
        ),
        route(
            Method::GET,
            "/apis/networking.k8s.io/v1/namespaces/prod/ingresses/akidb-ingress-canary",
            404,
            not_found("ingresses \"akidb-ingress-canary\""),
        ),
        route(
            Method::GET,
            "/apis/autoscaling/v2/namespaces/prod/horizontalpodautoscalers",
            200,
            json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscalerList", "metadata": {}, "items": []}),
        ),
    ]
}

/// What the API server answers to a write on the rollout (the tests look at what was sent).
fn echo_ok() -> Value {
    serde_json::to_value(rollout(Value::Null, json!({}), json!([FINALIZER]))).unwrap()
}

/// What the controller's watches deliver into the stores `observe` reads (crate::caches).
struct Watched {
    deployments: reflector::store::Writer<Deployment>,
    _ingresses: reflector::store::Writer<Ingress>,
    _autoscalers: reflector::store::Writer<HorizontalPodAutoscaler>,
}

/// Synced stores holding `deployments` and `ingresses` (no autoscalers), trimmed as the watches
/// trim them.
fn watched(deployments: &[Value], ingresses: &[Value]) -> (Caches, Watched) {
    fn synced<K>(objects: &[Value], trim: fn(&mut K)) -> (Store<K>, reflector::store::Writer<K>)
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + 'static,
    {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for o in objects {
            let mut o: K = serde_json::from_value(o.clone()).unwrap();
            trim(&mut o);
            writer.apply_watcher_event(&watcher::Event::InitApply(o));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        (store, writer)
    }
    let (d, deployments) = synced(deployments, caches::trim_deployment);
    let (i, ingresses) = synced(ingresses, caches::trim_ingress);
    let (h, autoscalers) = synced(&[], caches::trim_autoscaler);
    (
        Caches::new(d, i, h, None, None),
        Watched {
            deployments,
            _ingresses: ingresses,
            _autoscalers: autoscalers,
        },
    )
}

/// A context whose stores hold what [`live_reads`] answers: the baseline and the primary Ingress.
fn ctx(api: &MockApi) -> Context {
    let (caches, _) = watched(&[deployment("akidb-mlx", 3, 3)], &[primary_ingress()]);
    live_ctx(api).with_caches(caches)
}

/// A context without stores: every object `observe` needs is a GET.
fn live_ctx(api: &MockApi) -> Context {
    Context::new(api.client(), Metrics::new(), Duration::from_secs(1))
}

fn the_deploying_writes() -> Vec<Route> {
    let mut r = Vec::new();
    r.extend([
        route(Method::DELETE, "/api/v1/namespaces/prod/configmaps/akidb-candle-models", 404, not_found("configmaps \"akidb-candle-models\"")),
        route(Method::PATCH, &format!("{NS}/deployments/akidb-candle"), 200, deployment("akidb-candle", 2, 0)),
        route(Method::PATCH, "/api/v1/namespaces/prod/services/akidb-candle", 200,
              json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "akidb-candle"}})),
        route(Method::POST, "/apis/events.k8s.io/v1/namespaces/prod/events", 201,
              json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "eventTime": null})),
    ]);
    r
}

#[tokio::test]
async fn a_new_rollout_gets_its_finalizer_first_then_the_candidate_then_one_status_write() {
    let mut routes = the_deploying_writes();
    routes.push(route(
        Method::PATCH,
        &format!("{ROLLOUTS}/r1"),
        200,
        echo_ok(),
    ));
    routes.push(route(
        Method::PATCH,
        &format!("{ROLLOUTS}/r1/status"),
        200,
        echo_ok(),
    ));
    let api = MockApi::new(routes);
    let r = rollout(Value::Null, json!({}), Value::Null);
    let got = reconcile_inner(&r, &ctx(&api)).await;
    assert!(got.is_ok(), "{got:?}; unrouted {:?}", api.unrouted());
    assert!(api.unrouted().is_empty(), "{:?}", api.unrouted());

    let writes = api.writes();
    let order: Vec<String> = writes
        .iter()
        .map(|w| format!("{} {}", w.method, w.path.trim_start_matches(NS)))
        .collect();
    assert_eq!(
        order.first().map(String::as_str),
        Some(format!("PATCH {ROLLOUTS}/r1").as_str()),
        "the finalizer before any change: {order:?}"
    );
    assert_eq!(
        writes[0].body,
        json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
               {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}])
    );
    let deploy = writes
        .iter()
        .find(|w| w.path == format!("{NS}/deployments/akidb-candle"))
        .expect("the candidate Deployment is applied");
    assert!(
        deploy
            .query
            .contains("fieldManager=embedding-rollout-operator")
            && deploy.query.contains("force=true"),
        "server-side apply with our field manager: {}",
        deploy.query
    );
    assert_eq!(deploy.body["spec"]["replicas"], 2);
    assert_eq!(
        deploy.body["spec"]["template"]["spec"]["containers"][0]["image"],
        "candle:1.0.0"
    );
    assert_eq!(
        deploy.body["metadata"]["annotations"][CANDIDATE_HASH_ANNOTATION_KEY],
        workload::pod_hash(&r.spec.candidate)
    );
    let statuses: Vec<&Seen> = writes
        .iter()
        .filter(|w| w.path.ends_with("/status"))
        .collect();
    assert_eq!(statuses.len(), 1, "one status write per reconcile");
    assert_eq!(statuses[0].body["status"]["phase"], "Deploying");
    assert!(statuses[0]
        .query
        .contains("fieldManager=embedding-rollout-operator"));
    assert!(
        writes
            .iter()
            .any(|w| w.path.ends_with("/events") && w.body["reason"] == "Deploying"),
        "the transition is an event"
    );
    // Nothing touched traffic: the candidate is not ready yet.
    assert!(!order.iter().any(|o| o.contains("ingresses")), "{order:?}");
}

/// Requests that are reads, as `GET path`.
fn gets(api: &MockApi) -> Vec<String> {
    let mut gets: Vec<String> = api
        .seen()
        .iter()
        .filter(|s| s.method == Method::GET)
        .map(|s| format!("GET {}", s.path))
        .collect();
    gets.sort();
    gets
}

fn write_paths(api: &MockApi) -> Vec<String> {
    api.writes()
        .iter()
        .map(|w| format!("{} {}", w.method, w.path))
        .collect()
}

/// Issue 13: `observe` reads the Deployments, Ingresses and autoscalers from the stores the
/// controller's watches fill. The same reconcile of a new rollout sends no GET with synced
/// stores, and the five GETs every reconcile used to send while the stores have not synced
/// (an empty store is not "no such object"). Either way it decides and writes the same.
#[tokio::test]
async fn a_reconcile_served_from_the_stores_sends_no_get_for_what_it_observes() {
    let r = rollout(Value::Null, json!({}), json!([FINALIZER]));
    let mut routes = the_deploying_writes();
    routes.push(route(
        Method::PATCH,
        &format!("{ROLLOUTS}/r1/status"),
        200,
        echo_ok(),
    ));
    let stored = MockApi::new(routes.clone());
    let got = reconcile_inner(&r, &ctx(&stored)).await;
    assert!(got.is_ok(), "{got:?}; unrouted {:?}", stored.unrouted());
    assert!(stored.unrouted().is_empty(), "{:?}", stored.unrouted());
    assert_eq!(gets(&stored), Vec::<String>::new(), "{:?}", stored.seen());

    routes.extend(live_reads());
    let live = MockApi::new(routes);
    let (d, _) = reflector::store();
    let (i, _) = reflector::store();
    let (h, _) = reflector::store();
    let unsynced = live_ctx(&live).with_caches(Caches::new(d, i, h, None, None));
    reconcile_inner(&r, &unsynced).await.unwrap();
    assert!(live.unrouted().is_empty(), "{:?}", live.unrouted());
    let apps = NS;
    let net = "/apis/networking.k8s.io/v1/namespaces/prod/ingresses";
    assert_eq!(
        gets(&live),
        [
            format!("GET {apps}/deployments/akidb-candle"),
            format!("GET {apps}/deployments/akidb-mlx"),
            "GET /apis/autoscaling/v2/namespaces/prod/horizontalpodautoscalers".to_string(),
            format!("GET {net}/akidb-ingress"),
            format!("GET {net}/akidb-ingress-canary"),
        ]
    );
    assert_eq!(
        write_paths(&live),
        write_paths(&stored),
        "the same decision"
    );
    assert_eq!(live.seen().len(), stored.seen().len() + 5);
}

/// The store lags our own writes by the watch's latency: the candidate this reconcile created
/// is read live by the next one (one GET, of that object only) until the store holds the
/// version the write returned; then not at all.
#[tokio::test]
async fn an_object_we_wrote_is_read_live_until_the_store_holds_our_version() {
    let (caches, mut watched) = watched(&[deployment("akidb-mlx", 3, 3)], &[primary_ingress()]);
    let mut created = deployment("akidb-candle", 2, 0);
    created["metadata"]["resourceVersion"] = json!("21");
    let mut routes = vec![route(
        Method::PATCH,
        &format!("{NS}/deployments/akidb-candle"),
        200,
        created.clone(),
    )];
    routes.extend(the_deploying_writes());
    routes.extend([
        route(
            Method::PATCH,
            &format!("{ROLLOUTS}/r1/status"),
            200,
            echo_ok(),
        ),
        route(
            Method::GET,
            &format!("{NS}/deployments/akidb-candle"),
            200,
            created.clone(),
        ),
    ]);
    let api = MockApi::new(routes);
    let c = live_ctx(&api).with_caches(caches);

    let new = rollout(Value::Null, json!({}), json!([FINALIZER]));
    reconcile_inner(&new, &c).await.unwrap();
    assert_eq!(gets(&api), Vec::<String>::new());
    let written = api
        .writes()
        .into_iter()
        .find(|w| w.path.ends_with("/status"))
        .unwrap()
        .body["status"]
        .clone();
    let deploying = rollout(written, json!({}), json!([FINALIZER]));

    let before = api.seen().len();
    reconcile_inner(&deploying, &c).await.unwrap();
    let reads: Vec<String> = api.seen()[before..]
        .iter()
        .filter(|s| s.method == Method::GET)
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(reads, [format!("{NS}/deployments/akidb-candle")]);

    let mut event: Deployment = serde_json::from_value(created).unwrap();
    caches::trim_deployment(&mut event);
    watched
        .deployments
        .apply_watcher_event(&watcher::Event::Apply(event));
    let before = api.seen().len();
    reconcile_inner(&deploying, &c).await.unwrap();
    assert!(
        !api.seen()[before..].iter().any(|s| s.method == Method::GET),
        "{:?}",
        &api.seen()[before..]
    );
    assert!(api.unrouted().is_empty(), "{:?}", api.unrouted());
}

/// One reconcile of a new rollout whose status write the API server answers with `code`.
async fn reconcile_with_status_answer(code: u16, message: &str) -> Error {
    let mut routes = the_deploying_writes();
    routes.push(route(
        Method::PATCH,
        &format!("{ROLLOUTS}/r1/status"),
        code,
        status_body(code, message),
    ));
    let api = MockApi::new(routes);
    let r = rollout(Value::Null, json!({}), json!([FINALIZER]));
    reconcile_inner(&r, &ctx(&api)).await.unwrap_err()
}

#[tokio::test]
async fn a_status_rejected_as_invalid_is_not_retried_every_second() {
    let e = reconcile_with_status_answer(
        422,
        "EmbeddingRollout.rollout.akidb.io \"r1\" is invalid: status.history: Too many: 11",
    )
    .await;
    assert_eq!(e.kind(), "Invalid", "{e}");
    assert_eq!(e.retry_after(), Duration::from_secs(60));
    assert!(e.to_string().contains("status.history"), "{e}");
}

#[tokio::test]
async fn a_conflict_on_the_status_write_re_reads_within_a_second() {
    let e = reconcile_with_status_answer(
        409,
        "Operation cannot be fulfilled: the object has been modified",
    )
    .await;
    assert_eq!(e.kind(), "Conflict");
    assert_eq!(e.retry_after(), Duration::from_secs(1));
}

#[tokio::test]
async fn a_forbidden_action_stops_the_reconcile_says_so_in_an_event_and_writes_no_status() {
    let mut routes = Vec::new();
    routes.extend([
        route(Method::DELETE, "/api/v1/namespaces/prod/configmaps/akidb-candle-models", 404, not_found("x")),
        route(Method::PATCH, &format!("{NS}/deployments/akidb-candle"), 403,
              status_body(403, "deployments.apps \"akidb-candle\" is forbidden: User \"system:serviceaccount:x:op\" cannot patch resource \"deployments\"")),
        route(Method::POST, "/apis/events.k8s.io/v1/namespaces/prod/events", 201,
              json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "eventTime": null})),
    ]);
    let api = MockApi::new(routes);
    let r = rollout(Value::Null, json!({}), json!([FINALIZER]));
    let e = reconcile_inner(&r, &ctx(&api)).await.unwrap_err();
    assert_eq!(e.kind(), "Forbidden", "{e}");
    assert_eq!(e.retry_after(), Duration::from_secs(60));
    let writes = api.writes();
    assert!(
        writes.iter().any(|w| w.path.ends_with("/events")
            && w.body["reason"] == "ActionFailed"
            && w.body["note"].as_str().unwrap_or("").contains("forbidden")),
        "{writes:?}"
    );
    assert!(
        !writes.iter().any(|w| w.path.ends_with("/status")),
        "a status claiming the candidate was deployed would not be true"
    );
}

#[tokio::test]
async fn a_command_is_cleared_with_a_guarded_patch_and_a_newer_one_survives_as_a_conflict() {
    let status = json!({"phase": "Progressing", "currentStep": 0, "currentWeight": 10,
                        "stepStartedAt": Utc::now().to_rfc3339(), "candidateHash": "x",
                        "observedGeneration": 1});
    let r = rollout(
        status,
        json!({COMMAND_ANNOTATION: "pause"}),
        json!([FINALIZER]),
    );
    let guarded = json!([
        {"op": "test", "path": "/metadata/annotations/rollout.akidb.io~1command", "value": "pause"},
        {"op": "remove", "path": "/metadata/annotations/rollout.akidb.io~1command"}
    ]);
    // Someone wrote a new command between our read and our clear: the test op fails (422).
    let mut routes = Vec::new();
    routes.push(route(
        Method::PATCH,
        &format!("{ROLLOUTS}/r1"),
        422,
        status_body(422, "the server rejected our request due to an error in our request: testing value /metadata/annotations/rollout.akidb.io~1command failed"),
    ));
    let api = MockApi::new(routes);
    let e = apply_action(&ctx(&api), &r, &Action::ClearCommand)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "Conflict", "{e}");
    let writes = api.writes();
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].body, guarded);
    assert!(
        writes[0].query.is_empty() || !writes[0].query.contains("force"),
        "a JSON patch, not an apply"
    );
}

#[tokio::test]
async fn every_action_sends_the_request_it_stands_for() {
    let r = rollout(Value::Null, json!({}), json!([FINALIZER]));
    let cases: Vec<(Action, Vec<Route>, Method, String)> = vec![
        (
            Action::ScaleCandidate(0),
            vec![route(
                Method::PATCH,
                &format!("{NS}/deployments/akidb-candle"),
                200,
                deployment("akidb-candle", 0, 0),
            )],
            Method::PATCH,
            format!("{NS}/deployments/akidb-candle"),
        ),
        (
            Action::ScaleBaseline(3),
            vec![route(
                Method::PATCH,
                &format!("{NS}/deployments/akidb-mlx"),
                200,
                deployment("akidb-mlx", 3, 3),
            )],
            Method::PATCH,
            format!("{NS}/deployments/akidb-mlx"),
        ),
        (
            Action::DeleteCanaryIngress,
            vec![route(
                Method::DELETE,
                "/apis/networking.k8s.io/v1/namespaces/prod/ingresses/akidb-ingress-canary",
                200,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
            )],
            Method::DELETE,
            "/apis/networking.k8s.io/v1/namespaces/prod/ingresses/akidb-ingress-canary".into(),
        ),
        (
            Action::DeleteCandidateAutoscaler,
            vec![route(
                Method::DELETE,
                "/apis/autoscaling/v2/namespaces/prod/horizontalpodautoscalers/akidb-candle",
                404,
                not_found("hpa"),
            )],
            Method::DELETE,
            "/apis/autoscaling/v2/namespaces/prod/horizontalpodautoscalers/akidb-candle".into(),
        ),
        (
            Action::SetCanaryWeight(10),
            vec![
                route(
                    Method::GET,
                    "/apis/networking.k8s.io/v1/namespaces/prod/ingresses/akidb-ingress",
                    200,
                    primary_ingress(),
                ),
                route(
                    Method::PATCH,
                    "/apis/networking.k8s.io/v1/namespaces/prod/ingresses/akidb-ingress-canary",
                    200,
                    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "akidb-ingress-canary"}}),
                ),
            ],
            Method::PATCH,
            "/apis/networking.k8s.io/v1/namespaces/prod/ingresses/akidb-ingress-canary".into(),
        ),
        (
            Action::PointPrimaryIngressAt(Backend::Candidate),
            vec![
                route(
                    Method::GET,
                    "/apis/networking.k8s.io/v1/namespaces/prod/ingresses/akidb-ingress",
                    200,
                    primary_ingress(),
                ),
                route(
                    Method::PATCH,
                    "/apis/networking.k8s.io/v1/namespaces/prod/ingresses/akidb-ingress",
                    200,
                    primary_ingress(),
                ),
            ],
            Method::PATCH,
            "/apis/networking.k8s.io/v1/namespaces/prod/ingresses/akidb-ingress".into(),
        ),
        (
            Action::RemoveFinalizer,
            vec![route(
                Method::PATCH,
                &format!("{ROLLOUTS}/r1"),
                200,
                echo_ok(),
            )],
            Method::PATCH,
            format!("{ROLLOUTS}/r1"),
        ),
    ];
    for (action, routes, method, path) in cases {
        let api = MockApi::new(routes);
        let got = apply_action(&ctx(&api), &r, &action).await;
        assert!(
            got.is_ok(),
            "{action:?}: {got:?}; unrouted {:?}",
            api.unrouted()
        );
        let writes = api.writes();
        let w = writes
            .iter()
            .find(|w| w.method == method && w.path == path)
            .unwrap_or_else(|| panic!("{action:?}: no {method} {path} in {writes:?}"));
        match &action {
            Action::ScaleCandidate(n) | Action::ScaleBaseline(n) => {
                assert_eq!(w.body, json!({"spec": {"replicas": n}}), "{action:?}")
            }
            Action::SetCanaryWeight(_) => {
                let a = &w.body["metadata"]["annotations"];
                assert_eq!(a["nginx.ingress.kubernetes.io/canary"], "true");
                assert_eq!(a["nginx.ingress.kubernetes.io/canary-weight"], "10");
                assert_eq!(
                    w.body["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"],
                    "akidb-candle"
                );
            }
            Action::PointPrimaryIngressAt(_) => {
                assert_eq!(
                    w.body["metadata"]["resourceVersion"], "11",
                    "guarded by the version it was computed from: {}",
                    w.body
                );
                assert!(w.body.to_string().contains("akidb-candle"), "{}", w.body);
            }
            Action::RemoveFinalizer => assert_eq!(
                w.body,
                json!([{"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
                       {"op": "remove", "path": "/metadata/finalizers/0"}])
            ),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_missing_primary_ingress_is_missing_not_an_api_failure() {
    let api = MockApi::new(vec![route(
        Method::GET,
        "/apis/networking.k8s.io/v1/namespaces/prod/ingresses/akidb-ingress",
        404,
        not_found("ingresses.networking.k8s.io \"akidb-ingress\""),
    )]);
    let r = rollout(Value::Null, json!({}), json!([FINALIZER]));
    let e = apply_action(&ctx(&api), &r, &Action::SetCanaryWeight(10))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "Missing", "{e}");
    assert_eq!(e.retry_after(), Duration::from_secs(10));
    assert!(api.writes().is_empty(), "no canary without its primary");
}

const CANDIDATE_HASH_ANNOTATION_KEY: &str = crate::crd::CANDIDATE_HASH_ANNOTATION;

#[tokio::test]
async fn prometheus_credentials_are_read_from_the_rollouts_namespace_and_a_403_is_named() {
    use crate::crd::{PrometheusSpec, SecretKeyRef};
    let spec = PrometheusSpec {
        address: "https://mimir:8443".into(),
        bearer_token: Some(SecretKeyRef {
            name: "mimir".into(),
            key: "token".into(),
        }),
        ..PrometheusSpec::default()
    };
    // "t0ken" in base64, as the API server returns Secret data.
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mimir", "namespace": "prod"},
                        "data": {"token": "dDBrZW4="}});
    let api = MockApi::new(vec![route(
        Method::GET,
        "/api/v1/namespaces/prod/secrets/mimir",
        200,
        secret,
    )]);
    let access = prometheus_access::resolve(&api.client(), "prod", &spec)
        .await
        .unwrap();
    assert_ne!(access, Access::default());
    assert!(
        !format!("{access:?}").contains("t0ken"),
        "redacted: {access:?}"
    );
    assert_eq!(api.seen().len(), 1, "one GET, nothing listed or watched");

    let denied = MockApi::new(vec![route(
        Method::GET,
        "/api/v1/namespaces/prod/secrets/mimir",
        403,
        status_body(403, "secrets \"mimir\" is forbidden: User \"system:serviceaccount:x:op\" cannot get resource \"secrets\""),
    )]);
    let e = prometheus_access::resolve(&denied.client(), "prod", &spec)
        .await
        .unwrap_err();
    assert!(
        e.to_string().starts_with(
            "cannot read Secret prod/mimir (for prometheus.bearerToken): 403 Forbidden: secrets \"mimir\" is forbidden"
        ),
        "{e}"
    );
}

#[tokio::test]
async fn gate_templates_are_read_by_name_in_their_scope_and_a_missing_or_forbidden_one_is_named() {
    use crate::crd::GateTemplateRef;
    use crate::decision::gate_templates::resolve;
    let template = |kind: &str, name: &str, gate: &str| {
        json!({"apiVersion": "rollout.akidb.io/v1alpha1", "kind": kind,
               "metadata": {"name": name, "namespace": if kind == "EmbeddingGateTemplate" { "prod" } else { "" }},
               "spec": {"gates": [{"name": gate, "query": "up{service=\"{{service}}\"}", "min": 1.0}]}})
    };
    let ours = "/apis/rollout.akidb.io/v1alpha1/namespaces/prod/embeddinggatetemplates";
    let cluster = "/apis/rollout.akidb.io/v1alpha1/clusterembeddinggatetemplates";
    let api = MockApi::new(vec![
        route(
            Method::GET,
            &format!("{ours}/team"),
            200,
            template("EmbeddingGateTemplate", "team", "up"),
        ),
        route(
            Method::GET,
            &format!("{cluster}/org"),
            200,
            template("ClusterEmbeddingGateTemplate", "org", "alerts"),
        ),
        route(
            Method::GET,
            &format!("{ours}/gone"),
            404,
            not_found("embeddinggatetemplates.rollout.akidb.io \"gone\""),
        ),
        route(
            Method::GET,
            &format!("{cluster}/secret"),
            403,
            status_body(
                403,
                "clusterembeddinggatetemplates.rollout.akidb.io \"secret\" is forbidden",
            ),
        ),
    ]);
    let refs = [
        ("team", false),
        ("org", true),
        ("gone", false),
        ("secret", true),
    ]
    .map(|(name, cluster_scope)| GateTemplateRef {
        name: name.into(),
        cluster_scope,
    });
    let fetched = gate_template_reader::read(&api.client(), "prod", &refs).await;

    let mut paths: Vec<_> = api
        .seen()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            format!("GET {cluster}/org"),
            format!("GET {cluster}/secret"),
            format!("GET {ours}/gone"),
            format!("GET {ours}/team"),
        ],
        "one GET per reference, nothing listed or watched"
    );
    let gates = crate::crd::Gates {
        templates: refs.to_vec(),
        ..Default::default()
    };
    let resolved = resolve(&gates, &fetched);
    let names: Vec<_> = resolved
        .gates
        .custom
        .iter()
        .map(|g| g.name.as_str())
        .collect();
    assert_eq!(names, ["up", "alerts"]);
    assert_eq!(
        resolved.problems,
        [
            "gate template EmbeddingGateTemplate gone: not found in namespace prod".to_string(),
            "gate template ClusterEmbeddingGateTemplate secret: the operator may not read it (403 clusterembeddinggatetemplates.rollout.akidb.io \"secret\" is forbidden); the chart's ClusterRole grants get on gate templates".to_string(),
        ]
    );
}

// ----- the parity probe's edge -------------------------------------------------------------------

/// A stand-in embedding server on loopback answering `/api/v1/embed` with `vector` for every text
/// (and 503 on `/v1/embeddings`); returns its port and the bodies it received.
async fn embedder(model: &'static str, vector: Vec<f32>) -> (u16, Arc<Mutex<Vec<Value>>>) {
    use axum::{routing::post, Json};
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let seen = got.clone();
    let app = axum::Router::new()
        .route(
            "/api/v1/embed",
            post(move |Json(body): Json<Value>| {
                let seen = seen.clone();
                let vector = vector.clone();
                async move {
                    let n = body["texts"].as_array().map_or(0, Vec::len);
                    seen.lock().unwrap().push(body);
                    Json(json!({"model": model, "dimension": vector.len(),
                                "embeddings": vec![vector; n], "usage": {"tokens": 1}}))
                }
            }),
        )
        .route(
            "/v1/embeddings",
            post(|| async { (http::StatusCode::SERVICE_UNAVAILABLE, "breaker open") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, got)
}

fn service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "prod"},
           "spec": {"ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}})
}

fn slices(service: &str, endpoints: Value) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList", "metadata": {},
           "items": [{"metadata": {"name": format!("{service}-x"), "labels": {"kubernetes.io/service-name": service}},
                      "addressType": "FQDN", "ports": [{"name": "http", "port": endpoints["port"]}],
                      "endpoints": endpoints["endpoints"]}]})
}

fn slice_route(service: &str, body: Value) -> Route {
    Route {
        query: Some(format!("kubernetes.io/service-name={service}")),
        ..route(
            Method::GET,
            "/apis/discovery.k8s.io/v1/namespaces/prod/endpointslices",
            200,
            body,
        )
    }
}

fn parity_routes(b_port: u16, c_port: u16, c_ready: bool) -> Vec<Route> {
    vec![
        route(
            Method::GET,
            "/api/v1/namespaces/prod/services/akidb-mlx",
            200,
            service("akidb-mlx"),
        ),
        route(
            Method::GET,
            "/api/v1/namespaces/prod/services/akidb-candle",
            200,
            service("akidb-candle"),
        ),
        slice_route(
            "akidb-mlx",
            slices(
                "akidb-mlx",
                json!({"port": b_port,
            "endpoints": [{"addresses": ["mlx-a.localhost"], "conditions": {"ready": true}}]}),
            ),
        ),
        slice_route(
            "akidb-candle",
            slices(
                "akidb-candle",
                json!({"port": c_port,
            "endpoints": [{"addresses": ["candle-a.localhost"], "conditions": {"ready": c_ready}}]}),
            ),
        ),
    ]
}

fn parity_spec(extra: Value) -> crate::crd::ParitySpec {
    let mut v = json!({"maxTexts": 3});
    for (k, x) in extra.as_object().cloned().unwrap_or_default() {
        v[k] = x;
    }
    serde_json::from_value(v).unwrap()
}

async fn run_probe(
    api: &MockApi,
    spec: &crate::crd::ParitySpec,
) -> crate::decision::parity::ParityProbe {
    let side = |service: &'static str, api| parity_probe::Side {
        service,
        port: 8080,
        api,
        model: None,
    };
    let request = parity_probe::Request {
        namespace: "prod",
        spec,
        baseline: side("akidb-mlx", spec.baseline_api.unwrap_or(spec.api)),
        candidate: side("akidb-candle", spec.api),
        round: 0,
        timeout: Duration::from_secs(5),
    };
    let http = crate::http_client::builder().build().unwrap();
    parity_probe::probe(&api.client(), &http, &request).await
}

#[tokio::test]
async fn the_parity_probe_sends_the_same_texts_to_a_ready_endpoint_of_each_service() {
    let (b_port, b_seen) = embedder("m", vec![1.0, 0.0]).await;
    let (c_port, c_seen) = embedder("m", vec![0.6, 0.8]).await;
    let api = MockApi::new(parity_routes(b_port, c_port, true));
    let spec = parity_spec(json!({}));
    let probe = run_probe(&api, &spec).await;
    assert!(api.unrouted().is_empty(), "{:?}", api.unrouted());
    assert!(
        api.writes().is_empty(),
        "the probe only reads the API: {:?}",
        api.writes()
    );
    // One request each, with the same three built-in texts.
    let (b, c) = (
        b_seen.lock().unwrap().clone(),
        c_seen.lock().unwrap().clone(),
    );
    assert_eq!((b.len(), c.len()), (1, 1));
    assert_eq!(b[0]["texts"], c[0]["texts"]);
    assert_eq!(b[0]["texts"].as_array().unwrap().len(), 3);
    let j = crate::decision::parity::judge(&probe, &spec);
    assert_eq!(j.verdict, Verdict::Fail, "{}", j.result.evidence);
    assert!(
        j.result.evidence.starts_with("min cosine 0.6 over 3 texts"),
        "{}",
        j.result.evidence
    );
}

#[tokio::test]
async fn a_parity_probe_without_an_answer_says_which_side_and_why() {
    let (b_port, _) = embedder("m", vec![1.0, 0.0]).await;
    let (c_port, _) = embedder("m", vec![1.0, 0.0]).await;
    // No ready candidate endpoint.
    let api = MockApi::new(parity_routes(b_port, c_port, false));
    let spec = parity_spec(json!({}));
    let j = crate::decision::parity::judge(&run_probe(&api, &spec).await, &spec);
    assert_eq!(j.verdict, Verdict::Inconclusive);
    assert!(j.missing);
    assert_eq!(
        j.result.evidence,
        "parity probe incomplete: candidate: Service prod/akidb-candle has no ready endpoint"
    );
    // The OpenAI route answers 503: the status and the body are in the reason.
    let api = MockApi::new(parity_routes(b_port, c_port, true));
    let spec = parity_spec(json!({"api": "OpenAI", "baselineApi": "Embed"}));
    let j = crate::decision::parity::judge(&run_probe(&api, &spec).await, &spec);
    assert_eq!(j.verdict, Verdict::Inconclusive);
    assert!(
        j.result.evidence.contains(&format!(
            "candidate: POST http://127.0.0.1:{c_port}/v1/embeddings: HTTP 503 Service Unavailable: breaker open"
        )),
        "{}",
        j.result.evidence
    );
    // A texts ConfigMap that does not exist: named, and no request is sent.
    let mut routes = parity_routes(b_port, c_port, true);
    routes.push(route(
        Method::GET,
        "/api/v1/namespaces/prod/configmaps/texts",
        404,
        not_found("configmaps \"texts\""),
    ));
    let api = MockApi::new(routes);
    let spec = parity_spec(json!({"texts": {"name": "texts", "key": "t"}}));
    let j = crate::decision::parity::judge(&run_probe(&api, &spec).await, &spec);
    assert_eq!(
        j.result.evidence,
        "parity probe incomplete: ConfigMap prod/texts (for parity.texts) not found"
    );
}

/// The watch cache can hand the next reconcile the rollout from before our own status write
/// (an owned object's event arrives first). Deciding from it would repeat the transition; the
/// shell reads the rollout afresh instead.
#[tokio::test]
async fn a_cached_rollout_older_than_our_status_write_is_read_afresh_before_deciding() {
    let mut routes = the_deploying_writes();
    routes.push(route(
        Method::PATCH,
        &format!("{ROLLOUTS}/r1/status"),
        200,
        echo_ok(),
    ));
    let api = MockApi::new(routes);
    let c = Arc::new(ctx(&api));
    let stale = Arc::new(rollout(Value::Null, json!({}), json!([FINALIZER])));
    let rollout_reads = |api: &MockApi| {
        api.seen()
            .iter()
            .filter(|s| s.method == Method::GET && s.path == format!("{ROLLOUTS}/r1"))
            .count()
    };
    let transitions = |api: &MockApi| {
        api.writes()
            .iter()
            .filter(|w| w.path.ends_with("/status") || w.body["reason"] == "Deploying")
            .count()
    };

    // Nothing written yet: the cached object is all there is, and it starts the rollout.
    reconcile(stale.clone(), c.clone()).await.unwrap();
    assert_eq!(
        transitions(&api),
        2,
        "a Deploying event and status: {:?}",
        api.writes()
    );
    assert_eq!(rollout_reads(&api), 0);
    let written = api
        .writes()
        .into_iter()
        .find(|w| w.path.ends_with("/status"))
        .unwrap()
        .body["status"]
        .clone();
    assert_eq!(written["phase"], "Deploying");

    // The API server has the status we wrote; the cache still hands us the object without it.
    api.add(route(
        Method::GET,
        &format!("{ROLLOUTS}/r1"),
        200,
        serde_json::to_value(rollout(written, json!({}), json!([FINALIZER]))).unwrap(),
    ));
    // Nor has the Deployment store seen the candidate we just applied: it is read live (this
    // mock keeps nothing it is sent, so the answer is the 404 every read got before the stores).
    api.add(route(
        Method::GET,
        &format!("{NS}/deployments/akidb-candle"),
        404,
        not_found("deployments.apps \"akidb-candle\""),
    ));
    reconcile(stale, c.clone()).await.unwrap();
    assert_eq!(rollout_reads(&api), 1, "read afresh: {:?}", api.seen());
    assert_eq!(
        transitions(&api),
        2,
        "the transition is not repeated: {:?}",
        api.writes()
    );
    assert!(api.unrouted().is_empty(), "{:?}", api.unrouted());
}

/// The Gateway API provider reads the HTTPRoute as stored and sends one JSON patch of only the
/// managed rule's backendRefs, guarded by its resourceVersion; a concurrent edit (the API
/// server's 422 for a failed `test`) is a conflict, retried within a second.
#[tokio::test]
async fn a_gateway_weight_is_one_guarded_json_patch_of_the_routes_backend_refs() {
    const ROUTE: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/gateways/httproutes/embed";
    let mut r = rollout(Value::Null, json!({}), json!([FINALIZER]));
    r.spec.ingress = None;
    r.spec.traffic = Some(crate::crd::TrafficSpec {
        gateway_api: Some(crate::crd::GatewayApiSpec {
            http_route: crate::crd::HttpRouteRef {
                name: "embed".into(),
                namespace: Some("gateways".into()),
            },
            remove_baseline_on_promotion: false,
        }),
        ..Default::default()
    });
    let stored = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "embed", "namespace": "gateways", "resourceVersion": "77"},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
             "backendRefs": [{"name": "akidb-mlx", "namespace": "prod", "port": 8080}]}]},
        "status": {"parents": []}
    });
    let api = MockApi::new(vec![
        route(Method::GET, ROUTE, 200, stored.clone()),
        route(Method::PATCH, ROUTE, 200, stored.clone()),
    ]);
    apply_action(&ctx(&api), &r, &Action::SetCanaryWeight(10))
        .await
        .unwrap();
    let writes = api.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(
        writes[0].body,
        json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": "77"},
            {"op": "replace", "path": "/spec/rules/0/backendRefs", "value": [
                {"name": "akidb-mlx", "namespace": "prod", "port": 8080, "weight": 90},
                {"name": "akidb-candle", "namespace": "prod", "port": 8080, "weight": 10}]}
        ])
    );

    let conflict = MockApi::new(vec![
        route(Method::GET, ROUTE, 200, stored),
        route(
            Method::PATCH,
            ROUTE,
            422,
            status_body(422, "the server rejected our request due to an error in our request: testing value /metadata/resourceVersion failed"),
        ),
    ]);
    let e = apply_action(&ctx(&conflict), &r, &Action::SetCanaryWeight(10))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "Conflict", "{e}");

    let missing = MockApi::new(vec![route(
        Method::GET,
        ROUTE,
        404,
        not_found("httproutes \"embed\""),
    )]);
    let e = apply_action(&ctx(&missing), &r, &Action::SetCanaryWeight(10))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "Missing", "{e}");
    assert!(missing.writes().is_empty());
}

// ----- the evidence kept: every analysis in EmbeddingRolloutAnalysis objects ---------------------

const ANALYSES: &str = "/apis/rollout.akidb.io/v1alpha1/namespaces/prod/embeddingrolloutanalyses";
/// The first object of step 1 of r1, which began at 10:00:00.
const CHUNK0: &str = "r1-step1-20250301-100000-0000";

fn at(min: u32) -> String {
    format!("2025-03-01T10:{min:02}:00Z")
}

/// An analysis of step 0 as the decision writes it into `status.history`.
fn analysis_record(min: u32, look: u32, verdict: &str) -> Value {
    json!({"time": at(min), "step": 0, "weight": 10, "look": look,
           "candidateP95Ms": 21.5, "baselineP95Ms": 18.25, "errorRate": 0.002, "breakerState": "Closed",
           "stepRequests": 1500, "baselineStepRequests": 1600, "verdict": verdict,
           "gates": [{"gate": "maxP95Ms", "verdict": verdict, "evidence": "P(>35 ms) = 1.1 % (n = 1500)",
                      "value": 0.011, "low": 0.006, "high": 0.018, "threshold": 0.05, "samples": 1500}],
           "reasons": if verdict == "Pass" { json!([]) } else { json!(["maxP95Ms: P(>35 ms) = 9 %"]) }})
}

/// The same analysis as an EmbeddingRolloutAnalysis keeps it.
fn kept_record(min: u32, look: u32, verdict: &str) -> Value {
    let mut v = json!({"t": at(min), "v": verdict, "lk": look, "c95": 21.5, "b95": 18.25, "ce": 0.002,
           "br": "Closed", "cs": 1500, "bs": 1600,
           "g": [{"id": "maxP95Ms", "v": verdict, "x": 0.011, "lo": 0.006, "hi": 0.018, "th": 0.05, "s": 1500}]});
    if verdict != "Pass" {
        v["r"] = json!(["maxP95Ms: P(>35 ms) = 9 %"]);
    }
    v
}

/// A rollout in step 1 (weight 10, begun 10:00) whose status holds `history`.
fn in_step_one(history: Vec<Value>) -> Value {
    json!({"phase": "Progressing", "currentStep": 0, "currentWeight": 10, "stepStartedAt": at(0),
           "history": history,
           "stepSummaries": [{"step": 0, "weight": 10, "startedAt": at(0)}]})
}

fn status_of(v: Value) -> EmbeddingRolloutStatus {
    serde_json::from_value(v).unwrap()
}

/// The object CHUNK0 as the API server holds it, with these (look, minute, verdict) analyses.
fn chunk0(analyses: &[(u32, u32, &str)]) -> Value {
    let kept: Vec<Value> = analyses
        .iter()
        .map(|(look, min, v)| kept_record(*min, *look, v))
        .collect();
    let n = |v: &str| analyses.iter().filter(|a| a.2 == v).count();
    let last = analyses.last().unwrap();
    json!({"apiVersion": "rollout.akidb.io/v1alpha1", "kind": "EmbeddingRolloutAnalysis",
           "metadata": {"name": CHUNK0, "namespace": "prod",
               "labels": {"rollout.akidb.io/rollout": "r1", "rollout.akidb.io/step": "0",
                          "rollout.akidb.io/step-started-at": "20250301T100000Z", "rollout.akidb.io/chunk": "0"},
               "ownerReferences": [{"apiVersion": "rollout.akidb.io/v1alpha1", "kind": "EmbeddingRollout",
                                    "name": "r1", "uid": "uid-1", "controller": false, "blockOwnerDeletion": true}]},
           "spec": {"rollout": "r1", "step": 0, "stepOf": "1/2", "weight": 10, "stepStartedAt": at(0),
                    "chunk": 0, "count": analyses.len(), "passed": n("Pass"), "failed": n("Fail"),
                    "inconclusive": n("Inconclusive"), "firstTime": at(analyses[0].1),
                    "lastTime": at(last.1), "lastVerdict": last.2, "analyses": kept}})
}

/// The rollout's objects as a metadata-only list returns them.
fn listed(objects: &[Value]) -> Route {
    let items: Vec<Value> = objects
        .iter()
        .map(|o| json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": o["metadata"]}))
        .collect();
    Route {
        query: Some("labelSelector=rollout.akidb.io/rollout=r1".into()),
        ..route(
            Method::GET,
            ANALYSES,
            200,
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {}, "items": items}),
        )
    }
}

fn event_route() -> Route {
    route(
        Method::POST,
        "/apis/events.k8s.io/v1/namespaces/prod/events",
        201,
        json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "eventTime": null}),
    )
}

/// The requests to EmbeddingRolloutAnalyses, as `VERB path?query`.
fn analysis_calls(api: &MockApi) -> Vec<String> {
    api.seen()
        .iter()
        .filter(|s| s.path.starts_with(ANALYSES))
        .map(|s| {
            let q = if s.query.contains("labelSelector") {
                format!("?{}", s.query)
            } else {
                String::new()
            };
            format!("{} {}{q}", s.method, s.path.trim_start_matches(ANALYSES))
        })
        .collect()
}

/// After the status write (never before), every analysis of `status.history` no object holds is
/// kept, oldest first: the first creates the step's object, the next ones are JSON patches that
/// append one analysis each, guarded by a `test` of the count. Nothing is read again while this
/// process knows the tail, and an analysis kept once is never sent again.
#[tokio::test]
async fn analyses_are_kept_after_the_status_write_one_append_each_and_never_twice() {
    let mut routes = the_deploying_writes();
    routes.extend([
        route(
            Method::PATCH,
            &format!("{ROLLOUTS}/r1/status"),
            200,
            echo_ok(),
        ),
        listed(&[]),
        route(Method::POST, ANALYSES, 201, chunk0(&[(1, 1, "Pass")])),
        route(
            Method::PATCH,
            &format!("{ANALYSES}/{CHUNK0}"),
            200,
            chunk0(&[(1, 1, "Pass"), (2, 2, "Fail")]),
        ),
    ]);
    let api = MockApi::new(routes);
    let c = ctx(&api);
    // A status from before the objects were kept: its history is appended on the first reconcile.
    let mut status = in_step_one(vec![
        analysis_record(1, 1, "Pass"),
        analysis_record(2, 2, "Fail"),
    ]);
    status["phase"] = json!("Pending");
    let r = rollout(status, json!({}), json!([FINALIZER]));
    let got = reconcile_inner(&r, &c).await;
    assert!(got.is_ok(), "{got:?}; unrouted {:?}", api.unrouted());
    assert!(api.unrouted().is_empty(), "{:?}", api.unrouted());

    let writes: Vec<String> = api
        .writes()
        .iter()
        .map(|w| format!("{} {}", w.method, w.path))
        .collect();
    let position = |w: &str| {
        writes
            .iter()
            .position(|x| x == w)
            .unwrap_or_else(|| panic!("no {w} in {writes:?}"))
    };
    assert!(
        position(&format!("PATCH {ROLLOUTS}/r1/status")) < position(&format!("POST {ANALYSES}"))
    );
    assert_eq!(
        analysis_calls(&api),
        [
            "GET ?labelSelector=rollout.akidb.io/rollout=r1".to_string(),
            "POST ".into(),
            format!("PATCH /{CHUNK0}"),
        ]
    );
    let sent: Vec<Seen> = api
        .writes()
        .into_iter()
        .filter(|w| w.path.starts_with(ANALYSES))
        .collect();
    let created = &sent[0].body;
    assert_eq!(created["metadata"]["name"], CHUNK0);
    assert_eq!(created["metadata"]["namespace"], "prod");
    assert_eq!(
        created["metadata"]["labels"],
        json!({"rollout.akidb.io/rollout": "r1", "rollout.akidb.io/step": "0",
               "rollout.akidb.io/step-started-at": "20250301T100000Z", "rollout.akidb.io/chunk": "0",
               "app.kubernetes.io/managed-by": "embedding-rollout-operator"})
    );
    assert_eq!(
        created["metadata"]["ownerReferences"],
        json!([{"apiVersion": "rollout.akidb.io/v1alpha1", "kind": "EmbeddingRollout", "name": "r1",
                "uid": "uid-1", "controller": false, "blockOwnerDeletion": true}])
    );
    assert_eq!(
        created["spec"],
        json!({"rollout": "r1", "step": 0, "stepOf": "1/2", "weight": 10, "stepStartedAt": at(0),
               "chunk": 0, "count": 1, "passed": 1, "failed": 0, "inconclusive": 0,
               "firstTime": at(1), "lastTime": at(1), "lastVerdict": "Pass",
               "analyses": [kept_record(1, 1, "Pass")]})
    );
    assert!(
        sent[0]
            .query
            .contains("fieldManager=embedding-rollout-operator"),
        "{}",
        sent[0].query
    );
    assert_eq!(
        sent[1].body,
        json!([
            {"op": "test", "path": "/spec/count", "value": 1},
            {"op": "add", "path": "/spec/analyses/-", "value": kept_record(2, 2, "Fail")},
            {"op": "replace", "path": "/spec/count", "value": 2},
            {"op": "replace", "path": "/spec/failed", "value": 1},
            {"op": "replace", "path": "/spec/lastTime", "value": at(2)},
            {"op": "replace", "path": "/spec/lastVerdict", "value": "Fail"},
        ])
    );
    assert!(
        sent[1]
            .query
            .contains("fieldManager=embedding-rollout-operator"),
        "{}",
        sent[1].query
    );
    assert!(
        !api.writes()
            .iter()
            .any(|w| w.body["reason"] == "HistoryAppendFailed"),
        "{:?}",
        api.writes()
    );

    // The next analysis: one append, nothing read; the same status again: nothing at all.
    let before = api.seen().len();
    let next = status_of(in_step_one(vec![
        analysis_record(1, 1, "Pass"),
        analysis_record(2, 2, "Fail"),
        analysis_record(3, 3, "Pass"),
    ]));
    let kept = c.history.keep(&c.client, &r, &next).await;
    assert_eq!(
        kept,
        history_store::Kept {
            appended: 1,
            ..Default::default()
        }
    );
    let new: Vec<Seen> = api.seen()[before..].to_vec();
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(
        (new[0].method.clone(), new[0].path.clone()),
        (Method::PATCH, format!("{ANALYSES}/{CHUNK0}"))
    );
    assert_eq!(
        new[0].body[0],
        json!({"op": "test", "path": "/spec/count", "value": 2})
    );
    assert_eq!(
        new[0].body[3],
        json!({"op": "replace", "path": "/spec/passed", "value": 2})
    );
    let kept = c.history.keep(&c.client, &r, &next).await;
    assert_eq!(kept, history_store::Kept::default());
    assert_eq!(api.seen().len(), before + 1, "nothing sent twice");
}

/// After a restart the tail is read back (one metadata list, one GET): what the newest object
/// holds is not appended again. A 404 on the append (the object was deleted) creates it again at
/// its place; a failed `test` (422: the count moved, here because our own earlier request had
/// landed) and a 409 on a create are their own case: the object is read, and an analysis it
/// holds already is not appended twice.
#[tokio::test]
async fn a_missing_object_is_created_again_and_a_moved_count_or_an_existing_object_is_read_first() {
    let r = rollout(in_step_one(vec![]), json!({}), json!([FINALIZER]));
    let two = status_of(in_step_one(vec![
        analysis_record(1, 1, "Pass"),
        analysis_record(2, 2, "Pass"),
    ]));

    // 404: deleted by hand since it was read.
    let api = MockApi::new(vec![
        listed(&[chunk0(&[(1, 1, "Pass")])]),
        route(
            Method::GET,
            &format!("{ANALYSES}/{CHUNK0}"),
            200,
            chunk0(&[(1, 1, "Pass")]),
        ),
        route(
            Method::PATCH,
            &format!("{ANALYSES}/{CHUNK0}"),
            404,
            not_found(
                "embeddingrolloutanalyses.rollout.akidb.io \"r1-step1-20250301-100000-0000\"",
            ),
        ),
        route(Method::POST, ANALYSES, 201, chunk0(&[(2, 2, "Pass")])),
    ]);
    let c = ctx(&api);
    let kept = c.history.keep(&c.client, &r, &two).await;
    assert_eq!(
        kept,
        history_store::Kept {
            appended: 1,
            ..Default::default()
        },
        "{:?}",
        api.seen()
    );
    assert_eq!(
        analysis_calls(&api),
        [
            "GET ?labelSelector=rollout.akidb.io/rollout=r1".to_string(),
            format!("GET /{CHUNK0}"),
            format!("PATCH /{CHUNK0}"),
            "POST ".into(),
        ],
        "only the analysis the object did not hold"
    );
    let created = &api.writes()[1].body;
    assert_eq!(created["metadata"]["name"], CHUNK0);
    assert_eq!(created["spec"]["count"], 1);
    assert_eq!(
        created["spec"]["analyses"],
        json!([kept_record(2, 2, "Pass")])
    );

    // 422 on the test of the count: our own append had landed (the answer was lost).
    let api = MockApi::new(vec![
        listed(&[chunk0(&[(1, 1, "Pass")])]),
        route(
            Method::GET,
            &format!("{ANALYSES}/{CHUNK0}"),
            200,
            chunk0(&[(1, 1, "Pass")]),
        ),
    ]);
    let c = ctx(&api);
    let one = status_of(in_step_one(vec![analysis_record(1, 1, "Pass")]));
    assert_eq!(
        c.history.keep(&c.client, &r, &one).await,
        history_store::Kept::default()
    );
    api.add(route(
        Method::GET,
        &format!("{ANALYSES}/{CHUNK0}"),
        200,
        chunk0(&[(1, 1, "Pass"), (2, 2, "Pass")]),
    ));
    api.add(route(
        Method::PATCH,
        &format!("{ANALYSES}/{CHUNK0}"),
        422,
        status_body(422, "the server rejected our request due to an error in our request: testing value /spec/count failed"),
    ));
    let kept = c.history.keep(&c.client, &r, &two).await;
    assert_eq!(
        kept,
        history_store::Kept {
            appended: 1,
            ..Default::default()
        }
    );
    assert_eq!(
        analysis_calls(&api)[2..],
        [format!("PATCH /{CHUNK0}"), format!("GET /{CHUNK0}")],
        "read again, not appended twice"
    );
    // The next one goes after it, tested against the count read.
    api.add(route(
        Method::PATCH,
        &format!("{ANALYSES}/{CHUNK0}"),
        200,
        chunk0(&[(1, 1, "Pass")]),
    ));
    let three = status_of(in_step_one(vec![
        analysis_record(1, 1, "Pass"),
        analysis_record(2, 2, "Pass"),
        analysis_record(3, 3, "Pass"),
    ]));
    let kept = c.history.keep(&c.client, &r, &three).await;
    assert_eq!(kept.appended, 1);
    let last = api.writes().pop().unwrap();
    assert_eq!(
        last.body[0],
        json!({"op": "test", "path": "/spec/count", "value": 2})
    );
    assert_eq!(last.body[1]["value"]["t"], at(3));

    // 409 on the create: a former leader created it, holding this very analysis.
    let api = MockApi::new(vec![
        listed(&[]),
        route(Method::POST, ANALYSES, 409, status_body(409, "embeddingrolloutanalyses.rollout.akidb.io \"r1-step1-20250301-100000-0000\" already exists")),
        route(Method::GET, &format!("{ANALYSES}/{CHUNK0}"), 200, chunk0(&[(1, 1, "Pass")])),
    ]);
    let c = ctx(&api);
    let kept = c.history.keep(&c.client, &r, &one).await;
    assert_eq!(
        kept,
        history_store::Kept {
            appended: 1,
            ..Default::default()
        }
    );
    assert_eq!(
        analysis_calls(&api),
        [
            "GET ?labelSelector=rollout.akidb.io/rollout=r1".to_string(),
            "POST ".into(),
            format!("GET /{CHUNK0}"),
        ]
    );
}

/// A failed append holds up nothing: the reconcile succeeds, a Warning event says what was not
/// kept and why, the rollout is reconciled again within 30 s, and the next reconcile appends the
/// same analysis once the cause is gone. A missing CRD is named.
#[tokio::test]
async fn a_failed_append_is_a_warning_event_and_is_retried_at_the_next_reconcile() {
    let r = rollout(in_step_one(vec![]), json!({}), json!([FINALIZER]));
    let decided = Decision {
        status: status_of(in_step_one(vec![analysis_record(1, 1, "Pass")])),
        actions: vec![],
        requeue_after: Duration::from_secs(300),
        events: vec![],
    };
    let api = MockApi::new(vec![
        listed(&[]),
        route(Method::POST, ANALYSES, 403, status_body(403, "embeddingrolloutanalyses.rollout.akidb.io is forbidden: User \"system:serviceaccount:x:op\" cannot create resource \"embeddingrolloutanalyses\"")),
        event_route(),
    ]);
    let c = ctx(&api);
    assert_eq!(keep_history(&c, &r, &decided).await, history_store::RETRY);
    let warning = api
        .writes()
        .into_iter()
        .find(|w| w.path.ends_with("/events"))
        .expect("a Warning event");
    assert_eq!(warning.body["type"], "Warning");
    assert_eq!(warning.body["reason"], "HistoryAppendFailed");
    let note = warning.body["note"].as_str().unwrap();
    assert!(
        note.starts_with("the analysis of 2025-03-01T10:01:00Z (step 1/2) was not kept: creating EmbeddingRolloutAnalysis r1-step1-20250301-100000-0000: forbidden (403)"),
        "{note}"
    );
    assert!(
        note.ends_with(
            "it and 0 newer wait in status.history (the last 10) for the next reconcile"
        ),
        "{note}"
    );

    // Granted: the next reconcile sends the same analysis, and the decision's requeue stands.
    api.add(route(
        Method::POST,
        ANALYSES,
        201,
        chunk0(&[(1, 1, "Pass")]),
    ));
    assert_eq!(
        keep_history(&c, &r, &decided).await,
        Duration::from_secs(300)
    );
    let posts: Vec<Value> = api
        .writes()
        .into_iter()
        .filter(|w| w.method == Method::POST && w.path == ANALYSES)
        .map(|w| w.body)
        .collect();
    assert_eq!(posts.len(), 2);
    assert_eq!(posts[0], posts[1]);

    // No CRD (the chart does not upgrade CRDs): said so.
    let api = MockApi::new(vec![
        Route {
            query: Some("labelSelector=rollout.akidb.io/rollout=r1".into()),
            ..route(
                Method::GET,
                ANALYSES,
                404,
                status_body(404, "the server could not find the requested resource"),
            )
        },
        event_route(),
    ]);
    let c = ctx(&api);
    assert_eq!(keep_history(&c, &r, &decided).await, history_store::RETRY);
    let note = api.writes().pop().unwrap().body["note"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        note.contains("is the CRD embeddingrolloutanalyses.rollout.akidb.io installed? kubectl apply --server-side -f crds/"),
        "{note}"
    );
}

/// An outage longer than `status.history` holds leaves analyses no object will ever hold: the
/// looks say how many, and a Warning event says so once the appends resume.
#[tokio::test]
async fn analyses_that_left_the_status_before_they_were_kept_are_a_gap_event() {
    let r = rollout(in_step_one(vec![]), json!({}), json!([FINALIZER]));
    let api = MockApi::new(vec![
        listed(&[chunk0(&[(4, 4, "Pass")])]),
        route(
            Method::GET,
            &format!("{ANALYSES}/{CHUNK0}"),
            200,
            chunk0(&[(4, 4, "Pass")]),
        ),
        route(
            Method::PATCH,
            &format!("{ANALYSES}/{CHUNK0}"),
            200,
            chunk0(&[(4, 4, "Pass")]),
        ),
        event_route(),
    ]);
    let c = ctx(&api);
    let decided = Decision {
        status: status_of(in_step_one(
            (17..27).map(|i| analysis_record(i, i, "Pass")).collect(),
        )),
        actions: vec![],
        requeue_after: Duration::from_secs(60),
        events: vec![],
    };
    assert_eq!(
        keep_history(&c, &r, &decided).await,
        Duration::from_secs(60)
    );
    let patches = api
        .writes()
        .iter()
        .filter(|w| w.method == Method::PATCH)
        .count();
    assert_eq!(patches, 10);
    let gap = api
        .writes()
        .into_iter()
        .find(|w| w.path.ends_with("/events"))
        .expect("a gap event");
    assert_eq!(gap.body["reason"], "HistoryGap");
    assert_eq!(
        gap.body["note"],
        "12 analyses of step 1/2 (looks 5-16) were never kept: they left status.history (the last 10) before they could be appended"
    );
}

/// With OTLP export on, one reconcile (through `reconcile`, the function the controller calls) is
/// one exported span named `reconcile` of the service `embedding-rollout-operator`, with the
/// rollout, namespace, phase, step and decision as attributes, and the `trace_id` log field equal
/// to the exported trace's own id. A local OTLP/HTTP receiver decodes what the exporter sends.
#[tokio::test]
async fn a_reconcile_is_exported_over_otlp_as_a_span_with_the_rollout_and_its_trace_id() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let receiver = embedding_telemetry::testing::Receiver::start().await;
    let endpoint = receiver.endpoint();
    // The variables as the process would read them, without touching the process environment.
    let config = embedding_telemetry::OtlpConfig::from_vars(
        |k| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| endpoint.clone()),
        crate::OTEL_SERVICE_NAME,
    )
    .unwrap()
    .expect("an endpoint turns export on");
    let (layer, telemetry) = embedding_telemetry::layer(&config).unwrap();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));

    let mut routes = the_deploying_writes();
    routes.push(route(
        Method::PATCH,
        &format!("{ROLLOUTS}/r1/status"),
        200,
        echo_ok(),
    ));
    let api = MockApi::new(routes);
    let r = Arc::new(rollout(Value::Null, json!({}), json!([FINALIZER])));
    reconcile(r, Arc::new(ctx(&api))).await.unwrap();
    // Waits for the receiver's answer to the export: no sleep, no polling.
    telemetry.force_flush().await.unwrap();

    assert!(receiver.rejected().is_empty(), "{:?}", receiver.rejected());
    let spans = receiver.spans();
    let reconciles: Vec<_> = spans.iter().filter(|s| s.name == "reconcile").collect();
    assert_eq!(reconciles.len(), 1, "one reconcile span: {spans:#?}");
    let span = reconciles[0];
    assert_eq!(
        span.service_name.as_deref(),
        Some("embedding-rollout-operator")
    );
    assert_eq!(span.attr("rollout"), Some("r1"), "{span:#?}");
    assert_eq!(span.attr("namespace"), Some("prod"));
    assert_eq!(span.attr("phase"), Some("Pending"));
    assert_eq!(span.attr("step"), Some("1"));
    assert_eq!(span.attr("decided"), Some("Deploying"));
    assert_eq!(span.trace_id.len(), 32);
    assert_ne!(span.trace_id, "0".repeat(32));
    assert_eq!(
        span.attr("trace_id"),
        Some(span.trace_id.as_str()),
        "the logs' trace_id is the exported trace's id"
    );
    assert_eq!(
        span.status, "STATUS_CODE_UNSET",
        "a reconcile that succeeded"
    );
    telemetry.shutdown().await.unwrap();
}
