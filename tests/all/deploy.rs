//! What an operator installs: the `cargo install` result and the Debian package that
//! `scripts/package.sh` builds (the release binary, the systemd unit, the conffile, the
//! maintainer scripts), the configuration files shipped with them, and the Kubernetes
//! manifests, validated against the Kubernetes schemas. Nothing here changes the
//! machine: the package is inspected, unpacked into a temporary folder and checked by
//! dpkg without installing it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{offload, offload_ok, repo_path, skip};

fn text(output: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `program args...`, failing the test unless it succeeds.
fn run_ok(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        text(&output)
    );
    output
}

/// The package `scripts/package.sh` built, if it did.
fn built_package() -> Option<PathBuf> {
    let dir = repo_path("target/debian");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
}

#[test]
fn the_debian_package_holds_the_binary_the_service_and_the_configuration() {
    let test = "the_debian_package_holds_the_binary_the_service_and_the_configuration";
    let Some(deb) = built_package() else {
        skip(
            test,
            "no target/debian/*.deb: scripts/package.sh builds it (scripts/test.sh runs it)",
        );
        return;
    };
    let deb = deb.to_string_lossy().into_owned();
    let listing =
        String::from_utf8_lossy(&run_ok("dpkg-deb", &["--contents", &deb]).stdout).into_owned();
    // Paths as tar lists them, with or without a leading `./`.
    let entry = |path: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(&format!(" {path}")) || l.ends_with(&format!(" ./{path}")))
            .map(str::to_string)
    };
    for path in [
        "usr/bin/offload",
        "lib/systemd/system/offload-node.service",
        "etc/offload/node.toml",
        "usr/share/doc/offload/deploy.md",
    ] {
        assert!(
            entry(path).is_some(),
            "no {path} in the package:\n{listing}"
        );
    }
    let binary_entry = entry("usr/bin/offload").unwrap_or_default();
    assert!(binary_entry.starts_with("-rwxr-xr-x 0/0"), "{binary_entry}");
    let field = |name: &str| {
        String::from_utf8_lossy(&run_ok("dpkg-deb", &["--field", &deb, name]).stdout)
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), "offload");
    assert!(field("Version").starts_with(env!("CARGO_PKG_VERSION")));
    let depends = field("Depends");
    for needed in [
        "libllvm22",
        "ocl-icd-libopencl1",
        "binutils",
        "gcc",
        "adduser",
    ] {
        assert!(
            depends.contains(needed),
            "Depends lacks {needed}: {depends}"
        );
    }
    let unpacked = tempfile::tempdir().expect("temp dir");
    let root = unpacked.path();
    let control = root.join("DEBIAN");
    let (root_s, control_s) = (root.to_string_lossy(), control.to_string_lossy());
    run_ok("dpkg-deb", &["--extract", &deb, &root_s]);
    run_ok("dpkg-deb", &["--control", &deb, &control_s]);
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    assert_eq!(
        read(&control.join("conffiles")).trim(),
        "/etc/offload/node.toml"
    );
    let postinst = read(&control.join("postinst"));
    assert!(
        postinst.contains("adduser --system") && postinst.contains("/etc/offload/credentials"),
        "{postinst}"
    );
    assert!(read(&control.join("prerm")).contains("systemctl stop offload-node"));
    // The unit: its own user, restarts, hardening, and a drain on stop; systemd finds
    // nothing to object to (pointed at the unpacked binary: it is not installed).
    let unit = read(&root.join("lib/systemd/system/offload-node.service"));
    for line in [
        "User=offload",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillMode=mixed",
        "ExecStart=/usr/bin/offload --cache-dir /var/cache/offload node --config /etc/offload/node.toml",
    ] {
        assert!(unit.lines().any(|l| l == line), "no `{line}` in the unit:\n{unit}");
    }
    let binary = root.join("usr/bin/offload");
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let local = root.join("offload-node.service");
        std::fs::write(
            &local,
            unit.replace("/usr/bin/offload", &binary.to_string_lossy()),
        )
        .expect("unit copy");
        let verified = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&local)
            .output()
            .expect("systemd-analyze");
        assert!(
            verified.status.success() && verified.stderr.is_empty(),
            "systemd-analyze verify: {}",
            text(&verified)
        );
    } else {
        skip(
            test,
            "systemd-analyze is missing: the unit file was not verified",
        );
    }
    // dpkg would install it here (dependencies, conflicts, scripts): checked, not done.
    run_ok("dpkg", &["--dry-run", "--install", &deb]);
    // The packaged binary: this version, every command, and no test-only faults.
    let version = run_ok(&binary.to_string_lossy(), &["--version"]);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("offload {}", env!("CARGO_PKG_VERSION"))
    );
    run_ok(&binary.to_string_lossy(), &["status", "--help"]);
    let faulty = Command::new(&binary)
        .args([
            "node",
            "--fault",
            "owner-busy",
            "--insecure",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run the packaged binary");
    assert!(
        !faulty.status.success() && text(&faulty).contains("no fault injection"),
        "{}",
        text(&faulty)
    );
    // The packaged configuration is one the node accepts.
    let check = offload_ok([
        "node",
        "--config",
        &root.join("etc/offload/node.toml").to_string_lossy(),
        "--check",
    ]);
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("credentials = /etc/offload/credentials"),
        "{}",
        text(&check)
    );
}

#[test]
fn cargo_install_gives_a_working_offload_command() {
    let installed = repo_path("target/install/bin/offload");
    if !installed.exists() {
        skip(
            "cargo_install_gives_a_working_offload_command",
            "no target/install/bin/offload: scripts/package.sh runs `cargo install --path . --locked` (scripts/test.sh runs it)",
        );
        return;
    }
    let program = installed.to_string_lossy().into_owned();
    let version = run_ok(&program, &["--version"]);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("offload {}", env!("CARGO_PKG_VERSION"))
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = dir.path().join("cluster");
    run_ok(
        &program,
        &["cluster", "init", "--dir", &cluster.to_string_lossy()],
    );
    let listed = run_ok(
        &program,
        &["cluster", "list", "--dir", &cluster.to_string_lossy()],
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains("admin"));
}

/// The manifests of `deploy/kubernetes/`.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_path("deploy/kubernetes"))
        .expect("deploy/kubernetes")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// `kubernetes-validate --strict` against the Kubernetes 1.30 schemas.
fn kubernetes_validate(files: &[PathBuf]) -> Option<Output> {
    let mut command = Command::new("kubernetes-validate");
    command
        .args(["--strict", "--kubernetes-version", "1.30.0"])
        .args(files);
    command.output().ok()
}

#[test]
fn the_kubernetes_manifests_validate_against_the_kubernetes_schemas() {
    let files = manifests();
    let names: Vec<String> = files
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for expected in [
        "configmap.yaml",
        "daemonset-cpu.yaml",
        "daemonset-gpu.yaml",
        "namespace.yaml",
        "service.yaml",
    ] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }
    let Some(validated) = kubernetes_validate(&files) else {
        skip(
            "the_kubernetes_manifests_validate_against_the_kubernetes_schemas",
            "kubernetes-validate is not installed (scripts/setup.sh installs it from PyPI)",
        );
        return;
    };
    assert!(validated.status.success(), "{}", text(&validated));
    let said = String::from_utf8_lossy(&validated.stdout);
    assert_eq!(said.matches(" passed ").count(), files.len(), "{said}");
    // The same check refuses a misspelt field: it can fail.
    let dir = tempfile::tempdir().expect("temp dir");
    let broken = dir.path().join("daemonset.yaml");
    let daemonset = std::fs::read_to_string(repo_path("deploy/kubernetes/daemonset-cpu.yaml"))
        .expect("daemonset");
    std::fs::write(
        &broken,
        daemonset.replace(
            "terminationGracePeriodSeconds",
            "terminationGracePeriodSecond",
        ),
    )
    .expect("broken copy");
    let refused = kubernetes_validate(&[broken]).expect("kubernetes-validate ran before");
    assert!(!refused.status.success(), "{}", text(&refused));
}

/// The `args:` list of a container in a manifest, as written (one `- ARG` per line).
fn container_args(manifest: &str) -> Vec<String> {
    let mut lines = manifest.lines().skip_while(|l| l.trim() != "args:").skip(1);
    let mut args = Vec::new();
    for line in lines.by_ref() {
        match line.trim().strip_prefix("- ") {
            Some(arg) => args.push(arg.to_string()),
            None => break,
        }
    }
    args
}

#[test]
fn the_kubernetes_nodes_configuration_and_arguments_are_ones_the_node_accepts() {
    let configmap =
        std::fs::read_to_string(repo_path("deploy/kubernetes/configmap.yaml")).expect("configmap");
    // The `node.toml: |` block, unindented.
    let toml: String = configmap
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("node.toml: |"))
        .skip(1)
        .map(|l| l.strip_prefix("    ").unwrap_or(l.trim()))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(toml.contains("[metrics]"), "{toml}");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("node.toml");
    std::fs::write(&config, &toml).expect("node.toml");
    for daemonset in ["daemonset-cpu.yaml", "daemonset-gpu.yaml"] {
        let manifest =
            std::fs::read_to_string(repo_path(&format!("deploy/kubernetes/{daemonset}")))
                .expect("daemonset");
        let args: Vec<String> = container_args(&manifest)
            .into_iter()
            .map(|a| match a.as_str() {
                "$(NODE_NAME)" => "worker-1".to_string(),
                "$(CPU_LIMIT)" => "4".to_string(),
                "/etc/offload/node.toml" => config.to_string_lossy().into_owned(),
                _ => a,
            })
            .collect();
        assert!(args.contains(&"node".to_string()), "{daemonset}: {args:?}");
        let mut checked = args.clone();
        checked.push("--check".into());
        let output = offload(&checked);
        assert!(output.status.success(), "{daemonset}: {}", text(&output));
        let said = String::from_utf8_lossy(&output.stdout);
        for line in [
            "name = worker-1",
            "cores = 4",
            "discovery.mdns = false",
            "metrics.listen = 0.0.0.0:9464",
            "revocation.list = /etc/offload/revocations/crl.pem",
        ] {
            assert!(said.contains(line), "{daemonset}: no `{line}` in:\n{said}");
        }
        assert_eq!(
            said.contains("opencl = true"),
            daemonset == "daemonset-gpu.yaml",
            "{said}"
        );
    }
}
