//! Threads whose stack size is chosen and whose overflow the sandbox reports as one.

use std::io;
use std::thread::JoinHandle;

use crate::signals;

/// Records the calling thread's stack bounds, so that if it overflows its stack, a
/// sandboxed worker ends with [`crate::WorkerEnd::StackOverflow`] instead of a plain
/// `SIGSEGV`. [`crate::apply`] does it for the thread that calls it and
/// [`spawn_with_stack`] for the threads it starts; call it first thing in other threads
/// that run kernels. Without it, a fault within 64 KiB of the stack pointer is taken for
/// an overflow.
pub fn recognise_stack_overflow() -> io::Result<()> {
    signals::remember_stack_of_this_thread()
}

/// Starts thread `name` with a stack of `stack_bytes` (rounded up to whole pages by the
/// system; Rust's default is 2 MiB) and makes its overflow recognised (see
/// [`recognise_stack_overflow`]). Works inside the sandbox: the profiles allow starting
/// threads.
pub fn spawn_with_stack<F, T>(name: &str, stack_bytes: usize, run: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(stack_bytes)
        .spawn(move || {
            // Best effort: without the bounds, the stack-pointer test still applies.
            let _ = signals::remember_stack_of_this_thread();
            run()
        })
}
