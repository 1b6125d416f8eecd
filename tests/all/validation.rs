//! Every way a package or a run can be refused gives a message that names the culprit.

use std::path::{Path, PathBuf};

use crate::common::{offload, saxpy_package};

/// A kernel in LLVM IR with one valid item kernel; tests splice in what they break.
const VALID_IR: &str = r#"
define void @scale(i64 %i, float %a, ptr %x) {
  %p = getelementptr inbounds float, ptr %x, i64 %i
  %v = load float, ptr %p
  %r = fmul float %v, %a
  store float %r, ptr %p
  ret void
}
"#;

const SCALE_MANIFEST: &str = r#"
[[kernel]]
name = "scale"
kind = "item"
args = ["a: f32", "x: inout f32[1]"]
"#;

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        Case {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn file(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write test file");
        path
    }

    /// `offload package SOURCE --manifest MANIFEST`; returns (success, stderr).
    fn package(&self, source: &Path, manifest: &Path) -> (bool, String) {
        let out = offload([
            "package".as_ref(),
            source.as_os_str(),
            "--manifest".as_ref(),
            manifest.as_os_str(),
            "-o".as_ref(),
            self.dir.path().join("out.okp").as_os_str(),
        ]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn refuse(&self, source: &Path, manifest_text: &str, expected: &[&str]) {
        let manifest = self.file("manifest.toml", manifest_text);
        let (ok, stderr) = self.package(source, &manifest);
        assert!(!ok, "packaging should fail; stderr: {stderr}");
        for needle in expected {
            assert!(
                stderr.contains(needle),
                "error should mention {needle:?}, got:\n{stderr}"
            );
        }
        assert!(
            !stderr.contains("panicked at"),
            "must be an error, not a panic:\n{stderr}"
        );
    }
}

#[test]
fn valid_ir_packages() {
    let case = Case::new();
    let source = case.file("k.ll", VALID_IR);
    let manifest = case.file("manifest.toml", SCALE_MANIFEST);
    let (ok, stderr) = case.package(&source, &manifest);
    assert!(ok, "{stderr}");
}

#[test]
fn unparsable_manifest_is_refused() {
    let case = Case::new();
    let source = case.file("k.ll", VALID_IR);
    case.refuse(&source, "[[kernel]\nname = ", &["not a valid manifest"]);
}

#[test]
fn manifest_with_unknown_type_names_the_argument() {
    let case = Case::new();
    let source = case.file("k.ll", VALID_IR);
    case.refuse(
        &source,
        "[[kernel]]\nname = \"scale\"\nkind = \"item\"\nargs = [\"a: f16\", \"x: inout f32[1]\"]\n",
        &["argument `a: f16`", "unknown type `f16`"],
    );
}

#[test]
fn unknown_kernel_symbol_is_refused() {
    let case = Case::new();
    let source = case.file("k.ll", VALID_IR);
    case.refuse(
        &source,
        &SCALE_MANIFEST.replace("\"scale\"", "\"scal\""),
        &["kernel `scal`", "not defined in the module", "scale"],
    );
}

#[test]
fn signature_mismatch_names_the_parameter() {
    let case = Case::new();
    let source = case.file("k.ll", VALID_IR);
    case.refuse(
        &source,
        &SCALE_MANIFEST.replace("a: f32", "a: f64"),
        &[
            "kernel `scale`",
            "does not match the manifest",
            "`a`",
            "double",
        ],
    );
}

#[test]
fn wrong_parameter_count_is_refused() {
    let case = Case::new();
    let source = case.file("k.ll", VALID_IR);
    case.refuse(
        &source,
        &SCALE_MANIFEST.replace(", \"x: inout f32[1]\"", ""),
        &["expected 2 parameters, found 3"],
    );
}

#[test]
fn call_outside_the_allow_list_is_refused() {
    let case = Case::new();
    let source = case.file(
        "k.ll",
        r#"
declare i32 @printf(ptr, ...)
@fmt = private constant [3 x i8] c"%f\00"
define void @scale(i64 %i, float %a, ptr %x) {
  %c = call i32 (ptr, ...) @printf(ptr @fmt)
  ret void
}
"#,
    );
    case.refuse(
        &source,
        SCALE_MANIFEST,
        &["`scale` calls `printf`", "not allowed"],
    );
}

#[test]
fn libm_calls_are_allowed() {
    let case = Case::new();
    let source = case.file(
        "k.ll",
        r#"
declare float @sqrtf(float)
define void @scale(i64 %i, float %a, ptr %x) {
  %p = getelementptr inbounds float, ptr %x, i64 %i
  %v = load float, ptr %p
  %r = call float @sqrtf(float %v)
  store float %r, ptr %p
  ret void
}
"#,
    );
    let manifest = case.file("manifest.toml", SCALE_MANIFEST);
    let (ok, stderr) = case.package(&source, &manifest);
    assert!(ok, "{stderr}");
}

#[test]
fn inline_assembly_is_refused() {
    let case = Case::new();
    let source = case.file(
        "k.ll",
        r#"
define void @scale(i64 %i, float %a, ptr %x) {
  call void asm sideeffect "nop", ""()
  ret void
}
"#,
    );
    case.refuse(
        &source,
        SCALE_MANIFEST,
        &["`scale` contains inline assembly"],
    );
}

#[test]
fn module_assembly_is_refused() {
    let case = Case::new();
    let source = case.file("k.ll", format!("module asm \".globl evil\"\n{VALID_IR}"));
    case.refuse(&source, SCALE_MANIFEST, &["module-level inline assembly"]);
}

#[test]
fn global_constructors_are_refused() {
    let case = Case::new();
    let source = case.file(
        "k.ll",
        format!(
            r#"
@llvm.global_ctors = appending global [1 x {{ i32, ptr, ptr }}] [{{ i32, ptr, ptr }} {{ i32 65535, ptr @init, ptr null }}]
define internal void @init() {{
  ret void
}}
{VALID_IR}"#
        ),
    );
    case.refuse(&source, SCALE_MANIFEST, &["global constructors"]);
}

#[test]
fn indirect_calls_are_refused() {
    let case = Case::new();
    let source = case.file(
        "k.ll",
        r#"
define void @scale(i64 %i, float %a, ptr %x) {
  %f = load ptr, ptr %x
  call void %f()
  ret void
}
"#,
    );
    case.refuse(&source, SCALE_MANIFEST, &["`scale` makes an indirect call"]);
}

#[test]
fn malformed_bitcode_is_refused() {
    let case = Case::new();
    let source = case.file("k.bc", b"BC\xc0\xde this is not really bitcode");
    case.refuse(&source, SCALE_MANIFEST, &["malformed LLVM bitcode", "k.bc"]);
}

#[test]
fn malformed_ir_is_refused() {
    let case = Case::new();
    let source = case.file("k.ll", "define void @scale(i64 %i {");
    case.refuse(&source, SCALE_MANIFEST, &["malformed LLVM IR", "k.ll"]);
}

#[test]
fn rust_compile_errors_are_shown() {
    let case = Case::new();
    let source = case.file(
        "k.rs",
        "#![no_std]\n#[no_mangle]\npub extern \"C\" fn scale(i: u64, a: f32, x: *mut f32) { this is not rust }\n",
    );
    case.refuse(
        &source,
        SCALE_MANIFEST,
        &["rustc failed to compile", "k.rs"],
    );
}

#[test]
fn unsupported_source_types_are_refused() {
    let case = Case::new();
    let source = case.file("k.py", "print('no')");
    case.refuse(&source, SCALE_MANIFEST, &["unsupported source type"]);
}

#[test]
fn a_file_that_is_not_a_package_is_refused() {
    let case = Case::new();
    let bogus = case.file("bogus.okp", "hello");
    let out = offload(["inspect".as_ref(), bogus.as_os_str()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not an offload package"), "{stderr}");
}

#[test]
fn buffer_of_the_wrong_size_is_refused_before_running() {
    let case = Case::new();
    let pkg = saxpy_package(case.dir.path());
    let x = case.file("x.bin", vec![0u8; 4 * 1000]);
    let y = case.file("y.bin", vec![0u8; 4 * 999]);
    let out = offload([
        "run".as_ref(),
        pkg.as_os_str(),
        "--kernel".as_ref(),
        "saxpy".as_ref(),
        "--items".as_ref(),
        "1000".as_ref(),
        "--arg".as_ref(),
        "a=2".as_ref(),
        "--in".as_ref(),
        format!("x={}", x.display()).as_ref(),
        "--inout".as_ref(),
        format!("y={}", y.display()).as_ref(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("buffer `y`") && stderr.contains("4000 bytes") && stderr.contains("3996"),
        "{stderr}"
    );
    // Nothing ran, so the inout file is untouched.
    assert_eq!(std::fs::read(&y).expect("y"), vec![0u8; 4 * 999]);
}

#[test]
fn missing_and_misplaced_arguments_say_how_to_pass_them() {
    let case = Case::new();
    let pkg = saxpy_package(case.dir.path());
    let x = case.file("x.bin", vec![0u8; 40]);
    let run = |extra: &[&str]| {
        let mut args: Vec<String> = vec![
            "run".into(),
            pkg.display().to_string(),
            "--kernel".into(),
            "saxpy".into(),
            "--items".into(),
            "10".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = offload(&args);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing = run(&["--arg", "a=1", "--in", &format!("x={}", x.display())]);
    assert!(
        missing.contains("missing argument `y: inout f32[1]`"),
        "{missing}"
    );
    assert!(missing.contains("--inout y=FILE"), "{missing}");
    let misplaced = run(&["--arg", "a=1", "--inout", &format!("x={}", x.display())]);
    assert!(
        misplaced.contains("must be given with --in x="),
        "{misplaced}"
    );
    let bad_scalar = run(&["--arg", "a=two"]);
    assert!(
        bad_scalar.contains("`two` is not a valid f32"),
        "{bad_scalar}"
    );
    let unknown_kernel = offload([
        "run".as_ref(),
        pkg.as_os_str(),
        "--kernel".as_ref(),
        "saxpyy".as_ref(),
        "--items".as_ref(),
        "1".as_ref(),
    ]);
    let stderr = String::from_utf8_lossy(&unknown_kernel.stderr);
    assert!(
        stderr.contains("no kernel `saxpyy`") && stderr.contains("saxpy"),
        "{stderr}"
    );
}

#[test]
fn a_compiler_override_that_cannot_start_is_named_as_the_override() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (var, source) in [
        ("OFFLOAD_CLANG", "examples/saxpy/kernel.c"),
        ("RUSTC", "examples/saxpy/kernel.rs"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_offload"))
            .env(var, "/nonexistent/compiler")
            .arg("package")
            .arg(crate::common::repo_path(source))
            .arg("-o")
            .arg(dir.path().join("k.okp"))
            .output()
            .expect("run offload");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("/nonexistent/compiler") && stderr.contains(var),
            "{var}: {stderr}"
        );
    }
}

/// The halve test kernel packaged in `dir`, with `x = 0, 1, 2, ...` of `items` floats.
fn halve_job(dir: &Path, items: usize) -> (PathBuf, PathBuf, Vec<u8>) {
    let pkg = crate::common::package(
        &crate::common::repo_path("tests/kernels/halve.rs"),
        &crate::common::repo_path("tests/kernels/halve.toml"),
        dir,
        "halve",
    );
    let x = dir.join("x.bin");
    crate::common::write_le(&x, &(0..items).map(|i| i as f32).collect::<Vec<_>>());
    let bytes = std::fs::read(&x).expect("x");
    (pkg, x, bytes)
}

/// The files in `dir` whose names say they are offload's temporary files.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".offload-"))
        .collect()
}

#[test]
fn a_run_that_fails_changes_no_file_and_one_that_succeeds_replaces_them_whole() {
    let case = Case::new();
    let dir = case.dir.path();
    let items = 200_000usize;
    let (pkg, x, before) = halve_job(dir, items);
    let y = dir.join("y.bin");
    let run = |n: usize, y: &Path| {
        crate::common::Run::new(&pkg, "halve", items as u64)
            .arg("n", n)
            .buffer("inout", "x", &x)
            .buffer("out", "y", y)
            .output()
    };
    // The kernel panics on the last items, after most packets ran and rewrote x in
    // memory: the file on disk must not change, and y must not appear.
    let out = run(items - 10, &y);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("panicked"),
        "{stderr}"
    );
    assert!(
        stderr.contains("no output or --inout file was changed"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&x).expect("x"),
        before,
        "the inout file changed"
    );
    assert!(!y.exists(), "a failed run wrote its output");
    assert!(leftovers(dir).is_empty(), "{:?}", leftovers(dir));
    // An output into a folder that does not exist is found before anything runs.
    let out = run(items, &dir.join("missing").join("y.bin"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("does not exist")
            && stderr.contains("nothing was run"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&x).expect("x"),
        before,
        "the inout file changed"
    );
    // Success: both files replaced whole, with x's permissions kept.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&x, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let out = run(items, &y);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let halved: Vec<f32> = crate::common::read_le(&x);
    let copied: Vec<f32> = crate::common::read_le(&y);
    assert_eq!(halved[1234], 617.0);
    assert_eq!(copied[1234], 1234.0);
    let mode = std::fs::metadata(&x).expect("x").permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    assert!(leftovers(dir).is_empty(), "{:?}", leftovers(dir));
}

/// Runs `offload ARGS` and checks it failed with a message (never a signal or a panic)
/// containing every one of `needles`.
fn refused(args: &[&str], needles: &[&str]) {
    let out = offload(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "offload {args:?} did not fail cleanly ({}): {stderr}",
        out.status
    );
    assert!(
        !stderr.contains("panicked at"),
        "offload {args:?} panicked: {stderr}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "offload {args:?}: no {needle:?} in: {stderr}"
        );
    }
}

#[test]
fn sizes_no_machine_can_hold_are_refused_before_anything_is_allocated() {
    let case = Case::new();
    let dir = case.dir.path();
    let (pkg, x, _) = halve_job(dir, 16);
    let pkg = pkg.display().to_string();
    let y = dir.join("y.bin").display().to_string();
    let x = x.display().to_string();
    // 10^12 items of an out buffer: 4 TB.
    refused(
        &[
            "run",
            &pkg,
            "--kernel",
            "halve",
            "--items",
            "1000000000000",
            "--arg",
            "n=1",
            "--inout",
            &format!("x={x}"),
            "--out",
            &format!("y={y}"),
        ],
        &[
            "buffer `x`",
            "must be 1000000000000 elements (4000000000000 bytes)",
            "but it has 64 bytes",
        ],
    );
    // 10^12 items of a kernel whose only buffer is an output: 4 TB to allocate.
    let mandel = crate::common::package(
        &crate::common::repo_path("examples/mandelbrot/kernel.rs"),
        &crate::common::repo_path("examples/mandelbrot/manifest.toml"),
        dir,
        "mandelbrot",
    );
    refused(
        &[
            "run",
            &mandel.display().to_string(),
            "--kernel",
            "mandelbrot",
            "--items",
            "1000000000000",
            "--arg",
            "width=1000",
            "--arg",
            "max_iter=10",
            "--arg",
            "x0=0",
            "--arg",
            "y0=0",
            "--arg",
            "step=0.1",
            "--out",
            &format!("iters={y}"),
        ],
        &[
            "buffer `iters`",
            "4000000000000 bytes",
            "more than this machine can hold",
        ],
    );
    // A device as an input is read no further than the buffer's size.
    refused(
        &[
            "run",
            &pkg,
            "--kernel",
            "halve",
            "--items",
            "16",
            "--arg",
            "n=16",
            "--inout",
            "x=/dev/zero",
            "--out",
            &format!("y={y}"),
        ],
        &["buffer `x`", "/dev/zero", "holds more"],
    );
    // A sum buffer of 2^40 elements.
    let huge = crate::common::package(
        &crate::common::repo_path("tests/kernels/huge_sum.rs"),
        &crate::common::repo_path("tests/kernels/huge_sum.toml"),
        dir,
        "huge",
    );
    let h = dir.join("h.bin").display().to_string();
    refused(
        &[
            "run",
            &huge.display().to_string(),
            "--kernel",
            "count",
            "--items",
            "10",
            "--sum",
            &format!("h={h}"),
        ],
        &["buffer `h`", "8796093022208 bytes"],
    );
    // The demo's image, whose size wrapped around before.
    refused(
        &[
            "demo",
            "--width",
            "2000000000",
            "--height",
            "2000000000",
            "-o",
            &y,
        ],
        &["iteration counts", "more than this machine can hold"],
    );
    refused(
        &[
            "demo",
            "--width",
            "4000000000",
            "--height",
            "4000000000",
            "-o",
            &y,
        ],
        &["at most 2147483647 pixels"],
    );
    // A stack per worker thread of 1 PiB, isolated and in process.
    let (inout, out) = (format!("x={x}"), format!("y={y}"));
    for mode in [None, Some("--in-process")] {
        let mut args = vec![
            "run",
            &pkg,
            "--kernel",
            "halve",
            "--items",
            "16",
            "--arg",
            "n=16",
            "--inout",
            &inout,
            "--out",
            &out,
            "--stack-size",
            "1024T",
        ];
        args.extend(mode);
        refused(
            &args,
            &[
                "the stack of each worker thread (--stack-size)",
                "more than this machine can hold",
            ],
        );
    }
}

#[test]
fn counts_and_durations_that_mean_nothing_are_refused() {
    let case = Case::new();
    let pkg = saxpy_package(case.dir.path()).display().to_string();
    for (flag, value) in [("--threads", "0"), ("--threads", "5000")] {
        refused(
            &[
                "run", &pkg, "--kernel", "saxpy", "--items", "4", flag, value,
            ],
            &["--threads"],
        );
    }
    refused(
        &[
            "run",
            &pkg,
            "--kernel",
            "saxpy",
            "--items",
            "4",
            "--cluster",
            "--node-timeout",
            "nan",
        ],
        &["--node-timeout", "nan"],
    );
    refused(&["nodes", "--wait", "nan"], &["--wait", "nan"]);
    refused(&["nodes", "--wait", "inf"], &["--wait"]);
    refused(
        &[
            "node",
            "--insecure",
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "0",
        ],
        &["--cores"],
    );
}

#[test]
fn worker_threads_the_system_will_not_give_are_an_error_not_a_panic() {
    use std::os::unix::process::CommandExt;
    let case = Case::new();
    let dir = case.dir.path();
    let items = 8192usize;
    let (pkg, x, _) = halve_job(dir, items);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_offload"));
    command
        .env("OFFLOAD_CACHE_DIR", crate::common::test_cache_dir())
        .arg("run")
        .arg(&pkg)
        .args(["--kernel", "halve", "--items", &items.to_string(), "--arg"])
        .arg(format!("n={items}"))
        .arg("--inout")
        .arg(format!("x={}", x.display()))
        .arg("--out")
        .arg(format!("y={}", dir.join("y.bin").display()))
        // Threads of this process (isolated workers are processes of their own, each
        // with its own address space).
        .args(["--threads", "4000", "--in-process"]);
    // 4000 threads' stacks do not fit in 3 GiB of address space.
    // SAFETY: setrlimit is async-signal-safe; it runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 3 << 30,
                rlim_max: 3 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = command.output().expect("run offload");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && stderr.contains("cannot start 4000 worker threads"),
        "{} {stderr}",
        out.status
    );
}

#[test]
fn a_damaged_or_old_package_is_refused_before_llvm_reads_it() {
    let case = Case::new();
    let pkg = saxpy_package(case.dir.path());
    let bytes = std::fs::read(&pkg).expect("package");
    // A flipped bit deep in the body (the bitcode).
    let mut flipped = bytes.clone();
    let at = flipped.len() - 100;
    flipped[at] ^= 0x04;
    let damaged = case.file("damaged.okp", &flipped);
    refused(
        &[
            "run",
            &damaged.display().to_string(),
            "--kernel",
            "saxpy",
            "--items",
            "4",
        ],
        &["checksum does not match"],
    );
    refused(&["inspect", &damaged.display().to_string()], &["checksum"]);
    // A version 1 package (no checksum) is refused with how to make it again.
    let mut old = bytes;
    old[6] = 1;
    let old = case.file("old.okp", &old);
    refused(
        &["inspect", &old.display().to_string()],
        &["version 1", "offload package SOURCE"],
    );
}
