//! The crates stay cut along what they pull in: the protocol needs no async runtime,
//! network stack or LLVM; the package file, the kernel model and the cluster client need
//! no LLVM. Read from the workspace's `Cargo.lock`, whose dependency lists cover every
//! feature the workspace turns on (and dev-dependencies), so the check errs on the side
//! of refusing; `cargo tree -p CRATE -e normal` shows the real tree when it fires.

use std::collections::{BTreeMap, BTreeSet};

const LLVM: &[(&str, &str)] = &[
    ("inkwell", "LLVM"),
    ("llvm-sys", "LLVM"),
    ("ir-packager", "the packager (LLVM)"),
    ("node-jit", "the JIT (LLVM)"),
    ("opencl-backend", "the OpenCL lowering (LLVM)"),
];

/// Package name -> the names it depends on, from the workspace's Cargo.lock.
fn lock_graph() -> BTreeMap<String, BTreeSet<String>> {
    let path = crate::common::repo_path("Cargo.lock");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let lock: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{} is not TOML: {e}", path.display()));
    let packages = lock
        .get("package")
        .and_then(|p| p.as_array())
        .unwrap_or_else(|| panic!("{} lists no packages", path.display()));
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for package in packages {
        let name = package
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or_else(|| panic!("{}: a package without a name", path.display()));
        let deps = graph.entry(name.to_string()).or_default();
        // Entries are "name" or "name version".
        for dep in package
            .get("dependencies")
            .and_then(|d| d.as_array())
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str())
        {
            deps.insert(dep.split(' ').next().unwrap_or(dep).to_string());
        }
    }
    graph
}

/// Checks that `root` reaches every one of `expected` (the walk is real) and none of
/// `forbidden`, naming the chain that reaches a forbidden one.
fn assert_cut(root: &str, expected: &[&str], forbidden: &[(&str, &str)]) {
    let graph = lock_graph();
    assert!(graph.contains_key(root), "Cargo.lock does not list {root}");
    let mut reached: BTreeMap<String, Vec<String>> =
        BTreeMap::from([(root.to_string(), vec![root.to_string()])]);
    let mut todo = vec![root.to_string()];
    while let Some(name) = todo.pop() {
        let via = reached[&name].clone();
        for dep in graph.get(&name).into_iter().flatten() {
            if !reached.contains_key(dep) {
                let mut chain = via.clone();
                chain.push(dep.clone());
                reached.insert(dep.clone(), chain);
                todo.push(dep.clone());
            }
        }
    }
    for name in expected {
        assert!(
            reached.contains_key(*name),
            "{root} should depend on {name}"
        );
    }
    let found: Vec<String> = forbidden
        .iter()
        .filter_map(|(name, what)| {
            reached
                .get(*name)
                .map(|chain| format!("{name} ({what}), through {}", chain.join(" -> ")))
        })
        .collect();
    assert!(
        found.is_empty(),
        "{root} must not depend on these:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_protocol_crate_pulls_in_no_runtime_network_stack_or_llvm() {
    let mut forbidden = vec![
        ("tokio", "an async runtime"),
        ("quinn", "the QUIC stack"),
        ("rustls", "TLS"),
        ("cluster", "the I/O around the protocol"),
    ];
    forbidden.extend_from_slice(LLVM);
    assert_cut(
        "offload-protocol",
        &["bincode", "serde", "kernel-model"],
        &forbidden,
    );
}

#[test]
fn the_kernel_model_the_package_file_and_the_cluster_client_pull_in_no_llvm() {
    assert_cut("kernel-model", &["serde", "toml"], LLVM);
    assert_cut(
        "offload-package",
        &["kernel-model", "bincode", "blake3"],
        LLVM,
    );
    assert_cut(
        "cluster",
        &["quinn", "offload-protocol", "offload-package", "scheduler"],
        LLVM,
    );
    // The node is where LLVM comes in: the check would see it.
    let graph = lock_graph();
    assert!(graph["cluster-node"].contains("node-jit"));
}
