//! PROXY protocol header: `proto::proxy_protocol::parse` never panics, never claims more bytes than it was given
//! or than a header may take, and decides the same whether the bytes arrive whole or in chunks (the loop
//! re-parses what it has buffered after each read: once a prefix is decided, no later byte changes the answer).
//! A client it names survives a round trip through our own encoders.
//!
//! Input: byte 0 = chunk size (1..=64), the rest = the connection's first bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::proto::proxy_protocol::{encode_v1, encode_v2, parse, Parsed, MAX_HEADER};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(ctl & 0x3F) + 1;
    let whole = parse(input);
    match whole {
        Parsed::Done { consumed, source, local } => {
            assert!(consumed <= input.len() && consumed <= MAX_HEADER);
            assert!(!(local && source.is_some()), "LOCAL names no client");
            if let Some(src) = source {
                let dest = src; // same family
                let again = encode_v2(Some(src), dest, &[]);
                assert_eq!(parse(&again), Parsed::Done { consumed: again.len(), source, local: false });
                let again = encode_v1(Some(src), dest);
                assert_eq!(parse(&again), Parsed::Done { consumed: again.len(), source, local: false });
            }
        }
        Parsed::NeedMore => assert!(input.len() < MAX_HEADER),
        Parsed::Error(_) => {}
    }
    // As the loop sees it: the bytes so far, parsed again after every chunk, until decided.
    let mut end = 0;
    let chunked = loop {
        end = (end + chunk).min(input.len());
        match parse(&input[..end]) {
            Parsed::NeedMore if end < input.len() => continue,
            decided => break decided,
        }
    };
    assert_eq!(chunked, whole, "decided differently in chunks of {chunk}");
});
