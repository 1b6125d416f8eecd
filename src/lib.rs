//! offload runs compute kernels, shipped as LLVM bitcode, on every core of this machine
//! and (with the cluster) on the other machines of a LAN.
//!
//! A kernel is a `#![no_std]` Rust or C function, compiled once into a [`Package`]
//! (bitcode + [`Manifest`] + hash) by [`package_source`]. A [`Job`] is a program of steps
//! (kernel launches over items `0..n`) on named buffers that stay where they are between
//! steps; a single launch is a one-step job. [`Cluster::run`] runs a job with one set of
//! [`Options`] on this machine (each kernel JIT-compiled once by an [`Engine`]) or on a
//! cluster's nodes, and returns one [`Report`]; `offload run` and the
//! `#[offload::kernel]` launchers go through the same path. This crate is the facade: it
//! re-exports the parts and holds the local engine and the `offload` command line.
//!
//! ```no_run
//! use std::sync::Arc;
//! use offload::{package_source, ArgValue, Buffer, Cluster, Job, Manifest, Options, ScalarValue};
//!
//! let manifest = Manifest::parse(&std::fs::read_to_string("examples/saxpy/manifest.toml")?)?;
//! let package = Arc::new(package_source("examples/saxpy/kernel.rs".as_ref(), &manifest)?);
//! let n = 1 << 20;
//! let x: Vec<u8> = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
//! let args = vec![
//!     ArgValue::Scalar(ScalarValue::F32(2.0)),
//!     ArgValue::Buffer(Buffer::from_bytes(&x)),
//!     ArgValue::Buffer(Buffer::zeroed(4 * n)),
//! ];
//! let mut job = Job::kernel(package, "saxpy", n as u64, args)?;
//! let report = Cluster::local()?.run(&mut job, &Options::default())?;
//! println!("{} packets on {} threads", report.packets, report.threads);
//! let y = job.buffer("y").expect("the kernel has a parameter y");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Crates: `kernel-model` (manifests, programs, the argument checker; no LLVM),
//! `offload-package` (the package file; no LLVM), `ir-packager` (sources to packages),
//! `node-jit` (packages to native code), `scheduler` (the pure packet scheduler),
//! `opencl-backend`, `offload-protocol`, `cluster` (the client and transport; no LLVM),
//! `cluster-node` (the node agent and its workers).

pub mod api;
pub mod buffer;
mod check;
pub mod compiler;
mod crash;
mod engine;
pub mod files;
mod isolated;
pub mod job;
mod shared;
pub mod tune;

pub use api::{
    ClientConfig, ClientError, Cluster, Credentials, CredentialsError, Element, EmbeddedPackage,
    Kernel, KernelArg, LaunchError, Scalar,
};
pub use buffer::Buffer;
pub use compiler::{serve_compile_object, CompilerProcess};
pub use crash::{end_runs_cleanly_on_interrupt, report_kernel_crashes};
pub use engine::{check_memory, sum_workspace, RunError};
pub use ir_packager::kernel_model::program::{Program, ProgramError};
pub use ir_packager::MAGIC as PACKAGE_MAGIC;
pub use ir_packager::{
    check, needed_bytes, package_source, Access, Arg, ArgError, ArgKind, ArgLayout, Expr,
    FormatError, Given, KernelKind, KernelSpec, Layout, Manifest, ManifestError, Package,
    PackageError, PackageHash, ScalarType, ScalarValue, Shape,
};
pub use isolated::{serve_worker, WorkerStartError};
pub use job::{ArgValue, ClusterReport, Job, JobBuilder, JobError, Options, Report};
pub use node_jit::{
    c_prototype, describe_bytes, memory_limit, CodeOrigin, Config, Engine, HostTarget, JitError,
    OptLevel, Tuning,
};
/// `#[offload::kernel]`: marks a plain Rust function as a kernel and generates a typed
/// launcher module of the same name. See `docs/macros.md` and [`api`].
///
/// ```no_run
/// #[offload::kernel]
/// pub fn saxpy(i: usize, a: f32, x: &[f32], #[split(1)] y: &mut [f32]) {
///     y[0] += a * x[i];
/// }
///
/// let (x, mut y) = (vec![1.0f32; 4], vec![1.0f32; 4]);
/// saxpy(0, 2.0, &x, &mut y[0..1]); // still a Rust function
/// let cluster = offload::Cluster::local()?;
/// // Needs the package that `offload_build::package` embeds from build.rs.
/// saxpy::launch(&cluster, 4, 2.0, &x, &mut y)?;
/// # Ok::<(), offload::LaunchError>(())
/// ```
pub use offload_macros::kernel;
pub use opencl_backend::{self, OpenCl};
pub use scheduler::DeviceChoice;

/// The package format version this build reads and writes.
pub fn ir_packager_format_version() -> u16 {
    ir_packager::FORMAT_VERSION
}
