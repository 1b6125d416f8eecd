//! The kernel worker sandbox on nodes, through the real CLI: a worker that makes a
//! forbidden system call fails its job with the call's name and is replaced; kernels
//! loaded before the sandbox keep running under it; a node refuses to serve where the
//! sandbox is missing unless told `--unsandboxed`, and says so in its status.
//!
//! The forbidden calls come from the test-only `forbidden-call=CALL` fault (the worker
//! makes the raw call just before it runs a packet's kernel): a real C kernel cannot
//! reach a system call here, because the packager refuses every external function but
//! its allow-list (no `syscall`, `open`, `socket`) and any inline assembly, so the only
//! way left to a kernel is corrupting the worker's memory, which no test can make
//! deterministic.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cluster::{cluster_init, run_args, text, Cluster, Node, OsArg, BIN};
use crate::common::{die_with_test, offload, offload_ok, package, read_le, repo_path, run_bounded};

/// Whether this kernel can sandbox workers; says so loudly (and fails under `CI=true`)
/// when it cannot.
pub(crate) fn sandbox_here(test: &str) -> bool {
    let support = sandbox::support();
    if !support.is_complete() {
        crate::common::skip(
            test,
            &format!("this kernel cannot sandbox workers ({support})"),
        );
        return false;
    }
    true
}

fn pair_package(dir: &Path) -> PathBuf {
    package(
        &repo_path("tests/cluster-kernels/pair.c"),
        &repo_path("tests/cluster-kernels/pair.toml"),
        dir,
        "pair",
    )
}

/// `offload run PKG --kernel KERNEL` on the cluster's nodes, bounded.
fn run_on(
    cluster: &Cluster,
    pkg: &Path,
    kernel: &str,
    scalars: &[(&str, String)],
    out: &Path,
) -> std::process::Output {
    let mut command = Command::new(BIN);
    command
        .args(run_args(pkg, kernel, 1000, scalars, ("out", out)))
        .args(cluster.cluster_flags(&cluster.credentials()));
    run_bounded(command, Duration::from_secs(120))
}

/// `offload status --json` of the cluster's nodes.
fn status_json(cluster: &Cluster) -> serde_json::Value {
    let mut args: Vec<OsArg> = vec![
        "status".into(),
        "--json".into(),
        "--no-discovery".into(),
        "--credentials".into(),
        cluster.credentials().into(),
    ];
    for node in &cluster.nodes {
        args.extend(["--peer".into(), OsArg::from(&node.addr)]);
    }
    let output = offload_ok(&args);
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{}", text(&output)))
}

/// `offload status` (the table) of the cluster's nodes.
fn status_table(cluster: &Cluster) -> String {
    let mut args: Vec<OsArg> = vec![
        "status".into(),
        "--no-discovery".into(),
        "--credentials".into(),
        cluster.credentials().into(),
    ];
    for node in &cluster.nodes {
        args.extend(["--peer".into(), OsArg::from(&node.addr)]);
    }
    String::from_utf8_lossy(&offload_ok(&args).stdout).into_owned()
}

/// How many workers of the node applied their sandbox (their report lines in its log).
fn sandboxed_workers(node: &Node) -> usize {
    node.log().matches("sandbox (cpu profile)").count()
}

#[test]
fn a_forbidden_system_call_fails_the_job_with_its_name_and_the_worker_is_replaced() {
    let test = "a_forbidden_system_call_fails_the_job_with_its_name_and_the_worker_is_replaced";
    if !sandbox_here(test) {
        return;
    }
    for call in ["openat", "socket", "execve"] {
        let cluster = Cluster::with_faults(1, |_, _| vec![format!("forbidden-call={call}")]);
        let pkg = pair_package(cluster.dir.path());
        let out = cluster.path("out.bin");
        let expected = format!("kernel `triple` made a forbidden system call ({call})");
        // Twice: the second job needs a new worker (every worker of the first died of
        // the call or was ended with the job), which sandboxes itself and is stopped the
        // same way; the node serves throughout. (How many workers a job goes through
        // depends on how often the client tries the packets again: at least one.)
        let mut sandboxed_before = 0;
        for attempt in 1..=2 {
            let output = run_on(&cluster, &pkg, "triple", &[], &out);
            assert!(!output.status.success(), "{call}: {}", text(&output));
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                stderr.contains(&expected),
                "{call}, job {attempt}: the error does not name the call:\n{stderr}"
            );
            let sandboxed = sandboxed_workers(&cluster.nodes[0]);
            assert!(
                sandboxed > sandboxed_before,
                "{call}, job {attempt}: no fresh worker sandboxed itself:\n{}",
                cluster.nodes[0].log()
            );
            sandboxed_before = sandboxed;
        }
        assert!(!out.exists(), "{call}: a failed job wrote its output file");
        let status = status_json(&cluster);
        assert_eq!(status["nodes"][0]["state"], "serving", "{status}");
        assert_eq!(status["nodes"][0]["sandboxed"], true, "{status}");
    }
}

#[test]
fn a_kernel_loaded_before_the_sandbox_runs_under_it_and_another_package_gets_a_fresh_worker() {
    let test =
        "a_kernel_loaded_before_the_sandbox_runs_under_it_and_another_package_gets_a_fresh_worker";
    if !sandbox_here(test) {
        return;
    }
    let cluster = Cluster::new(1);
    let node = &cluster.nodes[0];
    let pkg = pair_package(cluster.dir.path());
    let crash = package(
        &repo_path("tests/cluster-kernels/crash.c"),
        &repo_path("tests/cluster-kernels/crash.toml"),
        cluster.dir.path(),
        "crash",
    );
    let out = cluster.path("out.bin");
    // (package, kernel, its scalar, item i's output, sandboxed workers after the job).
    // The package's second kernel was compiled before the sandbox was applied: the same
    // sandboxed worker runs it (no second report). A kernel of another package cannot be
    // loaded into a sandboxed worker: the node starts a fresh one, which sandboxes itself
    // after loading it; and so again when the first package comes back.
    type Job<'a> = (
        &'a Path,
        &'a str,
        Option<(&'a str, u32)>,
        fn(u32) -> u32,
        usize,
    );
    let jobs: [Job<'_>; 4] = [
        (&pkg, "triple", None, |i| 3 * i, 1),
        (&pkg, "offset", Some(("base", 7)), |i| 7 + i, 1),
        (&crash, "crash", Some(("from", 100_000)), |i| i, 2),
        (&pkg, "offset", Some(("base", 9)), |i| 9 + i, 3),
    ];
    for (package, kernel, scalar, expected, workers) in jobs {
        let scalars: Vec<(&str, String)> = scalar
            .map(|(name, value)| (name, value.to_string()))
            .into_iter()
            .collect();
        let output = run_on(&cluster, package, kernel, &scalars, &out);
        assert!(output.status.success(), "{kernel}: {}", text(&output));
        assert_eq!(
            read_le::<u32>(&out),
            (0..1000).map(expected).collect::<Vec<u32>>(),
            "{kernel}"
        );
        assert_eq!(sandboxed_workers(node), workers, "{kernel}: {}", node.log());
    }
    let table = status_table(&cluster);
    assert!(
        table.contains("serving") && !table.contains("unsandboxed"),
        "{table}"
    );
}

#[test]
fn an_unsandboxed_node_lets_the_same_call_run_and_says_it_is_unsandboxed() {
    // The control for the forbidden-call test: without the sandbox the very same call
    // runs (harmlessly: it opens a file read-only and closes it) and the job succeeds.
    let cluster = Cluster::with_flags(1, |_, _| {
        ["--fault", "forbidden-call=openat", "--unsandboxed"]
            .map(String::from)
            .to_vec()
    });
    let pkg = pair_package(cluster.dir.path());
    let out = cluster.path("out.bin");
    let output = run_on(&cluster, &pkg, "triple", &[], &out);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        read_le::<u32>(&out),
        (0..1000).map(|i| 3 * i).collect::<Vec<u32>>()
    );
    assert_eq!(sandboxed_workers(&cluster.nodes[0]), 0);
    assert!(
        cluster.nodes[0].log().contains("UNSANDBOXED"),
        "{}",
        cluster.nodes[0].log()
    );
    let status = status_json(&cluster);
    assert_eq!(status["nodes"][0]["sandboxed"], false, "{status}");
    let table = status_table(&cluster);
    assert!(table.contains("serving, unsandboxed"), "{table}");
}

#[test]
fn a_node_without_sandbox_support_refuses_to_serve_unless_told_unsandboxed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let creds = dir.path().join("cluster");
    cluster_init(&creds);
    let node_args = |extra: &[&str]| {
        let mut args: Vec<OsArg> = vec![
            "node".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--no-mdns".into(),
            "--cores".into(),
            "1".into(),
            "--credentials".into(),
            creds.clone().into(),
            "--fault".into(),
            "no-sandbox-support".into(),
        ];
        args.extend(extra.iter().map(OsArg::from));
        args
    };
    let mut refused = Command::new(BIN);
    die_with_test(&mut refused)
        .args(node_args(&[]))
        .stdin(Stdio::null());
    let output = run_bounded(refused, Duration::from_secs(60));
    assert!(!output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stdout.contains("listening on"), "it served:\n{stdout}");
    for needle in [
        "cannot sandbox kernel workers on this machine",
        "seccomp and Landlock are reported missing",
        "--unsandboxed",
    ] {
        assert!(stderr.contains(needle), "no `{needle}` in:\n{stderr}");
    }
    // With the flag it serves, and its status says it is unsandboxed.
    let node = Node::spawn_raw(
        dir.path(),
        0,
        &node_args(&["--unsandboxed"]),
        "",
        Some("info"),
    );
    let mut args: Vec<OsArg> = vec![
        "status".into(),
        "--json".into(),
        "--no-discovery".into(),
        "--credentials".into(),
        creds.clone().into(),
        "--peer".into(),
        OsArg::from(&node.addr),
    ];
    let output = offload_ok(&args);
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(status["nodes"][0]["sandboxed"], false, "{status}");
    assert_eq!(status["nodes"][0]["state"], "serving", "{status}");
    args.retain(|a| a != "--json");
    let table = offload(&args);
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("serving, unsandboxed"),
        "{}",
        text(&table)
    );
}
