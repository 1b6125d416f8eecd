//! `offload simulate` and `offload tune`: scenario output and errors, tuning profiles
//! written, shown, used by `offload run`, and missed when the package, CPU or LLVM changes.

use std::path::Path;

use offload::tune::{KernelProfile, Profile, Settings};
use offload::{HostTarget, PackageHash};

use crate::common::{offload, offload_ok, package, read_le, repo_path, write_le};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn simulate_prints_ratio_and_baselines() {
    let out = offload_ok(["simulate", "uniform-4"]);
    let text = stdout(&out);
    assert!(text.contains("scenario uniform-4"), "{text}");
    assert!(text.contains("devices: 4"), "{text}");
    assert!(text.contains("lower bound:"), "{text}");
    assert!(text.contains("ratio "), "{text}");
    assert!(text.contains("equal split:"), "{text}");
    assert!(text.contains("fixed chunks"), "{text}");
    assert!(
        !text.contains("INCOMPLETE") && !text.contains("WRONG"),
        "{text}"
    );
}

#[test]
fn simulate_unknown_scenario_lists_known_ones() {
    let out = offload(["simulate", "no-such-cluster"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("unknown scenario `no-such-cluster`"), "{err}");
    assert!(
        err.contains("hetero-16") && err.contains("uniform-4"),
        "{err}"
    );
    let list = stdout(&offload_ok(["simulate", "--list"]));
    assert!(list.lines().any(|l| l == "hetero-1000"), "{list}");
}

fn profiles(cache: &Path) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(cache.join("tune")) {
        Ok(dir) => dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn tune_writes_profile_that_show_prints_and_run_uses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let cache_arg = cache.to_str().expect("utf-8 path");
    let pkg = package(
        &repo_path("examples/saxpy/kernel.rs"),
        &repo_path("examples/saxpy/manifest.toml"),
        dir.path(),
        "saxpy",
    );

    // Before tuning: no profile, and `run -v` says nothing of one.
    let items = 4096u64;
    let x: Vec<f32> = (0..items).map(|i| i as f32).collect();
    let y: Vec<f32> = (0..items).map(|i| 1.0 + i as f32).collect();
    let (xf, yf) = (dir.path().join("x.bin"), dir.path().join("y.bin"));
    write_le(&xf, &x);
    write_le(&yf, &y);
    let run = |pkg: &Path| {
        offload_ok([
            "--cache-dir".to_string(),
            cache_arg.to_string(),
            "-v".into(),
            "run".into(),
            pkg.display().to_string(),
            "--kernel".into(),
            "saxpy".into(),
            "--items".into(),
            items.to_string(),
            "--arg".into(),
            "a=2".into(),
            "--in".into(),
            format!("x={}", xf.display()),
            "--inout".into(),
            format!("y={}", yf.display()),
        ])
    };
    let untuned = run(&pkg);
    assert!(
        !stderr(&untuned).contains("tuning profile"),
        "{}",
        stderr(&untuned)
    );
    assert!(profiles(&cache).is_empty());

    let tuned = offload_ok([
        "--cache-dir",
        cache_arg,
        "tune",
        pkg.to_str().expect("utf-8 path"),
        "--kernel",
        "saxpy",
        "--items",
        "4096",
        "--quick",
    ]);
    assert!(stdout(&tuned).contains("saxpy:"), "{}", stdout(&tuned));
    let files = profiles(&cache);
    assert_eq!(files.len(), 1, "one profile for one package: {files:?}");
    let text = std::fs::read_to_string(&files[0]).expect("profile");
    assert!(text.contains("items_per_s"), "{text}");

    let show = stdout(&offload_ok(["--cache-dir", cache_arg, "tune", "--show"]));
    assert!(show.contains("saxpy:"), "{show}");
    assert!(show.contains("items/s"), "{show}");
    assert!(!show.contains("not used here"), "{show}");

    // The second run finds the profile, and still computes the right answer.
    let used = run(&pkg);
    assert!(
        stderr(&used).contains("tuning profile: threads"),
        "{}",
        stderr(&used)
    );
    let result: Vec<f32> = read_le(&yf);
    for (i, r) in result.iter().enumerate() {
        // Two runs of y = 2x + y from y = 1 + i.
        let want = 1.0 + i as f32 + 4.0 * i as f32;
        assert_eq!(*r, want, "item {i}");
    }

    // A different source is a different package: its profile is missed.
    let variant = dir.path().join("kernel.rs");
    let source = std::fs::read_to_string(repo_path("examples/saxpy/kernel.rs")).expect("source");
    std::fs::write(&variant, source.replace("+ *y.add(i) }", "- *y.add(i) }")).expect("variant");
    let other = package(
        &variant,
        &repo_path("examples/saxpy/manifest.toml"),
        dir.path(),
        "variant",
    );
    let missed = run(&other);
    assert!(
        !stderr(&missed).contains("tuning profile"),
        "{}",
        stderr(&missed)
    );
}

#[test]
fn profile_key_covers_cpu_llvm_and_package() {
    let host = HostTarget::detect();
    let package = PackageHash([7; 32]);
    let key = Profile::key_for(&host, &package);
    let mut other_cpu = host.clone();
    other_cpu.cpu.push_str("-other");
    let mut other_features = host.clone();
    other_features.features.push_str(",+madeup");
    let mut other_llvm = host.clone();
    other_llvm.llvm_version.major += 1;
    for changed in [&other_cpu, &other_features, &other_llvm] {
        assert_ne!(Profile::key_for(changed, &package), key, "{changed:?}");
    }
    assert_ne!(Profile::key_for(&host, &PackageHash([8; 32])), key);

    // Stored for this host, found for it, missed for the others.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut profile = Profile::new(&host, &package);
    profile.insert(KernelProfile {
        kernel: "k".into(),
        settings: Settings::default_for(2),
        items_per_s: 1e6,
        default_items_per_s: 1e6,
        items: 10,
        candidates: 1,
        tuned_at: 0,
    });
    profile.save(dir.path()).expect("save");
    let found = Profile::load(dir.path(), &host, &package)
        .expect("load")
        .expect("found");
    assert_eq!(found, profile);
    assert_eq!(found.rate_for(&package, "k"), Some(1e6));
    assert_eq!(found.rate_for(&PackageHash([8; 32]), "k"), None);
    assert_eq!(found.rate_for(&package, "other"), None);
    for changed in [&other_cpu, &other_features, &other_llvm] {
        assert!(Profile::load(dir.path(), changed, &package)
            .expect("load")
            .is_none());
    }
}

#[test]
fn a_kernel_that_hangs_stops_the_tuning_at_the_packet_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let traps = package(
        &repo_path("tests/kernels/traps.c"),
        &repo_path("tests/kernels/traps.toml"),
        dir.path(),
        "traps",
    );
    let cache = dir.path().join("cache");
    // `spin` never ends on an item when `at` + 1 is odd.
    let out = crate::common::run_bounded(
        {
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_offload"));
            command
                .arg("--cache-dir")
                .arg(&cache)
                .arg("tune")
                .arg(&traps)
                .args(["--kernel", "spin", "--items", "100", "--arg", "at=4"])
                .args(["--quick", "--packet-timeout", "0.5"]);
            command
        },
        std::time::Duration::from_secs(120),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("kernel `spin` failed while tuning")
            && err.contains("ran longer than the packet timeout (0.5 s)"),
        "{err}"
    );
    assert!(
        !cache.join("tune").exists()
            || std::fs::read_dir(cache.join("tune"))
                .expect("tune dir")
                .next()
                .is_none()
    );
}
