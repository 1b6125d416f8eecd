//! CPU time of the calling thread and of child processes (Linux), for benches on shared
//! machines.
//!
//! The machines these benches run on are often shared (a 2-core VM with several builds
//! running next to the bench). Wall time then mostly measures how long the scheduler kept
//! the bench thread waiting, and two variants measured a few seconds apart see different
//! loads. The thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) counts only the time the
//! thread actually ran, which is what a single-threaded kernel comparison wants. It still
//! includes cache misses caused by other processes, so figures from a busy machine remain
//! noisier than from an idle one.

use std::time::Duration;

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

// Linux's clock id for the calling thread's CPU time (<linux/time.h>).
const CLOCK_THREAD_CPUTIME_ID: i32 = 3;

unsafe extern "C" {
    // glibc; std links it anyway.
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

/// CPU time consumed by the calling thread so far.
pub fn thread_cpu_time() -> Duration {
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec (64-bit fields on x86_64/aarch64 Linux).
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[repr(C)]
struct Timeval {
    tv_sec: i64,
    tv_usec: i64,
}

/// `struct rusage` of x86_64/aarch64 Linux: two timevals, then 14 longs this bench
/// does not read.
#[repr(C)]
struct Rusage {
    ru_utime: Timeval,
    ru_stime: Timeval,
    _rest: [i64; 14],
}

// <sys/resource.h>: every terminated and waited-for descendant.
const RUSAGE_CHILDREN: i32 = -1;

unsafe extern "C" {
    // glibc; std links it anyway.
    fn getrusage(who: i32, usage: *mut Rusage) -> i32;
}

/// User + system CPU time of all terminated, waited-for child processes (and their own
/// waited-for descendants) so far: what external tools such as the linker cost.
// Only the compile bench spawns processes it wants to account for.
#[allow(dead_code)]
pub fn children_cpu_time() -> Duration {
    let mut usage = Rusage {
        ru_utime: Timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        ru_stime: Timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        _rest: [0; 14],
    };
    // SAFETY: `usage` is a valid, writable `struct rusage` for this platform.
    let rc = unsafe { getrusage(RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0, "getrusage(RUSAGE_CHILDREN) failed");
    let micros = |t: &Timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(&usage.ru_utime) + micros(&usage.ru_stime))
}
