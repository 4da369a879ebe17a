//! aarch64 NEON path: 16-byte vectors, four per iteration, unaligned loads and stores.
//!
//! NEON is part of the aarch64 baseline, but the path is still chosen at run time like the x86
//! ones, so a target spec without it stays sound. Unaligned NEON loads and stores cost the same as
//! aligned ones on the cores we care about, so unlike the x86 paths there is no head to peel: the
//! body starts at byte 0 with the caller's key and the tail (under 16 bytes) goes through the word
//! path with the same key (the body length is a multiple of 4).

use std::arch::aarch64::{vdupq_n_u32, veorq_u8, vld1q_u8, vreinterpretq_u8_u32, vst1q_u8};

use super::word::apply_mask_word;
use super::MaskFn;

/// The aarch64 paths this CPU can run, slowest first.
pub(super) fn available() -> Vec<(&'static str, MaskFn)> {
    if std::arch::is_aarch64_feature_detected!("neon") {
        vec![("neon", neon)]
    } else {
        Vec::new()
    }
}

/// Masks `buf` with 16-byte NEON vectors.
///
/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
unsafe fn mask_neon(buf: &mut [u8], key: [u8; 4]) {
    let k = vreinterpretq_u8_u32(vdupq_n_u32(u32::from_ne_bytes(key)));
    let body_len = buf.len() - buf.len() % 16;
    let (body, tail) = buf.split_at_mut(body_len);
    let mut blocks = body.chunks_exact_mut(64);
    for block in &mut blocks {
        let p = block.as_mut_ptr();
        // SAFETY: `block` is 64 exclusively borrowed bytes, so `p.add(0 | 16 | 32 | 48)` start four
        // in-bounds 16-byte vectors; vld1q_u8/vst1q_u8 need only byte alignment.
        unsafe {
            let v0 = vld1q_u8(p);
            let v1 = vld1q_u8(p.add(16));
            let v2 = vld1q_u8(p.add(32));
            let v3 = vld1q_u8(p.add(48));
            vst1q_u8(p, veorq_u8(v0, k));
            vst1q_u8(p.add(16), veorq_u8(v1, k));
            vst1q_u8(p.add(32), veorq_u8(v2, k));
            vst1q_u8(p.add(48), veorq_u8(v3, k));
        }
    }
    for vector in blocks.into_remainder().chunks_exact_mut(16) {
        let p = vector.as_mut_ptr();
        // SAFETY: `vector` is 16 exclusively borrowed bytes; vld1q_u8/vst1q_u8 need only byte
        // alignment.
        unsafe { vst1q_u8(p, veorq_u8(vld1q_u8(p), k)) };
    }
    apply_mask_word(tail, key);
}

/// The safe entry point: checks NEON (a cached bit) and falls back to the word path, which gives
/// the same bytes, on a CPU without it.
fn neon(buf: &mut [u8], key: [u8; 4]) {
    if std::arch::is_aarch64_feature_detected!("neon") {
        // SAFETY: the CPU supports NEON (checked just above).
        unsafe { mask_neon(buf, key) }
    } else {
        apply_mask_word(buf, key);
    }
}
