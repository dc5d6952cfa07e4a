//! The one way the operator builds an HTTP client (Prometheus, the parity probe, notifications).
//!
//! reqwest is built without a crypto provider of its own: its default, aws-lc-rs, is a second C
//! crypto library to compile (minutes on two cores, in every profile) next to the ring that kube
//! already links. rustls then uses the process-wide provider, which this installs before the
//! first client is built, so a client built anywhere (the binary, a test) has one.

/// A client builder with the process-wide rustls provider (ring) in place.
pub fn builder() -> reqwest::ClientBuilder {
    install_provider();
    reqwest::Client::builder()
}

/// Installs the process-wide rustls provider (ring), before anything builds a reqwest client:
/// without one, reqwest panics at `Client::new()` and `build()`.
pub fn install_provider() {
    // Err only means a provider is already installed (main installs the same one for kube).
    let _ = rustls::crypto::ring::default_provider().install_default();
}
