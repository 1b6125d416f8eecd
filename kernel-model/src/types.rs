//! The element and scalar types of the kernel model, buffer accesses, kernel kinds and
//! scalar values.

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

    /// The type spelled `text` (`f32`, `u64`, ...).
    pub fn parse(text: &str) -> Option<ScalarType> {
        ScalarType::ALL.into_iter().find(|t| t.name() == text)
    }

    /// Whether this is an integer type (sizes and counts may be computed from it).
    pub fn is_integer(self) -> bool {
        !self.is_float()
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

    /// The access spelled `text`.
    pub fn parse(text: &str) -> Option<Access> {
        [Access::In, Access::Out, Access::InOut, Access::Sum]
            .into_iter()
            .find(|a| a.name() == text)
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

    /// The value of type `ty` whose [`to_bits`](ScalarValue::to_bits) are `bits` (how
    /// argument blocks and the wire carry scalars).
    pub fn from_bits(bits: u64, ty: ScalarType) -> ScalarValue {
        match ty {
            ScalarType::I32 => ScalarValue::I32(bits as u32 as i32),
            ScalarType::U32 | ScalarType::U8 => ScalarValue::U32(bits as u32),
            ScalarType::I64 => ScalarValue::I64(bits as i64),
            ScalarType::U64 => ScalarValue::U64(bits),
            ScalarType::F32 => ScalarValue::F32(f32::from_bits(bits as u32)),
            ScalarType::F64 => ScalarValue::F64(f64::from_bits(bits)),
        }
    }

    /// The value as an integer, for sizes computed from it (`None` for floats).
    pub fn as_integer(self) -> Option<i128> {
        match self {
            ScalarValue::I32(v) => Some(i128::from(v)),
            ScalarValue::U32(v) => Some(i128::from(v)),
            ScalarValue::I64(v) => Some(i128::from(v)),
            ScalarValue::U64(v) => Some(i128::from(v)),
            ScalarValue::F32(_) | ScalarValue::F64(_) => None,
        }
    }

    /// The integer `value` as a value of integer type `ty`, or why it does not fit.
    pub fn from_integer(value: i128, ty: ScalarType) -> Result<ScalarValue, String> {
        let out_of_range = || format!("{value} does not fit in {ty}");
        Ok(match ty {
            ScalarType::I32 => ScalarValue::I32(i32::try_from(value).map_err(|_| out_of_range())?),
            ScalarType::U32 => ScalarValue::U32(u32::try_from(value).map_err(|_| out_of_range())?),
            ScalarType::I64 => ScalarValue::I64(i64::try_from(value).map_err(|_| out_of_range())?),
            ScalarType::U64 => ScalarValue::U64(u64::try_from(value).map_err(|_| out_of_range())?),
            ScalarType::F32 => ScalarValue::F32(value as f32),
            ScalarType::F64 => ScalarValue::F64(value as f64),
            ScalarType::U8 => return Err("scalars cannot be `u8`".into()),
        })
    }

    /// A count (a length, an item number) as a value of integer type `ty`.
    pub fn from_count(count: u64, ty: ScalarType) -> Result<ScalarValue, String> {
        if ty.is_float() {
            return Err(format!("a count cannot be a `{ty}`"));
        }
        ScalarValue::from_integer(i128::from(count), ty)
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
