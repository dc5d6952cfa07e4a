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
pub mod prometheus;

// The end-to-end environment the scenarios and `make demo` share.
pub mod scenario;
