//! A kernel whose optimized code keeps a panic path is run with its unwind caught (the
//! panic comes back as `KernelPanic`, the process unharmed); one whose code has none left
//! is marked so, and run without catching. The mark travels with the cached library.

use ir_packager::Manifest;
use node_jit::{Config, Engine};

/// `out[i] = i * 2`, panicking (code 7) when `fails` (computed by `test`) holds.
fn kernel(name: &str, test: &str) -> String {
    format!(
        r#"
define void @{name}(i64 %i, i64 %n, ptr %out) {{
  {test}
  br i1 %fails, label %fail, label %store
fail:
  call void @offload_panic(i32 7)
  unreachable
store:
  %v = mul i64 %i, 2
  %dst = getelementptr inbounds i64, ptr %out, i64 %i
  store i64 %v, ptr %dst, align 8
  ret void
}}
"#
    )
}

/// `checked` panics for items at or past `n`; `folded` tests a condition the optimizer
/// proves false (`i + 1` cannot wrap to 0 under `nuw`).
fn kernels() -> String {
    [
        "declare void @offload_panic(i32)".to_string(),
        kernel("checked", "%fails = icmp uge i64 %i, %n"),
        kernel(
            "folded",
            "%wrapped = add nuw i64 %i, 1\n  %fails = icmp eq i64 %wrapped, 0",
        ),
    ]
    .join("\n")
}

#[test]
fn a_kernel_without_a_panic_path_left_is_run_without_catching_and_one_with_is_caught() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let source = dir.path().join("kernels.ll");
    std::fs::write(&source, kernels()).expect("write the kernels");
    let manifest = Manifest::parse(
        "[[kernel]]\nname = \"checked\"\nkind = \"item\"\nargs = [\"n: u64\", \"out: out u64[1]\"]\n\
         [[kernel]]\nname = \"folded\"\nkind = \"item\"\nargs = [\"n: u64\", \"out: out u64[1]\"]\n",
    )
    .expect("manifest");
    let package = ir_packager::package_source(&source, &manifest).expect("package");
    let cache = dir.path().join("cache");
    let engine = Engine::new(Config::default().cache_dir(&cache)).expect("engine");
    let checked = engine
        .compile(&package, "checked")
        .expect("compile checked");
    let folded = engine.compile(&package, "folded").expect("compile folded");
    assert!(checked.can_panic(), "checked keeps its panic path");
    assert!(!folded.can_panic(), "folded's panic path is optimized away");

    let mut out = vec![0u64; 8];
    let args = [4u64, out.as_mut_ptr() as u64];
    // SAFETY: one u64 out per item, 8 items.
    let panic = unsafe { checked.run_packet(0, 8, &args) }.expect_err("items 4.. panic");
    assert_eq!(panic.code, 7);
    assert_eq!(&out[..4], &[0, 2, 4, 6]);
    // SAFETY: as above.
    unsafe { folded.run_packet(0, 8, &args) }.expect("no panic");
    assert_eq!(out, (0..8).map(|i| i * 2).collect::<Vec<u64>>());

    // A later process loads the same marks from the disk cache.
    drop((checked, folded));
    let again = Engine::new(Config::default().cache_dir(&cache)).expect("engine");
    let report = again
        .compile_tuned(&package, "folded", &node_jit::Tuning::default())
        .expect("load folded");
    assert_eq!(report.origin, node_jit::CodeOrigin::DiskCache);
    assert!(!report.kernel.can_panic());
    let report = again
        .compile_tuned(&package, "checked", &node_jit::Tuning::default())
        .expect("load checked");
    assert!(report.kernel.can_panic());
}
