//! Makes libLLVM load when first needed instead of at start-up (see `llvm_lazy.rs`).
//!
//! On x86-64 Linux llvm-sys does not link libLLVM (its `no-llvm-linking` feature, turned
//! on in Cargo.toml for this target): this script lists the C API functions the library
//! exports (`nm -D`) and writes, for each, a trampoline that jumps through a table, plus
//! the table of names `load_llvm` fills with `dlsym` once it has `dlopen`ed the library.
//! Elsewhere libLLVM is linked as usual and nothing is generated but an empty list.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn llvm_config() -> PathBuf {
    if let Some(prefix) = std::env::var_os("LLVM_SYS_221_PREFIX") {
        return PathBuf::from(prefix).join("bin").join("llvm-config");
    }
    PathBuf::from("llvm-config-22")
}

fn run(program: &Path, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (scripts/setup.sh installs LLVM 22 and binutils)",
                program.display()
            )
        });
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn main() {
    println!("cargo:rerun-if-env-changed=LLVM_SYS_221_PREFIX");
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let lazy = std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64")
        && std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    let mut names: Vec<String> = Vec::new();
    let config = llvm_config();
    let dir = run(&config, &["--libdir"]).trim().to_string();
    let file = run(&config, &["--libnames", "--link-shared"])
        .trim()
        .to_string();
    println!("cargo:rustc-env=OFFLOAD_LIBLLVM_DIR={dir}");
    println!("cargo:rustc-env=OFFLOAD_LIBLLVM_FILE={file}");
    // The file the link name leads to is named by its soname (Debian: libLLVM.so.22.1):
    // what the dynamic loader would have searched for had the library been linked.
    let soname = std::fs::canonicalize(Path::new(&dir).join(&file))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| file.clone());
    println!("cargo:rustc-env=OFFLOAD_LIBLLVM_SONAME={soname}");
    if lazy {
        let library = Path::new(&dir).join(&file);
        println!("cargo:rerun-if-changed={}", library.display());
        let symbols = run(
            Path::new("nm"),
            &["-D", "--defined-only", &library.display().to_string()],
        );
        names = symbols
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let (_, kind, name) = (fields.next()?, fields.next()?, fields.next()?);
                let name = name.split('@').next()?;
                (kind == "T" && name.starts_with("LLVM")).then(|| name.to_string())
            })
            .collect();
        names.sort();
        names.dedup();
        assert!(
            !names.is_empty(),
            "{} exports no LLVM C API function",
            library.display()
        );
    }
    // The trampolines: `LLVMFoo: jmp *table[i]`; the table starts out pointing at a
    // function that reports LLVM used before it was loaded.
    let mut asm = String::new();
    if lazy {
        asm.push_str(".data\n.balign 8\n.globl offload_llvm_table\n.hidden offload_llvm_table\noffload_llvm_table:\n");
        for _ in &names {
            asm.push_str(".quad offload_llvm_unloaded\n");
        }
        asm.push_str(".text\n");
        for (i, name) in names.iter().enumerate() {
            let _ = writeln!(
                asm,
                ".globl {name}\n.hidden {name}\n.type {name},@function\n.p2align 3\n{name}:\njmp *offload_llvm_table+{}(%rip)",
                8 * i
            );
        }
    }
    std::fs::write(out.join("llvm_trampolines.s"), asm).expect("write the trampolines");
    let mut list = String::from("/// The C API functions the trampolines stand for, in table order.\npub(crate) static NAMES: &[&std::ffi::CStr] = &[\n");
    for name in &names {
        let _ = writeln!(list, "    c\"{name}\",");
    }
    list.push_str("];\n");
    std::fs::write(out.join("llvm_names.rs"), list).expect("write the names");
}
