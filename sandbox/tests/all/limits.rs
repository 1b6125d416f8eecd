//! Resource limits, the process group and no_new_privs, as the node sees them from outside
//! (in `/proc`, while the worker waits for its next packet).

use sandbox::WorkerEnd;

use crate::probe::{sandbox_available, Probe};

/// The soft and hard values of the `/proc/PID/limits` line that starts with `name`.
fn limit(pid: i32, name: &str) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {limits}"));
    let mut values = line[name.len()..].split_whitespace();
    let soft = values.next().expect("a soft limit").to_string();
    let hard = values.next().expect("a hard limit").to_string();
    (soft, hard)
}

/// The open-files limit the sandbox should set for a worker whose report line is `ready`:
/// 64, or more where descriptors are open near or above it (inherited ones count too).
fn expected_open_files_limit(ready: &str) -> u64 {
    let listed = ready
        .split("descriptors open: ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("no open descriptors in {ready}"));
    let highest: u64 = listed
        .split(", ")
        .map(|fd| fd.parse::<u64>().expect("a descriptor number"))
        .max()
        .expect("some descriptor is open");
    64.max(highest + 1 + sandbox::SANDBOX_SPARE_DESCRIPTORS)
}

fn status_field(pid: i32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim()
        .to_string()
}

#[test]
fn limits_group_and_privileges_are_set_before_the_first_packet() {
    if !sandbox_available() {
        return;
    }
    let gib = 1u64 << 30;
    let mut probe = Probe::start(&["--address-space", &gib.to_string(), "--processes", "4096"]);
    let ready = probe.expect_ready().to_string();
    assert!(ready.contains("address space 1024 MiB"), "{ready}");
    let open_files = expected_open_files_limit(&ready).to_string();
    assert!(
        ready.contains(&format!("descriptors below {open_files}")),
        "{ready}"
    );
    let pid = probe.pid();
    let bytes = gib.to_string();
    assert_eq!(limit(pid, "Max address space"), (bytes.clone(), bytes));
    assert_eq!(
        limit(pid, "Max open files"),
        (open_files.clone(), open_files)
    );
    assert_eq!(limit(pid, "Max core file size"), ("0".into(), "0".into()));
    assert_eq!(limit(pid, "Max processes"), ("4096".into(), "4096".into()));
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    // Mode 2: filters; two of them (the allow-list and clone3's ENOSYS).
    assert_eq!(status_field(pid, "Seccomp:"), "2");
    assert_eq!(status_field(pid, "Seccomp_filters:"), "2");
    // SAFETY: getpgid of a child of ours.
    assert_eq!(
        unsafe { libc::getpgid(pid) },
        pid,
        "the worker leads its own process group"
    );
    // The limit holds inside: a mapping beyond it fails, one within it works.
    assert!(probe.ask("alloc 2048").starts_with("alloc failed: "));
    assert_eq!(probe.ask("alloc 64"), "allocated");
    assert_eq!(probe.end().end, WorkerEnd::Exited(0));
}

#[test]
fn the_default_limits_leave_the_address_space_alone() {
    if !sandbox_available() {
        return;
    }
    let probe = Probe::start(&[]);
    let ready = probe.expect_ready().to_string();
    assert!(ready.contains("address space unlimited"), "{ready}");
    let (_, hard_before) = limit(std::process::id() as i32, "Max address space");
    assert_eq!(limit(probe.pid(), "Max address space").1, hard_before);
    assert_eq!(
        limit(probe.pid(), "Max core file size"),
        ("0".into(), "0".into())
    );
    assert_eq!(probe.end().end, WorkerEnd::Exited(0));
}

#[test]
fn a_worker_holding_more_descriptors_than_the_limit_still_gets_its_sandbox() {
    if !sandbox_available() {
        return;
    }
    // 300 descriptors, as a worker holds 300 shared buffers: Landlock's ruleset needs a
    // new one after the limit is set, so the limit goes above them, not to 64.
    let mut probe = Probe::start(&["--hold-descriptors", "300"]);
    let ready = probe.expect_ready().to_string();
    let expected = expected_open_files_limit(&ready);
    assert!(expected > 300, "{ready}");
    let expected = expected.to_string();
    assert_eq!(
        limit(probe.pid(), "Max open files"),
        (expected.clone(), expected)
    );
    assert_eq!(probe.ask("echo held"), "echo held");
    assert_eq!(probe.end().end, WorkerEnd::Exited(0));
}
