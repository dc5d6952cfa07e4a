//! embedder
