use super::*;
use crate::proto::close::encode_close_payload;
use crate::proto::frame::{encode_frame_into, encode_raw_frame_into};
use crate::proto::oracle::{decode_chunked, decode_whole, Outcome, OwnedEvent};
use proptest::prelude::*;

const KEY: [u8; 4] = [0x12, 0x34, 0x56, 0x78];
const L: Limits = Limits::DEFAULT;

/// A masked client frame.
fn cf(out: &mut Vec<u8>, fin: bool, op: OpCode, payload: &[u8]) {
    encode_raw_frame_into(out, fin, op, Some(KEY), payload);
}

fn frames(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = Vec::new();
    f(&mut v);
    v
}

fn server(input: &[u8]) -> Outcome {
    decode_whole(Role::Server, input, &L)
}

fn err_of(input: &[u8]) -> ProtocolError {
    let o = server(input);
    o.error.clone().unwrap_or_else(|| panic!("no error: {o:?}"))
}

fn text(s: &str) -> OwnedEvent {
    OwnedEvent::Message(MessageKind::Text, s.as_bytes().to_vec())
}

#[test]
fn session_is_small() {
    assert!(std::mem::size_of::<Session>() <= 32, "{}", std::mem::size_of::<Session>());
}

#[test]
fn unfragmented_messages_are_zero_copy_slices() {
    let mut buf = frames(|o| cf(o, true, OpCode::Text, b"Hello"));
    let mut s = Session::new(Role::Server);
    let base = buf.as_ptr() as usize;
    let (n, ev) = s.handle_bytes(&mut buf, &L).unwrap();
    assert_eq!(n, 11);
    match ev {
        Some(Event::Message { kind: MessageKind::Text, payload }) => {
            assert_eq!(payload, b"Hello");
            assert_eq!(payload.as_ptr() as usize, base + 6);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.heap_bytes(), 0);
}

#[test]
fn rfc_examples() {
    // RFC 6455 §5.7, client role (server frames are unmasked).
    let o = decode_whole(Role::Client, &[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f], &L);
    assert_eq!(o.events, [text("Hello")]);
    let o = decode_whole(Role::Client, &[0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f], &L);
    assert_eq!(o.events, [text("Hello")]);
    let o = decode_whole(Role::Client, &[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f], &L);
    assert_eq!(o.events, [OwnedEvent::Ping(b"Hello".to_vec())]);
    // Server role, masked "Hello".
    let o = server(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    assert_eq!(o.events, [text("Hello")]);
    let o = decode_whole(Role::Server, &[0x8a, 0x80, 1, 2, 3, 4], &L);
    assert_eq!(o.events, [OwnedEvent::Pong(vec![])]);
}

#[test]
fn lengths_7_16_64_bit() {
    for len in [0usize, 1, 125, 126, 127, 65535, 65536, 70000] {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let input = frames(|o| cf(o, true, OpCode::Binary, &payload));
        let limits = Limits { max_frame_bytes: 1 << 20, max_message_bytes: 1 << 20 };
        let o = decode_whole(Role::Server, &input, &limits);
        assert_eq!(o.events, [OwnedEvent::Message(MessageKind::Binary, payload)]);
        assert_eq!(o.consumed, input.len());
    }
}

#[test]
fn incomplete_frames_wait_and_are_not_unmasked_twice() {
    let input = frames(|o| cf(o, true, OpCode::Text, b"Hello, world"));
    let mut buf = input.clone();
    let mut s = Session::new(Role::Server);
    for n in 0..input.len() {
        // Re-call several times with the same incomplete bytes.
        for _ in 0..3 {
            assert_eq!(s.handle_bytes(&mut buf[..n], &L), Ok((0, None)), "at {n}");
        }
        assert_eq!(buf, input, "incomplete bytes must not be modified");
    }
    let (n, ev) = s.handle_bytes(&mut buf, &L).unwrap();
    assert_eq!(n, input.len());
    assert_eq!(ev, Some(Event::Message { kind: MessageKind::Text, payload: b"Hello, world" }));
}

#[test]
fn masking_rules_by_role() {
    let masked = frames(|o| cf(o, true, OpCode::Text, b"x"));
    let unmasked = frames(|o| encode_frame_into(o, OpCode::Text, b"x"));
    assert_eq!(err_of(&unmasked), ProtocolError::UnmaskedClientFrame);
    assert_eq!(ProtocolError::UnmaskedClientFrame.close_code(), 1002);
    let o = decode_whole(Role::Client, &masked, &L);
    assert_eq!(o.error, Some(ProtocolError::MaskedServerFrame));
    assert_eq!(ProtocolError::MaskedServerFrame.close_code(), 1002);
    assert_eq!(decode_whole(Role::Client, &unmasked, &L).events, [text("x")]);
}

#[test]
fn reserved_bits_and_opcodes() {
    for rsv in 1..8u8 {
        let mut f = frames(|o| cf(o, true, OpCode::Text, b"x"));
        f[0] |= rsv << 4;
        // Detected from the first byte alone.
        assert_eq!(err_of(&f[..1]), ProtocolError::ReservedBits(rsv));
        assert_eq!(err_of(&f).close_code(), 1002);
    }
    for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        let f = [0x80 | op, 0x80, 1, 2, 3, 4];
        assert_eq!(err_of(&f[..1]), ProtocolError::ReservedOpcode(op));
        assert_eq!(err_of(&f).close_code(), 1002);
    }
}

#[test]
fn control_frame_rules() {
    // > 125 bytes (announced with the 16-bit form): detected from the second byte.
    let f = frames(|o| cf(o, true, OpCode::Ping, &[0u8; 126]));
    assert_eq!(err_of(&f[..2]), ProtocolError::ControlFrameTooLong(126));
    assert_eq!(err_of(&f).close_code(), 1002);
    // Exactly 125 is fine.
    let f = frames(|o| cf(o, true, OpCode::Ping, &[7u8; 125]));
    assert_eq!(server(&f).events, [OwnedEvent::Ping(vec![7; 125])]);
    // Fragmented control frames.
    for op in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
        let f = frames(|o| cf(o, false, op, b""));
        assert_eq!(err_of(&f), ProtocolError::FragmentedControl);
        assert_eq!(err_of(&f).close_code(), 1002);
    }
}

#[test]
fn fragment_sequence_rules() {
    let f = frames(|o| cf(o, true, OpCode::Continuation, b"x"));
    assert_eq!(err_of(&f), ProtocolError::ContinuationWithoutStart);
    assert_eq!(err_of(&f).close_code(), 1002);
    let f = frames(|o| {
        cf(o, false, OpCode::Text, b"a");
        cf(o, true, OpCode::Text, b"b");
    });
    assert_eq!(err_of(&f), ProtocolError::DataFrameInsideFragmentedMessage);
    let f = frames(|o| {
        cf(o, false, OpCode::Binary, b"a");
        cf(o, false, OpCode::Binary, b"b");
    });
    assert_eq!(err_of(&f), ProtocolError::DataFrameInsideFragmentedMessage);
    assert_eq!(err_of(&f).close_code(), 1002);
    // A finished message lets a new one start.
    let f = frames(|o| {
        cf(o, false, OpCode::Text, b"a");
        cf(o, true, OpCode::Continuation, b"b");
        cf(o, true, OpCode::Continuation, b"c");
    });
    let o = server(&f);
    assert_eq!(o.events, [text("ab")]);
    assert_eq!(o.error, Some(ProtocolError::ContinuationWithoutStart));
}

#[test]
fn length_msb_set() {
    let f = [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
    // Detected once the header (with its mask key) is complete, before any payload.
    assert_eq!(err_of(&f), ProtocolError::LengthMsbSet);
    assert_eq!(server(&f[..13]).error, None);
    assert_eq!(err_of(&f).close_code(), 1002);
}

#[test]
fn size_limits_fail_from_the_header() {
    let limits = Limits { max_frame_bytes: 100, max_message_bytes: 150 };
    // Frame too large: only the header is present; nothing is allocated.
    let mut h = [0u8; MAX_HEADER_LEN];
    let n = crate::proto::frame::encode_header(&mut h, true, OpCode::Binary, Some(KEY), 101);
    let mut s = Session::new(Role::Server);
    assert_eq!(s.handle_bytes(&mut h[..n], &limits), Err(ProtocolError::FrameTooLarge { len: 101, max: 100 }));
    assert_eq!(s.heap_bytes(), 0);
    assert_eq!(ProtocolError::FrameTooLarge { len: 101, max: 100 }.close_code(), 1009);
    // A 2^62-byte announcement is refused the same way.
    let n = crate::proto::frame::encode_header(&mut h, true, OpCode::Binary, Some(KEY), 1 << 62);
    assert_eq!(
        decode_whole(Role::Server, &h[..n], &limits).error,
        Some(ProtocolError::FrameTooLarge { len: 1 << 62, max: 100 })
    );
    // Message too large: the third fragment's header pushes the total over 150.
    let f = frames(|o| {
        cf(o, false, OpCode::Binary, &[1; 60]);
        cf(o, false, OpCode::Continuation, &[2; 60]);
        cf(o, true, OpCode::Continuation, &[3; 31]);
    });
    let header_end = f.len() - 31;
    let o = decode_whole(Role::Server, &f[..header_end], &limits);
    assert_eq!(o.error, Some(ProtocolError::MessageTooLarge { len: 151, max: 150 }));
    assert_eq!(o.error.unwrap().close_code(), 1009);
    // Exactly at the limit is fine.
    let f = frames(|o| {
        cf(o, false, OpCode::Binary, &[1; 60]);
        cf(o, false, OpCode::Continuation, &[2; 60]);
        cf(o, true, OpCode::Continuation, &[3; 30]);
    });
    let o = decode_whole(Role::Server, &f, &limits);
    assert_eq!(o.error, None);
    assert_eq!(o.events.len(), 1);
    // An unfragmented frame above max_message but within max_frame is also refused.
    let limits = Limits { max_frame_bytes: 100, max_message_bytes: 50 };
    let f = frames(|o| cf(o, true, OpCode::Text, &[b'a'; 51]));
    assert_eq!(
        decode_whole(Role::Server, &f[..8], &limits).error,
        Some(ProtocolError::MessageTooLarge { len: 51, max: 50 })
    );
}

#[test]
fn reassembly_buffer_is_bounded_and_released() {
    let limits = Limits { max_frame_bytes: 1000, max_message_bytes: 1000 };
    let input = frames(|o| {
        cf(o, false, OpCode::Binary, &[1; 300]);
        cf(o, false, OpCode::Continuation, &[2; 300]);
        cf(o, true, OpCode::Continuation, &[3; 400]);
    });
    let mut buf = input.clone();
    let mut s = Session::new(Role::Server);
    let mut pos = 0;
    let mut max_cap = 0;
    loop {
        let (n, ev) = s.handle_bytes(&mut buf[pos..], &limits).unwrap();
        if n == 0 {
            break;
        }
        pos += n;
        if let Some(Event::Message { payload, .. }) = ev {
            assert_eq!(payload.len(), 1000);
        }
        max_cap = max_cap.max(s.heap_bytes());
    }
    assert!(max_cap <= 1000, "capacity {max_cap}");
    assert_eq!(s.heap_bytes(), 0, "idle session holds no heap memory");
    assert!(!s.in_fragmented_message());
}

#[test]
fn invalid_utf8() {
    let f = frames(|o| cf(o, true, OpCode::Text, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"));
    assert_eq!(err_of(&f), ProtocolError::InvalidUtf8);
    assert_eq!(err_of(&f).close_code(), 1007);
    // Binary is not checked.
    let f = frames(|o| cf(o, true, OpCode::Binary, b"\xff"));
    assert_eq!(server(&f).error, None);
    // Text ending mid-code-point.
    let f = frames(|o| cf(o, true, OpCode::Text, b"\xe2\x82"));
    assert_eq!(err_of(&f), ProtocolError::InvalidUtf8);
}

#[test]
fn utf8_code_point_split_across_fragments() {
    let euro = "€".as_bytes(); // E2 82 AC
    let f = frames(|o| {
        cf(o, false, OpCode::Text, &[b'a', euro[0]]);
        cf(o, false, OpCode::Continuation, &euro[1..2]);
        cf(o, true, OpCode::Continuation, &[euro[2], b'b']);
    });
    assert_eq!(server(&f).events, [text("a€b")]);
    // Split, then a wrong continuation byte.
    let f = frames(|o| {
        cf(o, false, OpCode::Text, &[b'a', euro[0]]);
        cf(o, true, OpCode::Continuation, b"b");
    });
    assert_eq!(err_of(&f), ProtocolError::InvalidUtf8);
    // Final fragment ends mid-code-point.
    let f = frames(|o| {
        cf(o, false, OpCode::Text, b"a");
        cf(o, true, OpCode::Continuation, &euro[..2]);
    });
    assert_eq!(err_of(&f), ProtocolError::InvalidUtf8);
}

#[test]
fn utf8_fails_fast_in_a_non_final_fragment() {
    // The error is reported when the bad fragment completes, before any later fragment exists.
    let f = frames(|o| {
        cf(o, false, OpCode::Text, b"ok");
        cf(o, false, OpCode::Continuation, b"\xed\xa0\x80");
    });
    let o = server(&f);
    assert_eq!(o.error, Some(ProtocolError::InvalidUtf8));
    assert_eq!(o.consumed, 8);
    // Same in the first fragment.
    let f = frames(|o| cf(o, false, OpCode::Text, b"\xf4\x90"));
    assert_eq!(err_of(&f), ProtocolError::InvalidUtf8);
}

#[test]
fn control_frames_inside_a_fragmented_message() {
    let mut close = Vec::new();
    encode_close_payload(&mut close, 1000, "bye");
    let f = frames(|o| {
        cf(o, false, OpCode::Text, b"frag1 ");
        cf(o, true, OpCode::Ping, b"ping payload");
        cf(o, false, OpCode::Continuation, b"frag2 ");
        cf(o, true, OpCode::Pong, b"");
        cf(o, true, OpCode::Continuation, b"frag3");
        cf(o, true, OpCode::Close, &close);
    });
    let o = server(&f);
    assert_eq!(o.error, None);
    assert_eq!(
        o.events,
        [
            OwnedEvent::Ping(b"ping payload".to_vec()),
            OwnedEvent::Pong(vec![]),
            text("frag1 frag2 frag3"),
            OwnedEvent::Close(Some(1000), "bye".into()),
        ]
    );
    assert!(o.close_received);
    // A ping while a message is in progress leaves it in progress.
    let f = frames(|o| {
        cf(o, false, OpCode::Binary, b"a");
        cf(o, true, OpCode::Ping, b"p");
    });
    let o = server(&f);
    assert_eq!(o.events, [OwnedEvent::Ping(b"p".to_vec())]);
    assert!(o.in_fragmented_message);
}

#[test]
fn close_frames() {
    let close = |payload: &[u8]| frames(|o| cf(o, true, OpCode::Close, payload));
    assert_eq!(server(&close(b"")).events, [OwnedEvent::Close(None, String::new())]);
    assert_eq!(err_of(&close(b"\x03")), ProtocolError::InvalidClosePayloadLength);
    assert_eq!(err_of(&close(b"\x03")).close_code(), 1002);
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        let e = err_of(&close(&code.to_be_bytes()));
        assert_eq!(e, ProtocolError::InvalidCloseCode(code));
        assert_eq!(e.close_code(), 1002);
    }
    for code in [1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999] {
        assert_eq!(server(&close(&code.to_be_bytes())).events, [OwnedEvent::Close(Some(code), String::new())]);
    }
    let e = err_of(&close(b"\x03\xe8\xff"));
    assert_eq!(e, ProtocolError::InvalidCloseReasonUtf8);
    assert_eq!(e.close_code(), 1007);
}

#[test]
fn bytes_after_close_are_an_error() {
    let f = frames(|o| {
        cf(o, true, OpCode::Close, &1000u16.to_be_bytes());
        cf(o, true, OpCode::Text, b"late");
    });
    let o = server(&f);
    assert_eq!(o.events, [OwnedEvent::Close(Some(1000), String::new())]);
    assert_eq!(o.error, Some(ProtocolError::FrameAfterClose));
    assert_eq!(o.error.unwrap().close_code(), 1002);
    // Nothing after the close: fine.
    let o = server(&f[..8]);
    assert_eq!(o.error, None);
    assert!(o.close_received);
}

#[test]
fn close_reply_echoes_code() {
    let mut out = Vec::new();
    encode_close_frame_into(&mut out, Some(1001), "going", None);
    let o = decode_whole(Role::Client, &out, &L);
    assert_eq!(o.events, [OwnedEvent::Close(Some(1001), "going".into())]);
    out.clear();
    encode_close_frame_into(&mut out, None, "", Some(KEY));
    assert_eq!(server(&out).events, [OwnedEvent::Close(None, String::new())]);
}

#[test]
fn non_final_fragment_returns_n_without_event() {
    let mut f = frames(|o| cf(o, false, OpCode::Text, b"abc"));
    let mut s = Session::new(Role::Server);
    assert_eq!(s.handle_bytes(&mut f, &L), Ok((9, None)));
    assert!(s.in_fragmented_message());
    assert!(s.heap_bytes() > 0);
}

// ---- property tests -------------------------------------------------------------------------

/// One application-level item of a valid client stream.
#[derive(Debug, Clone)]
enum Item {
    /// A message split into fragments at the given cut points, with pings after some fragments.
    Message {
        text: bool,
        payload: Vec<u8>,
        cuts: Vec<usize>,
        pings_after: Vec<bool>,
    },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

fn arb_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..130),
        (120usize..140).prop_map(|n| vec![0xAB; n]),
        (65530usize..65540).prop_map(|n| vec![0xCD; n]),
    ]
}

fn arb_text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-z€😀κόσμε ]{0,40}".prop_map(String::into_bytes),
        (120usize..130).prop_map(|n| "é".repeat(n).into_bytes()),
    ]
}

fn arb_item() -> impl Strategy<Value = Item> {
    prop_oneof![
        4 => (any::<bool>(), arb_payload(), arb_text(),
              proptest::collection::vec(0usize..70000, 0..4),
              proptest::collection::vec(any::<bool>(), 0..4))
            .prop_map(|(text, bin, txt, cuts, pings_after)| Item::Message {
                payload: if text { txt } else { bin },
                text, cuts, pings_after,
            }),
        1 => proptest::collection::vec(any::<u8>(), 0..=125).prop_map(Item::Ping),
        1 => proptest::collection::vec(any::<u8>(), 0..=125).prop_map(Item::Pong),
    ]
}

/// Encode items as masked client frames (varying keys); returns the bytes and the events a
/// correct decoder must produce.
fn encode_items(items: &[Item], close: Option<(u16, String)>) -> (Vec<u8>, Vec<OwnedEvent>) {
    let mut out = Vec::new();
    let mut expected = Vec::new();
    let mut k = 0u8;
    let mut key = || {
        k = k.wrapping_add(37);
        [k, k ^ 0x5A, k.wrapping_mul(3), 0xFF - k]
    };
    for item in items {
        match item {
            Item::Ping(p) => {
                encode_raw_frame_into(&mut out, true, OpCode::Ping, Some(key()), p);
                expected.push(OwnedEvent::Ping(p.clone()));
            }
            Item::Pong(p) => {
                encode_raw_frame_into(&mut out, true, OpCode::Pong, Some(key()), p);
                expected.push(OwnedEvent::Pong(p.clone()));
            }
            Item::Message { text, payload, cuts, pings_after } => {
                let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (payload.len() + 1)).collect();
                cuts.sort();
                cuts.push(payload.len());
                let mut prev = 0;
                for (i, &c) in cuts.iter().enumerate() {
                    let op = match (i, text) {
                        (0, true) => OpCode::Text,
                        (0, false) => OpCode::Binary,
                        _ => OpCode::Continuation,
                    };
                    let fin = i + 1 == cuts.len();
                    encode_raw_frame_into(&mut out, fin, op, Some(key()), &payload[prev..c]);
                    prev = c;
                    if !fin && pings_after.get(i).copied().unwrap_or(false) {
                        encode_raw_frame_into(&mut out, true, OpCode::Ping, Some(key()), b"mid");
                        expected.push(OwnedEvent::Ping(b"mid".to_vec()));
                    }
                }
                let kind = if *text { MessageKind::Text } else { MessageKind::Binary };
                expected.push(OwnedEvent::Message(kind, payload.clone()));
            }
        }
    }
    if let Some((code, reason)) = close {
        encode_close_frame_into(&mut out, Some(code), &reason, Some(key()));
        expected.push(OwnedEvent::Close(Some(code), reason));
    }
    (out, expected)
}

fn arb_chunks() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        proptest::collection::vec(1usize..8, 1..10),
        proptest::collection::vec(1usize..200, 1..10),
        proptest::collection::vec(1usize..20000, 1..10),
    ]
}

const BIG: Limits = Limits { max_frame_bytes: 1 << 20, max_message_bytes: 1 << 20 };

proptest! {
    /// A valid stream decodes to exactly the events it encodes, whole and in random chunks.
    #[test]
    fn valid_stream_chunked_equals_whole_equals_expected(
        items in proptest::collection::vec(arb_item(), 0..6),
        close in proptest::option::of((prop_oneof![Just(1000u16), Just(1001), 3000u16..5000], "[a-zé]{0,70}")),
        chunks in arb_chunks(),
    ) {
        let (input, expected) = encode_items(&items, close.clone());
        let whole = decode_whole(Role::Server, &input, &BIG);
        prop_assert_eq!(whole.error.as_ref(), None);
        prop_assert_eq!(&whole.events, &expected);
        prop_assert_eq!(whole.consumed, input.len());
        prop_assert_eq!(whole.heap_bytes, 0);
        prop_assert_eq!(whole.close_received, close.is_some());
        let chunked = decode_chunked(Role::Server, &input, &chunks, &BIG);
        prop_assert_eq!(chunked, whole);
    }

    /// Arbitrary (mostly invalid) bytes: chunked decoding equals whole decoding, events and error.
    #[test]
    fn arbitrary_bytes_chunked_equals_whole(
        input in proptest::collection::vec(
            prop_oneof![any::<u8>(), Just(0x80u8), Just(0x81), Just(0x01), Just(0x89), Just(0x88), Just(0x00)],
            0..300),
        chunks in proptest::collection::vec(1usize..20, 1..8),
        client in any::<bool>(),
    ) {
        let role = if client { Role::Client } else { Role::Server };
        let limits = Limits { max_frame_bytes: 100, max_message_bytes: 150 };
        let whole = decode_whole(role, &input, &limits);
        let chunked = decode_chunked(role, &input, &chunks, &limits);
        prop_assert_eq!(chunked, whole);
    }

    /// Valid streams with one byte flipped: still chunked == whole.
    #[test]
    fn corrupted_stream_chunked_equals_whole(
        items in proptest::collection::vec(arb_item(), 1..4),
        flip in any::<(usize, u8)>(),
        chunks in arb_chunks(),
    ) {
        let (mut input, _) = encode_items(&items, None);
        let at = flip.0 % input.len().max(1);
        if let Some(b) = input.get_mut(at) {
            *b ^= flip.1 | 1;
        }
        let whole = decode_whole(Role::Server, &input, &BIG);
        let chunked = decode_chunked(Role::Server, &input, &chunks, &BIG);
        prop_assert_eq!(chunked, whole);
    }
}
