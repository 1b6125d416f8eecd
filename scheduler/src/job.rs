//! [`JobSpec`]: what is scheduled, and the policy's tunables.

use thiserror::Error;

/// A job to schedule: `items` work items `0..items`, the bytes that move with them, and
/// the policy's tunables. Every setter documents its default.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub(crate) items: u64,
    pub(crate) bytes_in_per_item: u64,
    pub(crate) bytes_out_per_item: u64,
    pub(crate) broadcast_bytes: u64,
    pub(crate) min_packet: u64,
    pub(crate) max_packet: u64,
    pub(crate) redundancy: u32,
    pub(crate) speculation: bool,
    pub(crate) packets_per_device: f64,
    pub(crate) calibration_items: Option<u64>,
    pub(crate) min_packet_us: Option<f64>,
}

/// Why a [`JobSpec`] was refused by [`crate::Scheduler::try_new`].
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum JobSpecError {
    /// `min_packet` is above `max_packet`.
    #[error("minimum packet size {min} is above the maximum packet size {max}")]
    PacketBounds {
        /// The minimum.
        min: u64,
        /// The maximum.
        max: u64,
    },
    /// `redundancy` is zero.
    #[error("redundancy must be at least 1")]
    ZeroRedundancy,
    /// `max_packet` is zero.
    #[error("maximum packet size must be at least 1 item")]
    ZeroMaxPacket,
    /// `target_packets_per_device` is not a finite number of at least 1.
    #[error("target packets per device must be a finite number >= 1, not {0}")]
    PacketsPerDevice(f64),
}

impl JobSpec {
    /// A job of `items` items with every tunable at its default.
    pub fn new(items: u64) -> Self {
        JobSpec {
            items,
            bytes_in_per_item: 0,
            bytes_out_per_item: 0,
            broadcast_bytes: 0,
            min_packet: 1,
            max_packet: u64::MAX,
            redundancy: 1,
            speculation: true,
            packets_per_device: 3.0,
            calibration_items: None,
            min_packet_us: None,
        }
    }

    /// Number of items of the job.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// Bytes sent to a remote device per item of a packet (its input slices). Default: 0.
    pub fn bytes_in_per_item(mut self, bytes: u64) -> Self {
        self.bytes_in_per_item = bytes;
        self
    }

    /// Bytes returned from a remote device per item of a packet. Default: 0.
    pub fn bytes_out_per_item(mut self, bytes: u64) -> Self {
        self.bytes_out_per_item = bytes;
        self
    }

    /// Bytes of whole buffers sent once to each remote node before its first packet.
    /// Default: 0.
    pub fn broadcast_bytes(mut self, bytes: u64) -> Self {
        self.broadcast_bytes = bytes;
        self
    }

    /// Smallest packet, in items (the last packet may be smaller). Default: 1.
    pub fn min_packet(mut self, items: u64) -> Self {
        self.min_packet = items;
        self
    }

    /// Largest packet, in items. Default: unlimited.
    pub fn max_packet(mut self, items: u64) -> Self {
        self.max_packet = items;
        self
    }

    /// Run every packet on `copies` devices of distinct nodes and commit the majority
    /// result by digest. Default: 1 (no redundancy).
    pub fn redundancy(mut self, copies: u32) -> Self {
        self.redundancy = copies;
        self
    }

    /// Duplicate straggling packets on idle devices near the end of the job, first result
    /// wins. Needs callers that keep each device's result apart until
    /// [`crate::Decision::Commit`]; turn it off for runners that write in place.
    /// Default: `true`. Ignored when `redundancy > 1`.
    pub fn speculation(mut self, on: bool) -> Self {
        self.speculation = on;
        self
    }

    /// Guided self-scheduling divisor: a device takes `remaining × its share of the total
    /// speed / n` items, so larger values give more, smaller packets. Default: 3.
    pub fn target_packets_per_device(mut self, n: f64) -> Self {
        self.packets_per_device = n;
        self
    }

    /// Size of the first packet given to a device that joined without a rate estimate.
    /// Default: `items / 65536`, and at most `items / (64 × devices)` when more than 1024
    /// devices have joined (a device far slower than the others must still finish its
    /// blind first packet early in the job), within the packet bounds.
    pub fn calibration_items(mut self, items: u64) -> Self {
        self.calibration_items = Some(items);
        self
    }

    /// Shortest packet in estimated µs of compute on its device, so that per-packet
    /// overheads stay small. Default: 20 × the device's per-packet overhead, at least 50.
    pub fn min_packet_us(mut self, micros: f64) -> Self {
        self.min_packet_us = Some(micros);
        self
    }

    /// Checks that the tunables are consistent.
    pub fn validate(&self) -> Result<(), JobSpecError> {
        if self.redundancy == 0 {
            return Err(JobSpecError::ZeroRedundancy);
        }
        if self.max_packet == 0 {
            return Err(JobSpecError::ZeroMaxPacket);
        }
        if self.min_packet > self.max_packet {
            return Err(JobSpecError::PacketBounds {
                min: self.min_packet,
                max: self.max_packet,
            });
        }
        if !(self.packets_per_device.is_finite() && self.packets_per_device >= 1.0) {
            return Err(JobSpecError::PacketsPerDevice(self.packets_per_device));
        }
        Ok(())
    }

    /// The spec with inconsistent tunables replaced by the nearest valid values.
    pub(crate) fn normalized(mut self) -> Self {
        self.redundancy = self.redundancy.max(1);
        self.max_packet = self.max_packet.max(1);
        self.min_packet = self.min_packet.clamp(1, self.max_packet);
        if !(self.packets_per_device.is_finite() && self.packets_per_device >= 1.0) {
            self.packets_per_device = 3.0;
        }
        self
    }

    /// The first packet of an uncalibrated device when `devices` have joined.
    pub(crate) fn calibration_packet(&self, devices: usize) -> u64 {
        let share = self.items / (64 * devices.max(1) as u64);
        self.calibration_items
            .unwrap_or((self.items / 65536).min(share))
            .clamp(self.min_packet, self.max_packet)
    }
}
