//! The scheduler's integration tests, one module per topic (one test binary).

mod driver;
mod exactly_once;
mod gpu;
mod model;
mod policy;
mod redundancy;
mod simulated;
