//! offload's integration tests: one test binary, one module per topic (as wasmtime does),
//! so the suite links once.

mod bench_kernels;
mod cache;
mod check;
mod cluster;
mod common;
mod conformance;
mod crashes;
mod cross;
mod deploy;
mod examples;
mod fleet;
mod gpu_check;
mod isolation;
mod layering;
mod macros;
mod programs;
mod references;
mod sandbox;
mod testbed;
mod tune;
mod validation;
