//! The protocol crate stays pure: nothing it depends on, directly or not, is an async
//! runtime, a network stack or LLVM. Read from the workspace's `Cargo.lock`, whose
//! dependency lists cover every feature the workspace turns on (and dev-dependencies),
//! so the check errs on the side of refusing; `cargo tree -p offload-protocol -e normal`
//! shows the real tree when it fires.

use std::collections::{BTreeMap, BTreeSet};

/// Packages the protocol crate must never pull in, with why.
const FORBIDDEN: &[(&str, &str)] = &[
    ("tokio", "an async runtime"),
    ("quinn", "the QUIC stack"),
    ("rustls", "TLS"),
    ("inkwell", "LLVM"),
    ("llvm-sys", "LLVM"),
    ("ir-packager", "the packager (LLVM)"),
    ("node-jit", "the JIT (LLVM)"),
    ("cluster", "the I/O around the protocol"),
];

#[test]
fn the_protocol_crate_pulls_in_no_runtime_network_stack_or_llvm() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let lock: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{path} is not TOML: {e}"));
    let packages = lock
        .get("package")
        .and_then(|p| p.as_array())
        .unwrap_or_else(|| panic!("{path} lists no packages"));

    // Name -> the names it depends on (entries are "name" or "name version").
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for package in packages {
        let name = package
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or_else(|| panic!("{path}: a package without a name"));
        let deps = graph.entry(name).or_default();
        for dep in package
            .get("dependencies")
            .and_then(|d| d.as_array())
            .into_iter()
            .flatten()
        {
            let dep = dep
                .as_str()
                .unwrap_or_else(|| panic!("{path}: a dependency of {name} is not a string"));
            deps.insert(dep.split(' ').next().unwrap_or(dep));
        }
    }

    // Every package reachable from ours, with the path that reaches it.
    let root = "offload-protocol";
    assert!(graph.contains_key(root), "{path} does not list {root}");
    let mut reached: BTreeMap<&str, Vec<&str>> = BTreeMap::from([(root, vec![root])]);
    let mut todo = vec![root];
    while let Some(name) = todo.pop() {
        let via = reached[name].clone();
        for &dep in graph.get(name).into_iter().flatten() {
            if !reached.contains_key(dep) {
                let mut chain = via.clone();
                chain.push(dep);
                reached.insert(dep, chain);
                todo.push(dep);
            }
        }
    }
    // The walk is real: it finds what the crate does depend on.
    for expected in ["bincode", "serde", "kernel-model"] {
        assert!(
            reached.contains_key(expected),
            "{root} should depend on {expected}"
        );
    }

    let found: Vec<String> = FORBIDDEN
        .iter()
        .filter_map(|(name, what)| {
            reached
                .get(name)
                .map(|chain| format!("{name} ({what}), through {}", chain.join(" -> ")))
        })
        .collect();
    assert!(
        found.is_empty(),
        "{root} must not depend on these:\n{}",
        found.join("\n")
    );
}
