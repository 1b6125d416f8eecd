//! Turns kernel sources into validated, content-addressed offload packages.
//!
//! A package is LLVM bitcode plus a [`Manifest`] that says which functions are kernels
//! and what their arguments mean, plus its [`Provenance`]. [`package_source`] compiles a
//! `.rs` (rustc), `.c` (clang-22), `.ll` or `.bc` file, validates the module against the
//! manifest (kernels exist with matching signatures; only LLVM intrinsics, libm and
//! memory functions are called; no inline assembly, no global constructors), rewrites
//! it into a target-neutral canonical form and encodes it. A node receiving a package
//! calls [`load_module`], which checks the LLVM version and validates it again.
//!
//! ```no_run
//! use std::path::Path;
//! use ir_packager::{package_source, Manifest};
//!
//! let manifest = Manifest::parse(r#"
//!     [[kernel]]
//!     name = "saxpy"
//!     kind = "item"
//!     args = ["a: f32", "x: in f32[1]", "y: inout f32[1]"]
//! "#)?;
//! let package = package_source(Path::new("saxpy.rs"), &manifest)?;
//! package.write(Path::new("saxpy.okp"))?;
//! println!("{}", package.hash());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod canonical;
mod llvm_lazy;
pub mod manifest;
mod source;

use std::path::Path;
use std::sync::Once;

use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::targets::{CodeModel, InitializationConfig, RelocMode, Target, TargetMachine};
use inkwell::OptimizationLevel;

pub use canonical::{
    display_name, is_allowed_external, is_libm_function, panic_reason, validate_module,
    ValidationError, LIBM_FUNCTIONS, PANIC_SYMBOL,
};
pub use inkwell;
pub use kernel_model::{
    self, check, halo_range, needed_bytes, Access, Arg, ArgError, ArgKind, ArgLayout, Derived,
    Expr, Given, KernelKind, KernelSpec, Layout, Manifest, ManifestError, ScalarType, ScalarValue,
    Shape, SUM_PACKETS,
};
pub use offload_package::{
    FormatError, LlvmVersion, Package, PackageHash, Provenance, SourceKind, FORMAT_VERSION, MAGIC,
    MAX_PACKAGE_BYTES,
};
pub use source::{clang_path, rustc_path};

/// Packaging failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackageError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The source's extension is not one we compile.
    #[error("cannot package `{path}`: unsupported source type (expected .rs, .c, .ll or .bc)")]
    UnsupportedSource {
        /// The file.
        path: String,
    },
    /// The manifest is invalid.
    #[error("manifest: {0}")]
    Manifest(#[from] ManifestError),
    /// A front end is not installed.
    #[error("{tool} could not be started: {hint}")]
    ToolMissing {
        /// rustc or clang.
        tool: String,
        /// What went wrong and how to install it.
        hint: String,
    },
    /// The front end refused the source.
    #[error("{tool} failed to compile {path}:\n{stderr}")]
    CompileFailed {
        /// rustc or clang.
        tool: String,
        /// The source.
        path: String,
        /// What the front end said.
        stderr: String,
    },
    /// A `.bc` file that LLVM cannot read.
    #[error("malformed LLVM bitcode in {path}: {message}")]
    MalformedBitcode {
        /// The file.
        path: String,
        /// LLVM's message.
        message: String,
    },
    /// A `.ll` file that LLVM cannot parse.
    #[error("malformed LLVM IR in {path}: {message}")]
    MalformedIr {
        /// The file.
        path: String,
        /// LLVM's message.
        message: String,
    },
    /// The module breaks a kernel rule.
    #[error("invalid kernel module: {0}")]
    Invalid(#[from] ValidationError),
    /// Encoding the package failed.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// LLVM could not create a target machine for housekeeping passes.
    #[error("LLVM target setup failed: {0}")]
    Target(String),
}

/// Loading a package's module on a node failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The package needs a newer LLVM than this node has.
    #[error("package was written by LLVM {package} but this node's LLVM is {node}: LLVM bitcode is only readable by the same or a newer LLVM; install LLVM {package} or newer on this node")]
    LlvmTooOld {
        /// The package's LLVM.
        package: LlvmVersion,
        /// This node's LLVM.
        node: LlvmVersion,
    },
    /// The bitcode does not parse.
    #[error("package bitcode is malformed: {0}")]
    MalformedBitcode(String),
    /// The module breaks a kernel rule.
    #[error("package is invalid: {0}")]
    Invalid(#[from] ValidationError),
}

/// Loads libLLVM into this process, once, before anything of LLVM is used.
///
/// offload is not linked against libLLVM (on x86-64 Linux; see `llvm_lazy.rs`): loading
/// it costs ~16 ms of static initialisation, which a run whose kernels come from the
/// code cache never needs. So this must run first: [`initialize_llvm`],
/// [`llvm_context`] and [`linked_llvm_version`] call it, and every use of LLVM in
/// offload goes through one of them. The library is the one this build was configured
/// for (its directory, then the system's search path). If it cannot be loaded the
/// process ends with a message naming it, as it would have at start-up had it been
/// linked.
pub fn load_llvm() {
    static LOAD: Once = Once::new();
    LOAD.call_once(|| {
        if let Err(reason) = llvm_lazy::load() {
            eprintln!("error: {reason}; install LLVM 22 (scripts/setup.sh installs llvm-22)");
            std::process::exit(1);
        }
    });
}

/// The libLLVM file this build uses (loads, on x86-64 Linux): what a record of facts
/// LLVM gave about this machine must be keyed by.
pub fn llvm_library_path() -> String {
    llvm_lazy::library_path()
}

/// A new LLVM context, with LLVM loaded first ([`load_llvm`]).
pub fn llvm_context() -> Context {
    load_llvm();
    Context::create()
}

/// The version of the LLVM library this process uses (loading it: [`load_llvm`]).
pub fn linked_llvm_version() -> LlvmVersion {
    load_llvm();
    let (mut major, mut minor, mut patch) = (0u32, 0u32, 0u32);
    // SAFETY: LLVMGetVersion only writes the three integers.
    unsafe { llvm_sys::core::LLVMGetVersion(&mut major, &mut minor, &mut patch) };
    LlvmVersion {
        major,
        minor,
        patch,
    }
}

/// Initializes LLVM's targets once per process (native plus the cross targets offload
/// can emit objects for).
pub fn initialize_llvm() {
    load_llvm();
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let config = InitializationConfig::default();
        Target::initialize_x86(&config);
        Target::initialize_aarch64(&config);
        Target::initialize_system_z(&config);
        Target::initialize_riscv(&config);
        Target::initialize_power_pc(&config);
        Target::initialize_arm(&config);
    });
}

fn housekeeping_machine() -> Result<TargetMachine, PackageError> {
    initialize_llvm();
    let triple = TargetMachine::get_default_triple();
    let target = Target::from_triple(&triple).map_err(|e| PackageError::Target(e.to_string()))?;
    target
        .create_target_machine(
            &triple,
            "generic",
            "",
            OptimizationLevel::None,
            RelocMode::PIC,
            CodeModel::Default,
        )
        .ok_or_else(|| PackageError::Target(format!("no target machine for {triple}")))
}

/// Compiles `source` (by extension: `.rs`, `.c`, `.ll`, `.bc`), validates it against
/// `manifest`, canonicalizes it and returns the package.
pub fn package_source(source: &Path, manifest: &Manifest) -> Result<Package, PackageError> {
    manifest.check()?;
    let kind = source
        .extension()
        .and_then(|e| e.to_str())
        .and_then(SourceKind::from_extension)
        .ok_or_else(|| PackageError::UnsupportedSource {
            path: source.display().to_string(),
        })?;
    let machine = housekeeping_machine()?;
    let ctx = llvm_context();
    let output = source::load_source(&ctx, source, kind)?;
    let origin_triple = output
        .module
        .get_triple()
        .as_str()
        .to_string_lossy()
        .into_owned();
    canonical::canonicalize(&output.module, manifest, &machine)?;
    let bitcode = output.module.write_bitcode_to_memory().as_slice().to_vec();
    let provenance = Provenance {
        source_name: source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        source_kind: kind,
        front_end: output.front_end,
        llvm_version: linked_llvm_version(),
        packager: format!("offload ir-packager {}", env!("CARGO_PKG_VERSION")),
        origin_triple,
    };
    Ok(Package::assemble(provenance, manifest.clone(), bitcode)?)
}

/// Parses a package's bitcode into `ctx` after checking that this process's LLVM can
/// read it, and validates it against the package's manifest.
pub fn load_module<'ctx>(ctx: &'ctx Context, package: &Package) -> Result<Module<'ctx>, LoadError> {
    let node = linked_llvm_version();
    let written_by = package.provenance().llvm_version;
    if written_by > node {
        return Err(LoadError::LlvmTooOld {
            package: written_by,
            node,
        });
    }
    canonical::parse_and_validate(ctx, package.bitcode(), package.manifest())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_manifest() -> Manifest {
        Manifest::parse("[[kernel]]\nname = \"k\"\nkind = \"item\"\nargs = []\n").expect("manifest")
    }

    #[test]
    fn packages_from_a_newer_llvm_are_refused_with_both_versions() {
        let mut provenance = Provenance {
            source_name: "k.ll".into(),
            source_kind: SourceKind::LlvmIr,
            front_end: "test".into(),
            llvm_version: linked_llvm_version(),
            packager: "test".into(),
            origin_triple: "x86_64-unknown-linux-gnu".into(),
        };
        provenance.llvm_version.major += 1;
        let package = Package::assemble(provenance, tiny_manifest(), Vec::new()).expect("assemble");
        let ctx = llvm_context();
        let err = load_module(&ctx, &package).expect_err("must be refused");
        let message = err.to_string();
        assert!(matches!(err, LoadError::LlvmTooOld { .. }), "{message}");
        assert!(
            message.contains(&package.provenance().llvm_version.to_string()),
            "{message}"
        );
        assert!(
            message.contains(&linked_llvm_version().to_string()),
            "{message}"
        );
    }

    #[test]
    fn package_bytes_round_trip_and_corruption_is_refused() {
        let provenance = Provenance {
            source_name: "k.ll".into(),
            source_kind: SourceKind::LlvmIr,
            front_end: "test".into(),
            llvm_version: linked_llvm_version(),
            packager: "test".into(),
            origin_triple: "x86_64-unknown-linux-gnu".into(),
        };
        let package =
            Package::assemble(provenance, tiny_manifest(), vec![1, 2, 3]).expect("assemble");
        let decoded = Package::from_bytes(package.as_bytes()).expect("decode");
        assert_eq!(decoded.hash(), package.hash());
        let mut bytes = package.as_bytes().to_vec();
        bytes[6] = 99;
        assert!(matches!(
            Package::from_bytes(&bytes),
            Err(FormatError::UnsupportedVersion { found: 99, .. })
        ));
        let truncated = &package.as_bytes()[..package.as_bytes().len() - 2];
        assert!(matches!(
            Package::from_bytes(truncated),
            Err(FormatError::ChecksumMismatch)
        ));
        // Every single flipped bit after the header is caught by the checksum, before
        // bincode or LLVM sees the body.
        for index in 8..package.as_bytes().len() {
            let mut flipped = package.as_bytes().to_vec();
            flipped[index] ^= 0x10;
            assert!(
                matches!(
                    Package::from_bytes(&flipped),
                    Err(FormatError::ChecksumMismatch)
                ),
                "bit flip at byte {index} not caught"
            );
        }
        let header_only = &package.as_bytes()[..20];
        assert!(matches!(
            Package::from_bytes(header_only),
            Err(FormatError::Corrupt(_))
        ));
        let mut old = package.as_bytes().to_vec();
        old[6] = 1;
        let message = Package::from_bytes(&old)
            .expect_err("version 1 is refused")
            .to_string();
        assert!(message.contains("offload package SOURCE"), "{message}");
        assert!(matches!(
            Package::from_bytes(b"nope"),
            Err(FormatError::NotAPackage)
        ));
    }
}
