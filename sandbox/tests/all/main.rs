//! The sandbox applied for real: `sandbox-probe worker` sandboxes itself, then the tests
//! make it serve packets, break rules and trap, and check how it ended, in words.

mod forbidden;
mod limits;
mod loaded_kernels;
mod parent;
mod probe;
mod serving;
mod traps;
