//! libLLVM loaded when first needed, not at start-up.
//!
//! Linking offload against libLLVM costs every process ~16 ms of the library's static
//! initialisation before `main`, also `offload --version` and a run whose kernels come
//! from the code cache, which need no LLVM at all. So on x86-64 Linux llvm-sys does not
//! link it: `build.rs` defines every C API function of the library as a trampoline that
//! jumps through a table, and [`load`] fills the table with `dlsym` after `dlopen`ing
//! the library (privately: its symbols serve the table only). Until then each entry
//! points at [`offload_llvm_unloaded`], which ends the process saying LLVM was used
//! before [`crate::load_llvm`]: a bug, never reachable from input, because every use
//! of LLVM in offload starts with `load_llvm` (through `initialize_llvm`, `llvm_context`
//! or `linked_llvm_version`). Elsewhere the library is linked as usual and [`load`]
//! does nothing.

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod table {
    include!(concat!(env!("OUT_DIR"), "/llvm_names.rs"));

    /// Where this build found libLLVM, and its file name.
    const LIBRARY_DIR: &str = env!("OFFLOAD_LIBLLVM_DIR");
    const LIBRARY_FILE: &str = env!("OFFLOAD_LIBLLVM_FILE");

    core::arch::global_asm!(
        include_str!(concat!(env!("OUT_DIR"), "/llvm_trampolines.s")),
        options(att_syntax)
    );

    extern "C" {
        // The first entry of the trampolines' table (`NAMES.len()` entries).
        static mut offload_llvm_table: usize;
    }

    /// Where every trampoline jumps until LLVM is loaded.
    #[no_mangle]
    extern "C" fn offload_llvm_unloaded() -> ! {
        eprintln!(
            "offload: internal error: an LLVM function was called before LLVM was loaded (or is missing from {LIBRARY_DIR}/{LIBRARY_FILE})"
        );
        std::process::abort()
    }

    /// The library's path.
    pub(crate) fn library_path() -> String {
        format!("{LIBRARY_DIR}/{LIBRARY_FILE}")
    }

    /// Opens the library and points every trampoline at its function.
    pub(crate) fn load() -> Result<(), String> {
        let full = format!("{LIBRARY_DIR}/{LIBRARY_FILE}");
        let mut reasons = Vec::new();
        let mut handle = std::ptr::null_mut();
        // By soname first, as the dynamic loader would have found a linked library
        // (LD_LIBRARY_PATH, a bundle's lib/, the system's cache), then where this build
        // found it.
        for candidate in [env!("OFFLOAD_LIBLLVM_SONAME"), full.as_str(), LIBRARY_FILE] {
            let Ok(path) = std::ffi::CString::new(candidate) else {
                continue;
            };
            // SAFETY: a NUL-terminated path; the handle is kept for the process's life.
            handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
            if !handle.is_null() {
                break;
            }
            // SAFETY: dlerror returns null or a NUL-terminated message.
            let reason = unsafe { libc::dlerror() };
            if !reason.is_null() {
                // SAFETY: checked non-null above.
                let reason = unsafe { std::ffi::CStr::from_ptr(reason) };
                reasons.push(reason.to_string_lossy().into_owned());
            }
        }
        if handle.is_null() {
            return Err(format!("cannot load {full}: {}", reasons.join("; ")));
        }
        // SAFETY: the table has `NAMES.len()` entries (build.rs writes both from one
        // list); it is written here once, before any trampoline is called (`load_llvm`
        // runs under a `Once` that every use of LLVM waits for).
        unsafe {
            let table = std::ptr::addr_of_mut!(offload_llvm_table);
            for (index, name) in NAMES.iter().enumerate() {
                let function = libc::dlsym(handle, name.as_ptr());
                if !function.is_null() {
                    table.add(index).write(function as usize);
                }
            }
        }
        Ok(())
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod table {
    /// libLLVM is linked: nothing to load.
    pub(crate) fn load() -> Result<(), String> {
        Ok(())
    }

    /// The library as `llvm-config` names it at build time.
    pub(crate) fn library_path() -> String {
        format!(
            "{}/{}",
            env!("OFFLOAD_LIBLLVM_DIR"),
            env!("OFFLOAD_LIBLLVM_FILE")
        )
    }
}

pub(crate) use table::{library_path, load};
