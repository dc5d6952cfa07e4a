//! operator
pub mod crd;
pub mod duration;
pub mod decision;
pub mod prometheus;
pub mod traffic;
pub mod workload;
pub mod leader;
pub mod metrics;
pub mod server;
pub mod cluster;
pub mod observe;
pub mod controller;
