//! Frames: `Session::handle_bytes` on arbitrary bytes never panics, and decoding in chunks gives
//! exactly what decoding the whole buffer gives (events, error, bytes consumed, final state).
//! Also: text messages are valid UTF-8, close codes are valid, an idle session holds no heap.
//!
//! Input: byte 0 = role and limits, bytes 1..4 = chunk sizes (cycled), the rest = the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::proto::close::is_valid_received_code;
use wsgate::proto::oracle::{decode_chunked, decode_whole, OwnedEvent};
use wsgate::proto::{Limits, MessageKind, Role};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (ctl, input) = data.split_at(4);
    let role = if ctl[0] & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let limits = if ctl[0] & 2 == 0 {
        Limits {
            max_frame_bytes: 300,
            max_message_bytes: 700,
        }
    } else {
        Limits::DEFAULT
    };
    let chunks: Vec<usize> = ctl[1..].iter().map(|&b| usize::from(b % 64) + 1).collect();

    let whole = decode_whole(role, input, &limits);
    let chunked = decode_chunked(role, input, &chunks, &limits);
    assert_eq!(chunked, whole);
    let byte_at_a_time = decode_chunked(role, input, &[1], &limits);
    assert_eq!(byte_at_a_time, whole);

    assert!(whole.consumed <= input.len());
    if whole.error.is_none() && !whole.in_fragmented_message {
        assert_eq!(whole.heap_bytes, 0, "idle session holds heap memory");
    }
    if let Some(e) = &whole.error {
        assert!(matches!(e.close_code(), 1002 | 1007 | 1009));
        assert!(e.to_string().len() <= 123);
    }
    for (i, ev) in whole.events.iter().enumerate() {
        match ev {
            OwnedEvent::Message(kind, payload) => {
                assert!(payload.len() as u64 <= limits.max_message_bytes);
                if *kind == MessageKind::Text {
                    assert!(std::str::from_utf8(payload).is_ok());
                }
            }
            OwnedEvent::Ping(p) | OwnedEvent::Pong(p) => assert!(p.len() <= 125),
            OwnedEvent::Close(code, reason) => {
                assert!(code.is_none_or(is_valid_received_code));
                assert!(reason.len() <= 123);
                assert_eq!(i + 1, whole.events.len(), "event after close");
            }
        }
    }
});
