//! A criterion measurement of the calling thread's CPU time.
//!
//! The machines these benches run on are often shared (a 2-core VM with several builds
//! running next to the bench). Wall time then mostly measures how long the scheduler kept
//! the bench thread waiting, and two variants measured a few seconds apart see different
//! loads. The thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) counts only the time the
//! thread actually ran, which is what a single-threaded kernel comparison wants. It still
//! includes cache misses caused by other processes, so figures from a busy machine remain
//! noisier than from an idle one.

use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::Throughput;

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

/// Criterion measurement: thread CPU time, in nanoseconds.
pub struct ThreadCpuTime;

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_time()
    }

    fn end(&self, start: Duration) -> Duration {
        thread_cpu_time().saturating_sub(start)
    }

    fn add(&self, v1: &Duration, v2: &Duration) -> Duration {
        *v1 + *v2
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuTimeFormatter
    }
}

/// Formats nanoseconds of CPU time like criterion's wall-time formatter.
struct CpuTimeFormatter;

impl ValueFormatter for CpuTimeFormatter {
    fn scale_values(&self, typical_ns: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = match typical_ns {
            t if t < 1e3 => (1.0, "ns"),
            t if t < 1e6 => (1e-3, "µs"),
            t if t < 1e9 => (1e-6, "ms"),
            _ => (1e-9, "s"),
        };
        for v in values {
            *v *= factor;
        }
        unit
    }

    fn scale_throughputs(
        &self,
        typical_ns: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let (per_iter, kind) = match *throughput {
            Throughput::Elements(n) => (n as f64, "elem"),
            Throughput::Bytes(n) | Throughput::BytesDecimal(n) => (n as f64, "B"),
        };
        let typical_rate = per_iter * 1e9 / typical_ns;
        let (factor, unit) = match (typical_rate, kind) {
            (r, "elem") if r >= 1e9 => (1e-9, "Gelem/s"),
            (r, "elem") if r >= 1e6 => (1e-6, "Melem/s"),
            (r, "elem") if r >= 1e3 => (1e-3, "Kelem/s"),
            (_, "elem") => (1.0, "elem/s"),
            (r, _) if r >= 1e9 => (1e-9, "GB/s"),
            (r, _) if r >= 1e6 => (1e-6, "MB/s"),
            (r, _) if r >= 1e3 => (1e-3, "KB/s"),
            _ => (1.0, "B/s"),
        };
        for v in values {
            *v = per_iter * 1e9 / *v * factor;
        }
        unit
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}
