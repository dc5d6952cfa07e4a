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
