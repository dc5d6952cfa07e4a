//! e2e

// TEST HARNESS, never shipped: the cluster is real (kube-apiserver, etcd, the controllers, the
// kubelet with containerd, kube-proxy, Traefik; Prometheus outside it); these modules start it and
// drive it as a user would.
pub mod child;
pub mod controlplane;
pub mod node_env;
pub mod pod_sd;
pub mod prometheus;
pub mod rollout_env;
// The scale benchmark (make scale-bench): fake Prometheus, counting proxy, Deployment status.
pub mod scale;
pub mod scenario;
pub mod traefik;
pub mod traffic;
pub mod webhook;

/// The workspace root (the e2e crate's parent directory).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e crate lives in the workspace")
        .to_path_buf()
}

/// A TCP port free on loopback at the time of the call.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Installs rustls' process-wide crypto provider (ring, the only one linked): the operator's
/// library code that the harness calls builds reqwest 0.13 clients, which have no provider of
/// their own (operator/src/http_client.rs). Call before creating a client; repeated calls are
/// harmless.
pub fn use_ring_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// SIGINT or SIGTERM: both end a harness binary cleanly (children killed, nothing left behind).
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
