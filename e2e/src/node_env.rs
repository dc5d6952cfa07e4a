//! TEST HARNESS: one real node per test binary, and the steps its tests share (images, the
//! operator's chart, the demo baseline, waiting for availability, requests through a Service).
//!
//! The node runs on a thread of its own for the life of the binary (the kernel tells up.sh when
//! that thread, i.e. the process, is gone: PR_SET_PDEATHSIG), so every test of the binary attaches
//! to the same cluster and works in a namespace of its own.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use serde_json::{json, Value};

use crate::controlplane::{apply_yaml, ControlPlane};
use crate::scenario::{helm_bin, in_namespace, OPERATOR_NAMESPACE, OPERATOR_SA};
use crate::workspace_root;

pub const REPO: &str = "embedding-rollout.local";
pub const TAG: &str = "e2e";

pub fn images_dir() -> PathBuf {
    std::env::var_os("E2E_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/e2e-images"))
}

pub fn image(name: &str) -> String {
    format!("{REPO}/{name}:{TAG}")
}

/// The node's work directory; the cluster runs on a thread of its own for the life of the binary
/// (the kernel tells up.sh when that thread, i.e. the process, is gone: PR_SET_PDEATHSIG).
pub fn shared_node() -> &'static Path {
    static NODE: OnceLock<PathBuf> = OnceLock::new();
    NODE.get_or_init(|| {
        let images = images_dir();
        for archive in ["pause", "candle-embedder", "embedding-rollout-operator"] {
            let path = images.join(format!("{archive}.tar"));
            assert!(
                path.is_file(),
                "{} is missing: run e2e/images/build.sh (make e2e does)",
                path.display()
            );
        }
        // One work directory per test binary (only one node runs per machine at a time anyway).
        let exe = std::env::current_exe().ok();
        let binary = exe
            .as_deref()
            .and_then(Path::file_stem)
            .and_then(|s| s.to_str())
            .and_then(|s| s.split('-').next())
            .unwrap_or("node")
            .to_string();
        let workdir = workspace_root()
            .join("target/tmp/node")
            .join(binary)
            .join("cluster");
        let _ = std::fs::remove_dir_all(&workdir);
        let (tx, rx) = std::sync::mpsc::channel();
        let dir = workdir.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let t = Instant::now();
                match ControlPlane::start_node(&dir, &images).await {
                    Ok(cp) => {
                        println!(
                            "[node] control plane and node {} up in {:.1}s (API {}, workdir {})",
                            cp.node.as_ref().map_or("?", |n| n.name.as_str()),
                            t.elapsed().as_secs_f64(),
                            cp.api_url,
                            dir.display()
                        );
                        let _ = tx.send(Ok(()));
                        // Keep `cp` (and this thread) until the process exits.
                        std::future::pending::<()>().await;
                        drop(cp);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        });
        match rx.recv() {
            Ok(Ok(())) => workdir,
            Ok(Err(e)) => panic!("the node did not start: {e}"),
            Err(_) => panic!("the node's thread ended before reporting"),
        }
    })
}

pub async fn cluster() -> ControlPlane {
    let dir = shared_node();
    ControlPlane::attach(dir)
        .await
        .unwrap_or_else(|e| panic!("attach to {}: {e}", dir.display()))
}

/// `helm upgrade --install` of the operator chart as a user would, with the node's image and
/// `extra` `--set` values; waits for both replicas to be Ready.
pub fn install_operator(cp: &ControlPlane, extra: &[&str]) {
    let t = Instant::now();
    let out = std::process::Command::new(helm_bin())
        .args(["upgrade", "--install", "ero"])
        .arg(workspace_root().join("charts/embedding-rollout-operator"))
        .args(["--namespace", OPERATOR_NAMESPACE, "--create-namespace"])
        .arg("--kubeconfig")
        .arg(&cp.kubeconfig_path)
        .args([
            "--set",
            &format!("fullnameOverride={OPERATOR_SA}"),
            "--set",
            &format!("image.repository={REPO}/embedding-rollout-operator"),
            "--set",
            &format!("image.tag={TAG}"),
            "--set",
            "image.pullPolicy=Never",
            "--wait",
            "--timeout",
            "180s",
        ])
        .args(extra.iter().flat_map(|v| ["--set", v]))
        .output()
        .expect("running bin/helm (make helm)");
    assert!(
        out.status.success(),
        "helm install failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "[node] operator chart installed and Ready in {:.1}s",
        t.elapsed().as_secs_f64()
    );
}

pub async fn create_namespace(cp: &ControlPlane, ns: &str) {
    cp.apply_as_admin(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
    ))
    .await
    .expect("namespace");
}

/// examples/demo-baseline.yaml with the node's embedder image, applied as a user would.
pub async fn apply_baseline(cp: &ControlPlane, ns: &str) {
    let yaml = std::fs::read_to_string(workspace_root().join("examples/demo-baseline.yaml"))
        .expect("examples/demo-baseline.yaml");
    let yaml = yaml.replace(
        "ghcr.io/akidb/candle-embedder:1.0.0",
        &image("candle-embedder"),
    );
    apply_yaml(&cp.admin, &in_namespace(&yaml, ns).unwrap(), "e2e-user")
        .await
        .expect("applying the baseline");
}

/// Polls `f` every 500 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn until<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn available(cp: &ControlPlane, ns: &str, name: &str) -> i32 {
    let deps: Api<Deployment> = Api::namespaced(cp.admin.clone(), ns);
    deps.get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|d| d.status?.available_replicas)
        .unwrap_or(0)
}

/// Waits until Deployment `name` has `replicas` available ones, or panics after `timeout`.
pub async fn wait_available(
    cp: &ControlPlane,
    ns: &str,
    name: &str,
    replicas: i32,
    timeout: Duration,
    what: &str,
) {
    until(timeout, what, || async {
        (available(cp, ns, name).await == replicas).then_some(())
    })
    .await;
}

/// POST /api/v1/embed on the Service's ClusterIP, from the host (kube-proxy's rules).
pub async fn embed_via_service(
    cp: &ControlPlane,
    ns: &str,
    service: &str,
) -> Result<usize, String> {
    let services: Api<Service> = Api::namespaced(cp.admin.clone(), ns);
    let svc = services.get(service).await.map_err(|e| e.to_string())?;
    let ip = svc.spec.and_then(|s| s.cluster_ip).ok_or("no clusterIP")?;
    let resp = reqwest::Client::new()
        .post(format!("http://{ip}:8080/api/v1/embed"))
        .json(&json!({"texts": ["hello from the node test"]}))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let body: Value = resp.json().await.map_err(|e| e.to_string())?;
    Ok(body["embeddings"][0].as_array().map_or(0, |v| v.len()))
}
