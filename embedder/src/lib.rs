//! candle-embedder: an HTTP embedding server (axum) over a Candle inference core.
//!
//! Shell: `api` (routes, request validation, JSON errors), `batcher` (bounded queue + inference
//! threads), `breaker` (circuit breaker), `metrics`, `config`. Core: `model`, `registry`.
//!
//! `unsafe` lives only in the SIMD kernels (`model::gemm`, `model::qgemm`, `model::ops`): every
//! `unsafe fn` states its contract under `# Safety`, every `unsafe` block why it holds.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod api;
pub mod batcher;
pub mod breaker;
pub mod chaos;
pub mod config;
pub mod metrics;
pub mod model;
pub mod registry;
pub mod server;
