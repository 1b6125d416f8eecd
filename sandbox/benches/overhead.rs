//! Sandboxed vs unsandboxed kernel worker, side by side in one run.
//!
//! Three `sandbox-probe worker` processes, one sandboxed (CPU profile: seccomp, Landlock,
//! limits) and two not, serve the same packets in rotating order (A B C, B C A, ...), and
//! the bench prints the median round trip of each, the sandboxed/unsandboxed ratio and,
//! as the noise floor, the ratio of the two unsandboxed twins, for three kinds of packet:
//!
//! - `spin`: a compute kernel's loop (arithmetic, no system calls) of about 20 ms;
//! - `compute`: a worker's packet with system calls (threads, futexes, a growing buffer,
//!   a hash map, the clock) over 100 000 items;
//! - `echo`: an empty packet, the per-packet cost of the pipe round trip (read and write
//!   through the filter).
//!
//! Run it under the shared lock: `flock -o /tmp/offload-cargo.lock cargo bench -p sandbox`.
//! `OVERHEAD_ROUNDS` sets the rounds per kind (default 41); `OVERHEAD_SANDBOXED_ARGS` adds
//! probe options to the sandboxed worker, e.g. `--without-seccomp` or `--without-landlock`
//! to measure one layer.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// A probe worker serving packets.
struct Worker {
    name: &'static str,
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Worker {
    fn start(name: &'static str, args: &[&str]) -> Result<Worker, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sandbox-probe"))
            .arg("worker")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start sandbox-probe: {e}"))?;
        let input = child.stdin.take().ok_or("no stdin pipe")?;
        let output = BufReader::new(child.stdout.take().ok_or("no stdout pipe")?);
        let mut worker = Worker {
            name,
            child,
            input,
            output,
        };
        let ready = worker.read_line()?;
        if !ready.starts_with("ready ") {
            return Err(format!("the {name} worker said {ready:?}"));
        }
        eprintln!("{name}: {}", &ready["ready ".len()..]);
        Ok(worker)
    }

    fn read_line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        match self.output.read_line(&mut line) {
            Ok(0) => Err(format!("the {} worker ended", self.name)),
            Ok(_) => Ok(line.trim_end().to_string()),
            Err(e) => Err(format!("cannot read from the {} worker: {e}", self.name)),
        }
    }

    /// One packet's round trip, and its answer.
    fn packet(&mut self, command: &str) -> Result<(Duration, String), String> {
        let started = Instant::now();
        writeln!(self.input, "{command}")
            .and_then(|()| self.input.flush())
            .map_err(|e| format!("cannot write to the {} worker: {e}", self.name))?;
        let answer = self.read_line()?;
        Ok((started.elapsed(), answer))
    }

    fn stop(mut self) {
        let _ = writeln!(self.input, "exit");
        let _ = self.child.wait();
    }
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

/// Pins this process, and so the workers it starts, to the CPU it runs on: every round trip
/// is then the same hand-over between processes on one CPU, whatever the scheduler would
/// have placed where (unpinned, whichever worker shares a CPU with the bench answers empty
/// packets five times slower than the others, sandboxed or not).
fn pin_to_one_cpu() -> Result<(), String> {
    // SAFETY: sched_getcpu has no preconditions; the set is zeroed, then one bit is set,
    // and sched_setaffinity reads it.
    unsafe {
        let cpu = libc::sched_getcpu();
        if cpu < 0 {
            return Err(format!("sched_getcpu: {}", std::io::Error::last_os_error()));
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(format!(
                "sched_setaffinity: {}",
                std::io::Error::last_os_error()
            ));
        }
        println!("bench and workers pinned to CPU {cpu}");
    }
    Ok(())
}

fn run() -> Result<(), String> {
    let rounds: usize = std::env::var("OVERHEAD_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(41);
    let support = sandbox::support();
    if !support.is_complete() {
        return Err(format!("this kernel cannot sandbox: {support}"));
    }
    pin_to_one_cpu()?;
    let layers = std::env::var("OVERHEAD_SANDBOXED_ARGS").unwrap_or_default();
    let sandboxed_args: Vec<&str> = layers.split_whitespace().collect();
    // A second unsandboxed worker gives the noise floor: the ratio of two identical
    // workers, measured the same way at the same time.
    let mut workers = [
        Worker::start("unsandboxed", &["--no-sandbox"])?,
        Worker::start("sandboxed", &sandboxed_args)?,
        Worker::start("unsandboxed twin", &["--no-sandbox"])?,
    ];
    println!("{rounds} rounds per kind, order rotating; medians of one packet's round trip");
    println!(
        "{:<8} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "packet", "unsandboxed", "sandboxed", "twin", "sandboxed/un", "twin/un"
    );
    for (kind, command) in [
        ("spin", "spin 20000000"),
        ("compute", "compute 100000"),
        ("echo", "echo"),
    ] {
        // Warm-up: first thread starts, page faults, caches.
        for _ in 0..3 {
            for worker in workers.iter_mut() {
                worker.packet(command)?;
            }
        }
        let repeat = if kind == "echo" { 200 } else { 1 };
        let mut times: [Vec<Duration>; 3] = Default::default();
        for round in 0..rounds {
            for step in 0..workers.len() {
                let index = (round + step) % workers.len();
                let worker = &mut workers[index];
                let mut total = Duration::ZERO;
                let mut answer = String::new();
                for _ in 0..repeat {
                    let (time, said) = worker.packet(command)?;
                    total += time;
                    answer = said;
                }
                if answer.is_empty() || answer.starts_with("unknown") {
                    return Err(format!("the {} worker answered {answer:?}", worker.name));
                }
                times[index].push(total / repeat);
            }
        }
        let [without, with, twin] = times.map(|mut t| median(&mut t));
        println!(
            "{:<8} {:>12} {:>12} {:>12} {:>12.3} {:>12.3}",
            kind,
            format!("{without:.2?}"),
            format!("{with:.2?}"),
            format!("{twin:.2?}"),
            with.as_secs_f64() / without.as_secs_f64(),
            twin.as_secs_f64() / without.as_secs_f64()
        );
    }
    for worker in workers {
        worker.stop();
    }
    Ok(())
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too, once, briefly.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    if let Err(message) = run() {
        eprintln!("overhead: {message}");
        std::process::exit(1);
    }
}
