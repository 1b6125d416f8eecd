//! Validation and canonicalization of a kernel module.
//!
//! Validation refuses what a node must never compile: missing kernels, signatures that
//! disagree with the manifest, calls outside the allow-list, inline assembly and global
//! constructors. Canonicalization makes the module target-neutral and self-contained:
//! target-cpu/target-features attributes go (each node specializes), Rust panic paths
//! call the runtime's `offload_panic`, everything but the kernels is internalized, and
//! libm declarations are marked free of side effects so they vectorize.

use std::ffi::CStr;

use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::passes::PassBuilderOptions;
use inkwell::types::{AnyType, BasicMetadataTypeEnum};
use inkwell::values::{AsValueRef, FunctionValue, InstructionOpcode};
use llvm_sys::core as llvm;
use llvm_sys::LLVMAttributeFunctionIndex;

use crate::manifest::{ArgKind, KernelSpec, Manifest, ScalarType};

/// The runtime function that panic paths call: `void offload_panic(i32 code)`, never
/// returning. node-jit defines it per module; see [`panic_reason`].
pub const PANIC_SYMBOL: &str = "offload_panic";

/// libm functions a kernel may call, by their double-precision names (the `f`-suffixed
/// float variants are allowed too). Pointer-taking ones (`frexp`, `modf`, `sincos`) are
/// left out on purpose: they are marked side-effect free below, which would be false.
pub const LIBM_FUNCTIONS: &[&str] = &[
    "sin",
    "cos",
    "tan",
    "asin",
    "acos",
    "atan",
    "atan2",
    "sinh",
    "cosh",
    "tanh",
    "asinh",
    "acosh",
    "atanh",
    "exp",
    "exp2",
    "exp10",
    "expm1",
    "log",
    "log2",
    "log10",
    "log1p",
    "pow",
    "sqrt",
    "cbrt",
    "hypot",
    "fabs",
    "floor",
    "ceil",
    "trunc",
    "round",
    "rint",
    "nearbyint",
    "fmod",
    "remainder",
    "fmin",
    "fmax",
    "fdim",
    "fma",
    "copysign",
    "erf",
    "erfc",
    "tgamma",
    "lgamma",
    "ldexp",
];

/// Memory intrinsics that LLVM may turn into plain library calls.
const MEMORY_FUNCTIONS: &[&str] = &["memcpy", "memmove", "memset", "memcmp", "bcmp"];

/// Whether `name` is one of the allowed libm functions (double or `f` float variant).
pub fn is_libm_function(name: &str) -> bool {
    let base = name.strip_suffix('f').unwrap_or(name);
    LIBM_FUNCTIONS.contains(&name) || LIBM_FUNCTIONS.contains(&base)
}

/// Whether a call to the declared function `name` is allowed in a canonical package.
pub fn is_allowed_external(name: &str) -> bool {
    name.starts_with("llvm.")
        || name == PANIC_SYMBOL
        || is_libm_function(name)
        || MEMORY_FUNCTIONS.contains(&name)
}

/// Panic codes passed to `offload_panic`, and what each means.
const PANIC_REASONS: &[(i32, &str)] = &[
    (0, "explicit panic"),
    (1, "index out of bounds"),
    (2, "called `unwrap`/`expect` on a `None` or `Err` value"),
    (3, "slice range out of bounds"),
    (4, "arithmetic overflow or division by zero"),
];

/// What panic `code` means, for the "kernel panicked" error.
pub fn panic_reason(code: i32) -> &'static str {
    PANIC_REASONS
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, r)| *r)
        .unwrap_or("unknown panic")
}

fn panic_code(demangled: &str) -> i32 {
    if demangled.contains("panic_bounds_check") {
        1
    } else if demangled.contains("unwrap_failed") || demangled.contains("expect_failed") {
        2
    } else if demangled.contains("slice_") && demangled.contains("fail") {
        3
    } else if demangled.contains("overflow")
        || demangled.contains("div_by_zero")
        || demangled.contains("rem_by_zero")
    {
        4
    } else {
        0
    }
}

/// Why a module was refused. Every variant names the culprit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// LLVM's verifier rejected the module.
    #[error("the module does not pass LLVM's verifier: {0}")]
    Verifier(String),
    /// A manifest kernel is not defined.
    #[error("kernel `{kernel}` is declared in the manifest but not defined in the module (defined functions: {defined})")]
    MissingKernel {
        /// The kernel.
        kernel: String,
        /// What the module does define, to spot a mangled name.
        defined: String,
    },
    /// The LLVM signature disagrees with the manifest.
    #[error("kernel `{kernel}`: LLVM signature `{found}` does not match the manifest `{expected}`: {detail}")]
    SignatureMismatch {
        /// The kernel.
        kernel: String,
        /// The manifest signature.
        expected: String,
        /// The LLVM function type.
        found: String,
        /// The first difference.
        detail: String,
    },
    /// A call to a function outside the allow-list.
    #[error("function `{caller}` calls `{callee}`, which is not allowed in a kernel (allowed: LLVM intrinsics, libm math functions, memcpy/memmove/memset; no I/O, allocation or other libraries)")]
    ForbiddenCall {
        /// The calling function (demangled).
        caller: String,
        /// The called function (demangled).
        callee: String,
    },
    /// A call through a function pointer.
    #[error("function `{caller}` makes an indirect call through a function pointer, which kernels may not do")]
    IndirectCall {
        /// The calling function.
        caller: String,
    },
    /// Inline assembly in a function.
    #[error("function `{function}` contains inline assembly, which kernels may not use")]
    InlineAsm {
        /// The function.
        function: String,
    },
    /// Module-level assembly.
    #[error("the module contains module-level inline assembly, which kernels may not use")]
    ModuleAsm,
    /// Global constructors or destructors.
    #[error("the module has global {kind} (`{global}`), which kernels may not have")]
    GlobalConstructors {
        /// `constructors` or `destructors`.
        kind: &'static str,
        /// The LLVM global.
        global: String,
    },
    /// Exception-handling instructions.
    #[error("function `{function}` uses exception handling (`{instruction}`), which kernels may not use")]
    ExceptionHandling {
        /// The function.
        function: String,
        /// The instruction.
        instruction: String,
    },
}

fn demangle(name: &str) -> String {
    format!("{:#}", rustc_demangle::demangle(name))
}

fn function_name(f: FunctionValue<'_>) -> String {
    f.get_name().to_string_lossy().into_owned()
}

/// Checks a module against its manifest. Used on packages arriving from elsewhere; the
/// packager calls it as part of `canonicalize`.
pub fn validate_module(module: &Module<'_>, manifest: &Manifest) -> Result<(), ValidationError> {
    module
        .verify()
        .map_err(|e| ValidationError::Verifier(e.to_string()))?;
    check_module_asm(module)?;
    check_global_constructors(module)?;
    for kernel in &manifest.kernels {
        check_kernel_signature(module, kernel)?;
    }
    check_calls(module, |callee, _| is_allowed_external(callee))
}

/// Validates a freshly compiled module and rewrites it into canonical form (see the
/// module documentation). `machine` is only used to run LLVM's global DCE pass.
pub(crate) fn canonicalize(
    module: &Module<'_>,
    manifest: &Manifest,
    machine: &inkwell::targets::TargetMachine,
) -> Result<(), ValidationError> {
    module
        .verify()
        .map_err(|e| ValidationError::Verifier(e.to_string()))?;
    check_module_asm(module)?;
    check_global_constructors(module)?;
    for kernel in &manifest.kernels {
        check_kernel_signature(module, kernel)?;
    }
    // Panic paths of Rust's core are allowed here, because they are rewritten next.
    check_calls(module, |callee, f| {
        is_allowed_external(callee) || is_rust_panic_path(callee, f)
    })?;
    rewrite_panic_paths(module);
    strip_target_attributes(module);
    internalize_non_kernels(module, manifest);
    mark_libm_pure(module);
    module.strip_debug_info();
    module.set_source_file_name("kernel");
    module.set_name("kernel");
    // Only dead-code elimination: optimization is each node's job.
    module
        .run_passes("globaldce", machine, PassBuilderOptions::create())
        .map_err(|e| ValidationError::Verifier(e.to_string()))?;
    module
        .verify()
        .map_err(|e| ValidationError::Verifier(e.to_string()))
}

fn check_module_asm(module: &Module<'_>) -> Result<(), ValidationError> {
    let mut len = 0usize;
    // SAFETY: the module reference is valid for the call; LLVM returns a pointer into the
    // module's own string and its length.
    let ptr = unsafe { llvm::LLVMGetModuleInlineAsm(module.as_mut_ptr(), &mut len) };
    if !ptr.is_null() && len > 0 {
        return Err(ValidationError::ModuleAsm);
    }
    Ok(())
}

fn check_global_constructors(module: &Module<'_>) -> Result<(), ValidationError> {
    for (global, kind) in [
        ("llvm.global_ctors", "constructors"),
        ("llvm.global_dtors", "destructors"),
    ] {
        if module.get_global(global).is_some() {
            return Err(ValidationError::GlobalConstructors {
                kind,
                global: global.to_string(),
            });
        }
    }
    Ok(())
}

/// The LLVM type a manifest argument must have.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum LlvmParam {
    I32,
    I64,
    F32,
    F64,
    Ptr,
}

impl LlvmParam {
    fn of(kind: &ArgKind) -> LlvmParam {
        match kind {
            ArgKind::Scalar(ScalarType::I32 | ScalarType::U32) => LlvmParam::I32,
            ArgKind::Scalar(ScalarType::I64 | ScalarType::U64) => LlvmParam::I64,
            ArgKind::Scalar(ScalarType::F32) => LlvmParam::F32,
            ArgKind::Scalar(ScalarType::F64) => LlvmParam::F64,
            // u8 scalars are refused by the manifest; treat as i32 for a clear mismatch.
            ArgKind::Scalar(ScalarType::U8) => LlvmParam::I32,
            ArgKind::Buffer { .. } => LlvmParam::Ptr,
        }
    }

    fn name(self) -> &'static str {
        match self {
            LlvmParam::I32 => "i32",
            LlvmParam::I64 => "i64",
            LlvmParam::F32 => "float",
            LlvmParam::F64 => "double",
            LlvmParam::Ptr => "ptr",
        }
    }

    fn matches(self, ty: &BasicMetadataTypeEnum<'_>) -> bool {
        match (self, ty) {
            (LlvmParam::I32, BasicMetadataTypeEnum::IntType(t)) => t.get_bit_width() == 32,
            (LlvmParam::I64, BasicMetadataTypeEnum::IntType(t)) => t.get_bit_width() == 64,
            (LlvmParam::F32, BasicMetadataTypeEnum::FloatType(t)) => {
                t.print_to_string().to_string() == "float"
            }
            (LlvmParam::F64, BasicMetadataTypeEnum::FloatType(t)) => {
                t.print_to_string().to_string() == "double"
            }
            (LlvmParam::Ptr, BasicMetadataTypeEnum::PointerType(_)) => true,
            _ => false,
        }
    }
}

fn check_kernel_signature(module: &Module<'_>, kernel: &KernelSpec) -> Result<(), ValidationError> {
    let function = module
        .get_function(&kernel.name)
        .filter(|f| f.count_basic_blocks() > 0)
        .ok_or_else(|| ValidationError::MissingKernel {
            kernel: kernel.name.clone(),
            defined: defined_functions(module),
        })?;
    let fn_type = function.get_type();
    let found = fn_type.print_to_string().to_string();
    let mismatch = |detail: String| ValidationError::SignatureMismatch {
        kernel: kernel.name.clone(),
        expected: kernel.signature(),
        found: found.clone(),
        detail,
    };
    if fn_type.get_return_type().is_some() {
        return Err(mismatch("a kernel must return void".into()));
    }
    if fn_type.is_var_arg() {
        return Err(mismatch("a kernel may not be variadic".into()));
    }
    let expected: Vec<(String, LlvmParam)> = index_param_names(kernel)
        .into_iter()
        .map(|n| (n.to_string(), LlvmParam::I64))
        .chain(
            kernel
                .args
                .iter()
                .map(|a| (a.name.clone(), LlvmParam::of(&a.kind))),
        )
        .collect();
    let params = fn_type.get_param_types();
    if params.len() != expected.len() {
        return Err(mismatch(format!(
            "expected {} parameters, found {}",
            expected.len(),
            params.len()
        )));
    }
    for (position, ((name, want), got)) in expected.iter().zip(params.iter()).enumerate() {
        if !want.matches(got) {
            return Err(mismatch(format!(
                "parameter {} (`{name}`) should be `{}` but is `{}`",
                position + 1,
                want.name(),
                got.print_to_string()
            )));
        }
    }
    Ok(())
}

fn index_param_names(kernel: &KernelSpec) -> Vec<&'static str> {
    match kernel.kind {
        crate::manifest::KernelKind::Item => vec!["i"],
        crate::manifest::KernelKind::Range => vec!["start", "end"],
    }
}

fn defined_functions(module: &Module<'_>) -> String {
    let names: Vec<String> = module
        .get_functions()
        .filter(|f| f.count_basic_blocks() > 0 && f.get_linkage() == Linkage::External)
        .map(|f| demangle(&function_name(f)))
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Rust's core panic entry points: external, never-returning functions of `core`.
fn is_rust_panic_path(name: &str, function: FunctionValue<'_>) -> bool {
    let noreturn = Attribute::get_named_enum_kind_id("noreturn");
    let demangled = demangle(name);
    demangled.starts_with("core::")
        && function
            .get_enum_attribute(AttributeLoc::Function, noreturn)
            .is_some()
}

/// Walks every call in every defined function. `allowed(name, declaration)` decides
/// about calls to declared (external) functions.
fn check_calls(
    module: &Module<'_>,
    allowed: impl Fn(&str, FunctionValue<'_>) -> bool,
) -> Result<(), ValidationError> {
    for function in module.get_functions() {
        for block in function.get_basic_block_iter() {
            let mut next = block.get_first_instruction();
            while let Some(inst) = next {
                next = inst.get_next_instruction();
                let caller = || demangle(&function_name(function));
                match inst.get_opcode() {
                    InstructionOpcode::Invoke
                    | InstructionOpcode::LandingPad
                    | InstructionOpcode::Resume
                    | InstructionOpcode::CatchSwitch
                    | InstructionOpcode::CatchPad
                    | InstructionOpcode::CleanupPad
                    | InstructionOpcode::CallBr => {
                        return Err(ValidationError::ExceptionHandling {
                            function: caller(),
                            instruction: format!("{:?}", inst.get_opcode()).to_lowercase(),
                        })
                    }
                    InstructionOpcode::Call => {}
                    _ => continue,
                }
                // SAFETY: `inst` is a live call instruction of this module.
                let callee = unsafe { llvm::LLVMGetCalledValue(inst.as_value_ref()) };
                // SAFETY: `callee` is a value of this module (the called operand).
                if !unsafe { llvm::LLVMIsAInlineAsm(callee) }.is_null() {
                    return Err(ValidationError::InlineAsm { function: caller() });
                }
                // SAFETY: as above.
                if unsafe { llvm::LLVMIsAFunction(callee) }.is_null() {
                    return Err(ValidationError::IndirectCall { caller: caller() });
                }
                let name = value_name(callee);
                let Some(target) = module.get_function(&name) else {
                    return Err(ValidationError::IndirectCall { caller: caller() });
                };
                if target.count_basic_blocks() > 0 {
                    continue;
                }
                if !allowed(&name, target) {
                    return Err(ValidationError::ForbiddenCall {
                        caller: caller(),
                        callee: demangle(&name),
                    });
                }
            }
        }
    }
    Ok(())
}

fn value_name(value: llvm_sys::prelude::LLVMValueRef) -> String {
    let mut len = 0usize;
    // SAFETY: `value` is a live LLVM value; the name pointer is valid for `len` bytes.
    let ptr = unsafe { llvm::LLVMGetValueName2(value, &mut len) };
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: LLVM guarantees `len` readable bytes at `ptr`.
    let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
    String::from_utf8_lossy(bytes).into_owned()
}

/// Gives every declared core panic function a body that calls `offload_panic(code)`.
fn rewrite_panic_paths(module: &Module<'_>) {
    let ctx = module.get_context();
    let i32_type = ctx.i32_type();
    let void = ctx.void_type();
    let hook_type = void.fn_type(&[i32_type.into()], false);
    let noreturn = Attribute::get_named_enum_kind_id("noreturn");
    let cold = Attribute::get_named_enum_kind_id("cold");
    let panics: Vec<FunctionValue<'_>> = module
        .get_functions()
        .filter(|f| f.count_basic_blocks() == 0)
        .filter(|f| is_rust_panic_path(&function_name(*f), *f))
        .collect();
    if panics.is_empty() {
        return;
    }
    let hook = module.get_function(PANIC_SYMBOL).unwrap_or_else(|| {
        let hook = module.add_function(PANIC_SYMBOL, hook_type, Some(Linkage::External));
        hook.add_attribute(
            AttributeLoc::Function,
            ctx.create_enum_attribute(noreturn, 0),
        );
        hook.add_attribute(AttributeLoc::Function, ctx.create_enum_attribute(cold, 0));
        hook
    });
    let builder = ctx.create_builder();
    for function in panics {
        let code = panic_code(&demangle(&function_name(function)));
        let entry = ctx.append_basic_block(function, "entry");
        builder.position_at_end(entry);
        // The builder only fails when unpositioned, which it is not here.
        let _ = builder.build_call(hook, &[i32_type.const_int(code as u64, true).into()], "");
        let _ = builder.build_unreachable();
        function.set_linkage(Linkage::Internal);
    }
}

/// Removes what ties code to one CPU, and `nounwind`, so that a panic can unwind from
/// `offload_panic` through kernel frames to the runner (the node's optimizer infers
/// `nounwind` again wherever it holds).
fn strip_target_attributes(module: &Module<'_>) {
    let nounwind = Attribute::get_named_enum_kind_id("nounwind");
    for function in module.get_functions() {
        for key in ["target-cpu", "target-features", "tune-cpu"] {
            function.remove_string_attribute(AttributeLoc::Function, key);
        }
        if !is_allowed_external(&function_name(function)) || function.count_basic_blocks() > 0 {
            function.remove_enum_attribute(AttributeLoc::Function, nounwind);
        }
        for block in function.get_basic_block_iter() {
            let mut next = block.get_first_instruction();
            while let Some(inst) = next {
                next = inst.get_next_instruction();
                if inst.get_opcode() == InstructionOpcode::Call {
                    // SAFETY: `inst` is a live call instruction.
                    unsafe {
                        llvm::LLVMRemoveCallSiteEnumAttribute(
                            inst.as_value_ref(),
                            LLVMAttributeFunctionIndex,
                            nounwind,
                        )
                    };
                }
            }
        }
    }
}

fn internalize_non_kernels(module: &Module<'_>, manifest: &Manifest) {
    for function in module.get_functions() {
        let name = function_name(function);
        if function.count_basic_blocks() > 0 && manifest.kernel(&name).is_none() {
            function.set_linkage(Linkage::Internal);
        }
    }
    let mut global = module.get_first_global();
    while let Some(g) = global {
        global = g.get_next_global();
        if !g.is_declaration() && !g.get_name().to_bytes().starts_with(b"llvm.") {
            g.set_linkage(Linkage::Internal);
        }
    }
}

/// Marks libm declarations as touching no memory: kernels cannot observe `errno`, and
/// this is what lets LLVM turn `sqrtf` into an instruction and vectorize math calls.
fn mark_libm_pure(module: &Module<'_>) {
    let ctx = module.get_context();
    let memory = Attribute::get_named_enum_kind_id("memory");
    let willreturn = Attribute::get_named_enum_kind_id("willreturn");
    let nounwind = Attribute::get_named_enum_kind_id("nounwind");
    for function in module.get_functions() {
        if function.count_basic_blocks() == 0 && is_libm_function(&function_name(function)) {
            function.remove_enum_attribute(AttributeLoc::Function, memory);
            // `memory(none)` is encoded as the integer 0.
            function.add_attribute(AttributeLoc::Function, ctx.create_enum_attribute(memory, 0));
            function.add_attribute(
                AttributeLoc::Function,
                ctx.create_enum_attribute(willreturn, 0),
            );
            function.add_attribute(
                AttributeLoc::Function,
                ctx.create_enum_attribute(nounwind, 0),
            );
        }
    }
}

/// Parses a package's canonical bitcode and validates it against its manifest.
pub(crate) fn parse_and_validate<'ctx>(
    ctx: &'ctx Context,
    bitcode: &[u8],
    manifest: &Manifest,
) -> Result<Module<'ctx>, crate::LoadError> {
    let buffer =
        inkwell::memory_buffer::MemoryBuffer::create_from_memory_range_copy(bitcode, "package");
    let module = Module::parse_bitcode_from_buffer(&buffer, ctx)
        .map_err(|e| crate::LoadError::MalformedBitcode(e.to_string()))?;
    validate_module(&module, manifest)?;
    Ok(module)
}

/// The name of a function as C sees it, for messages.
pub fn display_name(name: &CStr) -> String {
    demangle(&name.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libm_names_cover_float_variants() {
        assert!(is_libm_function("sqrtf"));
        assert!(is_libm_function("sqrt"));
        assert!(is_libm_function("fmaf"));
        assert!(!is_libm_function("printf"));
        assert!(!is_libm_function("frexp"));
    }

    #[test]
    fn panic_codes_follow_core_names() {
        assert_eq!(panic_code("core::panicking::panic_bounds_check"), 1);
        assert_eq!(panic_code("core::option::unwrap_failed"), 2);
        assert_eq!(
            panic_code("core::slice::index::slice_end_index_len_fail"),
            3
        );
        assert_eq!(
            panic_code("core::panicking::panic_const::panic_const_div_by_zero"),
            4
        );
        assert_eq!(panic_reason(1), "index out of bounds");
    }
}
