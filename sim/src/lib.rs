//! A deterministic, seeded simulator that drives the operator's real decision core through whole
//! rollouts and measures how often it is wrong: false rollbacks of healthy candidates, missed
//! regressions, and how long it waits for evidence. `make simulate`; docs/analysis.md.

pub mod experiment;
pub mod run;
pub mod traffic;
pub mod tsdb;
pub mod world;
