//! The examples' native Rust references, loaded once for every test module.

#[path = "../../examples/dot/reference.rs"]
pub mod dot_ref;
#[path = "../../benches/kernels/references.rs"]
pub mod kernels_ref;
#[path = "../../examples/logcrunch/reference.rs"]
pub mod logcrunch_ref;
#[path = "../../examples/mandelbrot/reference.rs"]
pub mod mandelbrot_ref;
#[path = "../../examples/nbody/reference.rs"]
pub mod nbody_ref;
#[path = "../../examples/raytrace/reference.rs"]
pub mod raytrace_ref;
#[path = "../../examples/saxpy/reference.rs"]
pub mod saxpy_ref;
