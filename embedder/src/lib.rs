//! candle-embedder: an HTTP embedding server (axum) over a Candle inference core.
//!
//! Layers, each using only the ones below it:
//! - edge: `server` (load, serve, drain), `api` (routes, request validation, JSON errors), `state`
//!   (what the handlers share);
//! - domain: `infer` (the pipeline: model lookup, tokenization, chaos, breaker, queue, timeout,
//!   with its own error type), over `batcher` (bounded queue + inference threads), `breaker`,
//!   `chaos`;
//! - core: `model` (tokenizer, BERT, GEMMs), `registry` (models file);
//! - `metrics`, `config`: used by all, using none of the above (but `config` builds the
//!   batcher's and breaker's settings).
//!
//! `unsafe` lives only in the SIMD kernels (`model::gemm`, `model::qgemm`, `model::ops`): every
//! `unsafe fn` states its contract under `# Safety`, every `unsafe` block why it holds.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

/// The OpenTelemetry `service.name` of the server's spans when `OTEL_SERVICE_NAME` is unset.
pub const OTEL_SERVICE_NAME: &str = "candle-embedder";

pub mod api;
pub mod batcher;
pub mod breaker;
pub mod chaos;
pub mod config;
pub mod infer;
pub mod metrics;
pub mod model;
pub mod registry;
pub mod server;
pub mod state;
