//! Thin, safe wrappers over the LLVM-C calls the lowering needs to read a module.
//!
//! inkwell's typed API does not reach everything the lowering reads (GEP source element
//! types, switch cases, extractvalue indices, value printing), so the lowering walks the
//! module through these helpers on raw references instead.
//!
//! Every function here takes references obtained from a module that the caller keeps
//! alive for the whole lowering (`Lowering` borrows the inkwell `Module`), and only reads
//! from LLVM: that is the one safety argument for all the `unsafe` blocks below.

use std::ffi::CStr;

use llvm_sys::core as llvm;
use llvm_sys::prelude::{LLVMBasicBlockRef, LLVMTypeRef, LLVMValueRef};
use llvm_sys::target::LLVMTargetDataRef;
pub use llvm_sys::{LLVMIntPredicate, LLVMOpcode, LLVMRealPredicate, LLVMTypeKind};

/// A value reference of the module being lowered.
pub type Value = LLVMValueRef;
/// A type reference of the module being lowered.
pub type Type = LLVMTypeRef;
/// A basic block of the module being lowered.
pub type Block = LLVMBasicBlockRef;

pub fn type_of(v: Value) -> Type {
    // SAFETY: see the module documentation.
    unsafe { llvm::LLVMTypeOf(v) }
}

pub fn kind(t: Type) -> LLVMTypeKind {
    // SAFETY: see the module documentation.
    unsafe { llvm::LLVMGetTypeKind(t) }
}

pub fn int_width(t: Type) -> u32 {
    // SAFETY: see the module documentation; callers check the type is an integer.
    unsafe { llvm::LLVMGetIntTypeWidth(t) }
}

pub fn element_type(t: Type) -> Type {
    // SAFETY: see the module documentation; arrays and vectors have an element type.
    unsafe { llvm::LLVMGetElementType(t) }
}

pub fn print_type(t: Type) -> String {
    // SAFETY: see the module documentation; the message is disposed after copying.
    unsafe {
        let ptr = llvm::LLVMPrintTypeToString(t);
        let text = CStr::from_ptr(ptr).to_string_lossy().into_owned();
        llvm::LLVMDisposeMessage(ptr);
        text
    }
}

pub fn print_value(v: Value) -> String {
    // SAFETY: see the module documentation; the message is disposed after copying.
    unsafe {
        let ptr = llvm::LLVMPrintValueToString(v);
        let text = CStr::from_ptr(ptr).to_string_lossy().into_owned();
        llvm::LLVMDisposeMessage(ptr);
        text.trim().to_string()
    }
}

pub fn name(v: Value) -> String {
    let mut len = 0usize;
    // SAFETY: see the module documentation; LLVM returns `len` readable bytes.
    unsafe {
        let ptr = llvm::LLVMGetValueName2(v, &mut len);
        if ptr.is_null() {
            return String::new();
        }
        let bytes = std::slice::from_raw_parts(ptr.cast::<u8>(), len);
        String::from_utf8_lossy(bytes).into_owned()
    }
}

pub fn opcode(v: Value) -> LLVMOpcode {
    // SAFETY: see the module documentation; `v` is an instruction.
    unsafe { llvm::LLVMGetInstructionOpcode(v) }
}

pub fn num_operands(v: Value) -> u32 {
    // SAFETY: see the module documentation.
    unsafe { llvm::LLVMGetNumOperands(v) as u32 }
}

pub fn operand(v: Value, i: u32) -> Value {
    // SAFETY: see the module documentation; callers stay below `num_operands`.
    unsafe { llvm::LLVMGetOperand(v, i) }
}

/// Removes a function-level enum attribute from a call site (the one write we make,
/// during canonicalization, before any reading).
pub fn remove_call_site_fn_attribute(call: Value, kind: u32) {
    // SAFETY: see the module documentation; `call` is a call instruction.
    unsafe {
        llvm::LLVMRemoveCallSiteEnumAttribute(call, llvm_sys::LLVMAttributeFunctionIndex, kind)
    }
}

pub fn is_function(v: Value) -> bool {
    // SAFETY: see the module documentation.
    unsafe { !llvm::LLVMIsAFunction(v).is_null() }
}

pub fn is_constant_int(v: Value) -> bool {
    // SAFETY: see the module documentation.
    unsafe { !llvm::LLVMIsAConstantInt(v).is_null() }
}

pub fn is_constant_fp(v: Value) -> bool {
    // SAFETY: see the module documentation.
    unsafe { !llvm::LLVMIsAConstantFP(v).is_null() }
}

pub fn is_undef(v: Value) -> bool {
    // SAFETY: see the module documentation. Poison is a subclass of undef.
    unsafe { !llvm::LLVMIsAUndefValue(v).is_null() }
}

pub fn is_null_pointer(v: Value) -> bool {
    // SAFETY: see the module documentation.
    unsafe { !llvm::LLVMIsAConstantPointerNull(v).is_null() }
}

pub fn is_zero_aggregate(v: Value) -> bool {
    // SAFETY: see the module documentation.
    unsafe { !llvm::LLVMIsAConstantAggregateZero(v).is_null() }
}

pub fn is_global_variable(v: Value) -> bool {
    // SAFETY: see the module documentation.
    unsafe { !llvm::LLVMIsAGlobalVariable(v).is_null() }
}

pub fn global_initializer(v: Value) -> Option<Value> {
    // SAFETY: see the module documentation; `v` is a global variable.
    let init = unsafe { llvm::LLVMGetInitializer(v) };
    (!init.is_null()).then_some(init)
}

pub fn is_global_constant(v: Value) -> bool {
    // SAFETY: see the module documentation; `v` is a global variable.
    unsafe { llvm::LLVMIsGlobalConstant(v) != 0 }
}

pub fn global_value_type(v: Value) -> Type {
    // SAFETY: see the module documentation; `v` is a global.
    unsafe { llvm::LLVMGlobalGetValueType(v) }
}

/// The zero-extended value of an integer constant of at most 64 bits.
pub fn const_int_zext(v: Value) -> u64 {
    // SAFETY: see the module documentation; `v` is a ConstantInt.
    unsafe { llvm::LLVMConstIntGetZExtValue(v) }
}

/// The value of a floating-point constant, widened to f64 (exact for f32).
pub fn const_fp(v: Value) -> f64 {
    let mut loses = 0;
    // SAFETY: see the module documentation; `v` is a ConstantFP.
    unsafe { llvm::LLVMConstRealGetDouble(v, &mut loses) }
}

pub fn icmp_predicate(v: Value) -> LLVMIntPredicate {
    // SAFETY: see the module documentation; `v` is an icmp.
    unsafe { llvm::LLVMGetICmpPredicate(v) }
}

pub fn fcmp_predicate(v: Value) -> LLVMRealPredicate {
    // SAFETY: see the module documentation; `v` is an fcmp.
    unsafe { llvm::LLVMGetFCmpPredicate(v) }
}

pub fn gep_source_type(v: Value) -> Type {
    // SAFETY: see the module documentation; `v` is a GEP.
    unsafe { llvm::LLVMGetGEPSourceElementType(v) }
}

pub fn allocated_type(v: Value) -> Type {
    // SAFETY: see the module documentation; `v` is an alloca.
    unsafe { llvm::LLVMGetAllocatedType(v) }
}

pub fn alignment(v: Value) -> u32 {
    // SAFETY: see the module documentation; `v` is a load, store or alloca.
    unsafe { llvm::LLVMGetAlignment(v) }
}

pub fn called_value(v: Value) -> Value {
    // SAFETY: see the module documentation; `v` is a call.
    unsafe { llvm::LLVMGetCalledValue(v) }
}

pub fn num_call_args(v: Value) -> u32 {
    // SAFETY: see the module documentation; `v` is a call.
    unsafe { llvm::LLVMGetNumArgOperands(v) }
}

pub fn incoming(phi: Value) -> Vec<(Value, Block)> {
    // SAFETY: see the module documentation; `phi` is a phi node.
    unsafe {
        (0..llvm::LLVMCountIncoming(phi))
            .map(|i| {
                (
                    llvm::LLVMGetIncomingValue(phi, i),
                    llvm::LLVMGetIncomingBlock(phi, i),
                )
            })
            .collect()
    }
}

pub fn is_conditional(br: Value) -> bool {
    // SAFETY: see the module documentation; `br` is a branch.
    unsafe { llvm::LLVMIsConditional(br) != 0 }
}

pub fn condition(br: Value) -> Value {
    // SAFETY: see the module documentation; `br` is a conditional branch.
    unsafe { llvm::LLVMGetCondition(br) }
}

pub fn successor(term: Value, i: u32) -> Block {
    // SAFETY: see the module documentation; `term` is a terminator with successor `i`.
    unsafe { llvm::LLVMGetSuccessor(term, i) }
}

pub fn extract_indices(v: Value) -> Vec<u32> {
    // SAFETY: see the module documentation; `v` is an extractvalue/insertvalue.
    unsafe {
        let n = llvm::LLVMGetNumIndices(v) as usize;
        let ptr = llvm::LLVMGetIndices(v);
        std::slice::from_raw_parts(ptr, n).to_vec()
    }
}

pub fn params(f: Value) -> Vec<Value> {
    // SAFETY: see the module documentation; `f` is a function.
    unsafe {
        (0..llvm::LLVMCountParams(f))
            .map(|i| llvm::LLVMGetParam(f, i))
            .collect()
    }
}

pub fn return_type(f: Value) -> Type {
    // SAFETY: see the module documentation; `f` is a function.
    unsafe { llvm::LLVMGetReturnType(llvm::LLVMGlobalGetValueType(f)) }
}

pub fn blocks(f: Value) -> Vec<Block> {
    let mut out = Vec::new();
    // SAFETY: see the module documentation; `f` is a function.
    unsafe {
        let mut b = llvm::LLVMGetFirstBasicBlock(f);
        while !b.is_null() {
            out.push(b);
            b = llvm::LLVMGetNextBasicBlock(b);
        }
    }
    out
}

pub fn instructions(b: Block) -> Vec<Value> {
    let mut out = Vec::new();
    // SAFETY: see the module documentation; `b` is a block.
    unsafe {
        let mut i = llvm::LLVMGetFirstInstruction(b);
        while !i.is_null() {
            out.push(i);
            i = llvm::LLVMGetNextInstruction(i);
        }
    }
    out
}

pub fn is_declaration(f: Value) -> bool {
    // SAFETY: see the module documentation.
    unsafe { llvm::LLVMIsDeclaration(f) != 0 }
}

pub fn struct_element_types(t: Type) -> Vec<Type> {
    // SAFETY: see the module documentation; `t` is a struct type.
    unsafe {
        let n = llvm::LLVMCountStructElementTypes(t);
        (0..n)
            .map(|i| llvm::LLVMStructGetTypeAtIndex(t, i))
            .collect()
    }
}

/// Type sizes and field offsets under the lowering's fixed data layout.
pub struct Layout(LLVMTargetDataRef);

impl Layout {
    pub fn new(text: &str) -> Layout {
        let c = std::ffi::CString::new(text).unwrap_or_default();
        // SAFETY: `c` is a valid C string; the target data is disposed in Drop.
        Layout(unsafe { llvm_sys::target::LLVMCreateTargetData(c.as_ptr()) })
    }

    /// The allocation size of `t` (its size including tail padding: the GEP stride).
    pub fn alloc_size(&self, t: Type) -> u64 {
        // SAFETY: `self.0` is live; `t` is a sized type of the module.
        unsafe { llvm_sys::target::LLVMABISizeOfType(self.0, t) }
    }

    pub fn abi_align(&self, t: Type) -> u32 {
        // SAFETY: as above.
        unsafe { llvm_sys::target::LLVMABIAlignmentOfType(self.0, t) }
    }

    pub fn field_offset(&self, t: Type, field: u32) -> u64 {
        // SAFETY: as above; `t` is a struct type with at least `field + 1` fields.
        unsafe { llvm_sys::target::LLVMOffsetOfElement(self.0, t, field) }
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by LLVMCreateTargetData and dropped once.
        unsafe { llvm_sys::target::LLVMDisposeTargetData(self.0) }
    }
}

pub fn aggregate_element(v: Value, i: u32) -> Option<Value> {
    // SAFETY: see the module documentation; `v` is a constant aggregate.
    let e = unsafe { llvm::LLVMGetAggregateElement(v, i) };
    (!e.is_null()).then_some(e)
}

pub fn array_length(t: Type) -> u64 {
    // SAFETY: see the module documentation; `t` is an array type.
    unsafe { llvm::LLVMGetArrayLength2(t) }
}

pub fn is_constant_expr(v: Value) -> bool {
    // SAFETY: see the module documentation.
    unsafe { !llvm::LLVMIsAConstantExpr(v).is_null() }
}

/// A switch's cases as (value, destination), default excluded.
pub fn switch_cases(switch: Value) -> Vec<(Value, Block)> {
    // SAFETY: see the module documentation; `switch` is a switch instruction, whose
    // successor 0 is the default and successors 1.. are the cases.
    unsafe {
        (1..llvm::LLVMGetNumSuccessors(switch))
            .map(|i| {
                (
                    llvm::LLVMGetSwitchCaseValue(switch, i),
                    llvm::LLVMGetSuccessor(switch, i),
                )
            })
            .collect()
    }
}

pub fn switch_default(switch: Value) -> Block {
    // SAFETY: see the module documentation; `switch` is a switch instruction.
    unsafe { llvm::LLVMGetSwitchDefaultDest(switch) }
}

pub fn vector_lanes(t: Type) -> u32 {
    // SAFETY: see the module documentation; `t` is a fixed vector type.
    unsafe { llvm::LLVMGetVectorSize(t) }
}

/// A shufflevector's mask; `None` for undefined lanes.
pub fn shuffle_mask(v: Value) -> Vec<Option<u32>> {
    // SAFETY: see the module documentation; `v` is a shufflevector.
    unsafe {
        let undef = llvm::LLVMGetUndefMaskElem();
        (0..llvm::LLVMGetNumMaskElements(v))
            .map(|k| {
                let m = llvm::LLVMGetMaskValue(v, k);
                (m != undef && m >= 0).then_some(m as u32)
            })
            .collect()
    }
}

pub fn is_constant(v: Value) -> bool {
    // SAFETY: see the module documentation.
    unsafe { !llvm::LLVMIsAConstant(v).is_null() }
}
