//! operator

/// The OpenTelemetry `service.name` of the operator's spans when `OTEL_SERVICE_NAME` is unset.
pub const OTEL_SERVICE_NAME: &str = "embedding-rollout-operator";

pub mod caches;
pub mod cluster;
pub mod controller;
pub mod crd;
pub mod dashboard;
pub mod decision;
pub mod duration;
pub mod gate_template_reader;
pub mod history;
pub mod history_store;
pub mod http_client;
pub mod leader;
pub mod metrics;
pub mod notification;
pub mod notification_config;
pub mod notifier;
pub mod object_keys;
pub mod observe;
pub mod parity_probe;
pub mod prometheus;
pub mod prometheus_access;
pub mod server;
pub mod traffic;
pub mod workload;
