//! From a validated package module to an object file: retarget, wrap, optimize, emit.

mod search;

use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{FileType, TargetMachine};
use inkwell::values::{BasicMetadataValueEnum, BasicValue, BasicValueEnum, FunctionValue};
use inkwell::AddressSpace;
use ir_packager::{ArgKind, KernelKind, KernelSpec, Package, ScalarType, PANIC_SYMBOL};

use crate::host::HostTarget;
use crate::{JitError, OptLevel, Pipeline, Tuning};

/// Name of the generated per-packet entry point in JIT objects:
/// `void __offload_entry(u64 start, u64 end, const u64 *args)`.
pub const ENTRY_SYMBOL: &str = "__offload_entry";

/// Name of the global holding the host's panic handler, `void (*)(i32)`.
pub const PANIC_HOOK_SYMBOL: &str = "__offload_panic_hook";

/// A byte the JIT's libraries export: 0 when the optimized kernel no longer reads
/// [`PANIC_HOOK_SYMBOL`] anywhere, so it cannot call the unwinding handler (every panic
/// path goes through it, and a kernel calls no other code that unwinds); the runner
/// then calls the entry without catching (see `CompiledKernel::run_packet`). Libraries
/// without the symbol (older cache entries) are treated as able to panic.
pub const CAN_PANIC_SYMBOL: &str = "__offload_can_panic";

/// Compiles `kernel` of `package` for `target` into a relocatable object whose only
/// export is [`ENTRY_SYMBOL`] (plus [`PANIC_HOOK_SYMBOL`]).
pub(crate) fn compile_entry_object(
    package: &Package,
    kernel: &KernelSpec,
    target: &HostTarget,
    opt: OptLevel,
    tuning: &Tuning,
) -> Result<Vec<u8>, JitError> {
    let ctx = ir_packager::llvm_context();
    let (module, machine) = optimized_entry_module(&ctx, package, kernel, target, opt, tuning)?;
    emit(&module, &machine, FileType::Object)
}

/// Where the time of one cold compile's code generation goes (see [`compile_phases`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompilePhases {
    /// Parsing and validating the package's bitcode.
    pub load: std::time::Duration,
    /// Creating the target machine for the CPU.
    pub target_machine: std::time::Duration,
    /// Retargeting, the entry wrapper, `noalias`, the library fast paths, attributes.
    pub prepare: std::time::Duration,
    /// The optimization pipeline ([`Pipeline`]) and the verifier after it.
    pub optimize: std::time::Duration,
    /// Instruction selection, register allocation and object emission.
    pub emit: std::time::Duration,
    /// The relocatable object, exactly what the cold compile links.
    pub object: Vec<u8>,
}

/// Runs the code generation of a cold [`crate::Engine::compile`] for `kernel` (everything
/// before the link) and times each phase. For benchmarks; nothing is cached.
pub fn compile_phases(
    package: &Package,
    kernel: &str,
    target: &HostTarget,
    opt: OptLevel,
    tuning: &Tuning,
) -> Result<CompilePhases, JitError> {
    let spec = kernel_spec(package, kernel)?;
    let mut phases = CompilePhases::default();
    let ctx = ir_packager::llvm_context();
    let (module, machine) =
        prepare_timed(&ctx, package, spec, target, opt, tuning, Some(&mut phases))?;
    let started = std::time::Instant::now();
    optimize(&module, &machine, opt, tuning)?;
    phases.optimize = started.elapsed();
    let started = std::time::Instant::now();
    phases.object = emit(&module, &machine, FileType::Object)?;
    phases.emit = started.elapsed();
    Ok(phases)
}

/// What a kernel object needs from outside at link time (see [`link_needs`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkNeeds {
    /// It calls a libm function (`sinf`, `pow`, ...): link `-lm`.
    pub libm: bool,
    /// It calls a compiler runtime helper (`__powidf2`, 128-bit division, ...): link
    /// libgcc.
    pub libgcc: bool,
}

/// The libraries a relocatable object of node-jit needs, from its undefined symbols.
/// Most kernels need neither: linking only what is needed saves the linker reading
/// `libm.so` and `libgcc.a` (2.5 ms of BFD `ld`'s 5.5 ms for a small kernel here). An
/// object LLVM cannot read needs both, to be safe.
pub fn link_needs(object: &[u8]) -> LinkNeeds {
    use llvm_sys::object as obj;
    ir_packager::load_llvm();
    let everything = LinkNeeds {
        libm: true,
        libgcc: true,
    };
    let mut needs = LinkNeeds::default();
    // SAFETY: the buffer copies `object`; the binary (no LLVM context: it only reads the
    // object's symbols) borrows it, and the binary, its iterators and the buffer are
    // disposed of once, in reverse order; names are read while the binary lives.
    unsafe {
        let buffer = llvm_sys::core::LLVMCreateMemoryBufferWithMemoryRangeCopy(
            object.as_ptr().cast(),
            object.len(),
            c"kernel.o".as_ptr(),
        );
        let mut error = std::ptr::null_mut();
        let binary = obj::LLVMCreateBinary(buffer, std::ptr::null_mut(), &mut error);
        if binary.is_null() {
            if !error.is_null() {
                llvm_sys::core::LLVMDisposeMessage(error);
            }
            llvm_sys::core::LLVMDisposeMemoryBuffer(buffer);
            return everything;
        }
        let symbols = obj::LLVMObjectFileCopySymbolIterator(binary);
        let sections = obj::LLVMObjectFileCopySectionIterator(binary);
        while obj::LLVMObjectFileIsSymbolIteratorAtEnd(binary, symbols) == 0 {
            obj::LLVMMoveToContainingSection(sections, symbols);
            // A symbol in no section is undefined here (or absolute, like the file name).
            if obj::LLVMObjectFileIsSectionIteratorAtEnd(binary, sections) != 0 {
                let name =
                    std::ffi::CStr::from_ptr(obj::LLVMGetSymbolName(symbols)).to_string_lossy();
                if ir_packager::is_libm_function(&name) {
                    needs.libm = true;
                } else if name.starts_with("__") {
                    needs.libgcc = true;
                }
            }
            obj::LLVMMoveToNextSymbol(symbols);
        }
        obj::LLVMDisposeSectionIterator(sections);
        obj::LLVMDisposeSymbolIterator(symbols);
        obj::LLVMDisposeBinary(binary);
        llvm_sys::core::LLVMDisposeMemoryBuffer(buffer);
    }
    needs
}

/// What [`listing`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListingKind {
    /// The LLVM IR the optimizer receives: retargeted, with the entry wrapper, `noalias`
    /// and the library fast paths, not yet optimized.
    PreparedIr,
    /// The optimized LLVM IR of the module, as the code generator receives it.
    OptimizedIr,
    /// The target's assembly, as the object file would contain it.
    Assembly,
}

/// The code node-jit generates for `kernel` of `package` on `target`, as text: the
/// optimized IR or the assembly of exactly the module that [`crate::Engine::compile`]
/// turns into a shared library (same retargeting, entry wrapper, attributes and
/// pipeline). `target` need not be this machine: a [`HostTarget`] with another `cpu`
/// (and empty `features`, meaning that CPU's own) shows what that CPU's node would run.
/// For inspection and tests; nothing is cached.
pub fn listing(
    package: &Package,
    kernel: &str,
    target: &HostTarget,
    opt: OptLevel,
    tuning: &Tuning,
    kind: ListingKind,
) -> Result<String, JitError> {
    let spec = kernel_spec(package, kernel)?;
    let ctx = ir_packager::llvm_context();
    if kind == ListingKind::PreparedIr {
        let (module, _) = prepared_entry_module(&ctx, package, spec, target, opt, tuning)?;
        return Ok(module.print_to_string().to_string());
    }
    let (module, machine) = optimized_entry_module(&ctx, package, spec, target, opt, tuning)?;
    match kind {
        ListingKind::PreparedIr | ListingKind::OptimizedIr => {
            Ok(module.print_to_string().to_string())
        }
        ListingKind::Assembly => {
            let text = emit(&module, &machine, FileType::Assembly)?;
            Ok(String::from_utf8_lossy(&text).into_owned())
        }
    }
}

/// The whole JIT pipeline up to code generation: [`prepared_entry_module`], optimized.
fn optimized_entry_module<'ctx>(
    ctx: &'ctx Context,
    package: &Package,
    kernel: &KernelSpec,
    target: &HostTarget,
    opt: OptLevel,
    tuning: &Tuning,
) -> Result<(Module<'ctx>, TargetMachine), JitError> {
    let (module, machine) = prepared_entry_module(ctx, package, kernel, target, opt, tuning)?;
    optimize(&module, &machine, opt, tuning)?;
    mark_can_panic(ctx, &module);
    Ok((module, machine))
}

/// Exports [`CAN_PANIC_SYMBOL`] for the optimized `module`: whether any code is left
/// that reads the panic hook. Checked on the module that is emitted, after every pass:
/// inlining may have moved the hook's load out of `offload_panic` into the kernel, so
/// the global's uses are what count, not whether the function remains.
fn mark_can_panic<'ctx>(ctx: &'ctx Context, module: &Module<'ctx>) {
    let can_panic = module
        .get_global(PANIC_HOOK_SYMBOL)
        .is_none_or(|hook| hook.as_pointer_value().get_first_use().is_some());
    let byte = ctx.i8_type();
    let flag = module.add_global(byte, None, CAN_PANIC_SYMBOL);
    flag.set_initializer(&byte.const_int(u64::from(can_panic), false));
    flag.set_constant(true);
    flag.set_linkage(Linkage::External);
}

/// The module as the optimizer receives it: loaded, retargeted, with the panic hook,
/// `noalias` buffers, the entry wrapper, everything else internal, the library fast
/// paths and the code attributes.
fn prepared_entry_module<'ctx>(
    ctx: &'ctx Context,
    package: &Package,
    kernel: &KernelSpec,
    target: &HostTarget,
    opt: OptLevel,
    tuning: &Tuning,
) -> Result<(Module<'ctx>, TargetMachine), JitError> {
    prepare_timed(ctx, package, kernel, target, opt, tuning, None)
}

/// [`prepared_entry_module`], recording the time of its phases in `phases` if given.
fn prepare_timed<'ctx>(
    ctx: &'ctx Context,
    package: &Package,
    kernel: &KernelSpec,
    target: &HostTarget,
    opt: OptLevel,
    tuning: &Tuning,
    mut phases: Option<&mut CompilePhases>,
) -> Result<(Module<'ctx>, TargetMachine), JitError> {
    let mut clock = std::time::Instant::now();
    let mut lap = |slot: fn(&mut CompilePhases) -> &mut std::time::Duration| {
        if let Some(phases) = phases.as_deref_mut() {
            *slot(phases) = clock.elapsed();
        }
        clock = std::time::Instant::now();
    };
    let module = ir_packager::load_module(ctx, package)?;
    lap(|p| &mut p.load);
    let machine = target.machine(opt.llvm())?;
    lap(|p| &mut p.target_machine);
    retarget(&module, &machine);
    let kernel_fn = module
        .get_function(&kernel.name)
        .ok_or_else(|| JitError::NoSuchKernel {
            kernel: kernel.name.clone(),
            available: kernel_names(package),
        })?;
    define_panic_hook(ctx, &module)?;
    mark_buffers_noalias(kernel_fn, kernel, kernel.kind.index_params() as u32);
    let entry = build_entry(ctx, &module, kernel_fn, kernel)?;
    internalize_all_but(&module, &[entry]);
    if tuning.library_search.unwrap_or(opt != OptLevel::O0) {
        let searches = search::add_library_search_paths(&module, target.triple.contains("linux"));
        tracing::debug!(kernel = %kernel.name, searches, "byte searches with a C library fast path");
    }
    set_code_attributes(&module, tuning);
    lap(|p| &mut p.prepare);
    Ok((module, machine))
}

/// Compiles every kernel of `package` for `target`, exported under its own name with the
/// C ABI of its signature (for ahead-of-time use on other machines).
pub(crate) fn compile_kernels_object(
    package: &Package,
    target: &HostTarget,
    opt: OptLevel,
) -> Result<Vec<u8>, JitError> {
    let ctx = ir_packager::llvm_context();
    let module = ir_packager::load_module(&ctx, package)?;
    let machine = target.machine(opt.llvm())?;
    retarget(&module, &machine);
    let kernels: Vec<FunctionValue<'_>> = package
        .manifest()
        .kernels
        .iter()
        .filter_map(|k| module.get_function(&k.name))
        .collect();
    internalize_all_but(&module, &kernels);
    set_code_attributes(&module, &Tuning::default());
    optimize(&module, &machine, opt, &Tuning::default())?;
    emit(&module, &machine, FileType::Object)
}

/// The manifest entry of `kernel`, or the error naming the package's kernels.
pub(crate) fn kernel_spec<'p>(
    package: &'p Package,
    kernel: &str,
) -> Result<&'p KernelSpec, JitError> {
    package
        .manifest()
        .kernel(kernel)
        .ok_or_else(|| JitError::NoSuchKernel {
            kernel: kernel.to_string(),
            available: kernel_names(package),
        })
}

fn kernel_names(package: &Package) -> String {
    package.manifest().kernel_names()
}

fn retarget(module: &Module<'_>, machine: &TargetMachine) {
    module.set_triple(&machine.get_triple());
    module.set_data_layout(&machine.get_target_data().get_data_layout());
}

/// Defines `offload_panic` as a call through [`PANIC_HOOK_SYMBOL`], which the loader
/// points at the host's unwinding handler. Only JIT objects get this: AOT objects leave
/// `offload_panic` for the embedding program to define.
fn define_panic_hook<'ctx>(ctx: &'ctx Context, module: &Module<'ctx>) -> Result<(), JitError> {
    let ptr_type = ctx.ptr_type(AddressSpace::default());
    // The hook is exported even without panic paths so the loader's lookup is uniform.
    let hook = module.add_global(ptr_type, None, PANIC_HOOK_SYMBOL);
    hook.set_initializer(&ptr_type.const_null());
    hook.set_linkage(Linkage::External);
    let Some(panic_fn) = module.get_function(PANIC_SYMBOL) else {
        return Ok(());
    };
    let build = |e: inkwell::builder::BuilderError| JitError::Codegen(e.to_string());
    let builder = ctx.create_builder();
    let block = ctx.append_basic_block(panic_fn, "entry");
    builder.position_at_end(block);
    let handler = builder
        .build_load(ptr_type, hook.as_pointer_value(), "handler")
        .map_err(build)?;
    let code = param(panic_fn, 0)?;
    builder
        .build_indirect_call(
            panic_fn.get_type(),
            handler.into_pointer_value(),
            &[code.into()],
            "",
        )
        .map_err(build)?;
    builder.build_unreachable().map_err(build)?;
    panic_fn.set_linkage(Linkage::Internal);
    Ok(())
}

/// Buffers of one job are distinct allocations, so kernel pointers never alias; telling
/// LLVM lets it vectorize without runtime overlap checks.
fn mark_buffers_noalias(function: FunctionValue<'_>, kernel: &KernelSpec, offset: u32) {
    let ctx = function.get_type().get_context();
    let noalias = Attribute::get_named_enum_kind_id("noalias");
    for (index, arg) in kernel.args.iter().enumerate() {
        if matches!(arg.kind, ArgKind::Buffer { .. }) {
            function.add_attribute(
                AttributeLoc::Param(offset + index as u32),
                ctx.create_enum_attribute(noalias, 0),
            );
        }
    }
}

/// Builds `__offload_entry(start, end, args)`: unpacks the argument block once, then
/// calls the kernel for every item of the packet (item kernels: an `alwaysinline` call
/// in a counted loop, so LLVM sees one loop to vectorize) or once (range kernels).
fn build_entry<'ctx>(
    ctx: &'ctx Context,
    module: &Module<'ctx>,
    kernel_fn: FunctionValue<'ctx>,
    kernel: &KernelSpec,
) -> Result<FunctionValue<'ctx>, JitError> {
    let i64_type = ctx.i64_type();
    let ptr_type = ctx.ptr_type(AddressSpace::default());
    let void = ctx.void_type();
    let entry_type = void.fn_type(&[i64_type.into(), i64_type.into(), ptr_type.into()], false);
    let entry = module.add_function(ENTRY_SYMBOL, entry_type, Some(Linkage::External));
    let builder = ctx.create_builder();
    let start_block = ctx.append_basic_block(entry, "unpack");
    builder.position_at_end(start_block);
    let build = |e: inkwell::builder::BuilderError| JitError::Codegen(e.to_string());

    let (start, end, block) = (
        param(entry, 0)?.into_int_value(),
        param(entry, 1)?.into_int_value(),
        param(entry, 2)?.into_pointer_value(),
    );
    let mut args: Vec<BasicMetadataValueEnum<'ctx>> = Vec::with_capacity(kernel.args.len());
    for (slot, arg) in kernel.args.iter().enumerate() {
        // SAFETY: the argument block has one 8-byte slot per argument (the loader's
        // contract); the index is in range by construction.
        let slot_ptr = unsafe {
            builder.build_in_bounds_gep(
                i64_type,
                block,
                &[i64_type.const_int(slot as u64, false)],
                "slot",
            )
        }
        .map_err(build)?;
        let value: BasicValueEnum<'ctx> = match arg.kind {
            ArgKind::Buffer { .. } => builder
                .build_load(ptr_type, slot_ptr, &arg.name)
                .map_err(build)?,
            ArgKind::Scalar(ty) => {
                let bits = builder
                    .build_load(i64_type, slot_ptr, "bits")
                    .map_err(build)?
                    .into_int_value();
                scalar_from_bits(ctx, &builder, bits, ty, &arg.name)?
            }
        };
        args.push(value.into());
    }

    match kernel.kind {
        KernelKind::Range => {
            let mut call_args: Vec<BasicMetadataValueEnum<'ctx>> = vec![start.into(), end.into()];
            call_args.extend(args);
            builder
                .build_call(kernel_fn, &call_args, "")
                .map_err(build)?;
            builder.build_return(None).map_err(build)?;
        }
        KernelKind::Item => {
            let items_fn = build_item_loop(ctx, module, kernel_fn, kernel)?;
            let mut call_args: Vec<BasicMetadataValueEnum<'ctx>> = vec![start.into(), end.into()];
            call_args.extend(args);
            builder
                .build_call(items_fn, &call_args, "")
                .map_err(build)?;
            builder.build_return(None).map_err(build)?;
        }
    }
    Ok(entry)
}

/// Builds `__offload_items(start, end, args...)`: the loop over a packet's items, calling
/// the kernel (`alwaysinline`) for each. Its buffer parameters are `noalias`: on the
/// function that holds the whole loop, the promise covers every iteration, so LLVM's
/// loop access analysis vectorizes without runtime overlap checks. (On the kernel alone,
/// inlining would scope it to one iteration.) One call per packet is the price.
fn build_item_loop<'ctx>(
    ctx: &'ctx Context,
    module: &Module<'ctx>,
    kernel_fn: FunctionValue<'ctx>,
    kernel: &KernelSpec,
) -> Result<FunctionValue<'ctx>, JitError> {
    let build = |e: inkwell::builder::BuilderError| JitError::Codegen(e.to_string());
    let i64_type = ctx.i64_type();
    let kernel_params = kernel_fn.get_type().get_param_types();
    let mut params = vec![i64_type.into(), i64_type.into()];
    params.extend(kernel_params.iter().skip(1).copied());
    let items_fn = module.add_function(
        "__offload_items",
        ctx.void_type().fn_type(&params, false),
        Some(Linkage::Internal),
    );
    mark_buffers_noalias(items_fn, kernel, 2);
    let builder = ctx.create_builder();
    let start_block = ctx.append_basic_block(items_fn, "start");
    let loop_block = ctx.append_basic_block(items_fn, "item");
    let exit_block = ctx.append_basic_block(items_fn, "done");
    builder.position_at_end(start_block);
    let start = param(items_fn, 0)?.into_int_value();
    let end = param(items_fn, 1)?.into_int_value();
    let any = builder
        .build_int_compare(inkwell::IntPredicate::ULT, start, end, "any")
        .map_err(build)?;
    builder
        .build_conditional_branch(any, loop_block, exit_block)
        .map_err(build)?;
    builder.position_at_end(loop_block);
    let i = builder.build_phi(i64_type, "i").map_err(build)?;
    i.add_incoming(&[(&start, start_block)]);
    let index = i.as_basic_value().into_int_value();
    let mut call_args: Vec<BasicMetadataValueEnum<'ctx>> = vec![index.into()];
    for n in 2..items_fn.count_params() {
        call_args.push(param(items_fn, n)?.into());
    }
    builder
        .build_call(kernel_fn, &call_args, "")
        .map_err(build)?;
    let next = builder
        .build_int_nuw_add(index, i64_type.const_int(1, false), "next")
        .map_err(build)?;
    i.add_incoming(&[(&next, loop_block)]);
    let more = builder
        .build_int_compare(inkwell::IntPredicate::ULT, next, end, "more")
        .map_err(build)?;
    builder
        .build_conditional_branch(more, loop_block, exit_block)
        .map_err(build)?;
    builder.position_at_end(exit_block);
    builder.build_return(None).map_err(build)?;
    let alwaysinline = Attribute::get_named_enum_kind_id("alwaysinline");
    let noinline = Attribute::get_named_enum_kind_id("noinline");
    kernel_fn.remove_enum_attribute(AttributeLoc::Function, noinline);
    kernel_fn.add_attribute(
        AttributeLoc::Function,
        ctx.create_enum_attribute(alwaysinline, 0),
    );
    // Kept out of line: inlined into the entry, its `noalias` would become scoped
    // metadata, which loop access analysis does not use to drop the overlap checks.
    items_fn.add_attribute(
        AttributeLoc::Function,
        ctx.create_enum_attribute(noinline, 0),
    );
    Ok(items_fn)
}

fn param<'ctx>(f: FunctionValue<'ctx>, n: u32) -> Result<BasicValueEnum<'ctx>, JitError> {
    f.get_nth_param(n)
        .ok_or_else(|| JitError::Codegen(format!("entry point lacks parameter {n}")))
}

fn scalar_from_bits<'ctx>(
    ctx: &'ctx Context,
    builder: &inkwell::builder::Builder<'ctx>,
    bits: inkwell::values::IntValue<'ctx>,
    ty: ScalarType,
    name: &str,
) -> Result<BasicValueEnum<'ctx>, JitError> {
    let build = |e: inkwell::builder::BuilderError| JitError::Codegen(e.to_string());
    Ok(match ty {
        ScalarType::I64 | ScalarType::U64 => bits.into(),
        ScalarType::I32 | ScalarType::U32 | ScalarType::U8 => builder
            .build_int_truncate(bits, ctx.i32_type(), name)
            .map_err(build)?
            .into(),
        ScalarType::F64 => builder
            .build_bit_cast(bits, ctx.f64_type(), name)
            .map_err(build)?,
        ScalarType::F32 => {
            let low = builder
                .build_int_truncate(bits, ctx.i32_type(), "low")
                .map_err(build)?;
            builder
                .build_bit_cast(low, ctx.f32_type(), name)
                .map_err(build)?
        }
    })
}

fn internalize_all_but(module: &Module<'_>, keep: &[FunctionValue<'_>]) {
    for f in module.get_functions() {
        if f.count_basic_blocks() > 0 && !keep.contains(&f) {
            f.set_linkage(Linkage::Internal);
        }
    }
}

/// Every function gets unwind tables (so a kernel panic can unwind to the runner) and
/// the tuning's vector width preference.
fn set_code_attributes(module: &Module<'_>, tuning: &Tuning) {
    let ctx = module.get_context();
    let uwtable = Attribute::get_named_enum_kind_id("uwtable");
    for f in module.get_functions() {
        if f.count_basic_blocks() == 0 {
            continue;
        }
        // 2 = asynchronous unwind tables, what Rust and C compilers emit on Linux.
        f.add_attribute(
            AttributeLoc::Function,
            ctx.create_enum_attribute(uwtable, 2),
        );
        if let Some(width) = tuning.prefer_vector_width {
            f.add_attribute(
                AttributeLoc::Function,
                ctx.create_string_attribute("prefer-vector-width", &width.to_string()),
            );
        }
    }
}

/// The LLVM command-line options node-jit sets for its process, once, before its first
/// optimization.
///
/// `-slp-threshold=2`: the SLP vectorizer only keeps trees that it expects to save at
/// least 2 cost units (LLVM's default is any gain). Below that it mostly pairs two
/// floats of a small vector type (`[f32; 3]` dot products and normalizations) into a
/// 64-bit vector, which x86 computes in a 128-bit register whose upper lanes hold
/// whatever was there before; when those are denormal, each operation takes a
/// microcode assist. On this Zen 5 that made raytrace run at 0.73x of rustc's build
/// (1.21x with the threshold, 1.15x with denormals flushed, which confirms the cause;
/// see `docs/jit-benchmarks.md`), while the wider trees that pay off (nbody's, matmul6's)
/// are kept.
const LLVM_OPTIONS: &[&str] = &["-slp-threshold=2"];

fn set_llvm_options() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let args: Vec<std::ffi::CString> = std::iter::once("offload-node-jit")
            .chain(LLVM_OPTIONS.iter().copied())
            .filter_map(|arg| std::ffi::CString::new(arg).ok())
            .collect();
        let argv: Vec<*const std::ffi::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        // SAFETY: `argv` holds `argv.len()` NUL-terminated strings that outlive the call;
        // LLVM copies what it keeps. The options are LLVM's own, so parsing cannot fail.
        unsafe {
            llvm_sys::support::LLVMParseCommandLineOptions(
                argv.len() as i32,
                argv.as_ptr(),
                std::ptr::null(),
            )
        };
    });
}

fn optimize(
    module: &Module<'_>,
    machine: &TargetMachine,
    opt: OptLevel,
    tuning: &Tuning,
) -> Result<(), JitError> {
    set_llvm_options();
    let options = PassBuilderOptions::create();
    let vectorize = opt != OptLevel::O0;
    options.set_loop_vectorization(vectorize);
    options.set_loop_slp_vectorization(vectorize);
    options.set_loop_interleaving(vectorize);
    options.set_loop_unrolling(tuning.unroll.unwrap_or(vectorize));
    module
        .run_passes(
            opt.pipeline(tuning.pipeline.unwrap_or(Pipeline::PostLink)),
            machine,
            options,
        )
        .map_err(|e| JitError::Codegen(format!("optimization failed: {e}")))?;
    module
        .verify()
        .map_err(|e| JitError::Codegen(format!("optimized module is invalid: {e}")))
}

fn emit(
    module: &Module<'_>,
    machine: &TargetMachine,
    file_type: FileType,
) -> Result<Vec<u8>, JitError> {
    machine
        .write_to_memory_buffer(module, file_type)
        .map(|buffer| buffer.as_slice().to_vec())
        .map_err(|e| JitError::Codegen(format!("object emission failed: {e}")))
}

/// The C prototype of a kernel, for harnesses that link AOT objects.
pub fn c_prototype(kernel: &KernelSpec) -> String {
    let c_type = |t: ScalarType| match t {
        ScalarType::U8 => "uint8_t",
        ScalarType::I32 => "int32_t",
        ScalarType::U32 => "uint32_t",
        ScalarType::I64 => "int64_t",
        ScalarType::U64 => "uint64_t",
        ScalarType::F32 => "float",
        ScalarType::F64 => "double",
    };
    let mut params: Vec<String> = match kernel.kind {
        KernelKind::Item => vec!["uint64_t i".into()],
        KernelKind::Range => vec!["uint64_t start".into(), "uint64_t end".into()],
    };
    for arg in &kernel.args {
        params.push(match arg.kind {
            ArgKind::Scalar(t) => format!("{} {}", c_type(t), arg.name),
            ArgKind::Buffer { access, elem, .. } => {
                let constness = if access.writes_output() { "" } else { "const " };
                format!("{constness}{} *{}", c_type(elem), arg.name)
            }
        });
    }
    format!("void {}({});", kernel.name, params.join(", "))
}
