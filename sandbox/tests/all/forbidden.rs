//! Calls a kernel must not make end the worker, and the node can name the call.

use sandbox::WorkerEnd;

use crate::probe::{sandbox_available, Probe};

/// Sends `command` to a sandboxed worker and checks that it ended for calling `call`.
fn assert_forbidden(args: &[&str], command: &str, call: &str) {
    let mut probe = Probe::start(args);
    probe.expect_ready();
    // The worker serves before: the filter let the loop run.
    assert_eq!(probe.ask("echo before"), "echo before");
    let ended = probe.end_with(command);
    assert_eq!(
        ended.end,
        WorkerEnd::ForbiddenSyscall {
            name: Some(call_name(call)),
            number: None
        },
        "{command}: status {:?}, stderr {}",
        ended.status,
        ended.stderr
    );
    assert_eq!(
        ended.blame(),
        format!("kernel `probe` made a forbidden system call ({call})")
    );
    assert!(
        ended
            .stderr
            .contains(&format!("forbidden system call {call} (")),
        "{}",
        ended.stderr
    );
}

/// The `'static` name the tables give `call`.
fn call_name(call: &str) -> &'static str {
    let arch = sandbox::Arch::host().expect("a supported architecture");
    let number = sandbox::syscall_number(arch, call).expect("a call of this architecture");
    sandbox::syscall_name(arch, number).expect("named")
}

#[test]
fn openat_kills_the_worker_and_is_named() {
    if sandbox_available() {
        assert_forbidden(&[], "openat", "openat");
    }
}

#[test]
fn opening_a_file_through_std_is_openat() {
    if sandbox_available() {
        assert_forbidden(&[], "open-file /etc/hostname", "openat");
    }
}

#[test]
fn socket_kills_the_worker_and_is_named() {
    if sandbox_available() {
        assert_forbidden(&[], "socket", "socket");
    }
}

#[test]
fn execve_kills_the_worker_and_is_named() {
    if sandbox_available() {
        assert_forbidden(&[], "execve", "execve");
    }
}

#[test]
fn a_new_process_is_forbidden() {
    if sandbox_available() {
        // glibc's fork is clone without CLONE_THREAD.
        assert_forbidden(&[], "fork", "clone");
    }
}

#[test]
fn signalling_another_process_is_forbidden() {
    if sandbox_available() {
        assert_forbidden(&[], "kill-parent", "kill");
    }
}

#[test]
fn seccomp_alone_stops_openat() {
    if sandbox_available() {
        assert_forbidden(&["--without-landlock"], "openat", "openat");
    }
}

#[test]
fn the_opencl_profile_still_forbids_network_and_exec() {
    // Without a device: the profile's filter, not the driver, is under test here.
    if sandbox_available() {
        assert_forbidden(&["--opencl-profile"], "socket", "socket");
        assert_forbidden(&["--opencl-profile"], "execve", "execve");
        assert_forbidden(&["--opencl-profile"], "fork", "clone");
    }
}

#[test]
fn landlock_alone_denies_reading_and_creating_files() {
    if !sandbox_available() {
        return;
    }
    let folder = tempfile::tempdir().expect("a temporary folder");
    let existing = folder.path().join("existing");
    std::fs::write(&existing, b"data").expect("write a file before");
    let mut probe = Probe::start(&["--without-seccomp"]);
    assert!(
        probe.expect_ready().contains("no file can be opened"),
        "{}",
        probe.ready
    );
    let answer = probe.ask(&format!("open-file {}", existing.display()));
    assert!(
        answer.starts_with("open failed: Permission denied"),
        "{answer}"
    );
    let answer = probe.ask(&format!(
        "create-file {}",
        folder.path().join("new").display()
    ));
    assert!(
        answer.starts_with("create failed: Permission denied"),
        "{answer}"
    );
    let ended = probe.end();
    assert_eq!(ended.end, WorkerEnd::Exited(0), "{}", ended.stderr);
    assert!(!folder.path().join("new").exists());
}

#[test]
fn an_extra_call_can_be_allowed_and_an_unknown_one_is_refused() {
    if !sandbox_available() {
        return;
    }
    let mut probe = Probe::start(&["--allow", "socket"]);
    probe.expect_ready();
    let answer = probe.ask("socket");
    // Allowed by the filter; Landlock ABI 4+ still denies TCP, not socket creation.
    assert!(answer.starts_with("socket returned "), "{answer}");
    assert_eq!(probe.end().end, WorkerEnd::Exited(0));

    let probe = Probe::start(&["--allow", "frobnicate"]);
    assert!(
        probe
            .ready
            .starts_with("error unknown system call `frobnicate` on "),
        "{}",
        probe.ready
    );
    assert_eq!(probe.end().end, WorkerEnd::Exited(2));
}

#[test]
fn the_opencl_profile_reads_driver_files_and_writes_no_other_device() {
    if !sandbox_available() {
        return;
    }
    let mut probe = Probe::start(&["--opencl-profile"]);
    probe.expect_ready();
    // The driver's libraries are readable; `/etc` and devices beyond the GPU's are not.
    let library = std::fs::read_dir("/usr/lib")
        .expect("list /usr/lib")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        // A regular file, not a link: Landlock checks where a link leads.
        .find(|p| p.symlink_metadata().is_ok_and(|m| m.is_file()))
        .expect("a regular file in /usr/lib");
    assert_eq!(
        probe.ask(&format!("open-file {}", library.display())),
        "opened"
    );
    let answer = probe.ask("open-file /etc/hostname");
    assert!(
        answer.starts_with("open failed: Permission denied"),
        "{answer}"
    );
    let answer = probe.ask("create-file /dev/null");
    assert!(
        answer.starts_with("create failed: Permission denied"),
        "{answer}"
    );
    assert_eq!(probe.end().end, WorkerEnd::Exited(0));
}
