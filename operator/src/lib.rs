//! operator
pub mod cluster;
pub mod controller;
pub mod crd;
pub mod decision;
pub mod duration;
pub mod gate_template_reader;
pub mod leader;
pub mod metrics;
pub mod notification;
pub mod notifier;
pub mod observe;
pub mod parity_probe;
pub mod prometheus;
pub mod prometheus_access;
pub mod server;
pub mod traffic;
pub mod workload;
