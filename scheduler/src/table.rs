//! [`PacketTable`]: the scheduler's packets by id, in O(1).
//!
//! Packet ids are handed out in increasing order and most packets end soon after later
//! ones start, so the live ids form a window `base..next` with a few holes. A deque
//! indexed by `id - base` replaces a `BTreeMap` (whose lookups, inserts and removals were
//! a large part of the scheduler's cost per decision at 1000 devices). The window's length
//! is bounded by the ids issued since the oldest live packet: a packet stuck on a device
//! keeps the window from moving, at one empty slot (a few dozen bytes) per packet issued
//! meanwhile.

use std::collections::VecDeque;

use crate::types::PacketId;

#[derive(Debug, Clone)]
pub(crate) struct PacketTable<T> {
    /// Id of `slots[0]`.
    base: u64,
    slots: VecDeque<Option<T>>,
    len: usize,
}

impl<T> PacketTable<T> {
    pub(crate) fn new() -> Self {
        PacketTable {
            base: 0,
            slots: VecDeque::new(),
            len: 0,
        }
    }

    fn index(&self, id: PacketId) -> Option<usize> {
        let i = id.0.checked_sub(self.base)?;
        (i < self.slots.len() as u64).then_some(i as usize)
    }

    pub(crate) fn get(&self, id: &PacketId) -> Option<&T> {
        self.slots.get(self.index(*id)?)?.as_ref()
    }

    pub(crate) fn get_mut(&mut self, id: &PacketId) -> Option<&mut T> {
        let i = self.index(*id)?;
        self.slots.get_mut(i)?.as_mut()
    }

    /// Inserts `value` under `id`, which must not be below any id inserted before (the
    /// scheduler's ids increase); returns `false` and stores nothing otherwise.
    pub(crate) fn insert(&mut self, id: PacketId, value: T) -> bool {
        if self.slots.is_empty() {
            self.base = id.0;
        }
        let Some(i) = id.0.checked_sub(self.base) else {
            return false;
        };
        let i = i as usize;
        if i < self.slots.len() {
            return false;
        }
        while self.slots.len() < i {
            self.slots.push_back(None);
        }
        self.slots.push_back(Some(value));
        self.len += 1;
        true
    }

    pub(crate) fn remove(&mut self, id: &PacketId) -> Option<T> {
        let i = self.index(*id)?;
        let value = self.slots.get_mut(i)?.take()?;
        self.len -= 1;
        // Drop the empty slots at the front so that the window follows the live ids.
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
        Some(value)
    }

    /// Number of live packets.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Live ids in increasing order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = PacketId> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| PacketId(self.base + i as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_map_over_increasing_ids() {
        let mut t = PacketTable::new();
        for i in 0..10 {
            assert!(t.insert(PacketId(i), i * 10));
        }
        assert_eq!(t.remove(&PacketId(3)), Some(30));
        assert_eq!(t.remove(&PacketId(0)), Some(0));
        assert_eq!(t.remove(&PacketId(0)), None);
        assert_eq!(t.get(&PacketId(4)), Some(&40));
        assert_eq!(t.get(&PacketId(3)), None);
        assert_eq!(t.get(&PacketId(99)), None);
        assert_eq!(t.len(), 8);
        let keys: Vec<u64> = t.keys().map(|k| k.0).collect();
        assert_eq!(keys, [1, 2, 4, 5, 6, 7, 8, 9]);
        assert!(
            !t.insert(PacketId(5), 0),
            "ids below the last must be refused"
        );
        for i in [1, 2, 4, 5, 6, 7, 8, 9] {
            assert!(t.remove(&PacketId(i)).is_some());
        }
        assert_eq!(t.len(), 0);
        // An empty table restarts its window at the next id.
        assert!(t.insert(PacketId(1_000_000), 1));
        assert_eq!(t.get(&PacketId(1_000_000)), Some(&1));
        assert_eq!(t.slots.len(), 1);
    }
}
