//! Lowering a kernel's LLVM IR to OpenCL C 1.2 source (item kernels: one work-item per
//! item; range kernels: one work-item per packet).
//!
//! The package's module is retargeted to a generic 64-bit little-endian data layout, its
//! helper functions are force-inlined and a light canonicalizing pipeline runs
//! (`always-inline,sroa,mem2reg,instcombine,simplifycfg`). Then every function the
//! kernel reaches is translated instruction by instruction:
//!
//! - every SSA value becomes a local variable of an *unsigned* C type (`uchar` ..
//!   `ulong`, `bool` for `i1`); signed operations cast explicitly, so C's signed
//!   overflow rules never apply and LLVM's wrapping semantics hold;
//! - memory is addressed in bytes: pointers are `__global uchar*` (buffers),
//!   `__private uchar*` (allocas) or `__constant uchar*` (constant globals), GEPs add byte
//!   offsets computed from the source element type, loads and stores cast;
//! - the CFG becomes labels and `goto`; a `phi` is a variable assigned on each incoming
//!   edge (through a shadow copy, so swaps stay correct);
//! - LLVM vectors of 2-16 lanes become OpenCL vectors; `<N x i1>` masks are `charN`
//!   lanes of -1/0, as OpenCL's vector comparisons produce;
//! - `offload_panic(code)` records the code in the status buffer and returns; callers
//!   return as soon as the status is set.
//!
//! Whatever this does not know is refused with [`LowerError::Unsupported`], which names
//! the kernel, the function and the instruction: such a kernel runs on the CPU only.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{CodeModel, RelocMode, Target, TargetData, TargetMachine};
use inkwell::OptimizationLevel;
use ir_packager::{ArgKind, KernelKind, KernelSpec, Package, ScalarType, Shape, PANIC_SYMBOL};

use crate::ir::{
    self, Block, LLVMIntPredicate, LLVMOpcode, LLVMRealPredicate, LLVMTypeKind, Type, Value,
};

/// The data layout kernels are lowered under: little-endian, 64-bit pointers, natural
/// alignment for every scalar, as on OpenCL devices.
pub const DATA_LAYOUT: &str = "e-p:64:64-i64:64-i128:128-n8:16:32:64-S128";

/// The canonicalizing pipeline run before translation.
pub const PIPELINE: &str = "always-inline,sroa,mem2reg,instcombine,simplifycfg,globaldce";

/// Version of the translation; part of every cache key that holds generated source.
pub const LOWERING_VERSION: u32 = 1;

/// Lowering a kernel failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LowerError {
    /// The package has no such kernel.
    #[error("package has no kernel `{kernel}` (it has: {available})")]
    NoSuchKernel {
        /// The kernel asked for.
        kernel: String,
        /// The kernels it has.
        available: String,
    },
    /// The package's module could not be loaded.
    #[error("cannot load the package's module: {0}")]
    Load(String),
    /// The canonicalizing pipeline failed.
    #[error("LLVM pipeline `{PIPELINE}` failed: {0}")]
    Pipeline(String),
    /// A kind of argument the OpenCL entry does not support.
    #[error("kernel `{kernel}` cannot be lowered to OpenCL C: argument `{arg}`: {reason}; the kernel runs on the CPU only")]
    UnsupportedArg {
        /// The kernel.
        kernel: String,
        /// The argument as the manifest spells it.
        arg: String,
        /// Why.
        reason: String,
    },
    /// A construct the lowering does not translate.
    #[error("kernel `{kernel}` cannot be lowered to OpenCL C: in function `{function}`, `{instruction}`: {reason}; the kernel runs on the CPU only")]
    Unsupported {
        /// The kernel.
        kernel: String,
        /// The function holding the construct (demangled).
        function: String,
        /// The LLVM instruction or value, as LLVM prints it.
        instruction: String,
        /// Why it is refused.
        reason: String,
    },
}

/// A kernel lowered to OpenCL C.
#[derive(Debug, Clone)]
pub struct Lowered {
    /// The kernel's manifest entry.
    pub spec: KernelSpec,
    /// The `__kernel` function's name in [`source`](Self::source).
    pub entry: String,
    /// The OpenCL C program.
    pub source: String,
    /// Whether the program uses `double` (needs `cl_khr_fp64`).
    pub fp64: bool,
    /// Whether the kernel has `sum` buffers (then one work-item runs many items).
    pub has_sums: bool,
    /// blake3 of the source: the program cache key.
    pub source_hash: [u8; 32],
}

/// Lowers kernel `kernel` of `package` to OpenCL C.
pub fn lower(package: &Package, kernel: &str) -> Result<Lowered, LowerError> {
    let spec = package
        .manifest()
        .kernel(kernel)
        .ok_or_else(|| LowerError::NoSuchKernel {
            kernel: kernel.to_string(),
            available: package.manifest().kernel_names(),
        })?
        .clone();
    // Halos change which part of a buffer a packet's device copy holds, which the entry
    // below does not know: such kernels stay on the CPU for now.
    if let Some(arg) = spec
        .args
        .iter()
        .find(|a| matches!(a.kind, ArgKind::Buffer { halo: Some(_), .. }))
    {
        return Err(LowerError::UnsupportedArg {
            kernel: spec.name.clone(),
            arg: arg.to_string(),
            reason: "halos are not lowered to OpenCL yet".into(),
        });
    }
    let ctx = ir_packager::llvm_context();
    let module =
        ir_packager::load_module(&ctx, package).map_err(|e| LowerError::Load(e.to_string()))?;
    canonicalize(&ctx, &module)?;
    let function = module
        .get_function(kernel)
        .ok_or_else(|| LowerError::Load(format!("kernel `{kernel}` vanished from the module")))?;
    let mut lowering = Lowering::new(&spec);
    let source = lowering.program(function.as_value_ref_raw())?;
    let fp64 = lowering.fp64;
    drop(lowering);
    let source_hash = *blake3::hash(source.as_bytes()).as_bytes();
    Ok(Lowered {
        has_sums: spec.has_sum_buffers(),
        entry: entry_name(&spec.name),
        spec,
        source,
        fp64,
        source_hash,
    })
}

trait RawValue {
    fn as_value_ref_raw(&self) -> Value;
}

impl RawValue for inkwell::values::FunctionValue<'_> {
    fn as_value_ref_raw(&self) -> Value {
        use inkwell::values::AsValueRef;
        self.as_value_ref()
    }
}

/// The `__kernel` function's name for kernel `name`.
pub fn entry_name(name: &str) -> String {
    format!("offload_{name}")
}

fn canonicalize(ctx: &Context, module: &Module<'_>) -> Result<(), LowerError> {
    ir_packager::initialize_llvm();
    let layout = TargetData::create(DATA_LAYOUT);
    module.set_data_layout(&layout.get_data_layout());
    let always = Attribute::get_named_enum_kind_id("alwaysinline");
    let never = Attribute::get_named_enum_kind_id("noinline");
    let optnone = Attribute::get_named_enum_kind_id("optnone");
    for f in module.get_functions() {
        if f.count_basic_blocks() > 0 {
            f.remove_enum_attribute(AttributeLoc::Function, never);
            f.remove_enum_attribute(AttributeLoc::Function, optnone);
            f.add_attribute(AttributeLoc::Function, ctx.create_enum_attribute(always, 0));
        }
        // Rust marks calls to its panic paths `noinline` at the call site too.
        for b in ir::blocks(f.as_value_ref_raw()) {
            for inst in ir::instructions(b) {
                if ir::opcode(inst) == LLVMOpcode::LLVMCall {
                    ir::remove_call_site_fn_attribute(inst, never);
                }
            }
        }
    }
    let triple = TargetMachine::get_default_triple();
    let target = Target::from_triple(&triple).map_err(|e| LowerError::Pipeline(e.to_string()))?;
    let machine = target
        .create_target_machine(
            &triple,
            "generic",
            "",
            OptimizationLevel::None,
            RelocMode::PIC,
            CodeModel::Default,
        )
        .ok_or_else(|| LowerError::Pipeline(format!("no target machine for {triple}")))?;
    module
        .run_passes(PIPELINE, &machine, PassBuilderOptions::create())
        .map_err(|e| LowerError::Pipeline(e.to_string()))?;
    module
        .verify()
        .map_err(|e| LowerError::Pipeline(e.to_string()))
}

/// The C type of an SSA value.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cty {
    Bool,
    Int(u32),
    F32,
    F64,
    Ptr,
    /// `{iN, i1}` as returned by the `*.with.overflow` intrinsics.
    Pair(u32),
    /// An LLVM vector of 2, 3, 4, 8 or 16 lanes: an OpenCL vector type.
    Vector(u32, Lane),
    Void,
}

/// The element type of a vector.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Lane {
    Int(u32),
    F32,
    F64,
    /// An `i1` lane (a comparison result): a `char` holding -1 (true) or 0, as OpenCL's
    /// vector comparisons produce.
    Mask,
}

impl Lane {
    fn unsigned(self) -> &'static str {
        match self {
            Lane::Int(w) => ut(w),
            Lane::F32 => "float",
            Lane::F64 => "double",
            Lane::Mask => "char",
        }
    }

    /// The signed integer lane type of the same width (what `select` takes as mask).
    fn same_width_int(self) -> &'static str {
        match self {
            Lane::Int(w) => st(w),
            Lane::F32 => "int",
            Lane::F64 => "long",
            Lane::Mask => "char",
        }
    }

    fn signed(self) -> &'static str {
        match self {
            Lane::Int(w) => st(w),
            other => other.unsigned(),
        }
    }
}

/// Address spaces a pointer value can live in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Space {
    Global,
    Private,
    Constant,
}

impl Space {
    fn qualifier(self) -> &'static str {
        match self {
            Space::Global => "__global",
            Space::Private => "__private",
            Space::Constant => "__constant",
        }
    }
}

fn ut(w: u32) -> &'static str {
    match w {
        1 => "bool",
        8 => "uchar",
        16 => "ushort",
        32 => "uint",
        _ => "ulong",
    }
}

fn st(w: u32) -> &'static str {
    match w {
        1 | 8 => "char",
        16 => "short",
        32 => "int",
        _ => "long",
    }
}

/// The type C arithmetic on a `w`-bit value is done in, avoiding `int` promotion.
fn wide(w: u32) -> &'static str {
    if w <= 32 {
        "uint"
    } else {
        "ulong"
    }
}

/// `a` read as a signed `w`-bit integer (an `i1` true is -1).
fn signed(a: &str, w: u32) -> String {
    if w == 1 {
        format!("(-(int){a})")
    } else {
        format!("(({}){a})", st(w))
    }
}

fn sext64(x: u64, w: u32) -> i64 {
    if w >= 64 {
        x as i64
    } else {
        ((x << (64 - w)) as i64) >> (64 - w)
    }
}

/// Float literal for the value `x` of C type `ty` (`float` or `double`), exact.
fn float_literal(x: f64, ty: Cty) -> String {
    match ty {
        Cty::F32 => {
            let f = x as f32;
            if f.is_finite() {
                format!("{f:e}f")
            } else {
                format!("as_float({:#x}u)", f.to_bits())
            }
        }
        _ => {
            if x.is_finite() {
                format!("{x:e}")
            } else {
                format!("as_double({:#x}UL)", x.to_bits())
            }
        }
    }
}

fn demangle(name: &str) -> String {
    ir_packager::display_name(&std::ffi::CString::new(name).unwrap_or_default())
}

/// Names of intrinsics the lowering knows, without `llvm.` and type suffixes.
const INTRINSICS: &[&str] = &[
    "experimental.noalias.scope.decl",
    "uadd.with.overflow",
    "sadd.with.overflow",
    "usub.with.overflow",
    "ssub.with.overflow",
    "umul.with.overflow",
    "smul.with.overflow",
    "lifetime.start",
    "lifetime.end",
    "invariant.start",
    "invariant.end",
    "fptosi.sat",
    "fptoui.sat",
    "var.annotation",
    "sideeffect",
    "assume",
    "expect",
    "dbg",
    "memset",
    "memcpy",
    "memmove",
    "sqrt",
    "fabs",
    "floor",
    "ceil",
    "trunc",
    "rint",
    "nearbyint",
    "roundeven",
    "round",
    "fma",
    "fmuladd",
    "minnum",
    "maxnum",
    "minimum",
    "maximum",
    "copysign",
    "canonicalize",
    "sin",
    "cos",
    "tan",
    "asin",
    "acos",
    "atan2",
    "atan",
    "sinh",
    "cosh",
    "tanh",
    "exp2",
    "exp10",
    "exp",
    "log2",
    "log10",
    "log",
    "powi",
    "pow",
    "ldexp",
    "smin",
    "smax",
    "umin",
    "umax",
    "abs",
    "ctpop",
    "ctlz",
    "cttz",
    "bswap",
    "bitreverse",
    "fshl",
    "fshr",
    "vector.reduce.or",
    "vector.reduce.and",
    "uadd.sat",
    "usub.sat",
    "sadd.sat",
    "ssub.sat",
];

fn intrinsic_key(name: &str) -> Option<&'static str> {
    let rest = name.strip_prefix("llvm.")?;
    INTRINSICS
        .iter()
        .copied()
        .find(|k| rest == *k || rest.strip_prefix(k).is_some_and(|t| t.starts_with('.')))
}

/// OpenCL C built-in for an allow-listed libm function (float variants end in `f`), and
/// whether it is the float variant. OpenCL C has the same names, but for `nearbyint`.
fn libm_builtin(name: &str) -> Option<(&'static str, bool)> {
    let find = |n: &str| {
        ir_packager::LIBM_FUNCTIONS
            .iter()
            .copied()
            .find(|f| *f == n)
    };
    let (base, float) = match find(name) {
        Some(base) => (base, false),
        None => (name.strip_suffix('f').and_then(find)?, true),
    };
    Some((if base == "nearbyint" { "rint" } else { base }, float))
}

struct Lowering<'s> {
    spec: &'s KernelSpec,
    layout: ir::Layout,
    fp64: bool,
    /// Functions to emit, in discovery order, with their C names.
    functions: Vec<Value>,
    function_names: HashMap<Value, String>,
    /// Functions that can panic (call `offload_panic`, directly or not).
    panicking: HashSet<Value>,
    globals: Vec<(Value, String)>,
    global_names: HashMap<Value, String>,
    current_function: String,
}

impl<'s> Lowering<'s> {
    fn new(spec: &'s KernelSpec) -> Lowering<'s> {
        Lowering {
            spec,
            layout: ir::Layout::new(DATA_LAYOUT),
            fp64: false,
            functions: Vec::new(),
            function_names: HashMap::new(),
            panicking: HashSet::new(),
            globals: Vec::new(),
            global_names: HashMap::new(),
            current_function: String::new(),
        }
    }

    fn unsupported(&self, at: Value, reason: impl Into<String>) -> LowerError {
        LowerError::Unsupported {
            kernel: self.spec.name.clone(),
            function: self.current_function.clone(),
            instruction: ir::print_value(at),
            reason: reason.into(),
        }
    }

    fn unsupported_type(&self, at: Value, t: Type) -> LowerError {
        let reason = match ir::kind(t) {
            LLVMTypeKind::LLVMVectorTypeKind | LLVMTypeKind::LLVMScalableVectorTypeKind => {
                "only vectors of 2, 3, 4, 8 or 16 integers (8 to 64 bits) or floats have an OpenCL type".to_string()
            }
            _ => format!(
                "type `{}` has no OpenCL C counterpart here",
                ir::print_type(t)
            ),
        };
        self.unsupported(at, reason)
    }

    fn cty(&mut self, at: Value, t: Type) -> Result<Cty, LowerError> {
        match ir::kind(t) {
            LLVMTypeKind::LLVMVoidTypeKind => Ok(Cty::Void),
            LLVMTypeKind::LLVMIntegerTypeKind => match ir::int_width(t) {
                1 => Ok(Cty::Bool),
                w @ (8 | 16 | 32 | 64) => Ok(Cty::Int(w)),
                _ => Err(self.unsupported_type(at, t)),
            },
            LLVMTypeKind::LLVMFloatTypeKind => Ok(Cty::F32),
            LLVMTypeKind::LLVMDoubleTypeKind => {
                self.fp64 = true;
                Ok(Cty::F64)
            }
            LLVMTypeKind::LLVMPointerTypeKind => Ok(Cty::Ptr),
            LLVMTypeKind::LLVMVectorTypeKind => {
                let lanes = ir::vector_lanes(t);
                let e = ir::element_type(t);
                let lane = match ir::kind(e) {
                    LLVMTypeKind::LLVMIntegerTypeKind
                        if matches!(ir::int_width(e), 8 | 16 | 32 | 64) =>
                    {
                        Lane::Int(ir::int_width(e))
                    }
                    LLVMTypeKind::LLVMIntegerTypeKind if ir::int_width(e) == 1 => Lane::Mask,
                    LLVMTypeKind::LLVMFloatTypeKind => Lane::F32,
                    LLVMTypeKind::LLVMDoubleTypeKind => {
                        self.fp64 = true;
                        Lane::F64
                    }
                    _ => return Err(self.unsupported_type(at, t)),
                };
                if !matches!(lanes, 2 | 3 | 4 | 8 | 16) {
                    return Err(self.unsupported_type(at, t));
                }
                Ok(Cty::Vector(lanes, lane))
            }
            LLVMTypeKind::LLVMStructTypeKind => {
                let fields = ir::struct_element_types(t);
                match fields.as_slice() {
                    [a, b]
                        if ir::kind(*a) == LLVMTypeKind::LLVMIntegerTypeKind
                            && ir::kind(*b) == LLVMTypeKind::LLVMIntegerTypeKind
                            && ir::int_width(*b) == 1
                            && matches!(ir::int_width(*a), 8 | 16 | 32 | 64) =>
                    {
                        Ok(Cty::Pair(ir::int_width(*a)))
                    }
                    _ => Err(self.unsupported_type(at, t)),
                }
            }
            _ => Err(self.unsupported_type(at, t)),
        }
    }

    /// The whole program: pragmas, constant globals, prototypes, functions, entry.
    fn program(&mut self, kernel: Value) -> Result<String, LowerError> {
        self.discover(kernel)?;
        let mut bodies = String::new();
        let mut prototypes = String::new();
        for f in self.functions.clone() {
            let (proto, body) = self.function(f)?;
            let _ = writeln!(prototypes, "{proto};");
            bodies.push_str(&body);
            bodies.push('\n');
        }
        let entry = self.entry(kernel)?;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "// OpenCL C for offload kernel `{}`, lowered from LLVM IR (lowering v{LOWERING_VERSION}).",
            self.spec.name
        );
        if self.fp64 {
            out.push_str("#pragma OPENCL EXTENSION cl_khr_fp64 : enable\n");
        }
        // The IR says exactly where a fused multiply-add is allowed (llvm.fmuladd,
        // llvm.fma); the OpenCL compiler must not contract anything else.
        out.push_str("#pragma OPENCL FP_CONTRACT OFF\n\n");
        for (g, name) in self.globals.clone() {
            out.push_str(&self.global_definition(g, &name)?);
        }
        out.push_str(&prototypes);
        out.push('\n');
        out.push_str(&bodies);
        out.push_str(&entry);
        Ok(out)
    }

    /// Finds the functions the kernel reaches and which of them can panic.
    fn discover(&mut self, kernel: Value) -> Result<(), LowerError> {
        let mut stack = vec![kernel];
        let mut calls: HashMap<Value, Vec<Value>> = HashMap::new();
        let mut direct_panic = HashSet::new();
        while let Some(f) = stack.pop() {
            if self.function_names.contains_key(&f) {
                continue;
            }
            let c_name = format!("f{}_{}", self.functions.len(), sanitize(&ir::name(f)));
            self.function_names.insert(f, c_name);
            self.functions.push(f);
            for b in ir::blocks(f) {
                for inst in ir::instructions(b) {
                    if ir::opcode(inst) != LLVMOpcode::LLVMCall {
                        continue;
                    }
                    let callee = ir::called_value(inst);
                    if !ir::is_function(callee) {
                        continue;
                    }
                    if ir::name(callee) == PANIC_SYMBOL {
                        direct_panic.insert(f);
                    } else if !ir::is_declaration(callee) {
                        calls.entry(f).or_default().push(callee);
                        stack.push(callee);
                    }
                }
            }
        }
        self.panicking = direct_panic;
        loop {
            let before = self.panicking.len();
            for (caller, callees) in &calls {
                if callees.iter().any(|c| self.panicking.contains(c)) {
                    self.panicking.insert(*caller);
                }
            }
            if self.panicking.len() == before {
                break;
            }
        }
        // Callees first, so prototypes are not even needed for most programs.
        self.functions.reverse();
        Ok(())
    }

    fn function(&mut self, f: Value) -> Result<(String, String), LowerError> {
        self.current_function = demangle(&ir::name(f));
        let mut emitter = FunctionEmitter::new(self, f)?;
        emitter.emit_all()?;
        Ok((emitter.prototype.clone(), emitter.finish()))
    }

    fn global_name(&mut self, g: Value, at: Value) -> Result<String, LowerError> {
        if let Some(n) = self.global_names.get(&g) {
            return Ok(n.clone());
        }
        if !ir::is_global_constant(g) || ir::global_initializer(g).is_none() {
            return Err(self.unsupported(
                at,
                format!(
                    "global variable `{}` is mutable; kernels may only read constant globals on OpenCL",
                    ir::name(g)
                ),
            ));
        }
        let name = format!("g{}_{}", self.globals.len(), sanitize(&ir::name(g)));
        self.global_names.insert(g, name.clone());
        self.globals.push((g, name.clone()));
        Ok(name)
    }

    fn global_definition(&mut self, g: Value, name: &str) -> Result<String, LowerError> {
        let ty = ir::global_value_type(g);
        let size = self.layout.alloc_size(ty) as usize;
        let mut bytes = vec![0u8; size];
        let init =
            ir::global_initializer(g).ok_or_else(|| self.unsupported(g, "no initializer"))?;
        self.constant_bytes(init, ty, &mut bytes, g)?;
        let mut text = format!(
            "__constant uchar {name}[{}] __attribute__((aligned(16))) = {{",
            size.max(1)
        );
        for (k, b) in bytes.iter().enumerate() {
            if k % 16 == 0 {
                text.push_str("\n   ");
            }
            let _ = write!(text, " {b},");
        }
        if bytes.is_empty() {
            text.push_str(" 0");
        }
        text.push_str("\n};\n");
        Ok(text)
    }

    /// Writes the little-endian image of constant `c` of type `ty` into `out`.
    fn constant_bytes(
        &mut self,
        c: Value,
        ty: Type,
        out: &mut [u8],
        at: Value,
    ) -> Result<(), LowerError> {
        if ir::is_undef(c) || ir::is_zero_aggregate(c) || ir::is_null_pointer(c) {
            return Ok(());
        }
        match ir::kind(ty) {
            LLVMTypeKind::LLVMIntegerTypeKind if ir::is_constant_int(c) => {
                let n = (ir::int_width(ty) as usize).div_ceil(8).min(8);
                out[..n].copy_from_slice(&ir::const_int_zext(c).to_le_bytes()[..n]);
                Ok(())
            }
            LLVMTypeKind::LLVMFloatTypeKind if ir::is_constant_fp(c) => {
                out[..4].copy_from_slice(&(ir::const_fp(c) as f32).to_bits().to_le_bytes());
                Ok(())
            }
            LLVMTypeKind::LLVMDoubleTypeKind if ir::is_constant_fp(c) => {
                out[..8].copy_from_slice(&ir::const_fp(c).to_bits().to_le_bytes());
                Ok(())
            }
            LLVMTypeKind::LLVMArrayTypeKind => {
                let elem = ir::element_type(ty);
                let stride = self.layout.alloc_size(elem) as usize;
                for k in 0..ir::array_length(ty) as u32 {
                    let e = ir::aggregate_element(c, k)
                        .ok_or_else(|| self.unsupported(at, "unreadable constant array"))?;
                    let start = k as usize * stride;
                    self.constant_bytes(e, elem, &mut out[start..start + stride], at)?;
                }
                Ok(())
            }
            LLVMTypeKind::LLVMStructTypeKind => {
                for (k, field) in ir::struct_element_types(ty).into_iter().enumerate() {
                    let e = ir::aggregate_element(c, k as u32)
                        .ok_or_else(|| self.unsupported(at, "unreadable constant struct"))?;
                    let start = self.layout.field_offset(ty, k as u32) as usize;
                    let len = self.layout.alloc_size(field) as usize;
                    self.constant_bytes(e, field, &mut out[start..start + len], at)?;
                }
                Ok(())
            }
            _ => Err(self.unsupported(
                at,
                format!(
                    "constant initializer of type `{}` is not lowered (pointers in constant data have no OpenCL meaning)",
                    ir::print_type(ty)
                ),
            )),
        }
    }

    /// The `__kernel` wrapper: computes the item index and offsets split buffers by the
    /// packet's start, so the kernel body keeps indexing with global item indices.
    fn entry(&mut self, kernel: Value) -> Result<String, LowerError> {
        let body = self.function_names[&kernel].clone();
        let mut params = vec![
            "ulong offload_start".to_string(),
            "ulong offload_end".to_string(),
            "__global int* offload_status".to_string(),
        ];
        let mut setup = String::new();
        let range = self.spec.kind == KernelKind::Range;
        let mut call_args = if range {
            vec!["offload_start".to_string(), "offload_end".to_string()]
        } else {
            vec!["i".to_string()]
        };
        let sums = self.spec.has_sum_buffers();
        // Sizes may be expressions of scalar arguments: they are computed in the entry
        // from its own scalar parameters.
        let spec = self.spec.clone();
        let size = |expr: &ir_packager::Expr| c_size(expr, &spec);
        for (k, arg) in self.spec.args.iter().enumerate() {
            let a = format!("a{k}_{}", sanitize(&arg.name));
            match arg.kind {
                ArgKind::Scalar(t) => {
                    let c = match t {
                        ScalarType::I32 | ScalarType::U32 | ScalarType::U8 => "uint",
                        ScalarType::I64 | ScalarType::U64 => "ulong",
                        ScalarType::F32 => "float",
                        ScalarType::F64 => {
                            self.fp64 = true;
                            "double"
                        }
                    };
                    params.push(format!("{c} {a}"));
                    call_args.push(a);
                }
                ArgKind::Buffer {
                    elem, ref shape, ..
                } => {
                    params.push(format!("__global uchar* {a}_base"));
                    let bytes = elem.size() as u64;
                    match shape {
                        Shape::PerItem(per) => {
                            let _ = writeln!(
                                setup,
                                "    __global uchar* {a} = {a}_base - offload_start * {} * {bytes}UL;",
                                size(per)
                            );
                        }
                        Shape::Whole => {
                            let _ = writeln!(setup, "    __global uchar* {a} = {a}_base;");
                        }
                        Shape::Fixed(n) => {
                            // Each work-item owns a private slice of the partial sums.
                            let _ = writeln!(
                                setup,
                                "    __global uchar* {a} = {a}_base + offload_gid * {} * {bytes}UL;",
                                size(n)
                            );
                        }
                    }
                    call_args.push(a);
                }
            }
        }
        call_args.push("offload_status".into());
        let call = format!("{body}({})", call_args.join(", "));
        let mut text = format!(
            "__kernel void {}({}) {{\n",
            entry_name(&self.spec.name),
            params.join(", ")
        );
        text.push_str("    ulong offload_gid = (ulong)get_global_id(0);\n");
        text.push_str(&setup);
        if range {
            // A range kernel is sequential over its packet: one work-item runs it.
            text.push_str("    if (offload_gid != 0) return;\n");
            let _ = writeln!(text, "    {call};");
            text.push_str("}\n");
        } else if sums {
            text.push_str("    ulong offload_stride = (ulong)get_global_size(0);\n");
            text.push_str(
                "    for (ulong i = offload_start + offload_gid; i < offload_end; i += offload_stride) {\n",
            );
            let _ = writeln!(text, "        {call};");
            text.push_str("        if (*offload_status != 0) return;\n    }\n}\n");
        } else {
            text.push_str("    ulong i = offload_start + offload_gid;\n");
            text.push_str("    if (i >= offload_end) return;\n");
            let _ = writeln!(text, "    {call};");
            text.push_str("}\n");
        }
        Ok(text)
    }
}

/// A size expression as OpenCL C over the entry's scalar parameters, in `ulong`:
/// `(3UL)`, `((ulong)a0_n * (ulong)a0_n)`.
fn c_size(expr: &ir_packager::Expr, spec: &ir_packager::KernelSpec) -> String {
    use ir_packager::Expr as E;
    let param = |name: &str| {
        spec.args.iter().position(|a| a.name == name).map_or_else(
            || "0UL".to_string(),
            |k| format!("(ulong)a{k}_{}", sanitize(name)),
        )
    };
    match expr {
        E::Num(n) => format!("{n}UL"),
        E::Var(name) => param(name),
        E::Add(a, b) => format!("({} + {})", c_size(a, spec), c_size(b, spec)),
        E::Sub(a, b) => format!("({} - {})", c_size(a, spec), c_size(b, spec)),
        E::Mul(a, b) => format!("({} * {})", c_size(a, spec), c_size(b, spec)),
        E::Div(a, b) => format!("({} / {})", c_size(a, spec), c_size(b, spec)),
        E::Rem(a, b) => format!("({} % {})", c_size(a, spec), c_size(b, spec)),
    }
}

fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.len() > 40 {
        format!("{}_{:08x}", &s[..32], crc(name))
    } else {
        s
    }
}

fn crc(name: &str) -> u32 {
    let h = blake3::hash(name.as_bytes());
    let b = h.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

struct FunctionEmitter<'l, 's> {
    low: &'l mut Lowering<'s>,
    f: Value,
    prototype: String,
    ret: Cty,
    names: HashMap<Value, String>,
    types: HashMap<Value, Cty>,
    spaces: HashMap<Value, Space>,
    blocks: HashMap<Block, usize>,
    decls: String,
    body: String,
}

impl<'l, 's> FunctionEmitter<'l, 's> {
    fn new(low: &'l mut Lowering<'s>, f: Value) -> Result<FunctionEmitter<'l, 's>, LowerError> {
        let ret = low.cty(f, ir::return_type(f))?;
        if matches!(ret, Cty::Ptr | Cty::Pair(_)) {
            return Err(
                low.unsupported(f, "functions returning pointers or structs are not lowered")
            );
        }
        let mut e = FunctionEmitter {
            low,
            f,
            prototype: String::new(),
            ret,
            names: HashMap::new(),
            types: HashMap::new(),
            spaces: HashMap::new(),
            blocks: HashMap::new(),
            decls: String::new(),
            body: String::new(),
        };
        let mut params = Vec::new();
        for (k, p) in ir::params(f).into_iter().enumerate() {
            let ty = e.low.cty(p, ir::type_of(p))?;
            let name = format!("p{k}");
            let c = match ty {
                Cty::Ptr => {
                    e.spaces.insert(p, Space::Global);
                    "__global uchar*".to_string()
                }
                other => e.c_type(other, p)?,
            };
            params.push(format!("{c} {name}"));
            e.names.insert(p, name);
            e.types.insert(p, ty);
        }
        params.push("__global int* offload_status".into());
        let ret_c = match ret {
            Cty::Void => "void".to_string(),
            other => e.c_type(other, f)?,
        };
        e.prototype = format!(
            "{ret_c} {}({})",
            e.low.function_names[&f],
            params.join(", ")
        );
        Ok(e)
    }

    fn c_type(&self, ty: Cty, at: Value) -> Result<String, LowerError> {
        Ok(match ty {
            Cty::Bool => "bool".into(),
            Cty::Int(w) => ut(w).into(),
            Cty::F32 => "float".into(),
            Cty::F64 => "double".into(),
            Cty::Ptr => match self.spaces.get(&at) {
                Some(s) => format!("{} uchar*", s.qualifier()),
                None => return Err(self.low.unsupported(at, "pointer of unknown address space")),
            },
            Cty::Vector(n, lane) => format!("{}{n}", lane.unsigned()),
            Cty::Pair(_) | Cty::Void => {
                return Err(self.low.unsupported(at, "value has no single C type"))
            }
        })
    }

    fn zero(&self) -> &'static str {
        match self.ret {
            Cty::Void => "",
            Cty::Bool => " false",
            Cty::F32 => " 0.0f",
            Cty::F64 => " 0.0",
            _ => " 0",
        }
    }

    fn finish(self) -> String {
        format!("{} {{\n{}{}}}\n", self.prototype, self.decls, self.body)
    }

    fn emit_all(&mut self) -> Result<(), LowerError> {
        let blocks = ir::blocks(self.f);
        for (k, b) in blocks.iter().enumerate() {
            self.blocks.insert(*b, k);
        }
        // Name and type every value first: phis refer forward.
        let mut counter = 0usize;
        for b in &blocks {
            for inst in ir::instructions(*b) {
                let ty = self.low.cty(inst, ir::type_of(inst))?;
                if ty != Cty::Void {
                    self.names.insert(inst, format!("v{counter}"));
                    self.types.insert(inst, ty);
                    counter += 1;
                }
            }
        }
        self.infer_spaces(&blocks)?;
        self.declare(&blocks)?;
        self.decls.push_str("    ulong offload_k;\n");
        for b in &blocks {
            self.block(*b)?;
        }
        Ok(())
    }

    /// Decides the address space of every pointer value from where it comes from.
    fn infer_spaces(&mut self, blocks: &[Block]) -> Result<(), LowerError> {
        let insts: Vec<Value> = blocks.iter().flat_map(|b| ir::instructions(*b)).collect();
        for _round in 0..=insts.len() {
            let mut changed = false;
            for &inst in &insts {
                if self.types.get(&inst) != Some(&Cty::Ptr) || self.spaces.contains_key(&inst) {
                    continue;
                }
                let sources: Vec<Value> = match ir::opcode(inst) {
                    LLVMOpcode::LLVMAlloca => {
                        self.spaces.insert(inst, Space::Private);
                        changed = true;
                        continue;
                    }
                    LLVMOpcode::LLVMGetElementPtr | LLVMOpcode::LLVMFreeze => {
                        vec![ir::operand(inst, 0)]
                    }
                    LLVMOpcode::LLVMSelect => vec![ir::operand(inst, 1), ir::operand(inst, 2)],
                    LLVMOpcode::LLVMPHI => ir::incoming(inst).into_iter().map(|(v, _)| v).collect(),
                    LLVMOpcode::LLVMCall => {
                        // memcpy/memmove/memset return their destination.
                        vec![ir::operand(inst, 0)]
                    }
                    _ => {
                        return Err(self.low.unsupported(
                            inst,
                            "pointers produced this way (loaded from memory, made from integers) have no known OpenCL address space",
                        ))
                    }
                };
                let mut found = None;
                for s in sources {
                    let space = if ir::is_global_variable(s) {
                        self.low.global_name(s, inst)?;
                        Some(Space::Constant)
                    } else if ir::is_null_pointer(s) || ir::is_undef(s) {
                        None
                    } else {
                        self.spaces.get(&s).copied()
                    };
                    match (found, space) {
                        (_, None) => {}
                        (None, Some(x)) => found = Some(x),
                        (Some(a), Some(b)) if a == b => {}
                        (Some(_), Some(_)) => {
                            return Err(self.low.unsupported(
                                inst,
                                "pointer may point into different OpenCL address spaces (a buffer and a private array)",
                            ))
                        }
                    }
                }
                if let Some(s) = found {
                    self.spaces.insert(inst, s);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        for &inst in &insts {
            if self.types.get(&inst) == Some(&Cty::Ptr) && !self.spaces.contains_key(&inst) {
                // Only null/undef sources: any space works.
                self.spaces.insert(inst, Space::Global);
            }
        }
        Ok(())
    }

    fn declare(&mut self, blocks: &[Block]) -> Result<(), LowerError> {
        for b in blocks {
            for inst in ir::instructions(*b) {
                let Some(ty) = self.types.get(&inst).copied() else {
                    continue;
                };
                let name = self.names[&inst].clone();
                if ir::opcode(inst) == LLVMOpcode::LLVMAlloca {
                    let t = ir::allocated_type(inst);
                    let count = ir::operand(inst, 0);
                    if !ir::is_constant_int(count) {
                        return Err(self.low.unsupported(
                            inst,
                            "variable-length private arrays have no OpenCL C form",
                        ));
                    }
                    let bytes = self.low.layout.alloc_size(t) * ir::const_int_zext(count);
                    let align = ir::alignment(inst)
                        .max(self.low.layout.abi_align(t))
                        .clamp(1, 128);
                    let _ = writeln!(
                        self.decls,
                        "    uchar {name}_mem[{}] __attribute__((aligned({align})));",
                        bytes.max(1)
                    );
                    let _ = writeln!(self.decls, "    __private uchar* {name} = {name}_mem;");
                    continue;
                }
                match ty {
                    Cty::Pair(w) => {
                        let _ = writeln!(self.decls, "    {} {name}_0;\n    bool {name}_1;", ut(w));
                    }
                    _ => {
                        let c = self.c_type(ty, inst)?;
                        let _ = writeln!(self.decls, "    {c} {name};");
                        if ir::opcode(inst) == LLVMOpcode::LLVMPHI {
                            let _ = writeln!(self.decls, "    {c} {name}_in;");
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn ty(&mut self, v: Value) -> Result<Cty, LowerError> {
        if let Some(t) = self.types.get(&v) {
            return Ok(*t);
        }
        self.low.cty(v, ir::type_of(v))
    }

    fn width(&mut self, v: Value) -> Result<u32, LowerError> {
        Ok(match self.ty(v)? {
            Cty::Bool => 1,
            Cty::Int(w) => w,
            _ => 0,
        })
    }

    /// The C expression for operand `v` (a value name or a literal).
    fn op(&mut self, v: Value, at: Value) -> Result<String, LowerError> {
        if let Some(n) = self.names.get(&v) {
            return Ok(n.clone());
        }
        if ir::is_global_variable(v) {
            return self.low.global_name(v, at);
        }
        let ty = self.ty(v)?;
        if let Cty::Vector(n, lane) = ty {
            let t = format!("{}{n}", lane.unsigned());
            if ir::is_undef(v) || ir::is_zero_aggregate(v) {
                return Ok(format!("(({t})(0))"));
            }
            if ir::is_constant(v) {
                let mut lanes = Vec::new();
                for k in 0..n {
                    let e = ir::aggregate_element(v, k)
                        .ok_or_else(|| self.low.unsupported(at, "unreadable vector constant"))?;
                    if lane == Lane::Mask {
                        let on = ir::is_constant_int(e) && ir::const_int_zext(e) & 1 == 1;
                        lanes.push(if on { "-1" } else { "0" }.to_string());
                    } else {
                        lanes.push(self.op(e, at)?);
                    }
                }
                return Ok(format!("(({t})({}))", lanes.join(", ")));
            }
        }
        if ir::is_undef(v) || ir::is_null_pointer(v) || ir::is_zero_aggregate(v) {
            return Ok(match ty {
                Cty::Bool => "false".into(),
                Cty::Int(w) => format!("(({})0)", ut(w)),
                Cty::F32 => "0.0f".into(),
                Cty::F64 => "0.0".into(),
                Cty::Ptr => "0".into(),
                _ => return Err(self.low.unsupported(at, "aggregate constant operand")),
            });
        }
        if ir::is_constant_int(v) {
            let x = ir::const_int_zext(v);
            return Ok(match ty {
                Cty::Bool => if x & 1 == 1 { "true" } else { "false" }.into(),
                Cty::Int(8) => format!("((uchar){x}u)"),
                Cty::Int(16) => format!("((ushort){x}u)"),
                Cty::Int(32) => format!("{x}u"),
                _ => format!("{x}UL"),
            });
        }
        if ir::is_constant_fp(v) {
            return Ok(float_literal(ir::const_fp(v), ty));
        }
        if ir::is_constant_expr(v) {
            return Err(self.low.unsupported(
                at,
                format!(
                    "constant expression operand `{}` is not lowered",
                    ir::print_value(v)
                ),
            ));
        }
        Err(self.low.unsupported(
            at,
            format!("operand `{}` is not lowered", ir::print_value(v)),
        ))
    }

    fn space_of(&mut self, v: Value, at: Value) -> Result<Space, LowerError> {
        if ir::is_global_variable(v) {
            self.low.global_name(v, at)?;
            return Ok(Space::Constant);
        }
        self.spaces
            .get(&v)
            .copied()
            .ok_or_else(|| self.low.unsupported(at, "pointer of unknown address space"))
    }

    fn label(&self, b: Block) -> String {
        format!("bb{}", self.blocks.get(&b).copied().unwrap_or(usize::MAX))
    }

    fn line(&mut self, text: impl AsRef<str>) {
        self.body.push_str("    ");
        self.body.push_str(text.as_ref());
        self.body.push('\n');
    }

    fn block(&mut self, b: Block) -> Result<(), LowerError> {
        let _ = writeln!(self.body, "{}: ;", self.label(b));
        for inst in ir::instructions(b) {
            self.instruction(inst, b)?;
        }
        Ok(())
    }

    /// Assignments of the phi inputs of `to` for the edge `from -> to`.
    fn edge(&mut self, from: Block, to: Block, at: Value) -> Result<String, LowerError> {
        let mut text = String::new();
        for inst in ir::instructions(to) {
            if ir::opcode(inst) != LLVMOpcode::LLVMPHI {
                break;
            }
            let name = self.names[&inst].clone();
            let incoming = ir::incoming(inst)
                .into_iter()
                .find(|(_, block)| *block == from)
                .map(|(v, _)| v)
                .ok_or_else(|| {
                    self.low
                        .unsupported(at, "phi without an input for this edge")
                })?;
            let value = self.op(incoming, inst)?;
            let _ = write!(text, "{name}_in = {value}; ");
        }
        let _ = write!(text, "goto {};", self.label(to));
        Ok(text)
    }

    fn assign(&mut self, inst: Value, expr: String) {
        let name = self.names[&inst].clone();
        self.line(format!("{name} = {expr};"));
    }

    fn instruction(&mut self, inst: Value, block: Block) -> Result<(), LowerError> {
        use LLVMOpcode::*;
        let opcode = ir::opcode(inst);
        match opcode {
            LLVMPHI => {
                let name = self.names[&inst].clone();
                self.line(format!("{name} = {name}_in;"));
            }
            LLVMAlloca => {}
            LLVMAdd | LLVMSub | LLVMMul | LLVMUDiv | LLVMSDiv | LLVMURem | LLVMSRem | LLVMShl
            | LLVMLShr | LLVMAShr | LLVMAnd | LLVMOr | LLVMXor => {
                let e = self.int_binary(inst, opcode)?;
                self.assign(inst, e);
            }
            LLVMFAdd | LLVMFSub | LLVMFMul | LLVMFDiv | LLVMFRem => {
                self.float_only(inst)?;
                let a = self.op(ir::operand(inst, 0), inst)?;
                let b = self.op(ir::operand(inst, 1), inst)?;
                let e = match opcode {
                    LLVMFAdd => format!("{a} + {b}"),
                    LLVMFSub => format!("{a} - {b}"),
                    LLVMFMul => format!("{a} * {b}"),
                    LLVMFDiv => format!("{a} / {b}"),
                    _ => format!("fmod({a}, {b})"),
                };
                self.assign(inst, e);
            }
            LLVMFNeg => {
                self.float_only(inst)?;
                let a = self.op(ir::operand(inst, 0), inst)?;
                self.assign(inst, format!("-{a}"));
            }
            LLVMICmp => {
                let e = self.icmp(inst)?;
                self.assign(inst, e);
            }
            LLVMFCmp => {
                let e = self.fcmp(inst)?;
                self.assign(inst, e);
            }
            LLVMTrunc | LLVMZExt | LLVMSExt | LLVMFPToSI | LLVMFPToUI | LLVMSIToFP | LLVMUIToFP
            | LLVMFPTrunc | LLVMFPExt | LLVMBitCast | LLVMPtrToInt => {
                let e = self.cast(inst, opcode)?;
                self.assign(inst, e);
            }
            LLVMSelect => {
                let c = self.op(ir::operand(inst, 0), inst)?;
                let a = self.op(ir::operand(inst, 1), inst)?;
                let b = self.op(ir::operand(inst, 2), inst)?;
                match (self.ty(ir::operand(inst, 0))?, self.ty(inst)?) {
                    (Cty::Bool, _) => self.assign(inst, format!("{c} ? {a} : {b}")),
                    (Cty::Vector(n, Lane::Mask), Cty::Vector(_, lane)) => {
                        // select(else, then, mask): the mask's sign bit picks `then`.
                        let m = format!("convert_{}{n}({c})", lane.same_width_int());
                        self.assign(inst, format!("select({b}, {a}, {m})"));
                    }
                    _ => {
                        return Err(self
                            .low
                            .unsupported(inst, "select of this shape is not lowered"))
                    }
                }
            }
            LLVMFreeze => {
                let a = self.op(ir::operand(inst, 0), inst)?;
                self.assign(inst, a);
            }
            LLVMExtractElement => {
                let v = self.op(ir::operand(inst, 0), inst)?;
                let k = self.lane_index(ir::operand(inst, 1), inst)?;
                if self.ty(inst)? == Cty::Bool {
                    self.assign(inst, format!("({v}.{k} != 0)"));
                } else {
                    self.assign(inst, format!("{v}.{k}"));
                }
            }
            LLVMInsertElement => {
                let v = self.op(ir::operand(inst, 0), inst)?;
                let x = self.op(ir::operand(inst, 1), inst)?;
                let k = self.lane_index(ir::operand(inst, 2), inst)?;
                let name = self.names[&inst].clone();
                let x = if matches!(self.ty(inst)?, Cty::Vector(_, Lane::Mask)) {
                    format!("({x} ? -1 : 0)")
                } else {
                    x
                };
                self.line(format!("{name} = {v}; {name}.{k} = {x};"));
            }
            LLVMShuffleVector => {
                let Cty::Vector(n, lane) = self.ty(inst)? else {
                    return Err(self.low.unsupported(inst, "shuffle to a non-vector"));
                };
                let first = ir::operand(inst, 0);
                let Cty::Vector(width, _) = self.ty(first)? else {
                    return Err(self.low.unsupported(inst, "shuffle of a non-vector"));
                };
                let a = self.op(first, inst)?;
                let b = self.op(ir::operand(inst, 1), inst)?;
                let zero = if lane == Lane::F32 {
                    "0.0f"
                } else if lane == Lane::F64 {
                    "0.0"
                } else {
                    "0"
                };
                let lanes: Vec<String> = ir::shuffle_mask(inst)
                    .into_iter()
                    .map(|m| match m {
                        Some(k) if k < width => format!("{a}.s{k:x}"),
                        Some(k) => format!("{b}.s{:x}", k - width),
                        None => zero.to_string(),
                    })
                    .collect();
                self.assign(
                    inst,
                    format!("({}{n})({})", lane.unsigned(), lanes.join(", ")),
                );
            }
            LLVMGetElementPtr => {
                let e = self.gep(inst)?;
                self.assign(inst, e);
            }
            LLVMLoad => self.load(inst)?,
            LLVMStore => self.store(inst)?,
            LLVMCall => self.call(inst)?,
            LLVMExtractValue => {
                let agg = ir::operand(inst, 0);
                let indices = ir::extract_indices(inst);
                match (self.ty(agg)?, indices.as_slice()) {
                    (Cty::Pair(_), [k @ (0 | 1)]) => {
                        let base = self.op(agg, inst)?;
                        self.assign(inst, format!("{base}_{k}"));
                    }
                    _ => {
                        return Err(self.low.unsupported(
                            inst,
                            "extractvalue is only lowered for overflow intrinsic results",
                        ))
                    }
                }
            }
            LLVMBr => {
                if ir::is_conditional(inst) {
                    let c = self.op(ir::condition(inst), inst)?;
                    let t = self.edge(block, ir::successor(inst, 0), inst)?;
                    let f = self.edge(block, ir::successor(inst, 1), inst)?;
                    self.line(format!("if ({c}) {{ {t} }} else {{ {f} }}"));
                } else {
                    let t = self.edge(block, ir::successor(inst, 0), inst)?;
                    self.line(t);
                }
            }
            LLVMSwitch => {
                let c = self.op(ir::operand(inst, 0), inst)?;
                let mut text = format!("switch ({c}) {{");
                for (value, dest) in ir::switch_cases(inst) {
                    let value = self.op(value, inst)?;
                    let e = self.edge(block, dest, inst)?;
                    let _ = write!(text, " case {value}: {{ {e} }}");
                }
                let default = ir::switch_default(inst);
                let e = self.edge(block, default, inst)?;
                let _ = write!(text, " default: {{ {e} }} }}");
                self.line(text);
            }
            LLVMRet => {
                if ir::num_operands(inst) == 0 {
                    self.line("return;");
                } else {
                    let v = self.op(ir::operand(inst, 0), inst)?;
                    self.line(format!("return {v};"));
                }
            }
            LLVMUnreachable => {
                // Reaching it is undefined behaviour; leaving the function is one answer.
                let z = self.zero();
                self.line(format!("return{z};"));
            }
            other => {
                return Err(self.low.unsupported(
                    inst,
                    format!("instruction `{}` is not lowered", opcode_name(other)),
                ))
            }
        }
        Ok(())
    }

    fn float_only(&mut self, inst: Value) -> Result<(), LowerError> {
        match self.ty(inst)? {
            Cty::F32 | Cty::F64 | Cty::Vector(_, Lane::F32 | Lane::F64) => Ok(()),
            _ => Err(self.low.unsupported(
                inst,
                "only float arithmetic on floats or float vectors is lowered",
            )),
        }
    }

    fn int_binary(&mut self, inst: Value, opcode: LLVMOpcode) -> Result<String, LowerError> {
        use LLVMOpcode::*;
        let w = match self.ty(inst)? {
            Cty::Bool => 1,
            Cty::Int(w) => w,
            Cty::Vector(n, lane @ (Lane::Int(_) | Lane::Mask)) => {
                return self.vector_int_binary(inst, opcode, n, lane)
            }
            _ => {
                return Err(self.low.unsupported(
                    inst,
                    "only integer arithmetic on integers or integer vectors is lowered",
                ))
            }
        };
        let a = self.op(ir::operand(inst, 0), inst)?;
        let b = self.op(ir::operand(inst, 1), inst)?;
        let (u, wd) = (ut(w), wide(w));
        Ok(match opcode {
            LLVMAdd | LLVMSub | LLVMMul => {
                let o = match opcode {
                    LLVMAdd => "+",
                    LLVMSub => "-",
                    _ => "*",
                };
                if w == 1 {
                    format!("(bool)((((uint){a}) {o} ((uint){b})) & 1u)")
                } else {
                    format!("({u})((({wd}){a}) {o} (({wd}){b}))")
                }
            }
            LLVMUDiv => format!("({u})({a} / {b})"),
            LLVMURem => format!("({u})({a} % {b})"),
            LLVMSDiv => format!("({u})({} / {})", signed(&a, w), signed(&b, w)),
            LLVMSRem => format!("({u})({} % {})", signed(&a, w), signed(&b, w)),
            LLVMShl => {
                if w == 1 {
                    a
                } else {
                    format!("({u})((({wd}){a}) << {b})")
                }
            }
            LLVMLShr => format!("({u})({a} >> {b})"),
            LLVMAShr => {
                if w == 1 {
                    a
                } else {
                    format!("({u})({} >> {b})", signed(&a, w))
                }
            }
            LLVMAnd => format!("({u})({a} & {b})"),
            LLVMOr => format!("({u})({a} | {b})"),
            _ => format!("({u})({a} ^ {b})"),
        })
    }

    /// Integer vector arithmetic: OpenCL's vector operators do not promote, so unsigned
    /// lanes wrap as LLVM's do; signed operations reinterpret the lanes.
    fn vector_int_binary(
        &mut self,
        inst: Value,
        opcode: LLVMOpcode,
        n: u32,
        lane: Lane,
    ) -> Result<String, LowerError> {
        use LLVMOpcode::*;
        if lane == Lane::Mask && !matches!(opcode, LLVMAnd | LLVMOr | LLVMXor) {
            return Err(self
                .low
                .unsupported(inst, "arithmetic on comparison masks is not lowered"));
        }
        let a = self.op(ir::operand(inst, 0), inst)?;
        let b = self.op(ir::operand(inst, 1), inst)?;
        let (u, s) = (
            format!("{}{n}", lane.unsigned()),
            format!("{}{n}", lane.signed()),
        );
        let o = match opcode {
            LLVMAdd => "+",
            LLVMSub => "-",
            LLVMMul => "*",
            LLVMUDiv | LLVMSDiv => "/",
            LLVMURem | LLVMSRem => "%",
            LLVMShl => "<<",
            LLVMLShr | LLVMAShr => ">>",
            LLVMAnd => "&",
            LLVMOr => "|",
            _ => "^",
        };
        Ok(match opcode {
            LLVMSDiv | LLVMSRem => format!("as_{u}(as_{s}({a}) {o} as_{s}({b}))"),
            LLVMAShr => format!("as_{u}(as_{s}({a}) >> {b})"),
            _ => format!("{a} {o} {b}"),
        })
    }

    /// Vector conversions through OpenCL's `convert_` (C's rules, lane by lane) and
    /// `as_` (bit reinterpretation).
    fn vector_cast(
        &mut self,
        inst: Value,
        opcode: LLVMOpcode,
        from: Cty,
        to: Cty,
    ) -> Result<String, LowerError> {
        use LLVMOpcode::*;
        let a = self.op(ir::operand(inst, 0), inst)?;
        let (Cty::Vector(n, fl), Cty::Vector(m, tl)) = (from, to) else {
            if opcode == LLVMBitCast {
                let target = match to {
                    Cty::Int(w) if w >= 8 => ut(w).to_string(),
                    Cty::F32 => "float".into(),
                    Cty::F64 => "double".into(),
                    Cty::Vector(m, tl) if m != 3 => format!("{}{m}", tl.unsigned()),
                    _ => {
                        return Err(self
                            .low
                            .unsupported(inst, "bitcast between these types is not lowered"))
                    }
                };
                if matches!(from, Cty::Vector(3, _)) {
                    return Err(self.low.unsupported(
                        inst,
                        "bitcast of a 3-lane vector (4 lanes in OpenCL memory)",
                    ));
                }
                return Ok(format!("as_{target}({a})"));
            }
            return Err(self
                .low
                .unsupported(inst, "conversion between a vector and a scalar"));
        };
        if n != m {
            if opcode == LLVMBitCast && n != 3 && m != 3 {
                return Ok(format!("as_{}{m}({a})", tl.unsigned()));
            }
            return Err(self
                .low
                .unsupported(inst, "vector conversion that changes the lane count"));
        }
        let (fu, fs) = (
            format!("{}{n}", fl.unsigned()),
            format!("{}{n}", fl.signed()),
        );
        let (tu, ts) = (
            format!("{}{n}", tl.unsigned()),
            format!("{}{n}", tl.signed()),
        );
        if fl == Lane::Mask || tl == Lane::Mask {
            // Masks hold -1/0 per lane.
            return Ok(match opcode {
                LLVMZExt | LLVMUIToFP if fl == Lane::Mask => {
                    format!("convert_{tu}({a} & (char{n})(1))")
                }
                LLVMSExt | LLVMSIToFP if fl == Lane::Mask => format!("as_{tu}(convert_{ts}({a}))"),
                LLVMTrunc if tl == Lane::Mask => {
                    format!("convert_char{n}(({a} & ({fu})(1)) != ({fu})(0))")
                }
                _ => {
                    return Err(self
                        .low
                        .unsupported(inst, "conversion of a comparison mask is not lowered"))
                }
            });
        }
        Ok(match opcode {
            LLVMBitCast if fl == tl => a,
            LLVMBitCast if n != 3 => format!("as_{tu}({a})"),
            LLVMTrunc | LLVMZExt | LLVMUIToFP | LLVMFPToUI | LLVMFPTrunc | LLVMFPExt => {
                format!("convert_{tu}({a})")
            }
            LLVMSExt | LLVMSIToFP => format!("as_{tu}(convert_{ts}(as_{fs}({a})))"),
            LLVMFPToSI => format!("as_{tu}(convert_{ts}({a}))"),
            _ => {
                let _ = fu;
                return Err(self
                    .low
                    .unsupported(inst, "vector conversion is not lowered"));
            }
        })
    }

    fn lane_index(&mut self, idx: Value, at: Value) -> Result<String, LowerError> {
        if !ir::is_constant_int(idx) {
            return Err(self.low.unsupported(at, "vector lane chosen at run time"));
        }
        Ok(format!("s{:x}", ir::const_int_zext(idx)))
    }

    fn icmp(&mut self, inst: Value) -> Result<String, LowerError> {
        use LLVMIntPredicate::*;
        let (x, y) = (ir::operand(inst, 0), ir::operand(inst, 1));
        let ty = self.ty(x)?;
        if let Cty::Vector(n, lane @ Lane::Int(_)) = ty {
            let a = self.op(x, inst)?;
            let b = self.op(y, inst)?;
            let s = format!("{}{n}", lane.signed());
            let e = match ir::icmp_predicate(inst) {
                LLVMIntEQ => format!("{a} == {b}"),
                LLVMIntNE => format!("{a} != {b}"),
                LLVMIntUGT => format!("{a} > {b}"),
                LLVMIntUGE => format!("{a} >= {b}"),
                LLVMIntULT => format!("{a} < {b}"),
                LLVMIntULE => format!("{a} <= {b}"),
                LLVMIntSGT => format!("as_{s}({a}) > as_{s}({b})"),
                LLVMIntSGE => format!("as_{s}({a}) >= as_{s}({b})"),
                LLVMIntSLT => format!("as_{s}({a}) < as_{s}({b})"),
                LLVMIntSLE => format!("as_{s}({a}) <= as_{s}({b})"),
            };
            return Ok(format!("convert_char{n}({e})"));
        }
        if !matches!(ty, Cty::Bool | Cty::Int(_) | Cty::Ptr) {
            return Err(self
                .low
                .unsupported(inst, "comparisons of these vectors are not lowered"));
        }
        let w = self.width(x)?;
        let a = self.op(x, inst)?;
        let b = self.op(y, inst)?;
        let pred = ir::icmp_predicate(inst);
        let (a, b, o) = match pred {
            LLVMIntEQ => (a, b, "=="),
            LLVMIntNE => (a, b, "!="),
            LLVMIntUGT => (a, b, ">"),
            LLVMIntUGE => (a, b, ">="),
            LLVMIntULT => (a, b, "<"),
            LLVMIntULE => (a, b, "<="),
            LLVMIntSGT | LLVMIntSGE | LLVMIntSLT | LLVMIntSLE => {
                if ty == Cty::Ptr {
                    return Err(self.low.unsupported(inst, "signed pointer comparison"));
                }
                let o = match pred {
                    LLVMIntSGT => ">",
                    LLVMIntSGE => ">=",
                    LLVMIntSLT => "<",
                    _ => "<=",
                };
                (signed(&a, w), signed(&b, w), o)
            }
        };
        Ok(format!("({a} {o} {b})"))
    }

    fn fcmp(&mut self, inst: Value) -> Result<String, LowerError> {
        use LLVMRealPredicate::*;
        let x = ir::operand(inst, 0);
        let lanes = match self.ty(x)? {
            Cty::F32 | Cty::F64 => None,
            Cty::Vector(n, Lane::F32 | Lane::F64) => Some(n),
            _ => {
                return Err(self
                    .low
                    .unsupported(inst, "comparisons of these vectors are not lowered"))
            }
        };
        let a = self.op(x, inst)?;
        let b = self.op(ir::operand(inst, 1), inst)?;
        if let Some(n) = lanes {
            // OpenCL's vector comparisons, `!`, `||`, `&&` and `isnan` give -1/0 lanes.
            let e = match ir::fcmp_predicate(inst) {
                LLVMRealPredicateFalse => return Ok(format!("((char{n})(0))")),
                LLVMRealPredicateTrue => return Ok(format!("((char{n})(-1))")),
                LLVMRealOEQ => format!("{a} == {b}"),
                LLVMRealOGT => format!("{a} > {b}"),
                LLVMRealOGE => format!("{a} >= {b}"),
                LLVMRealOLT => format!("{a} < {b}"),
                LLVMRealOLE => format!("{a} <= {b}"),
                LLVMRealONE => format!("({a} < {b}) || ({a} > {b})"),
                LLVMRealORD => format!("!isnan({a}) && !isnan({b})"),
                LLVMRealUNO => format!("isnan({a}) || isnan({b})"),
                LLVMRealUEQ => format!("!(({a} < {b}) || ({a} > {b}))"),
                LLVMRealUGT => format!("!({a} <= {b})"),
                LLVMRealUGE => format!("!({a} < {b})"),
                LLVMRealULT => format!("!({a} >= {b})"),
                LLVMRealULE => format!("!({a} > {b})"),
                LLVMRealUNE => format!("{a} != {b}"),
            };
            return Ok(format!("convert_char{n}({e})"));
        }
        // C's relational operators are ordered (false on NaN) and `!=` is unordered;
        // the rest follows by negation.
        Ok(match ir::fcmp_predicate(inst) {
            LLVMRealPredicateFalse => "false".into(),
            LLVMRealPredicateTrue => "true".into(),
            LLVMRealOEQ => format!("({a} == {b})"),
            LLVMRealOGT => format!("({a} > {b})"),
            LLVMRealOGE => format!("({a} >= {b})"),
            LLVMRealOLT => format!("({a} < {b})"),
            LLVMRealOLE => format!("({a} <= {b})"),
            LLVMRealONE => format!("(({a} < {b}) || ({a} > {b}))"),
            LLVMRealORD => format!("(!isnan({a}) && !isnan({b}))"),
            LLVMRealUNO => format!("(isnan({a}) || isnan({b}))"),
            LLVMRealUEQ => format!("!(({a} < {b}) || ({a} > {b}))"),
            LLVMRealUGT => format!("!({a} <= {b})"),
            LLVMRealUGE => format!("!({a} < {b})"),
            LLVMRealULT => format!("!({a} >= {b})"),
            LLVMRealULE => format!("!({a} > {b})"),
            LLVMRealUNE => format!("({a} != {b})"),
        })
    }

    fn float_c(ty: Cty) -> &'static str {
        if ty == Cty::F64 {
            "double"
        } else {
            "float"
        }
    }

    fn cast(&mut self, inst: Value, opcode: LLVMOpcode) -> Result<String, LowerError> {
        use LLVMOpcode::*;
        let src = ir::operand(inst, 0);
        let from = self.ty(src)?;
        let to = self.ty(inst)?;
        if matches!(from, Cty::Vector(..)) || matches!(to, Cty::Vector(..)) {
            return self.vector_cast(inst, opcode, from, to);
        }
        let a = self.op(src, inst)?;
        let wf = self.width(src)?;
        let wt = self.width(inst)?;
        let bad = |s: &Self| {
            s.low
                .unsupported(inst, "vector or aggregate conversions are not lowered")
        };
        let is_int = |t: Cty| matches!(t, Cty::Bool | Cty::Int(_));
        let is_float = |t: Cty| matches!(t, Cty::F32 | Cty::F64);
        Ok(match opcode {
            LLVMTrunc if is_int(from) && is_int(to) => {
                if wt == 1 {
                    format!("(bool)({a} & 1u)")
                } else {
                    format!("({})({a})", ut(wt))
                }
            }
            LLVMZExt if is_int(from) && is_int(to) => format!("({})({a})", ut(wt)),
            LLVMSExt if is_int(from) && is_int(to) => {
                format!("({})(({}){})", ut(wt), st(wt), signed(&a, wf))
            }
            LLVMFPToSI if is_float(from) && is_int(to) => {
                if wt == 1 {
                    format!("(bool)((int)({a}) & 1)")
                } else {
                    format!("({})(({})({a}))", ut(wt), st(wt))
                }
            }
            LLVMFPToUI if is_float(from) && is_int(to) => {
                if wt == 1 {
                    format!("(bool)((uint)({a}) & 1u)")
                } else {
                    format!("({})({a})", ut(wt))
                }
            }
            LLVMSIToFP if is_int(from) && is_float(to) => {
                format!("({}){}", Self::float_c(to), signed(&a, wf))
            }
            LLVMUIToFP if is_int(from) && is_float(to) => format!("({})({a})", Self::float_c(to)),
            LLVMFPTrunc | LLVMFPExt if is_float(from) && is_float(to) => {
                format!("({})({a})", Self::float_c(to))
            }
            LLVMBitCast => {
                if from == to {
                    a
                } else {
                    let target = match to {
                        Cty::Int(32) => "as_uint",
                        Cty::Int(64) => "as_ulong",
                        Cty::F32 => "as_float",
                        Cty::F64 => "as_double",
                        _ => return Err(bad(self)),
                    };
                    format!("{target}({a})")
                }
            }
            LLVMPtrToInt if from == Cty::Ptr && is_int(to) => format!("({})((ulong)({a}))", ut(wt)),
            _ => return Err(bad(self)),
        })
    }

    fn gep(&mut self, inst: Value) -> Result<String, LowerError> {
        let base = ir::operand(inst, 0);
        let base_c = self.op(base, inst)?;
        let mut ty = ir::gep_source_type(inst);
        let mut constant: i64 = 0;
        let mut terms: Vec<String> = Vec::new();
        let n = ir::num_operands(inst);
        for k in 1..n {
            let idx = ir::operand(inst, k);
            let stride = if k == 1 {
                self.low.layout.alloc_size(ty)
            } else {
                match ir::kind(ty) {
                    LLVMTypeKind::LLVMStructTypeKind => {
                        if !ir::is_constant_int(idx) {
                            return Err(self
                                .low
                                .unsupported(inst, "non-constant struct field index"));
                        }
                        let field = ir::const_int_zext(idx) as u32;
                        constant =
                            constant.wrapping_add(self.low.layout.field_offset(ty, field) as i64);
                        ty = ir::struct_element_types(ty)
                            .get(field as usize)
                            .copied()
                            .ok_or_else(|| {
                                self.low.unsupported(inst, "struct field out of range")
                            })?;
                        continue;
                    }
                    LLVMTypeKind::LLVMArrayTypeKind | LLVMTypeKind::LLVMVectorTypeKind => {
                        ty = ir::element_type(ty);
                        self.low.layout.alloc_size(ty)
                    }
                    _ => return Err(self.low.unsupported(inst, "GEP into a non-aggregate type")),
                }
            };
            let w = match self.ty(idx)? {
                Cty::Int(w) => w,
                _ => {
                    return Err(self
                        .low
                        .unsupported(inst, "vector GEP indices are not lowered"))
                }
            };
            if ir::is_constant_int(idx) {
                let v = sext64(ir::const_int_zext(idx), w);
                constant = constant.wrapping_add(v.wrapping_mul(stride as i64));
            } else {
                let i = self.op(idx, inst)?;
                let s = signed(&i, w);
                if stride == 1 {
                    terms.push(format!("(long){s}"));
                } else {
                    terms.push(format!("(long){s} * {stride}L"));
                }
            }
        }
        if constant != 0 || terms.is_empty() {
            terms.push(format!("({constant}L)"));
        }
        Ok(format!("{base_c} + ({})", terms.join(" + ")))
    }

    /// `*(AS T*)p`, or a byte-wise read when the access is under-aligned.
    fn memory_type(&mut self, at: Value, ty: Cty) -> Result<(&'static str, u32), LowerError> {
        Ok(match ty {
            Cty::Bool => ("uchar", 1),
            Cty::Int(w) => (ut(w), w / 8),
            Cty::F32 => ("float", 4),
            Cty::F64 => ("double", 8),
            _ => {
                return Err(self.low.unsupported(
                    at,
                    "loads and stores of pointers or aggregates are not lowered",
                ))
            }
        })
    }

    fn load(&mut self, inst: Value) -> Result<(), LowerError> {
        let p = ir::operand(inst, 0);
        let space = self.space_of(p, inst)?.qualifier();
        let pc = self.op(p, inst)?;
        let ty = self.ty(inst)?;
        if let Cty::Vector(_, Lane::Mask) = ty {
            return Err(self.low.unsupported(inst, "loading a vector of i1"));
        }
        if let Cty::Vector(n, lane) = ty {
            // vloadN needs only the lane type's alignment, which OpenCL buffers give.
            let e = format!("vload{n}(0, ({space} {}*)({pc}))", lane.unsigned());
            self.assign(inst, e);
            return Ok(());
        }
        let (c, size) = self.memory_type(inst, ty)?;
        let e = if ir::alignment(inst) >= size || size == 1 {
            format!("*(({space} {c}*)({pc}))")
        } else {
            let bytes: Vec<String> = (0..size).map(|k| format!("{pc}[{k}]")).collect();
            format!("as_{c}((uchar{size})({}))", bytes.join(", "))
        };
        let e = if ty == Cty::Bool {
            format!("(bool)({e} & 1u)")
        } else {
            e
        };
        self.assign(inst, e);
        Ok(())
    }

    fn store(&mut self, inst: Value) -> Result<(), LowerError> {
        let v = ir::operand(inst, 0);
        let p = ir::operand(inst, 1);
        let space = self.space_of(p, inst)?;
        if space == Space::Constant {
            return Err(self.low.unsupported(inst, "store into constant data"));
        }
        let q = space.qualifier();
        let pc = self.op(p, inst)?;
        let vc = self.op(v, inst)?;
        let ty = self.ty(v)?;
        if let Cty::Vector(_, Lane::Mask) = ty {
            return Err(self.low.unsupported(inst, "storing a vector of i1"));
        }
        if let Cty::Vector(n, lane) = ty {
            self.line(format!(
                "vstore{n}({vc}, 0, ({q} {}*)({pc}));",
                lane.unsigned()
            ));
            return Ok(());
        }
        let (c, size) = self.memory_type(inst, ty)?;
        if ir::alignment(inst) >= size || size == 1 {
            self.line(format!("*(({q} {c}*)({pc})) = ({c})({vc});"));
        } else {
            let mut text = format!("{{ uchar{size} t = as_uchar{size}({vc});");
            for k in 0..size {
                let _ = write!(text, " {pc}[{k}] = t.s{k:x};");
            }
            text.push_str(" }");
            self.line(text);
        }
        Ok(())
    }

    fn call(&mut self, inst: Value) -> Result<(), LowerError> {
        let callee = ir::called_value(inst);
        if !ir::is_function(callee) {
            return Err(self.low.unsupported(inst, "indirect calls are not lowered"));
        }
        let name = ir::name(callee);
        let argc = ir::num_call_args(inst);
        let args: Vec<Value> = (0..argc).map(|k| ir::operand(inst, k)).collect();
        if name == PANIC_SYMBOL {
            let code = self.op(args[0], inst)?;
            let z = self.zero();
            self.line(format!(
                "atomic_cmpxchg(offload_status, 0, (int)({code}) + 1); return{z};"
            ));
            return Ok(());
        }
        if !ir::is_declaration(callee) {
            let c_name = self
                .low
                .function_names
                .get(&callee)
                .cloned()
                .ok_or_else(|| {
                    self.low
                        .unsupported(inst, "call to a function that was not discovered")
                })?;
            let mut list = Vec::new();
            for a in &args {
                if self.ty(*a)? == Cty::Ptr && self.space_of(*a, inst)? != Space::Global {
                    return Err(self.low.unsupported(
                        inst,
                        "passing a private array or constant data to a function that was not inlined",
                    ));
                }
                list.push(self.op(*a, inst)?);
            }
            list.push("offload_status".into());
            let call = format!("{c_name}({})", list.join(", "));
            if self.names.contains_key(&inst) {
                self.assign(inst, call);
            } else {
                self.line(format!("{call};"));
            }
            if self.low.panicking.contains(&callee) {
                let z = self.zero();
                self.line(format!("if (*offload_status != 0) return{z};"));
            }
            return Ok(());
        }
        if let Some(key) = intrinsic_key(&name) {
            return self.intrinsic(inst, key, &args);
        }
        match name.as_str() {
            "memset" => return self.memset(inst, &args, true),
            "memcpy" => return self.memcpy(inst, &args, false, true),
            "memmove" => return self.memcpy(inst, &args, true, true),
            _ => {}
        }
        if let Some((builtin, _)) = libm_builtin(&name) {
            let mut list = Vec::new();
            for a in &args {
                let c = self.op(*a, inst)?;
                // ldexp's exponent is an `int` in OpenCL C.
                list.push(if self.ty(*a)? == Cty::Int(32) {
                    format!("(int){c}")
                } else {
                    c
                });
            }
            self.assign(inst, format!("{builtin}({})", list.join(", ")));
            return Ok(());
        }
        Err(self.low.unsupported(
            inst,
            format!("call to `{}` has no OpenCL C counterpart", demangle(&name)),
        ))
    }

    fn memset(&mut self, inst: Value, args: &[Value], returns: bool) -> Result<(), LowerError> {
        let space = self.space_of(args[0], inst)?.qualifier();
        let d = self.op(args[0], inst)?;
        let v = self.op(args[1], inst)?;
        let n = self.op(args[2], inst)?;
        self.line(format!(
            "for (offload_k = 0; offload_k < (ulong)({n}); offload_k++) (({space} uchar*)({d}))[offload_k] = (uchar)({v});"
        ));
        if returns && self.names.contains_key(&inst) {
            self.assign(inst, d);
        }
        Ok(())
    }

    fn memcpy(
        &mut self,
        inst: Value,
        args: &[Value],
        overlap: bool,
        returns: bool,
    ) -> Result<(), LowerError> {
        let ds = self.space_of(args[0], inst)?;
        let ss = self.space_of(args[1], inst)?;
        let d = self.op(args[0], inst)?;
        let s = self.op(args[1], inst)?;
        let n = self.op(args[2], inst)?;
        let forward = format!(
            "for (offload_k = 0; offload_k < (ulong)({n}); offload_k++) (({} uchar*)({d}))[offload_k] = (({} uchar*)({s}))[offload_k];",
            ds.qualifier(),
            ss.qualifier()
        );
        if overlap && ds == ss {
            let backward = format!(
                "for (offload_k = (ulong)({n}); offload_k > 0; offload_k--) (({} uchar*)({d}))[offload_k - 1] = (({} uchar*)({s}))[offload_k - 1];",
                ds.qualifier(),
                ss.qualifier()
            );
            self.line(format!(
                "if ({d} <= {s}) {{ {forward} }} else {{ {backward} }}"
            ));
        } else {
            self.line(forward);
        }
        if returns && self.names.contains_key(&inst) {
            self.assign(inst, d);
        }
        Ok(())
    }

    fn intrinsic(&mut self, inst: Value, key: &str, args: &[Value]) -> Result<(), LowerError> {
        let mut a = Vec::new();
        for v in args {
            // Metadata operands (dbg) and the like have no C form; they are never read.
            if matches!(
                key,
                "dbg"
                    | "var.annotation"
                    | "experimental.noalias.scope.decl"
                    | "lifetime.start"
                    | "lifetime.end"
                    | "invariant.start"
                    | "invariant.end"
                    | "assume"
                    | "sideeffect"
            ) {
                break;
            }
            a.push(self.op(*v, inst)?);
        }
        let ty = self.ty(inst)?;
        let w = self.width(inst)?;
        let e: String = match key {
            "dbg"
            | "var.annotation"
            | "experimental.noalias.scope.decl"
            | "lifetime.start"
            | "lifetime.end"
            | "invariant.start"
            | "invariant.end"
            | "assume"
            | "sideeffect" => {
                if self.names.contains_key(&inst) {
                    return Err(self
                        .low
                        .unsupported(inst, "value of a marker intrinsic is used"));
                }
                return Ok(());
            }
            "memset" => return self.memset(inst, args, false),
            "memcpy" => return self.memcpy(inst, args, false, false),
            "memmove" => return self.memcpy(inst, args, true, false),
            "expect" | "canonicalize" => a[0].clone(),
            "sqrt" | "fabs" | "floor" | "ceil" | "trunc" | "rint" | "round" | "sin" | "cos"
            | "tan" | "asin" | "acos" | "atan" | "sinh" | "cosh" | "tanh" | "exp" | "exp2"
            | "exp10" | "log" | "log2" | "log10" | "pow" | "atan2" | "copysign" | "fma" => {
                self.float_only(inst)?;
                format!("{key}({})", a.join(", "))
            }
            "nearbyint" | "roundeven" => {
                self.float_only(inst)?;
                format!("rint({})", a[0])
            }
            // fmuladd may fuse or not; fusing is what a CPU with FMA does too.
            "fmuladd" => {
                self.float_only(inst)?;
                format!("fma({})", a.join(", "))
            }
            "powi" => {
                self.float_only(inst)?;
                format!("pown({}, (int){})", a[0], a[1])
            }
            "ldexp" => {
                self.float_only(inst)?;
                format!("ldexp({}, (int){})", a[0], a[1])
            }
            // OpenCL's fmin/fmax return the other operand for one NaN, like minnum/maxnum.
            "minnum" => {
                self.float_only(inst)?;
                format!("fmin({}, {})", a[0], a[1])
            }
            "maxnum" => {
                self.float_only(inst)?;
                format!("fmax({}, {})", a[0], a[1])
            }
            // IEEE 754-2019 minimum/maximum: NaN propagates, -0 < +0.
            "minimum" | "maximum" => {
                self.float_only(inst)?;
                let (x, y) = (&a[0], &a[1]);
                let (pick, f) = if key == "minimum" {
                    ("signbit", "fmin")
                } else {
                    ("!signbit", "fmax")
                };
                format!(
                    "(isnan({x}) || isnan({y})) ? ({x} + {y}) : (({x} == {y}) ? ({pick}({x}) ? {x} : {y}) : {f}({x}, {y}))"
                )
            }
            "smin" | "smax" | "umin" | "umax" | "abs" if w > 1 => {
                let f = if key.ends_with("min") { "min" } else { "max" };
                match key {
                    "smin" | "smax" => format!(
                        "({})({f}({}, {}))",
                        ut(w),
                        signed(&a[0], w),
                        signed(&a[1], w)
                    ),
                    "umin" | "umax" => format!("({})({f}({}, {}))", ut(w), a[0], a[1]),
                    _ => format!("({})(abs({}))", ut(w), signed(&a[0], w)),
                }
            }
            // OpenCL's add_sat/sub_sat saturate in the operands' own (un)signed type.
            "uadd.sat" | "usub.sat" if w > 1 => {
                let f = if key == "uadd.sat" {
                    "add_sat"
                } else {
                    "sub_sat"
                };
                format!("({})({f}({}, {}))", ut(w), a[0], a[1])
            }
            "sadd.sat" | "ssub.sat" if w > 1 => {
                let f = if key == "sadd.sat" {
                    "add_sat"
                } else {
                    "sub_sat"
                };
                format!(
                    "({})({f}({}, {}))",
                    ut(w),
                    signed(&a[0], w),
                    signed(&a[1], w)
                )
            }
            "ctpop" if w > 1 => format!("({})(popcount({}))", ut(w), a[0]),
            "ctlz" if w > 1 => format!("({})(clz({}))", ut(w), a[0]),
            "cttz" if w > 1 => {
                let u = ut(w);
                format!(
                    "({u})(popcount(({u})(({u})({x} & ({u})(0u - {x})) - 1u)))",
                    x = a[0]
                )
            }
            "bswap" if w >= 16 => {
                let n = w / 8;
                let order: String = (0..n).rev().map(|k| format!("{k:x}")).collect();
                format!("as_{}(as_uchar{n}({}).s{order})", ut(w), a[0])
            }
            "fshl" | "fshr" if w > 1 => {
                let (u, wd) = (ut(w), wide(w));
                let (x, y, s) = (&a[0], &a[1], &a[2]);
                let s = format!("(({s}) % {w}u)");
                if key == "fshl" {
                    format!("({s} == 0) ? {x} : ({u})((({wd}){x} << {s}) | (({wd}){y} >> ({w}u - {s})))")
                } else {
                    format!("({s} == 0) ? {y} : ({u})((({wd}){y} >> {s}) | (({wd}){x} << ({w}u - {s})))")
                }
            }
            // any()/all() test the sign bit of each lane, which a mask's -1 sets.
            "vector.reduce.or" | "vector.reduce.and"
                if matches!(self.ty(args[0])?, Cty::Vector(_, Lane::Mask)) =>
            {
                let f = if key == "vector.reduce.or" {
                    "any"
                } else {
                    "all"
                };
                format!("({f}({}) != 0)", a[0])
            }
            "fptosi.sat" | "fptoui.sat" if w > 1 => {
                // Rust's `as` saturates: NaN gives 0, out-of-range values the nearest bound.
                // The bounds are powers of two, exact in any float type.
                let x = &a[0];
                let src = self.ty(args[0])?;
                let f = Self::float_c(src);
                let suffix = if src == Cty::F32 { "f" } else { "" };
                let u = ut(w);
                if key == "fptosi.sat" {
                    let s = st(w);
                    let hi = format!("{:e}{suffix}", 2f64.powi(w as i32 - 1));
                    let lo = format!("-{:e}{suffix}", 2f64.powi(w as i32 - 1));
                    let (max, min) = if w == 64 {
                        (
                            "0x7fffffffffffffffUL".to_string(),
                            "0x8000000000000000UL".to_string(),
                        )
                    } else {
                        (
                            format!("({u}){}u", (1u64 << (w - 1)) - 1),
                            format!("({u}){}u", 1u64 << (w - 1)),
                        )
                    };
                    let _ = f;
                    format!("isnan({x}) ? ({u})0 : ({x} >= {hi}) ? {max} : ({x} <= {lo}) ? {min} : ({u})(({s})({x}))")
                } else {
                    let hi = format!("{:e}{suffix}", 2f64.powi(w as i32));
                    let max = if w == 64 {
                        "0xffffffffffffffffUL".to_string()
                    } else {
                        format!("({u}){}u", (1u64 << w) - 1)
                    };
                    format!(
                        "(isnan({x}) || {x} <= 0) ? ({u})0 : ({x} >= {hi}) ? {max} : ({u})({x})"
                    )
                }
            }
            "uadd.with.overflow" | "sadd.with.overflow" | "usub.with.overflow"
            | "ssub.with.overflow" | "umul.with.overflow" | "smul.with.overflow" => {
                let Cty::Pair(w) = ty else {
                    return Err(self
                        .low
                        .unsupported(inst, "vector overflow intrinsics are not lowered"));
                };
                return self.overflow(inst, key, w, &a[0], &a[1]);
            }
            _ => {
                return Err(self.low.unsupported(
                    inst,
                    format!("intrinsic `llvm.{key}` is not lowered for this type"),
                ))
            }
        };
        let _ = ty;
        self.assign(inst, e);
        Ok(())
    }

    fn overflow(
        &mut self,
        inst: Value,
        key: &str,
        w: u32,
        a: &str,
        b: &str,
    ) -> Result<(), LowerError> {
        let name = self.names[&inst].clone();
        let (u, wd, s) = (ut(w), wide(w), st(w));
        let op = match &key[1..4] {
            "add" => "+",
            "sub" => "-",
            _ => "*",
        };
        self.line(format!("{name}_0 = ({u})((({wd}){a}) {op} (({wd}){b}));"));
        let r = format!("{name}_0");
        let flag = match key {
            "uadd.with.overflow" => format!("({r} < {a})"),
            "usub.with.overflow" => format!("({a} < {b})"),
            "sadd.with.overflow" => format!("((({s})(({u})({a} ^ {r}) & ({u})({b} ^ {r}))) < 0)"),
            "ssub.with.overflow" => format!("((({s})(({u})({a} ^ {b}) & ({u})({a} ^ {r}))) < 0)"),
            "umul.with.overflow" => {
                if w <= 16 {
                    format!("((((uint){a}) * ((uint){b})) >> {w}) != 0")
                } else {
                    format!("(mul_hi({a}, {b}) != 0)")
                }
            }
            _ => {
                if w <= 16 {
                    format!("(((int)(({s}){a}) * (int)(({s}){b})) != (int)(({s}){r}))")
                } else {
                    format!("(mul_hi(({s}){a}, ({s}){b}) != ((({s}){r}) >> {}))", w - 1)
                }
            }
        };
        self.line(format!("{name}_1 = {flag};"));
        Ok(())
    }
}

fn opcode_name(op: LLVMOpcode) -> String {
    format!("{op:?}").trim_start_matches("LLVM").to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intrinsic_keys_match_whole_name_parts() {
        assert_eq!(intrinsic_key("llvm.sqrt.f32"), Some("sqrt"));
        assert_eq!(intrinsic_key("llvm.fptosi.sat.i32.f64"), Some("fptosi.sat"));
        assert_eq!(intrinsic_key("llvm.exp2.f64"), Some("exp2"));
        assert_eq!(intrinsic_key("llvm.exp.f64"), Some("exp"));
        assert_eq!(
            intrinsic_key("llvm.smul.with.overflow.i32"),
            Some("smul.with.overflow")
        );
        assert_eq!(intrinsic_key("llvm.vector.reduce.add.v4i32"), None);
    }

    #[test]
    fn libm_names_map_to_builtins() {
        assert_eq!(libm_builtin("sqrtf"), Some(("sqrt", true)));
        assert_eq!(libm_builtin("erf"), Some(("erf", false)));
        assert_eq!(libm_builtin("erff"), Some(("erf", true)));
        assert_eq!(libm_builtin("nearbyint"), Some(("rint", false)));
        assert_eq!(libm_builtin("printf"), None);
    }

    #[test]
    fn float_literals_round_trip() {
        assert_eq!(float_literal(0.1f32 as f64, Cty::F32), "1e-1f");
        assert_eq!(
            float_literal(f64::INFINITY, Cty::F64),
            "as_double(0x7ff0000000000000UL)"
        );
        assert_eq!(sext64(0xff, 8), -1);
    }
}
