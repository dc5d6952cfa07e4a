//! embedder
pub mod model;
pub mod registry;
