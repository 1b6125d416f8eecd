//! Driving `sandbox-probe worker` as a node drives a worker: a command per line, the
//! report descriptor on fd 3, the end read from the wait status and the report.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};

use sandbox::{Fault, WorkerEnd};

/// The kernel name the tests blame.
pub const KERNEL: &str = "probe";

/// Whether this kernel has both layers. Where it lacks one, the test says so loudly and
/// fails under `CI=true`; elsewhere it passes without checking (nothing to check).
pub fn sandbox_available() -> bool {
    let support = sandbox::support();
    if support.is_complete() {
        return true;
    }
    cannot_run(&format!("this kernel cannot sandbox ({support})"));
    false
}

/// Says loudly that a test cannot run here and checks nothing; fails under `CI=true`.
pub fn cannot_run(why: &str) {
    let message = format!("THIS TEST CANNOT RUN HERE: {why}");
    eprintln!("{message}");
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
}

/// A running probe worker.
pub struct Probe {
    child: Child,
    input: Option<ChildStdin>,
    output: BufReader<ChildStdout>,
    report: std::fs::File,
    /// The worker's first line: `ready <report>` or `error <why>`.
    pub ready: String,
}

/// How a probe ended.
pub struct Ended {
    pub status: ExitStatus,
    pub fault: Option<Fault>,
    pub end: WorkerEnd,
    pub stderr: String,
}

impl Ended {
    /// The sentence a user would read.
    pub fn blame(&self) -> String {
        self.end.blame(KERNEL)
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors, which we then own.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: fresh descriptors.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Probe {
    /// Starts `sandbox-probe worker ARGS --report-fd 3` and reads its first line.
    pub fn start(args: &[&str]) -> Probe {
        Probe::start_with(args, &[])
    }

    /// As [`Probe::start`], with extra environment.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Probe {
        let (report_read, report_write) = pipe();
        let write_fd = report_write.as_raw_fd();
        let mut command = Command::new(env!("CARGO_BIN_EXE_sandbox-probe"));
        command
            .arg("worker")
            .args(args)
            .args(["--report-fd", "3"])
            .env("RUST_BACKTRACE", "0")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: dup2 is async-signal-safe; it gives the child the report pipe as fd 3
        // (without close-on-exec).
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(write_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().expect("start sandbox-probe");
        drop(report_write);
        let input = child.stdin.take();
        let mut output = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut ready = String::new();
        output.read_line(&mut ready).expect("read the first line");
        Probe {
            child,
            input,
            output,
            report: std::fs::File::from(report_read),
            ready: ready.trim_end().to_string(),
        }
    }

    /// The worker's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Asserts the worker sandboxed itself and returns its report line.
    pub fn expect_ready(&self) -> &str {
        assert!(
            self.ready.starts_with("ready "),
            "the worker did not get ready: {:?}",
            self.ready
        );
        &self.ready
    }

    /// Sends one command and returns the answer line (empty when the worker ended).
    pub fn ask(&mut self, command: &str) -> String {
        let input = self.input.as_mut().expect("input is open");
        // A worker that died already makes the write fail; the empty answer tells.
        if writeln!(input, "{command}")
            .and_then(|()| input.flush())
            .is_err()
        {
            return String::new();
        }
        let mut answer = String::new();
        self.output.read_line(&mut answer).expect("read an answer");
        answer.trim_end().to_string()
    }

    /// Closes the worker's input, waits for its end, and reads what it left.
    pub fn end(mut self) -> Ended {
        drop(self.input.take());
        let status = self.child.wait().expect("wait for the worker");
        let mut stdout = String::new();
        self.output
            .read_to_string(&mut stdout)
            .expect("read stdout");
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            err.read_to_string(&mut stderr).expect("read stderr");
        }
        // The worker held the only write end: this ends when the worker has.
        let mut report = Vec::new();
        self.report
            .read_to_end(&mut report)
            .expect("read the report pipe");
        let fault = Fault::first_in(&report);
        Ended {
            status,
            fault,
            end: WorkerEnd::from_status(status, fault),
            stderr,
        }
    }

    /// Sends `command`, which must end the worker, and returns how it ended.
    pub fn end_with(mut self, command: &str) -> Ended {
        let answer = self.ask(command);
        assert_eq!(answer, "", "the worker answered {command:?} and lived on");
        self.end()
    }
}
