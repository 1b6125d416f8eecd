//! [`NodeLink`]: what the scheduler predicts about a remote node's network link.
//!
//! The link is full duplex. Inputs go down in the order packets are issued (one FIFO).
//! Results go up in the order their packets finish computing, which is not the order of
//! issue when the node's devices differ in speed: a fast device's later packet overtakes
//! a slow device's earlier one. So the up direction keeps the predicted uploads of the
//! packets in flight, sorted by predicted end of compute, with the end of each upload in
//! that order; a new packet's upload starts when its compute ends or when the uploads
//! that end compute before it are out, whichever is later. Without this queue a
//! link-bound node looks as if its results came back as soon as they were computed, and
//! the tail of a job on slow links is planned far too early.

use crate::model::RobustLine;
use crate::types::PacketId;

/// A predicted upload of one packet copy's results.
#[derive(Debug, Clone, Copy)]
struct Upload {
    /// Predicted end of the packet's compute, µs.
    compute_end: f64,
    /// Time on the link, µs (bytes / bandwidth; the latency comes after).
    busy: f64,
    packet: PacketId,
    device: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct NodeLink {
    /// µs = latency + slope × bytes, one way.
    pub(crate) model: RobustLine,
    /// Predicted time the down direction has sent every input issued so far.
    pub(crate) down_free: f64,
    /// Uploads of the packets in flight, by predicted end of compute.
    ups: Vec<Upload>,
    /// `ends[i]`: predicted end of `ups[i]` when uploads go in that order.
    ends: Vec<f64>,
}

impl NodeLink {
    pub(crate) fn new(model: RobustLine) -> Self {
        NodeLink {
            model,
            down_free: 0.0,
            ups: Vec::new(),
            ends: Vec::new(),
        }
    }

    /// Predicted end of an upload of `busy` µs whose compute ends at `compute_end`.
    pub(crate) fn upload_end(&self, compute_end: f64, busy: f64) -> f64 {
        let k = self.ups.partition_point(|u| u.compute_end <= compute_end);
        let free = if k > 0 { self.ends[k - 1] } else { 0.0 };
        compute_end.max(free) + busy
    }

    /// Books the upload of `packet` on `device`.
    pub(crate) fn book(&mut self, packet: PacketId, device: usize, compute_end: f64, busy: f64) {
        let k = self.ups.partition_point(|u| u.compute_end <= compute_end);
        self.ups.insert(
            k,
            Upload {
                compute_end,
                busy,
                packet,
                device,
            },
        );
        self.ends.insert(k, 0.0);
        self.reflow(k);
    }

    /// Removes the upload of `packet` on `device` (its result arrived, or the copy ended).
    pub(crate) fn release(&mut self, packet: PacketId, device: usize) {
        if let Some(k) = self
            .ups
            .iter()
            .position(|u| u.packet == packet && u.device == device)
        {
            self.ups.remove(k);
            self.ends.remove(k);
            self.reflow(k);
        }
    }

    /// Shifts the predicted compute end of `device`'s booked uploads by `delta` µs (its
    /// queue turned out to run early or late).
    pub(crate) fn shift(&mut self, device: usize, delta: f64) {
        if delta == 0.0 || !self.ups.iter().any(|u| u.device == device) {
            return;
        }
        for u in &mut self.ups {
            if u.device == device {
                u.compute_end += delta;
            }
        }
        self.ups
            .sort_by(|a, b| a.compute_end.total_cmp(&b.compute_end));
        self.reflow(0);
    }

    /// Recomputes the upload ends from position `k` on.
    fn reflow(&mut self, k: usize) {
        let mut free = if k > 0 { self.ends[k - 1] } else { 0.0 };
        for i in k..self.ups.len() {
            free = self.ups[i].compute_end.max(free) + self.ups[i].busy;
            self.ends[i] = free;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_go_in_the_order_compute_ends() {
        let mut link = NodeLink::new(RobustLine::new(0.0, 1.0));
        // A slow device's packet computes until 1000 and uploads for 100.
        link.book(PacketId(0), 0, 1000.0, 100.0);
        // A fast device's later packet computing until 200 goes first, unhindered.
        assert_eq!(link.upload_end(200.0, 50.0), 250.0);
        link.book(PacketId(1), 1, 200.0, 50.0);
        // One that ends compute at 1050 waits for the slow one's upload.
        assert_eq!(link.upload_end(1050.0, 10.0), 1110.0);
        // Three ending compute at 210 queue behind each other.
        link.book(PacketId(2), 1, 210.0, 50.0);
        assert_eq!(link.upload_end(220.0, 50.0), 350.0);
        link.release(PacketId(1), 1);
        assert_eq!(link.upload_end(220.0, 50.0), 310.0);
        link.shift(1, 1000.0);
        assert_eq!(link.upload_end(220.0, 50.0), 270.0);
        assert_eq!(link.upload_end(1300.0, 10.0), 1310.0);
        assert_eq!(link.upload_end(1150.0, 10.0), 1160.0);
    }
}
