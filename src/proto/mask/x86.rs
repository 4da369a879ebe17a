//! x86_64 SIMD paths: SSE2 (16-byte vectors), AVX2 (32) and AVX-512 (64, `avx512f`).
//!
//! Each path splits the buffer at the first vector-aligned address: the unaligned head is masked
//! with the caller's key, the key is rotated by the head's length, the aligned body is XORed four
//! vectors per iteration, and the tail (shorter than one vector) is masked with the rotated key.
//! Head and tail go through the portable word path. (AVX-512 byte-masked loads and stores would
//! cover them in one instruction each, but on the AMD EPYC (Zen 4 class) this was measured on,
//! each partially masked load/store pair added 3–7 ns, more than the word path takes for 63
//! bytes; without them the AVX-512 path needs only AVX-512F.)
//!
//! The ISA functions are `#[target_feature]` functions. Only the safe wrappers at the bottom leave
//! this module, through [`available`], and each wrapper checks the CPU feature itself before it
//! enters its ISA function (the check reads a cached bit), so calling one is sound from anywhere.

use std::arch::x86_64::{
    __m128i, __m256i, __m512i, _mm256_loadu_si256, _mm256_set1_epi32, _mm256_storeu_si256, _mm256_xor_si256,
    _mm512_loadu_si512, _mm512_set1_epi32, _mm512_storeu_si512, _mm512_xor_si512, _mm_loadu_si128, _mm_set1_epi32,
    _mm_storeu_si128, _mm_xor_si128,
};

use super::word::apply_mask_word;
use super::MaskFn;

/// The x86_64 paths this CPU can run, slowest first.
pub(super) fn available() -> Vec<(&'static str, MaskFn)> {
    let mut found: Vec<(&'static str, MaskFn)> = Vec::new();
    if is_x86_feature_detected!("sse2") {
        found.push(("sse2", sse2));
    }
    if is_x86_feature_detected!("avx2") {
        found.push(("avx2", avx2));
    }
    if is_x86_feature_detected!("avx512f") {
        found.push(("avx512", avx512));
    }
    found
}

/// Splits `buf` into `(head, body, tail, body_key)`: `body` starts at an `ALIGN`-aligned address
/// and its length is a multiple of `ALIGN`; `head` (shorter than `ALIGN`) comes before it and
/// `tail` (shorter than `ALIGN`) after it. `head` is masked with `key`; `body` and `tail` with
/// `body_key`, which is `key` rotated by the head's length (RFC 6455 §5.3 counts from the frame's
/// first byte, not from the aligned address).
fn split_aligned<const ALIGN: usize>(buf: &mut [u8], key: [u8; 4]) -> (&mut [u8], &mut [u8], &mut [u8], [u8; 4]) {
    let head_len = buf.as_ptr().align_offset(ALIGN).min(buf.len());
    let (head, rest) = buf.split_at_mut(head_len);
    let body_len = rest.len() - rest.len() % ALIGN;
    let (body, tail) = rest.split_at_mut(body_len);
    // `[u8; 4]::rotate_left` compiles to memcpy/memmove calls; as a little-endian u32 the same
    // rotation is one instruction.
    let body_key = u32::from_le_bytes(key).rotate_right(8 * (head_len % 4) as u32).to_le_bytes();
    (head, body, tail, body_key)
}

/// Masks `buf` with 16-byte SSE2 vectors.
///
/// # Safety
/// The CPU must support SSE2.
#[target_feature(enable = "sse2")]
unsafe fn mask_sse2(buf: &mut [u8], key: [u8; 4]) {
    let (head, body, tail, body_key) = split_aligned::<16>(buf, key);
    apply_mask_word(head, key);
    let k = _mm_set1_epi32(i32::from_ne_bytes(body_key));
    let mut blocks = body.chunks_exact_mut(64);
    for block in &mut blocks {
        let p = block.as_mut_ptr().cast::<__m128i>();
        // SAFETY: `block` is 64 exclusively borrowed bytes, so `p.add(0..4)` are four in-bounds
        // 16-byte vectors; the unaligned load/store intrinsics need no alignment.
        unsafe {
            let v0 = _mm_loadu_si128(p);
            let v1 = _mm_loadu_si128(p.add(1));
            let v2 = _mm_loadu_si128(p.add(2));
            let v3 = _mm_loadu_si128(p.add(3));
            _mm_storeu_si128(p, _mm_xor_si128(v0, k));
            _mm_storeu_si128(p.add(1), _mm_xor_si128(v1, k));
            _mm_storeu_si128(p.add(2), _mm_xor_si128(v2, k));
            _mm_storeu_si128(p.add(3), _mm_xor_si128(v3, k));
        }
    }
    for vector in blocks.into_remainder().chunks_exact_mut(16) {
        let p = vector.as_mut_ptr().cast::<__m128i>();
        // SAFETY: `vector` is 16 exclusively borrowed bytes; unaligned access is allowed.
        unsafe { _mm_storeu_si128(p, _mm_xor_si128(_mm_loadu_si128(p), k)) };
    }
    apply_mask_word(tail, body_key);
}

/// Masks `buf` with 32-byte AVX2 vectors.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
unsafe fn mask_avx2(buf: &mut [u8], key: [u8; 4]) {
    let (head, body, tail, body_key) = split_aligned::<32>(buf, key);
    apply_mask_word(head, key);
    let k = _mm256_set1_epi32(i32::from_ne_bytes(body_key));
    let mut blocks = body.chunks_exact_mut(128);
    for block in &mut blocks {
        let p = block.as_mut_ptr().cast::<__m256i>();
        // SAFETY: `block` is 128 exclusively borrowed bytes, so `p.add(0..4)` are four in-bounds
        // 32-byte vectors; the unaligned load/store intrinsics need no alignment.
        unsafe {
            let v0 = _mm256_loadu_si256(p);
            let v1 = _mm256_loadu_si256(p.add(1));
            let v2 = _mm256_loadu_si256(p.add(2));
            let v3 = _mm256_loadu_si256(p.add(3));
            _mm256_storeu_si256(p, _mm256_xor_si256(v0, k));
            _mm256_storeu_si256(p.add(1), _mm256_xor_si256(v1, k));
            _mm256_storeu_si256(p.add(2), _mm256_xor_si256(v2, k));
            _mm256_storeu_si256(p.add(3), _mm256_xor_si256(v3, k));
        }
    }
    for vector in blocks.into_remainder().chunks_exact_mut(32) {
        let p = vector.as_mut_ptr().cast::<__m256i>();
        // SAFETY: `vector` is 32 exclusively borrowed bytes; unaligned access is allowed.
        unsafe { _mm256_storeu_si256(p, _mm256_xor_si256(_mm256_loadu_si256(p), k)) };
    }
    apply_mask_word(tail, body_key);
}

/// Masks `buf` with 64-byte AVX-512 vectors.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn mask_avx512(buf: &mut [u8], key: [u8; 4]) {
    let (head, body, tail, body_key) = split_aligned::<64>(buf, key);
    apply_mask_word(head, key);
    let k = _mm512_set1_epi32(i32::from_ne_bytes(body_key));
    let mut blocks = body.chunks_exact_mut(256);
    for block in &mut blocks {
        let p = block.as_mut_ptr().cast::<__m512i>();
        // SAFETY: `block` is 256 exclusively borrowed bytes, so `p.add(0..4)` are four in-bounds
        // 64-byte vectors; the unaligned load/store intrinsics need no alignment.
        unsafe {
            let v0 = _mm512_loadu_si512(p);
            let v1 = _mm512_loadu_si512(p.add(1));
            let v2 = _mm512_loadu_si512(p.add(2));
            let v3 = _mm512_loadu_si512(p.add(3));
            _mm512_storeu_si512(p, _mm512_xor_si512(v0, k));
            _mm512_storeu_si512(p.add(1), _mm512_xor_si512(v1, k));
            _mm512_storeu_si512(p.add(2), _mm512_xor_si512(v2, k));
            _mm512_storeu_si512(p.add(3), _mm512_xor_si512(v3, k));
        }
    }
    for vector in blocks.into_remainder().chunks_exact_mut(64) {
        let p = vector.as_mut_ptr().cast::<__m512i>();
        // SAFETY: `vector` is 64 exclusively borrowed bytes; unaligned access is allowed.
        unsafe { _mm512_storeu_si512(p, _mm512_xor_si512(_mm512_loadu_si512(p), k)) };
    }
    apply_mask_word(tail, body_key);
}

// The safe entry points. Each checks its feature (std caches the CPUID result, so this is one
// load and a predictable branch) and falls back to the word path, which gives the same bytes,
// should it ever be called on a CPU without it. `available` lists each only where the check passes,
// so the names in tests and benchmarks are the code that runs.

fn sse2(buf: &mut [u8], key: [u8; 4]) {
    if is_x86_feature_detected!("sse2") {
        // SAFETY: the CPU supports SSE2 (checked just above).
        unsafe { mask_sse2(buf, key) }
    } else {
        apply_mask_word(buf, key);
    }
}

fn avx2(buf: &mut [u8], key: [u8; 4]) {
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { mask_avx2(buf, key) }
    } else {
        apply_mask_word(buf, key);
    }
}

fn avx512(buf: &mut [u8], key: [u8; 4]) {
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked just above).
        unsafe { mask_avx512(buf, key) }
    } else {
        apply_mask_word(buf, key);
    }
}
