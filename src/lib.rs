//! offload runs compute kernels, shipped as LLVM bitcode, on every core of this machine
//! and (with the cluster) on the other machines of a LAN.
//!
//! A kernel is a `#![no_std]` Rust or C function, compiled once into a [`Package`]
//! (bitcode + [`Manifest`] + hash) by [`package_source`]. Each node JIT-compiles the
//! package for its own CPU with an [`Engine`] and runs the job's items `0..items` in
//! packets chosen by the scheduler. This crate is the facade: it re-exports the parts and
//! holds the local runner and the `offload` command line.
//!
//! ```no_run
//! use offload::{package_source, run_local, ArgValue, Buffer, Config, Engine, LocalOptions, Manifest, ScalarValue};
//!
//! let manifest = Manifest::parse(&std::fs::read_to_string("examples/saxpy/manifest.toml")?)?;
//! let package = package_source("examples/saxpy/kernel.rs".as_ref(), &manifest)?;
//! let engine = Engine::new(Config::default())?;
//! let n = 1 << 20;
//! let x: Vec<u8> = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
//! let mut args = vec![
//!     ArgValue::Scalar(ScalarValue::F32(2.0)),
//!     ArgValue::Buffer(Buffer::from_bytes(&x)),
//!     ArgValue::Buffer(Buffer::zeroed(4 * n)),
//! ];
//! let report = run_local(&engine, &package, "saxpy", n as u64, &mut args, &LocalOptions::default())?;
//! println!("{} packets on {} threads", report.packets, report.threads);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Crates: `ir-packager` (sources to packages), `node-jit` (packages to native code),
//! `scheduler` (the pure packet scheduler).

pub mod api;
pub mod buffer;
pub mod local;
pub mod tune;

pub use api::{
    ClientConfig, ClientError, Cluster, Credentials, CredentialsError, Element, EmbeddedPackage,
    Kernel, KernelArg, LaunchError, LaunchOptions, LaunchReport, Scalar,
};
pub use buffer::Buffer;
pub use ir_packager::{
    package_source, Access, Arg, ArgKind, FormatError, KernelKind, KernelSpec, Manifest,
    ManifestError, Package, PackageError, PackageHash, ScalarType, ScalarValue, Shape,
};
pub use local::{
    check_args, check_memory, required_bytes, run_local, run_ranges_local, sum_workspace, ArgValue,
    DeviceChoice, LocalOptions, RunError, RunReport,
};
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

/// The package format version this build reads and writes.
pub fn ir_packager_format_version() -> u16 {
    ir_packager::FORMAT_VERSION
}
