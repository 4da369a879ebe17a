//! Decode throughput of `Session::handle_bytes` (server role: masked client frames, unmasked in
//! place). Each iteration decodes a fresh copy of the input (`iter_batched`), looping the way the
//! connection code does: call, drop `n` bytes, repeat until `(0, None)`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use wsgate::proto::frame::encode_masked_frame_into;
use wsgate::proto::{Event, Limits, OpCode, Role, Session};

fn stream(op: OpCode, payload_len: usize, total_bytes: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..payload_len).map(|i| b'a' + (i % 26) as u8).collect();
    let mut out = Vec::with_capacity(total_bytes + 64);
    let mut k = 0u8;
    while out.len() < total_bytes {
        k = k.wrapping_add(1);
        encode_masked_frame_into(&mut out, op, &payload, [k, 0x5A, 0xC3, !k]);
    }
    out
}

fn decode_all(mut buf: Vec<u8>, limits: &Limits) -> usize {
    let mut session = Session::new(Role::Server);
    let mut pos = 0;
    let mut bytes = 0;
    loop {
        match session.handle_bytes(&mut buf[pos..], limits) {
            Ok((0, _)) => break,
            Ok((n, ev)) => {
                if let Some(Event::Message { payload, .. }) = ev {
                    bytes += black_box(payload).len();
                }
                pos += n;
            }
            Err(e) => panic!("{e}"),
        }
    }
    bytes
}

fn bench(c: &mut Criterion) {
    let limits = Limits::DEFAULT;
    let mut group = c.benchmark_group("frame_parse");
    group.warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(5)).sample_size(50);
    for (name, op, len) in [("text_128B", OpCode::Text, 128), ("binary_16KiB", OpCode::Binary, 16 * 1024)] {
        let input = stream(op, len, 1 << 20);
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_function(name, |b| {
            b.iter_batched(|| input.clone(), |buf| decode_all(buf, &limits), BatchSize::LargeInput)
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
