//! A kernel that traps ends its worker with the trap in words; a stack overflow is named.

use sandbox::WorkerEnd;

use crate::probe::{sandbox_available, Probe};

fn assert_ends(command: &str, end: WorkerEnd, words: &str) {
    let probe = Probe::start(&[]);
    probe.expect_ready();
    let ended = probe.end_with(command);
    assert_eq!(
        ended.end, end,
        "{command}: {:?}, {}",
        ended.status, ended.stderr
    );
    assert_eq!(ended.blame(), format!("kernel `probe` crashed: {words}"));
}

#[test]
fn traps_are_reported_with_their_signal() {
    if !sandbox_available() {
        return;
    }
    assert_ends(
        "segv",
        WorkerEnd::Signal(libc::SIGSEGV),
        "SIGSEGV (invalid memory access)",
    );
    assert_ends(
        "bus",
        WorkerEnd::Signal(libc::SIGBUS),
        "SIGBUS (bus error: misaligned or vanished memory)",
    );
    assert_ends(
        "fpe",
        WorkerEnd::Signal(libc::SIGFPE),
        "SIGFPE (arithmetic error, e.g. integer division by zero)",
    );
    assert_ends(
        "ill",
        WorkerEnd::Signal(libc::SIGILL),
        "SIGILL (illegal instruction, e.g. a trap or an instruction this CPU lacks)",
    );
    assert_ends("abort", WorkerEnd::Signal(libc::SIGABRT), "SIGABRT (abort)");
}

#[test]
fn stack_overflows_are_named_on_every_kind_of_thread() {
    if !sandbox_available() {
        return;
    }
    for command in ["overflow", "overflow-thread", "overflow-std-thread"] {
        let probe = Probe::start(&[]);
        probe.expect_ready();
        let ended = probe.end_with(command);
        assert_eq!(
            ended.end,
            WorkerEnd::StackOverflow,
            "{command}: {}",
            ended.stderr
        );
        assert_eq!(ended.fault, Some(sandbox::Fault::StackOverflow));
        assert_eq!(ended.blame(), "kernel `probe` crashed: stack overflow");
    }
}
