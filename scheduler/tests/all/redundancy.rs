//! Redundant execution on distinct nodes, majority vote, exclusion of liars.

use scheduler::sim::{run_scheduler, scenario};
use scheduler::{DeviceId, DeviceSpec, Event, JobSpec, NodeId, Scheduler};

use crate::driver::Driver;

/// Three nodes, one of which lies: the liar is reported and excluded, every committed
/// result is an honest one, and the job completes.
#[test]
fn a_lying_device_is_detected_and_excluded() {
    let items = 20_000;
    let mut drv = Driver::new(Scheduler::new(JobSpec::new(items).redundancy(3)));
    for d in 0..4 {
        drv.handle(Event::DeviceJoined {
            device: DeviceId(d),
            spec: DeviceSpec::local_cpu(format!("n{d}"))
                .node(NodeId(d))
                .rate(1e6),
        });
    }
    let liar = DeviceId(2);
    let honest = |p: &scheduler::Packet| [(p.start % 251) as u8; 32];
    while let Some((d, p)) = drv.oldest() {
        let mut digest = honest(&p);
        if d == liar {
            digest[0] ^= 0xff;
        }
        drv.finish(d, p, p.items(), Some(digest));
    }
    assert!(drv.sched.is_complete());
    assert!(drv.covered_exactly_once(items));
    let dis = drv.sched.disagreements();
    assert_eq!(dis.len(), 1, "{dis:?}");
    assert_eq!(dis[0].device, liar);
    assert_eq!(dis[0].node, NodeId(2));
    assert!(drv.commits.iter().all(|(d, _)| *d != liar));
    // Excluded as soon as its first result disagreed: one run (one slot).
    assert!(drv.discards.iter().any(|(d, _)| *d == liar));
    let liar_runs = drv.runs.iter().filter(|(d, _)| *d == liar).count();
    assert_eq!(liar_runs, 1, "liar kept getting work");
    // Every packet ran on three distinct nodes (the copies of excluded devices aside).
    for (_, p) in &drv.commits {
        let nodes: std::collections::BTreeSet<_> = drv
            .runs
            .iter()
            .filter(|(_, q)| q.id == p.id)
            .map(|(d, _)| d.0)
            .collect();
        assert!(nodes.len() >= 3, "{p:?} ran on {nodes:?}");
    }
}

/// Two copies that disagree call for a third, which decides.
#[test]
fn a_tie_calls_for_another_copy() {
    let mut drv = Driver::new(Scheduler::new(
        JobSpec::new(100).redundancy(2).min_packet(100),
    ));
    for d in 0..3 {
        drv.handle(Event::DeviceJoined {
            device: DeviceId(d),
            spec: DeviceSpec::local_cpu(format!("n{d}"))
                .node(NodeId(d))
                .rate(1e6),
        });
    }
    let copies: Vec<_> = drv.running.iter().map(|(&(d, _), &p)| (d, p)).collect();
    assert_eq!(copies.len(), 2);
    drv.finish(copies[0].0, copies[0].1, 100, Some([1; 32]));
    drv.finish(copies[1].0, copies[1].1, 100, Some([2; 32]));
    assert!(!drv.sched.is_done());
    let third: Vec<_> = drv.running.iter().map(|(&(d, _), &p)| (d, p)).collect();
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].0, DeviceId(2));
    drv.finish(third[0].0, third[0].1, 100, Some([1; 32]));
    assert!(drv.sched.is_complete());
    assert_eq!(drv.commits, vec![(copies[0].0, copies[0].1)]);
    assert_eq!(drv.sched.disagreements()[0].device, copies[1].0);
}

/// The simulated `liar-8` cluster: the liar is found, no wrong result is committed.
#[test]
fn simulated_liar_is_excluded_and_output_is_correct() {
    let s = scenario("liar-8").expect("scenario");
    let report = run_scheduler(&s);
    assert!(report.complete && report.exactly_once());
    assert_eq!(report.wrong_commits, 0);
    let mut sched = Scheduler::new(s.job_spec());
    let again = scheduler::sim::simulate(&s, &mut sched);
    assert_eq!(again, report);
    let liars: Vec<_> = sched.disagreements().iter().map(|d| d.device).collect();
    assert_eq!(liars, vec![DeviceId(3)]);
}
