//! WebSocket payload masking (RFC 6455 §5.3): XOR a buffer in place with a repeated 4-byte key.
//!
//! Masking and unmasking are the same operation. [`apply_mask`] is the entry point. Buffers under
//! 384 bytes (most client frames) take the portable `word` path directly; longer ones take the
//! widest implementation this CPU supports, chosen once on first use and cached:
//!
//! | name       | where                              | width             |
//! |------------|------------------------------------|-------------------|
//! | `scalar`   | everywhere (the oracle)            | 1 byte            |
//! | `word`     | everywhere, no `unsafe`            | 8 bytes (`u64`)   |
//! | `sse2`     | x86_64                             | 16 bytes          |
//! | `avx2`     | x86_64 with AVX2                   | 32 bytes          |
//! | `avx512`   | x86_64 with AVX-512F               | 64 bytes          |
//! | `neon`     | aarch64 with NEON                  | 16 bytes          |
//!
//! Detection is at run time (`is_x86_feature_detected!` / `is_aarch64_feature_detected!`); the
//! repository never builds with `target-cpu=native`. Building with
//! `RUSTFLAGS="--cfg wsgate_disable_simd"` (or under Miri) compiles the ISA paths out and makes
//! `apply_mask` use `word`. [`implementations`] lists every path usable here so that tests and
//! benchmarks can compare each with [`apply_mask_scalar`], the byte-at-a-time definition.
//!
//! # Contract
//! - The key applies from key byte 0 at `buf[0]`: `buf[i] ^= key[i % 4]`, whatever the address
//!   of `buf` (the SIMD paths rotate the key themselves when they align their main loop).
//! - A caller that masks a payload in pieces, and so starts at payload offset `offset`, rotates
//!   the key first: `key.rotate_left(offset % 4)`, then calls `apply_mask(piece, key)`.
//! - In place, no allocation, no panics, any length (including 0).
//!
//! # What it does not do
//! It does not parse frames, find the key, remember an offset between calls, or copy while it
//! masks (mask-and-copy is a `copy_from_slice` followed by `apply_mask`). Masking hides nothing
//! from an observer; no path here tries to be constant-time.
//!
//! All `unsafe` in `proto/` lives in this module's ISA files (`x86.rs`, `neon.rs`).

mod scalar;
mod word;

#[cfg(all(target_arch = "x86_64", not(wsgate_disable_simd), not(miri)))]
mod x86;

#[cfg(all(target_arch = "aarch64", not(wsgate_disable_simd), not(miri)))]
mod neon;

use std::sync::OnceLock;

pub use scalar::apply_mask_scalar;

/// The signature every implementation shares: mask `buf` in place, key byte 0 at `buf[0]`.
pub type MaskFn = fn(&mut [u8], [u8; 4]);

/// Shorter buffers skip the vector paths: their setup, unaligned head and tail cost more than
/// they save. Measured crossover on the development machine (AMD EPYC, AVX-512): about 384 bytes
/// at an unaligned start; below it the `word` path was up to 2× faster (docs/bench-unmask.md).
const VECTOR_MIN_LEN: usize = 384;

/// XOR `buf` in place with the 4-byte `key` repeated, starting at key byte 0 (RFC 6455 §5.3).
///
/// To continue a payload at byte `offset`, pass `key` rotated: `key.rotate_left(offset % 4)`.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4]) {
    if buf.len() < VECTOR_MIN_LEN {
        word::apply_mask_word(buf, key);
    } else {
        (selected_impl().1)(buf, key);
    }
}

/// Every implementation usable on this CPU, slowest first, by name ("scalar", "word", "sse2",
/// "avx2", "avx512", "neon"), for tests and benchmarks.
pub fn implementations() -> Vec<(&'static str, MaskFn)> {
    #[cfg_attr(any(wsgate_disable_simd, not(any(target_arch = "x86_64", target_arch = "aarch64"))), allow(unused_mut))]
    let mut found: Vec<(&'static str, MaskFn)> = vec![("scalar", apply_mask_scalar), ("word", word::apply_mask_word)];
    #[cfg(all(target_arch = "x86_64", not(wsgate_disable_simd), not(miri)))]
    found.extend(x86::available());
    #[cfg(all(target_arch = "aarch64", not(wsgate_disable_simd), not(miri)))]
    found.extend(neon::available());
    found
}

/// Name of the implementation [`apply_mask`] dispatches to on this CPU (for buffers of 384 bytes
/// or more; shorter ones always take `word`).
pub fn selected() -> &'static str {
    selected_impl().0
}

/// The widest usable path (the last in [`implementations`]), detected once and cached.
fn selected_impl() -> &'static (&'static str, MaskFn) {
    static SELECTED: OnceLock<(&'static str, MaskFn)> = OnceLock::new();
    SELECTED.get_or_init(|| *implementations().last().expect("the portable paths are always present"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The key from RFC 6455 §5.7.
    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// Bytes that do not repeat with period 4, 8, 16 … so a misplaced key byte shows.
    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i.wrapping_mul(131) ^ (i >> 7)) as u8).collect()
    }

    /// `apply_mask` plus every implementation except the oracle itself.
    fn paths_under_test() -> Vec<(&'static str, MaskFn)> {
        let mut paths: Vec<(&'static str, MaskFn)> =
            implementations().into_iter().filter(|(name, _)| *name != "scalar").collect();
        paths.push(("apply_mask", apply_mask));
        paths
    }

    /// Masks `window[off..off + len]` with every path and compares the whole window (so the bytes
    /// around the range must stay untouched) with what the oracle makes of it.
    fn check(
        paths: &[(&'static str, MaskFn)],
        window: &[u8],
        off: usize,
        len: usize,
        key: [u8; 4],
        work: &mut Vec<u8>,
    ) {
        let mut expected = window.to_vec();
        apply_mask_scalar(&mut expected[off..off + len], key);
        for (name, f) in paths {
            work.clear();
            work.extend_from_slice(window);
            f(&mut work[off..off + len], key);
            if *work != expected {
                let at = work.iter().zip(&expected).position(|(a, b)| a != b);
                panic!("{name}: len {len} offset {off} key {key:02x?}: first wrong byte at {at:?}");
            }
        }
    }

    fn rotations(key: [u8; 4]) -> [[u8; 4]; 4] {
        core::array::from_fn(|r| {
            let mut k = key;
            k.rotate_left(r);
            k
        })
    }

    #[test]
    fn rfc6455_known_answer() {
        // RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d.
        let masked = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        let mut all = implementations();
        all.push(("apply_mask", apply_mask));
        for (name, f) in all {
            let mut buf = *b"Hello";
            f(&mut buf, KEY);
            assert_eq!(buf, masked, "{name}");
            f(&mut buf, KEY);
            assert_eq!(&buf, b"Hello", "{name} does not undo itself");
        }
    }

    #[test]
    fn oracle_is_the_definition() {
        let data = sample(67);
        let mut buf = data.clone();
        apply_mask_scalar(&mut buf, KEY);
        for (i, (b, d)) in buf.iter().zip(&data).enumerate() {
            assert_eq!(*b, d ^ KEY[i % 4]);
        }
    }

    /// Every length 0..=4096 with all four key rotations; the start offset moves through 0..64
    /// with the length so every alignment meets many lengths.
    #[test]
    fn every_length_matches_oracle() {
        const GUARD: usize = 64;
        let paths = paths_under_test();
        let data = sample(64 + 4096 + GUARD);
        let mut work = Vec::with_capacity(data.len());
        for len in 0..=4096 {
            for (r, key) in rotations(KEY).into_iter().enumerate() {
                let off = (len * 7 + r * 17) % 64;
                check(&paths, &data[..off + len + GUARD], off, len, key, &mut work);
            }
        }
    }

    /// Every start offset 0..64 (every alignment of a 64-byte vector) × every key rotation ×
    /// every length up to 640: a head shorter than a vector, several unrolled blocks, single
    /// vectors and a tail, at every phase.
    #[test]
    fn every_offset_and_rotation_matches_oracle() {
        const GUARD: usize = 64;
        const MAX: usize = 640;
        let paths = paths_under_test();
        let data = sample(64 + MAX + GUARD);
        let mut work = Vec::with_capacity(data.len());
        for off in 0..64 {
            for key in rotations(KEY) {
                for len in 0..=MAX {
                    check(&paths, &data[..off + len + GUARD], off, len, key, &mut work);
                }
            }
        }
    }

    /// The full cross product, every length 0..=4096 × every offset 0..64 × every rotation:
    /// about a minute in a debug build, a few seconds in release, so it is opt-in:
    /// `cargo test --release --lib proto::mask -- --ignored`.
    #[test]
    #[ignore = "slow in debug builds; run with --release -- --ignored"]
    fn exhaustive_lengths_offsets_rotations() {
        const GUARD: usize = 64;
        let paths = paths_under_test();
        let data = sample(64 + 4096 + GUARD);
        let mut work = Vec::with_capacity(data.len());
        for off in 0..64 {
            for key in rotations(KEY) {
                for len in 0..=4096 {
                    check(&paths, &data[..off + len + GUARD], off, len, key, &mut work);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn random_buffers_match_oracle(
            data in proptest::collection::vec(any::<u8>(), 0..=65536),
            key in any::<[u8; 4]>(),
            off in 0usize..64,
        ) {
            let mut window = vec![0xa5; off];
            window.extend_from_slice(&data);
            window.extend_from_slice(&[0x5a; 64]);
            check(&paths_under_test(), &window, off, data.len(), key, &mut Vec::new());
        }

        /// The documented way to continue mid-payload: rotate the key by the offset.
        #[test]
        fn masking_in_pieces_with_rotated_key_matches_whole(
            data in proptest::collection::vec(any::<u8>(), 0..=1024),
            key in any::<[u8; 4]>(),
            split in any::<prop::sample::Index>(),
        ) {
            let split = split.index(data.len() + 1);
            let mut whole = data.clone();
            apply_mask_scalar(&mut whole, key);
            let mut pieces = data;
            let (first, second) = pieces.split_at_mut(split);
            apply_mask(first, key);
            let mut rotated = key;
            rotated.rotate_left(split % 4);
            apply_mask(second, rotated);
            prop_assert_eq!(pieces, whole);
        }
    }

    #[test]
    fn dispatch_picks_the_widest_usable_path() {
        let names: Vec<&str> = implementations().iter().map(|(n, _)| *n).collect();
        assert_eq!(&names[..2], ["scalar", "word"]);
        assert_eq!(Some(&selected()), names.last());
        if cfg!(any(wsgate_disable_simd, miri)) {
            assert_eq!(names, ["scalar", "word"]);
            assert_eq!(selected(), "word");
        }
        #[cfg(all(target_arch = "x86_64", not(wsgate_disable_simd), not(miri)))]
        {
            assert!(names.contains(&"sse2"), "SSE2 is x86_64 baseline");
            assert_eq!(names.contains(&"avx2"), is_x86_feature_detected!("avx2"));
        }
    }
}
