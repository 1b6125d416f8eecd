//! Every named scenario over several noise seeds: the mean and worst makespan over the
//! lower bound for the scheduler, and the mean for fixed chunks, so that a change of
//! policy is judged on more than one draw of the noise.
//!
//! `cargo run --release -p scheduler --example seeds [-- SEEDS [PACKETS_PER_DEVICE...]]`
//! (default 8 seeds and the job's default target of packets per device).

use scheduler::sim::{run_fixed_chunks, scenario, simulate, Scenario, SCENARIOS};
use scheduler::Scheduler;

/// The scenario with its noise drawn from seed number `i`.
fn reseeded(base: &Scenario, i: u64) -> Scenario {
    let mut s = base.clone();
    s.seed ^= i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    s
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seeds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
    let targets: Vec<Option<f64>> = {
        let given: Vec<Option<f64>> = args.map(|a| a.parse().ok()).collect();
        if given.is_empty() {
            vec![None]
        } else {
            given
        }
    };
    print!("{:<20}", "scenario");
    for t in &targets {
        let label = t.map_or("default".to_string(), |k| format!("k={k}"));
        print!(" {:>15}", format!("{label} mean/max"));
    }
    println!(" {:>13}", "chunks16 mean");
    for name in SCENARIOS {
        let Some(base) = scenario(name) else { continue };
        print!("{name:<20}");
        for &target in &targets {
            let (mut sum, mut worst) = (0.0, 0.0f64);
            for i in 0..seeds {
                let s = reseeded(&base, i);
                let mut job = s.job_spec();
                if let Some(k) = target {
                    job = job.target_packets_per_device(k);
                }
                let r = simulate(&s, &mut Scheduler::new(job));
                if !(r.complete && r.exactly_once()) {
                    eprintln!("{name}, seed {i}: the job did not complete exactly once");
                    std::process::exit(1);
                }
                sum += r.ratio();
                worst = worst.max(r.ratio());
            }
            print!(" {:>7.3}/{:>7.3}", sum / seeds as f64, worst);
        }
        let chunks: f64 = (0..seeds)
            .map(|i| run_fixed_chunks(&reseeded(&base, i), 16).ratio())
            .sum();
        println!(" {:>13.3}", chunks / seeds as f64);
    }
}
