//! Measures a node's link from the transfers of a job, as the client sees them, for the
//! scheduler's `Event::TransferMeasured` (one transfer, one way, timed from when the link
//! could start on it until its last byte arrived).
//!
//! The client cannot see a byte arrive on the node, so each direction is timed from what
//! it can see:
//!
//! - **Down** (a packet's inputs): from the first write of the request to QUIC's
//!   acknowledgement of its last byte (`SendStream::stopped`), less one one-way latency
//!   (the acknowledgement's trip back). The node may delay an acknowledgement by up to
//!   its `max_ack_delay` (25 ms); a busy period of back-to-back transfers pays that once.
//! - **Up** (a packet's results): from the arrival of the response's first byte to that
//!   of its last, plus one one-way latency (the first byte's own trip). The node's compute
//!   time lies before the first byte and is not counted.
//! - **Latency**: half of QUIC's smoothed round trip (which leaves out the peer's
//!   reported acknowledgement delay), and a latency-only probe (`bytes: 0`) from a timed
//!   ping when a job starts.
//!
//! Small transfers say nothing about bandwidth: a few hundred bytes cross in microseconds,
//! so their time is the latency, timer noise and (down) the node's acknowledgement delay,
//! which makes a 100-byte request look like 0.03 Mbit/s. So a busy period counts as a
//! bandwidth sample only from [`Direction::min_bytes`] on; the latency comes from the
//! probes.
//!
//! Transfers in one direction that overlap share the link: timing each alone would see
//! it slower than it is. So overlapping transfers are timed together, as one busy period
//! from the start of the first to the end of the last, carrying all their bytes; a period
//! in which a transfer failed (its bytes never all arrived) is dropped.
//!
//! Pure logic: the caller passes the instants; the I/O is in `client.rs`.

use std::time::{Duration, Instant};

/// A direction of a node's full-duplex link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Client to node: a packet's inputs.
    Down,
    /// Node to client: a packet's results.
    Up,
}

impl Direction {
    /// The fewest bytes a busy period must carry to be a sample. Up: 64 KiB, dozens of
    /// datagrams, far above timer noise. Down: 1 MiB, so that the up to 25 ms the node
    /// may hold back its last acknowledgement is a small part of the period.
    pub(crate) fn min_bytes(self) -> u64 {
        match self {
            Direction::Down => 1 << 20,
            Direction::Up => 64 << 10,
        }
    }
}

/// One measured transfer for `Event::TransferMeasured`: `bytes` one way in `micros`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) bytes: u64,
    pub(crate) micros: u64,
}

/// Overlapping transfers of one direction, timed together.
#[derive(Debug, Default)]
struct BusyPeriod {
    active: u32,
    since: Option<Instant>,
    bytes: u64,
    /// A transfer of this period failed: the period says nothing about the link.
    failed: bool,
}

impl BusyPeriod {
    fn begin(&mut self, at: Instant) {
        if self.active == 0 {
            *self = BusyPeriod {
                since: Some(at),
                ..BusyPeriod::default()
            };
        }
        self.active += 1;
    }

    /// Ends one transfer; returns the period's bytes and span when it was the last.
    fn end(&mut self, at: Instant, bytes: Option<u64>) -> Option<(u64, Duration)> {
        if self.active == 0 {
            return None;
        }
        self.active -= 1;
        match bytes {
            Some(bytes) => self.bytes += bytes,
            None => self.failed = true,
        }
        if self.active > 0 || self.failed {
            return None;
        }
        let since = self.since?;
        Some((self.bytes, at.saturating_duration_since(since)))
    }
}

/// The link meter of one node.
#[derive(Debug, Default)]
pub(crate) struct LinkMeter {
    down: BusyPeriod,
    up: BusyPeriod,
    /// Measured transfers not yet handed to the scheduler.
    samples: Vec<Sample>,
    /// Bandwidth samples (transfers) and latency probes measured in all.
    transfers: u64,
    probes: u64,
}

impl LinkMeter {
    /// A transfer in `direction` starts at `at` (down: its first write; up: its first
    /// byte's arrival).
    pub(crate) fn begin(&mut self, direction: Direction, at: Instant) {
        self.period(direction).begin(at);
    }

    /// The transfer begun in `direction` ended at `at` having moved `bytes` (down: all
    /// acknowledged; up: all arrived), or failed (`None`). `latency` is the one-way
    /// latency now (half the round trip).
    pub(crate) fn end(
        &mut self,
        direction: Direction,
        at: Instant,
        bytes: Option<u64>,
        latency: Duration,
    ) {
        let Some((bytes, span)) = self.period(direction).end(at, bytes) else {
            return;
        };
        if bytes < direction.min_bytes() {
            return;
        }
        let micros = match direction {
            // The acknowledgement of the last byte took one latency to come back.
            Direction::Down => span.saturating_sub(latency),
            // The first byte took one latency to arrive before the clock started.
            Direction::Up => span + latency,
        };
        self.push(bytes, micros);
    }

    /// A round trip of a small message took `round_trip`: a latency-only sample.
    pub(crate) fn round_trip(&mut self, round_trip: Duration) {
        self.push(0, round_trip / 2);
    }

    fn push(&mut self, bytes: u64, micros: Duration) {
        if bytes == 0 {
            self.probes += 1;
        } else {
            self.transfers += 1;
        }
        self.samples.push(Sample {
            bytes,
            micros: u64::try_from(micros.as_micros()).unwrap_or(u64::MAX),
        });
    }

    /// The samples measured since the last call.
    pub(crate) fn take(&mut self) -> Vec<Sample> {
        std::mem::take(&mut self.samples)
    }

    /// Transfers measured in all (samples of the bandwidth).
    pub(crate) fn transfers(&self) -> u64 {
        self.transfers
    }

    /// Latency probes measured in all.
    pub(crate) fn probes(&self) -> u64 {
        self.probes
    }

    fn period(&mut self, direction: Direction) -> &mut BusyPeriod {
        match direction {
            Direction::Down => &mut self.down,
            Direction::Up => &mut self.up,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_lone_download_is_timed_to_its_acknowledgement_less_the_way_back() {
        let t = Instant::now();
        let mut meter = LinkMeter::default();
        meter.begin(Direction::Down, t);
        // 2 MB acknowledged 82 ms later with a 1 ms one-way latency: it arrived at 81 ms.
        meter.end(Direction::Down, t + 82 * MS, Some(2_000_000), MS);
        assert_eq!(
            meter.take(),
            vec![Sample {
                bytes: 2_000_000,
                micros: 81_000
            }]
        );
        assert!(meter.take().is_empty());
        assert_eq!((meter.transfers(), meter.probes()), (1, 0));
    }

    #[test]
    fn an_upload_adds_the_first_bytes_trip() {
        let t = Instant::now();
        let mut meter = LinkMeter::default();
        meter.begin(Direction::Up, t);
        meter.end(Direction::Up, t + 40 * MS, Some(500_000), 2 * MS);
        assert_eq!(
            meter.take(),
            vec![Sample {
                bytes: 500_000,
                micros: 42_000
            }]
        );
    }

    #[test]
    fn overlapping_transfers_are_one_period_with_all_their_bytes() {
        let t = Instant::now();
        let mut meter = LinkMeter::default();
        meter.begin(Direction::Down, t);
        meter.begin(Direction::Down, t + 5 * MS);
        meter.end(Direction::Down, t + 30 * MS, Some(1_000_000), MS);
        // The other direction is apart: its period neither joins nor ends this one.
        meter.begin(Direction::Up, t + 10 * MS);
        meter.end(Direction::Up, t + 20 * MS, Some(70_000), MS);
        meter.begin(Direction::Down, t + 31 * MS);
        meter.end(Direction::Down, t + 50 * MS, Some(2_000_000), MS);
        assert_eq!(
            meter.take(),
            vec![Sample {
                bytes: 70_000,
                micros: 11_000
            }]
        );
        meter.end(Direction::Down, t + 61 * MS, Some(3_000_000), MS);
        assert_eq!(
            meter.take(),
            vec![Sample {
                bytes: 6_000_000,
                micros: 60_000
            }]
        );
        // A later transfer starts a new period.
        meter.begin(Direction::Down, t + 100 * MS);
        meter.end(Direction::Down, t + 111 * MS, Some(5_000_000), MS);
        assert_eq!(
            meter.take(),
            vec![Sample {
                bytes: 5_000_000,
                micros: 10_000
            }]
        );
    }

    #[test]
    fn a_period_with_a_failed_transfer_is_dropped() {
        let t = Instant::now();
        let mut meter = LinkMeter::default();
        meter.begin(Direction::Up, t);
        meter.begin(Direction::Up, t + MS);
        meter.end(Direction::Up, t + 2 * MS, None, MS);
        meter.end(Direction::Up, t + 9 * MS, Some(100_000), MS);
        assert!(meter.take().is_empty());
        // The next period is measured again.
        meter.begin(Direction::Up, t + 10 * MS);
        meter.end(Direction::Up, t + 12 * MS, Some(100_000), MS);
        assert_eq!(meter.take().len(), 1);
        assert_eq!(meter.transfers(), 1);
    }

    #[test]
    fn small_periods_are_no_bandwidth_samples() {
        let t = Instant::now();
        let mut meter = LinkMeter::default();
        // A 300-byte request acknowledged 25 ms later (a delayed acknowledgement).
        meter.begin(Direction::Down, t);
        meter.end(Direction::Down, t + 25 * MS, Some(300), MS);
        meter.begin(Direction::Up, t);
        meter.end(Direction::Up, t + MS, Some(1000), MS);
        assert!(meter.take().is_empty());
        assert_eq!((meter.transfers(), meter.probes()), (0, 0));
    }

    #[test]
    fn an_end_without_a_begin_and_a_round_trip() {
        let t = Instant::now();
        let mut meter = LinkMeter::default();
        meter.end(Direction::Down, t, Some(10 << 20), MS);
        assert!(meter.take().is_empty());
        meter.round_trip(Duration::from_micros(300));
        assert_eq!(
            meter.take(),
            vec![Sample {
                bytes: 0,
                micros: 150
            }]
        );
        assert_eq!((meter.transfers(), meter.probes()), (0, 1));
    }

    #[test]
    fn an_acknowledgement_sooner_than_the_latency_is_not_negative() {
        let t = Instant::now();
        let mut meter = LinkMeter::default();
        meter.begin(Direction::Down, t);
        meter.end(Direction::Down, t + MS, Some(10 << 20), 3 * MS);
        assert_eq!(meter.take()[0].micros, 0);
    }
}
