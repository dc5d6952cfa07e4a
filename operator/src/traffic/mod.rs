//! Traffic shifting. Only ingress-nginx canary-by-weight is implemented.
pub mod nginx;
