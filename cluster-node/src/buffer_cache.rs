//! The node's cache of whole buffers, keyed by the hash their uploader announced.
//!
//! Hashing every byte as it arrives took a third of a node's time at full link speed, so
//! the node does not: an upload is trusted under its announced hash by the connection
//! that sent it (a member lying about its own buffers only spoils its own jobs), and is
//! hashed once, by [`usable`], before any other connection may use it. A buffer that
//! does not match is dropped there, so one member's lie never reaches another's job.
//!
//! The cache is bounded: above its capacity the least recently used buffers that no
//! prepared job holds are let go ([`lru_victims`], which the package cache uses too).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cluster::protocol::Hash;

/// Names one accepted connection for the life of the node (never reused).
pub(crate) type ConnectionId = u64;

/// Whole buffers by announced hash.
#[derive(Default)]
pub(crate) struct BufferCache {
    entries: HashMap<Hash, Entry>,
    bytes: usize,
    /// Counts lookups and inserts, for least-recently-used eviction.
    clock: u64,
}

struct Entry {
    bytes: Arc<Vec<u8>>,
    /// The connection that uploaded it, until hashing confirmed the announced hash.
    unchecked_from: Option<ConnectionId>,
    used: u64,
}

/// The keys to drop so that `bytes` more fit under `capacity`, least recently used
/// first, given each entry's `(key, last use, size, in use)`; entries in use are kept
/// even when that leaves the cache over capacity (a prepared job needs them). Also the
/// policy of the node's package cache.
pub(crate) fn lru_victims<K: Copy>(
    entries: impl Iterator<Item = (K, u64, usize, bool)>,
    held: usize,
    bytes: usize,
    capacity: usize,
) -> Vec<K> {
    let mut total = held.saturating_add(bytes);
    if total <= capacity {
        return Vec::new();
    }
    let mut candidates: Vec<(u64, usize, K)> = entries
        .filter(|(_, _, _, in_use)| !in_use)
        .map(|(key, used, size, _)| (used, size, key))
        .collect();
    candidates.sort_by_key(|(used, _, _)| *used);
    let mut victims = Vec::new();
    for (_, size, key) in candidates {
        if total <= capacity {
            break;
        }
        total = total.saturating_sub(size);
        victims.push(key);
    }
    victims
}

/// What a connection may do with a cached buffer.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// Use it: it was checked, or this connection uploaded it.
    Usable(Arc<Vec<u8>>),
    /// Another connection uploaded it and nobody has hashed it yet.
    Unchecked(Arc<Vec<u8>>),
    /// Not cached.
    Missing,
}

impl BufferCache {
    /// How a connection `asking` may use the buffer under `hash` (a use, for eviction).
    pub(crate) fn lookup(&mut self, hash: &Hash, asking: ConnectionId) -> Lookup {
        self.clock += 1;
        match self.entries.get_mut(hash) {
            None => Lookup::Missing,
            Some(entry) => {
                entry.used = self.clock;
                match entry.unchecked_from {
                    Some(from) if from != asking => Lookup::Unchecked(Arc::clone(&entry.bytes)),
                    _ => Lookup::Usable(Arc::clone(&entry.bytes)),
                }
            }
        }
    }

    /// Stores `bytes` uploaded by connection `from` under the hash it announced, and
    /// returns the buffers the cache let go of (for reuse). Above `capacity` bytes the
    /// least recently used buffers that no prepared job holds go first. A checked buffer
    /// is kept over an unchecked upload of the same hash: for an honest uploader the two
    /// are equal.
    pub(crate) fn insert(
        &mut self,
        hash: Hash,
        bytes: Vec<u8>,
        from: ConnectionId,
        capacity: usize,
    ) -> Vec<Arc<Vec<u8>>> {
        if self
            .entries
            .get(&hash)
            .is_some_and(|held| held.unchecked_from.is_none())
        {
            return vec![Arc::new(bytes)];
        }
        let mut released = Vec::new();
        let replaced = self.entries.get(&hash).map_or(0, |e| e.bytes.len());
        let victims = lru_victims(
            self.entries
                .iter()
                .filter(|(key, _)| **key != hash)
                .map(|(key, e)| (*key, e.used, e.bytes.len(), Arc::strong_count(&e.bytes) > 1)),
            self.bytes - replaced,
            bytes.len(),
            capacity,
        );
        for victim in victims {
            if let Some(entry) = self.entries.remove(&victim) {
                self.bytes -= entry.bytes.len();
                released.push(entry.bytes);
            }
        }
        self.bytes += bytes.len();
        self.clock += 1;
        let entry = Entry {
            bytes: Arc::new(bytes),
            unchecked_from: Some(from),
            used: self.clock,
        };
        if let Some(old) = self.entries.insert(hash, entry) {
            self.bytes -= old.bytes.len();
            released.push(old.bytes);
        }
        released
    }

    /// Records the outcome of hashing `bytes`, the buffer cached under `hash` when the
    /// check began: marks it checked if it `matches`, drops it if not. An entry
    /// replaced meanwhile is left alone.
    fn checked(&mut self, hash: &Hash, bytes: &Arc<Vec<u8>>, matches: bool) {
        let Some(entry) = self.entries.get_mut(hash) else {
            return;
        };
        if !Arc::ptr_eq(&entry.bytes, bytes) {
            return;
        }
        if matches {
            entry.unchecked_from = None;
        } else if let Some(dropped) = self.entries.remove(hash) {
            self.bytes -= dropped.bytes.len();
        }
    }

    /// The total size of the cached buffers.
    #[cfg(test)]
    fn len_bytes(&self) -> usize {
        self.bytes
    }
}

/// The buffer under `hash` if connection `asking` may use it: its own uploads at once,
/// another connection's after hashing them (once, on a blocking thread) shows they hold
/// what was announced. `None` if it is missing or did not match (then it is dropped and
/// the log names the problem).
pub(crate) async fn usable(
    cache: &Mutex<BufferCache>,
    hash: Hash,
    asking: ConnectionId,
) -> Option<Arc<Vec<u8>>> {
    let unchecked = match lock(cache).lookup(&hash, asking) {
        Lookup::Usable(bytes) => return Some(bytes),
        Lookup::Missing => return None,
        Lookup::Unchecked(bytes) => bytes,
    };
    let hashing = Arc::clone(&unchecked);
    let actual = tokio::task::spawn_blocking(move || *blake3::hash(&hashing).as_bytes())
        .await
        .ok()?;
    let matches = actual == hash;
    lock(cache).checked(&hash, &unchecked, matches);
    if matches {
        tracing::info!(
            "cached buffer {} ({} bytes) checked against its hash: shared with other connections",
            blake3::Hash::from_bytes(hash).to_hex(),
            unchecked.len()
        );
        Some(unchecked)
    } else {
        tracing::warn!(
            "a cached buffer of {} bytes did not match the hash its uploader announced \
             ({}): dropped before another connection could use it",
            unchecked.len(),
            blake3::Hash::from_bytes(hash).to_hex()
        );
        None
    }
}

/// Locks a mutex of the node's shared state; a panic elsewhere while it was held does not
/// make the state unusable (each update is complete before the lock is released).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOM: usize = 1 << 20;

    fn hash(bytes: &[u8]) -> Hash {
        *blake3::hash(bytes).as_bytes()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn an_upload_is_usable_at_once_by_its_own_connection_only() {
        let mut cache = BufferCache::default();
        let bytes = vec![7u8; 1000];
        cache.insert(hash(&bytes), bytes, 1, ROOM);
        assert!(matches!(
            cache.lookup(&hash(&[7u8; 1000]), 1),
            Lookup::Usable(_)
        ));
        assert!(matches!(
            cache.lookup(&hash(&[7u8; 1000]), 2),
            Lookup::Unchecked(_)
        ));
        assert!(matches!(cache.lookup(&[0; 32], 1), Lookup::Missing));
    }

    #[test]
    fn an_honest_upload_is_shared_after_one_check() {
        let cache = Mutex::new(BufferCache::default());
        let bytes: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let announced = hash(&bytes);
        lock(&cache).insert(announced, bytes.clone(), 1, ROOM);
        let got = runtime().block_on(usable(&cache, announced, 2));
        assert_eq!(got.as_deref(), Some(&bytes));
        // Checked now: usable by anyone without hashing again.
        assert!(matches!(
            lock(&cache).lookup(&announced, 3),
            Lookup::Usable(_)
        ));
    }

    #[test]
    fn a_lying_upload_serves_only_its_uploader_and_is_dropped_when_another_asks() {
        let cache = Mutex::new(BufferCache::default());
        let truth = vec![1u8; 4096];
        let announced = hash(&truth);
        lock(&cache).insert(announced, vec![2u8; 4096], 1, ROOM);
        let rt = runtime();
        // The liar's own jobs get what it sent.
        assert_eq!(
            rt.block_on(usable(&cache, announced, 1)).as_deref(),
            Some(&vec![2u8; 4096])
        );
        // Nobody else does, and the lie is gone.
        assert_eq!(rt.block_on(usable(&cache, announced, 2)), None);
        assert!(matches!(
            lock(&cache).lookup(&announced, 1),
            Lookup::Missing
        ));
        assert_eq!(lock(&cache).len_bytes(), 0);
        // An honest upload of the same hash then serves everyone.
        lock(&cache).insert(announced, truth.clone(), 2, ROOM);
        assert_eq!(
            rt.block_on(usable(&cache, announced, 3)).as_deref(),
            Some(&truth)
        );
    }

    #[test]
    fn a_checked_buffer_is_not_replaced_by_an_unchecked_upload() {
        let cache = Mutex::new(BufferCache::default());
        let truth = vec![3u8; 100];
        let announced = hash(&truth);
        lock(&cache).insert(announced, truth.clone(), 1, ROOM);
        assert!(runtime().block_on(usable(&cache, announced, 2)).is_some());
        let released = lock(&cache).insert(announced, vec![4u8; 100], 5, ROOM);
        assert_eq!(released.len(), 1, "the new upload is handed back");
        assert!(matches!(
            lock(&cache).lookup(&announced, 5),
            Lookup::Usable(b) if *b == truth
        ));
    }

    #[test]
    fn the_least_recently_used_buffer_nobody_holds_goes_first() {
        let mut cache = BufferCache::default();
        let (a, b, c) = (vec![1u8; 400], vec![2u8; 400], vec![3u8; 400]);
        assert!(cache.insert(hash(&a), a.clone(), 1, 1000).is_empty());
        assert!(cache.insert(hash(&b), b.clone(), 1, 1000).is_empty());
        // `a` is used again, and a prepared job holds `b`: `c` can only push out `a`...
        let Lookup::Usable(held) = cache.lookup(&hash(&b), 1) else {
            panic!("b is cached")
        };
        assert!(matches!(cache.lookup(&hash(&a), 1), Lookup::Usable(_)));
        let released = cache.insert(hash(&c), c.clone(), 1, 1000);
        assert_eq!(released.len(), 1);
        assert!(matches!(cache.lookup(&hash(&a), 1), Lookup::Missing));
        assert!(matches!(cache.lookup(&hash(&b), 1), Lookup::Usable(_)));
        assert_eq!(cache.len_bytes(), 800);
        // ...and when everything left is held, the cache grows rather than take a
        // buffer from a job.
        let Lookup::Usable(also_held) = cache.lookup(&hash(&c), 1) else {
            panic!("c is cached")
        };
        let d = vec![4u8; 400];
        assert!(cache.insert(hash(&d), d, 1, 1000).is_empty());
        assert_eq!(cache.len_bytes(), 1200);
        drop((held, also_held));
    }

    #[test]
    fn victims_are_chosen_oldest_first_until_the_new_bytes_fit() {
        let entries = [(1u8, 5, 100, false), (2, 1, 100, false), (3, 3, 100, true)];
        assert_eq!(lru_victims(entries.into_iter(), 300, 100, 300), vec![2]);
        assert_eq!(lru_victims(entries.into_iter(), 300, 250, 300), vec![2, 1]);
        assert!(lru_victims(entries.into_iter(), 300, 0, 300).is_empty());
    }
}
