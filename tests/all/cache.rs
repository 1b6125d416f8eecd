//! The code cache: a second process does not compile again, and nothing found in the
//! cache runs unless it is this user's own, private, undamaged code for this very kernel.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{is_root, package, read_le, repo_path, saxpy_package, skip, write_le};

const ITEMS: usize = 256;

/// The saxpy job of these tests, with inputs whose result tells right code from wrong:
/// `y = 3 * i + 1`.
struct Job {
    dir: PathBuf,
    pkg: PathBuf,
}

impl Job {
    fn new(dir: &Path) -> Job {
        Job {
            dir: dir.to_path_buf(),
            pkg: saxpy_package(dir),
        }
    }

    /// `offload -v [--opt-level L] [--cache-dir CACHE] run ...` with fresh inputs, in its
    /// own files named after `tag`; returns the output and `y`.
    fn run_in(&self, command: Command, cache: Option<&Path>, tag: &str) -> (Output, Vec<f32>) {
        self.run_level(command, cache, tag, "3")
    }

    fn run_level(
        &self,
        mut command: Command,
        cache: Option<&Path>,
        tag: &str,
        opt_level: &str,
    ) -> (Output, Vec<f32>) {
        let x = self.dir.join(format!("x-{tag}.bin"));
        let y = self.dir.join(format!("y-{tag}.bin"));
        let xs: Vec<f32> = (0..ITEMS).map(|i| i as f32).collect();
        write_le(&x, &xs);
        write_le(&y, &vec![1.0f32; ITEMS]);
        command.args(["-v", "--opt-level", opt_level]);
        if let Some(cache) = cache {
            command.arg("--cache-dir").arg(cache);
        }
        command
            .arg("run")
            .arg(&self.pkg)
            .args([
                "--kernel",
                "saxpy",
                "--items",
                &ITEMS.to_string(),
                "--arg",
                "a=3",
            ])
            .arg("--in")
            .arg(format!("x={}", x.display()))
            .arg("--inout")
            .arg(format!("y={}", y.display()));
        let out = command.output().expect("start offload");
        let ys = read_le::<f32>(&y);
        (out, ys)
    }

    fn run(&self, cache: &Path, tag: &str) -> (Output, Vec<f32>) {
        self.run_in(offload_command(), Some(cache), tag)
    }
}

fn offload_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_offload"))
}

fn expected() -> Vec<f32> {
    (0..ITEMS).map(|i| 3.0 * i as f32 + 1.0).collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Fails unless the run succeeded with the right result; returns its stderr.
fn correct(out: &Output, ys: &[f32]) -> String {
    assert!(out.status.success(), "run failed: {}", stderr(out));
    assert_eq!(ys, expected().as_slice(), "wrong result: {}", stderr(out));
    stderr(out)
}

/// The single cache entry under `cache`.
fn entry(cache: &Path) -> PathBuf {
    let entries: Vec<PathBuf> = std::fs::read_dir(cache.join("jit"))
        .expect("jit cache dir exists")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "so"))
        .collect();
    assert_eq!(
        entries.len(),
        1,
        "one cached library per kernel: {entries:?}"
    );
    entries[0].clone()
}

#[test]
fn second_process_hits_the_disk_cache() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("cache");
    let job = Job::new(dir.path());
    let first = correct_run(&job, &cache, "first");
    assert!(first.contains("compiled in"), "{first}");
    entry(&cache);
    let second = correct_run(&job, &cache, "second");
    assert!(second.contains("loaded from the disk cache in"), "{second}");
}

fn correct_run(job: &Job, cache: &Path, tag: &str) -> String {
    let (out, ys) = job.run(cache, tag);
    correct(&out, &ys)
}

#[test]
fn a_different_optimization_level_is_a_different_cache_entry() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("cache");
    let job = Job::new(dir.path());
    correct_run(&job, &cache, "o3");
    let (out, ys) = job.run_level(offload_command(), Some(&cache), "o1", "1");
    let o1 = correct(&out, &ys);
    assert!(o1.contains("compiled in"), "{o1}");
}

/// Runs the job once to fill `cache`, damages its entry with `damage`, and checks that
/// the next run names the damage, compiles again and gets the right result.
fn damaged_entry_is_compiled_again(damage: impl FnOnce(&Path), what: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("cache");
    let job = Job::new(dir.path());
    correct_run(&job, &cache, "fill");
    let path = entry(&cache);
    damage(&path);
    let after = correct_run(&job, &cache, "after");
    assert!(
        after.contains("is damaged") && after.contains(what) && after.contains("compiled in"),
        "{after}"
    );
    // The damaged entry was replaced by a good one.
    let again = correct_run(&job, &cache, "again");
    assert!(again.contains("loaded from the disk cache"), "{again}");
}

#[test]
fn a_truncated_entry_is_compiled_again_not_a_bus_error() {
    damaged_entry_is_compiled_again(
        |path| {
            let bytes = std::fs::read(path).expect("read");
            std::fs::write(path, &bytes[..bytes.len() / 2]).expect("truncate");
        },
        "truncated",
    );
}

#[test]
fn garbage_in_an_entrys_code_is_compiled_again_not_a_trap() {
    damaged_entry_is_compiled_again(
        |path| {
            let mut bytes = std::fs::read(path).expect("read");
            // Overwrite the middle of the library (code, tables) with 0xcc (int3).
            let (a, b) = (bytes.len() / 4, bytes.len() / 2);
            bytes[a..b].fill(0xcc);
            std::fs::write(path, &bytes).expect("write");
        },
        "digest",
    );
}

#[test]
fn another_kernels_code_planted_under_this_key_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("cache");
    let job = Job::new(dir.path());
    // A different kernel with the same signature: y = a * x - y.
    let source = std::fs::read_to_string(repo_path("examples/saxpy/kernel.rs"))
        .expect("saxpy source")
        .replace("a * *x.add(i) + *y.add(i)", "a * *x.add(i) - *y.add(i)");
    assert!(source.contains(" - *y.add(i)"), "the saxpy source changed");
    let other_dir = dir.path().join("other");
    std::fs::create_dir(&other_dir).expect("mkdir");
    std::fs::write(other_dir.join("kernel.rs"), source).expect("write");
    let other = package(
        &other_dir.join("kernel.rs"),
        &repo_path("examples/saxpy/manifest.toml"),
        &other_dir,
        "other",
    );
    let other_job = Job {
        dir: other_dir.clone(),
        pkg: other,
    };
    let other_cache = dir.path().join("other-cache");
    let (out, _) = other_job.run(&other_cache, "other");
    assert!(out.status.success(), "{}", stderr(&out));
    // Fill the real cache, then put the other kernel's valid entry under its key.
    correct_run(&job, &cache, "fill");
    std::fs::copy(entry(&other_cache), entry(&cache)).expect("plant");
    let after = correct_run(&job, &cache, "after");
    assert!(after.contains("another kernel"), "{after}");
}

#[test]
fn an_entry_of_another_user_is_not_run() {
    if !is_root() {
        skip(
            "an_entry_of_another_user_is_not_run",
            "needs root to hand a file to another user",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("cache");
    let job = Job::new(dir.path());
    correct_run(&job, &cache, "fill");
    let path = entry(&cache);
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).expect("chown");
    let after = correct_run(&job, &cache, "after");
    assert!(after.contains("belongs to user 65534"), "{after}");
}

#[test]
fn a_cache_directory_others_can_write_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().expect("temp dir");
    let job = Job::new(dir.path());
    for (mode, who) in [(0o777, "everyone"), (0o770, "its group")] {
        let cache = dir.path().join(format!("shared-{mode:o}"));
        std::fs::create_dir(&cache).expect("mkdir");
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let (out, ys) = job.run(&cache, &format!("shared-{mode:o}"));
        let text = stderr(&out);
        assert!(!out.status.success(), "{text}");
        assert!(
            text.contains("refusing the code cache") && text.contains(who),
            "{text}"
        );
        assert_eq!(ys, vec![1.0f32; ITEMS], "the inout file was changed");
        let now = std::fs::metadata(&cache)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(now & 0o777, mode, "the directory's mode was changed");
        assert!(!cache.join("jit").exists(), "the directory was used");
    }
}

#[test]
fn a_cache_directory_of_another_user_is_refused() {
    if !is_root() {
        skip(
            "a_cache_directory_of_another_user_is_refused",
            "needs root to hand a directory to another user",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let job = Job::new(dir.path());
    let cache = dir.path().join("theirs");
    std::fs::create_dir(&cache).expect("mkdir");
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::chown(&cache, Some(65534), Some(65534)).expect("chown");
    let (out, _) = job.run(&cache, "theirs");
    let text = stderr(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("belongs to user 65534"), "{text}");
}

#[test]
fn without_home_nothing_shared_is_used_and_the_user_is_told() {
    let dir = tempfile::tempdir().expect("temp dir");
    let job = Job::new(dir.path());
    // Where the old fallback looked: $TMPDIR/offload-cache. Plant garbage there.
    let tmp = dir.path().join("tmp");
    let planted = tmp.join("offload-cache").join("jit");
    std::fs::create_dir_all(&planted).expect("mkdir");
    std::fs::write(planted.join("planted.so"), b"not code").expect("plant");
    let mut command = offload_command();
    command
        .env_remove("HOME")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("OFFLOAD_CACHE_DIR")
        .env("TMPDIR", &tmp);
    let (out, ys) = job.run_in(command, None, "nohome");
    let text = correct(&out, &ys);
    assert!(text.contains("no cache directory"), "{text}");
    let left: Vec<_> = std::fs::read_dir(&planted)
        .expect("planted dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("planted.so")]);
}

#[test]
fn concurrent_processes_sharing_a_cache_all_get_correct_code() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("cache");
    let job = Job::new(dir.path());
    let runs: Vec<_> = (0..4)
        .map(|n| {
            let tag = format!("p{n}");
            let x = dir.path().join(format!("x-{tag}.bin"));
            let y = dir.path().join(format!("y-{tag}.bin"));
            write_le(&x, &(0..ITEMS).map(|i| i as f32).collect::<Vec<_>>());
            write_le(&y, &vec![1.0f32; ITEMS]);
            let child = offload_command()
                .arg("--cache-dir")
                .arg(&cache)
                .arg("run")
                .arg(&job.pkg)
                .args([
                    "--kernel",
                    "saxpy",
                    "--items",
                    &ITEMS.to_string(),
                    "--arg",
                    "a=3",
                ])
                .arg("--in")
                .arg(format!("x={}", x.display()))
                .arg("--inout")
                .arg(format!("y={}", y.display()))
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start offload");
            (child, y)
        })
        .collect();
    for (child, y) in runs {
        let out = child.wait_with_output().expect("wait");
        correct(&out, &read_le::<f32>(&y));
    }
    let after = correct_run(&job, &cache, "after");
    assert!(after.contains("loaded from the disk cache"), "{after}");
}

/// Packages saxpy and a kernel of the same signature computing `y = a * x - y`.
fn saxpy_and_its_twin(dir: &Path) -> (offload::Package, offload::Package) {
    let manifest = offload::Manifest::parse(
        &std::fs::read_to_string(repo_path("examples/saxpy/manifest.toml")).expect("manifest"),
    )
    .expect("manifest parses");
    let source = std::fs::read_to_string(repo_path("examples/saxpy/kernel.rs")).expect("source");
    let twin = dir.join("twin.rs");
    std::fs::write(
        &twin,
        source.replace("a * *x.add(i) + *y.add(i)", "a * *x.add(i) - *y.add(i)"),
    )
    .expect("write");
    let saxpy = offload::package_source(&repo_path("examples/saxpy/kernel.rs"), &manifest)
        .expect("package saxpy");
    let twin = offload::package_source(&twin, &manifest).expect("package twin");
    (saxpy, twin)
}

#[test]
fn kernels_loaded_one_after_another_each_run_their_own_code() {
    // One kernel in memory at a time: every compile unloads the other and loads from
    // the disk cache again, so in-memory files (and their /proc/self/fd names) are reused.
    let dir = tempfile::tempdir().expect("temp dir");
    let (saxpy, twin) = saxpy_and_its_twin(dir.path());
    let engine = offload::Engine::new(
        offload::Config::default()
            .cache_dir(dir.path().join("cache"))
            .memory_cache_entries(1),
    )
    .expect("engine");
    for round in 0..6 {
        let (package, sign) = if round % 2 == 0 {
            (&saxpy, 1.0)
        } else {
            (&twin, -1.0)
        };
        let kernel = engine.compile(package, "saxpy").expect("compile");
        let x = [2.0f32; 8];
        let mut y = [1.0f32; 8];
        let args = [
            u64::from(3.0f32.to_bits()),
            x.as_ptr() as u64,
            y.as_mut_ptr() as u64,
        ];
        // SAFETY: both kernels are saxpy-shaped over 8 elements of x and y.
        unsafe { kernel.run_packet(0, 8, &args) }.expect("run");
        assert_eq!(
            y,
            [6.0 + sign; 8],
            "round {round} ran the wrong kernel's code"
        );
    }
}

/// The shared libraries `offload ARGS` loads, as the dynamic loader reports them.
fn libraries_loaded(args: &[&std::ffi::OsStr], cache: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_offload"))
        .env("OFFLOAD_CACHE_DIR", cache)
        .env("LD_DEBUG", "files")
        .args(args)
        .output()
        .expect("start offload");
    assert!(
        out.status.success(),
        "offload {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The processes of `offload ARGS` (it and those it starts) that loaded libLLVM, as the
/// dynamic loader logs them (one file per process), and the id of `offload` itself.
fn llvm_loaders(args: &[&std::ffi::OsStr], cache: &std::path::Path) -> (Vec<u32>, u32) {
    let logs = tempfile::tempdir().expect("temp dir");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_offload"))
        .env("OFFLOAD_CACHE_DIR", cache)
        .env("LD_DEBUG", "files")
        .env("LD_DEBUG_OUTPUT", logs.path().join("ld"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start offload");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for offload");
    assert!(
        out.status.success(),
        "offload {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut loaders = Vec::new();
    for entry in std::fs::read_dir(logs.path()).expect("the logs") {
        let path = entry.expect("a log").path();
        let loader = path
            .extension()
            .and_then(|e| e.to_str()?.parse::<u32>().ok());
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(loader) = loader.filter(|_| log.contains("libLLVM")) {
            loaders.push(loader);
        }
    }
    (loaders, pid)
}

#[test]
fn a_run_whose_kernel_is_in_the_code_cache_never_loads_llvm_and_a_miss_loads_it_in_the_compiler_process_only(
) {
    if !cfg!(all(target_arch = "x86_64", target_os = "linux")) {
        eprintln!("SKIPPED: libLLVM is loaded lazily on x86-64 Linux only");
        assert!(std::env::var_os("CI").is_none(), "CI runs on x86-64 Linux");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("cache");
    let pkg = crate::common::saxpy_package(dir.path());
    let (x, y) = (dir.path().join("x.bin"), dir.path().join("y.bin"));
    crate::common::write_le(&x, &vec![1.0f32; 256]);
    crate::common::write_le(&y, &vec![2.0f32; 256]);
    let run: Vec<std::ffi::OsString> = vec![
        "run".into(),
        pkg.clone().into(),
        "--kernel".into(),
        "saxpy".into(),
        "--items".into(),
        "256".into(),
        "--arg".into(),
        "a=3".into(),
        "--in".into(),
        format!("x={}", x.display()).into(),
        "--inout".into(),
        format!("y={}", y.display()).into(),
    ];
    let run: Vec<&std::ffi::OsStr> = run.iter().map(|a| a.as_os_str()).collect();
    // The first run compiles: LLVM is loaded then, and only then.
    let first = libraries_loaded(&run, &cache);
    assert!(
        first.contains("libLLVM"),
        "the compiling run never loaded LLVM:\n{first}"
    );
    // A cache hit, and the version, need none of it.
    let second = libraries_loaded(&run, &cache);
    assert!(
        !second.contains("libLLVM"),
        "a cache hit loaded LLVM:\n{second}"
    );
    let version = libraries_loaded(&["--version".as_ref()], &cache);
    assert!(
        !version.contains("libLLVM"),
        "--version loaded LLVM:\n{version}"
    );
    // A kernel not in the cache (another optimization level), with this machine's record
    // already made: LLVM is loaded by the compiler process only, never by offload.
    let mut miss: Vec<&std::ffi::OsStr> = vec!["--opt-level".as_ref(), "2".as_ref()];
    miss.extend(&run);
    let (loaders, offload_pid) = llvm_loaders(&miss, &cache);
    assert!(
        !loaders.is_empty() && !loaders.contains(&offload_pid),
        "LLVM was loaded by {loaders:?}, offload is {offload_pid}"
    );
    let y: Vec<f32> = crate::common::read_le(&y);
    assert!(y.iter().all(|&v| v == 11.0), "{:?}", &y[..4]);
}
