//! Byte searches handed to the C library's `memchr` / `memrchr`.
//!
//! LLVM's loop vectorizer vectorizes a loop with an early exit only when it can prove
//! every load of the loop dereferenceable for the whole trip count ("loop not vectorized:
//! Auto-vectorization of loops with potentially faulting load is not supported"). A byte
//! search over a slice (Rust's `position`, `rposition`, `split`, C's
//! `for (...) if (s[i] == c) break;`) never proves that: the bytes after the match may
//! not exist. So both node-jit and an ahead-of-time build ran such searches one byte per
//! iteration, a branchy scalar loop whose speed depends on how the front end of the
//! particular CPU copes with it (issue 17: 0.60x of the AOT build on a Zen 3).
//!
//! The C library has the same search with the same meaning: C11 says `memchr` behaves as
//! if it read the bytes in order and stopped at the first match, and glibc's (and
//! `memrchr`, from the other end) read with aligned vector loads that never cross into a
//! page holding none of the bytes searched, in a version picked for the running CPU
//! (AVX2 on Zen 3, EVEX on AVX-512 CPUs, NEON/SVE on AArch64). This pass finds two-block
//! search loops and gives them a fast path: after [`PEEL`] scalar iterations (a match
//! right at the start never pays for a call) the back edge calls `memchr`/`memrchr` for the rest of the range and re-enters the loop at the
//! iteration that exits (the match, or the end of the range) with every induction
//! variable set to its value there. The loop's own last iteration then computes every
//! value the code after the loop uses, so nothing else about the loop has to be
//! understood.
//!
//! A loop qualifies when, with `H` its header and `L` its only other block:
//! - `H`'s predecessors are one block outside the loop and `L`; `L`'s only predecessor is
//!   `H`; each ends in a conditional branch with one successor outside the loop;
//! - one exit is taken exactly when a byte loaded from an address that moves by one byte
//!   per iteration (forward or backward) equals a loop-invariant value;
//! - the other exit is taken when an induction value that moves by one per iteration
//!   reaches a loop-invariant bound (`==`, or an ordered comparison in the direction of
//!   travel);
//! - every phi of `H` is an induction variable with a constant step, and no instruction
//!   of the loop has a side effect (no stores, calls, volatile or atomic accesses).

use std::collections::{HashMap, HashSet};
use std::ffi::CStr;

use inkwell::module::Module;
use llvm_sys::core as llvm;
use llvm_sys::prelude::{LLVMBasicBlockRef, LLVMBuilderRef, LLVMTypeRef, LLVMValueRef};
use llvm_sys::target::{LLVMABISizeOfType, LLVMGetModuleDataLayout, LLVMPointerSize};
use llvm_sys::{LLVMAtomicOrdering, LLVMIntPredicate, LLVMOpcode, LLVMTypeKind};

/// Scalar iterations before the fast path. Measured on logcrunch and csvsum (whose
/// fields are 3 to 70 bytes long): 1 was fastest for both (logcrunch 3.1x the AOT build
/// against 2.4x with 4 and 2.1x with 16; csvsum 1.4x against 1.35x and 1.2x). A scalar
/// loop pays a mispredicted exit branch per search, about what a call costs, so only a
/// match right at the start is cheaper without the library.
pub(crate) const PEEL: i64 = 1;

type Value = LLVMValueRef;
type Block = LLVMBasicBlockRef;

/// Adds the `memchr`/`memrchr` fast path to every qualifying byte-search loop of
/// `module`; returns how many loops got one. `memrchr` (a GNU extension, also in musl)
/// is only used when `linux` is true.
pub(crate) fn add_library_search_paths(module: &Module<'_>, linux: bool) -> usize {
    let module_ref = module.as_mut_ptr();
    // SAFETY: the module is alive for the whole pass; LLVM owns the data layout.
    let pointer_bytes = unsafe { LLVMPointerSize(LLVMGetModuleDataLayout(module_ref)) };
    if pointer_bytes != 8 {
        return 0;
    }
    let Some(library) = Library::declare(module_ref, linux) else {
        return 0;
    };
    let mut rewritten = 0;
    for function in module.get_functions() {
        let function = inkwell::values::AsValueRef::as_value_ref(&function);
        let loops: Vec<SearchLoop> = blocks_of(function)
            .into_iter()
            .filter_map(|header| SearchLoop::recognize(module_ref, function, header))
            .collect();
        for found in loops {
            if found.rewrite(module_ref, function, &library) {
                rewritten += 1;
            }
        }
    }
    rewritten
}

/// The C library functions the fast paths call.
struct Library {
    memchr: (Value, LLVMTypeRef),
    memrchr: Option<(Value, LLVMTypeRef)>,
}

impl Library {
    /// Declares `ptr memchr(ptr, i32, i64)` (and `memrchr`), or finds them declared with
    /// that type. `None` if the module defines or declares either differently.
    fn declare(module: llvm_sys::prelude::LLVMModuleRef, linux: bool) -> Option<Library> {
        // SAFETY: the module is alive; types and functions are created in its context.
        unsafe {
            let ctx = llvm::LLVMGetModuleContext(module);
            let ptr = llvm::LLVMPointerTypeInContext(ctx, 0);
            let mut params = [
                ptr,
                llvm::LLVMInt32TypeInContext(ctx),
                llvm::LLVMInt64TypeInContext(ctx),
            ];
            let fn_type = llvm::LLVMFunctionType(ptr, params.as_mut_ptr(), 3, 0);
            let get = |name: &CStr| -> Option<(Value, LLVMTypeRef)> {
                let existing = llvm::LLVMGetNamedFunction(module, name.as_ptr());
                if existing.is_null() {
                    return Some((
                        llvm::LLVMAddFunction(module, name.as_ptr(), fn_type),
                        fn_type,
                    ));
                }
                let declared = llvm::LLVMGlobalGetValueType(existing);
                (llvm::LLVMCountBasicBlocks(existing) == 0 && declared == fn_type)
                    .then_some((existing, fn_type))
            };
            Some(Library {
                memchr: get(c"memchr")?,
                memrchr: if linux { Some(get(c"memrchr")?) } else { None },
            })
        }
    }
}

/// Which way the searched address moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Forward,
    Backward,
}

/// When the bound exit is taken, for an induction value `x` and an invariant `b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BoundRule {
    /// `x == b`, either direction.
    Equal,
    /// `x >= b` while `x` increases.
    AtLeast { signed: bool },
    /// `x > b` while `x` increases.
    Above { signed: bool },
    /// `x <= b` while `x` decreases.
    AtMost { signed: bool },
    /// `x < b` while `x` decreases.
    Below { signed: bool },
}

/// A phi of the header with a constant step per iteration (bytes, for pointers).
struct Induction {
    phi: Value,
    init: Value,
    next: Value,
    step: i64,
}

/// A recognized search loop (see the module documentation).
struct SearchLoop {
    pre: Block,
    header: Block,
    latch: Block,
    inductions: Vec<Induction>,
    /// Address of the byte compared in iteration 0 (an expression of the phis).
    address: Value,
    direction: Direction,
    /// The invariant compared with the byte: `i8`, or a wider integer compared with the
    /// zero-extended byte.
    needle: Value,
    /// The induction value of the bound test, its bound, the rule and its step (±1).
    bound_value: Value,
    bound: Value,
    rule: BoundRule,
    bound_step: i64,
    /// Whether the bound is tested before the byte in each iteration (then the
    /// iteration in which the bound exits compares no byte).
    bound_first: bool,
}

/// The blocks of `function`, in layout order.
fn blocks_of(function: Value) -> Vec<Block> {
    let mut blocks = Vec::new();
    // SAFETY: `function` is a live function of the module being rewritten.
    let mut block = unsafe { llvm::LLVMGetFirstBasicBlock(function) };
    while !block.is_null() {
        blocks.push(block);
        // SAFETY: `block` is a live block of `function`.
        block = unsafe { llvm::LLVMGetNextBasicBlock(block) };
    }
    blocks
}

/// The instructions of `block`, in order.
fn instructions_of(block: Block) -> Vec<Value> {
    let mut list = Vec::new();
    // SAFETY: `block` is a live block.
    let mut inst = unsafe { llvm::LLVMGetFirstInstruction(block) };
    while !inst.is_null() {
        list.push(inst);
        // SAFETY: `inst` is a live instruction of `block`.
        inst = unsafe { llvm::LLVMGetNextInstruction(inst) };
    }
    list
}

/// Control-flow edges into each block of `function`, with multiplicity.
fn predecessors(function: Value) -> HashMap<Block, Vec<Block>> {
    let mut preds: HashMap<Block, Vec<Block>> = HashMap::new();
    for block in blocks_of(function) {
        for succ in successors(block) {
            preds.entry(succ).or_default().push(block);
        }
    }
    preds
}

fn successors(block: Block) -> Vec<Block> {
    // SAFETY: `block` is a live block; its terminator (if any) is a live instruction.
    unsafe {
        let term = llvm::LLVMGetBasicBlockTerminator(block);
        if term.is_null() {
            return Vec::new();
        }
        (0..llvm::LLVMGetNumSuccessors(term))
            .map(|i| llvm::LLVMGetSuccessor(term, i))
            .collect()
    }
}

fn opcode(v: Value) -> Option<LLVMOpcode> {
    // SAFETY: `v` is a live value; only instructions have an opcode.
    unsafe { (!llvm::LLVMIsAInstruction(v).is_null()).then(|| llvm::LLVMGetInstructionOpcode(v)) }
}

fn operand(v: Value, index: u32) -> Value {
    // SAFETY: callers only ask for operands the instruction has (checked by opcode).
    unsafe { llvm::LLVMGetOperand(v, index) }
}

fn type_of(v: Value) -> LLVMTypeRef {
    // SAFETY: `v` is a live value.
    unsafe { llvm::LLVMTypeOf(v) }
}

fn is_pointer(v: Value) -> bool {
    // SAFETY: `v` is a live value.
    unsafe { llvm::LLVMGetTypeKind(type_of(v)) == LLVMTypeKind::LLVMPointerTypeKind }
}

/// The bit width of an integer value, `None` for other types.
fn int_width(v: Value) -> Option<u32> {
    // SAFETY: `v` is a live value.
    unsafe {
        let ty = type_of(v);
        (llvm::LLVMGetTypeKind(ty) == LLVMTypeKind::LLVMIntegerTypeKind)
            .then(|| llvm::LLVMGetIntTypeWidth(ty))
    }
}

/// The value of a constant integer of at most 64 bits.
fn const_int(v: Value) -> Option<i64> {
    // SAFETY: `v` is a live value.
    unsafe {
        (!llvm::LLVMIsAConstantInt(v).is_null() && int_width(v).is_some_and(|w| w <= 64))
            .then(|| llvm::LLVMConstIntGetSExtValue(v))
    }
}

/// Whether an instruction may be skipped or re-executed freely: no memory writes, no
/// calls, no volatile or atomic accesses, nothing that ends the block except branches.
fn is_pure(inst: Value) -> bool {
    use LLVMOpcode::*;
    match opcode(inst) {
        Some(LLVMLoad) => {
            // SAFETY: `inst` is a load instruction.
            unsafe {
                llvm::LLVMGetVolatile(inst) == 0
                    && llvm::LLVMGetOrdering(inst)
                        == LLVMAtomicOrdering::LLVMAtomicOrderingNotAtomic
            }
        }
        Some(
            LLVMPHI | LLVMBr | LLVMGetElementPtr | LLVMICmp | LLVMAdd | LLVMSub | LLVMMul | LLVMAnd
            | LLVMOr | LLVMXor | LLVMShl | LLVMLShr | LLVMAShr | LLVMTrunc | LLVMZExt | LLVMSExt
            | LLVMSelect | LLVMFreeze | LLVMPtrToInt | LLVMIntToPtr | LLVMBitCast,
        ) => true,
        _ => false,
    }
}

/// The loop being analysed: its two blocks and the memo of induction steps.
struct LoopView {
    header: Block,
    latch: Block,
    steps: HashMap<Value, Option<i64>>,
    pointer_layout: llvm_sys::target::LLVMTargetDataRef,
}

impl LoopView {
    fn contains(&self, v: Value) -> bool {
        if opcode(v).is_none() {
            return false;
        }
        // SAFETY: `v` is a live instruction.
        let parent = unsafe { llvm::LLVMGetInstructionParent(v) };
        parent == self.header || parent == self.latch
    }

    /// How much `v` changes per iteration (bytes for pointers), if it is an affine
    /// function of the header's induction phis; 0 for loop-invariant values.
    fn step(&mut self, v: Value) -> Option<i64> {
        if !self.contains(v) {
            return Some(0);
        }
        if let Some(known) = self.steps.get(&v) {
            return *known;
        }
        // Guards against cycles through phis while their steps are being computed.
        self.steps.insert(v, None);
        let step = self.compute_step(v);
        self.steps.insert(v, step);
        step
    }

    fn compute_step(&mut self, v: Value) -> Option<i64> {
        use LLVMOpcode::*;
        match opcode(v)? {
            // Header phis get their steps from `SearchLoop::inductions`, seeded into the
            // memo before any other value is asked about.
            LLVMPHI => None,
            LLVMAdd => self
                .step(operand(v, 0))?
                .checked_add(self.step(operand(v, 1))?),
            LLVMSub => self
                .step(operand(v, 0))?
                .checked_sub(self.step(operand(v, 1))?),
            LLVMGetElementPtr => {
                // SAFETY: `v` is a GEP instruction.
                let (indices, source) = unsafe {
                    (
                        llvm::LLVMGetNumOperands(v) - 1,
                        llvm::LLVMGetGEPSourceElementType(v),
                    )
                };
                if indices != 1 {
                    return None;
                }
                let index = operand(v, 1);
                if int_width(index) != Some(64) {
                    return None;
                }
                // SAFETY: the source element type of a GEP is sized.
                let size = unsafe { LLVMABISizeOfType(self.pointer_layout, source) };
                let index_step = self.step(index)?.checked_mul(i64::try_from(size).ok()?)?;
                self.step(operand(v, 0))?.checked_add(index_step)
            }
            _ => {
                // Other pure instructions are affine only when they do not vary.
                // SAFETY: `v` is a live instruction.
                let operands = unsafe { llvm::LLVMGetNumOperands(v) } as u32;
                let invariant = is_pure(v)
                    && opcode(v) != Some(LLVMLoad)
                    && (0..operands).all(|i| self.step(operand(v, i)) == Some(0));
                invariant.then_some(0)
            }
        }
    }

    /// Whether `v` can be recomputed from the phis' values alone (no loads, no other
    /// phis), so [`SearchLoop::rewrite`] can evaluate it at a later iteration.
    fn recomputable(&self, v: Value, phis: &HashSet<Value>) -> bool {
        if !self.contains(v) || phis.contains(&v) {
            return true;
        }
        if !is_pure(v) || matches!(opcode(v), Some(LLVMOpcode::LLVMLoad | LLVMOpcode::LLVMPHI)) {
            return false;
        }
        // SAFETY: `v` is a live instruction.
        let operands = unsafe { llvm::LLVMGetNumOperands(v) } as u32;
        (0..operands).all(|i| self.recomputable(operand(v, i), phis))
    }
}

impl SearchLoop {
    /// Recognizes the search loop headed by `header`, if it is one.
    fn recognize(
        module: llvm_sys::prelude::LLVMModuleRef,
        function: Value,
        header: Block,
    ) -> Option<SearchLoop> {
        let preds = predecessors(function);
        let header_preds = preds.get(&header)?;
        if header_preds.len() != 2 {
            return None;
        }
        let header_succs = successors(header);
        let latch = header_preds
            .iter()
            .copied()
            .find(|p| *p != header && header_succs.contains(p))?;
        let pre = header_preds.iter().copied().find(|p| *p != latch)?;
        if pre == header || preds.get(&latch).map(Vec::as_slice) != Some(&[header]) {
            return None;
        }
        let in_loop = |b: Block| b == header || b == latch;
        let header_exit = exit_of(header, latch, &in_loop)?;
        let latch_exit = exit_of(latch, header, &in_loop)?;
        let body: Vec<Value> = instructions_of(header)
            .into_iter()
            .chain(instructions_of(latch))
            .collect();
        if !body.iter().all(|inst| is_pure(*inst)) {
            return None;
        }
        // SAFETY: the module is alive; LLVM owns its data layout.
        let layout = unsafe { LLVMGetModuleDataLayout(module) };
        let mut view = LoopView {
            header,
            latch,
            steps: HashMap::new(),
            pointer_layout: layout,
        };
        let inductions = inductions(&mut view, pre, latch)?;
        let phis: HashSet<Value> = inductions.iter().map(|iv| iv.phi).collect();

        let (bound_first, byte_exit, bound_exit) =
            if let Some(byte) = ByteTest::recognize(&mut view, header_exit, false) {
                (false, byte, BoundTest::recognize(&mut view, latch_exit)?)
            } else {
                let bound = BoundTest::recognize(&mut view, header_exit)?;
                (
                    true,
                    ByteTest::recognize(&mut view, latch_exit, true)?,
                    bound,
                )
            };
        let direction = match view.step(byte_exit.address)? {
            1 => Direction::Forward,
            -1 => Direction::Backward,
            _ => return None,
        };
        if !view.recomputable(byte_exit.address, &phis)
            || !view.recomputable(bound_exit.value, &phis)
            || points_into_known_object(byte_exit.address)
        {
            return None;
        }
        Some(SearchLoop {
            pre,
            header,
            latch,
            inductions,
            address: byte_exit.address,
            direction,
            needle: byte_exit.needle,
            bound_value: bound_exit.value,
            bound: bound_exit.bound,
            rule: bound_exit.rule,
            bound_step: bound_exit.step,
            bound_first,
        })
    }

    /// Adds the fast path (see the module documentation); false if it cannot (a
    /// backward search without `memrchr`, or no induction variable moves):
    ///
    /// ```text
    /// pre:    ... limit = init_r + PEEL * step_r
    /// H:      phis [init, pre], [next, S], [at_exit, F]   (the old phis, replaced)
    /// L:      ... br exit, S                               (was: br exit, H)
    /// S:      br (next_r == limit), F, H
    /// F:      n = bytes left to compare; r = memchr(address, byte, n)
    ///         j = r ? iteration of r : iteration of the bound exit
    ///         at_exit = next + j * step, for every phi; br H
    /// ```
    fn rewrite(
        &self,
        module: llvm_sys::prelude::LLVMModuleRef,
        function: Value,
        library: &Library,
    ) -> bool {
        // SAFETY: every reference below belongs to the live module being rewritten; the
        // recognizer checked the shapes (operand counts, types) these calls rely on.
        unsafe {
            let ctx = llvm::LLVMGetModuleContext(module);
            let builder = llvm::LLVMCreateBuilderInContext(ctx);
            let i8_type = llvm::LLVMInt8TypeInContext(ctx);
            let i32_type = llvm::LLVMInt32TypeInContext(ctx);
            let i64_type = llvm::LLVMInt64TypeInContext(ctx);
            let ptr_type = llvm::LLVMPointerTypeInContext(ctx, 0);
            let name = c"";
            let (Some(counter), Some((search_fn, search_type))) = (
                // The peel limit is counted on one induction variable that moves.
                self.inductions.iter().find(|iv| iv.step != 0),
                match self.direction {
                    Direction::Forward => Some(library.memchr),
                    Direction::Backward => library.memrchr,
                },
            ) else {
                llvm::LLVMDisposeBuilder(builder);
                return false;
            };
            llvm::LLVMPositionBuilderBefore(builder, llvm::LLVMGetBasicBlockTerminator(self.pre));
            let limit = offset_by(
                builder,
                counter.init,
                PEEL * counter.step,
                i8_type,
                i64_type,
            );

            let switch =
                llvm::LLVMAppendBasicBlockInContext(ctx, function, c"search.peeled".as_ptr());
            let fast =
                llvm::LLVMAppendBasicBlockInContext(ctx, function, c"search.library".as_ptr());

            llvm::LLVMPositionBuilderAtEnd(builder, switch);
            let peeled = llvm::LLVMBuildICmp(
                builder,
                LLVMIntPredicate::LLVMIntEQ,
                counter.next,
                limit,
                name.as_ptr(),
            );
            llvm::LLVMBuildCondBr(builder, peeled, fast, self.header);

            llvm::LLVMPositionBuilderAtEnd(builder, fast);
            let env: HashMap<Value, Value> =
                self.inductions.iter().map(|iv| (iv.phi, iv.next)).collect();
            let mut memo = HashMap::new();
            let address = materialize(builder, self.address, &env, &mut memo, self);
            let bound_value = materialize(builder, self.bound_value, &env, &mut memo, self);
            let (bound_exit, bound_valid) =
                self.bound_exit_iteration(builder, bound_value, i64_type);
            let one = llvm::LLVMConstInt(i64_type, 1, 0);
            let zero = llvm::LLVMConstInt(i64_type, 0, 0);
            let candidates = if self.bound_first {
                bound_exit
            } else {
                llvm::LLVMBuildAdd(builder, bound_exit, one, name.as_ptr())
            };
            let positive = llvm::LLVMBuildICmp(
                builder,
                LLVMIntPredicate::LLVMIntSGT,
                candidates,
                zero,
                name.as_ptr(),
            );
            let valid = llvm::LLVMBuildAnd(builder, positive, bound_valid, name.as_ptr());
            let count = llvm::LLVMBuildSelect(builder, valid, candidates, zero, name.as_ptr());
            let (byte, can_match) = self.needle_byte(builder, i8_type, i32_type);
            let address_int = llvm::LLVMBuildPtrToInt(builder, address, i64_type, name.as_ptr());
            let (hit, found_iteration) = match self.direction {
                Direction::Forward => {
                    let mut args = [address, byte, count];
                    let hit = llvm::LLVMBuildCall2(
                        builder,
                        search_type,
                        search_fn,
                        args.as_mut_ptr(),
                        3,
                        name.as_ptr(),
                    );
                    let hit_int = llvm::LLVMBuildPtrToInt(builder, hit, i64_type, name.as_ptr());
                    (
                        hit,
                        llvm::LLVMBuildSub(builder, hit_int, address_int, name.as_ptr()),
                    )
                }
                Direction::Backward => {
                    // The range is address - (count - 1) ..= address.
                    let back = llvm::LLVMBuildSub(builder, one, count, name.as_ptr());
                    let mut index = [back];
                    let lowest = llvm::LLVMBuildGEP2(
                        builder,
                        i8_type,
                        address,
                        index.as_mut_ptr(),
                        1,
                        name.as_ptr(),
                    );
                    let mut args = [lowest, byte, count];
                    let hit = llvm::LLVMBuildCall2(
                        builder,
                        search_type,
                        search_fn,
                        args.as_mut_ptr(),
                        3,
                        name.as_ptr(),
                    );
                    let hit_int = llvm::LLVMBuildPtrToInt(builder, hit, i64_type, name.as_ptr());
                    (
                        hit,
                        llvm::LLVMBuildSub(builder, address_int, hit_int, name.as_ptr()),
                    )
                }
            };
            let null = llvm::LLVMConstNull(ptr_type);
            let mut found = llvm::LLVMBuildICmp(
                builder,
                LLVMIntPredicate::LLVMIntNE,
                hit,
                null,
                name.as_ptr(),
            );
            if let Some(can_match) = can_match {
                found = llvm::LLVMBuildAnd(builder, found, can_match, name.as_ptr());
            }
            let end_iteration =
                llvm::LLVMBuildSelect(builder, valid, bound_exit, zero, name.as_ptr());
            let jump = llvm::LLVMBuildSelect(
                builder,
                found,
                found_iteration,
                end_iteration,
                name.as_ptr(),
            );
            let at_exit: Vec<Value> = self
                .inductions
                .iter()
                .map(|iv| advance(builder, iv.next, jump, iv.step, i8_type, i64_type))
                .collect();
            llvm::LLVMBuildBr(builder, self.header);

            // The latch's back edge now goes through the peel test.
            let latch_term = llvm::LLVMGetBasicBlockTerminator(self.latch);
            for i in 0..llvm::LLVMGetNumSuccessors(latch_term) {
                if llvm::LLVMGetSuccessor(latch_term, i) == self.header {
                    llvm::LLVMSetSuccessor(latch_term, i, switch);
                }
            }
            // New phis with the three incoming edges replace the old ones.
            // All new phis go in before the first old one, which is erased last.
            llvm::LLVMPositionBuilderBefore(builder, llvm::LLVMGetFirstInstruction(self.header));
            let phis: Vec<Value> = self
                .inductions
                .iter()
                .zip(at_exit)
                .map(|(iv, exit_value)| {
                    let phi = llvm::LLVMBuildPhi(builder, type_of(iv.phi), name.as_ptr());
                    let mut values = [iv.init, iv.next, exit_value];
                    let mut blocks = [self.pre, switch, fast];
                    llvm::LLVMAddIncoming(phi, values.as_mut_ptr(), blocks.as_mut_ptr(), 3);
                    phi
                })
                .collect();
            for (iv, phi) in self.inductions.iter().zip(phis) {
                llvm::LLVMReplaceAllUsesWith(iv.phi, phi);
                llvm::LLVMInstructionEraseFromParent(iv.phi);
            }
            llvm::LLVMDisposeBuilder(builder);
            true
        }
    }

    /// The iteration (counted from the one about to start, whose bound value is `x`) in
    /// which the bound exit is taken, as an `i64`, and an `i1` that is false where that
    /// count cannot be formed (a bound at the end of the value range).
    fn bound_exit_iteration(
        &self,
        builder: LLVMBuilderRef,
        x: Value,
        i64_type: LLVMTypeRef,
    ) -> (Value, Value) {
        let name = c"";
        // SAFETY: `x` and `self.bound` are live integer or pointer values of one type.
        unsafe {
            let (x, b) = if is_pointer(x) {
                (
                    llvm::LLVMBuildPtrToInt(builder, x, i64_type, name.as_ptr()),
                    llvm::LLVMBuildPtrToInt(builder, self.bound, i64_type, name.as_ptr()),
                )
            } else {
                (x, self.bound)
            };
            let ty = type_of(x);
            let width = int_width(x).unwrap_or(64);
            let zero = llvm::LLVMConstInt(ty, 0, 0);
            let one = llvm::LLVMConstInt(ty, 1, 0);
            let always = llvm::LLVMConstInt(
                llvm::LLVMInt1TypeInContext(llvm::LLVMGetTypeContext(ty)),
                1,
                0,
            );
            let predicate =
                |signed: bool, unsigned: LLVMIntPredicate, signed_p: LLVMIntPredicate| {
                    if signed {
                        signed_p
                    } else {
                        unsigned
                    }
                };
            use LLVMIntPredicate::*;
            let (count, valid) = match self.rule {
                BoundRule::Equal => {
                    let distance = if self.bound_step > 0 {
                        llvm::LLVMBuildSub(builder, b, x, name.as_ptr())
                    } else {
                        llvm::LLVMBuildSub(builder, x, b, name.as_ptr())
                    };
                    (distance, always)
                }
                BoundRule::AtLeast { signed } => {
                    let before = llvm::LLVMBuildICmp(
                        builder,
                        predicate(signed, LLVMIntULT, LLVMIntSLT),
                        x,
                        b,
                        name.as_ptr(),
                    );
                    let distance = llvm::LLVMBuildSub(builder, b, x, name.as_ptr());
                    (
                        llvm::LLVMBuildSelect(builder, before, distance, zero, name.as_ptr()),
                        always,
                    )
                }
                BoundRule::Above { signed } => {
                    let before = llvm::LLVMBuildICmp(
                        builder,
                        predicate(signed, LLVMIntULE, LLVMIntSLE),
                        x,
                        b,
                        name.as_ptr(),
                    );
                    let distance = llvm::LLVMBuildSub(builder, b, x, name.as_ptr());
                    let distance = llvm::LLVMBuildAdd(builder, distance, one, name.as_ptr());
                    let max = if signed {
                        llvm::LLVMConstInt(ty, (i64::MAX as u64) >> (64 - width), 0)
                    } else {
                        llvm::LLVMConstAllOnes(ty)
                    };
                    let valid = llvm::LLVMBuildICmp(builder, LLVMIntNE, b, max, name.as_ptr());
                    (
                        llvm::LLVMBuildSelect(builder, before, distance, zero, name.as_ptr()),
                        valid,
                    )
                }
                BoundRule::AtMost { signed } => {
                    let before = llvm::LLVMBuildICmp(
                        builder,
                        predicate(signed, LLVMIntUGT, LLVMIntSGT),
                        x,
                        b,
                        name.as_ptr(),
                    );
                    let distance = llvm::LLVMBuildSub(builder, x, b, name.as_ptr());
                    (
                        llvm::LLVMBuildSelect(builder, before, distance, zero, name.as_ptr()),
                        always,
                    )
                }
                BoundRule::Below { signed } => {
                    let before = llvm::LLVMBuildICmp(
                        builder,
                        predicate(signed, LLVMIntUGE, LLVMIntSGE),
                        x,
                        b,
                        name.as_ptr(),
                    );
                    let distance = llvm::LLVMBuildSub(builder, x, b, name.as_ptr());
                    let distance = llvm::LLVMBuildAdd(builder, distance, one, name.as_ptr());
                    let min = if signed {
                        llvm::LLVMConstInt(ty, 1u64 << (width - 1), 0)
                    } else {
                        zero
                    };
                    let valid = llvm::LLVMBuildICmp(builder, LLVMIntNE, b, min, name.as_ptr());
                    (
                        llvm::LLVMBuildSelect(builder, before, distance, zero, name.as_ptr()),
                        valid,
                    )
                }
            };
            let count = if width < 64 {
                llvm::LLVMBuildZExt(builder, count, i64_type, name.as_ptr())
            } else {
                count
            };
            (count, valid)
        }
    }

    /// The needle as `memchr`'s `int` argument, and for a needle wider than a byte an
    /// `i1` saying whether any byte can equal it.
    fn needle_byte(
        &self,
        builder: LLVMBuilderRef,
        i8_type: LLVMTypeRef,
        i32_type: LLVMTypeRef,
    ) -> (Value, Option<Value>) {
        let name = c"";
        // SAFETY: the needle is a live integer value.
        unsafe {
            if int_width(self.needle) == Some(8) {
                return (
                    llvm::LLVMBuildZExt(builder, self.needle, i32_type, name.as_ptr()),
                    None,
                );
            }
            let byte = llvm::LLVMBuildTrunc(builder, self.needle, i8_type, name.as_ptr());
            let limit = llvm::LLVMConstInt(type_of(self.needle), 256, 0);
            let fits = llvm::LLVMBuildICmp(
                builder,
                LLVMIntPredicate::LLVMIntULT,
                self.needle,
                limit,
                name.as_ptr(),
            );
            (
                llvm::LLVMBuildZExt(builder, byte, i32_type, name.as_ptr()),
                Some(fits),
            )
        }
    }
}

/// `(exit block, taken when the condition is true)` of `block`'s conditional branch
/// whose other successor is `stay`; `None` unless exactly that shape.
fn exit_of(block: Block, stay: Block, in_loop: &impl Fn(Block) -> bool) -> Option<(Value, bool)> {
    // SAFETY: `block` is a live block; a conditional branch has two successors and a
    // condition.
    unsafe {
        let term = llvm::LLVMGetBasicBlockTerminator(block);
        if term.is_null()
            || opcode(term) != Some(LLVMOpcode::LLVMBr)
            || llvm::LLVMIsConditional(term) == 0
        {
            return None;
        }
        let (on_true, on_false) = (
            llvm::LLVMGetSuccessor(term, 0),
            llvm::LLVMGetSuccessor(term, 1),
        );
        let condition = llvm::LLVMGetCondition(term);
        if on_true == stay && !in_loop(on_false) {
            Some((condition, false))
        } else if on_false == stay && !in_loop(on_true) {
            Some((condition, true))
        } else {
            None
        }
    }
}

/// The header's phis as induction variables, or `None` if one is not.
fn inductions(view: &mut LoopView, pre: Block, latch: Block) -> Option<Vec<Induction>> {
    let mut found = Vec::new();
    for inst in instructions_of(view.header) {
        if opcode(inst) != Some(LLVMOpcode::LLVMPHI) {
            break;
        }
        // SAFETY: `inst` is a phi of the header, which has two predecessors.
        let (init, next) = unsafe {
            if llvm::LLVMCountIncoming(inst) != 2 {
                return None;
            }
            let mut init = None;
            let mut next = None;
            for i in 0..2 {
                let block = llvm::LLVMGetIncomingBlock(inst, i);
                let value = llvm::LLVMGetIncomingValue(inst, i);
                if block == pre {
                    init = Some(value);
                } else if block == latch {
                    next = Some(value);
                }
            }
            (init?, next?)
        };
        // `next` must be `add phi, c`, `sub phi, c` or `gep phi, c` (bytes, for pointers).
        if !next_uses_phi(next, inst) {
            return None;
        }
        let step = step_from_phi(view, next, inst)?;
        found.push(Induction {
            phi: inst,
            init,
            next,
            step,
        });
    }
    if found.is_empty() {
        return None;
    }
    for iv in &found {
        view.steps.insert(iv.phi, Some(iv.step));
    }
    Some(found)
}

/// Whether `next` is `phi` plus or minus a constant (directly, one instruction).
fn next_uses_phi(next: Value, phi: Value) -> bool {
    use LLVMOpcode::*;
    match opcode(next) {
        Some(LLVMAdd) => {
            (operand(next, 0) == phi && const_int(operand(next, 1)).is_some())
                || (operand(next, 1) == phi && const_int(operand(next, 0)).is_some())
        }
        Some(LLVMSub | LLVMGetElementPtr) => operand(next, 0) == phi,
        _ => false,
    }
}

/// The constant step of `next` = `phi` ± c or `gep phi, c`.
fn step_from_phi(view: &LoopView, next: Value, phi: Value) -> Option<i64> {
    use LLVMOpcode::*;
    match opcode(next)? {
        LLVMAdd => {
            let other = if operand(next, 0) == phi {
                operand(next, 1)
            } else {
                operand(next, 0)
            };
            const_int(other)
        }
        LLVMSub => const_int(operand(next, 1))?.checked_neg(),
        LLVMGetElementPtr => {
            // SAFETY: `next` is a GEP instruction.
            let (indices, source) = unsafe {
                (
                    llvm::LLVMGetNumOperands(next) - 1,
                    llvm::LLVMGetGEPSourceElementType(next),
                )
            };
            if indices != 1 || int_width(operand(next, 1)) != Some(64) {
                return None;
            }
            // SAFETY: the source element type of a GEP is sized.
            let size = unsafe { LLVMABISizeOfType(view.pointer_layout, source) };
            const_int(operand(next, 1))?.checked_mul(i64::try_from(size).ok()?)
        }
        _ => None,
    }
}

/// The byte exit: a comparison of a loaded byte with an invariant, exiting on equality.
struct ByteTest {
    address: Value,
    needle: Value,
}

impl ByteTest {
    /// Recognizes `(condition, exit_on_true)` as a byte test. The load must run before
    /// the test in every iteration: in the same block, unless `load_anywhere` (a test in
    /// the latch, which follows the header).
    fn recognize(
        view: &mut LoopView,
        (condition, exit_on_true): (Value, bool),
        load_anywhere: bool,
    ) -> Option<ByteTest> {
        if opcode(condition) != Some(LLVMOpcode::LLVMICmp) || !view.contains(condition) {
            return None;
        }
        // SAFETY: `condition` is an icmp.
        let predicate = unsafe { llvm::LLVMGetICmpPredicate(condition) };
        let exits_on_equal = match predicate {
            LLVMIntPredicate::LLVMIntEQ => exit_on_true,
            LLVMIntPredicate::LLVMIntNE => !exit_on_true,
            _ => false,
        };
        if !exits_on_equal {
            return None;
        }
        let (a, b) = (operand(condition, 0), operand(condition, 1));
        let (loaded, needle) = if view.contains(b) { (b, a) } else { (a, b) };
        if view.contains(needle) {
            return None;
        }
        // A byte, or a byte zero-extended to the needle's width.
        let load = match opcode(loaded) {
            Some(LLVMOpcode::LLVMZExt) => operand(loaded, 0),
            _ => loaded,
        };
        if opcode(load) != Some(LLVMOpcode::LLVMLoad)
            || int_width(load) != Some(8)
            || !view.contains(load)
        {
            return None;
        }
        if load != loaded && int_width(needle).is_none_or(|w| w <= 8 || w > 64) {
            return None;
        }
        if load == loaded && int_width(needle) != Some(8) {
            return None;
        }
        // SAFETY: `load` is a live instruction.
        let load_parent = unsafe { llvm::LLVMGetInstructionParent(load) };
        // SAFETY: `condition` is a live instruction.
        let test_parent = unsafe { llvm::LLVMGetInstructionParent(condition) };
        let allowed = load_anywhere || load_parent == test_parent;
        let address = operand(load, 0);
        // SAFETY: `address` is a pointer value.
        let address_space = unsafe { llvm::LLVMGetPointerAddressSpace(type_of(address)) };
        (allowed && address_space == 0).then_some(ByteTest { address, needle })
    }
}

/// The bound exit: an induction value with step ±1 reaching an invariant.
struct BoundTest {
    value: Value,
    bound: Value,
    rule: BoundRule,
    step: i64,
}

impl BoundTest {
    fn recognize(
        view: &mut LoopView,
        (condition, exit_on_true): (Value, bool),
    ) -> Option<BoundTest> {
        use LLVMIntPredicate::*;
        if opcode(condition) != Some(LLVMOpcode::LLVMICmp) || !view.contains(condition) {
            return None;
        }
        // SAFETY: `condition` is an icmp.
        let mut predicate = unsafe { llvm::LLVMGetICmpPredicate(condition) };
        let (mut value, mut bound) = (operand(condition, 0), operand(condition, 1));
        if view.contains(bound) {
            std::mem::swap(&mut value, &mut bound);
            predicate = swapped(predicate);
        }
        if view.contains(bound) || !(is_pointer(value) || int_width(value).is_some_and(|w| w <= 64))
        {
            return None;
        }
        if !exit_on_true {
            predicate = inverse(predicate);
        }
        let step = view.step(value)?;
        let rule = match (predicate, step) {
            (LLVMIntEQ, 1 | -1) => BoundRule::Equal,
            (LLVMIntUGE, 1) => BoundRule::AtLeast { signed: false },
            (LLVMIntSGE, 1) => BoundRule::AtLeast { signed: true },
            (LLVMIntUGT, 1) => BoundRule::Above { signed: false },
            (LLVMIntSGT, 1) => BoundRule::Above { signed: true },
            (LLVMIntULE, -1) => BoundRule::AtMost { signed: false },
            (LLVMIntSLE, -1) => BoundRule::AtMost { signed: true },
            (LLVMIntULT, -1) => BoundRule::Below { signed: false },
            (LLVMIntSLT, -1) => BoundRule::Below { signed: true },
            _ => return None,
        };
        Some(BoundTest {
            value,
            bound,
            rule,
            step,
        })
    }
}

/// The predicate with its operands swapped (`a < b` is `b > a`).
fn swapped(p: LLVMIntPredicate) -> LLVMIntPredicate {
    use LLVMIntPredicate::*;
    match p {
        LLVMIntUGT => LLVMIntULT,
        LLVMIntULT => LLVMIntUGT,
        LLVMIntUGE => LLVMIntULE,
        LLVMIntULE => LLVMIntUGE,
        LLVMIntSGT => LLVMIntSLT,
        LLVMIntSLT => LLVMIntSGT,
        LLVMIntSGE => LLVMIntSLE,
        LLVMIntSLE => LLVMIntSGE,
        other => other,
    }
}

/// The negated predicate (`!(a < b)` is `a >= b`).
fn inverse(p: LLVMIntPredicate) -> LLVMIntPredicate {
    use LLVMIntPredicate::*;
    match p {
        LLVMIntEQ => LLVMIntNE,
        LLVMIntNE => LLVMIntEQ,
        LLVMIntUGT => LLVMIntULE,
        LLVMIntULE => LLVMIntUGT,
        LLVMIntUGE => LLVMIntULT,
        LLVMIntULT => LLVMIntUGE,
        LLVMIntSGT => LLVMIntSLE,
        LLVMIntSLE => LLVMIntSGT,
        LLVMIntSGE => LLVMIntSLT,
        LLVMIntSLT => LLVMIntSGE,
    }
}

/// Whether the address is into an alloca or a global: objects of known size, where
/// LLVM's own early-exit vectorizer can prove the loads safe and needs no library call.
fn points_into_known_object(address: Value) -> bool {
    let mut v = address;
    for _ in 0..8 {
        // SAFETY: `v` is a live value.
        unsafe {
            if !llvm::LLVMIsAAllocaInst(v).is_null() || !llvm::LLVMIsAGlobalValue(v).is_null() {
                return true;
            }
        }
        match opcode(v) {
            Some(LLVMOpcode::LLVMGetElementPtr | LLVMOpcode::LLVMBitCast) => v = operand(v, 0),
            _ => return false,
        }
    }
    false
}

/// Emits `v` as it would be computed with each phi `p` replaced by `env[p]`: loop
/// values are cloned with substituted operands, everything else is used as it is.
fn materialize(
    builder: LLVMBuilderRef,
    v: Value,
    env: &HashMap<Value, Value>,
    memo: &mut HashMap<Value, Value>,
    search: &SearchLoop,
) -> Value {
    if let Some(value) = env.get(&v).or_else(|| memo.get(&v)) {
        return *value;
    }
    let in_loop = opcode(v).is_some() && {
        // SAFETY: `v` is a live instruction.
        let parent = unsafe { llvm::LLVMGetInstructionParent(v) };
        parent == search.header || parent == search.latch
    };
    if !in_loop {
        return v;
    }
    // SAFETY: `v` is a pure, non-phi loop instruction (the recognizer checked
    // `recomputable`); its clone gets substituted operands and is inserted at the
    // builder's position.
    unsafe {
        let operands = llvm::LLVMGetNumOperands(v) as u32;
        let values: Vec<Value> = (0..operands)
            .map(|i| materialize(builder, operand(v, i), env, memo, search))
            .collect();
        let clone = llvm::LLVMInstructionClone(v);
        for (i, value) in values.into_iter().enumerate() {
            llvm::LLVMSetOperand(clone, i as u32, value);
        }
        llvm::LLVMInsertIntoBuilder(builder, clone);
        memo.insert(v, clone);
        clone
    }
}

/// `base + amount` (a constant; bytes for pointers).
fn offset_by(
    builder: LLVMBuilderRef,
    base: Value,
    amount: i64,
    i8_type: LLVMTypeRef,
    i64_type: LLVMTypeRef,
) -> Value {
    let name = c"";
    // SAFETY: `base` is a live integer or pointer value; the builder is positioned.
    unsafe {
        if is_pointer(base) {
            let mut index = [llvm::LLVMConstInt(i64_type, amount as u64, 1)];
            llvm::LLVMBuildGEP2(builder, i8_type, base, index.as_mut_ptr(), 1, name.as_ptr())
        } else {
            let constant = llvm::LLVMConstInt(type_of(base), amount as u64, 1);
            llvm::LLVMBuildAdd(builder, base, constant, name.as_ptr())
        }
    }
}

/// `base + iterations * step` (bytes for pointers), `iterations` an `i64`.
fn advance(
    builder: LLVMBuilderRef,
    base: Value,
    iterations: Value,
    step: i64,
    i8_type: LLVMTypeRef,
    i64_type: LLVMTypeRef,
) -> Value {
    let name = c"";
    // SAFETY: `base` is a live integer or pointer value; the builder is positioned.
    unsafe {
        if is_pointer(base) {
            let amount = llvm::LLVMBuildMul(
                builder,
                iterations,
                llvm::LLVMConstInt(i64_type, step as u64, 1),
                name.as_ptr(),
            );
            let mut index = [amount];
            llvm::LLVMBuildGEP2(builder, i8_type, base, index.as_mut_ptr(), 1, name.as_ptr())
        } else {
            let ty = type_of(base);
            let iterations = if int_width(base) == Some(64) {
                iterations
            } else {
                llvm::LLVMBuildTrunc(builder, iterations, ty, name.as_ptr())
            };
            let amount = llvm::LLVMBuildMul(
                builder,
                iterations,
                llvm::LLVMConstInt(ty, step as u64, 1),
                name.as_ptr(),
            );
            llvm::LLVMBuildAdd(builder, base, amount, name.as_ptr())
        }
    }
}
