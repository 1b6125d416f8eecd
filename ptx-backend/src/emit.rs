//! A package's kernel to PTX: LLVM's NVPTX back end behind the packet entry convention
//! that the OpenCL C route uses.
//!
//! The entry `offload_<kernel>(u64 start, u64 end, global i32* status, args...)` is a
//! `ptx_kernel` function. Work-item `gid = ctaid.x * ntid.x + tid.x` runs item
//! `start + gid` (items past `end` return); split buffers arrive holding only the
//! packet's slice and are offset back by `start` items, so the kernel keeps indexing with
//! global item indices; a kernel with `sum` buffers loops over `start + gid, + stride,
//! ...` with a private slice of partial sums per work-item (the host adds the slices);
//! a range kernel runs on work-item 0 alone. `offload_panic(code)` becomes a store of
//! `code + 1` into the status word and the PTX `exit` of that thread.
//!
//! Steps: retarget the module to `nvptx64-nvidia-cuda` (CUDA driver) or
//! `nvptx64-nvidia-nvcl` (NVIDIA's OpenCL, which spells pointer parameters with their
//! state space), map libm calls to intrinsics NVPTX selects natively or to CUDA's
//! libdevice (`__nv_*`, linked when found), add the entry, inline everything into it,
//! check that nothing the NVPTX back end cannot select remains (an unsupported construct
//! is an error naming it, never a back-end crash), run `default<O3>` and print PTX.

use std::path::{Path, PathBuf};
use std::sync::Once;

use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};
use inkwell::types::{AsTypeRef, BasicMetadataTypeEnum, BasicType};
use inkwell::values::{AsValueRef, BasicMetadataValueEnum, FunctionValue, IntValue};
use inkwell::{AddressSpace, IntPredicate, OptimizationLevel};
use ir_packager::{ArgKind, KernelKind, KernelSpec, Package, Shape, PANIC_SYMBOL};
use llvm_sys::core as llvm;
use llvm_sys::prelude::LLVMValueRef;
use llvm_sys::LLVMOpcode;

/// Version of the entry convention and emission; part of every cache key of PTX.
pub const EMISSION_VERSION: u32 = 1;

/// LLVM's calling convention number for PTX kernels (`ptx_kernel`).
const PTX_KERNEL_CC: u32 = 71;

/// NVPTX's global address space (`.global`).
const GLOBAL: u16 = 1;

/// How the PTX will be loaded, which decides the triple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// `cuModuleLoadDataEx` (triple `nvptx64-nvidia-cuda`).
    Cuda,
    /// `clCreateProgramWithBinary` on NVIDIA's OpenCL (triple `nvptx64-nvidia-nvcl`).
    OpenCl,
}

impl Flavor {
    /// The LLVM target triple.
    pub fn triple(self) -> &'static str {
        match self {
            Flavor::Cuda => "nvptx64-nvidia-cuda",
            Flavor::OpenCl => "nvptx64-nvidia-nvcl",
        }
    }
}

/// What to emit for: the loader and the GPU architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PtxTarget {
    /// The loader.
    pub flavor: Flavor,
    /// Compute capability as `major * 10 + minor` (90 for Hopper's `sm_90`). PTX for an
    /// older architecture runs on newer GPUs (the driver compiles it at load).
    pub sm: u32,
}

impl PtxTarget {
    /// The architecture when the device does not say: `sm_60` (Pascal), the oldest
    /// that CUDA 12 and 13 still accept, so the PTX loads on every current GPU.
    pub const DEFAULT_SM: u32 = 60;
}

/// A kernel compiled to PTX.
#[derive(Debug, Clone)]
pub struct Ptx {
    /// The kernel's manifest entry.
    pub spec: KernelSpec,
    /// The `.entry` function's name.
    pub entry: String,
    /// The PTX module text.
    pub text: String,
    /// What it was emitted for.
    pub target: PtxTarget,
    /// Whether the kernel has `sum` buffers (one private slice of partials per work-item).
    pub has_sums: bool,
    /// Whether CUDA's libdevice was linked in (the kernel calls math functions).
    pub libdevice: bool,
    /// blake3 of the text: the module cache key.
    pub hash: [u8; 32],
}

/// Emitting PTX failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PtxError {
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
    /// A construct the PTX route does not take.
    #[error("kernel `{kernel}` cannot be compiled to PTX: `{construct}`: {reason}")]
    Unsupported {
        /// The kernel.
        kernel: String,
        /// The construct, as LLVM prints it.
        construct: String,
        /// Why.
        reason: String,
    },
    /// LLVM failed (target, pipeline, verifier or code generation).
    #[error("LLVM's NVPTX back end failed on kernel `{kernel}`: {message}")]
    Llvm {
        /// The kernel.
        kernel: String,
        /// LLVM's message.
        message: String,
    },
}

/// Where CUDA's libdevice is: `$OFFLOAD_LIBDEVICE` (a file), else
/// `nvvm/libdevice/libdevice.10.bc` under `$CUDA_HOME`, `$CUDA_PATH` or
/// `/usr/local/cuda`; `None` when there is none.
pub fn find_libdevice() -> Option<PathBuf> {
    if let Some(file) = std::env::var_os("OFFLOAD_LIBDEVICE") {
        let file = PathBuf::from(file);
        return file.is_file().then_some(file);
    }
    ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .chain(std::iter::once(PathBuf::from("/usr/local/cuda")))
        .map(|root| root.join("nvvm/libdevice/libdevice.10.bc"))
        .find(|p| p.is_file())
}

fn initialize() {
    static INIT: Once = Once::new();
    ir_packager::initialize_llvm();
    INIT.call_once(|| Target::initialize_nvptx(&InitializationConfig::default()));
}

/// The NVPTX target machine for `target`.
fn machine(target: PtxTarget) -> Result<TargetMachine, String> {
    initialize();
    let triple = TargetTriple::create(target.flavor.triple());
    let llvm_target = Target::from_triple(&triple).map_err(|e| e.to_string())?;
    llvm_target
        .create_target_machine(
            &triple,
            &format!("sm_{}", target.sm),
            "",
            OptimizationLevel::Aggressive,
            RelocMode::Default,
            CodeModel::Default,
        )
        .ok_or_else(|| format!("LLVM has no NVPTX target machine for sm_{}", target.sm))
}

/// Compiles kernel `kernel` of `package` to PTX for `target`, linking `libdevice` when
/// given and needed (math functions other than those NVPTX has instructions for).
pub fn emit(
    package: &Package,
    kernel: &str,
    target: PtxTarget,
    libdevice: Option<&Path>,
) -> Result<Ptx, PtxError> {
    let spec = package
        .manifest()
        .kernel(kernel)
        .ok_or_else(|| PtxError::NoSuchKernel {
            kernel: kernel.to_string(),
            available: package.manifest().kernel_names(),
        })?
        .clone();
    // The entry bakes each buffer's per-item size into the PTX: sizes computed from
    // arguments and halos are not emitted yet (such kernels take another route).
    for arg in &spec.args {
        let unsupported = match &arg.kind {
            ArgKind::Buffer { halo: Some(_), .. } => Some("halos are not emitted to PTX yet"),
            ArgKind::Buffer {
                shape: Shape::PerItem(k) | Shape::Fixed(k),
                ..
            } if k.constant().is_none() => {
                Some("sizes computed from arguments are not emitted to PTX yet")
            }
            _ => None,
        };
        if let Some(reason) = unsupported {
            return Err(PtxError::Unsupported {
                kernel: kernel.to_string(),
                construct: arg.to_string(),
                reason: reason.into(),
            });
        }
    }
    let llvm_error = |message: String| PtxError::Llvm {
        kernel: kernel.to_string(),
        message,
    };
    let machine = machine(target).map_err(llvm_error)?;
    let ctx = ir_packager::llvm_context();
    let module =
        ir_packager::load_module(&ctx, package).map_err(|e| PtxError::Load(e.to_string()))?;
    module.set_triple(&machine.get_triple());
    module.set_data_layout(&machine.get_target_data().get_data_layout());
    let mut emitter = Emitter {
        ctx: &ctx,
        module: &module,
        spec: &spec,
    };
    emitter.prepare_functions();
    emitter.map_memory_functions()?;
    let needs_libdevice = emitter.map_math()?;
    let linked = match (needs_libdevice.first(), libdevice) {
        (None, _) => false,
        (Some(function), None) => {
            return Err(emitter.unsupported(
                function,
                "a math function PTX has no instruction for needs CUDA's libdevice \
                 (libdevice.10.bc: set OFFLOAD_LIBDEVICE or CUDA_HOME); none was found",
            ))
        }
        (Some(_), Some(path)) => {
            let lib = Module::parse_bitcode_from_path(path, &ctx)
                .map_err(|e| llvm_error(format!("cannot read {}: {e}", path.display())))?;
            lib.set_triple(&machine.get_triple());
            lib.set_data_layout(&machine.get_target_data().get_data_layout());
            module
                .link_in_module(lib)
                .map_err(|e| llvm_error(format!("cannot link {}: {e}", path.display())))?;
            true
        }
    };
    let entry = emitter.entry()?;
    module
        .run_passes("always-inline", &machine, PassBuilderOptions::create())
        .map_err(|e| llvm_error(e.to_string()))?;
    emitter.internalize(entry);
    module
        .run_passes("globaldce", &machine, PassBuilderOptions::create())
        .map_err(|e| llvm_error(e.to_string()))?;
    emitter.lower_panics(entry)?;
    emitter.check_selectable()?;
    module
        .run_passes("default<O3>", &machine, PassBuilderOptions::create())
        .map_err(|e| llvm_error(e.to_string()))?;
    module.verify().map_err(|e| llvm_error(e.to_string()))?;
    let buffer = machine
        .write_to_memory_buffer(&module, FileType::Assembly)
        .map_err(|e| llvm_error(e.to_string()))?;
    let text = String::from_utf8_lossy(buffer.as_slice())
        .trim_end_matches('\0')
        .to_string();
    Ok(Ptx {
        has_sums: spec.has_sum_buffers(),
        entry: entry_name(&spec.name),
        hash: *blake3::hash(text.as_bytes()).as_bytes(),
        spec,
        text,
        target,
        libdevice: linked,
    })
}

/// The `.entry` function's name for kernel `name` (the OpenCL C route's name too).
pub fn entry_name(name: &str) -> String {
    format!("offload_{name}")
}

/// libm functions that map onto LLVM intrinsics NVPTX selects as instructions (`sqrt.rn`,
/// `abs`, `cvt.rmi`, `fma.rn`, `min`, `max`, `copysign`), without libdevice.
const NATIVE_LIBM: &[(&str, &str)] = &[
    ("sqrt", "llvm.sqrt"),
    ("fabs", "llvm.fabs"),
    ("floor", "llvm.floor"),
    ("ceil", "llvm.ceil"),
    ("trunc", "llvm.trunc"),
    ("rint", "llvm.rint"),
    ("nearbyint", "llvm.nearbyint"),
    ("fma", "llvm.fma"),
    ("fmin", "llvm.minnum"),
    ("fmax", "llvm.maxnum"),
    ("copysign", "llvm.copysign"),
    ("round", "llvm.round"),
];

/// Math intrinsics NVPTX would only select approximately or not at all: they call
/// libdevice's correctly specified `__nv_*` functions instead.
const LIBDEVICE_INTRINSICS: &[&str] = &[
    "sin", "cos", "tan", "asin", "acos", "atan2", "atan", "sinh", "cosh", "tanh", "exp2", "exp10",
    "exp", "log2", "log10", "log", "pow", "powi", "ldexp",
];

/// Intrinsics (without `llvm.` and type suffixes) the NVPTX back end selects here.
const SELECTABLE_INTRINSICS: &[&str] = &[
    "nvvm.",
    "experimental.noalias.scope.decl",
    "lifetime.start",
    "lifetime.end",
    "invariant.start",
    "invariant.end",
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
    "uadd.with.overflow",
    "sadd.with.overflow",
    "usub.with.overflow",
    "ssub.with.overflow",
    "umul.with.overflow",
    "smul.with.overflow",
    "uadd.sat",
    "usub.sat",
    "sadd.sat",
    "ssub.sat",
    "fptosi.sat",
    "fptoui.sat",
    "vector.reduce.",
];

fn intrinsic_matches(name: &str, keys: &[&str]) -> bool {
    let Some(rest) = name.strip_prefix("llvm.") else {
        return false;
    };
    keys.iter().any(|k| {
        if k.ends_with('.') {
            rest.starts_with(k)
        } else {
            rest == *k || rest.strip_prefix(k).is_some_and(|t| t.starts_with('.'))
        }
    })
}

struct Emitter<'a, 'ctx> {
    ctx: &'ctx Context,
    module: &'a Module<'ctx>,
    spec: &'a KernelSpec,
}

fn value_name(v: LLVMValueRef) -> String {
    let mut len = 0usize;
    // SAFETY: `v` is a live value of the module; LLVM returns `len` readable bytes.
    unsafe {
        let ptr = llvm::LLVMGetValueName2(v, &mut len);
        if ptr.is_null() {
            return String::new();
        }
        String::from_utf8_lossy(std::slice::from_raw_parts(ptr.cast::<u8>(), len)).into_owned()
    }
}

fn print_value(v: LLVMValueRef) -> String {
    // SAFETY: `v` is a live value; the message is disposed after copying.
    unsafe {
        let ptr = llvm::LLVMPrintValueToString(v);
        let text = std::ffi::CStr::from_ptr(ptr).to_string_lossy().into_owned();
        llvm::LLVMDisposeMessage(ptr);
        text.trim().lines().next().unwrap_or_default().to_string()
    }
}

/// Every instruction of `f`, in order.
fn instructions(f: FunctionValue<'_>) -> Vec<LLVMValueRef> {
    let mut out = Vec::new();
    for block in f.get_basic_blocks() {
        let mut inst = block.get_first_instruction();
        while let Some(i) = inst {
            out.push(i.as_value_ref());
            inst = i.get_next_instruction();
        }
    }
    out
}

/// The function a call instruction calls directly, if any.
fn callee(call: LLVMValueRef) -> Option<LLVMValueRef> {
    // SAFETY: `call` is a live call instruction of the module.
    unsafe {
        let f = llvm::LLVMGetCalledValue(call);
        (!f.is_null() && !llvm::LLVMIsAFunction(f).is_null()).then_some(f)
    }
}

fn opcode(inst: LLVMValueRef) -> LLVMOpcode {
    // SAFETY: `inst` is a live instruction.
    unsafe { llvm::LLVMGetInstructionOpcode(inst) }
}

/// Integer width of `v`'s type, or of its vector lanes; `None` for other types.
fn int_width(v: LLVMValueRef) -> Option<u32> {
    // SAFETY: `v` is a live value.
    unsafe {
        let mut t = llvm::LLVMTypeOf(v);
        if llvm::LLVMGetTypeKind(t) == llvm_sys::LLVMTypeKind::LLVMVectorTypeKind {
            t = llvm::LLVMGetElementType(t);
        }
        (llvm::LLVMGetTypeKind(t) == llvm_sys::LLVMTypeKind::LLVMIntegerTypeKind)
            .then(|| llvm::LLVMGetIntTypeWidth(t))
    }
}

impl<'ctx> Emitter<'_, 'ctx> {
    fn unsupported(&self, construct: &str, reason: &str) -> PtxError {
        PtxError::Unsupported {
            kernel: self.spec.name.clone(),
            construct: construct.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Host attributes off, every defined function `alwaysinline`: all of it ends up in
    /// the entry, where the buffers' address space is known.
    fn prepare_functions(&mut self) {
        let always = Attribute::get_named_enum_kind_id("alwaysinline");
        let never = Attribute::get_named_enum_kind_id("noinline");
        let optnone = Attribute::get_named_enum_kind_id("optnone");
        let uwtable = Attribute::get_named_enum_kind_id("uwtable");
        for f in self.module.get_functions() {
            for name in ["target-cpu", "target-features", "frame-pointer"] {
                f.remove_string_attribute(AttributeLoc::Function, name);
            }
            f.remove_enum_attribute(AttributeLoc::Function, uwtable);
            if f.count_basic_blocks() > 0 {
                f.remove_enum_attribute(AttributeLoc::Function, never);
                f.remove_enum_attribute(AttributeLoc::Function, optnone);
                f.add_attribute(
                    AttributeLoc::Function,
                    self.ctx.create_enum_attribute(always, 0),
                );
            }
            for inst in instructions(f) {
                if opcode(inst) == LLVMOpcode::LLVMCall {
                    // SAFETY: `inst` is a call instruction of the module.
                    unsafe {
                        llvm::LLVMRemoveCallSiteEnumAttribute(
                            inst,
                            llvm_sys::LLVMAttributeFunctionIndex,
                            never,
                        )
                    }
                }
            }
        }
    }

    /// Calls of libc's `memcpy`, `memmove` and `memset` (C kernels may call them by name)
    /// become LLVM's intrinsics, which NVPTX expands into loops; the call's value, the
    /// destination, is the destination.
    fn map_memory_functions(&mut self) -> Result<(), PtxError> {
        let ctx = self.ctx;
        let ptr = ctx.ptr_type(AddressSpace::default());
        let i64t = ctx.i64_type();
        let b = ctx.create_builder();
        for name in ["memcpy", "memmove", "memset"] {
            let Some(libc) = self.module.get_function(name) else {
                continue;
            };
            let kinds: Vec<inkwell::types::BasicTypeEnum<'ctx>> = if name == "memset" {
                vec![ptr.into(), i64t.into()]
            } else {
                vec![ptr.into(), ptr.into(), i64t.into()]
            };
            let intrinsic = Intrinsic::find(&format!("llvm.{name}"))
                .and_then(|i| i.get_declaration(self.module, &kinds))
                .ok_or_else(|| self.unsupported(name, "LLVM lacks the intrinsic"))?;
            let libc_ref = libc.as_value_ref();
            for f in self.module.get_functions() {
                for inst in instructions(f) {
                    if opcode(inst) != LLVMOpcode::LLVMCall || callee(inst) != Some(libc_ref) {
                        continue;
                    }
                    // SAFETY: `inst` is a live call of `name`, whose three arguments the
                    // packager checked against libc's signature; the builder inserts
                    // before it, and the call is replaced by its destination, then
                    // erased once.
                    unsafe {
                        b.position_before(&inkwell::values::InstructionValue::new(inst));
                        let dst = llvm::LLVMGetOperand(inst, 0);
                        let mut second = llvm::LLVMGetOperand(inst, 1);
                        let len = llvm::LLVMGetOperand(inst, 2);
                        if name == "memset" {
                            second = llvm::LLVMBuildTrunc(
                                b.as_mut_ptr(),
                                second,
                                ctx.i8_type().as_type_ref(),
                                c"".as_ptr(),
                            );
                        }
                        let mut args = [
                            dst,
                            second,
                            len,
                            ctx.bool_type().const_zero().as_value_ref(),
                        ];
                        let fn_type = intrinsic.get_type().as_type_ref();
                        llvm::LLVMBuildCall2(
                            b.as_mut_ptr(),
                            fn_type,
                            intrinsic.as_value_ref(),
                            args.as_mut_ptr(),
                            args.len() as u32,
                            c"".as_ptr(),
                        );
                        llvm::LLVMReplaceAllUsesWith(inst, dst);
                        llvm::LLVMInstructionEraseFromParent(inst);
                    }
                }
            }
        }
        Ok(())
    }

    /// Points libm declarations and transcendental intrinsics at what NVPTX can run:
    /// an intrinsic it selects natively, or libdevice's `__nv_*`. Returns the functions
    /// that need libdevice.
    fn map_math(&mut self) -> Result<Vec<String>, PtxError> {
        let mut needs = Vec::new();
        for f in self.module.get_functions() {
            if f.count_basic_blocks() > 0 {
                continue;
            }
            let name = f.get_name().to_string_lossy().into_owned();
            if name == PANIC_SYMBOL || name.starts_with("__nv_") {
                continue;
            }
            let (base, float) = if ir_packager::LIBM_FUNCTIONS.contains(&name.as_str()) {
                (name.clone(), false)
            } else if let Some(b) = name
                .strip_suffix('f')
                .filter(|b| ir_packager::LIBM_FUNCTIONS.contains(b))
            {
                (b.to_string(), true)
            } else if let Some(rest) = name.strip_prefix("llvm.") {
                if !intrinsic_matches(&name, LIBDEVICE_INTRINSICS) {
                    continue;
                }
                let (key, suffix) = rest.split_once('.').unwrap_or((rest, ""));
                let float = match suffix {
                    "f32" | "f32.i32" => true,
                    "f64" | "f64.i32" => false,
                    _ => {
                        return Err(self.unsupported(
                            &name,
                            "only scalar f32/f64 math intrinsics are mapped to libdevice",
                        ))
                    }
                };
                (key.to_string(), float)
            } else {
                continue;
            };
            if let Some((_, intrinsic)) = NATIVE_LIBM.iter().find(|(m, _)| *m == base) {
                let id = Intrinsic::find(intrinsic)
                    .ok_or_else(|| self.unsupported(&name, "LLVM lacks the matching intrinsic"))?;
                let ty = if float {
                    self.ctx.f32_type().as_basic_type_enum()
                } else {
                    self.ctx.f64_type().as_basic_type_enum()
                };
                let decl = id
                    .get_declaration(self.module, &[ty])
                    .ok_or_else(|| self.unsupported(&name, "no intrinsic declaration"))?;
                f.replace_all_uses_with(decl);
                continue;
            }
            let nv = match (base.as_str(), float) {
                ("powi", true) => "__nv_powif".to_string(),
                ("powi", false) => "__nv_powi".to_string(),
                ("ldexp", true) => "__nv_ldexpf".to_string(),
                ("ldexp", false) => "__nv_ldexp".to_string(),
                (b, true) => format!("__nv_{b}f"),
                (b, false) => format!("__nv_{b}"),
            };
            let decl = match self.module.get_function(&nv) {
                Some(d) => d,
                None => self.module.add_function(&nv, f.get_type(), None),
            };
            f.replace_all_uses_with(decl);
            needs.push(name);
        }
        Ok(needs)
    }

    /// Adds `offload_<kernel>`, the `ptx_kernel` entry of the packet convention.
    fn entry(&mut self) -> Result<FunctionValue<'ctx>, PtxError> {
        let spec = self.spec;
        let kernel = self.module.get_function(&spec.name).ok_or_else(|| {
            PtxError::Load(format!("kernel `{}` is not in the module", spec.name))
        })?;
        let kernel_params = kernel.get_type().get_param_types();
        let index_params = match spec.kind {
            KernelKind::Item => 1,
            KernelKind::Range => 2,
        };
        if kernel_params.len() != index_params + spec.args.len() {
            return Err(PtxError::Load(format!(
                "kernel `{}` has {} parameters, its manifest {}",
                spec.name,
                kernel_params.len(),
                index_params + spec.args.len()
            )));
        }
        let ctx = self.ctx;
        let i64t = ctx.i64_type();
        let global = ctx.ptr_type(AddressSpace::from(GLOBAL));
        let generic = ctx.ptr_type(AddressSpace::default());
        let mut params: Vec<BasicMetadataTypeEnum<'ctx>> =
            vec![i64t.into(), i64t.into(), global.into()];
        for (k, arg) in spec.args.iter().enumerate() {
            match arg.kind {
                ArgKind::Scalar(_) => params.push(kernel_params[index_params + k]),
                ArgKind::Buffer { .. } => params.push(global.into()),
            }
        }
        let name = entry_name(&spec.name);
        let entry = self
            .module
            .add_function(&name, ctx.void_type().fn_type(&params, false), None);
        entry.set_call_conventions(PTX_KERNEL_CC);
        let noalias = Attribute::get_named_enum_kind_id("noalias");
        // Every buffer of a job is a separate allocation, and so is the status word.
        entry.add_attribute(
            AttributeLoc::Param(2),
            ctx.create_enum_attribute(noalias, 0),
        );
        for (k, arg) in spec.args.iter().enumerate() {
            if matches!(arg.kind, ArgKind::Buffer { .. }) {
                entry.add_attribute(
                    AttributeLoc::Param(3 + k as u32),
                    ctx.create_enum_attribute(noalias, 0),
                );
            }
        }
        let b = ctx.create_builder();
        let start_block = ctx.append_basic_block(entry, "entry");
        b.position_at_end(start_block);
        let llvm_err = |e: inkwell::builder::BuilderError| PtxError::Llvm {
            kernel: spec.name.clone(),
            message: e.to_string(),
        };
        let sreg = |name: &str| -> Result<IntValue<'ctx>, PtxError> {
            let f = Intrinsic::find(&format!("llvm.nvvm.read.ptx.sreg.{name}"))
                .and_then(|i| i.get_declaration(self.module, &[]))
                .ok_or_else(|| PtxError::Llvm {
                    kernel: spec.name.clone(),
                    message: format!("no intrinsic for %{name}"),
                })?;
            let v = b
                .build_call(f, &[], name)
                .map_err(llvm_err)?
                .try_as_basic_value()
                .basic()
                .map(|v| v.into_int_value())
                .ok_or_else(|| PtxError::Llvm {
                    kernel: spec.name.clone(),
                    message: format!("%{name} returned nothing"),
                })?;
            b.build_int_z_extend(v, i64t, name).map_err(llvm_err)
        };
        let p = |k: u32| {
            entry
                .get_nth_param(k)
                .ok_or_else(|| PtxError::Load(format!("entry parameter {k} missing")))
        };
        let start = p(0)?.into_int_value();
        let end = p(1)?.into_int_value();
        let tid = sreg("tid.x")?;
        let ntid = sreg("ntid.x")?;
        let ctaid = sreg("ctaid.x")?;
        let block_start = b.build_int_mul(ctaid, ntid, "block").map_err(llvm_err)?;
        let gid = b.build_int_add(block_start, tid, "gid").map_err(llvm_err)?;
        let i8t = ctx.i8_type();
        // The kernel's arguments: buffers as generic pointers that index globally.
        let mut args: Vec<BasicMetadataValueEnum<'ctx>> = Vec::new();
        for (k, arg) in spec.args.iter().enumerate() {
            let value = p(3 + k as u32)?;
            match &arg.kind {
                ArgKind::Scalar(_) => args.push(value.into()),
                ArgKind::Buffer { elem, shape, .. } => {
                    let base = value.into_pointer_value();
                    let bytes = elem.size() as u64;
                    // Constant sizes only: `emit` refused the others.
                    let constant = |k: &ir_packager::Expr| k.constant().unwrap_or(0);
                    let offset = match shape {
                        // The device holds the packet's slice: index it globally.
                        Shape::PerItem(per) => {
                            let per = i64t.const_int(constant(per) * bytes, false);
                            let back = b.build_int_mul(start, per, "").map_err(llvm_err)?;
                            Some(b.build_int_neg(back, "").map_err(llvm_err)?)
                        }
                        Shape::Whole => None,
                        // Each work-item owns a private slice of the partial sums.
                        Shape::Fixed(n) => Some(
                            b.build_int_mul(gid, i64t.const_int(constant(n) * bytes, false), "")
                                .map_err(llvm_err)?,
                        ),
                    };
                    let moved = match offset {
                        // SAFETY (of the IR): a plain GEP, no `inbounds`: the pointer may
                        // lie before the slice as long as the kernel indexes into it.
                        Some(off) => {
                            unsafe { b.build_gep(i8t, base, &[off], "") }.map_err(llvm_err)?
                        }
                        None => base,
                    };
                    let cast = b
                        .build_address_space_cast(moved, generic, "")
                        .map_err(llvm_err)?;
                    args.push(cast.into());
                }
            }
        }
        let done = ctx.append_basic_block(entry, "done");
        match spec.kind {
            KernelKind::Range => {
                let run = ctx.append_basic_block(entry, "run");
                let first = b
                    .build_int_compare(IntPredicate::EQ, gid, i64t.const_zero(), "first")
                    .map_err(llvm_err)?;
                b.build_conditional_branch(first, run, done)
                    .map_err(llvm_err)?;
                b.position_at_end(run);
                let mut call: Vec<BasicMetadataValueEnum<'ctx>> = vec![start.into(), end.into()];
                call.extend(args);
                b.build_call(kernel, &call, "").map_err(llvm_err)?;
                b.build_unconditional_branch(done).map_err(llvm_err)?;
            }
            KernelKind::Item if !spec.has_sum_buffers() => {
                let run = ctx.append_basic_block(entry, "run");
                let i = b.build_int_add(start, gid, "i").map_err(llvm_err)?;
                let inside = b
                    .build_int_compare(IntPredicate::ULT, i, end, "inside")
                    .map_err(llvm_err)?;
                b.build_conditional_branch(inside, run, done)
                    .map_err(llvm_err)?;
                b.position_at_end(run);
                let mut call: Vec<BasicMetadataValueEnum<'ctx>> = vec![i.into()];
                call.extend(args);
                b.build_call(kernel, &call, "").map_err(llvm_err)?;
                b.build_unconditional_branch(done).map_err(llvm_err)?;
            }
            KernelKind::Item => {
                // A grid-stride loop: each work-item adds its items into its partials.
                let nctaid = sreg("nctaid.x")?;
                let stride = b.build_int_mul(nctaid, ntid, "stride").map_err(llvm_err)?;
                let first = b.build_int_add(start, gid, "first").map_err(llvm_err)?;
                let header = ctx.append_basic_block(entry, "header");
                let body = ctx.append_basic_block(entry, "body");
                b.build_unconditional_branch(header).map_err(llvm_err)?;
                b.position_at_end(header);
                let i = b.build_phi(i64t, "i").map_err(llvm_err)?;
                let iv = i.as_basic_value().into_int_value();
                let inside = b
                    .build_int_compare(IntPredicate::ULT, iv, end, "inside")
                    .map_err(llvm_err)?;
                b.build_conditional_branch(inside, body, done)
                    .map_err(llvm_err)?;
                b.position_at_end(body);
                let mut call: Vec<BasicMetadataValueEnum<'ctx>> = vec![iv.into()];
                call.extend(args);
                b.build_call(kernel, &call, "").map_err(llvm_err)?;
                let next = b.build_int_add(iv, stride, "next").map_err(llvm_err)?;
                b.build_unconditional_branch(header).map_err(llvm_err)?;
                i.add_incoming(&[(&first, start_block), (&next, body)]);
            }
        }
        b.position_at_end(done);
        b.build_return(None).map_err(llvm_err)?;
        Ok(entry)
    }

    /// After inlining, every `offload_panic(code)` is in the entry: it becomes a store of
    /// `code + 1` into the status word and the thread's `exit`.
    fn lower_panics(&mut self, entry: FunctionValue<'ctx>) -> Result<(), PtxError> {
        let Some(panic) = self.module.get_function(PANIC_SYMBOL) else {
            return Ok(());
        };
        let panic_ref = panic.as_value_ref();
        for f in self.module.get_functions() {
            if f == entry || f.count_basic_blocks() == 0 {
                continue;
            }
            // A function left standing after inlining (recursion) that still panics.
            if instructions(f)
                .iter()
                .any(|&i| opcode(i) == LLVMOpcode::LLVMCall && callee(i) == Some(panic_ref))
            {
                return Err(self.unsupported(
                    &f.get_name().to_string_lossy(),
                    "a function that could not be inlined into the entry (recursion?) can panic",
                ));
            }
        }
        let exit = Intrinsic::find("llvm.nvvm.exit")
            .and_then(|i| i.get_declaration(self.module, &[]))
            .ok_or_else(|| PtxError::Llvm {
                kernel: self.spec.name.clone(),
                message: "LLVM lacks llvm.nvvm.exit".into(),
            })?;
        let status = entry
            .get_nth_param(2)
            .ok_or_else(|| PtxError::Load("entry has no status parameter".into()))?
            .into_pointer_value();
        let b = self.ctx.create_builder();
        let i32t = self.ctx.i32_type();
        for inst in instructions(entry) {
            if opcode(inst) != LLVMOpcode::LLVMCall || callee(inst) != Some(panic_ref) {
                continue;
            }
            // SAFETY: `inst` is a live call of `offload_panic(i32)` in the entry.
            let code = unsafe { llvm::LLVMGetOperand(inst, 0) };
            // SAFETY: `inst` is a live instruction of the module.
            b.position_before(&unsafe { inkwell::values::InstructionValue::new(inst) });
            // SAFETY: `code` is the call's i32 argument.
            let code = unsafe { IntValue::new(code) };
            let llvm_err = |e: inkwell::builder::BuilderError| PtxError::Llvm {
                kernel: self.spec.name.clone(),
                message: e.to_string(),
            };
            let stored = b
                .build_int_add(code, i32t.const_int(1, false), "panic_status")
                .map_err(llvm_err)?;
            b.build_store(status, stored).map_err(llvm_err)?;
            b.build_call(exit, &[], "").map_err(llvm_err)?;
            // SAFETY: the call has no uses (it returns void) and is removed once.
            unsafe { llvm::LLVMInstructionEraseFromParent(inst) };
        }
        Ok(())
    }

    /// Only the entry is visible outside the module; the rest may go.
    fn internalize(&mut self, entry: FunctionValue<'ctx>) {
        for f in self.module.get_functions() {
            if f != entry && f.count_basic_blocks() > 0 {
                f.set_linkage(Linkage::Internal);
            }
        }
        let mut g = self.module.get_first_global();
        while let Some(global) = g {
            if global.get_initializer().is_some() {
                global.set_linkage(Linkage::Internal);
            }
            g = global.get_next_global();
        }
    }

    /// Refuses what the NVPTX back end cannot select (it would abort the process rather
    /// than return an error): calls of anything but known intrinsics and libdevice,
    /// integer division or float conversion wider than 64 bits, `frem` of vectors.
    fn check_selectable(&self) -> Result<(), PtxError> {
        for f in self.module.get_functions() {
            if f.count_basic_blocks() == 0 {
                continue;
            }
            let libdevice = f.get_name().to_string_lossy().starts_with("__nv_");
            for inst in instructions(f) {
                let op = opcode(inst);
                match op {
                    LLVMOpcode::LLVMCall => {
                        let Some(target) = callee(inst) else {
                            return Err(self.unsupported(&print_value(inst), "indirect call"));
                        };
                        let name = value_name(target);
                        // SAFETY: `target` is a live function.
                        let declared = unsafe { llvm::LLVMIsDeclaration(target) } != 0;
                        let known = !declared
                            || intrinsic_matches(&name, SELECTABLE_INTRINSICS)
                            || (libdevice && name.starts_with("llvm."));
                        if !known {
                            return Err(self.unsupported(
                                &print_value(inst),
                                "the NVPTX back end has no instruction for this call",
                            ));
                        }
                    }
                    LLVMOpcode::LLVMUDiv
                    | LLVMOpcode::LLVMSDiv
                    | LLVMOpcode::LLVMURem
                    | LLVMOpcode::LLVMSRem
                        if int_width(inst).is_some_and(|w| w > 64) =>
                    {
                        return Err(self.unsupported(
                            &print_value(inst),
                            "integer division wider than 64 bits needs a library call PTX lacks",
                        ));
                    }
                    LLVMOpcode::LLVMFPToSI
                    | LLVMOpcode::LLVMFPToUI
                    | LLVMOpcode::LLVMSIToFP
                    | LLVMOpcode::LLVMUIToFP => {
                        // SAFETY: a conversion has one operand.
                        let source = unsafe { llvm::LLVMGetOperand(inst, 0) };
                        if int_width(inst).is_some_and(|w| w > 64)
                            || int_width(source).is_some_and(|w| w > 64)
                        {
                            return Err(self.unsupported(
                                &print_value(inst),
                                "conversions between floats and integers wider than 64 bits need a library call PTX lacks",
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intrinsic_names_match_whole_parts() {
        assert!(intrinsic_matches("llvm.sqrt.f32", SELECTABLE_INTRINSICS));
        assert!(intrinsic_matches("llvm.nvvm.exit", SELECTABLE_INTRINSICS));
        assert!(intrinsic_matches(
            "llvm.vector.reduce.or.v4i1",
            SELECTABLE_INTRINSICS
        ));
        assert!(!intrinsic_matches("llvm.sin.f32", SELECTABLE_INTRINSICS));
        assert!(intrinsic_matches("llvm.sin.f32", LIBDEVICE_INTRINSICS));
        assert!(intrinsic_matches("llvm.exp.f64", LIBDEVICE_INTRINSICS));
        assert!(!intrinsic_matches("llvm.expect.i1", LIBDEVICE_INTRINSICS));
        assert!(!intrinsic_matches("sqrtf", SELECTABLE_INTRINSICS));
    }

    #[test]
    fn triples_name_the_loader() {
        assert_eq!(Flavor::Cuda.triple(), "nvptx64-nvidia-cuda");
        assert_eq!(Flavor::OpenCl.triple(), "nvptx64-nvidia-nvcl");
    }
}
