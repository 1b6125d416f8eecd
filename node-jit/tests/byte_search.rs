//! Byte-search loops get a C library fast path (`memchr`/`memrchr`) in the JIT's code,
//! and the searches still find what the scalar loops find.
//!
//! The kernels are hand-written LLVM IR in the loop shapes rustc and clang emit (Rust's
//! `position`/`rposition`/`enumerate`, C's counted `for` loops forward and backward, a
//! needle compared as an `int`). Each item `i` searches from position `i`, so one run
//! covers every distance from a match, from 0 to past the scalar peel, and searches that
//! find nothing. The text ends exactly at a page that cannot be read: a fast path that
//! asked the library for one byte too many would fault.

use std::path::Path;

use ir_packager::Manifest;
use node_jit::{Config, Engine, HostTarget, ListingKind, OptLevel, Tuning};

const MANIFEST_ARGS: &str =
    r#"args = ["text: in u8[]", "len: u64", "needle: u64", "out: out u64[1]"]"#;

/// `out[i]` = first index `>= i` holding the needle, else `len` (Rust's `position` over
/// a slice: pointer induction variable, bound `next == end` tested after the byte).
const FORWARD_POINTER: &str = r#"
define void @forward_pointer(i64 %i, ptr %text, i64 %len, i64 %needle, ptr %out) {
entry:
  %c = trunc i64 %needle to i8
  %begin = getelementptr inbounds i8, ptr %text, i64 %i
  %end = getelementptr inbounds i8, ptr %text, i64 %len
  %empty = icmp uge i64 %i, %len
  br i1 %empty, label %done, label %loop
loop:
  %p = phi ptr [ %begin, %entry ], [ %p.next, %latch ]
  %b = load i8, ptr %p, align 1
  %hit = icmp eq i8 %b, %c
  br i1 %hit, label %found, label %latch
latch:
  %p.next = getelementptr inbounds i8, ptr %p, i64 1
  %at.end = icmp eq ptr %p.next, %end
  br i1 %at.end, label %done, label %loop
found:
  %pi = ptrtoint ptr %p to i64
  %ti = ptrtoint ptr %text to i64
  %pos = sub i64 %pi, %ti
  br label %done
done:
  %r = phi i64 [ %len, %entry ], [ %len, %latch ], [ %pos, %found ]
  %slot = getelementptr inbounds i64, ptr %out, i64 %i
  store i64 %r, ptr %slot, align 8
  ret void
}
"#;

/// As [`FORWARD_POINTER`], with an index, a `k + 1 < len` bound and the needle compared
/// as an `i32` with the zero-extended byte (C's `s[k] == c` with `int c`): a needle above
/// 255 never matches.
const FORWARD_INDEX_INT: &str = r#"
define void @forward_index_int(i64 %i, ptr %text, i64 %len, i64 %needle, ptr %out) {
entry:
  %n32 = trunc i64 %needle to i32
  %empty = icmp uge i64 %i, %len
  br i1 %empty, label %done, label %loop
loop:
  %k = phi i64 [ %i, %entry ], [ %k.next, %latch ]
  %a = getelementptr inbounds i8, ptr %text, i64 %k
  %b = load i8, ptr %a, align 1
  %bz = zext i8 %b to i32
  %hit = icmp eq i32 %n32, %bz
  br i1 %hit, label %done, label %latch
latch:
  %k.next = add nuw i64 %k, 1
  %more = icmp ult i64 %k.next, %len
  br i1 %more, label %loop, label %done
done:
  %r = phi i64 [ %len, %entry ], [ %len, %latch ], [ %k, %loop ]
  %slot = getelementptr inbounds i64, ptr %out, i64 %i
  store i64 %r, ptr %slot, align 8
  ret void
}
"#;

/// `out[i]` = last index `< i` holding the needle, else `u64::MAX` (C's
/// `for (k = i; k > 0; k--) if (s[k-1] == c)`: bound tested first, signed).
const BACKWARD_INDEX: &str = r#"
define void @backward_index(i64 %i, ptr %text, i64 %len, i64 %needle, ptr %out) {
entry:
  %c = trunc i64 %needle to i8
  br label %head
head:
  %k = phi i64 [ %i, %entry ], [ %k.dec, %body ]
  %positive = icmp sgt i64 %k, 0
  br i1 %positive, label %body, label %done
body:
  %k.dec = add nsw i64 %k, -1
  %a = getelementptr inbounds i8, ptr %text, i64 %k.dec
  %b = load i8, ptr %a, align 1
  %hit = icmp eq i8 %b, %c
  br i1 %hit, label %done, label %head
done:
  %r = phi i64 [ -1, %head ], [ %k.dec, %body ]
  %slot = getelementptr inbounds i64, ptr %out, i64 %i
  store i64 %r, ptr %slot, align 8
  ret void
}
"#;

/// As [`BACKWARD_INDEX`] in the shape of Rust's `rposition`: a pointer walking down to
/// the start and an index beside it.
const BACKWARD_POINTER: &str = r#"
define void @backward_pointer(i64 %i, ptr %text, i64 %len, i64 %needle, ptr %out) {
entry:
  %c = trunc i64 %needle to i8
  %start = getelementptr inbounds i8, ptr %text, i64 %i
  br label %head
head:
  %q = phi ptr [ %start, %entry ], [ %q.prev, %body ]
  %j = phi i64 [ %i, %entry ], [ %j.dec, %body ]
  %at.begin = icmp eq ptr %text, %q
  br i1 %at.begin, label %done, label %body
body:
  %q.prev = getelementptr inbounds i8, ptr %q, i64 -1
  %j.dec = add nsw i64 %j, -1
  %b = load i8, ptr %q.prev, align 1
  %hit = icmp eq i8 %b, %c
  br i1 %hit, label %done, label %head
done:
  %r = phi i64 [ -1, %head ], [ %j.dec, %body ]
  %slot = getelementptr inbounds i64, ptr %out, i64 %i
  store i64 %r, ptr %slot, align 8
  ret void
}
"#;

/// As [`FORWARD_POINTER`] in the shape of Rust's `enumerate` loop with an early return:
/// the bound tested first, the byte loaded in the second block.
const FORWARD_BOUND_FIRST: &str = r#"
define void @forward_bound_first(i64 %i, ptr %text, i64 %len, i64 %needle, ptr %out) {
entry:
  %c = trunc i64 %needle to i8
  %clamped = call i64 @llvm.umin.i64(i64 %i, i64 %len)
  %begin = getelementptr inbounds i8, ptr %text, i64 %clamped
  %end = getelementptr inbounds i8, ptr %text, i64 %len
  br label %head
head:
  %k = phi i64 [ %clamped, %entry ], [ %k.next, %body ]
  %p = phi ptr [ %begin, %entry ], [ %p.next, %body ]
  %at.end = icmp eq ptr %p, %end
  br i1 %at.end, label %done, label %body
body:
  %p.next = getelementptr inbounds i8, ptr %p, i64 1
  %k.next = add nuw i64 %k, 1
  %b = load i8, ptr %p, align 1
  %hit = icmp eq i8 %b, %c
  br i1 %hit, label %done, label %head
done:
  %r = phi i64 [ %len, %head ], [ %k, %body ]
  %slot = getelementptr inbounds i64, ptr %out, i64 %i
  store i64 %r, ptr %slot, align 8
  ret void
}
declare i64 @llvm.umin.i64(i64, i64)
"#;

/// Not a search the library can do: it skips bytes *equal* to the needle.
const SKIP_WHILE_EQUAL: &str = r#"
define void @skip_while_equal(i64 %i, ptr %text, i64 %len, i64 %needle, ptr %out) {
entry:
  %c = trunc i64 %needle to i8
  %empty = icmp uge i64 %i, %len
  br i1 %empty, label %done, label %loop
loop:
  %k = phi i64 [ %i, %entry ], [ %k.next, %latch ]
  %a = getelementptr inbounds i8, ptr %text, i64 %k
  %b = load i8, ptr %a, align 1
  %same = icmp eq i8 %b, %c
  br i1 %same, label %latch, label %done
latch:
  %k.next = add nuw i64 %k, 1
  %at.end = icmp eq i64 %k.next, %len
  br i1 %at.end, label %done, label %loop
done:
  %r = phi i64 [ %len, %entry ], [ %len, %latch ], [ %k, %loop ]
  %slot = getelementptr inbounds i64, ptr %out, i64 %i
  store i64 %r, ptr %slot, align 8
  ret void
}
"#;

/// Not a pure search: every byte looked at is also counted in memory.
const COUNTING_SEARCH: &str = r#"
define void @counting_search(i64 %i, ptr %text, i64 %len, i64 %needle, ptr %out) {
entry:
  %c = trunc i64 %needle to i8
  %slot = getelementptr inbounds i64, ptr %out, i64 %i
  store i64 0, ptr %slot, align 8
  %empty = icmp uge i64 %i, %len
  br i1 %empty, label %done, label %loop
loop:
  %k = phi i64 [ %i, %entry ], [ %k.next, %latch ]
  %a = getelementptr inbounds i8, ptr %text, i64 %k
  %b = load i8, ptr %a, align 1
  %seen = load i64, ptr %slot, align 8
  %seen.next = add i64 %seen, 1
  store i64 %seen.next, ptr %slot, align 8
  %hit = icmp eq i8 %b, %c
  br i1 %hit, label %done, label %latch
latch:
  %k.next = add nuw i64 %k, 1
  %at.end = icmp eq i64 %k.next, %len
  br i1 %at.end, label %done, label %loop
done:
  ret void
}
"#;

/// The searching kernels and what each computes for text `t`, item `i`, needle `n`.
type Expected = fn(&[u8], usize, u64) -> u64;

fn first_at_or_after(text: &[u8], i: usize, needle: u64) -> u64 {
    let found = (i..text.len()).find(|&k| u64::from(text[k]) == needle);
    found.unwrap_or(text.len()) as u64
}

fn last_before(text: &[u8], i: usize, needle: u64) -> u64 {
    let found = (0..i.min(text.len()))
        .rev()
        .find(|&k| u64::from(text[k]) == needle);
    found.map_or(u64::MAX, |k| k as u64)
}

fn first_different(text: &[u8], i: usize, needle: u64) -> u64 {
    let found = (i..text.len()).find(|&k| u64::from(text[k]) != needle);
    found.unwrap_or(text.len()) as u64
}

const SEARCHES: [(&str, &str, Expected); 5] = [
    ("forward_pointer", FORWARD_POINTER, first_at_or_after),
    ("forward_index_int", FORWARD_INDEX_INT, first_at_or_after),
    ("backward_index", BACKWARD_INDEX, last_before),
    ("backward_pointer", BACKWARD_POINTER, last_before),
    (
        "forward_bound_first",
        FORWARD_BOUND_FIRST,
        first_at_or_after,
    ),
];

/// Writes `ir` as `NAME.ll` with its manifest and packages it.
fn package(dir: &Path, name: &str, ir: &str) -> ir_packager::Package {
    let source = dir.join(format!("{name}.ll"));
    std::fs::write(&source, ir).expect("write the kernel");
    let manifest = Manifest::parse(&format!(
        "[[kernel]]\nname = \"{name}\"\nkind = \"item\"\n{MANIFEST_ARGS}\n"
    ))
    .expect("manifest");
    ir_packager::package_source(&source, &manifest)
        .unwrap_or_else(|e| panic!("packaging {name}: {e}"))
}

fn optimized_ir(package: &ir_packager::Package, kernel: &str, target: &HostTarget) -> String {
    node_jit::listing(
        package,
        kernel,
        target,
        OptLevel::O3,
        &Tuning::default(),
        ListingKind::OptimizedIr,
    )
    .unwrap_or_else(|e| panic!("listing {kernel}: {e}"))
}

/// The CPUs whose code the assertions are checked on: this one, and the two the
/// benchmark figures of `docs/benchmarks.md` come from.
fn targets() -> Vec<HostTarget> {
    let host = HostTarget::detect();
    let mut targets = vec![host.clone()];
    if host.triple.starts_with("x86_64") {
        for cpu in ["znver3", "cascadelake"] {
            targets.push(HostTarget::named_cpu(&host.triple, cpu).expect("x86 CPU"));
        }
    }
    targets
}

#[test]
fn search_loops_call_the_library_on_every_cpu() {
    let dir = tempfile::tempdir().expect("temporary directory");
    for (name, ir, _) in SEARCHES {
        let package = package(dir.path(), name, ir);
        let wanted = if name.starts_with("backward") {
            "@memrchr("
        } else {
            "@memchr("
        };
        for target in targets() {
            let text = optimized_ir(&package, name, &target);
            assert!(
                text.contains(&format!("call ptr {wanted}")),
                "{name} for {}: no call to {wanted} in the optimized IR:\n{text}",
                target.cpu
            );
        }
    }
    for (name, ir) in [
        ("skip_while_equal", SKIP_WHILE_EQUAL),
        ("counting_search", COUNTING_SEARCH),
    ] {
        let package = package(dir.path(), name, ir);
        let text = optimized_ir(&package, name, &HostTarget::detect());
        assert!(
            !text.contains("@memchr(") && !text.contains("@memrchr("),
            "{name} must stay a plain loop:\n{text}"
        );
    }
}

/// A buffer whose last byte is the last readable byte before an inaccessible page.
struct GuardedBuffer {
    base: *mut u8,
    mapped: usize,
    len: usize,
}

const PROT_NONE: i32 = 0;
const PROT_READ_WRITE: i32 = 3;
const MAP_PRIVATE_ANONYMOUS: i32 = 0x02 | 0x20;

unsafe extern "C" {
    fn mmap(addr: *mut u8, len: usize, prot: i32, flags: i32, fd: i32, off: i64) -> *mut u8;
    fn mprotect(addr: *mut u8, len: usize, prot: i32) -> i32;
    fn munmap(addr: *mut u8, len: usize) -> i32;
}

impl GuardedBuffer {
    fn new(contents: &[u8]) -> GuardedBuffer {
        const PAGE: usize = 4096;
        let pages = contents.len().div_ceil(PAGE) + 1;
        let mapped = (pages + 1) * PAGE;
        // SAFETY: an anonymous private mapping of `mapped` bytes; the last page is made
        // inaccessible and the contents end right before it.
        unsafe {
            let base = mmap(
                std::ptr::null_mut(),
                mapped,
                PROT_READ_WRITE,
                MAP_PRIVATE_ANONYMOUS,
                -1,
                0,
            );
            assert!(!base.is_null() && base as isize != -1, "mmap failed");
            assert_eq!(
                mprotect(base.add(mapped - PAGE), PAGE, PROT_NONE),
                0,
                "mprotect failed"
            );
            let start = mapped - PAGE - contents.len();
            std::ptr::copy_nonoverlapping(contents.as_ptr(), base.add(start), contents.len());
            GuardedBuffer {
                base,
                mapped,
                len: contents.len(),
            }
        }
    }

    fn as_ptr(&self) -> *const u8 {
        // SAFETY: within the mapping (see `new`).
        unsafe { self.base.add(self.mapped - 4096 - self.len) }
    }
}

impl Drop for GuardedBuffer {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { munmap(self.base, self.mapped) };
    }
}

/// 3000 bytes of `a..=h` with `x` at gaps of 0 to 120 bytes, then a stretch without any.
fn text() -> Vec<u8> {
    let mut text = Vec::new();
    let mut gap = 0usize;
    while text.len() < 2500 {
        for k in 0..gap {
            text.push(b'a' + ((k * 7 + gap) % 8) as u8);
        }
        text.push(b'x');
        gap = (gap * 5 + 3) % 121;
    }
    text.extend((0..500).map(|k| b'a' + (k % 8) as u8));
    text
}

#[test]
fn library_searches_find_what_the_loops_find() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine = Engine::new(Config::default().disk_cache(false)).expect("engine");
    let contents = text();
    let guarded = GuardedBuffer::new(&contents);
    let needles: [(u64, &str); 5] = [
        (u64::from(b'x'), "a byte at many distances"),
        (u64::from(b'a'), "a frequent byte"),
        (u64::from(b'z'), "an absent byte"),
        (0, "the zero byte"),
        (
            256 + u64::from(b'x'),
            "an int needle above 255 (matches nothing when compared as int)",
        ),
    ];
    for (name, ir, expected) in SEARCHES {
        let package = package(dir.path(), name, ir);
        let kernel = engine
            .compile(&package, name)
            .unwrap_or_else(|e| panic!("compile {name}: {e}"));
        for (needle, what) in needles {
            // Item `len` searches an empty rest (forward) or the whole text (backward).
            let items = contents.len() + 1;
            let mut out = vec![0u64; items];
            let args = [
                guarded.as_ptr() as u64,
                contents.len() as u64,
                needle,
                out.as_mut_ptr() as u64,
            ];
            // SAFETY: `text` holds `len` readable bytes; `out` one slot per item.
            unsafe { kernel.run_packet(0, items as u64, &args) }.expect("no panic");
            let want: Vec<u64> = if name == "forward_index_int" || needle < 256 {
                (0..items).map(|i| expected(&contents, i, needle)).collect()
            } else {
                // An i8 comparison sees only the low byte of the needle.
                (0..items)
                    .map(|i| expected(&contents, i, needle & 0xFF))
                    .collect()
            };
            let wrong: Vec<String> = (0..items)
                .filter(|&i| out[i] != want[i])
                .take(5)
                .map(|i| format!("item {i}: got {}, want {}", out[i], want[i]))
                .collect();
            assert!(wrong.is_empty(), "{name}, {what}: {wrong:?}");
        }
    }
}

#[test]
fn searches_the_library_cannot_do_stay_correct() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine = Engine::new(Config::default().disk_cache(false)).expect("engine");
    let contents: Vec<u8> = std::iter::repeat_n(b' ', 40)
        .chain(*b"word")
        .chain(std::iter::repeat_n(b' ', 30))
        .collect();
    let package = package(dir.path(), "skip_while_equal", SKIP_WHILE_EQUAL);
    let kernel = engine
        .compile(&package, "skip_while_equal")
        .expect("compile");
    let mut out = vec![0u64; contents.len()];
    let args = [
        contents.as_ptr() as u64,
        contents.len() as u64,
        u64::from(b' '),
        out.as_mut_ptr() as u64,
    ];
    // SAFETY: `text` holds `len` bytes; `out` one slot per item.
    unsafe { kernel.run_packet(0, contents.len() as u64, &args) }.expect("no panic");
    let want: Vec<u64> = (0..contents.len())
        .map(|i| first_different(&contents, i, u64::from(b' ')))
        .collect();
    assert_eq!(out, want);
}

/// The property that fixed logcrunch (issue 17): its `split` on `\n` and its `rposition`
/// of `"` reach the C library in the code generated for this CPU, for Zen 3 and for
/// Cascade Lake, and so do csvsum's searches for `\n` and `,`.
#[test]
fn logcrunch_and_csvsum_searches_call_the_library() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let kernels = [
        (
            "examples/logcrunch",
            "logcrunch",
            &["@memchr(ptr", "@memrchr(ptr"][..],
        ),
        ("benches/kernels/csvsum", "csvsum", &["@memchr(ptr"][..]),
    ];
    for (dir, name, calls) in kernels {
        let dir = repo.join(dir);
        let text = std::fs::read_to_string(dir.join("manifest.toml")).expect("manifest");
        let manifest = Manifest::parse(&text).expect("valid manifest");
        let package = ir_packager::package_source(&dir.join("kernel.rs"), &manifest)
            .unwrap_or_else(|e| panic!("packaging {name}: {e}"));
        for target in targets() {
            let ir = optimized_ir(&package, name, &target);
            for call in calls {
                assert!(
                    ir.contains(call),
                    "{name} for {}: no {call} in the optimized IR",
                    target.cpu
                );
            }
            let plain = node_jit::listing(
                &package,
                name,
                &target,
                OptLevel::O3,
                &Tuning {
                    library_search: Some(false),
                    ..Tuning::default()
                },
                ListingKind::OptimizedIr,
            )
            .expect("listing without library searches");
            assert!(
                !plain.contains("@memchr(") && !plain.contains("@memrchr("),
                "{name}: the switch turns it off"
            );
        }
    }
}
