//! The cluster stand-ins (TEST HARNESS) against the real local kube-apiserver, real nginx and real
//! candle-embedder processes: the deployment runner keeps Deployment status and EndpointSlices true,
//! the ingress emulator splits traffic by canary weight. Prerequisites (control plane binaries,
//! nginx, the embedder binary, the model) missing -> the test fails saying what to run; never skips.

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::controlplane::ControlPlane;
use e2e::ingress::{IngressEmulator, IngressEmulatorConfig};
use e2e::runner::{DeploymentRunner, PodInfo, RunnerConfig};
use e2e::traffic::{self, TrafficConfig};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

const HOST: &str = "embeddings.e2e.local";

fn workdir(test: &str) -> PathBuf {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "e2e=info".into()),
        )
        .try_init();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("harness")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test workdir");
    dir
}

/// Fail (never skip) with the command that provides a missing prerequisite.
fn require_embedder_and_model() {
    let bin = e2e::runner::default_embedder_bin();
    assert!(
        bin.is_file(),
        "candle-embedder binary missing at {}: run `cargo build -p candle-embedder --bins` (or set E2E_EMBEDDER_BIN)",
        bin.display()
    );
    let model = e2e::runner::workspace_root().join("models/all-MiniLM-L6-v2/model.safetensors");
    assert!(
        model.is_file(),
        "model missing at {}: run `make model`",
        model.display()
    );
}

fn require_nginx() {
    let nginx = e2e::ingress::default_nginx_bin();
    assert!(
        nginx.is_file(),
        "nginx missing at {}: run `make deps` (Debian package nginx) or set E2E_NGINX_BIN",
        nginx.display()
    );
}

async fn control_plane(dir: &Path) -> ControlPlane {
    match ControlPlane::start(&dir.join("controlplane")).await {
        Ok(cp) => cp,
        Err(e) => panic!("control plane: {e}"),
    }
}

async fn namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
    )
    .await
    .expect("create namespace");
}

/// A Deployment + Service as a user writes them for an embedder (the image is ignored by the runner).
async fn embedder_app(client: &Client, ns: &str, name: &str, replicas: i32, args: &[&str]) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "embedder",
                    "image": "ghcr.io/akidb/candle-embedder:dev",
                    "args": args,
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/health/ready", "port": "http"}}
                }]}
            }
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &d)
        .await
        .expect("create Deployment");
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let s: Service = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 8080, "targetPort": "http"}]}
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &s)
        .await
        .expect("create Service");
}

async fn ingress(client: &Client, ns: &str, name: &str, service: &str, canary_weight: Option<u32>) {
    let api: Api<Ingress> = Api::namespaced(client.clone(), ns);
    let mut annotations = serde_json::Map::new();
    if let Some(w) = canary_weight {
        annotations.insert("nginx.ingress.kubernetes.io/canary".into(), json!("true"));
        annotations.insert(
            "nginx.ingress.kubernetes.io/canary-weight".into(),
            json!(w.to_string()),
        );
    }
    let ing: Ingress = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"ingressClassName": "nginx", "rules": [{"host": HOST, "http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": service, "port": {"number": 8080}}}
        }]}}]}
    }))
    .unwrap();
    api.create(&PostParams::default(), &ing)
        .await
        .expect("create Ingress");
}

async fn set_canary_weight(client: &Client, ns: &str, name: &str, weight: u32) {
    let api: Api<Ingress> = Api::namespaced(client.clone(), ns);
    let patch = json!({"metadata": {"annotations": {"nginx.ingress.kubernetes.io/canary-weight": weight.to_string()}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect("patch canary weight");
}

async fn scale(client: &Client, ns: &str, name: &str, replicas: i32) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
    )
    .await
    .expect("scale Deployment");
}

/// A Deployment that reads its models file from a ConfigMap volume, as the operator writes it
/// (the model path inside is the image's `/models/...`).
async fn models_app(client: &Client, ns: &str, name: &str) {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let models = "models:\n  - name: minilm-from-configmap\n    path: /models/all-MiniLM-L6-v2\n    default: true\n";
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": format!("{name}-models")}, "data": {"models.yaml": models}})).unwrap(),
    )
    .await
    .expect("create ConfigMap");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [{
                        "name": "embedder", "image": "ghcr.io/akidb/candle-embedder:dev",
                        "args": ["--models", "/etc/candle/models.yaml"],
                        "volumeMounts": [{"name": "models", "mountPath": "/etc/candle", "readOnly": true}]
                    }],
                    "volumes": [{"name": "models", "configMap": {"name": format!("{name}-models")}}]
                }
            }
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &d)
        .await
        .expect("create Deployment");
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 8080}]}})).unwrap(),
        )
        .await
        .expect("create Service");
}

fn condition(d: &Deployment, type_: &str) -> Option<(String, String)> {
    d.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

/// Wait until the Deployment's status says: generation observed, `replicas` all updated, ready,
/// available, Available=True and Progressing=True/NewReplicaSetAvailable.
async fn wait_rolled_out(
    client: &Client,
    ns: &str,
    name: &str,
    replicas: i32,
    timeout: Duration,
) -> Deployment {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let d = api.get(name).await.expect("get Deployment");
        let s = d.status.clone().unwrap_or_default();
        let done = s.observed_generation == d.metadata.generation
            && s.replicas == Some(replicas)
            && s.updated_replicas == Some(replicas)
            && s.ready_replicas == Some(replicas)
            && s.available_replicas == Some(replicas)
            && condition(&d, "Available").map(|c| c.0) == Some("True".into())
            && condition(&d, "Progressing")
                == Some(("True".into(), "NewReplicaSetAvailable".into()));
        if done {
            return d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Deployment {ns}/{name} not rolled out to {replicas} replicas within {timeout:?}; status: {}",
            serde_json::to_string(&d.status).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (ready, port) of the endpoints in the Service's EndpointSlices.
async fn slice_endpoints(client: &Client, ns: &str, service: &str) -> Vec<(bool, i32)> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let list = api
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .expect("list EndpointSlices");
    let mut out = Vec::new();
    for s in list.items {
        let port = s
            .ports
            .as_ref()
            .and_then(|p| p.first())
            .and_then(|p| p.port)
            .unwrap_or(0);
        for e in &s.endpoints {
            assert_eq!(s.address_type, "FQDN");
            assert_eq!(e.addresses.len(), 1);
            assert!(e.addresses[0].ends_with(".localhost"), "{:?}", e.addresses);
            out.push((
                e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
                port,
            ));
        }
    }
    out.sort();
    out
}

async fn version_of(port: i32) -> serde_json::Value {
    reqwest::get(format!("http://127.0.0.1:{port}/api/v1/version"))
        .await
        .expect("GET /api/v1/version")
        .json()
        .await
        .expect("version JSON")
}

fn runner_config(ns: &str, dir: &Path) -> RunnerConfig {
    let mut cfg = RunnerConfig::new(ns, dir.join("runner"));
    cfg.file_sd = Some(dir.join("file_sd").join("embedders.json"));
    // Two cores shared by every process of the test: keep each embedder to one inference thread.
    cfg.extra_env = vec![("EMBEDDER_INFERENCE_THREADS".into(), "1".into())];
    cfg
}

/// Why the runner's EndpointSlices say `addressType: FQDN` with `<pod>.localhost`: the API server
/// refuses loopback IPs and single-label names, and the processes listen on loopback only. Names
/// under `.localhost` are loopback by RFC 6761 §6.3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_rejects_loopback_ips_but_accepts_localhost_fqdn_slices() {
    let dir = workdir("loopback");
    let cp = control_plane(&dir).await;
    namespace(&cp.admin, "loopback").await;
    let api: Api<EndpointSlice> = Api::namespaced(cp.admin.clone(), "loopback");
    let slice = |name: &str, address_type: &str, address: &str| -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "probe"}},
            "addressType": address_type,
            "endpoints": [{"addresses": [address], "conditions": {"ready": true}}],
            "ports": [{"name": "http", "port": 41234, "protocol": "TCP"}]
        }))
        .unwrap()
    };
    let err = api
        .create(&PostParams::default(), &slice("ipv4", "IPv4", "127.0.0.1"))
        .await
        .expect_err("kube-apiserver v1.34 rejects loopback EndpointSlice addresses");
    let kube::Error::Api(status) = err else {
        panic!("unexpected error {err}")
    };
    assert_eq!(status.code, 422);
    assert!(status.message.contains("loopback"), "{}", status.message);

    let err = api
        .create(&PostParams::default(), &slice("bare", "FQDN", "localhost"))
        .await
        .expect_err("a single-label FQDN is rejected");
    let kube::Error::Api(status) = err else {
        panic!("unexpected error {err}")
    };
    assert!(
        status.message.contains("at least two segments"),
        "{}",
        status.message
    );

    let created = api
        .create(
            &PostParams::default(),
            &slice("fqdn", "FQDN", "akidb-mlx-abc-def.localhost"),
        )
        .await
        .expect("an FQDN EndpointSlice under .localhost is accepted");
    assert_eq!(
        created.endpoints[0].addresses,
        vec!["akidb-mlx-abc-def.localhost".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_keeps_deployment_status_and_endpoint_slices_true() {
    require_embedder_and_model();
    let dir = workdir("runner");
    let cp = control_plane(&dir).await;
    let client = cp.admin.clone();
    let ns = "runner";
    namespace(&client, ns).await;
    embedder_app(
        &client,
        ns,
        "akidb-mlx",
        2,
        &["--service-name", "mlx", "--port", "8080"],
    )
    .await;
    models_app(&client, ns, "akidb-models").await;
    let cfg = runner_config(ns, &dir);
    let file_sd = cfg.file_sd.clone().unwrap();
    let runner = DeploymentRunner::start(client.clone(), cfg)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // Two real processes, Available, both in the Service's EndpointSlices, both in file_sd.
    wait_rolled_out(&client, ns, "akidb-mlx", 2, Duration::from_secs(90)).await;
    wait_rolled_out(&client, ns, "akidb-models", 1, Duration::from_secs(90)).await;
    let cm_port = slice_endpoints(&client, ns, "akidb-models").await[0].1;
    let eps = slice_endpoints(&client, ns, "akidb-mlx").await;
    assert_eq!(eps.len(), 2, "{eps:?}");
    assert!(eps.iter().all(|(ready, _)| *ready), "{eps:?}");
    assert_ne!(eps[0].1, eps[1].1, "every process has its own port");
    for (_, port) in &eps {
        assert_eq!(version_of(*port).await["service"], "mlx");
    }
    let sd: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file_sd).expect("file_sd written")).unwrap();
    assert_eq!(sd.as_array().unwrap().len(), 3, "{sd}");
    assert!(
        sd.as_array()
            .unwrap()
            .iter()
            .any(|g| g["labels"]["deployment"] == "akidb-mlx"),
        "{sd}"
    );
    assert_eq!(sd[0]["labels"]["namespace"], ns);

    // A process that dies is replaced; status and slices follow.
    let mlx = |pods: &[PodInfo]| -> Vec<PodInfo> {
        pods.iter()
            .filter(|p| p.deployment == "akidb-mlx")
            .cloned()
            .collect()
    };
    let victim: PodInfo = mlx(&runner.pods().borrow())[0].clone();
    unsafe {
        libc::kill(victim.pid, libc::SIGKILL);
    }
    runner
        .wait_pods(
            Duration::from_secs(60),
            "the killed process replaced by a ready one",
            |pods| {
                let pods = mlx(pods);
                pods.iter().all(|p| p.name != victim.name)
                    && pods.iter().filter(|p| p.ready && !p.terminating).count() == 2
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_rolled_out(&client, ns, "akidb-mlx", 2, Duration::from_secs(30)).await;
    let eps = slice_endpoints(&client, ns, "akidb-mlx").await;
    assert_eq!(eps.len(), 2, "{eps:?}");
    assert!(
        !eps.iter().any(|(_, p)| *p == i32::from(victim.port)),
        "dead port left in slices: {eps:?}"
    );

    // Scale down to 1: one process stops, status and slices say 1.
    scale(&client, ns, "akidb-mlx", 1).await;
    wait_rolled_out(&client, ns, "akidb-mlx", 1, Duration::from_secs(30)).await;
    runner
        .wait_pods(Duration::from_secs(30), "one process left", |pods| {
            mlx(pods).len() == 1
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(slice_endpoints(&client, ns, "akidb-mlx").await.len(), 1);

    // A pod-template change (new args) replaces the process: now it answers as "candle".
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let before = api.get("akidb-mlx").await.unwrap().metadata.generation;
    api.patch(
        "akidb-mlx",
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(json!([
            {"op": "replace", "path": "/spec/template/spec/containers/0/args", "value": ["--service-name", "candle"]}
        ])).unwrap()),
    )
    .await
    .expect("patch template");
    let d = wait_rolled_out(&client, ns, "akidb-mlx", 1, Duration::from_secs(60)).await;
    assert!(d.metadata.generation > before);
    let pods = mlx(&runner
        .wait_pods(Duration::from_secs(30), "old process gone", |pods| {
            mlx(pods).len() == 1
        })
        .await
        .unwrap_or_else(|e| panic!("{e}")));
    let eps = slice_endpoints(&client, ns, "akidb-mlx").await;
    assert_eq!(eps, vec![(true, i32::from(pods[0].port))]);
    assert_eq!(version_of(eps[0].1).await["service"], "candle");

    // The models file from a ConfigMap mounted at /etc/candle reached its process (as a local file).
    let models: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{}/api/v1/models", cm_port))
            .await
            .expect("GET /api/v1/models")
            .json()
            .await
            .expect("models JSON");
    assert!(
        models.to_string().contains("minilm-from-configmap"),
        "{models}"
    );

    runner.shutdown().await.expect("runner shutdown");
    assert!(
        slice_endpoints(&client, ns, "akidb-mlx").await.is_empty(),
        "slices removed on shutdown"
    );
    let sd: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file_sd).unwrap()).unwrap();
    assert_eq!(sd, json!([]));
    // Processes are gone.
    for p in &pods {
        assert!(
            reqwest::get(format!("http://127.0.0.1:{}/health/live", p.port))
                .await
                .is_err()
        );
    }
}

/// Send `n` requests at 50/s through the ingress; return (share answered by candle, failures).
async fn measure(ing: &IngressEmulator, n: usize) -> (f64, usize, usize) {
    let mut cfg = TrafficConfig::new(&ing.url(), Some(HOST));
    cfg.rate_per_sec = 50.0;
    cfg.max_duration = Duration::from_secs_f64(n as f64 / 50.0);
    let samples = traffic::run(cfg, futures::future::pending()).await;
    let s = traffic::summarize(&samples);
    let failures: Vec<_> = samples.iter().filter(|s| !s.ok()).take(3).collect();
    assert!(
        failures.is_empty(),
        "failed requests through the ingress: {failures:?}"
    );
    (s.candle_share, s.failures, s.requests)
}

async fn wait_weight(ing: &IngressEmulator, bp: u32) {
    ing.wait_until(
        Duration::from_secs(20),
        &format!("canary share {bp} basis points with endpoints"),
        |a| {
            a.routes.len() == 1
                && a.routes[0].canary_basis_points() == bp
                && !a.routes[0].primary.endpoints.is_empty()
                && a.routes[0]
                    .canary
                    .as_ref()
                    .is_some_and(|c| !c.backend.endpoints.is_empty())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_emulator_splits_traffic_by_canary_weight() {
    require_embedder_and_model();
    require_nginx();
    let dir = workdir("ingress");
    let cp = control_plane(&dir).await;
    let client = cp.admin.clone();
    let ns = "ingress";
    namespace(&client, ns).await;
    embedder_app(&client, ns, "akidb-mlx", 1, &["--service-name", "mlx"]).await;
    embedder_app(&client, ns, "akidb-candle", 1, &[]).await;
    ingress(&client, ns, "akidb-ingress", "akidb-mlx", None).await;
    ingress(&client, ns, "akidb-ingress-canary", "akidb-candle", Some(0)).await;
    let runner = DeploymentRunner::start(client.clone(), runner_config(ns, &dir))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ing = IngressEmulator::start(
        client.clone(),
        IngressEmulatorConfig::new(ns, dir.join("nginx")),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    wait_rolled_out(&client, ns, "akidb-mlx", 1, Duration::from_secs(90)).await;
    wait_rolled_out(&client, ns, "akidb-candle", 1, Duration::from_secs(90)).await;

    wait_weight(&ing, 0).await;
    let (share, failures, n) = measure(&ing, 100).await;
    println!("weight 0: candle share {share:.3} of {n}, failures {failures}");
    assert_eq!(share, 0.0, "weight 0 sends nothing to the canary");

    set_canary_weight(&client, ns, "akidb-ingress-canary", 50).await;
    wait_weight(&ing, 5000).await;
    let (share, _, n) = measure(&ing, 200).await;
    println!("weight 50: candle share {share:.3} of {n}");
    assert!(
        (0.35..=0.65).contains(&share),
        "weight 50: candle share {share:.3} of {n} requests"
    );

    set_canary_weight(&client, ns, "akidb-ingress-canary", 100).await;
    wait_weight(&ing, 10_000).await;
    let (share, _, n) = measure(&ing, 100).await;
    println!("weight 100: candle share {share:.3} of {n}");
    assert_eq!(share, 1.0, "weight 100 sends everything to the canary");

    // ingress-nginx semantics: a canary without ready endpoints gets nothing, the primary serves all.
    set_canary_weight(&client, ns, "akidb-ingress-canary", 50).await;
    scale(&client, ns, "akidb-candle", 0).await;
    ing.wait_until(Duration::from_secs(30), "canary without endpoints", |a| {
        a.routes.len() == 1
            && a.routes[0]
                .canary
                .as_ref()
                .is_some_and(|c| c.weight == 50 && c.backend.endpoints.is_empty())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let (share, _, n) = measure(&ing, 50).await;
    println!("weight 50, canary scaled to 0: candle share {share:.3} of {n}");
    assert_eq!(share, 0.0);

    // A primary without ready endpoints answers 503.
    scale(&client, ns, "akidb-mlx", 0).await;
    ing.wait_until(Duration::from_secs(30), "primary without endpoints", |a| {
        a.routes.len() == 1 && a.routes[0].primary.endpoints.is_empty()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/embed", ing.url()))
        .header("host", HOST)
        .json(&json!({"texts": ["x"]}))
        .send()
        .await
        .expect("request through nginx");
    assert_eq!(resp.status().as_u16(), 503);

    // Unknown hosts are not routed.
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/version", ing.url()))
        .header("host", "unknown.e2e.local")
        .send()
        .await
        .expect("request through nginx");
    assert_eq!(resp.status().as_u16(), 404);
    drop(ing);
    runner.shutdown().await.expect("runner shutdown");
}

/// A pod-template change behind the ingress, under constant traffic: every process is replaced
/// (surge, drain, SIGTERM) and no client request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_replace_under_traffic_loses_no_request() {
    require_embedder_and_model();
    require_nginx();
    let dir = workdir("rolling");
    let cp = control_plane(&dir).await;
    let client = cp.admin.clone();
    let ns = "rolling";
    namespace(&client, ns).await;
    embedder_app(&client, ns, "akidb-mlx", 2, &["--service-name", "mlx"]).await;
    ingress(&client, ns, "akidb-ingress", "akidb-mlx", None).await;
    let runner = DeploymentRunner::start(client.clone(), runner_config(ns, &dir))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ing = IngressEmulator::start(
        client.clone(),
        IngressEmulatorConfig::new(ns, dir.join("nginx")),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    wait_rolled_out(&client, ns, "akidb-mlx", 2, Duration::from_secs(90)).await;
    ing.wait_until(Duration::from_secs(20), "two mlx endpoints", |a| {
        a.routes.len() == 1 && a.routes[0].primary.endpoints.len() == 2
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let old: Vec<String> = runner
        .pods()
        .borrow()
        .iter()
        .map(|p| p.name.clone())
        .collect();

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut cfg = TrafficConfig::new(&ing.url(), Some(HOST));
    cfg.max_duration = Duration::from_secs(120);
    let load = tokio::spawn(traffic::run(cfg, async {
        let _ = stop_rx.await;
    }));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    api.patch(
        "akidb-mlx",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([
                {"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": "--max-batch-size=16"}
            ]))
            .unwrap(),
        ),
    )
    .await
    .expect("patch template");
    runner
        .wait_pods(Duration::from_secs(90), "every old process gone", |pods| {
            pods.len() == 2 && pods.iter().all(|p| !old.contains(&p.name) && p.ready)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_rolled_out(&client, ns, "akidb-mlx", 2, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(());
    let samples = load.await.expect("traffic task");
    let s = traffic::summarize(&samples);
    let upstreams: std::collections::BTreeSet<_> =
        samples.iter().filter_map(|s| s.upstream.clone()).collect();
    println!(
        "rolling replace under 20 req/s: {} requests, {} failed, p95 {:?}, endpoints seen {:?}",
        s.requests, s.failures, s.p95, upstreams
    );
    let failed: Vec<_> = samples.iter().filter(|s| !s.ok()).take(5).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rolling replace: {failed:?}",
        s.failures,
        s.requests
    );
    assert!(
        upstreams.len() >= 4,
        "traffic reached old and new processes: {upstreams:?}"
    );
    drop(ing);
    runner.shutdown().await.expect("runner shutdown");
}
