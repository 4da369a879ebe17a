//! The portable path: eight bytes at a time through a `u64`, no `unsafe`, no ISA assumptions.
//!
//! This is what `apply_mask` uses when no SIMD path is compiled in (`--cfg wsgate_disable_simd`,
//! Miri, other architectures) and what the SIMD paths use for their short unaligned ends. LLVM is
//! free to vectorise this loop further for the baseline target (SSE2 on x86_64); the benchmark
//! shows what it actually makes of it.

/// XORs `buf` in place with `key` repeated, starting at key byte 0, a `u64` at a time.
pub fn apply_mask_word(buf: &mut [u8], key: [u8; 4]) {
    // Eight bytes hold the key exactly twice, so every chunk starts at key byte 0 again, and so
    // does the remainder (its offset is a multiple of 8).
    let key64 = u64::from_ne_bytes([key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let bytes: [u8; 8] = (&*chunk).try_into().expect("chunks_exact_mut yields 8 bytes");
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ key64).to_ne_bytes());
    }
    mask_under_8(chunks.into_remainder(), key);
}

/// Masks the last 0..=7 bytes, which start at key byte 0, with at most three branches instead of
/// a byte loop (the SIMD paths end here too, so short frames and tails pay little).
fn mask_under_8(rest: &mut [u8], key: [u8; 4]) {
    let rest = match rest.split_first_chunk_mut::<4>() {
        Some((first, rest)) => {
            *first = (u32::from_ne_bytes(*first) ^ u32::from_ne_bytes(key)).to_ne_bytes();
            rest
        }
        None => rest,
    };
    // 0..=3 bytes left, again at key byte 0.
    match rest {
        [] => {}
        [a] => *a ^= key[0],
        [a, b] => {
            *a ^= key[0];
            *b ^= key[1];
        }
        [a, b, c, ..] => {
            *a ^= key[0];
            *b ^= key[1];
            *c ^= key[2];
        }
    }
}
