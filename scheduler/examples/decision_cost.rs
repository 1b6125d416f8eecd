//! The scheduler's own cost per decision, without criterion: runs [`DecisionLoop`] for
//! 4, 16, 1000 and 10 000 devices and prints the best of several timed rounds, so that two
//! builds of the scheduler can be compared by running their binaries in turn on the
//! same (shared, noisy) machine.
//!
//! `cargo run --release -p scheduler --example decision_cost [-- ROUNDS]`; with
//! `-- makespans` it prints every scenario's makespan instead (exact µs), to check that
//! a faster build of the scheduler still makes the same decisions.

use std::time::Instant;

use scheduler::sim::{run_scheduler, scenario, DecisionLoop, SCENARIOS};

/// Decisions per timed round.
const DECISIONS: u64 = 400_000;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("makespans") {
        for name in SCENARIOS {
            if let Some(s) = scenario(name) {
                let r = run_scheduler(&s);
                println!(
                    "{name:<12} {:>12} µs  ratio {:.4}",
                    r.makespan_us,
                    r.ratio()
                );
            }
        }
        return;
    }
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    println!(
        "{:>8} {:>16} {:>16}",
        "devices", "best ns/decision", "median ns/dec."
    );
    for devices in [4usize, 16, 1000, 10_000] {
        let mut lp = DecisionLoop::new(devices);
        // Warm up: past the first round of packets and into the steady state.
        let mut warm = 0;
        while warm < DECISIONS {
            warm += lp.step();
        }
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let mut decisions = 0u64;
            let start = Instant::now();
            while decisions < DECISIONS {
                decisions += lp.step();
            }
            times.push(start.elapsed().as_nanos() as f64 / decisions as f64);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{:>8} {:>16.0} {:>16.0}",
            devices,
            times[0],
            times[times.len() / 2]
        );
    }
}
