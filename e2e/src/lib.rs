//! e2e

// Cluster stand-ins: TEST HARNESS, never shipped.
pub mod child;
pub mod ingress;
pub mod nginx;
pub mod reflect;
pub mod runner;
pub mod traffic;

// Real components the scenarios run against: kube-apiserver + etcd, Prometheus.
pub mod controlplane;
pub mod node_env;
pub mod pod_sd;
pub mod prometheus;

// The end-to-end environment the scenarios and `make demo` share.
pub mod scenario;
pub mod traefik;
pub mod webhook;

/// Picks rustls' crypto provider for the process. Built together with the operator (as `make demo`
/// and `cargo build --workspace` do), rustls gets both ring (kube) and aws-lc-rs (reqwest 0.13 via
/// prometheus-http-query) and refuses to guess, panicking at the first TLS connection. Call before
/// creating a client; repeated calls are harmless.
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
