//! Build-script helper for `#[offload::kernel]`: compiles a crate's kernel functions to an
//! offload package at build time and leaves it where the macro embeds it.
//!
//! Put the kernels in one module file that only uses `core` (it is compiled twice: as a
//! module of your crate, and alone as a `#![no_std]` crate to LLVM bitcode), and call
//! [`package`] from `build.rs`:
//!
//! ```no_run
//! // build.rs
//! fn main() -> Result<(), offload_build::BuildError> {
//!     offload_build::package("src/kernels.rs")?;
//!     Ok(())
//! }
//! ```
//!
//! [`package`] reads the file with `syn`, finds the functions marked `#[offload::kernel]`,
//! and writes three files into `OUT_DIR`: `offload_kernels.rs` (the module plus one
//! `#[no_mangle] extern "C"` shim per kernel that turns the kernel ABI's pointers into the
//! function's slices), `offload_kernels.toml` (the manifest derived from the signatures)
//! and `offload_kernels.okp`, the package that `ir_packager::package_source` makes of the
//! two with the same `rustc` cargo builds the crate with (`$RUSTC`). The macro then
//! embeds `offload_kernels.okp` with `include_bytes!`. The signature analysis is
//! `offload-macros-core`, the same code the macro uses, so the manifest and the generated
//! launchers agree argument for argument.
//!
//! Limits of this version: one kernel file per crate; kernels are top-level functions of
//! that file; the file must be self-contained (`core` only, no `crate::` or `super::`
//! paths, no other crates), since it is compiled on its own.

use std::fmt;
use std::path::{Path, PathBuf};

use ir_packager::{Manifest, Package};
use offload_macros_core::{
    analyze, is_kernel_attribute, parse_kind, shim_helpers, strip_param_attrs, KernelFn,
};
use quote::{format_ident, quote};
use syn::{Item, Visibility};

/// Base name of the files written into `OUT_DIR` (`.rs`, `.toml`, `.okp`).
pub const OUTPUT_STEM: &str = "offload_kernels";

/// The module name the kernel file is wrapped in inside the generated source.
const MODULE: &str = "offload_kernels";

/// Building the kernel package failed. Every variant names the file at fault.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An environment variable cargo sets for build scripts is missing.
    #[error("environment variable {var} is not set: call offload_build::package from a build script (build.rs), or use package_file")]
    NotInBuildScript {
        /// The variable.
        var: &'static str,
    },
    /// The kernel file is not valid Rust.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// A kernel function breaks the kernel rules (the same message the macro gives).
    #[error("{path}:{line}:{column}: {message}")]
    Kernel {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The file has no `#[offload::kernel]` function.
    #[error("{path}: no function is marked #[offload::kernel] (kernels must be top-level functions of this file)")]
    NoKernels {
        /// The file.
        path: PathBuf,
    },
    /// The derived manifest is invalid (a bug in the mapping if it ever happens).
    #[error("{path}: the derived manifest is invalid: {source}")]
    Manifest {
        /// The kernel file.
        path: PathBuf,
        /// Why.
        source: Box<ir_packager::ManifestError>,
    },
    /// Compiling or validating the generated source failed.
    #[error("{path}: packaging the kernels failed (generated source: {generated}): {source}")]
    Package {
        /// The kernel file.
        path: PathBuf,
        /// The generated source handed to rustc.
        generated: PathBuf,
        /// What went wrong (boxed: it is large and this is the cold path).
        source: Box<ir_packager::PackageError>,
    },
    /// Writing the package failed.
    #[error("{path}: {source}")]
    Format {
        /// The package file.
        path: PathBuf,
        /// Why.
        source: Box<ir_packager::FormatError>,
    },
}

// A build script's `main` returning `Err` prints the error with `Debug`: make that the
// readable message rather than the derived struct dump.
impl fmt::Debug for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The generated kernel crate for one kernel file.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The `#![no_std]` source: the file as module `offload_kernels` plus the shims.
    pub source: String,
    /// The manifest TOML derived from the kernel signatures.
    pub manifest_toml: String,
    /// The kernels, in file order.
    pub kernels: Vec<KernelFn>,
}

/// What [`package_file`] wrote.
#[derive(Debug, Clone)]
pub struct Built {
    /// The generated source (`offload_kernels.rs`).
    pub source_path: PathBuf,
    /// The manifest (`offload_kernels.toml`).
    pub manifest_path: PathBuf,
    /// The package (`offload_kernels.okp`).
    pub package_path: PathBuf,
    /// The package itself.
    pub package: Package,
}

/// For `build.rs`: packages `kernel_file` (relative to the crate's `Cargo.toml`) into
/// `$OUT_DIR/offload_kernels.okp` and tells cargo to rerun when the file changes.
pub fn package(kernel_file: impl AsRef<Path>) -> Result<Built, BuildError> {
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").ok_or(BuildError::NotInBuildScript {
            var: "CARGO_MANIFEST_DIR",
        })?;
    let out_dir =
        std::env::var_os("OUT_DIR").ok_or(BuildError::NotInBuildScript { var: "OUT_DIR" })?;
    let file = Path::new(&manifest_dir).join(kernel_file.as_ref());
    println!("cargo:rerun-if-changed={}", file.display());
    package_file(&file, Path::new(&out_dir))
}

/// Generates, writes and packages the kernels of `kernel_file` into `out_dir`.
pub fn package_file(kernel_file: &Path, out_dir: &Path) -> Result<Built, BuildError> {
    let text = std::fs::read_to_string(kernel_file).map_err(|source| BuildError::Io {
        path: kernel_file.to_path_buf(),
        source,
    })?;
    let generated = generate(&text, kernel_file)?;
    let manifest =
        Manifest::parse(&generated.manifest_toml).map_err(|source| BuildError::Manifest {
            path: kernel_file.to_path_buf(),
            source: Box::new(source),
        })?;
    let source_path = out_dir.join(format!("{OUTPUT_STEM}.rs"));
    let manifest_path = out_dir.join(format!("{OUTPUT_STEM}.toml"));
    let package_path = out_dir.join(format!("{OUTPUT_STEM}.okp"));
    write(&source_path, &generated.source)?;
    write(&manifest_path, &generated.manifest_toml)?;
    let package = ir_packager::package_source(&source_path, &manifest).map_err(|source| {
        BuildError::Package {
            path: kernel_file.to_path_buf(),
            generated: source_path.clone(),
            source: Box::new(source),
        }
    })?;
    package
        .write(&package_path)
        .map_err(|source| BuildError::Format {
            path: package_path.clone(),
            source: Box::new(source),
        })?;
    Ok(Built {
        source_path,
        manifest_path,
        package_path,
        package,
    })
}

fn write(path: &Path, text: &str) -> Result<(), BuildError> {
    std::fs::write(path, text).map_err(|source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Turns the text of a kernel file into the generated kernel crate and its manifest.
/// `path` is only used in error messages.
pub fn generate(text: &str, path: &Path) -> Result<Generated, BuildError> {
    let mut file = syn::parse_file(text).map_err(|e| {
        let start = e.span().start();
        BuildError::Syntax {
            path: path.to_path_buf(),
            line: start.line,
            column: start.column + 1,
            message: e.to_string(),
        }
    })?;
    let kernel_error = |e: syn::Error| {
        let start = e.span().start();
        BuildError::Kernel {
            path: path.to_path_buf(),
            line: start.line,
            column: start.column + 1,
            message: e.to_string(),
        }
    };
    // A module cannot carry crate attributes; the generated crate root is `no_std` anyway.
    file.attrs.retain(|a| !a.path().is_ident("no_std"));
    let mut kernels = Vec::new();
    let mut items = Vec::new();
    for mut item in std::mem::take(&mut file.items) {
        match &mut item {
            Item::Use(u) if uses_offload(&u.tree) => continue,
            Item::Fn(function) => {
                if let Some(pos) = function.attrs.iter().position(is_kernel_attribute) {
                    let attr = function.attrs.remove(pos);
                    let args = match &attr.meta {
                        syn::Meta::Path(_) => proc_macro2::TokenStream::new(),
                        syn::Meta::List(list) => list.tokens.clone(),
                        syn::Meta::NameValue(nv) => {
                            return Err(kernel_error(syn::Error::new_spanned(
                                nv,
                                "expected `#[offload::kernel]` or `#[offload::kernel(range)]`",
                            )))
                        }
                    };
                    let kind = parse_kind(args).map_err(kernel_error)?;
                    kernels.push(analyze(kind, function).map_err(kernel_error)?);
                    strip_param_attrs(function);
                    // The shims at the crate root call it.
                    if matches!(function.vis, Visibility::Inherited) {
                        function.vis = syn::parse_quote!(pub(crate));
                    }
                }
            }
            _ => {}
        }
        items.push(item);
    }
    if kernels.is_empty() {
        return Err(BuildError::NoKernels {
            path: path.to_path_buf(),
        });
    }
    let module = format_ident!("{MODULE}");
    let inner_attrs = &file.attrs;
    let shims = kernels.iter().map(|k| k.shim(&module));
    let helpers = shim_helpers();
    let header = format!(
        " Generated by offload-build from `{}`: the kernel module and one C-ABI shim per kernel. Do not edit.",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    );
    let tokens = quote! {
        #![doc = #header]
        #![no_std]
        #![allow(dead_code, unused_imports)]

        mod #module {
            #(#inner_attrs)*
            #(#items)*
        }

        #helpers

        #(#shims)*
    };
    let generated: syn::File = syn::parse2(tokens).map_err(kernel_error)?;
    let manifest_toml = manifest_toml(path, &kernels);
    Ok(Generated {
        source: prettyplease::unparse(&generated),
        manifest_toml,
        kernels,
    })
}

fn manifest_toml(path: &Path, kernels: &[KernelFn]) -> String {
    let mut toml = format!(
        "# Generated by offload-build from `{}`.\nversion = 2\n",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    for k in kernels {
        toml.push('\n');
        toml.push_str(&k.manifest_toml());
    }
    toml
}

/// Whether a `use` brings in the `offload` crate (the attribute's import), which the
/// stand-alone kernel crate does not have.
fn uses_offload(tree: &syn::UseTree) -> bool {
    let root = match tree {
        syn::UseTree::Path(p) => &p.ident,
        syn::UseTree::Name(n) => &n.ident,
        syn::UseTree::Rename(r) => &r.ident,
        _ => return false,
    };
    root == "offload" || root == "offload_macros"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_manifest_and_shim_for_an_item_kernel() {
        let text = r#"
            use offload::kernel;
            #[offload::kernel]
            pub fn saxpy(i: usize, a: f32, x: &[f32], #[split(1)] y: &mut [f32]) {
                y[0] += a * x[i];
            }
        "#;
        let g = generate(text, Path::new("k.rs")).expect("valid kernel file");
        let manifest = Manifest::parse(&g.manifest_toml).expect("manifest parses");
        let spec = manifest.kernel("saxpy").expect("kernel present");
        assert_eq!(
            spec.signature(),
            "item saxpy(i: u64, a: f32, x: in f32[], x_len: u64 = len(x), y: inout f32[1])"
        );
        assert_eq!(spec.signature(), g.kernels[0].signature());
        assert!(
            g.source.contains("pub unsafe extern \"C\" fn saxpy("),
            "{}",
            g.source
        );
        assert!(!g.source.contains("use offload::kernel"), "{}", g.source);
        assert!(!g.source.contains("#[split"), "{}", g.source);
    }

    #[test]
    fn reports_kernel_errors_with_their_line() {
        let text = "\n#[offload::kernel]\nfn f(i: usize, v: Vec<f32>) {}\n";
        match generate(text, Path::new("k.rs")) {
            Err(BuildError::Kernel { line, message, .. }) => {
                assert_eq!(line, 3);
                assert!(
                    message.contains("unsupported kernel parameter type `Vec<f32>`"),
                    "{message}"
                );
            }
            other => panic!("expected a kernel error, got {other:?}"),
        }
    }

    #[test]
    fn refuses_a_file_without_kernels() {
        assert!(matches!(
            generate("pub fn f() {}", Path::new("k.rs")),
            Err(BuildError::NoKernels { .. })
        ));
    }
}
