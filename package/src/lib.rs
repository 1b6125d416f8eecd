//! The offload package file, without LLVM: what a node, a cluster client or a disk-cache
//! hit needs to read, check and identify a package (`ir-packager` makes packages from
//! sources and re-exports everything here).
//!
//! A package is a versioned header with a checksum, then the bincode-encoded body.
//!
//! Layout (format version 3): `b"OKPKG\0"`, the format version as a little-endian `u16`,
//! the blake3 hash of the body (32 bytes), then the body (provenance, the manifest as its
//! canonical TOML text, bitcode) encoded with bincode's standard configuration. Keeping
//! the manifest as text means a change of the kernel model's types never changes how a
//! package is encoded, and a package's manifest is parsed and checked by the same code as
//! a manifest file. The checksum is verified before
//! anything of the body is decoded, so a flipped bit is reported as such and never
//! reaches bincode or LLVM's bitcode reader (which can crash on corrupt input). The
//! package's identity is the blake3 hash of the whole file, so two packages with the same
//! hash are byte-for-byte the same artifact.
//!
//! Version 2 (the previous release) stored the manifest as encoded structures of kernel
//! model v1; such files are still read (their manifest is turned into its v1 text and
//! parsed like any manifest) and keep their identity (the hash of the file). Version 1
//! had no checksum; such files are refused with a message that says how to make them
//! again.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use kernel_model::manifest::{Manifest, ManifestError};

/// Magic bytes at the start of every package file.
pub const MAGIC: &[u8; 6] = b"OKPKG\0";

/// The package format this build writes and reads.
pub const FORMAT_VERSION: u16 = 3;

/// Bytes before the body: magic, format version, body checksum.
const HEADER_LEN: usize = MAGIC.len() + 2 + 32;

// Defined in the LLVM-free kernel model so that the cluster protocol's frame limits
// follow it without depending on the packager.
pub use kernel_model::MAX_PACKAGE_BYTES;

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

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceKind::Rust => "Rust",
            SourceKind::C => "C",
            SourceKind::LlvmIr => "LLVM IR",
            SourceKind::Bitcode => "LLVM bitcode",
        })
    }
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

#[derive(Clone, Debug, PartialEq, Eq)]
struct PackageBody {
    provenance: Provenance,
    manifest: Manifest,
    bitcode: Vec<u8>,
}

/// The body as it is encoded: the manifest as canonical TOML.
#[derive(Serialize, Deserialize)]
struct EncodedBody {
    provenance: Provenance,
    manifest: String,
    #[serde(with = "serde_bytes_vec")]
    bitcode: Vec<u8>,
}

/// Bitcode as one byte string (one length, then the bytes), not a sequence of bytes.
mod serde_bytes_vec {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let bytes: &[u8] = <&[u8]>::deserialize(d)?;
        Ok(bytes.to_vec())
    }
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
        "package format version {found} is not supported (this offload reads version {supported}){}",
        repackage_hint(*.found, *.supported)
    )]
    UnsupportedVersion {
        /// The version in the file.
        found: u16,
        /// The version this build reads.
        supported: u16,
    },
    /// Larger than [`MAX_PACKAGE_BYTES`].
    #[error("package is larger than the limit of {limit} bytes ({size} bytes or more)")]
    TooLarge {
        /// Its size (when read from a file: what was read before the limit stopped it).
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The body's checksum does not match: the file was damaged after it was written.
    #[error("package is corrupt: its checksum does not match its contents (the file was damaged or truncated after it was written); package the source again")]
    ChecksumMismatch,
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

fn repackage_hint(found: u16, supported: u16) -> &'static str {
    if found < supported {
        "; it was written by an older offload: make it again with `offload package SOURCE -o FILE`"
    } else {
        "; it was written by a newer offload: upgrade this one"
    }
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_PACKAGE_BYTES>()
}

/// bincode's decode errors in words (its `Display` prints Rust debug syntax).
pub fn describe_decode_error(error: &bincode::error::DecodeError) -> String {
    use bincode::error::DecodeError as E;
    match error {
        E::UnexpectedEnd { additional } => {
            format!("the data ends {additional} byte(s) too early")
        }
        E::LimitExceeded => "a length inside the data exceeds the size limit".into(),
        E::InvalidIntegerType { .. } | E::InvalidBooleanValue(_) | E::InvalidCharEncoding(_) => {
            "a value inside the data is not of the expected type".into()
        }
        E::UnexpectedVariant { found, .. } => {
            format!("an unknown variant number {found} inside the data")
        }
        E::Utf8 { .. } => "a string inside the data is not valid UTF-8".into(),
        E::OutsideUsizeRange(n) => format!("a length inside the data ({n}) is too large"),
        E::EmptyEnum { .. } => "a value of an empty type inside the data".into(),
        E::Io { inner, .. } => format!("reading failed: {inner}"),
        E::OtherString(text) => text.clone(),
        E::Serde(_) => "the data uses a form this decoder does not read".into(),
        _ => "the data is not a valid encoding".into(),
    }
}

impl Package {
    /// Assembles a package from parts. The bitcode must already be validated and
    /// canonical; `ir_packager::package_source` is the usual way to get one.
    pub fn assemble(
        provenance: Provenance,
        manifest: Manifest,
        bitcode: Vec<u8>,
    ) -> Result<Package, FormatError> {
        let body = PackageBody {
            provenance,
            manifest,
            bitcode,
        };
        let wire = EncodedBody {
            provenance: body.provenance.clone(),
            manifest: body.manifest.to_toml(),
            bitcode: body.bitcode.clone(),
        };
        let encoded = bincode::serde::encode_to_vec(&wire, bincode_config())
            .map_err(|e| FormatError::Corrupt(format!("cannot encode the package: {e}")))?;
        let mut bytes = Vec::with_capacity(HEADER_LEN + encoded.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(blake3::hash(&encoded).as_bytes());
        bytes.extend_from_slice(&encoded);
        let hash = PackageHash(*blake3::hash(&bytes).as_bytes());
        Ok(Package { body, bytes, hash })
    }

    /// Decodes a package file's bytes, checking header, version, size, checksum and
    /// manifest, in that order: nothing is decoded before the checksum matched. The
    /// bitcode is checked when it is loaded (`ir_packager::load_module`).
    pub fn from_bytes(bytes: &[u8]) -> Result<Package, FormatError> {
        if bytes.len() > MAX_PACKAGE_BYTES {
            return Err(FormatError::TooLarge {
                size: bytes.len(),
                limit: MAX_PACKAGE_BYTES,
            });
        }
        let Some(version) = bytes
            .strip_prefix(MAGIC.as_slice())
            .and_then(|rest| rest.first_chunk::<2>())
        else {
            return Err(FormatError::NotAPackage);
        };
        let version = u16::from_le_bytes(*version);
        if version != FORMAT_VERSION && version != format2::VERSION {
            return Err(FormatError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if bytes.len() < HEADER_LEN {
            return Err(FormatError::Corrupt(format!(
                "the file ends inside its header ({} of {HEADER_LEN} bytes)",
                bytes.len()
            )));
        }
        let (checksum, body_bytes) = bytes[MAGIC.len() + 2..].split_at(32);
        if blake3::hash(body_bytes).as_bytes() != checksum {
            return Err(FormatError::ChecksumMismatch);
        }
        let (wire, used): (EncodedBody, usize) = if version == format2::VERSION {
            format2::decode(body_bytes)?
        } else {
            bincode::serde::borrow_decode_from_slice(body_bytes, bincode_config())
                .map_err(|e| FormatError::Corrupt(describe_decode_error(&e)))?
        };
        if used != body_bytes.len() {
            return Err(FormatError::Corrupt(format!(
                "{} trailing bytes after the package body",
                body_bytes.len() - used
            )));
        }
        let body = PackageBody {
            provenance: wire.provenance,
            manifest: Manifest::parse(&wire.manifest)?,
            bitcode: wire.bitcode,
        };
        let hash = PackageHash(*blake3::hash(bytes).as_bytes());
        Ok(Package {
            body,
            bytes: bytes.to_vec(),
            hash,
        })
    }

    /// Reads and decodes a package file. At most [`MAX_PACKAGE_BYTES`] are read, so a
    /// device or an endless pipe given as a package is refused, not read forever.
    pub fn read(path: &Path) -> Result<Package, FormatError> {
        use std::io::Read;
        let io_err = |source| FormatError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io_err)?;
        let mut bytes = Vec::new();
        file.take(MAX_PACKAGE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        if bytes.len() > MAX_PACKAGE_BYTES {
            return Err(FormatError::TooLarge {
                size: bytes.len(),
                limit: MAX_PACKAGE_BYTES,
            });
        }
        Package::from_bytes(&bytes)
    }

    /// Writes the package file atomically: a temporary file beside it, flushed to disk,
    /// then renamed into place, so a reader sees the old file or the whole new one.
    pub fn write(&self, path: &Path) -> Result<(), FormatError> {
        use std::io::Write;
        let io_err = |source| FormatError::Io {
            path: path.display().to_string(),
            source,
        };
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".okp-")
            .tempfile_in(dir)
            .map_err(io_err)?;
        tmp.write_all(&self.bytes).map_err(io_err)?;
        tmp.as_file().sync_all().map_err(io_err)?;
        tmp.persist(path).map_err(|e| io_err(e.error))?;
        Ok(())
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

/// Format version 2: the body's manifest as the encoded structures of kernel model v1.
/// Mirrors of those structures (same fields, same variant order: bincode encodes a
/// variant by its index) decode it; the manifest then becomes its v1 text.
mod format2 {
    use serde::Deserialize;

    use super::{bincode_config, describe_decode_error, EncodedBody, FormatError, Provenance};

    /// The format version these structures were written by.
    pub const VERSION: u16 = 2;

    #[derive(Deserialize)]
    struct Body {
        provenance: Provenance,
        manifest: Manifest,
        bitcode: Vec<u8>,
    }

    #[derive(Deserialize)]
    struct Manifest {
        kernels: Vec<KernelSpec>,
    }

    #[derive(Deserialize)]
    struct KernelSpec {
        name: String,
        kind: KernelKind,
        args: Vec<Arg>,
    }

    #[derive(Deserialize)]
    enum KernelKind {
        Item,
        Range,
    }

    #[derive(Deserialize)]
    struct Arg {
        name: String,
        kind: ArgKind,
    }

    #[derive(Deserialize)]
    enum ArgKind {
        Scalar(ScalarType),
        Buffer {
            access: Access,
            elem: ScalarType,
            shape: Shape,
        },
    }

    #[derive(Deserialize, Clone, Copy)]
    enum ScalarType {
        U8,
        I32,
        U32,
        I64,
        U64,
        F32,
        F64,
    }

    #[derive(Deserialize)]
    enum Access {
        In,
        Out,
        InOut,
        Sum,
    }

    #[derive(Deserialize)]
    enum Shape {
        PerItem(u64),
        Whole,
        Fixed(u64),
    }

    impl ScalarType {
        fn name(self) -> &'static str {
            match self {
                ScalarType::U8 => "u8",
                ScalarType::I32 => "i32",
                ScalarType::U32 => "u32",
                ScalarType::I64 => "i64",
                ScalarType::U64 => "u64",
                ScalarType::F32 => "f32",
                ScalarType::F64 => "f64",
            }
        }
    }

    impl Arg {
        /// The argument in manifest v1 syntax.
        fn text(&self) -> String {
            match &self.kind {
                ArgKind::Scalar(t) => format!("{}: {}", self.name, t.name()),
                ArgKind::Buffer {
                    access,
                    elem,
                    shape,
                } => {
                    let access = match access {
                        Access::In => "in",
                        Access::Out => "out",
                        Access::InOut => "inout",
                        Access::Sum => "sum",
                    };
                    let shape = match shape {
                        Shape::PerItem(k) | Shape::Fixed(k) => k.to_string(),
                        Shape::Whole => String::new(),
                    };
                    format!("{}: {access} {}[{shape}]", self.name, elem.name())
                }
            }
        }
    }

    impl Manifest {
        /// The manifest as a v1 manifest file. Names are written as TOML basic strings;
        /// whatever they hold, the parser's checks see them as they were.
        fn text(&self) -> String {
            let mut out = String::new();
            for k in &self.kernels {
                let args: Vec<String> = k.args.iter().map(|a| toml_string(&a.text())).collect();
                let kind = match k.kind {
                    KernelKind::Item => "item",
                    KernelKind::Range => "range",
                };
                out.push_str(&format!(
                    "[[kernel]]\nname = {}\nkind = \"{kind}\"\nargs = [{}]\n\n",
                    toml_string(&k.name),
                    args.join(", ")
                ));
            }
            out
        }
    }

    /// `text` as a TOML basic string.
    fn toml_string(text: &str) -> String {
        let mut out = String::from("\"");
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    /// Decodes a format 2 body into the current body's encoding.
    pub fn decode(body: &[u8]) -> Result<(EncodedBody, usize), FormatError> {
        let (old, used): (Body, usize) = bincode::serde::decode_from_slice(body, bincode_config())
            .map_err(|e| FormatError::Corrupt(describe_decode_error(&e)))?;
        Ok((
            EncodedBody {
                provenance: old.provenance,
                manifest: old.manifest.text(),
                bitcode: old.bitcode,
            },
            used,
        ))
    }
}
