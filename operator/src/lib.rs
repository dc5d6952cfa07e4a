//! operator
pub mod crd;
pub mod duration;
