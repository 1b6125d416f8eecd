//! The kernel manifest, from the LLVM-free `kernel-model` crate (re-exported here so
//! that `ir_packager::manifest::...` keeps working).

pub use kernel_model::manifest::*;
pub use kernel_model::{Access, KernelKind, ScalarType, ScalarValue};
