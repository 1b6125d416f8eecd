//! offload's kernel model, shared by everything that describes, checks or cuts up a job:
//! the packager, the macros, the cluster protocol, the scheduler's callers and every
//! runner. It needs neither LLVM nor an async runtime.
//!
//! - [`Manifest`] / [`KernelSpec`] / [`Arg`]: which kernels a package exports and what
//!   their arguments mean, with sizes that may be expressions of scalar arguments
//!   ([`Expr`]), halos for stencils, and lengths the runtime fills in (`len(x)`).
//! - [`check`]: the one argument checker. Given what a caller passes, it returns a
//!   [`Layout`] with every size evaluated, or one [`ArgError`] per mistake; every runner
//!   cuts its packets from that layout.
//! - [`Program`](program::Program): a job of many steps over named, resident buffers.
//!
//! ```
//! use kernel_model::{check, Given, Manifest, ScalarValue};
//!
//! let manifest = Manifest::parse(r#"
//!     version = 2
//!     [[kernel]]
//!     name = "scale"
//!     kind = "item"
//!     args = ["n: u64", "a: inout f64[n]"]
//! "#)?;
//! let kernel = manifest.kernel("scale").expect("declared above");
//! // 10 items of 4 elements each: 320 bytes.
//! let layout = check(kernel, 10, &[Given::Scalar(ScalarValue::U64(4)), Given::bytes(320)])?;
//! assert_eq!(layout.byte_range(1, 2, 3, false), 64..96);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod expr;
pub mod layout;
pub mod manifest;
pub mod program;
mod types;

pub use expr::{EvalError, Expr};
pub use layout::{
    check, halo_range, needed_bytes, ArgError, ArgLayout, Given, Layout, SUM_PACKETS,
};
pub use manifest::{
    parse_arg, Arg, ArgKind, Derived, KernelSpec, Manifest, ManifestError, Shape, MANIFEST_VERSION,
};
pub use types::{Access, KernelKind, ScalarType, ScalarValue};

/// Package files (`.okp`) larger than this are refused before decoding: bitcode of
/// kernels is small, and the limit stops a hostile length prefix from allocating without
/// bound. The packager writes and reads packages (`ir_packager::MAX_PACKAGE_BYTES` is
/// this constant); it lives here so that the cluster protocol's upload limit follows it
/// without depending on LLVM.
pub const MAX_PACKAGE_BYTES: usize = 256 << 20;
