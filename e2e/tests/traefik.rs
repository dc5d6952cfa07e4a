//! Traefik v3.7 (built from its Go module by `make traefik`, image by e2e/images/build.sh) on the real
//! node honours the traffic primitives the operator writes, through both of its Kubernetes providers:
//!
//! - `kubernetesIngressNGINX`: a primary Ingress (class nginx) to backend A and a canary Ingress
//!   (`canary: "true"`) to backend B, by `canary-weight` (30, 100, 0; and 300 of
//!   `canary-weight-total` 1000) and by `canary-by-header: X-Canary` + `canary-by-header-value: always`;
//! - `kubernetesGateway` (Gateway API v1.6.3 standard CRDs): an HTTPRoute with backendRefs A 70 / B 30,
//!   A 0 / B 100, then a second rule with a header match `X-Canary: always` to B only; the route's
//!   status as Traefik writes it, also for a backendRef to a Service that does not exist.
//!
//! Backends A and B are candle-embedder Deployments told apart by `--service-name` (a, b), which every
//! response carries as `x-served-by`. Requests go from the host to the Traefik Service's ClusterIP
//! (kube-proxy's rules), one at a time. After every change the test polls for the NEW state only (a
//! response only the new configuration can give, or a run of them no old configuration could plausibly
//! give), bounded by `CONVERGE`, and prints how long that took after the API server accepted the
//! change; then it asserts the distribution over a fresh sample. One node for this binary, one test.
//!
//!   make traefik node-images && cargo test -p e2e --test traefik -- --nocapture

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e::controlplane::ControlPlane;
use e2e::node_env::{cluster, images_dir};
use e2e::rollout_env::{gateway_api, Provider, RolloutEnv, Routing};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, DynamicObject};
use serde_json::{json, Value};

/// The namespace of the backends and their routes (Traefik itself runs in `traefik`).
const NS: &str = "traefik-e2e";
/// The host of every route this test writes. Routes without one would match every host, and
/// Traefik ranks the longer rule first: the header rule left at the end of this test took the
/// `X-Canary` requests of the rollout tests after it (found by running the whole binary).
const HOST: &str = "traefik-e2e.e2e";
const A: &str = "backend-a";
const B: &str = "backend-b";
/// How long Traefik may take to pick up one change (the test fails past it).
const CONVERGE: Duration = Duration::from_secs(60);
/// A run this long of one backend ends a wait where the old configuration also sends some requests
/// there: at a 30 % (70 %) share the old one gives 30 in a row with probability 0.3^30 (0.7^30 = 2e-5).
const RUN: usize = 30;
/// Requests per share measurement, and the tolerance in binomial standard deviations.
const SAMPLE: usize = 400;
const SIGMAS: f64 = 4.0;

/// Requests through Traefik's Service, from the host.
struct Probe {
    client: reqwest::Client,
    /// `http://<ClusterIP>:80` (entrypoint web)
    base: String,
    /// `http://<ClusterIP>:8080` (entrypoint traefik: ping, API)
    api: String,
}

impl Probe {
    /// One GET: the backend's `x-served-by` for a 200 ("a" / "b"), else what came back instead.
    async fn once(&self, path: &str, canary_header: bool) -> String {
        let mut req = self
            .client
            .get(format!("{}{path}", self.base))
            .header("host", HOST);
        if canary_header {
            req = req.header("X-Canary", "always");
        }
        match req.send().await {
            Ok(resp) => {
                let by = resp
                    .headers()
                    .get("x-served-by")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let status = resp.status().as_u16();
                let _ = resp.bytes().await;
                match (status, by) {
                    (200, Some(by)) => by,
                    (s, Some(by)) => format!("HTTP {s} from {by}"),
                    (s, None) => format!("HTTP {s}"),
                }
            }
            Err(e) => format!("error: {e}"),
        }
    }

    /// Traefik's view (its API on the `traefik` entrypoint): each router's rule, service and status.
    async fn routers(&self) -> String {
        let url = format!("{}/api/http/routers", self.api);
        match self.client.get(&url).send().await {
            Ok(r) => match r.json::<Value>().await {
                Ok(Value::Array(routers)) => routers
                    .iter()
                    .map(|r| {
                        format!(
                            "{} [{}] -> {} ({})",
                            r["name"], r["rule"], r["service"], r["status"]
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
                other => format!("{url}: {other:?}"),
            },
            Err(e) => format!("{url}: {e}"),
        }
    }

    /// `n` sequential requests, counted by outcome.
    async fn sample(&self, n: usize, path: &str, canary_header: bool) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            *counts
                .entry(self.once(path, canary_header).await)
                .or_insert(0) += 1;
        }
        counts
    }

    /// Polls until `run` consecutive responses satisfy `new_state`, at most `CONVERGE` after
    /// `changed` (when the API server accepted the change). Prints and returns the seconds from
    /// `changed` to the first response of that run.
    async fn converge(
        &self,
        what: &str,
        changed: Instant,
        path: &str,
        canary_header: bool,
        run: usize,
        new_state: impl Fn(&str) -> bool,
    ) -> f64 {
        let deadline = changed + CONVERGE;
        let mut streak: Option<(Instant, usize)> = None;
        loop {
            let sent = Instant::now();
            let got = self.once(path, canary_header).await;
            if new_state(&got) {
                let (first, len) = streak.get_or_insert((sent, 0));
                *len += 1;
                if *len >= run {
                    let secs = first.duration_since(changed).as_secs_f64();
                    println!(
                        "[traefik] converged {secs:.2}s after the change: {what} (seen: {got})"
                    );
                    return secs;
                }
                continue;
            }
            streak = None;
            if Instant::now() >= deadline {
                panic!(
                    "{what}: not seen within {CONVERGE:?} of the change; last response: {got}; \
                     Traefik's routers: {}",
                    self.routers().await
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Every request answered 200 by A or B, and B's share within `SIGMAS` binomial standard deviations
/// of `p`.
fn assert_share(what: &str, counts: &BTreeMap<String, usize>, p: f64) {
    let n: usize = counts.values().sum();
    let a = counts.get("a").copied().unwrap_or(0);
    let b = counts.get("b").copied().unwrap_or(0);
    println!(
        "[traefik] {what}: {counts:?} (B {:.1} %)",
        100.0 * b as f64 / n as f64
    );
    assert_eq!(
        a + b,
        n,
        "{what}: every request served by A or B: {counts:?}"
    );
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    let expected = n as f64 * p;
    assert!(
        (b as f64 - expected).abs() <= SIGMAS * sd,
        "{what}: B served {b} of {n}, expected {expected:.0} ± {:.0} ({SIGMAS} sd)",
        SIGMAS * sd
    );
}

/// All `n` requests served by `who`.
fn assert_all(what: &str, counts: &BTreeMap<String, usize>, who: &str) {
    println!("[traefik] {what}: {counts:?}");
    let n: usize = counts.values().sum();
    assert_eq!(
        counts.get(who).copied().unwrap_or(0),
        n,
        "{what}: all {n} requests served by {who}: {counts:?}"
    );
}

fn backend(name: &str, service_name: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {NS}, labels: {{app.kubernetes.io/name: {name}}}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app.kubernetes.io/name: {name}}}}}
  template:
    metadata: {{labels: {{app.kubernetes.io/name: {name}}}}}
    spec:
      containers:
        - name: embedder
          image: embedding-rollout.local/candle-embedder:e2e
          args: ["--service-name={service_name}"]
          ports: [{{name: http, containerPort: 8080}}]
          readinessProbe: {{httpGet: {{path: /health/ready, port: http}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {NS}}}
spec:
  selector: {{app.kubernetes.io/name: {name}}}
  ports: [{{name: http, port: 8080, targetPort: http}}]
"#
    )
}

fn ingress(name: &str, service: &str, annotations: Value) -> String {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": NS, "annotations": annotations},
        "spec": {
            "ingressClassName": "nginx",
            "rules": [{"host": HOST, "http": {"paths": [{
                "path": "/",
                "pathType": "Prefix",
                "backend": {"service": {"name": service, "port": {"number": 8080}}}
            }]}}]
        }
    })
    .to_string()
}

fn canary(annotations: &[(&str, &str)]) -> String {
    let mut ann = json!({"nginx.ingress.kubernetes.io/canary": "true"});
    for (k, v) in annotations {
        ann[format!("nginx.ingress.kubernetes.io/{k}")] = json!(v);
    }
    ingress("canary", B, ann)
}

fn http_route(name: &str, rules: Value) -> String {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "parentRefs": [{"name": "traefik", "namespace": "traefik", "sectionName": "web"}],
            "hostnames": [HOST],
            "rules": rules
        }
    })
    .to_string()
}

fn weighted_rule(a: u32, b: u32) -> Value {
    json!({
        "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
        "backendRefs": [
            {"name": A, "port": 8080, "weight": a},
            {"name": B, "port": 8080, "weight": b}
        ]
    })
}

fn header_rule() -> Value {
    json!({
        "matches": [{
            "path": {"type": "PathPrefix", "value": "/"},
            "headers": [{"name": "X-Canary", "value": "always"}]
        }],
        "backendRefs": [{"name": B, "port": 8080}]
    })
}

async fn wait_available(cp: &ControlPlane, ns: &str, name: &str, timeout: Duration) -> f64 {
    let deps: Api<Deployment> = Api::namespaced(cp.admin.clone(), ns);
    let t = Instant::now();
    loop {
        let ready = deps
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .and_then(|d| d.status?.available_replicas)
            .unwrap_or(0);
        if ready >= 1 {
            return t.elapsed().as_secs_f64();
        }
        assert!(
            t.elapsed() < timeout,
            "{ns}/{name} not available within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The conditions Traefik wrote for `parent` (a Gateway) in a route's or Gateway's status, once they
/// are for the object's current generation (bounded by `CONVERGE`). Returns (seconds, conditions).
async fn status_conditions(
    api: &Api<DynamicObject>,
    name: &str,
    changed: Instant,
    conditions_of: impl Fn(&Value) -> Option<Value>,
) -> (f64, Vec<Value>) {
    loop {
        let obj = serde_json::to_value(api.get(name).await.expect("get")).unwrap();
        let generation = obj["metadata"]["generation"].as_i64();
        if let Some(Value::Array(conds)) = conditions_of(&obj) {
            if !conds.is_empty()
                && conds
                    .iter()
                    .all(|c| c["observedGeneration"].as_i64() == generation)
            {
                return (changed.elapsed().as_secs_f64(), conds);
            }
        }
        assert!(
            changed.elapsed() < CONVERGE,
            "{name}: no status for generation {generation:?} within {CONVERGE:?}: {}",
            obj["status"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn condition<'a>(conds: &'a [Value], type_: &str) -> (&'a str, &'a str) {
    let c = conds
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {conds:?}"));
    (
        c["status"].as_str().unwrap_or(""),
        c["reason"].as_str().unwrap_or(""),
    )
}

/// The HTTPRoute's status.parents[] entry for the Gateway traefik/traefik, written by Traefik.
fn route_parent_conditions(route: &Value) -> Option<Value> {
    route["status"]["parents"]
        .as_array()?
        .iter()
        .find(|p| {
            p["parentRef"]["name"] == "traefik"
                && p["controllerName"] == "traefik.io/gateway-controller"
        })
        .map(|p| p["conditions"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_traefik_honours_ingress_nginx_canaries_and_gateway_api_weights() {
    let t_all = Instant::now();
    let images = images_dir();
    for archive in ["pause", "candle-embedder", "traefik"] {
        let path = images.join(format!("{archive}.tar"));
        assert!(
            path.is_file(),
            "{} is missing: run `make traefik node-images` (make e2e does)",
            path.display()
        );
    }
    let cp = cluster().await;
    let traefik = e2e::traefik::install(&cp).await;
    let t = Instant::now();
    cp.apply_as_admin(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n---\n{}---\n{}",
        backend(A, "a"),
        backend(B, "b")
    ))
    .await
    .expect("backends");
    for name in [A, B] {
        wait_available(&cp, NS, name, Duration::from_secs(180)).await;
    }
    println!(
        "[traefik] backends A and B available {:.1}s after they were applied",
        t.elapsed().as_secs_f64()
    );

    let probe = Probe {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap(),
        base: traefik.base.clone(),
        api: traefik.api.clone(),
    };
    // Traefik itself answers (no route for / yet: its 404, no backend header).
    probe
        .converge(
            "Traefik's Service answers (404, no routes)",
            Instant::now(),
            "/api/v1/version",
            false,
            1,
            |r| r == "HTTP 404",
        )
        .await;

    let mut latencies: Vec<(&str, f64)> = Vec::new();
    ingress_nginx(&cp, &probe, &mut latencies).await;
    gateway(&cp, &probe, &mut latencies).await;

    println!("[traefik] convergence after each change (s, from the API server's answer to the first response in the new state):");
    for (what, secs) in &latencies {
        println!("[traefik]   {secs:6.2}  {what}");
    }
    println!("[traefik] whole test {:.1}s", t_all.elapsed().as_secs_f64());
}

async fn ingress_nginx(cp: &ControlPlane, probe: &Probe, lat: &mut Vec<(&'static str, f64)>) {
    let path = "/api/v1/version";
    // The primary Ingress alone: everything to A.
    let t = Instant::now();
    cp.apply_as_admin(&ingress("primary", A, json!({})))
        .await
        .unwrap();
    let s = probe
        .converge("primary Ingress -> A", t, path, false, 1, |r| r == "a")
        .await;
    lat.push(("ingress-nginx: primary Ingress created", s));
    assert_all("primary only", &probe.sample(100, path, false).await, "a");

    // canary-weight 30.
    let t = Instant::now();
    cp.apply_as_admin(&canary(&[("canary-weight", "30")]))
        .await
        .unwrap();
    let s = probe
        .converge("canary weight 30: B answers", t, path, false, 1, |r| {
            r == "b"
        })
        .await;
    lat.push(("ingress-nginx: canary Ingress created, weight 30", s));
    assert_share(
        "canary-weight 30",
        &probe.sample(SAMPLE, path, false).await,
        0.3,
    );

    // 30 -> 100: only B.
    let t = Instant::now();
    cp.apply_as_admin(&canary(&[("canary-weight", "100")]))
        .await
        .unwrap();
    let s = probe
        .converge("canary weight 100", t, path, false, RUN, |r| r == "b")
        .await;
    lat.push(("ingress-nginx: canary-weight 30 -> 100", s));
    assert_all(
        "canary-weight 100",
        &probe.sample(200, path, false).await,
        "b",
    );

    // 100 -> 0: not one request to B.
    let t = Instant::now();
    cp.apply_as_admin(&canary(&[("canary-weight", "0")]))
        .await
        .unwrap();
    let s = probe
        .converge("canary weight 0: A answers", t, path, false, 1, |r| {
            r == "a"
        })
        .await;
    lat.push(("ingress-nginx: canary-weight 100 -> 0", s));
    assert_all(
        "canary-weight 0",
        &probe.sample(SAMPLE, path, false).await,
        "a",
    );

    // By header (weight 0): with X-Canary: always all B, without it all A.
    let t = Instant::now();
    cp.apply_as_admin(&canary(&[
        ("canary-weight", "0"),
        ("canary-by-header", "X-Canary"),
        ("canary-by-header-value", "always"),
    ]))
    .await
    .unwrap();
    let s = probe
        .converge(
            "canary by header: B with the header",
            t,
            path,
            true,
            1,
            |r| r == "b",
        )
        .await;
    lat.push(("ingress-nginx: canary-by-header added (weight 0)", s));
    assert_all(
        "canary by header, with X-Canary: always",
        &probe.sample(200, path, true).await,
        "b",
    );
    assert_all(
        "canary by header, without the header",
        &probe.sample(SAMPLE, path, false).await,
        "a",
    );

    // canary-weight-total: 300 of 1000 is 30 %.
    let t = Instant::now();
    cp.apply_as_admin(&canary(&[
        ("canary-weight", "300"),
        ("canary-weight-total", "1000"),
    ]))
    .await
    .unwrap();
    let s = probe
        .converge(
            "canary weight 300 of total 1000: B answers without a header",
            t,
            path,
            false,
            1,
            |r| r == "b",
        )
        .await;
    lat.push((
        "ingress-nginx: canary-weight 300 / canary-weight-total 1000",
        s,
    ));
    assert_share(
        "canary-weight 300, canary-weight-total 1000",
        &probe.sample(SAMPLE, path, false).await,
        0.3,
    );

    // Both Ingresses deleted: Traefik's own 404 again (the Gateway part starts from no routes).
    let ingresses: Api<Ingress> = Api::namespaced(cp.admin.clone(), NS);
    let t = Instant::now();
    for name in ["canary", "primary"] {
        ingresses
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    let s = probe
        .converge("Ingresses deleted: 404", t, path, false, RUN, |r| {
            r == "HTTP 404"
        })
        .await;
    lat.push(("ingress-nginx: both Ingresses deleted", s));
}

async fn gateway(cp: &ControlPlane, probe: &Probe, lat: &mut Vec<(&'static str, f64)>) {
    let path = "/api/v1/version";
    let t = Instant::now();
    e2e::traefik::apply_gateway(cp).await;
    let classes = Api::<DynamicObject>::all_with(
        cp.admin.clone(),
        &gateway_api("GatewayClass", "gatewayclasses"),
    );
    // The CRDs default a new object's status to reason Pending (generation 1); Traefik's first
    // write replaces it.
    let not_pending = |o: &Value| {
        let conds = o["status"]["conditions"].as_array()?;
        (!conds.iter().any(|c| c["reason"] == "Pending")).then(|| json!(conds))
    };
    let (s, conds) = status_conditions(&classes, "traefik", t, not_pending).await;
    println!("[traefik] GatewayClass traefik status after {s:.2}s: {conds:?}");
    assert_eq!(
        condition(&conds, "Accepted").0,
        "True",
        "GatewayClass Accepted"
    );
    let gateways = Api::<DynamicObject>::namespaced_with(
        cp.admin.clone(),
        "traefik",
        &gateway_api("Gateway", "gateways"),
    );
    let (s, conds) = status_conditions(&gateways, "traefik", t, not_pending).await;
    let gw = serde_json::to_value(gateways.get("traefik").await.unwrap()).unwrap();
    println!(
        "[traefik] Gateway traefik/traefik status after {s:.2}s: {conds:?}; listeners {}",
        gw["status"]["listeners"]
    );
    assert_eq!(condition(&conds, "Accepted").0, "True", "Gateway Accepted");
    assert_eq!(
        condition(&conds, "Programmed").0,
        "True",
        "Gateway Programmed"
    );

    let routes = Api::<DynamicObject>::namespaced_with(
        cp.admin.clone(),
        NS,
        &gateway_api("HTTPRoute", "httproutes"),
    );
    // backendRefs A 70 / B 30.
    let t = Instant::now();
    cp.apply_as_admin(&http_route("embeddings", json!([weighted_rule(70, 30)])))
        .await
        .unwrap();
    let s = probe
        .converge(
            "HTTPRoute 70/30: a backend answers",
            t,
            path,
            false,
            1,
            |r| r == "a" || r == "b",
        )
        .await;
    lat.push(("gateway: HTTPRoute created, A 70 / B 30", s));
    assert_share(
        "HTTPRoute A 70 / B 30",
        &probe.sample(SAMPLE, path, false).await,
        0.3,
    );
    let (s, conds) = status_conditions(&routes, "embeddings", t, route_parent_conditions).await;
    println!("[traefik] HTTPRoute embeddings status.parents[traefik] after {s:.2}s: {conds:?}");
    assert_eq!(
        condition(&conds, "Accepted"),
        ("True", "Accepted"),
        "HTTPRoute Accepted by the Gateway"
    );
    assert_eq!(
        condition(&conds, "ResolvedRefs"),
        ("True", "ResolvedRefs"),
        "HTTPRoute ResolvedRefs"
    );

    // A 0 / B 100.
    let t = Instant::now();
    cp.apply_as_admin(&http_route("embeddings", json!([weighted_rule(0, 100)])))
        .await
        .unwrap();
    let s = probe
        .converge("HTTPRoute A 0 / B 100", t, path, false, RUN, |r| r == "b")
        .await;
    lat.push(("gateway: weights 70/30 -> 0/100", s));
    assert_all(
        "HTTPRoute A 0 / B 100",
        &probe.sample(200, path, false).await,
        "b",
    );

    // Back to 70/30 plus a rule for X-Canary: always -> B only.
    let t = Instant::now();
    cp.apply_as_admin(&http_route(
        "embeddings",
        json!([weighted_rule(70, 30), header_rule()]),
    ))
    .await
    .unwrap();
    let s = probe
        .converge(
            "HTTPRoute 70/30 + header rule: A answers",
            t,
            path,
            false,
            1,
            |r| r == "a",
        )
        .await;
    lat.push(("gateway: 0/100 -> 70/30 plus the X-Canary rule", s));
    assert_all(
        "HTTPRoute header rule, with X-Canary: always",
        &probe.sample(200, path, true).await,
        "b",
    );
    assert_share(
        "HTTPRoute header rule, without the header (70/30 rule)",
        &probe.sample(SAMPLE, path, false).await,
        0.3,
    );
    let (_, conds) = status_conditions(&routes, "embeddings", t, route_parent_conditions).await;
    println!("[traefik] HTTPRoute embeddings (2 rules) status.parents[traefik]: {conds:?}");
    assert_eq!(condition(&conds, "Accepted").0, "True");
    assert_eq!(condition(&conds, "ResolvedRefs").0, "True");

    // A backendRef to a Service that does not exist, on its own route and path.
    let t = Instant::now();
    cp.apply_as_admin(&http_route(
        "missing-backend",
        json!([{
            "matches": [{"path": {"type": "PathPrefix", "value": "/missing"}}],
            "backendRefs": [{"name": "no-such-service", "port": 8080}]
        }]),
    ))
    .await
    .unwrap();
    let (s, conds) =
        status_conditions(&routes, "missing-backend", t, route_parent_conditions).await;
    println!(
        "[traefik] HTTPRoute missing-backend status.parents[traefik] after {s:.2}s: {conds:?}"
    );
    assert_eq!(
        condition(&conds, "Accepted").0,
        "True",
        "a route with an unresolvable backendRef is still Accepted"
    );
    assert_eq!(
        condition(&conds, "ResolvedRefs"),
        ("False", "BackendNotFound"),
        "ResolvedRefs for a backendRef to a missing Service"
    );
    // Until Traefik has the route, /missing goes to the embeddings route (the backend's 404).
    let s = probe
        .converge(
            "/missing answered by Traefik itself",
            t,
            "/missing",
            false,
            1,
            |r| !r.contains(" from ") && !r.starts_with("error"),
        )
        .await;
    lat.push(("gateway: HTTPRoute with a missing backend created", s));
    let missing = probe.sample(20, "/missing", false).await;
    println!("[traefik] GET /missing (backendRef to no Service): {missing:?}");
    assert_eq!(
        missing.get("HTTP 500").copied(),
        Some(20),
        "requests to a rule whose only backend is unresolved get 500 (Gateway API spec): {missing:?}"
    );
    // The broken route leaves the other one alone.
    assert_share(
        "HTTPRoute embeddings next to the broken route",
        &probe.sample(SAMPLE, path, false).await,
        0.3,
    );
}

// ----- whole rollouts through Traefik ------------------------------------------------------------

/// Where the rollout stood at one moment, as the status said.
#[derive(Debug, Clone)]
struct Mark {
    wall: std::time::SystemTime,
    phase: String,
    step: i64,
    /// `status.stepStartedAt`: decided before the step's traffic change is applied, so a bound
    /// no request routed by the new weights can precede.
    started: Option<std::time::SystemTime>,
}

/// Client requests (`served_by`: "mlx" or "candle") sent between `from` and `to` (wall clock).
fn served_between(
    samples: &[e2e::traffic::Sample],
    from: std::time::SystemTime,
    to: std::time::SystemTime,
) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for s in samples.iter().filter(|s| s.wall >= from && s.wall < to) {
        *m.entry(s.served_by.clone().unwrap_or_else(|| "none".into()))
            .or_insert(0) += 1;
    }
    m
}

/// A whole rollout as a user runs it, with client traffic through Traefik: the operator (its
/// chart, Gateway API enabled), Prometheus scraping the pods, the demo baseline, and a rollout
/// with `X-Canary: always` as canary header and the steps 0 % (header only), 50 %, 100 %. Two
/// client streams, 40 req/s with the header and 30 req/s without: the error gate needs about
/// 1 500 candidate requests per step at confidence 0.95 (docs/analysis.md), which the header alone
/// gives the first step in under a minute. Checked: no request fails; header
/// requests reach the candidate from the first step on, the others not before the 50 % step;
/// at 50 % the share is 50 % within 4 sigma; after promotion everything is the candidate's;
/// the traffic object ends as the provider's table in docs/runbook.md says.
async fn rollout_through_traefik(provider: Provider, slow_candidate: bool, kill_leader: bool) {
    use e2e::scenario::{phase, BASELINE, CANDIDATE};
    use kube::api::PostParams;
    let t_all = Instant::now();
    let ns = match (provider, slow_candidate, kill_leader) {
        (Provider::Nginx, false, false) => "roll-nginx",
        (Provider::Gateway, false, false) => "roll-gateway",
        (Provider::Nginx, true, _) => "back-nginx",
        (Provider::Gateway, true, _) => "back-gateway",
        (Provider::Nginx, false, true) => "kill-nginx",
        (Provider::Gateway, false, true) => "kill-gateway",
    };
    let mut env = RolloutEnv::start(cluster().await, ns, provider, &[]).await;
    env.start_traffic(30.0);
    env.start_traffic_with(40.0, &[("X-Canary", "always")]);
    let cp = cluster().await;

    let mut rollout = env.rollout_spec(ns);
    let spec = &mut rollout["spec"];
    if slow_candidate {
        // 80 ms more than the baseline: beyond maxP95OverBaselineMs 25, no request fails.
        spec["candidate"]["args"] = json!(["--chaos-latency-ms=80"]);
    }
    spec["traffic"]["canaryHeader"] = json!({"name": "X-Canary", "value": "always"});
    spec["steps"] = json!([
        {"weight": 0, "duration": "20s"},
        {"weight": 50, "duration": "20s"},
        {"weight": 100, "duration": "15s"}
    ]);
    let rollouts = env.rollouts();
    let obj: DynamicObject = serde_json::from_value(rollout).unwrap();
    rollouts.create(&PostParams::default(), &obj).await.unwrap();
    let created = std::time::SystemTime::now();

    // The status, every 250 ms, until a final phase (bounded well below the test's own limits).
    let mut marks: Vec<Mark> = Vec::new();
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(300);
    let last = loop {
        let r = serde_json::to_value(rollouts.get(ns).await.unwrap()).unwrap();
        let m = Mark {
            wall: std::time::SystemTime::now(),
            phase: phase(&r).to_string(),
            step: r["status"]["currentStep"].as_i64().unwrap_or(0),
            started: e2e::scenario::timestamp(&r["status"]["stepStartedAt"]),
        };
        if kill_leader && !killed && m.phase == "Progressing" && m.step == 1 {
            // The leader operator pod deleted in the middle of the 50 % step, traffic flowing.
            let leader = e2e::rollout_env::delete_leader(&cp).await;
            println!(
                "[{ns}] {:6.1}s deleted the leader operator pod {leader} during the 50 % step",
                t_all.elapsed().as_secs_f64()
            );
            killed = true;
        }
        if marks
            .last()
            .is_none_or(|l| l.phase != m.phase || l.step != m.step)
        {
            println!(
                "[{ns}] {:6.1}s phase={} step={} weight={} | {}",
                t_all.elapsed().as_secs_f64(),
                m.phase,
                m.step,
                r["status"]["currentWeight"],
                r["status"]["message"].as_str().unwrap_or("")
            );
            marks.push(m.clone());
        }
        if matches!(m.phase.as_str(), "Promoted" | "RolledBack" | "Failed") {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no final phase within 300 s; status: {:#}",
            r["status"]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let expected = if slow_candidate {
        "RolledBack"
    } else {
        "Promoted"
    };
    assert_eq!(phase(&last), expected, "status: {:#}", last["status"]);
    let promoted = marks.last().unwrap().wall;
    // Traffic after the final phase, then stop the clients.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut streams = env.stop_traffic_streams().await.into_iter();
    let (plain, headed) = (streams.next().unwrap(), streams.next().unwrap());

    // No request failed, in either stream, at any moment.
    for (what, samples) in [("plain", &plain), ("X-Canary", &headed)] {
        let failed: Vec<_> = samples.iter().filter(|s| !s.ok()).collect();
        assert!(
            failed.is_empty(),
            "{what}: {} of {} requests failed, e.g. {:?}",
            failed.len(),
            samples.len(),
            failed.first()
        );
    }
    assert!(
        marks.windows(2).all(|w| w[0].step <= w[1].step),
        "the step never goes back: {marks:?}"
    );
    assert_eq!(
        killed, kill_leader,
        "the leader was deleted mid-step when asked"
    );
    if slow_candidate {
        assert_rolled_back(&env, &plain, &headed, &marks, created).await;
        env.shutdown().await;
        return;
    }
    let mark = |phase: &str, step: i64| {
        marks
            .iter()
            .find(|m| m.phase == phase && m.step == step)
            .cloned()
            .unwrap_or_else(|| panic!("never saw {phase} step {step}: {marks:?}"))
    };
    // When the step was decided (before its traffic change), and when its status was seen (after).
    let decided = |phase: &str, step: i64| mark(phase, step).started.expect("stepStartedAt");
    let at = |phase: &str, step: i64| mark(phase, step).wall;
    // Traefik applies a change about 2 s after it (its providersThrottleDuration); give it 5 s.
    let settle = Duration::from_secs(5);
    let header_step = at("Progressing", 0);
    let half = at("Progressing", 1);
    let full = at("Progressing", 2);

    let before = served_between(&headed, created, decided("Progressing", 0));
    assert_eq!(
        before.get("candle"),
        None,
        "header requests before the rollout's first step: {before:?}"
    );
    let header_only = served_between(&plain, created, decided("Progressing", 1));
    assert_eq!(
        header_only.get("candle"),
        None,
        "requests without the header during the header-only step: {header_only:?}"
    );
    let headed_on = served_between(&headed, header_step + settle, promoted);
    assert_eq!(
        headed_on.get("mlx"),
        None,
        "header requests from the header step to promotion go to the candidate: {headed_on:?}"
    );
    assert!(
        headed_on.get("candle").copied().unwrap_or(0) >= 100,
        "{headed_on:?}"
    );
    let at_half = served_between(&plain, half + settle, full);
    let n = at_half.values().sum::<usize>();
    assert!(n >= 100, "too few requests at 50 %: {at_half:?}");
    // assert_share's A and B: the baseline and the candidate.
    let as_ab: BTreeMap<String, usize> = at_half
        .iter()
        .map(|(k, v)| {
            let k = match k.as_str() {
                "mlx" => "a",
                "candle" => "b",
                other => other,
            };
            (k.to_string(), *v)
        })
        .collect();
    assert_share(
        &format!("{ns} plain requests at the 50 % step (A mlx, B candle)"),
        &as_ab,
        0.5,
    );
    let after = served_between(&plain, promoted + settle, std::time::SystemTime::now());
    assert_eq!(after.get("mlx"), None, "after promotion: {after:?}");
    assert!(after.get("candle").copied().unwrap_or(0) >= 10, "{after:?}");

    // The traffic object as the runbook's table says.
    match provider {
        Provider::Nginx => {
            assert_eq!(
                env.routing().await.unwrap(),
                Routing {
                    primary: Some(CANDIDATE.into()),
                    candidate_weight: None
                },
                "the primary Ingress on the candidate, the canary Ingress deleted"
            );
        }
        Provider::Gateway => {
            let route = env.http_route().await.unwrap();
            let rules = route["spec"]["rules"].as_array().cloned().unwrap();
            assert_eq!(rules.len(), 1, "the header rule is gone: {rules:#?}");
            let refs: Vec<(String, i64)> = rules[0]["backendRefs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["name"].as_str().unwrap().to_string(),
                        r["weight"].as_i64().unwrap_or(1),
                    )
                })
                .collect();
            assert_eq!(
                refs,
                [(BASELINE.to_string(), 0), (CANDIDATE.to_string(), 100)]
            );
            assert_eq!(
                route["metadata"]["annotations"]["rollout.akidb.io/primary"],
                CANDIDATE
            );
        }
    }
    let s = |v: &[e2e::traffic::Sample]| v.len();
    println!(
        "[{ns}] promoted {:.1}s after creation; {} plain + {} X-Canary requests through Traefik, 0 failed; \
         at 50 %: {at_half:?}; header requests from the header step on: {headed_on:?}",
        e2e::scenario::secs_between(created, promoted),
        s(&plain),
        s(&headed)
    );
    env.shutdown().await;
}

/// A candidate 80 ms slower than the baseline, judged on the header traffic of the first step:
/// rolled back there, so no request without the header ever reaches it; after the rollback the
/// header requests are the baseline's again, and the route is the user's own once more.
async fn assert_rolled_back(
    env: &RolloutEnv,
    plain: &[e2e::traffic::Sample],
    headed: &[e2e::traffic::Sample],
    marks: &[Mark],
    created: std::time::SystemTime,
) {
    use e2e::scenario::BASELINE;
    let ns = env.ns.as_str();
    let now = std::time::SystemTime::now();
    let rolled_back = marks
        .iter()
        .find(|m| m.phase == "RolledBack" || m.phase == "RollingBack")
        .map(|m| m.wall)
        .expect("a rollback");
    let header_step = marks
        .iter()
        .find(|m| m.phase == "Progressing")
        .expect("the header step started");
    assert!(
        marks.iter().all(|m| m.step == 0),
        "rolled back in the header-only step, never weighted: {marks:?}"
    );
    let all_plain = served_between(plain, created, now);
    assert_eq!(
        all_plain.get("candle"),
        None,
        "no request without the header ever reached the slow candidate: {all_plain:?}"
    );
    let during = served_between(
        headed,
        header_step.wall + Duration::from_secs(5),
        rolled_back,
    );
    assert!(
        during.get("candle").copied().unwrap_or(0) >= 20,
        "the header traffic it was judged on: {during:?}"
    );
    let settled = marks.last().unwrap().wall + Duration::from_secs(5);
    let after = served_between(headed, settled, now);
    assert_eq!(
        after.get("candle"),
        None,
        "header requests after the rollback: {after:?}"
    );
    assert!(after.get("mlx").copied().unwrap_or(0) >= 20, "{after:?}");
    match env.provider {
        Provider::Nginx => {
            assert_eq!(
                env.routing().await.unwrap(),
                Routing {
                    primary: Some(BASELINE.into()),
                    candidate_weight: None
                },
                "the primary Ingress on the baseline, the canary Ingress deleted"
            );
        }
        Provider::Gateway => {
            let route = env.http_route().await.unwrap();
            let rules = route["spec"]["rules"].as_array().cloned().unwrap();
            assert_eq!(rules.len(), 1, "the header rule is gone: {rules:#?}");
            let refs = rules[0]["backendRefs"].as_array().unwrap();
            assert_eq!(refs.len(), 1, "the candidate's ref is gone: {refs:?}");
            assert_eq!(refs[0]["name"], BASELINE);
            assert!(route["metadata"]["annotations"]
                .get("rollout.akidb.io/primary")
                .is_none());
        }
    }
    println!(
        "[{ns}] rolled back {:.1}s after the header-only step started; {} plain requests, none to the candidate; \
         header requests judged: {during:?}; after the rollback: {after:?}",
        e2e::scenario::secs_between(header_step.wall, rolled_back),
        plain.len()
    );
}

#[tokio::test]
async fn t2_a_gateway_api_rollout_through_traefik_header_step_then_weights_promotes() {
    rollout_through_traefik(Provider::Gateway, false, false).await;
}

#[tokio::test]
async fn t3_an_nginx_canary_rollout_through_traefik_header_step_then_weights_promotes() {
    rollout_through_traefik(Provider::Nginx, false, false).await;
}

#[tokio::test]
async fn t4_a_slow_candidate_is_rolled_back_on_header_traffic_alone_gateway_api() {
    rollout_through_traefik(Provider::Gateway, true, false).await;
}

#[tokio::test]
async fn t5_a_slow_candidate_is_rolled_back_on_header_traffic_alone_nginx() {
    rollout_through_traefik(Provider::Nginx, true, false).await;
}

/// The leader operator pod deleted in the middle of the 50 % step with traffic through Traefik:
/// the standby takes over, the step is not repeated or undone, the rollout promotes, and no client
/// request fails (the checks of t2).
#[tokio::test]
async fn t6_the_leader_operator_pod_deleted_mid_step_the_gateway_rollout_still_promotes() {
    rollout_through_traefik(Provider::Gateway, false, true).await;
}
