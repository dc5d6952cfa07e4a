//! e2e

// Cluster stand-ins: TEST HARNESS, never shipped.
pub mod child;
pub mod ingress;
pub mod nginx;
pub mod reflect;
pub mod runner;
pub mod traffic;
