//! The on-disk code cache: one verified file per compiled kernel, in a directory only
//! this user can write.
//!
//! An entry `DIR/<key>.so` is the linked shared library followed by a trailer that names
//! the entry's key and carries a blake3 digest of the library bytes:
//!
//! ```text
//! library bytes | key (64 hex digits) | blake3(library) (32) | library length (u64 LE)
//!               | TRAILER_VERSION (u32 LE) | b"OFLDJIT\0"
//! ```
//!
//! Nothing found in the directory is trusted: the directory must belong to this user and
//! not be writable by group or others (else the cache refuses, naming the fix); an entry
//! must be a regular file of this user, not writable by others, whose trailer names the
//! key it was asked for (so another kernel's entry renamed into place is refused) and
//! whose digest matches. A damaged entry is reported and compiled again. The bytes that
//! were checked are the bytes that are loaded ([`crate::loader`]): there is no window in
//! which the file could be swapped between the check and `dlopen`.
//!
//! Entries are written to a temporary file in the directory and renamed into place, so
//! concurrent processes see no entry or a whole one, and two that compile the same key
//! at once both end with a valid entry. The directory is kept under a size cap by
//! removing the least recently used entries (a hit refreshes an entry's time).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::JitError;

const TRAILER_MAGIC: &[u8; 8] = b"OFLDJIT\0";
const TRAILER_VERSION: u32 = 1;
const KEY_LEN: usize = 64;
const TRAILER_LEN: usize = KEY_LEN + 32 + 8 + 4 + TRAILER_MAGIC.len();

/// Entries larger than this are not kernel libraries; they are refused before reading.
const MAX_ENTRY_BYTES: u64 = 256 << 20;

/// What a lookup found.
pub(crate) enum Lookup {
    /// A verified entry: the library's bytes.
    Hit(Vec<u8>),
    /// No entry under this key.
    Miss,
    /// An entry that failed verification, and why; it will be replaced.
    Damaged(String),
}

/// A cache directory that has been checked to be private to this user.
#[derive(Debug)]
pub(crate) struct DiskCache {
    dir: PathBuf,
    cap_bytes: u64,
}

impl DiskCache {
    /// Opens (creating it with mode 0700 if missing) the cache directory `dir`, after
    /// checking that it is this user's and not writable by anyone else.
    pub(crate) fn open(dir: &Path, cap_bytes: u64) -> Result<DiskCache, JitError> {
        ensure_private_dir(dir)?;
        Ok(DiskCache {
            dir: dir.to_path_buf(),
            cap_bytes,
        })
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `key`'s entry.
    pub(crate) fn entry_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.so"))
    }

    /// Looks `key` up and verifies what it finds.
    pub(crate) fn lookup(&self, key: &str) -> Lookup {
        let path = self.entry_path(key);
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => return Lookup::Damaged(format!("cannot open it: {e}")),
        };
        match read_verified(file, key) {
            Ok(library) => {
                // The time of last use drives eviction; failing to set it is harmless.
                if let Ok(file) = File::options().write(true).open(&path) {
                    let _ = file.set_modified(SystemTime::now());
                }
                Lookup::Hit(library)
            }
            Err(reason) => Lookup::Damaged(reason),
        }
    }

    /// Stores `library` under `key` (atomically) and keeps the directory under its cap.
    /// Returns the entry's path.
    pub(crate) fn store(&self, key: &str, library: &[u8]) -> Result<PathBuf, JitError> {
        let path = self.entry_path(key);
        let cache_err = |source| JitError::Cache {
            path: path.display().to_string(),
            source,
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".entry-")
            .tempfile_in(&self.dir)
            .map_err(cache_err)?;
        tmp.write_all(library).map_err(cache_err)?;
        tmp.write_all(&trailer(key, library)).map_err(cache_err)?;
        tmp.persist(&path).map_err(|e| cache_err(e.error))?;
        self.evict_over_cap(&path);
        Ok(path)
    }

    /// Removes the least recently used entries (never `keep`) until the entries fit in
    /// the cap. Errors only leave entries in place.
    fn evict_over_cap(&self, keep: &Path) {
        let Ok(listing) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<(SystemTime, u64, PathBuf)> = listing
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "so"))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
        if total <= self.cap_bytes {
            return;
        }
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.cap_bytes {
                break;
            }
            if path == keep {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                tracing::debug!("code cache: evicted {}", path.display());
                total = total.saturating_sub(len);
            }
        }
    }
}

/// Reads the entry at `path` (not through a link) and checks it names `key` with a
/// matching digest, as a lookup does; returns the library bytes.
pub(crate) fn read_entry(path: &Path, key: &str) -> Result<Vec<u8>, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("cannot open it: {e}"))?;
    read_verified(file, key)
}

/// Reads an opened entry and checks it is this user's, private, and names `key` with a
/// matching digest; returns the library bytes.
fn read_verified(mut file: File, key: &str) -> Result<Vec<u8>, String> {
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat it: {e}"))?;
    if !meta.is_file() {
        return Err("it is not a regular file".into());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!(
            "it belongs to user {} (this process runs as user {me})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "it is writable by others (mode {:o})",
            meta.mode() & 0o777
        ));
    }
    if meta.len() > MAX_ENTRY_BYTES {
        return Err(format!(
            "it is {} bytes, too large to be a kernel",
            meta.len()
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    let Some(body_len) = bytes.len().checked_sub(TRAILER_LEN) else {
        return Err(format!("it is truncated ({} bytes)", bytes.len()));
    };
    let (library, trailer) = bytes.split_at(body_len);
    let (stored_key, rest) = trailer.split_at(KEY_LEN);
    let (digest, rest) = rest.split_at(32);
    let (length, rest) = rest.split_at(8);
    let (version, magic) = rest.split_at(4);
    if magic != TRAILER_MAGIC {
        return Err("it is truncated or not an offload cache entry".into());
    }
    if version != TRAILER_VERSION.to_le_bytes() {
        return Err("it was written by another version of offload".into());
    }
    if length != (library.len() as u64).to_le_bytes() {
        return Err("its length does not match its trailer".into());
    }
    if stored_key != key.as_bytes() {
        return Err("it holds the code of another kernel".into());
    }
    if blake3::hash(library).as_bytes() != digest {
        return Err("its contents do not match their digest".into());
    }
    bytes.truncate(body_len);
    Ok(bytes)
}

fn trailer(key: &str, library: &[u8]) -> Vec<u8> {
    let mut trailer = Vec::with_capacity(TRAILER_LEN);
    let mut key_bytes = [b'0'; KEY_LEN];
    let n = key.len().min(KEY_LEN);
    key_bytes[..n].copy_from_slice(&key.as_bytes()[..n]);
    trailer.extend_from_slice(&key_bytes);
    trailer.extend_from_slice(blake3::hash(library).as_bytes());
    trailer.extend_from_slice(&(library.len() as u64).to_le_bytes());
    trailer.extend_from_slice(&TRAILER_VERSION.to_le_bytes());
    trailer.extend_from_slice(TRAILER_MAGIC);
    trailer
}

/// Creates `dir` (mode 0700) if it is missing, then checks that it is a directory of
/// this user that nobody else can write to. A directory others can write to is refused,
/// never repaired: code may already have been planted in it.
pub fn ensure_private_dir(dir: &Path) -> Result<(), JitError> {
    use std::os::unix::fs::DirBuilderExt;
    let unsafe_dir = |reason: String| JitError::UnsafeCache {
        path: dir.display().to_string(),
        reason,
    };
    match std::fs::metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| JitError::Cache {
                    path: dir.display().to_string(),
                    source,
                })?;
        }
        Err(source) => {
            return Err(JitError::Cache {
                path: dir.display().to_string(),
                source,
            })
        }
    }
    let meta = std::fs::metadata(dir).map_err(|source| JitError::Cache {
        path: dir.display().to_string(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(unsafe_dir("it is not a directory".into()));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(unsafe_dir(format!(
            "it belongs to user {}, not to this user ({me}); use a cache directory of your own (--cache-dir or OFFLOAD_CACHE_DIR)",
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        let who = if mode & 0o002 != 0 {
            "everyone"
        } else {
            "its group"
        };
        return Err(unsafe_dir(format!(
            "it is writable by {who} (mode {mode:o}), so another user could plant code in it; make it private (`chmod 700 {}`) or use another cache directory",
            dir.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> (tempfile::TempDir, DiskCache) {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = DiskCache::open(&dir.path().join("jit"), 1 << 30).expect("open");
        (dir, cache)
    }

    fn key(n: u8) -> String {
        format!("{:064x}", n)
    }

    #[test]
    fn a_stored_entry_comes_back_verified() {
        let (_dir, cache) = cache();
        cache.store(&key(1), b"library bytes").expect("store");
        match cache.lookup(&key(1)) {
            Lookup::Hit(bytes) => assert_eq!(bytes, b"library bytes"),
            _ => panic!("expected a hit"),
        }
        assert!(matches!(cache.lookup(&key(2)), Lookup::Miss));
    }

    fn damaged(cache: &DiskCache, key: &str) -> String {
        match cache.lookup(key) {
            Lookup::Damaged(reason) => reason,
            Lookup::Hit(_) => panic!("a damaged entry was accepted"),
            Lookup::Miss => panic!("the entry was not found"),
        }
    }

    #[test]
    fn truncated_flipped_and_substituted_entries_are_refused() {
        let (_dir, cache) = cache();
        let path = cache.store(&key(1), &[7u8; 4096]).expect("store");
        let whole = std::fs::read(&path).expect("read");

        std::fs::write(&path, &whole[..whole.len() - 1]).expect("truncate");
        assert!(damaged(&cache, &key(1)).contains("truncated"));

        let mut flipped = whole.clone();
        flipped[100] ^= 1;
        std::fs::write(&path, &flipped).expect("flip");
        assert!(damaged(&cache, &key(1)).contains("digest"));

        // Another kernel's valid entry renamed to this key.
        let other = cache.store(&key(2), &[9u8; 64]).expect("store other");
        std::fs::rename(&other, &path).expect("substitute");
        assert!(damaged(&cache, &key(1)).contains("another kernel"));

        std::fs::write(&path, b"").expect("empty");
        assert!(damaged(&cache, &key(1)).contains("truncated"));
    }

    #[test]
    fn entries_writable_by_others_and_links_are_refused() {
        let (_dir, cache) = cache();
        let path = cache.store(&key(1), b"code").expect("store");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        assert!(damaged(&cache, &key(1)).contains("writable by others"));
        std::fs::remove_file(&path).expect("remove");
        let elsewhere = cache.dir().join("elsewhere");
        std::fs::write(&elsewhere, b"x").expect("write");
        std::os::unix::fs::symlink(&elsewhere, &path).expect("symlink");
        assert!(damaged(&cache, &key(1)).contains("cannot open"));
    }

    #[test]
    fn directories_others_can_write_are_refused_not_repaired() {
        let dir = tempfile::tempdir().expect("temp dir");
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).expect("mkdir");
        for mode in [0o777, 0o775, 0o1777] {
            std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(mode))
                .expect("chmod");
            let err = DiskCache::open(&shared, 1 << 30).expect_err("must refuse");
            assert!(err.to_string().contains("writable by"), "{err}");
            let still = std::fs::metadata(&shared)
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(still & 0o7777, mode, "the mode was changed");
        }
        let file = dir.path().join("file");
        std::fs::write(&file, b"").expect("write");
        assert!(DiskCache::open(&file, 1 << 30).is_err());
    }

    #[test]
    fn a_missing_directory_is_created_private() {
        let dir = tempfile::tempdir().expect("temp dir");
        let nested = dir.path().join("a/b/jit");
        DiskCache::open(&nested, 1 << 30).expect("open");
        let mode = std::fs::metadata(&nested)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn the_least_recently_used_entries_go_first_under_the_cap() {
        let dir = tempfile::tempdir().expect("temp dir");
        let entry = 1000 + TRAILER_LEN as u64;
        let cache = DiskCache::open(&dir.path().join("jit"), 3 * entry).expect("open");
        let old = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        for n in 1..=3u8 {
            let path = cache.store(&key(n), &[n; 1000]).expect("store");
            let when = old + std::time::Duration::from_secs(u64::from(n));
            File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(when))
                .expect("set time");
        }
        // Using entry 1 makes entry 2 the least recently used.
        assert!(matches!(cache.lookup(&key(1)), Lookup::Hit(_)));
        cache.store(&key(4), &[4; 1000]).expect("store");
        assert!(matches!(cache.lookup(&key(2)), Lookup::Miss));
        for n in [1, 3, 4] {
            assert!(matches!(cache.lookup(&key(n)), Lookup::Hit(_)), "{n}");
        }
    }
}
