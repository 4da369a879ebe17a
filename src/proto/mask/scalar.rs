//! The byte-at-a-time oracle: the definition every other path is tested against.

/// XORs `buf` in place with `key` repeated, one byte at a time: `buf[i] ^= key[i % 4]`.
///
/// This is the definition of RFC 6455 §5.3 written as plainly as possible; it is the oracle the
/// faster paths are tested against and the baseline the benchmark compares them with. It stays
/// byte-at-a-time in optimised builds too: the empty `black_box(())` in the loop is an optimisation
/// barrier (an empty inline-asm statement with a memory clobber) that emits no instruction but
/// stops LLVM from vectorising or unrolling the loop into word or SIMD operations, so the benchmark
/// measures a real byte loop (one load, one XOR, one store per byte) and not an auto-vectorised
/// one. Use [`super::apply_mask`] for speed.
pub fn apply_mask_scalar(buf: &mut [u8], key: [u8; 4]) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= key[i % 4];
        std::hint::black_box(());
    }
}
