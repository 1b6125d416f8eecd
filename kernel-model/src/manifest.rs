//! The kernel manifest: which kernels a package exports and what their arguments mean.
//!
//! A manifest is TOML with one `[[kernel]]` table per kernel:
//!
//! ```toml
//! [[kernel]]
//! name = "saxpy"
//! kind = "item"
//! args = ["a: f32", "x: in f32[1]", "y: inout f32[1]"]
//! ```
//!
//! Scalars are written `"NAME: TYPE"`, buffers `"NAME: ACCESS TYPE[SPLIT]"`. Version 2 of
//! the kernel model (a manifest may say `version = 2`; version 1 manifests read as they
//! always did) adds:
//!
//! - sizes that are expressions of the kernel's integer scalar arguments:
//!   `"row: in f64[nj]"`, `"a: inout f64[n*n]"`, `"hist: sum u64[bins]"`;
//! - halos on split `in` buffers: `"src: in f64[n] halo 1"` lets item `i` read the
//!   elements of items `i-1 ..= i+1` (clamped to the buffer), so a row-split stencil
//!   needs only its rows and their neighbours;
//! - lengths that reach the kernel: `"x_len: u64 = len(x)"` is a scalar the runtime fills
//!   with the number of elements of buffer `x`.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::expr::Expr;
use crate::types::{Access, KernelKind, ScalarType};

/// The manifest format this crate writes (and the newest it reads).
pub const MANIFEST_VERSION: u32 = 2;

/// Which part of a buffer a packet needs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Shape {
    /// `[k]`: item `i` owns elements `k*i .. k*(i+1)`; `k` may be an expression.
    PerItem(Expr),
    /// `[]`: the whole buffer, for `in` buffers (shipped once per node and cached).
    Whole,
    /// `[n]` on a `sum` buffer: a fixed-length accumulator of `n` elements.
    Fixed(Expr),
}

/// What an argument is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ArgKind {
    /// A scalar passed by value.
    Scalar(ScalarType),
    /// A buffer passed as a pointer.
    Buffer {
        /// How the kernel uses it.
        access: Access,
        /// Element type.
        elem: ScalarType,
        /// Which part a packet needs.
        shape: Shape,
        /// Items on each side of its own that an item may read (`in` split buffers).
        halo: Option<Expr>,
    },
}

impl ArgKind {
    /// A buffer without a halo.
    pub fn buffer(access: Access, elem: ScalarType, shape: Shape) -> ArgKind {
        ArgKind::Buffer {
            access,
            elem,
            shape,
            halo: None,
        }
    }

    /// Whether this is a buffer.
    pub fn is_buffer(&self) -> bool {
        matches!(self, ArgKind::Buffer { .. })
    }
}

/// A scalar whose value the runtime computes instead of the caller.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Derived {
    /// The number of elements of the named buffer argument.
    LenOf(String),
}

/// One kernel argument.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Arg {
    /// The argument's name, used on the command line (`--arg a=2`, `--in x=FILE`).
    pub name: String,
    /// Its type and, for buffers, access and shape.
    pub kind: ArgKind,
    /// For a scalar the runtime fills in, how.
    pub derived: Option<Derived>,
}

impl Arg {
    /// An argument of `kind` that the caller gives.
    pub fn new(name: impl Into<String>, kind: ArgKind) -> Arg {
        Arg {
            name: name.into(),
            kind,
            derived: None,
        }
    }
}

impl fmt::Display for Arg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ArgKind::Scalar(t) => {
                write!(f, "{}: {}", self.name, t)?;
                match &self.derived {
                    Some(Derived::LenOf(buffer)) => write!(f, " = len({buffer})"),
                    None => Ok(()),
                }
            }
            ArgKind::Buffer {
                access,
                elem,
                shape,
                halo,
            } => {
                write!(f, "{}: {} {}", self.name, access.name(), elem)?;
                match shape {
                    Shape::PerItem(k) | Shape::Fixed(k) => write!(f, "[{k}]")?,
                    Shape::Whole => f.write_str("[]")?,
                }
                match halo {
                    Some(h) => write!(f, " halo {h}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// One kernel exported by a package.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KernelSpec {
    /// The symbol name of the kernel function.
    pub name: String,
    /// Item or range kernel.
    pub kind: KernelKind,
    /// Arguments after the index parameters, in order.
    pub args: Vec<Arg>,
}

impl KernelSpec {
    /// The signature as the manifest spells it, e.g. `saxpy(i: u64, a: f32, x: in f32[1])`.
    pub fn signature(&self) -> String {
        let index = match self.kind {
            KernelKind::Item => "i: u64".to_string(),
            KernelKind::Range => "start: u64, end: u64".to_string(),
        };
        let args: Vec<String> = std::iter::once(index)
            .chain(self.args.iter().map(|a| a.to_string()))
            .collect();
        format!("{} {}({})", self.kind.name(), self.name, args.join(", "))
    }

    /// Finds an argument by name.
    pub fn arg(&self, name: &str) -> Option<&Arg> {
        self.args.iter().find(|a| a.name == name)
    }

    /// Whether it has `sum` buffers.
    pub fn has_sum_buffers(&self) -> bool {
        self.args.iter().any(|a| {
            matches!(
                a.kind,
                ArgKind::Buffer {
                    access: Access::Sum,
                    ..
                }
            )
        })
    }

    /// Whether it uses anything beyond version 1 of the kernel model.
    fn needs_version_2(&self) -> bool {
        self.args.iter().any(|a| {
            a.derived.is_some()
                || match &a.kind {
                    ArgKind::Scalar(_) => false,
                    ArgKind::Buffer { shape, halo, .. } => {
                        halo.is_some()
                            || match shape {
                                Shape::PerItem(k) | Shape::Fixed(k) => k.constant().is_none(),
                                Shape::Whole => false,
                            }
                    }
                }
        })
    }
}

/// The kernels of a package.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Manifest {
    /// Every exported kernel.
    pub kernels: Vec<KernelSpec>,
}

impl Manifest {
    /// Finds a kernel by name.
    pub fn kernel(&self, name: &str) -> Option<&KernelSpec> {
        self.kernels.iter().find(|k| k.name == name)
    }

    /// The kernels' names as a list for messages: `saxpy, dot`.
    pub fn kernel_names(&self) -> String {
        let names: Vec<&str> = self.kernels.iter().map(|k| k.name.as_str()).collect();
        names.join(", ")
    }

    /// Parses manifest TOML and checks it (see [`ManifestError`] for what is refused).
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let raw: RawManifest =
            toml::from_str(text).map_err(|e| ManifestError::Toml(e.message().to_string()))?;
        let version = raw.version.unwrap_or(1);
        if !(1..=MANIFEST_VERSION).contains(&version) {
            return Err(ManifestError::Version(version));
        }
        let kernels = raw
            .kernel
            .into_iter()
            .map(RawKernel::into_spec)
            .collect::<Result<Vec<_>, _>>()?;
        let manifest = Manifest { kernels };
        if version < 2 {
            if let Some(k) = manifest.kernels.iter().find(|k| k.needs_version_2()) {
                return Err(ManifestError::NeedsVersion2 {
                    kernel: k.name.clone(),
                });
            }
        }
        manifest.check()?;
        Ok(manifest)
    }

    /// Renders the manifest as TOML that [`Manifest::parse`] reads back unchanged.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        if self.kernels.iter().any(KernelSpec::needs_version_2) {
            out.push_str(&format!("version = {MANIFEST_VERSION}\n\n"));
        }
        for k in &self.kernels {
            let args: Vec<String> = k.args.iter().map(|a| format!("\"{a}\"")).collect();
            out.push_str(&format!(
                "[[kernel]]\nname = \"{}\"\nkind = \"{}\"\nargs = [{}]\n\n",
                k.name,
                k.kind.name(),
                args.join(", ")
            ));
        }
        out
    }

    /// Checks the rules that span kernels and arguments (names unique and valid, sizes
    /// and lengths referring to arguments that can give them). [`Manifest::parse`] calls
    /// it; decoders of untrusted packages call it again.
    pub fn check(&self) -> Result<(), ManifestError> {
        if self.kernels.is_empty() {
            return Err(ManifestError::NoKernels);
        }
        let mut kernel_names = HashSet::new();
        for k in &self.kernels {
            check_identifier(&k.name).map_err(|_| ManifestError::BadKernelName {
                name: k.name.clone(),
            })?;
            if !kernel_names.insert(k.name.as_str()) {
                return Err(ManifestError::DuplicateKernel {
                    name: k.name.clone(),
                });
            }
            let mut arg_names = HashSet::new();
            for a in &k.args {
                let bad = |reason: String| ManifestError::BadArg {
                    kernel: k.name.clone(),
                    arg: a.to_string(),
                    reason,
                };
                check_identifier(&a.name).map_err(bad)?;
                if !arg_names.insert(a.name.as_str()) {
                    return Err(ManifestError::DuplicateArg {
                        kernel: k.name.clone(),
                        arg: a.name.clone(),
                    });
                }
                check_arg_kind(&a.kind).map_err(bad)?;
                check_references(k, a).map_err(bad)?;
            }
        }
        Ok(())
    }
}

/// Checks that the names a size, halo or length uses are arguments that can give them.
fn check_references(kernel: &KernelSpec, arg: &Arg) -> Result<(), String> {
    if let Some(Derived::LenOf(buffer)) = &arg.derived {
        match (&arg.kind, kernel.arg(buffer).map(|b| &b.kind)) {
            (ArgKind::Scalar(t), _) if !t.is_integer() => {
                return Err(format!("a length must be an integer, not `{t}`"))
            }
            (_, Some(ArgKind::Buffer { .. })) => {}
            (_, Some(ArgKind::Scalar(_))) => {
                return Err(format!(
                    "`{buffer}` is a scalar, not a buffer: it has no length"
                ))
            }
            (_, None) => return Err(format!("the kernel has no buffer `{buffer}`")),
        }
    }
    let ArgKind::Buffer { shape, halo, .. } = &arg.kind else {
        return Ok(());
    };
    let sizes = match shape {
        Shape::PerItem(k) | Shape::Fixed(k) => vec![k],
        Shape::Whole => Vec::new(),
    };
    for expr in sizes.into_iter().chain(halo.as_ref()) {
        for name in expr.names() {
            match kernel.arg(name) {
                Some(Arg {
                    kind: ArgKind::Scalar(t),
                    derived: None,
                    ..
                }) if t.is_integer() => {}
                Some(Arg {
                    kind: ArgKind::Scalar(t),
                    derived: None,
                    ..
                }) => {
                    return Err(format!(
                        "the size `{expr}` uses `{name}`, a `{t}`: sizes use integer scalars"
                    ))
                }
                Some(Arg {
                    derived: Some(_), ..
                }) => {
                    return Err(format!(
                        "the size `{expr}` uses `{name}`, a length the runtime computes: sizes use scalars the caller gives"
                    ))
                }
                Some(_) => {
                    return Err(format!(
                        "the size `{expr}` uses `{name}`, which is a buffer, not a scalar"
                    ))
                }
                None => {
                    return Err(format!(
                        "the size `{expr}` uses `{name}`, which is not an argument of the kernel"
                    ))
                }
            }
        }
    }
    Ok(())
}

/// A manifest that cannot be used, with the culprit named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Not valid TOML, or a missing/unknown key.
    #[error("not a valid manifest: {0}")]
    Toml(String),
    /// A `version` this build does not read.
    #[error("manifest version {0} is not supported (this offload reads versions 1 and {MANIFEST_VERSION})")]
    Version(u32),
    /// A version 1 manifest that uses version 2 features.
    #[error("kernel `{kernel}` uses sizes computed from arguments, halos or lengths, which need `version = 2` at the top of the manifest (it says version 1)")]
    NeedsVersion2 {
        /// The kernel.
        kernel: String,
    },
    /// No `[[kernel]]` table.
    #[error("the manifest declares no kernels (add a [[kernel]] table)")]
    NoKernels,
    /// A kernel name that is not a C identifier.
    #[error("kernel name `{name}` is not a valid symbol name (letters, digits and _, not starting with a digit)")]
    BadKernelName {
        /// The offending name.
        name: String,
    },
    /// Two kernels with one name.
    #[error("kernel `{name}` is declared twice")]
    DuplicateKernel {
        /// The repeated name.
        name: String,
    },
    /// `kind` other than `item` or `range`.
    #[error("kernel `{kernel}`: unknown kind `{kind}` (expected `item` or `range`)")]
    BadKind {
        /// The kernel.
        kernel: String,
        /// What was written.
        kind: String,
    },
    /// An argument string that does not parse or breaks a rule.
    #[error("kernel `{kernel}`: argument `{arg}`: {reason}")]
    BadArg {
        /// The kernel.
        kernel: String,
        /// The argument as written.
        arg: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two arguments with one name.
    #[error("kernel `{kernel}`: argument `{arg}` is declared twice")]
    DuplicateArg {
        /// The kernel.
        kernel: String,
        /// The repeated name.
        arg: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    version: Option<u32>,
    #[serde(default)]
    kernel: Vec<RawKernel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKernel {
    name: String,
    kind: String,
    #[serde(default)]
    args: Vec<String>,
}

impl RawKernel {
    fn into_spec(self) -> Result<KernelSpec, ManifestError> {
        let kind = match self.kind.as_str() {
            "item" => KernelKind::Item,
            "range" => KernelKind::Range,
            _ => {
                return Err(ManifestError::BadKind {
                    kernel: self.name,
                    kind: self.kind,
                })
            }
        };
        let args = self
            .args
            .iter()
            .map(|text| {
                parse_arg(text).map_err(|reason| ManifestError::BadArg {
                    kernel: self.name.clone(),
                    arg: text.clone(),
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(KernelSpec {
            name: self.name,
            kind,
            args,
        })
    }
}

/// Parses one argument string: `"NAME: TYPE"`, `"NAME: TYPE = len(BUFFER)"` or
/// `"NAME: ACCESS TYPE[SPLIT]"` with an optional `halo H`.
pub fn parse_arg(text: &str) -> Result<Arg, String> {
    let (name, rest) = text
        .split_once(':')
        .ok_or_else(|| "expected `NAME: TYPE` or `NAME: ACCESS TYPE[SPLIT]`".to_string())?;
    let name = name.trim();
    check_identifier(name)?;
    let rest = rest.trim();
    if let Some((ty_text, value)) = rest.split_once('=') {
        let ty = parse_type(ty_text.trim())?;
        let value = value.trim();
        let buffer = value
            .strip_prefix("len(")
            .and_then(|v| v.strip_suffix(')'))
            .map(str::trim)
            .ok_or_else(|| {
                format!("`{value}` is not something the runtime computes (write `len(BUFFER)`)")
            })?;
        check_identifier(buffer)?;
        let kind = ArgKind::Scalar(ty);
        check_arg_kind(&kind)?;
        return Ok(Arg {
            name: name.to_string(),
            kind,
            derived: Some(Derived::LenOf(buffer.to_string())),
        });
    }
    let kind = match rest.split_once(char::is_whitespace) {
        None => ArgKind::Scalar(parse_type(rest)?),
        Some((access_text, ty_text)) => parse_buffer(access_text, ty_text.trim())?,
    };
    check_arg_kind(&kind)?;
    Ok(Arg::new(name, kind))
}

fn parse_buffer(access_text: &str, text: &str) -> Result<ArgKind, String> {
    let access = Access::parse(access_text).ok_or_else(|| {
        format!("unknown access `{access_text}` (expected in, out, inout or sum)")
    })?;
    let open = text.find('[').ok_or_else(|| {
        format!("buffer type `{text}` needs a split: `[k]` per item or `[]` whole")
    })?;
    let close = text
        .rfind(']')
        .filter(|&c| c > open)
        .ok_or_else(|| format!("buffer type `{text}` needs a `]` after its `[`"))?;
    let elem = parse_type(text[..open].trim())?;
    let inner = text[open + 1..close].trim();
    let shape = if inner.is_empty() {
        Shape::Whole
    } else {
        let size = Expr::parse(inner).map_err(|e| format!("split `[{inner}]`: {e}"))?;
        if access == Access::Sum {
            Shape::Fixed(size)
        } else {
            Shape::PerItem(size)
        }
    };
    let after = text[close + 1..].trim();
    let halo = if after.is_empty() {
        None
    } else {
        let h = after
            .strip_prefix("halo")
            .filter(|h| h.starts_with(char::is_whitespace));
        match h {
            Some(h) => {
                Some(Expr::parse(h.trim()).map_err(|e| format!("halo `{}`: {e}", h.trim()))?)
            }
            None => {
                return Err(format!(
                    "unexpected `{after}` after the buffer type (only `halo H` may follow)"
                ))
            }
        }
    };
    Ok(ArgKind::Buffer {
        access,
        elem,
        shape,
        halo,
    })
}

fn parse_type(text: &str) -> Result<ScalarType, String> {
    ScalarType::parse(text).ok_or_else(|| {
        format!("unknown type `{text}` (expected one of u8 i32 u32 i64 u64 f32 f64)")
    })
}

fn check_arg_kind(kind: &ArgKind) -> Result<(), String> {
    match kind {
        ArgKind::Scalar(t) if !t.is_scalar_arg() => Err(format!(
            "scalars cannot be `{t}`; use i32 u32 i64 u64 f32 or f64 (u8 is for buffers)"
        )),
        ArgKind::Scalar(_) => Ok(()),
        ArgKind::Buffer {
            access,
            shape,
            halo,
            ..
        } => {
            match (access, shape) {
                (_, Shape::PerItem(k)) if k.constant() == Some(0) => {
                    return Err("a split of 0 elements per item is empty; use [k] with k >= 1".into())
                }
                (_, Shape::Fixed(k)) if k.constant() == Some(0) => {
                    return Err("a `sum` buffer of 0 elements holds nothing; give its length, e.g. `u64[256]`".into())
                }
                (Access::Sum, Shape::Whole) | (Access::Sum, Shape::PerItem(_)) => {
                    return Err("a `sum` buffer needs its fixed length, e.g. `hist: sum u64[256]`".into())
                }
                (Access::Out | Access::InOut, Shape::Whole) => {
                    return Err(format!(
                        "an `{}` buffer must be split per item (`[k]`): whole-buffer outputs would be written by every packet",
                        access.name()
                    ))
                }
                (Access::In | Access::Out | Access::InOut, Shape::Fixed(_)) => {
                    return Err("only `sum` buffers have a fixed length".into())
                }
                _ => {}
            }
            match (halo, access, shape) {
                (None, _, _) | (Some(_), Access::In, Shape::PerItem(_)) => Ok(()),
                (Some(_), Access::In, _) => {
                    Err("a halo belongs to a split buffer (`[k] halo h`); a whole buffer is all there already".into())
                }
                (Some(_), _, _) => Err(format!(
                    "a halo is for `in` buffers only: an `{}` buffer's item writes its own elements and nothing else",
                    access.name()
                )),
            }
        }
    }
}

fn check_identifier(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid name (letters, digits and _, not starting with a digit)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let m = Manifest::parse(
            r#"
            [[kernel]]
            name = "k"
            kind = "item"
            args = ["a: f32", "x: in f32[1]", "y: inout f32[1]", "lut: in u8[]", "hist: sum u64[256]"]
            "#,
        )
        .expect("valid manifest");
        let k = m.kernel("k").expect("kernel k");
        assert_eq!(k.args.len(), 5);
        assert_eq!(k.args[0].kind, ArgKind::Scalar(ScalarType::F32));
        assert_eq!(
            k.args[4].kind,
            ArgKind::buffer(Access::Sum, ScalarType::U64, Shape::Fixed(Expr::Num(256)))
        );
        assert_eq!(
            k.signature(),
            "item k(i: u64, a: f32, x: in f32[1], y: inout f32[1], lut: in u8[], hist: sum u64[256])"
        );
    }

    fn v2(args: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(&format!(
            "version = 2\n[[kernel]]\nname = \"k\"\nkind = \"item\"\nargs = [{args}]\n"
        ))
    }

    #[test]
    fn version_2_sizes_halos_and_lengths_parse_and_print_back() {
        let m = v2(r#""n: u64", "bins: u32", "src: in f64[n] halo 1", "dst: out f64[n]", "a: inout f64[n*n]", "h: sum u64[bins]", "lut: in u8[]", "lut_len: u64 = len(lut)""#)
            .expect("valid");
        let text = m.to_toml();
        assert!(text.starts_with("version = 2"), "{text}");
        assert_eq!(Manifest::parse(&text), Ok(m.clone()));
        let k = &m.kernels[0];
        assert_eq!(k.args[2].to_string(), "src: in f64[n] halo 1");
        assert_eq!(k.args[7].to_string(), "lut_len: u64 = len(lut)");
    }

    #[test]
    fn version_1_manifests_read_as_before_and_refuse_version_2_features() {
        let v1 = "[[kernel]]\nname = \"k\"\nkind = \"item\"\nargs = [\"x: in f32[1]\"]\n";
        let m = Manifest::parse(v1).expect("v1");
        assert!(!m.to_toml().contains("version"));
        let err = Manifest::parse(
            "version = 1\n[[kernel]]\nname = \"k\"\nkind = \"item\"\nargs = [\"n: u64\", \"x: in f32[n]\"]\n",
        )
        .expect_err("needs v2");
        assert!(matches!(err, ManifestError::NeedsVersion2 { .. }), "{err}");
        assert!(matches!(
            Manifest::parse("version = 9\n[[kernel]]\nname = \"k\"\nkind = \"item\"\n"),
            Err(ManifestError::Version(9))
        ));
    }

    fn refused(args: &str, needle: &str) {
        let err = v2(args).expect_err("must be refused").to_string();
        assert!(err.contains(needle), "{args}: {err}");
    }

    #[test]
    fn every_misuse_is_one_clear_error() {
        refused(r#""x: in f64[m]""#, "`m`, which is not an argument");
        refused(r#""s: f32", "x: in f64[s]""#, "sizes use integer scalars");
        refused(r#""y: in f64[1]", "x: in f64[y]""#, "which is a buffer");
        refused(
            r#""n: u64", "y: out f64[n] halo 1""#,
            "a halo is for `in` buffers only",
        );
        refused(
            r#""x: in f64[] halo 1""#,
            "a halo belongs to a split buffer",
        );
        refused(
            r#""n: f32 = len(x)", "x: in f64[]""#,
            "a length must be an integer",
        );
        refused(r#""n: u64 = len(q)""#, "the kernel has no buffer `q`");
        refused(
            r#""n: u64 = size(x)", "x: in f64[]""#,
            "write `len(BUFFER)`",
        );
        refused(
            r#""n: u64 = len(x)", "x: in f64[]", "y: out f64[n]""#,
            "a length the runtime computes",
        );
        refused(r#""h: sum u64[0]""#, "`sum` buffer of 0 elements");
        refused(r#""y: out f32[0]""#, "0 elements per item");
        refused(r#""x: in f64[n*]", "n: u64""#, "split `[n*]`");
        refused(r#""x: in f64[1] hal 1""#, "only `halo H` may follow");
    }

    #[test]
    fn refuses_whole_buffer_outputs_and_u8_scalars() {
        let err = parse_arg("y: out f32[]").expect_err("must be refused");
        assert!(err.contains("split per item"), "{err}");
        let err = parse_arg("b: u8").expect_err("must be refused");
        assert!(err.contains("scalars cannot be `u8`"), "{err}");
    }
}
