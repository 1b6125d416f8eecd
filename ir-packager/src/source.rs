//! Front ends: turning `.rs`, `.c`, `.ll` and `.bc` files into an LLVM module.

use std::path::{Path, PathBuf};
use std::process::Command;

use inkwell::context::Context;
use inkwell::memory_buffer::MemoryBuffer;
use inkwell::module::Module;

use crate::PackageError;
use offload_package::SourceKind;

/// The crate name every Rust kernel file is compiled under, so that the same source
/// gives the same symbols (and the same package hash) whatever its file is called.
const RUST_CRATE_NAME: &str = "offload_kernel";

/// Flags for Rust kernels: optimized, but not vectorized, so that each node's JIT can
/// vectorize for its own ISA instead of inheriting SSE2-width loops.
const RUSTC_FLAGS: &[&str] = &[
    "--crate-type=lib",
    "--emit=llvm-bc",
    "--edition=2021",
    "-Cpanic=abort",
    "-Copt-level=3",
    "-Ccodegen-units=1",
    "-Cdebuginfo=0",
    "-Cno-vectorize-loops",
    "-Cno-vectorize-slp",
];

/// Flags for C kernels, with the same reasoning; `-fno-math-errno` lets `sqrt` and friends
/// become LLVM intrinsics that vectorize.
const CLANG_FLAGS: &[&str] = &[
    "-c",
    "-emit-llvm",
    "-O2",
    "-fno-vectorize",
    "-fno-slp-vectorize",
    "-fno-math-errno",
    "-ffreestanding",
    "-fno-builtin-printf",
    "-std=c11",
    "-g0",
];

/// The bitcode a front end produced, with a description of that front end.
pub(crate) struct FrontEndOutput<'ctx> {
    pub module: Module<'ctx>,
    pub front_end: String,
}

/// Compiles or parses `source` into a module of `ctx`.
pub(crate) fn load_source<'ctx>(
    ctx: &'ctx Context,
    source: &Path,
    kind: SourceKind,
) -> Result<FrontEndOutput<'ctx>, PackageError> {
    match kind {
        SourceKind::Rust => compile_rust(ctx, source),
        SourceKind::C => compile_c(ctx, source),
        SourceKind::LlvmIr => {
            let buffer = read_buffer(source)?;
            let module =
                ctx.create_module_from_ir(buffer)
                    .map_err(|e| PackageError::MalformedIr {
                        path: source.display().to_string(),
                        message: e.to_string(),
                    })?;
            Ok(FrontEndOutput {
                module,
                front_end: "LLVM IR".into(),
            })
        }
        SourceKind::Bitcode => {
            let buffer = read_buffer(source)?;
            let module = Module::parse_bitcode_from_buffer(&buffer, ctx).map_err(|e| {
                PackageError::MalformedBitcode {
                    path: source.display().to_string(),
                    message: e.to_string(),
                }
            })?;
            Ok(FrontEndOutput {
                module,
                front_end: "LLVM bitcode".into(),
            })
        }
    }
}

fn read_buffer(path: &Path) -> Result<MemoryBuffer<'static>, PackageError> {
    // Read through std first so a missing file gets the OS's own words.
    let bytes = std::fs::read(path).map_err(|source| PackageError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(MemoryBuffer::create_from_memory_range_copy(
        &bytes,
        &path.display().to_string(),
    ))
}

fn compile_rust<'ctx>(
    ctx: &'ctx Context,
    source: &Path,
) -> Result<FrontEndOutput<'ctx>, PackageError> {
    let rustc = rustc_path();
    let dir = scratch_dir()?;
    let out = dir.path().join("kernel.bc");
    let mut cmd = Command::new(&rustc);
    cmd.args(RUSTC_FLAGS)
        .arg(format!("--crate-name={RUST_CRATE_NAME}"))
        .arg(source)
        .arg("-o")
        .arg(&out);
    // Panic locations embed the source path; mapping its folder away makes the package
    // (and its hash) the same wherever the file lives.
    if let Some(parent) = std::path::absolute(source)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        cmd.arg(format!("--remap-path-prefix={}=", parent.display()));
        if let Some(relative_parent) = source.parent().filter(|p| !p.as_os_str().is_empty()) {
            cmd.arg(format!(
                "--remap-path-prefix={}=",
                relative_parent.display()
            ));
        }
    }
    run_front_end(
        cmd,
        "rustc",
        source,
        "rustup's toolchain (or set RUSTC)",
        "RUSTC",
    )?;
    let module = parse_front_end_bitcode(ctx, &out, source)?;
    Ok(FrontEndOutput {
        module,
        front_end: tool_version(&rustc, &["-vV"], "rustc"),
    })
}

fn compile_c<'ctx>(
    ctx: &'ctx Context,
    source: &Path,
) -> Result<FrontEndOutput<'ctx>, PackageError> {
    let clang = clang_path();
    let dir = scratch_dir()?;
    let out = dir.path().join("kernel.bc");
    let mut cmd = Command::new(&clang);
    cmd.args(CLANG_FLAGS).arg(source).arg("-o").arg(&out);
    run_front_end(
        cmd,
        "clang-22",
        source,
        "`apt-get install clang-22` (or set OFFLOAD_CLANG)",
        "OFFLOAD_CLANG",
    )?;
    let module = parse_front_end_bitcode(ctx, &out, source)?;
    Ok(FrontEndOutput {
        module,
        front_end: tool_version(&clang, &["--version"], "clang"),
    })
}

fn scratch_dir() -> Result<tempfile::TempDir, PackageError> {
    tempfile::Builder::new()
        .prefix("offload-package-")
        .tempdir()
        .map_err(|source| PackageError::Io {
            path: std::env::temp_dir().display().to_string(),
            source,
        })
}

/// Runs a front end. `override_var` is the environment variable that names another
/// program for it: when it is set, a program that cannot be started is reported as that
/// variable's program, not as the default tool.
fn run_front_end(
    mut cmd: Command,
    tool: &str,
    source: &Path,
    install_hint: &str,
    override_var: &str,
) -> Result<(), PackageError> {
    if !source.exists() {
        return Err(PackageError::Io {
            path: source.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    let overridden = std::env::var_os(override_var).is_some_and(|v| !v.is_empty());
    let output = cmd.output().map_err(|e| {
        let program = cmd.get_program().to_string_lossy().into_owned();
        if overridden {
            PackageError::ToolMissing {
                tool: format!("`{program}` (set by ${override_var})"),
                hint: format!("{e}; correct ${override_var} or unset it to use {tool}"),
            }
        } else {
            PackageError::ToolMissing {
                tool: tool.to_string(),
                hint: format!("{e}; install it with {install_hint}"),
            }
        }
    })?;
    if !output.status.success() {
        return Err(PackageError::CompileFailed {
            tool: tool.to_string(),
            path: source.display().to_string(),
            stderr: String::from_utf8_lossy(&output.stderr)
                .trim_end()
                .to_string(),
        });
    }
    Ok(())
}

fn parse_front_end_bitcode<'ctx>(
    ctx: &'ctx Context,
    bitcode: &Path,
    source: &Path,
) -> Result<Module<'ctx>, PackageError> {
    let buffer = read_buffer(bitcode)?;
    Module::parse_bitcode_from_buffer(&buffer, ctx).map_err(|e| PackageError::MalformedBitcode {
        path: source.display().to_string(),
        message: format!(
            "{e} (the front end's LLVM may be newer than offload's {})",
            crate::linked_llvm_version()
        ),
    })
}

/// The rustc to compile Rust kernels with: `$RUSTC`, else `rustc` on the PATH.
pub fn rustc_path() -> PathBuf {
    std::env::var_os("RUSTC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("rustc"))
}

/// The clang to compile C kernels with: `$OFFLOAD_CLANG`, else `clang-22` on the PATH,
/// else Debian's `/usr/lib/llvm-22/bin/clang`.
pub fn clang_path() -> PathBuf {
    if let Some(p) = std::env::var_os("OFFLOAD_CLANG") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join("clang-22").is_file()))
        .unwrap_or(false);
    if on_path {
        PathBuf::from("clang-22")
    } else {
        PathBuf::from("/usr/lib/llvm-22/bin/clang")
    }
}

/// A one-line description of a front end's version, e.g.
/// `rustc 1.95.0 (59807616e 2026-04-14) (LLVM 22.1.2)`.
fn tool_version(tool: &Path, args: &[&str], fallback: &str) -> String {
    let Ok(output) = Command::new(tool).args(args).output() else {
        return fallback.to_string();
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let first = text.lines().next().unwrap_or(fallback).trim().to_string();
    let llvm = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .map(|v| format!(" (LLVM {})", v.trim()))
        .unwrap_or_default();
    format!("{first}{llvm}")
}
