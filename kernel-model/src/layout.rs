//! The one argument checker, and the packet layout arithmetic every runner shares.
//!
//! [`check`] takes a kernel's manifest entry, the job's item count and what the caller
//! gives for each argument (a scalar's value, a buffer's size and, when known, its
//! element type and access) and returns a [`Layout`]: every size evaluated (`[n*n]` with
//! the job's `n`), every derived length filled in, every buffer's size checked. The local
//! runner, the cluster client and node, the OpenCL and PTX back ends and the Rust API all
//! cut packets from a `Layout`, so they agree byte for byte on what a packet reads and
//! writes, and a mistake gets the same message wherever the job runs.

use std::fmt;
use std::ops::Range;

use crate::expr::{EvalError, Expr, Value};
use crate::manifest::{Arg, ArgKind, Derived, KernelSpec, Shape};
use crate::types::{Access, ScalarType, ScalarValue};

/// What the caller gives for one argument.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Given {
    /// A scalar's value.
    Scalar(ScalarValue),
    /// A buffer of `bytes` bytes; its element type and access when the caller knows
    /// them (the typed Rust API does, a file on the command line does not).
    Buffer {
        /// Its size.
        bytes: u64,
        /// Its element type, if known.
        elem: Option<ScalarType>,
        /// How the caller means it to be used, if known.
        access: Option<Access>,
    },
}

impl Given {
    /// A buffer of `bytes` bytes, nothing else known.
    pub fn bytes(bytes: u64) -> Given {
        Given::Buffer {
            bytes,
            elem: None,
            access: None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Given::Scalar(v) => format!("the {} scalar {v}", v.scalar_type()),
            Given::Buffer {
                elem: Some(elem),
                access: Some(access),
                ..
            } => format!("an `{}` buffer of {elem}", access.name()),
            Given::Buffer {
                elem: Some(elem), ..
            } => format!("a buffer of {elem}"),
            Given::Buffer { .. } => "a buffer".to_string(),
        }
    }
}

/// An argument of a checked job, with every size a number.
#[derive(Debug, Clone, PartialEq)]
pub enum ArgLayout {
    /// A scalar, given or derived.
    Scalar(ScalarValue),
    /// A buffer split per item: item `i` owns elements `per_item*i .. per_item*(i+1)` and
    /// may read those of the `halo` items on each side.
    Split {
        /// How the kernel uses it.
        access: Access,
        /// Element type.
        elem: ScalarType,
        /// Elements per item.
        per_item: u64,
        /// Items on each side an item may read (0 without a halo).
        halo: u64,
    },
    /// A whole `in` buffer of `len` elements.
    Whole {
        /// Element type.
        elem: ScalarType,
        /// Elements.
        len: u64,
    },
    /// A `sum` accumulator of `len` elements.
    Sum {
        /// Element type.
        elem: ScalarType,
        /// Elements.
        len: u64,
    },
}

impl ArgLayout {
    /// Bytes per item of a split buffer (0 for the others).
    pub fn bytes_per_item(&self) -> u64 {
        match self {
            ArgLayout::Split { elem, per_item, .. } => per_item * elem.size() as u64,
            _ => 0,
        }
    }

    /// The element type of a buffer.
    pub fn elem(&self) -> Option<ScalarType> {
        match self {
            ArgLayout::Scalar(_) => None,
            ArgLayout::Split { elem, .. }
            | ArgLayout::Whole { elem, .. }
            | ArgLayout::Sum { elem, .. } => Some(*elem),
        }
    }

    /// The access of a buffer (`in` for whole buffers, `sum` for accumulators).
    pub fn access(&self) -> Option<Access> {
        match self {
            ArgLayout::Scalar(_) => None,
            ArgLayout::Split { access, .. } => Some(*access),
            ArgLayout::Whole { .. } => Some(Access::In),
            ArgLayout::Sum { .. } => Some(Access::Sum),
        }
    }
}

/// A checked job: the kernel, its items and every argument with numbers for sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// The kernel.
    pub kernel: String,
    /// Items of the job.
    pub items: u64,
    /// One entry per manifest argument, in order.
    pub args: Vec<ArgLayout>,
}

/// The number of packets a job with `sum` buffers is cut into (fewer if it has fewer
/// items): enough for every core of a large machine to get several, few enough that
/// adding the partials costs nothing next to computing them.
pub const SUM_PACKETS: u64 = 256;

/// The items a packet of items `start..end` of a job of `items` items may read from a
/// split buffer with `halo`: its own and `halo` more on each side, within the job.
pub fn halo_range(start: u64, end: u64, halo: u64, items: u64) -> Range<u64> {
    start.saturating_sub(halo)..end.saturating_add(halo).min(items)
}

impl Layout {
    /// The items whose elements a packet of items `start..end` may read from split
    /// buffer `slot` (its own, plus the halo on each side, within the job).
    pub fn read_items(&self, slot: usize, start: u64, end: u64) -> Range<u64> {
        let halo = match self.args.get(slot) {
            Some(ArgLayout::Split { halo, .. }) => *halo,
            _ => 0,
        };
        halo_range(start, end, halo, self.items)
    }

    /// The byte range of split buffer `slot` that a packet of items `start..end` reads
    /// (`reading`: with the halo) or writes (without).
    pub fn byte_range(&self, slot: usize, start: u64, end: u64, reading: bool) -> Range<u64> {
        let per = self.args.get(slot).map_or(0, ArgLayout::bytes_per_item);
        let items = if reading {
            self.read_items(slot, start, end)
        } else {
            start..end
        };
        items.start * per..items.end * per
    }

    /// Items per packet of a job with `sum` buffers: fixed by the job alone (its item
    /// count), never by the devices at work or their timing, so every packet's partial
    /// sums are the same run after run, locally and on any cluster, and added in item
    /// order they give bit-identical totals. `None` for a job without `sum` buffers
    /// (its packets are sized by the scheduler).
    pub fn sum_packet_items(&self) -> Option<u64> {
        (self.sum_bytes() > 0).then(|| self.items.div_ceil(SUM_PACKETS).max(1))
    }

    /// Bytes of the job's `sum` buffers together.
    pub fn sum_bytes(&self) -> u64 {
        self.args
            .iter()
            .map(|a| match a {
                ArgLayout::Sum { elem, len } => len * elem.size() as u64,
                _ => 0,
            })
            .sum()
    }

    /// Each argument as one 8-byte slot of the kernel ABI, with buffer addresses from
    /// `address` (called with the slot for every buffer).
    pub fn block(&self, mut address: impl FnMut(usize) -> u64) -> Vec<u64> {
        self.args
            .iter()
            .enumerate()
            .map(|(slot, a)| match a {
                ArgLayout::Scalar(v) => v.to_bits(),
                _ => address(slot),
            })
            .collect()
    }
}

/// A job whose arguments do not fit the kernel: one variant per mistake.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ArgError {
    /// Wrong number of arguments.
    #[error("kernel `{kernel}` takes {expected} arguments ({signature}) but {given} were given")]
    Count {
        /// The kernel.
        kernel: String,
        /// Its signature.
        signature: String,
        /// Arguments it takes (without the lengths the runtime fills in, if that is
        /// what the caller meant).
        expected: String,
        /// Arguments given.
        given: usize,
    },
    /// A scalar where a buffer belongs, the reverse, a scalar of another type, or a buffer
    /// of another element type or access.
    #[error("argument `{arg}` of kernel `{kernel}` is `{spec}`, but {given} was given")]
    Type {
        /// The kernel.
        kernel: String,
        /// The argument.
        arg: String,
        /// Its manifest spelling.
        spec: String,
        /// What was given.
        given: String,
    },
    /// A size, halo or length that cannot be computed from the job's scalars.
    #[error("argument `{arg}` (`{spec}`) of kernel `{kernel}`: {reason}")]
    Size {
        /// The kernel.
        kernel: String,
        /// The argument.
        arg: String,
        /// Its manifest spelling.
        spec: String,
        /// Why.
        reason: String,
    },
    /// A buffer of the wrong size.
    #[error("buffer `{arg}` (`{spec}`) must be {expected} for {items} items, but it has {actual}")]
    BufferSize {
        /// The argument.
        arg: String,
        /// Its manifest spelling.
        spec: String,
        /// Items of the job.
        items: u64,
        /// What it must be, in words.
        expected: String,
        /// What it is, in words.
        actual: String,
    },
    /// A length given by the caller that is not the buffer's length.
    #[error("argument `{arg}` of kernel `{kernel}` is len({buffer}) = {expected}, but {given} was given")]
    Length {
        /// The kernel.
        kernel: String,
        /// The argument.
        arg: String,
        /// The buffer whose length it is.
        buffer: String,
        /// The buffer's length.
        expected: u64,
        /// What was given.
        given: String,
    },
}

/// `n` elements of `elem` in words: `1024 elements (4096 bytes)`.
fn elements(n: u64, elem: ScalarType) -> String {
    let noun = if n == 1 { "element" } else { "elements" };
    match n.checked_mul(elem.size() as u64) {
        Some(bytes) => format!("{n} {noun} ({bytes} bytes)"),
        None => format!("{n} {noun} (more bytes than a 64-bit count holds)"),
    }
}

/// Checks `given` against kernel `spec` for a job of `items` items and returns its
/// layout. `given` holds one entry per manifest argument, or one per argument the caller
/// gives: every argument but the lengths the runtime computes (`len(x)`), which it then
/// fills in. A given length is checked against the buffer.
pub fn check(spec: &KernelSpec, items: u64, given: &[Given]) -> Result<Layout, ArgError> {
    let all = spec.args.len();
    let callers = spec.args.iter().filter(|a| a.derived.is_none()).count();
    let full = given.len() == all;
    if !full && given.len() != callers {
        let expected = if all == callers {
            all.to_string()
        } else {
            format!("{callers} (or {all} with the lengths the runtime fills in)")
        };
        return Err(ArgError::Count {
            kernel: spec.name.clone(),
            signature: spec.signature(),
            expected,
            given: given.len(),
        });
    }
    // Each manifest argument with what the caller gave for it, if anything.
    let mut supplied = given.iter();
    let pairs: Vec<(&Arg, Option<&Given>)> = spec
        .args
        .iter()
        .map(|arg| {
            let g = if full || arg.derived.is_none() {
                supplied.next()
            } else {
                None
            };
            (arg, g)
        })
        .collect();
    let type_error = |arg: &Arg, given: &Given| ArgError::Type {
        kernel: spec.name.clone(),
        arg: arg.name.clone(),
        spec: arg.to_string(),
        given: given.describe(),
    };
    // Scalars first: sizes are computed from them.
    for (arg, g) in &pairs {
        match (&arg.kind, arg.derived.as_ref(), g) {
            (ArgKind::Scalar(ty), None, Some(Given::Scalar(v))) if v.scalar_type() == *ty => {}
            (ArgKind::Scalar(_), Some(_), Some(Given::Scalar(_)) | None) => {}
            (ArgKind::Buffer { .. }, _, Some(Given::Buffer { .. })) => {}
            (_, _, Some(g)) => return Err(type_error(arg, g)),
            (_, _, None) => {
                // Unreachable: only derived arguments may be left out.
                return Err(ArgError::Count {
                    kernel: spec.name.clone(),
                    signature: spec.signature(),
                    expected: all.to_string(),
                    given: given.len(),
                });
            }
        }
    }
    let scalar = |name: &str| -> Option<Value> {
        pairs
            .iter()
            .find_map(|(arg, g)| match (arg.name == name, g) {
                (true, Some(Given::Scalar(v))) => Some(match v.as_integer() {
                    Some(i) => Value::Int(i),
                    None => Value::NotInteger,
                }),
                _ => None,
            })
    };
    let size_error = |arg: &Arg, reason: String| ArgError::Size {
        kernel: spec.name.clone(),
        arg: arg.name.clone(),
        spec: arg.to_string(),
        reason,
    };
    let evaluate = |arg: &Arg, expr: &Expr, what: &str| -> Result<u64, ArgError> {
        expr.eval_count(&scalar).map_err(|e| {
            let values: Vec<String> = expr
                .names()
                .into_iter()
                .filter_map(|n| match scalar(n) {
                    Some(Value::Int(v)) => Some(format!("{n} = {v}")),
                    _ => None,
                })
                .collect();
            let with = if values.is_empty() {
                String::new()
            } else {
                format!(" (with {})", values.join(", "))
            };
            size_error(arg, format!("its {what} `{expr}`{with}: {}", describe(&e)))
        })
    };
    let mut layout = Vec::with_capacity(all);
    for (arg, g) in &pairs {
        let entry = match &arg.kind {
            ArgKind::Scalar(ty) => match (arg.derived.as_ref(), g) {
                (None, Some(Given::Scalar(v))) => ArgLayout::Scalar(*v),
                (Some(Derived::LenOf(buffer)), g) => {
                    let len = buffer_len(spec, &pairs, buffer, items, &evaluate)?;
                    let value = ScalarValue::from_count(len, *ty).map_err(|reason| {
                        size_error(arg, format!("len({buffer}) = {len}: {reason}"))
                    })?;
                    if let Some(Given::Scalar(given)) = g {
                        if *given != value {
                            return Err(ArgError::Length {
                                kernel: spec.name.clone(),
                                arg: arg.name.clone(),
                                buffer: buffer.clone(),
                                expected: len,
                                given: given.to_string(),
                            });
                        }
                    }
                    ArgLayout::Scalar(value)
                }
                // Checked above.
                (None, _) => return Err(type_error(arg, &Given::bytes(0))),
            },
            ArgKind::Buffer {
                access,
                elem,
                shape,
                halo,
            } => {
                let Some(
                    g @ Given::Buffer {
                        bytes,
                        elem: given_elem,
                        access: given_access,
                    },
                ) = g
                else {
                    return Err(type_error(arg, &Given::bytes(0)));
                };
                if given_elem.is_some_and(|e| e != *elem)
                    || given_access.is_some_and(|a| a != *access)
                {
                    return Err(type_error(arg, g));
                }
                let size_mismatch = |expected: String| {
                    let actual = match given_elem {
                        Some(e) if bytes % e.size() as u64 == 0 => {
                            elements(bytes / e.size() as u64, *e)
                        }
                        _ => format!("{bytes} bytes"),
                    };
                    ArgError::BufferSize {
                        arg: arg.name.clone(),
                        spec: arg.to_string(),
                        items,
                        expected,
                        actual,
                    }
                };
                let halo = match halo {
                    Some(h) => evaluate(arg, h, "halo")?,
                    None => 0,
                };
                match shape {
                    Shape::Whole => {
                        if bytes % elem.size() as u64 != 0 {
                            return Err(size_mismatch(format!(
                                "a whole number of {}-byte {elem} elements",
                                elem.size()
                            )));
                        }
                        ArgLayout::Whole {
                            elem: *elem,
                            len: bytes / elem.size() as u64,
                        }
                    }
                    Shape::PerItem(k) => {
                        let per_item = evaluate(arg, k, "split")?;
                        if per_item == 0 {
                            return Err(size_error(
                                arg,
                                format!("its split `{k}` is 0 for this job: every item would own nothing"),
                            ));
                        }
                        let want = items.checked_mul(per_item);
                        match want.and_then(|n| n.checked_mul(elem.size() as u64)) {
                            Some(need) if need == *bytes => {}
                            Some(_) => {
                                return Err(size_mismatch(elements(want.unwrap_or(0), *elem)))
                            }
                            None => {
                                return Err(size_mismatch(
                                    "more bytes than a 64-bit count holds".into(),
                                ))
                            }
                        }
                        ArgLayout::Split {
                            access: *access,
                            elem: *elem,
                            per_item,
                            halo,
                        }
                    }
                    Shape::Fixed(n) => {
                        let len = evaluate(arg, n, "length")?;
                        if len == 0 {
                            return Err(size_error(
                                arg,
                                format!("its length `{n}` is 0 for this job"),
                            ));
                        }
                        match len.checked_mul(elem.size() as u64) {
                            Some(need) if need == *bytes => {}
                            Some(_) => return Err(size_mismatch(elements(len, *elem))),
                            None => {
                                return Err(size_mismatch(
                                    "more bytes than a 64-bit count holds".into(),
                                ))
                            }
                        }
                        ArgLayout::Sum { elem: *elem, len }
                    }
                }
            }
        };
        layout.push(entry);
    }
    Ok(Layout {
        kernel: spec.name.clone(),
        items,
        args: layout,
    })
}

/// The bytes buffer argument `slot` of `spec` must hold for a job of `items` items, with
/// the job's scalars from `scalar`: `Some` for split and `sum` buffers, `None` for whole
/// buffers (as long as their file is) and scalars. For callers that allocate buffers
/// before the full check (the command line sizes its output files this way).
pub fn needed_bytes(
    spec: &KernelSpec,
    slot: usize,
    items: u64,
    scalar: &dyn Fn(&str) -> Option<ScalarValue>,
) -> Result<Option<u64>, ArgError> {
    let Some(arg) = spec.args.get(slot) else {
        return Ok(None);
    };
    let ArgKind::Buffer { elem, shape, .. } = &arg.kind else {
        return Ok(None);
    };
    let lookup = |name: &str| {
        scalar(name).map(|v| match v.as_integer() {
            Some(i) => Value::Int(i),
            None => Value::NotInteger,
        })
    };
    let size_error = |reason: String| ArgError::Size {
        kernel: spec.name.clone(),
        arg: arg.name.clone(),
        spec: arg.to_string(),
        reason,
    };
    let elements = match shape {
        Shape::Whole => return Ok(None),
        Shape::PerItem(k) => k
            .eval_count(&lookup)
            .map_err(|e| size_error(format!("its split `{k}`: {}", describe(&e))))
            .map(|k| items.checked_mul(k))?,
        Shape::Fixed(n) => Some(
            n.eval_count(&lookup)
                .map_err(|e| size_error(format!("its length `{n}`: {}", describe(&e))))?,
        ),
    };
    elements
        .and_then(|n| n.checked_mul(elem.size() as u64))
        .map(Some)
        .ok_or_else(|| {
            size_error(format!(
                "for {items} items it needs more bytes than a 64-bit count holds"
            ))
        })
}

/// The element count of buffer `name` of the job, from what was given for it.
fn buffer_len(
    spec: &KernelSpec,
    pairs: &[(&Arg, Option<&Given>)],
    name: &str,
    items: u64,
    evaluate: &dyn Fn(&Arg, &Expr, &str) -> Result<u64, ArgError>,
) -> Result<u64, ArgError> {
    let found = pairs.iter().find(|(arg, _)| arg.name == name);
    let Some((arg, Some(Given::Buffer { bytes, .. }))) = found else {
        return Err(ArgError::Size {
            kernel: spec.name.clone(),
            arg: name.to_string(),
            spec: name.to_string(),
            reason: "no buffer was given for it".into(),
        });
    };
    let ArgKind::Buffer { elem, shape, .. } = &arg.kind else {
        return Ok(0);
    };
    Ok(match shape {
        Shape::Whole => bytes / elem.size() as u64,
        Shape::PerItem(k) => items.saturating_mul(evaluate(arg, k, "split")?),
        Shape::Fixed(n) => evaluate(arg, n, "length")?,
    })
}

fn describe(error: &EvalError) -> String {
    match error {
        EvalError::Unknown(name) => format!("`{name}` has no value in this job"),
        other => other.to_string(),
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} over {} items", self.kernel, self.items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    fn spec(args: &str) -> KernelSpec {
        Manifest::parse(&format!(
            "version = 2\n[[kernel]]\nname = \"k\"\nkind = \"item\"\nargs = [{args}]\n"
        ))
        .expect("manifest")
        .kernels
        .remove(0)
    }

    fn f64s(n: u64) -> Given {
        Given::Buffer {
            bytes: n * 8,
            elem: Some(ScalarType::F64),
            access: None,
        }
    }

    #[test]
    fn sizes_are_evaluated_with_the_jobs_scalars() {
        let k = spec(r#""n: u64", "src: in f64[n] halo 1", "dst: out f64[n]", "h: sum u64[n*2]""#);
        let n = ScalarValue::U64(100);
        let layout = check(
            &k,
            100,
            &[
                Given::Scalar(n),
                f64s(10_000),
                f64s(10_000),
                Given::bytes(1600),
            ],
        )
        .expect("fits");
        assert_eq!(layout.args[1].bytes_per_item(), 800);
        assert_eq!(layout.read_items(1, 0, 10), 0..11);
        assert_eq!(layout.read_items(1, 50, 60), 49..61);
        assert_eq!(layout.read_items(1, 90, 100), 89..100);
        assert_eq!(layout.byte_range(2, 50, 60, false), 40_000..48_000);
        assert_eq!(layout.sum_bytes(), 1600);
    }

    #[test]
    fn lengths_are_filled_in_or_checked() {
        let k = spec(r#""lut: in u8[]", "lut_len: u64 = len(lut)", "out: out u32[1]""#);
        let layout = check(&k, 4, &[Given::bytes(300), Given::bytes(16)]).expect("filled");
        assert_eq!(layout.args[1], ArgLayout::Scalar(ScalarValue::U64(300)));
        let full = [
            Given::bytes(300),
            Given::Scalar(ScalarValue::U64(300)),
            Given::bytes(16),
        ];
        check(&k, 4, &full).expect("a right length is accepted");
        let wrong = [
            Given::bytes(300),
            Given::Scalar(ScalarValue::U64(299)),
            Given::bytes(16),
        ];
        let err = check(&k, 4, &wrong)
            .expect_err("a wrong length")
            .to_string();
        assert!(err.contains("len(lut) = 300, but 299 was given"), "{err}");
        let err = check(&k, 4, &[Given::bytes(300)])
            .expect_err("too few")
            .to_string();
        assert!(err.contains("takes 2 (or 3 with the lengths"), "{err}");
    }

    #[test]
    fn each_mistake_is_named() {
        let k = spec(r#""n: u64", "a: inout f64[n*n]""#);
        let err = check(&k, 10, &[Given::Scalar(ScalarValue::U64(3)), f64s(80)])
            .expect_err("wrong size")
            .to_string();
        assert!(
            err.contains("buffer `a` (`a: inout f64[n*n]`) must be 90 elements (720 bytes) for 10 items, but it has 80 elements (640 bytes)"),
            "{err}"
        );
        let err = check(
            &k,
            10,
            &[Given::Scalar(ScalarValue::U64(u64::MAX)), f64s(8)],
        )
        .expect_err("overflow")
        .to_string();
        assert!(err.contains("`n*n`") && err.contains("overflows"), "{err}");
        let err = check(&k, 10, &[Given::Scalar(ScalarValue::I32(3)), f64s(90)])
            .expect_err("type")
            .to_string();
        assert!(
            err.contains("is `n: u64`, but the i32 scalar 3 was given"),
            "{err}"
        );
        let typed = Given::Buffer {
            bytes: 720,
            elem: Some(ScalarType::F32),
            access: Some(Access::InOut),
        };
        let err = check(&k, 10, &[Given::Scalar(ScalarValue::U64(3)), typed])
            .expect_err("element type")
            .to_string();
        assert!(err.contains("an `inout` buffer of f32 was given"), "{err}");
        let zero = check(&k, 10, &[Given::Scalar(ScalarValue::U64(0)), f64s(0)])
            .expect_err("zero split")
            .to_string();
        assert!(zero.contains("is 0 for this job"), "{zero}");
    }
}
