//! Load generator for the embedding API.
//!
//! Two modes:
//! - open loop ([`run_open_loop`]): requests are scheduled on a fixed clock (constant arrival rate, like
//!   k6's `constant-arrival-rate` executor) and latency is measured from the *scheduled* time, so a slow
//!   server cannot hide its queueing delay by slowing the generator down (no coordinated omission);
//! - closed loop ([`run_closed_loop`]): N workers send back to back, to find the maximum throughput.
//!
//! The pure parts (request bodies, the schedule, the statistics) are separate modules so the e2e harness
//! can reuse them; [`runner`] is the imperative shell that talks HTTP.

pub mod api;
pub mod duration;
pub mod fuzz;
pub mod fuzz_client;
pub mod runner;
pub mod schedule;
pub mod stats;

pub use api::{Api, RequestTemplate, DEFAULT_MODEL, SAMPLE_TEXTS};
pub use duration::parse_duration;
pub use runner::{run_closed_loop, run_open_loop, wait_ready, ClosedLoop, LoadError, Target};
pub use schedule::OpenLoopPlan;
pub use stats::{ErrorKind, LatencySummary, Recorder, Report};
