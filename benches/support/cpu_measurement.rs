//! A criterion measurement of the calling thread's CPU time (see `cpu_time.rs` for why),
//! included next to `cpu_time.rs` by the benches that time single-threaded code.

use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::Throughput;

use crate::cpu_time::thread_cpu_time;

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
