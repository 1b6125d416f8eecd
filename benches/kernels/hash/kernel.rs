//! Integer hashing: a 64-bit hash of each 64-byte record (eight `u64` words).
//!
//! Every word is mixed into the state with a multiply, an xor-shift and a rotation, the
//! way common non-cryptographic hashes (the murmur and xxHash families) consume input; a
//! finalizer spreads the last bits. Item kernel: record `i` is `words[8i..8i + 8]`.
#![no_std]

const K1: u64 = 0x9E37_79B9_7F4A_7C15;
const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;

/// Item kernel: `hashes[i]` = the hash of record `i` with `seed`.
///
/// # Safety
/// `words` holds 8 words and `hashes` one slot per item of the packet (global indices).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hash(i: u64, seed: u64, words: *const u64, hashes: *mut u64) {
    let i = i as usize;
    // SAFETY: record `i` is the item's own `[8]` slice; `hashes[i]` its own output.
    let record = unsafe { core::slice::from_raw_parts(words.add(8 * i), 8) };
    let mut h = seed ^ K2;
    for &w in record {
        let k = w.wrapping_mul(K1).rotate_left(31).wrapping_mul(K2);
        h = (h ^ k).rotate_left(27).wrapping_mul(5).wrapping_add(0x52DC_E729);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    // SAFETY: as above.
    unsafe { *hashes.add(i) = h };
}
