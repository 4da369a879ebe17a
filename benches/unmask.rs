//! Unmasking throughput of every `proto::mask` implementation usable on this CPU, plus the
//! dispatched `apply_mask`, at frame sizes from a small control frame to 1 MiB.
//!
//! `cargo bench --bench unmask` (about 1.5 minutes). Each iteration masks the same buffer in place
//! (a hot buffer: 16 B–64 KiB stay in L1/L2, 1 MiB in L2/L3), starting at a 64-byte-aligned
//! address with the RFC 6455 §5.7 key. `scalar` is the byte-at-a-time oracle, kept byte-at-a-time
//! by an optimisation barrier (see `apply_mask_scalar`); `naive_loop` is the same loop without the
//! barrier, to show what the compiler alone makes of it.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wsgate::proto::mask::{apply_mask, implementations, selected};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const SIZES: [(usize, &str); 5] =
    [(16, "16B"), (125, "125B"), (1 << 10, "1KiB"), (64 << 10, "64KiB"), (1 << 20, "1MiB")];

/// `buf[i] ^= key[i % 4]` with nothing stopping LLVM from vectorising it.
fn naive_loop(buf: &mut [u8], key: [u8; 4]) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

fn unmask(c: &mut Criterion) {
    eprintln!("apply_mask dispatches to: {}", selected());
    // `naive_loop` goes last: measured right after it, `apply_mask` at 64 KiB came out ~1.5×
    // slower than `avx512` (the same code) run to run; in any other order the two match.
    let mut paths = implementations();
    paths.push(("apply_mask", apply_mask));
    paths.push(("naive_loop", naive_loop));

    for (size, label) in SIZES {
        let mut group = c.benchmark_group(format!("unmask_{label}"));
        group.throughput(Throughput::Bytes(size as u64));
        let mut storage = vec![0u8; size + 64];
        let start = storage.as_ptr().align_offset(64);
        let buf = &mut storage[start..start + size];
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte = (i * 131) as u8;
        }
        for &(name, f) in &paths {
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| f(black_box(&mut *buf), black_box(KEY)))
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(400))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(30);
    targets = unmask
}
criterion_main!(benches);
