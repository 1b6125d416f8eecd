//! Runs every named scenario with the scheduler and the two baselines and prints makespan
//! over lower bound, then the scheduler's own cost per decision:
//! `cargo run --release -p scheduler --example scenarios [name...]`.

use std::time::Instant;

use scheduler::sim::{
    run_equal_split, run_fixed_chunks, run_scheduler, scenario, DecisionLoop, SCENARIOS,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let names: Vec<&str> = if args.is_empty() {
        SCENARIOS.to_vec()
    } else {
        args.iter().map(String::as_str).collect()
    };
    println!(
        "{:<13} {:>7} {:>12} {:>9} {:>8} {:>6} {:>9} {:>9}",
        "scenario", "devices", "lower bound", "offload", "packets", "dups", "equal", "chunks16"
    );
    for name in names {
        let Some(s) = scenario(name) else {
            eprintln!("unknown scenario {name}; known: {}", SCENARIOS.join(", "));
            std::process::exit(2);
        };
        let ours = run_scheduler(&s);
        let equal = run_equal_split(&s);
        let chunks = run_fixed_chunks(&s, 16);
        println!(
            "{:<13} {:>7} {:>10.1}ms {:>9.3} {:>8} {:>6} {:>9.3} {:>9.3}{}",
            name,
            s.devices(),
            ours.lower_bound_us as f64 / 1e3,
            ours.ratio(),
            ours.packets,
            ours.duplicates,
            equal.ratio(),
            chunks.ratio(),
            if ours.complete && ours.exactly_once() {
                ""
            } else {
                "  INCOMPLETE"
            }
        );
    }
    println!();
    for devices in [4, 16, 1000, 10_000] {
        let mut lp = DecisionLoop::new(devices);
        let (mut decisions, mut steps) = (0u64, 0u64);
        let start = Instant::now();
        while start.elapsed().as_millis() < 500 {
            for _ in 0..1000 {
                decisions += lp.step();
            }
            steps += 1000;
        }
        let us = start.elapsed().as_secs_f64() * 1e6;
        println!(
            "steady state, {devices:>4} devices: {:.3} µs per decision ({:.3} µs per finished packet)",
            us / decisions as f64,
            us / steps as f64
        );
    }
    if let Some(s) = scenario("hetero-1000") {
        let start = Instant::now();
        let r = run_scheduler(&s);
        let us = start.elapsed().as_secs_f64() * 1e6;
        println!(
            "whole hetero-1000 job, scheduler and simulator together: {:.3} µs per decision ({} decisions)",
            us / r.decisions as f64,
            r.decisions
        );
    }
}
