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
//! Scalars are written `"NAME: TYPE"`, buffers `"NAME: ACCESS TYPE[SPLIT]"`.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// An element or scalar type of the kernel model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ScalarType {
    /// Unsigned byte; allowed for buffers only.
    U8,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
}

impl ScalarType {
    /// Every type, in the order the manifest documentation lists them.
    pub const ALL: [ScalarType; 7] = [
        ScalarType::U8,
        ScalarType::I32,
        ScalarType::U32,
        ScalarType::I64,
        ScalarType::U64,
        ScalarType::F32,
        ScalarType::F64,
    ];

    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            ScalarType::U8 => 1,
            ScalarType::I32 | ScalarType::U32 | ScalarType::F32 => 4,
            ScalarType::I64 | ScalarType::U64 | ScalarType::F64 => 8,
        }
    }

    /// The manifest spelling (`f32`, `u64`, ...).
    pub fn name(self) -> &'static str {
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

    /// Element-wise `total += part`, both read as little-endian arrays of this type: how
    /// `sum` buffers combine. Integers wrap, as they do in the kernels. Elements past the
    /// shorter slice are left alone.
    pub fn add_into(self, total: &mut [u8], part: &[u8]) {
        use std::ops::Add;
        macro_rules! add_as {
            ($t:ty, $op:ident) => {{
                const N: usize = std::mem::size_of::<$t>();
                for (d, s) in total.chunks_exact_mut(N).zip(part.chunks_exact(N)) {
                    let (mut a, mut b) = ([0u8; N], [0u8; N]);
                    a.copy_from_slice(d);
                    b.copy_from_slice(s);
                    let sum = <$t>::from_le_bytes(a).$op(<$t>::from_le_bytes(b));
                    d.copy_from_slice(&sum.to_le_bytes());
                }
            }};
        }
        match self {
            ScalarType::U8 => add_as!(u8, wrapping_add),
            ScalarType::I32 => add_as!(i32, wrapping_add),
            ScalarType::U32 => add_as!(u32, wrapping_add),
            ScalarType::I64 => add_as!(i64, wrapping_add),
            ScalarType::U64 => add_as!(u64, wrapping_add),
            ScalarType::F32 => add_as!(f32, add),
            ScalarType::F64 => add_as!(f64, add),
        }
    }

    /// Whether this is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, ScalarType::F32 | ScalarType::F64)
    }

    /// Whether this type may be passed as a scalar argument (all but `u8`).
    pub fn is_scalar_arg(self) -> bool {
        self != ScalarType::U8
    }

    fn parse(text: &str) -> Option<ScalarType> {
        ScalarType::ALL.into_iter().find(|t| t.name() == text)
    }
}

impl fmt::Display for ScalarType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a kernel uses a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Access {
    /// Read only.
    In,
    /// Written only; its previous contents are not shipped.
    Out,
    /// Read and written.
    InOut,
    /// A fixed-length accumulator: zeroed per packet, combined by element-wise addition.
    Sum,
}

impl Access {
    /// The manifest spelling.
    pub fn name(self) -> &'static str {
        match self {
            Access::In => "in",
            Access::Out => "out",
            Access::InOut => "inout",
            Access::Sum => "sum",
        }
    }

    /// Whether the kernel reads the buffer's incoming contents.
    pub fn reads_input(self) -> bool {
        matches!(self, Access::In | Access::InOut)
    }

    /// Whether the kernel's writes come back to the caller.
    pub fn writes_output(self) -> bool {
        !matches!(self, Access::In)
    }

    fn parse(text: &str) -> Option<Access> {
        [Access::In, Access::Out, Access::InOut, Access::Sum]
            .into_iter()
            .find(|a| a.name() == text)
    }
}

/// Which part of a buffer a packet needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Shape {
    /// `[k]`: item `i` owns elements `k*i .. k*(i+1)`.
    PerItem(u64),
    /// `[]`: the whole buffer, for `in` buffers (shipped once per node and cached).
    Whole,
    /// `[n]` on a `sum` buffer: a fixed-length accumulator of `n` elements.
    Fixed(u64),
}

/// What an argument is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    },
}

/// One kernel argument.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Arg {
    /// The argument's name, used on the command line (`--arg a=2`, `--in x=FILE`).
    pub name: String,
    /// Its type and, for buffers, access and shape.
    pub kind: ArgKind,
}

impl fmt::Display for Arg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ArgKind::Scalar(t) => write!(f, "{}: {}", self.name, t),
            ArgKind::Buffer {
                access,
                elem,
                shape,
            } => {
                write!(f, "{}: {} {}", self.name, access.name(), elem)?;
                match shape {
                    Shape::PerItem(k) | Shape::Fixed(k) => write!(f, "[{k}]"),
                    Shape::Whole => f.write_str("[]"),
                }
            }
        }
    }
}

/// Whether a kernel is called per item or per packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KernelKind {
    /// `fn(i: u64, args...)`, called once per item.
    Item,
    /// `fn(start: u64, end: u64, args...)`, called once per packet.
    Range,
}

impl KernelKind {
    /// The manifest spelling.
    pub fn name(self) -> &'static str {
        match self {
            KernelKind::Item => "item",
            KernelKind::Range => "range",
        }
    }

    /// Number of leading index parameters (`i`, or `start, end`).
    pub fn index_params(self) -> usize {
        match self {
            KernelKind::Item => 1,
            KernelKind::Range => 2,
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
    /// Whether the kernel has `sum` buffers (GPU back ends then run many items per
    /// work-item, each with a private slice of partial sums).
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
        let kernels = raw
            .kernel
            .into_iter()
            .map(RawKernel::into_spec)
            .collect::<Result<Vec<_>, _>>()?;
        let manifest = Manifest { kernels };
        manifest.check()?;
        Ok(manifest)
    }

    /// Renders the manifest as TOML that [`Manifest::parse`] reads back unchanged.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        for k in &self.kernels {
            let args: Vec<String> = self.quote_args(k);
            out.push_str(&format!(
                "[[kernel]]\nname = \"{}\"\nkind = \"{}\"\nargs = [{}]\n\n",
                k.name,
                k.kind.name(),
                args.join(", ")
            ));
        }
        out
    }

    fn quote_args(&self, k: &KernelSpec) -> Vec<String> {
        k.args.iter().map(|a| format!("\"{a}\"")).collect()
    }

    /// Checks the rules that span kernels and arguments (names unique and valid).
    /// [`Manifest::parse`] calls it; decoders of untrusted packages call it again.
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
                check_identifier(&a.name).map_err(|reason| ManifestError::BadArg {
                    kernel: k.name.clone(),
                    arg: a.to_string(),
                    reason,
                })?;
                if !arg_names.insert(a.name.as_str()) {
                    return Err(ManifestError::DuplicateArg {
                        kernel: k.name.clone(),
                        arg: a.name.clone(),
                    });
                }
                check_arg_kind(&a.kind).map_err(|reason| ManifestError::BadArg {
                    kernel: k.name.clone(),
                    arg: a.to_string(),
                    reason,
                })?;
            }
        }
        Ok(())
    }
}

/// A manifest that cannot be used, with the culprit named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Not valid TOML, or a missing/unknown key.
    #[error("not a valid manifest: {0}")]
    Toml(String),
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

/// Parses one argument string, `"NAME: TYPE"` or `"NAME: ACCESS TYPE[SPLIT]"`.
pub fn parse_arg(text: &str) -> Result<Arg, String> {
    let (name, rest) = text
        .split_once(':')
        .ok_or_else(|| "expected `NAME: TYPE` or `NAME: ACCESS TYPE[SPLIT]`".to_string())?;
    let name = name.trim();
    check_identifier(name)?;
    let rest = rest.trim();
    let kind = match rest.split_once(char::is_whitespace) {
        None => {
            let ty = parse_type(rest)?;
            ArgKind::Scalar(ty)
        }
        Some((access_text, ty_text)) => {
            let access = Access::parse(access_text).ok_or_else(|| {
                format!("unknown access `{access_text}` (expected in, out, inout or sum)")
            })?;
            let ty_text = ty_text.trim();
            let open = ty_text.find('[').ok_or_else(|| {
                format!("buffer type `{ty_text}` needs a split: `[k]` per item or `[]` whole")
            })?;
            let close_ok = ty_text.ends_with(']');
            if !close_ok {
                return Err(format!("buffer type `{ty_text}` must end with `]`"));
            }
            let elem = parse_type(ty_text[..open].trim())?;
            let inner = ty_text[open + 1..ty_text.len() - 1].trim();
            let shape = if inner.is_empty() {
                Shape::Whole
            } else {
                let n: u64 = inner
                    .parse()
                    .map_err(|_| format!("split `[{inner}]` is not a whole number"))?;
                if access == Access::Sum {
                    Shape::Fixed(n)
                } else {
                    Shape::PerItem(n)
                }
            };
            ArgKind::Buffer {
                access,
                elem,
                shape,
            }
        }
    };
    let kind_checked = check_arg_kind(&kind).map(|_| kind)?;
    Ok(Arg {
        name: name.to_string(),
        kind: kind_checked,
    })
}

fn parse_type(text: &str) -> Result<ScalarType, String> {
    ScalarType::parse(text).ok_or_else(|| {
        format!("unknown type `{text}` (expected one of u8 i32 u32 i64 u64 f32 f64)")
    })
}

fn check_arg_kind(kind: &ArgKind) -> Result<(), String> {
    match *kind {
        ArgKind::Scalar(t) if !t.is_scalar_arg() => Err(format!(
            "scalars cannot be `{t}`; use i32 u32 i64 u64 f32 or f64 (u8 is for buffers)"
        )),
        ArgKind::Scalar(_) => Ok(()),
        ArgKind::Buffer { access, shape, .. } => match (access, shape) {
            (_, Shape::PerItem(0)) => {
                Err("a split of 0 elements per item is empty; use [k] with k >= 1".into())
            }
            (_, Shape::Fixed(0)) => {
                Err("a `sum` buffer of 0 elements holds nothing; give its length, e.g. `u64[256]`".into())
            }
            (Access::Sum, Shape::Whole) | (Access::Sum, Shape::PerItem(_)) => Err(
                "a `sum` buffer needs its fixed length, e.g. `hist: sum u64[256]`".into(),
            ),
            (Access::Out | Access::InOut, Shape::Whole) => Err(format!(
                "an `{}` buffer must be split per item (`[k]`): whole-buffer outputs would be written by every packet",
                access.name()
            )),
            (Access::In | Access::Out | Access::InOut, Shape::Fixed(_)) => {
                Err("only `sum` buffers have a fixed length".into())
            }
            _ => Ok(()),
        },
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

/// A scalar argument's value.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum ScalarValue {
    /// `i32`.
    I32(i32),
    /// `u32`.
    U32(u32),
    /// `i64`.
    I64(i64),
    /// `u64`.
    U64(u64),
    /// `f32`.
    F32(f32),
    /// `f64`.
    F64(f64),
}

impl ScalarValue {
    /// Parses `text` as a value of type `ty` (decimal; floats also `inf`, `nan`;
    /// integers also `0x` hex).
    pub fn parse(text: &str, ty: ScalarType) -> Result<ScalarValue, String> {
        let text = text.trim();
        let bad = || format!("`{text}` is not a valid {ty}");
        let int = |t: &str| -> Option<i128> {
            match t.strip_prefix("0x") {
                Some(hex) => i128::from_str_radix(hex, 16).ok(),
                None => t.parse::<i128>().ok(),
            }
        };
        Ok(match ty {
            ScalarType::I32 => ScalarValue::I32(
                int(text)
                    .and_then(|v| i32::try_from(v).ok())
                    .ok_or_else(bad)?,
            ),
            ScalarType::U32 => ScalarValue::U32(
                int(text)
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(bad)?,
            ),
            ScalarType::I64 => ScalarValue::I64(
                int(text)
                    .and_then(|v| i64::try_from(v).ok())
                    .ok_or_else(bad)?,
            ),
            ScalarType::U64 => ScalarValue::U64(
                int(text)
                    .and_then(|v| u64::try_from(v).ok())
                    .ok_or_else(bad)?,
            ),
            ScalarType::F32 => ScalarValue::F32(text.parse().map_err(|_| bad())?),
            ScalarType::F64 => ScalarValue::F64(text.parse().map_err(|_| bad())?),
            ScalarType::U8 => return Err("scalars cannot be `u8`".into()),
        })
    }

    /// The value's type.
    pub fn scalar_type(self) -> ScalarType {
        match self {
            ScalarValue::I32(_) => ScalarType::I32,
            ScalarValue::U32(_) => ScalarType::U32,
            ScalarValue::I64(_) => ScalarType::I64,
            ScalarValue::U64(_) => ScalarType::U64,
            ScalarValue::F32(_) => ScalarType::F32,
            ScalarValue::F64(_) => ScalarType::F64,
        }
    }

    /// The value's bits, zero-extended to 64 (how argument blocks carry scalars).
    pub fn to_bits(self) -> u64 {
        match self {
            ScalarValue::I32(v) => u64::from(v as u32),
            ScalarValue::U32(v) => u64::from(v),
            ScalarValue::I64(v) => v as u64,
            ScalarValue::U64(v) => v,
            ScalarValue::F32(v) => u64::from(v.to_bits()),
            ScalarValue::F64(v) => v.to_bits(),
        }
    }
}

impl fmt::Display for ScalarValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScalarValue::I32(v) => write!(f, "{v}"),
            ScalarValue::U32(v) => write!(f, "{v}"),
            ScalarValue::I64(v) => write!(f, "{v}"),
            ScalarValue::U64(v) => write!(f, "{v}"),
            ScalarValue::F32(v) => write!(f, "{v:?}"),
            ScalarValue::F64(v) => write!(f, "{v:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_sums_wrap_integers_and_add_floats() {
        let mut total = u32::MAX.to_le_bytes().to_vec();
        ScalarType::U32.add_into(&mut total, &2u32.to_le_bytes());
        assert_eq!(total, 1u32.to_le_bytes());
        let mut total = [i64::MIN.to_le_bytes(), 5i64.to_le_bytes()].concat();
        let part = [(-1i64).to_le_bytes(), 7i64.to_le_bytes()].concat();
        ScalarType::I64.add_into(&mut total, &part);
        assert_eq!(
            total,
            [i64::MAX.to_le_bytes(), 12i64.to_le_bytes()].concat()
        );
        let mut total = 1.5f64.to_le_bytes().to_vec();
        ScalarType::F64.add_into(&mut total, &2.25f64.to_le_bytes());
        assert_eq!(total, 3.75f64.to_le_bytes());
        let mut total = vec![250u8, 1];
        ScalarType::U8.add_into(&mut total, &[10, 2]);
        assert_eq!(total, [4, 3]);
    }

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
            ArgKind::Buffer {
                access: Access::Sum,
                elem: ScalarType::U64,
                shape: Shape::Fixed(256)
            }
        );
        assert_eq!(
            k.signature(),
            "item k(i: u64, a: f32, x: in f32[1], y: inout f32[1], lut: in u8[], hist: sum u64[256])"
        );
    }

    #[test]
    fn refuses_whole_buffer_outputs() {
        let err = parse_arg("y: out f32[]").expect_err("must be refused");
        assert!(err.contains("split per item"), "{err}");
    }

    #[test]
    fn an_empty_sum_buffer_is_called_what_it_is() {
        let err = parse_arg("h: sum u64[0]").expect_err("must be refused");
        assert!(err.contains("`sum` buffer of 0 elements"), "{err}");
        let err = parse_arg("y: out f32[0]").expect_err("must be refused");
        assert!(err.contains("0 elements per item"), "{err}");
    }

    #[test]
    fn refuses_u8_scalars() {
        let err = parse_arg("b: u8").expect_err("must be refused");
        assert!(err.contains("scalars cannot be `u8`"), "{err}");
    }
}
