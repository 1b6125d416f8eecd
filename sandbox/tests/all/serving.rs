//! The worker loop under the filter: what a worker does to serve packets is allowed.

use sandbox::WorkerEnd;

use crate::probe::{sandbox_available, Probe};

#[test]
fn the_worker_loop_runs_under_the_cpu_profile() {
    if !sandbox_available() {
        return;
    }
    let mut probe = Probe::start(&[]);
    let ready = probe.expect_ready().to_string();
    assert!(
        ready.contains("sandbox (cpu profile): no new privileges; seccomp: "),
        "{ready}"
    );
    assert!(ready.contains("no file can be opened"), "{ready}");
    // What the worker can still read and write: stdio and the report pipe, at least.
    assert!(ready.contains("; descriptors open: 0, 1, 2, 3"), "{ready}");
    // Several packets: threads, locks, a condition variable, a growing buffer, a hash map,
    // the clock; a caught panic; a big mapping.
    for items in [1u64, 1000, 100_000] {
        assert_eq!(
            probe.ask(&format!("compute {items}")),
            format!("sum {}", items * (items - 1) / 2)
        );
    }
    assert_eq!(probe.ask("panic"), "caught true");
    assert_eq!(probe.ask("alloc 64"), "allocated");
    assert!(probe.ask("spin 1000").starts_with("spun "));
    assert_eq!(probe.ask("echo still serving"), "echo still serving");
    let ended = probe.end();
    assert_eq!(ended.end, WorkerEnd::Exited(0), "stderr: {}", ended.stderr);
    assert_eq!(ended.fault, None);
    assert!(
        ended.stderr.contains("a kernel panicked"),
        "{}",
        ended.stderr
    );
}

#[test]
fn the_unsandboxed_worker_answers_the_same() {
    let mut probe = Probe::start(&["--no-sandbox"]);
    assert_eq!(probe.ready, "ready unsandboxed");
    assert_eq!(probe.ask("compute 1000"), "sum 499500");
    // Without the sandbox the same call goes through: the tests above see the filter.
    assert!(probe.ask("openat").starts_with("openat returned "));
    assert_eq!(probe.end().end, WorkerEnd::Exited(0));
}

#[test]
fn support_is_reported_in_words() {
    let support = sandbox::support();
    let words = support.to_string();
    assert!(words.starts_with("seccomp-bpf: "), "{words}");
    assert!(words.contains("; Landlock: "), "{words}");
    assert_eq!(support.missing.is_empty(), support.is_complete(), "{words}");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sandbox-probe"))
        .arg("support")
        .output()
        .expect("run sandbox-probe support");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim_end(), words);
}

#[test]
fn a_thread_started_before_is_refused_where_landlock_cannot_cover_it() {
    if !sandbox_available() {
        return;
    }
    let probe = Probe::start(&["--thread-before"]);
    match sandbox::support().landlock_abi {
        Some(abi) if abi < sandbox::LANDLOCK_ALL_THREADS_ABI => {
            assert!(
                probe
                    .ready
                    .starts_with("error 1 other thread(s) already run in this process"),
                "{}",
                probe.ready
            );
            assert_eq!(probe.end().end, WorkerEnd::Exited(2));
        }
        _ => {
            assert!(
                probe.expect_ready().contains("all threads"),
                "{}",
                probe.ready
            );
            assert_eq!(probe.end().end, WorkerEnd::Exited(0));
        }
    }
}
