//! Check mode (`offload run --check`, [`Options::check`](crate::Options::check)): finds
//! kernels that touch memory the kernel model does not give them, naming the buffer and
//! the item.
//!
//! A normal local run hands every packet the job's whole buffers, so a write past an
//! item's slice lands in a neighbour's slice and seems to work, while on a node, where
//! each packet's slices travel alone, the same write is lost or breaks the worker. Check
//! mode runs each item alone, on copies of exactly what the model lets it touch, each
//! copy in its own mapping between [`GUARD`] bytes of inaccessible pages:
//!
//! - its slice of every `out`/`inout` buffer, writable;
//! - what it may read of every split `in` buffer (its elements and the halo), read-only;
//! - every whole `in` buffer, read-only;
//! - its packet's `sum` accumulators, writable.
//!
//! Each copy ends where the upper guard begins, so any access past its end traps, and so
//! does a write into an `in` buffer; the crash handler (`crash`) reports it as `kernel K
//! wrote outside its slice of `y` on item 7 (the access began 1 bytes past its end)`.
//! Before a copy's start, the rest of its first page is filled with a pattern that is
//! compared after the item: a write there is reported the same way; a read there is not
//! seen (nor is one of the pattern's own value). Results are copied back to the job's
//! buffers, so the outputs equal a normal run's, `sum` totals bit for bit (the
//! accumulators follow the same fixed packets). Check mode is slow (copies and a few
//! system calls per item and buffer) and runs on one thread of this machine's CPU: it is
//! for finding the bug, not for production runs.

use std::ops::Range;

use ir_packager::{ArgLayout, Layout};
use node_jit::CompiledKernel;

use crate::buffer::Buffer;
use crate::crash::{FenceKind, FenceNote, Fenced, Running};
use crate::engine::RunError;

/// Inaccessible bytes on each side of a copy: a wild index that lands farther away is
/// reported as a plain crash on the item.
pub(crate) const GUARD: usize = 64 << 20;

/// The byte the unused start of a writable copy's first page holds.
const PATTERN: u8 = 0xa5;

/// One copy in its own mapping: `GUARD` bytes of `PROT_NONE`, the accessible pages, and
/// `GUARD` bytes of `PROT_NONE` again.
struct Fence {
    mapping: *mut u8,
    mapped: usize,
    /// The accessible pages.
    pages: *mut u8,
    pages_len: usize,
}

impl Fence {
    /// A fence whose accessible pages hold at least `capacity` bytes.
    fn new(capacity: usize, page: usize) -> Result<Fence, RunError> {
        let pages_len = capacity.div_ceil(page).max(1) * page;
        let mapped = pages_len + 2 * GUARD;
        let out_of_memory = || RunError::OutOfMemory {
            what: "check mode's fenced copies".to_string(),
            bytes: pages_len as u64,
        };
        // SAFETY: a fresh anonymous mapping; nothing else refers to it.
        let mapping = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if mapping == libc::MAP_FAILED {
            return Err(out_of_memory());
        }
        let fence = Fence {
            mapping: mapping.cast(),
            mapped,
            // SAFETY: within the mapping just made.
            pages: unsafe { mapping.cast::<u8>().add(GUARD) },
            pages_len,
        };
        fence.protect(true).map_err(|_| out_of_memory())?;
        Ok(fence)
    }

    /// Makes the accessible pages writable or read-only.
    fn protect(&self, writable: bool) -> Result<(), std::io::Error> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: the pages are ours, page-aligned and inside the mapping.
        if unsafe { libc::mprotect(self.pages.cast(), self.pages_len, prot) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Where a copy of `len` bytes starts: its end touches the upper guard.
    fn copy_start(&self, len: usize) -> *mut u8 {
        // SAFETY: `len <= pages_len` (fences are made for their largest copy).
        unsafe { self.pages.add(self.pages_len - len.min(self.pages_len)) }
    }
}

impl Drop for Fence {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer referred to.
        unsafe { libc::munmap(self.mapping.cast(), self.mapped) };
    }
}

/// One buffer argument of the step, fenced.
struct FencedArg {
    slot: usize,
    /// The argument's name in the manifest.
    name: String,
    kind: FenceKind,
    fence: Fence,
    /// The job's buffer.
    source: *mut u8,
    /// Bytes of the whole buffer (whole `in` and `sum` buffers).
    whole: usize,
    /// The item's copy: its bytes in the job's buffer, and where the copy starts.
    range: Range<usize>,
    copy: *mut u8,
}

impl FencedArg {
    fn note(&self) -> FenceNote {
        let name = self.name.as_str();
        let copy_start = self.copy as usize;
        FenceNote {
            mapped_start: self.fence.mapping as usize,
            mapped_end: self.fence.mapping as usize + self.fence.mapped,
            copy_start,
            copy_end: copy_start + (self.range.end - self.range.start),
            name: name.as_ptr(),
            name_len: name.len(),
            kind: self.kind,
        }
    }

    /// The bytes between the start of the accessible pages and the copy.
    fn lead(&self) -> (*mut u8, usize) {
        let lead = self.copy as usize - self.fence.pages as usize;
        (self.fence.pages, lead)
    }
}

/// What `run_step` needs of a step.
pub(crate) struct CheckStep<'a> {
    pub(crate) layout: &'a Layout,
    pub(crate) kernel: &'a CompiledKernel,
    /// The step's argument block over the job's buffers.
    pub(crate) block: &'a [u64],
    /// The item ranges to run.
    pub(crate) ranges: &'a [Range<u64>],
    /// The stack to run items on.
    pub(crate) stack: usize,
}

/// Runs every item of `step` alone on fenced copies (see the module's text) on a thread
/// of `step.stack` bytes, calling `progress(items done)` now and then. Returns the step's
/// `sum` totals, one per `sum` argument in slot order, for the caller to add into the
/// buffers as a normal run does.
pub(crate) fn run_step(
    step: &CheckStep<'_>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<Buffer>, RunError> {
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("offload-check".into())
            .stack_size(step.stack)
            .spawn_scoped(scope, || run_items(step, progress))
            .map_err(|source| RunError::Threads {
                requested: 1,
                started: 0,
                source,
            })?;
        worker.join().map_err(|_| RunError::WorkerLost)?
    })
}

/// Items between two progress reports.
const PROGRESS_EVERY: u64 = 4096;

fn run_items(
    step: &CheckStep<'_>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<Buffer>, RunError> {
    let layout = step.layout;
    let spec = step.kernel.spec();
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .ok()
        .filter(|&p| p > 0)
        .unwrap_or(4096);
    let mut fenced: Vec<FencedArg> = Vec::new();
    for (slot, arg) in layout.args.iter().enumerate() {
        let source = step.block.get(slot).copied().unwrap_or(0) as usize as *mut u8;
        let (kind, capacity, whole) = match *arg {
            ArgLayout::Scalar(_) => continue,
            ArgLayout::Split { access, halo, .. } => {
                let per = arg.bytes_per_item() as usize;
                let kind = if access == ir_packager::Access::In {
                    FenceKind::Readable
                } else {
                    FenceKind::Slice
                };
                let items = if kind == FenceKind::Readable {
                    (2 * halo).saturating_add(1).min(layout.items.max(1)) as usize
                } else {
                    1
                };
                (kind, per.saturating_mul(items), 0)
            }
            ArgLayout::Whole { elem, len } => {
                let bytes = (len as usize).saturating_mul(elem.size());
                (FenceKind::Whole, bytes, bytes)
            }
            ArgLayout::Sum { elem, len } => {
                let bytes = (len as usize).saturating_mul(elem.size());
                (FenceKind::Sum, bytes, bytes)
            }
        };
        let fence = Fence::new(capacity, page)?;
        let copy = fence.copy_start(0);
        fenced.push(FencedArg {
            slot,
            name: spec
                .args
                .get(slot)
                .map_or_else(|| format!("#{slot}"), |a| a.name.clone()),
            kind,
            fence,
            source,
            whole,
            range: 0..0,
            copy,
        });
    }
    // Whole `in` buffers do not change during a step: copied once, then read-only.
    for f in fenced.iter_mut().filter(|f| f.kind == FenceKind::Whole) {
        f.range = 0..f.whole;
        f.copy = f.fence.copy_start(f.whole);
        // SAFETY: the job's buffer holds `whole` bytes (the plan checked it); the copy
        // fits its fence.
        unsafe { std::ptr::copy_nonoverlapping(f.source, f.copy, f.whole) };
        f.fence.protect(false).map_err(|e| protect_error(&e))?;
    }
    let sums: Vec<usize> = (0..fenced.len())
        .filter(|&k| fenced[k].kind == FenceKind::Sum)
        .collect();
    let mut totals: Vec<Buffer> = sums
        .iter()
        .map(|&k| {
            Buffer::try_zeroed(fenced[k].whole).ok_or(RunError::OutOfMemory {
                what: format!("the totals of kernel `{}`'s sum buffers", layout.kernel),
                bytes: fenced[k].whole as u64,
            })
        })
        .collect::<Result<_, _>>()?;
    // Sum accumulators follow the fixed packets of a normal run, so totals agree bit
    // for bit: one accumulator per packet, folded in item order.
    let granule = layout.sum_packet_items().unwrap_or(u64::MAX);
    let mut block = step.block.to_vec();
    let mut notes: Vec<FenceNote> = Vec::with_capacity(fenced.len());
    let mut done = 0u64;
    for range in step.ranges {
        let mut item = range.start;
        while item < range.end {
            let packet_end = item.saturating_add(granule).min(range.end);
            for &k in &sums {
                let f = &mut fenced[k];
                f.range = 0..f.whole;
                f.copy = f.fence.copy_start(f.whole);
                let (lead, lead_len) = f.lead();
                // SAFETY: the accumulator's copy and its lead lie in its fence's
                // writable pages.
                unsafe {
                    std::ptr::write_bytes(lead, PATTERN, lead_len);
                    std::ptr::write_bytes(f.copy, 0, f.whole);
                }
            }
            while item < packet_end {
                run_item(step, item, &mut fenced, &mut block, &mut notes)?;
                item += 1;
                done += 1;
                if done % PROGRESS_EVERY == 0 {
                    progress(done);
                }
            }
            for (total, &k) in totals.iter_mut().zip(&sums) {
                let f = &fenced[k];
                // SAFETY: the accumulator's copy, `whole` bytes in its fence.
                let partial = unsafe { std::slice::from_raw_parts(f.copy, f.whole) };
                if let Some(elem) = layout.args[f.slot].elem() {
                    total.add_assign(&Buffer::from_bytes(partial), elem);
                }
            }
        }
    }
    progress(done);
    Ok(totals)
}

fn protect_error(error: &std::io::Error) -> RunError {
    RunError::Refused(format!(
        "check mode cannot protect its fenced copies: {error}"
    ))
}

/// Runs one item on fenced copies and copies its slices back.
fn run_item(
    step: &CheckStep<'_>,
    item: u64,
    fenced: &mut [FencedArg],
    block: &mut [u64],
    notes: &mut Vec<FenceNote>,
) -> Result<(), RunError> {
    let layout = step.layout;
    for f in fenced.iter_mut() {
        match f.kind {
            FenceKind::Slice | FenceKind::Readable => {
                let bytes =
                    layout.byte_range(f.slot, item, item + 1, f.kind == FenceKind::Readable);
                f.range = bytes.start as usize..bytes.end as usize;
                let len = f.range.end - f.range.start;
                if f.kind == FenceKind::Readable {
                    f.fence.protect(true).map_err(|e| protect_error(&e))?;
                }
                f.copy = f.fence.copy_start(len);
                let (lead, lead_len) = f.lead();
                // SAFETY: the range lies in the job's buffer (the plan checked its
                // size); the copy and its lead lie in the fence's writable pages.
                unsafe {
                    std::ptr::write_bytes(lead, PATTERN, lead_len);
                    std::ptr::copy_nonoverlapping(f.source.add(f.range.start), f.copy, len);
                }
                if f.kind == FenceKind::Readable {
                    f.fence.protect(false).map_err(|e| protect_error(&e))?;
                }
                // The kernel indexes from the buffer's start: a base that puts this
                // item's bytes on the copy.
                block[f.slot] = (f.copy as u64).wrapping_sub(f.range.start as u64);
            }
            FenceKind::Whole => block[f.slot] = f.copy as u64,
            FenceKind::Sum => block[f.slot] = f.copy as u64,
        }
    }
    notes.clear();
    notes.extend(fenced.iter().map(FencedArg::note));
    let ran = {
        let _fenced = Fenced::new(notes);
        let _running = Running::new(&step.kernel.spec().name, item, item + 1);
        // SAFETY: every buffer slot points at a fenced copy laid out as the kernel model
        // says item `item` sees its buffer; scalars are the step's own.
        unsafe { step.kernel.run_packet(item, item + 1, block) }
    };
    ran.map_err(|panic| RunError::KernelPanicked {
        kernel: step.kernel.spec().name.clone(),
        start: item,
        end: item + 1,
        reason: panic.reason,
    })?;
    for f in fenced.iter() {
        if f.kind == FenceKind::Sum {
            check_lead(f, item, step.kernel)?;
        }
        if f.kind == FenceKind::Slice {
            check_lead(f, item, step.kernel)?;
            // SAFETY: as when the copy was made, the other way.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    f.copy,
                    f.source.add(f.range.start),
                    f.range.end - f.range.start,
                )
            };
        }
    }
    Ok(())
}

/// Fails the job if the item wrote into the patterned bytes before a writable copy.
fn check_lead(f: &FencedArg, item: u64, kernel: &CompiledKernel) -> Result<(), RunError> {
    let (lead, lead_len) = f.lead();
    // SAFETY: the lead lies in the fence's pages, writable for these kinds.
    let bytes = unsafe { std::slice::from_raw_parts(lead, lead_len) };
    match bytes.iter().position(|&b| b != PATTERN) {
        None => Ok(()),
        Some(first) => {
            let note = f.note();
            Err(RunError::OutsideMemory(crate::crash::outside_message(
                &kernel.spec().name,
                item,
                &note,
                lead as usize + first,
            )))
        }
    }
}
