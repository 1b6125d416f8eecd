//! Buffer files of `offload run`: inputs read no further than they must be long, and
//! outputs staged beside their destination and renamed into place only when the whole
//! job succeeded, so that a failure at any point leaves every file as it was.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use offload::{describe_bytes, Buffer};

/// An output file to be: a temporary file created now beside the destination (which
/// proves the folder exists and is writable before anything runs), renamed over the
/// destination by [`commit_outputs`].
pub struct StagedOutput {
    /// Where the result goes (a symbolic link's target, so the link stays a link).
    destination: PathBuf,
    /// As the user wrote it, for messages.
    shown: PathBuf,
    temp: tempfile::NamedTempFile,
}

impl StagedOutput {
    /// Stages an output for `path`; `what` names it in messages (`buffer `y``).
    pub fn new(path: &Path, what: &str) -> anyhow::Result<StagedOutput> {
        let destination = match std::fs::canonicalize(path) {
            Ok(resolved) => resolved,
            Err(_) => path.to_path_buf(),
        };
        if destination.is_dir() {
            bail!(
                "cannot write {what} to {}: it is a directory",
                path.display()
            );
        }
        let folder = match destination.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let temp = tempfile::Builder::new()
            .prefix(".offload-")
            .suffix(".tmp")
            .tempfile_in(&folder)
            .map_err(|e| {
                let why = match e.kind() {
                    std::io::ErrorKind::NotFound => "does not exist".to_string(),
                    std::io::ErrorKind::PermissionDenied => "is not writable".to_string(),
                    kind => format!("cannot take a new file ({kind})"),
                };
                anyhow::anyhow!(
                    "cannot write {what} to {}: the folder {} {why}; nothing was run",
                    path.display(),
                    folder.display()
                )
            })?;
        Ok(StagedOutput {
            destination,
            shown: path.to_path_buf(),
            temp,
        })
    }

    /// The destination, resolved.
    pub fn destination(&self) -> &Path {
        &self.destination
    }
}

/// Writes every output's bytes to its staged file and flushes them to disk; only when
/// all of them are written are they renamed into place (a rename within a folder is
/// atomic), so an error while writing leaves every destination as it was.
pub fn commit_outputs(outputs: Vec<(StagedOutput, &[u8])>) -> anyhow::Result<()> {
    let mut ready = Vec::with_capacity(outputs.len());
    for (mut staged, bytes) in outputs {
        let shown = staged.shown.display().to_string();
        let file = staged.temp.as_file_mut();
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {shown}; no output file was changed"))?;
        // A replaced file keeps its permissions.
        if let Ok(meta) = std::fs::metadata(&staged.destination) {
            let _ = file.set_permissions(std::fs::Permissions::from_mode(
                meta.permissions().mode() & 0o7777,
            ));
        }
        ready.push(staged);
    }
    for staged in ready {
        let shown = staged.shown.display().to_string();
        staged
            .temp
            .persist(&staged.destination)
            .map_err(|e| e.error)
            .with_context(|| format!("cannot replace {shown}"))?;
    }
    Ok(())
}

/// What an input file must hold.
pub enum Expected {
    /// Exactly this many bytes (split and sum buffers: the manifest and `--items` say).
    Exactly(u64),
    /// A whole number of elements of this size, at most `limit` bytes in all.
    Elements { size: u64, limit: u64 },
}

/// Reads buffer `name` from `path`, never reading more than `expected` allows: a
/// device or an endless pipe is cut off, not read until memory runs out. `spec` is the
/// argument as the manifest spells it, for messages.
pub fn read_input(
    path: &Path,
    name: &str,
    spec: &str,
    expected: Expected,
    items: u64,
) -> anyhow::Result<Buffer> {
    let context = || format!("cannot read buffer `{name}` from {}", path.display());
    let file = File::open(path).with_context(context)?;
    let meta = file.metadata().with_context(context)?;
    if meta.is_dir() {
        bail!(
            "cannot read buffer `{name}` from {}: it is a directory",
            path.display()
        );
    }
    let regular = meta.is_file().then_some(meta.len());
    let limit = match expected {
        Expected::Exactly(bytes) => {
            if let Some(len) = regular.filter(|&len| len != bytes) {
                bail!(
                    "buffer `{name}` (`{spec}`) must be {bytes} bytes for {items} items, but {} has {len} bytes",
                    path.display()
                );
            }
            bytes
        }
        Expected::Elements { limit, .. } => {
            if let Some(len) = regular.filter(|&len| len > limit) {
                bail!(
                    "buffer `{name}` from {} is {} ({len} bytes), more than this machine can hold ({})",
                    path.display(),
                    describe_bytes(len),
                    describe_bytes(limit)
                );
            }
            regular.unwrap_or(limit)
        }
    };
    let mut reader = file.take(limit.saturating_add(1));
    let (buffer, got) = match regular {
        // The usual case: the size is known, so the bytes go straight into the buffer.
        Some(len) => {
            let mut buffer = usize::try_from(len)
                .ok()
                .and_then(Buffer::try_zeroed)
                .with_context(|| {
                    format!(
                        "cannot allocate {} for buffer `{name}`",
                        describe_bytes(len)
                    )
                })?;
            reader
                .read_exact(buffer.as_bytes_mut())
                .with_context(context)?;
            // A file that grew since it was measured holds more than it should.
            let mut extra = [0u8; 1];
            let more = reader.read(&mut extra).with_context(context)? as u64;
            (buffer, len + more)
        }
        // A pipe or a device: read what comes, up to one byte past the limit.
        None => {
            let mut bytes = Vec::new();
            reader.read_to_end(&mut bytes).with_context(context)?;
            let got = bytes.len() as u64;
            (Buffer::from_bytes(&bytes), got)
        }
    };
    match expected {
        Expected::Exactly(want) if got > want => bail!(
            "buffer `{name}` (`{spec}`) must be {want} bytes for {items} items, but {} holds more",
            path.display()
        ),
        Expected::Exactly(want) if got < want => bail!(
            "buffer `{name}` (`{spec}`) must be {want} bytes for {items} items, but {} holds {got}",
            path.display()
        ),
        Expected::Elements { limit, .. } if got > limit => bail!(
            "buffer `{name}` from {} is more than this machine can hold ({})",
            path.display(),
            describe_bytes(limit)
        ),
        Expected::Elements { size, .. } if got % size != 0 => bail!(
            "buffer `{name}` (`{spec}`) must be a whole number of {size}-byte elements, but {} holds {got} bytes",
            path.display()
        ),
        _ => {}
    }
    Ok(buffer)
}
