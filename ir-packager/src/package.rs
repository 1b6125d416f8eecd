//! The package file: a versioned header, then the bincode-encoded body.
//!
//! Layout: `b"OKPKG\0"`, the format version as a little-endian `u16`, then the body
//! (provenance, manifest, bitcode) encoded with bincode's standard configuration. The
//! package's identity is the blake3 hash of the whole file, so two packages with the same
//! hash are byte-for-byte the same artifact.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::manifest::{Manifest, ManifestError};

/// Magic bytes at the start of every package file.
pub const MAGIC: &[u8; 6] = b"OKPKG\0";

/// The package format this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// Packages larger than this are refused before decoding (bitcode of kernels is small;
/// the limit stops a hostile length prefix from allocating without bound).
pub const MAX_PACKAGE_BYTES: usize = 256 << 20;

/// A version of LLVM, as `major.minor.patch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LlvmVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
}

impl fmt::Display for LlvmVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// What kind of source a package was made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SourceKind {
    /// A `#![no_std]` Rust file compiled by rustc.
    Rust,
    /// A C file compiled by clang.
    C,
    /// Textual LLVM IR.
    LlvmIr,
    /// LLVM bitcode.
    Bitcode,
}

impl SourceKind {
    /// Chooses the kind from a file extension (`rs`, `c`, `ll`, `bc`).
    pub fn from_extension(ext: &str) -> Option<SourceKind> {
        match ext {
            "rs" => Some(SourceKind::Rust),
            "c" => Some(SourceKind::C),
            "ll" => Some(SourceKind::LlvmIr),
            "bc" => Some(SourceKind::Bitcode),
            _ => None,
        }
    }
}

/// Where a package came from: recorded so a node can say why it refuses one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Provenance {
    /// File name of the source (no directories).
    pub source_name: String,
    /// Source language.
    pub source_kind: SourceKind,
    /// The front end that made the bitcode, e.g. `rustc 1.95.0 (LLVM 22.1.2)`.
    pub front_end: String,
    /// The LLVM that wrote the package's bitcode (the packager's own). A node whose LLVM
    /// is older cannot read it.
    pub llvm_version: LlvmVersion,
    /// The packager that wrote the package.
    pub packager: String,
    /// The target triple the front end compiled for; nodes retarget to their own.
    pub origin_triple: String,
}

/// The blake3 hash of a package file: its content address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PackageHash(pub [u8; 32]);

impl PackageHash {
    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for PackageHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PackageHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackageHash({})", self.to_hex())
    }
}

/// A validated kernel package: bitcode, the manifest that describes its kernels, and
/// its provenance. Immutable; its [`hash`](Package::hash) identifies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    body: PackageBody,
    bytes: Vec<u8>,
    hash: PackageHash,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct PackageBody {
    provenance: Provenance,
    manifest: Manifest,
    bitcode: Vec<u8>,
}

/// A package file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The magic bytes are missing.
    #[error("not an offload package (missing the OKPKG header)")]
    NotAPackage,
    /// Written by a different format version.
    #[error(
        "package format version {found} is not supported (this offload reads version {supported})"
    )]
    UnsupportedVersion {
        /// The version in the file.
        found: u16,
        /// The version this build reads.
        supported: u16,
    },
    /// Larger than [`MAX_PACKAGE_BYTES`].
    #[error("package is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The body does not decode.
    #[error("package is corrupt: {0}")]
    Corrupt(String),
    /// The body decodes, but its manifest breaks the rules.
    #[error("package manifest is invalid: {0}")]
    Manifest(#[from] ManifestError),
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_PACKAGE_BYTES>()
}

impl Package {
    /// Assembles a package from parts. The bitcode must already be validated and
    /// canonical; [`crate::package_source`] is the usual way to get one.
    pub(crate) fn assemble(
        provenance: Provenance,
        manifest: Manifest,
        bitcode: Vec<u8>,
    ) -> Result<Package, FormatError> {
        let body = PackageBody {
            provenance,
            manifest,
            bitcode,
        };
        let mut bytes = Vec::with_capacity(body.bitcode.len() + 1024);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        let encoded = bincode::serde::encode_to_vec(&body, bincode_config())
            .map_err(|e| FormatError::Corrupt(e.to_string()))?;
        bytes.extend_from_slice(&encoded);
        let hash = PackageHash(*blake3::hash(&bytes).as_bytes());
        Ok(Package { body, bytes, hash })
    }

    /// Decodes a package file's bytes, checking header, version, size and manifest.
    /// The bitcode is checked when it is loaded ([`crate::load_module`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Package, FormatError> {
        if bytes.len() > MAX_PACKAGE_BYTES {
            return Err(FormatError::TooLarge {
                size: bytes.len(),
                limit: MAX_PACKAGE_BYTES,
            });
        }
        let header_len = MAGIC.len() + 2;
        if bytes.len() < header_len || &bytes[..MAGIC.len()] != MAGIC {
            return Err(FormatError::NotAPackage);
        }
        let version = u16::from_le_bytes([bytes[MAGIC.len()], bytes[MAGIC.len() + 1]]);
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let (body, used): (PackageBody, usize) =
            bincode::serde::decode_from_slice(&bytes[header_len..], bincode_config())
                .map_err(|e| FormatError::Corrupt(e.to_string()))?;
        if header_len + used != bytes.len() {
            return Err(FormatError::Corrupt(format!(
                "{} trailing bytes after the package body",
                bytes.len() - header_len - used
            )));
        }
        body.manifest.check()?;
        let hash = PackageHash(*blake3::hash(bytes).as_bytes());
        Ok(Package {
            body,
            bytes: bytes.to_vec(),
            hash,
        })
    }

    /// Reads and decodes a package file.
    pub fn read(path: &Path) -> Result<Package, FormatError> {
        let bytes = std::fs::read(path).map_err(|source| FormatError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Package::from_bytes(&bytes)
    }

    /// Writes the package file (atomically: a temporary file renamed into place).
    pub fn write(&self, path: &Path) -> Result<(), FormatError> {
        let io_err = |source| FormatError::Io {
            path: path.display().to_string(),
            source,
        };
        let tmp = path.with_extension("okp.tmp");
        std::fs::write(&tmp, &self.bytes).map_err(io_err)?;
        std::fs::rename(&tmp, path).map_err(io_err)
    }

    /// The encoded file.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The content address.
    pub fn hash(&self) -> PackageHash {
        self.hash
    }

    /// The kernels.
    pub fn manifest(&self) -> &Manifest {
        &self.body.manifest
    }

    /// Where it came from.
    pub fn provenance(&self) -> &Provenance {
        &self.body.provenance
    }

    /// The canonical LLVM bitcode.
    pub fn bitcode(&self) -> &[u8] {
        &self.body.bitcode
    }
}
