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
