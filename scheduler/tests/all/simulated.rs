//! Makespans on simulated clusters against the lower bound and the baselines. These are
//! deterministic simulated numbers (seeded noise), so the bounds are exact assertions.

use scheduler::sim::{run_equal_split, run_fixed_chunks, run_scheduler, scenario, SimReport};

fn run(name: &str) -> (SimReport, SimReport, SimReport) {
    let s = scenario(name).expect("scenario");
    let ours = run_scheduler(&s);
    assert!(ours.complete, "{name}: incomplete");
    assert!(
        ours.exactly_once(),
        "{name}: items not committed exactly once"
    );
    (ours, run_equal_split(&s), run_fixed_chunks(&s, 16))
}

fn within_5_percent_and_far_ahead(name: &str) {
    let (ours, equal, chunks) = run(name);
    assert!(
        ours.ratio() <= 1.05,
        "{name}: {:.3} of the lower bound",
        ours.ratio()
    );
    assert!(
        equal.ratio() > 3.0 * ours.ratio(),
        "{name}: equal split {:.3} vs {:.3}",
        equal.ratio(),
        ours.ratio()
    );
    assert!(
        chunks.ratio() > ours.ratio(),
        "{name}: fixed chunks {:.3} vs {:.3}",
        chunks.ratio(),
        ours.ratio()
    );
}

#[test]
fn hetero_4_is_within_5_percent_of_the_lower_bound() {
    within_5_percent_and_far_ahead("hetero-4");
}

#[test]
fn hetero_16_is_within_5_percent_of_the_lower_bound() {
    within_5_percent_and_far_ahead("hetero-16");
}

#[test]
fn hetero_1000_is_within_5_percent_of_the_lower_bound() {
    within_5_percent_and_far_ahead("hetero-1000");
}

/// 10 000 devices of random speeds, none with a profile: every one is calibrated with a
/// first packet small enough that the slowest finishes it early.
#[test]
fn hetero_10000_is_within_5_percent_of_the_lower_bound() {
    within_5_percent_and_far_ahead("hetero-10000");
}

#[test]
fn uniform_4_is_within_5_percent_of_the_lower_bound() {
    let (ours, _, _) = run("uniform-4");
    assert!(ours.ratio() <= 1.05, "{:.3}", ours.ratio());
}

#[test]
fn spikes_cost_little() {
    let (ours, _, chunks) = run("spiky-16");
    assert!(ours.ratio() <= 1.06, "{:.3}", ours.ratio());
    assert!(ours.ratio() < chunks.ratio());
}

#[test]
fn failures_joins_and_slowdowns_beat_the_baselines() {
    for name in ["failures-16", "join-16", "slowdown-16"] {
        let (ours, equal, chunks) = run(name);
        assert!(ours.ratio() <= 1.05, "{name}: {:.3}", ours.ratio());
        assert!(
            ours.ratio() < chunks.ratio(),
            "{name}: {:.3} vs {:.3}",
            ours.ratio(),
            chunks.ratio()
        );
        assert!(ours.ratio() < equal.ratio());
    }
}

/// On 1 GbE the links, not the devices, bound the remote nodes: results queue on the
/// way up, which the scheduler's link model books per direction.
#[test]
fn a_link_bound_cluster_is_within_5_percent_and_ahead_of_the_baselines() {
    let (ours, equal, chunks) = run("gigabit-16");
    assert!(ours.ratio() <= 1.05, "{:.3}", ours.ratio());
    assert!(
        ours.ratio() < chunks.ratio() && ours.ratio() < equal.ratio(),
        "{:.3} vs chunks {:.3}, equal {:.3}",
        ours.ratio(),
        chunks.ratio(),
        equal.ratio()
    );
}

/// No scenario where the scheduler is behind either baseline (`hetero-10000`, the
/// slowest to simulate, has its own test above).
#[test]
fn never_behind_a_baseline() {
    for name in scheduler::sim::SCENARIOS {
        if *name == "hetero-10000" {
            continue;
        }
        let (ours, equal, chunks) = run(name);
        assert!(
            ours.makespan_us <= chunks.makespan_us && ours.makespan_us <= equal.makespan_us,
            "{name}: {} µs vs chunks {} µs, equal {} µs",
            ours.makespan_us,
            chunks.makespan_us,
            equal.makespan_us
        );
    }
}

/// Under redundancy the baselines run every range on as many distinct nodes and vote as
/// the scheduler does, so that their makespans compare with the same work done.
#[test]
fn baselines_run_every_copy_under_redundancy() {
    let s = scenario("liar-8").expect("scenario");
    for report in [run_equal_split(&s), run_fixed_chunks(&s, 16)] {
        assert!(report.complete && report.exactly_once(), "{report:?}");
        assert_eq!(report.wrong_commits, 0);
        assert!(
            report.packets >= 3 * report.commits.len() as u64,
            "{} runs for {} commits",
            report.packets,
            report.commits.len()
        );
    }
}

/// A runner that feeds measured transfers fixes a wrong link prior: `gigabit-16` on
/// links of 100 Mbit/s announced as gigabit (the cluster client's fixed figure), and on
/// gigabit links announced as 100 Mbit/s. Without the measurements the scheduler
/// overloads the slow links, or starves the fast ones.
#[test]
fn measured_transfers_correct_a_wrong_link_prior() {
    use scheduler::sim::{simulate, Policy};
    use scheduler::{Decision, Event, Link, Scheduler};

    /// Announces every link as `prior`; drops the transfer measurements unless `measure`.
    struct WrongPrior {
        sched: Scheduler,
        prior: Link,
        measure: bool,
    }
    impl Policy for WrongPrior {
        fn handle(&mut self, now: u64, event: Event) {
            let event = match event {
                Event::DeviceJoined { device, spec } => {
                    let link = spec.link.map(|_| self.prior);
                    Event::DeviceJoined {
                        device,
                        spec: spec.link(link),
                    }
                }
                Event::TransferMeasured { .. } if !self.measure => return,
                other => other,
            };
            self.sched.handle(now, event);
        }
        fn poll(&mut self, now: u64) -> Option<Decision> {
            self.sched.poll(now)
        }
        fn is_done(&self) -> bool {
            self.sched.is_done()
        }
        fn stalled(&self) -> bool {
            self.sched.stalled()
        }
        fn poll_timeout(&self) -> Option<u64> {
            self.sched.poll_timeout()
        }
    }
    let slow = Link::new(150.0, 11.7);
    for (truth, prior, blind_at_least) in
        [(slow, Link::gigabit(), 1.1), (Link::gigabit(), slow, 1.5)]
    {
        let mut s = scenario("gigabit-16").expect("scenario");
        for node in &mut s.nodes {
            if node.link.is_some() {
                node.link = Some(truth);
            }
        }
        let run = |measure| {
            let mut policy = WrongPrior {
                sched: Scheduler::new(s.job_spec()),
                prior,
                measure,
            };
            let report = simulate(&s, &mut policy);
            assert!(report.complete && report.exactly_once());
            // Device 4 is on node 1, a remote node.
            let link = policy.sched.estimates()[4]
                .link_bytes_per_us
                .expect("a remote device's link");
            (report, link)
        };
        let (measured, measured_link) = run(true);
        let (blind, blind_link) = run(false);
        let want = truth.bytes_per_us;
        assert!(
            (measured_link - want).abs() < 0.05 * want,
            "{measured_link} for {want}"
        );
        assert!((blind_link - prior.bytes_per_us).abs() < 1e-6 * prior.bytes_per_us);
        assert!(
            measured.ratio() <= 1.05,
            "{truth:?}: {:.3}",
            measured.ratio()
        );
        assert!(
            blind.ratio() > blind_at_least,
            "{truth:?}: blind {:.3} vs measured {:.3}",
            blind.ratio(),
            measured.ratio()
        );
    }
}
