//! Traffic shifting: the ingress-nginx canary Ingress, or the weights of a Gateway API HTTPRoute.
pub mod gateway;
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod httproute;
pub mod nginx;
