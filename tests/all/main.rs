//! offload's integration tests: one test binary, one module per topic (as wasmtime does),
//! so the suite links once.

mod cache;
mod common;
mod cross;
mod examples;
mod validation;
mod conformance;
mod macros;
mod cluster;
mod tune;
