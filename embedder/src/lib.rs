//! candle-embedder: an HTTP embedding server (axum) over a Candle inference core.
//!
//! Shell: `api` (routes, request validation, JSON errors), `batcher` (bounded queue + inference
//! threads), `breaker` (circuit breaker), `metrics`, `config`. Core: `model`, `registry`.

pub mod api;
pub mod batcher;
pub mod breaker;
pub mod chaos;
pub mod config;
pub mod metrics;
pub mod model;
pub mod registry;
pub mod server;
