//! A hand-driven runner for tests: keeps what is in flight and records decisions.

use std::collections::BTreeMap;

use scheduler::{Decision, DeviceId, Event, Packet, Scheduler};

/// Records every decision and keeps the set of running (device, packet) pairs.
pub struct Driver {
    pub sched: Scheduler,
    pub now: u64,
    pub running: BTreeMap<(DeviceId, u64), Packet>,
    pub runs: Vec<(DeviceId, Packet)>,
    pub commits: Vec<(DeviceId, Packet)>,
    pub cancels: Vec<(DeviceId, Packet)>,
    pub discards: Vec<(DeviceId, Packet)>,
}

impl Driver {
    pub fn new(sched: Scheduler) -> Self {
        Driver {
            sched,
            now: 0,
            running: BTreeMap::new(),
            runs: Vec::new(),
            commits: Vec::new(),
            cancels: Vec::new(),
            discards: Vec::new(),
        }
    }

    pub fn handle(&mut self, event: Event) {
        self.sched.handle(self.now, event);
        self.drain();
    }

    pub fn drain(&mut self) {
        while let Some(d) = self.sched.poll(self.now) {
            match d {
                Decision::Run { device, packet } => {
                    self.runs.push((device, packet));
                    self.running.insert((device, packet.id.0), packet);
                }
                Decision::Cancel { device, packet } => {
                    self.cancels.push((device, packet));
                    self.running.remove(&(device, packet.id.0));
                }
                Decision::Commit { device, packet } => self.commits.push((device, packet)),
                Decision::Discard { device, packet } => self.discards.push((device, packet)),
            }
        }
    }

    /// Finishes a running packet after `us` µs of simulated time.
    pub fn finish(&mut self, device: DeviceId, packet: Packet, us: u64, digest: Option<[u8; 32]>) {
        self.now += us;
        self.running.remove(&(device, packet.id.0));
        self.handle(Event::PacketFinished {
            device,
            packet: packet.id,
            compute_us: us,
            digest,
        });
    }

    /// The running copy issued first (smallest packet id, then device): a fair order in
    /// which to finish work.
    pub fn oldest(&self) -> Option<(DeviceId, Packet)> {
        self.running
            .iter()
            .min_by_key(|(&(d, pid), _)| (pid, d))
            .map(|(&(d, _), &p)| (d, p))
    }

    /// `true` when the commits cover `0..items` exactly once.
    pub fn covered_exactly_once(&self, items: u64) -> bool {
        scheduler::sim::covers_exactly_once(&self.commits, items)
    }

    /// The first packet run on `device`.
    pub fn first_run_on(&self, device: DeviceId) -> Packet {
        self.runs
            .iter()
            .find(|(d, _)| *d == device)
            .expect("a packet ran on the device")
            .1
    }

    /// Finishes every packet `device` is running, and the ones it gets next, until it has
    /// none (each taking as many µs as it has items).
    pub fn finish_all_on(&mut self, device: DeviceId) {
        while let Some((&(d, _), &p)) = self.running.iter().find(|(&(d, _), _)| d == device) {
            self.finish(d, p, p.items(), None);
        }
    }
}
