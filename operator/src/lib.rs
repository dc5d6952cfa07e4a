//! operator
pub mod crd;
pub mod decision;
pub mod duration;
