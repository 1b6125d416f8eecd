//! A worker does not outlive its node.

use std::process::Command;

use sandbox::WorkerEnd;

use crate::probe::{sandbox_available, Probe};

#[test]
fn a_worker_dies_with_its_parent() {
    if !sandbox_available() {
        return;
    }
    // `orphan` starts a parent that starts a sandboxed worker and exits; it adopts the
    // orphan (child subreaper) and waits for its end.
    let output = Command::new(env!("CARGO_BIN_EXE_sandbox-probe"))
        .arg("orphan")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run sandbox-probe orphan");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout, "middle exited normally\nworker SIGKILL (killed)\n");
}

#[test]
fn a_worker_whose_parent_is_already_gone_refuses_to_start() {
    if !sandbox_available() {
        return;
    }
    // The parent expected is not the parent this worker has: as if the node had died
    // between starting the worker and the worker asking to die with it.
    let expected = std::process::id() + 1;
    let probe = Probe::start(&["--parent", &expected.to_string()]);
    assert_eq!(
        probe.ready,
        format!(
            "error the worker's parent {expected} is gone (its parent is now {}): a worker must not outlive its node",
            std::process::id()
        )
    );
    assert_eq!(probe.end().end, WorkerEnd::Exited(2));
}
