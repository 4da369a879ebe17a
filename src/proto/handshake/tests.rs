use super::*;
use crate::proto::oracle::parse_request_chunked;
use proptest::prelude::*;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn request_with(lines: &[&str]) -> Vec<u8> {
    let mut s = String::from("GET /feed?topic=a HTTP/1.1\r\n");
    for l in lines {
        s.push_str(l);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

fn good_lines() -> Vec<&'static str> {
    vec![
        "Host: example.com",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
}

fn head_of(bytes: &[u8]) -> RequestHead {
    match parse_request(bytes, &HandshakeConfig::default()).unwrap() {
        Parsed::Complete { head, consumed } => {
            assert_eq!(consumed, bytes.len());
            head
        }
        Parsed::Partial => panic!("partial"),
    }
}

fn accept(lines: &[&str], cfg: &HandshakeConfig) -> Result<Accepted, Rejection> {
    accept_upgrade(&head_of(&request_with(lines)), cfg)
}

fn replace(lines: &[&'static str], prefix: &str, with: Option<&'static str>) -> Vec<&'static str> {
    let mut out: Vec<&str> =
        lines.iter().copied().filter(|l| !l.to_ascii_lowercase().starts_with(&prefix.to_ascii_lowercase())).collect();
    out.extend(with);
    out
}

#[test]
fn rfc_sample_accept_key() {
    assert_eq!(accept_key(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

#[test]
fn accepts_valid_upgrade() {
    let head = head_of(&request_with(&good_lines()));
    assert_eq!(head.method, "GET");
    assert_eq!(head.path, "/feed?topic=a");
    assert_eq!(head.path_only(), "/feed");
    assert_eq!(head.minor_version, 1);
    assert_eq!(head.header("HOST"), Some("example.com"));
    assert_eq!(head.key.as_deref(), Some(KEY));
    let a = accept_upgrade(&head, &HandshakeConfig::default()).unwrap();
    assert_eq!(a.subprotocol, None);
    assert_eq!(
        String::from_utf8(a.response).unwrap(),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    );
}

#[test]
fn tokens_are_case_insensitive_lists() {
    let lines = replace(&good_lines(), "upgrade:", Some("upgrade: foo, WebSocket"));
    let lines = replace(&lines, "connection:", Some("connection: keep-alive, UPGRADE"));
    assert!(accept(&lines, &HandshakeConfig::default()).is_ok());
    // Connection split over two headers.
    let mut lines = replace(&good_lines(), "connection:", Some("Connection: keep-alive"));
    lines.push("Connection: upgrade");
    assert!(accept(&lines, &HandshakeConfig::default()).is_ok());
    // "upgrade" must be a whole token.
    let lines = replace(&good_lines(), "connection:", Some("Connection: upgraded"));
    assert_eq!(accept(&lines, &HandshakeConfig::default()).unwrap_err().status, 400);
}

#[test]
fn refuses_non_get_with_405() {
    let mut req = request_with(&good_lines());
    req.splice(0..3, *b"POST");
    let head = head_of(&req);
    let r = accept_upgrade(&head, &HandshakeConfig::default()).unwrap_err();
    assert_eq!(r.status, 405);
    let resp = String::from_utf8(r.to_response()).unwrap();
    assert!(resp.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{resp}");
    assert!(resp.contains("\r\nAllow: GET\r\n"), "{resp}");
}

#[test]
fn refuses_400_variants() {
    let cfg = HandshakeConfig::default();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (replace(&good_lines(), "upgrade:", None), "missing Upgrade: websocket"),
        (replace(&good_lines(), "upgrade:", Some("Upgrade: h2c")), "missing Upgrade: websocket"),
        (replace(&good_lines(), "connection:", None), "missing Connection: upgrade"),
        (replace(&good_lines(), "connection:", Some("Connection: keep-alive")), "missing Connection: upgrade"),
        (replace(&good_lines(), "sec-websocket-key:", None), "missing Sec-WebSocket-Key"),
        (replace(&good_lines(), "sec-websocket-key:", Some("Sec-WebSocket-Key: abc")), "invalid Sec-WebSocket-Key"),
        (
            // 15 bytes once decoded.
            replace(&good_lines(), "sec-websocket-key:", Some("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA")),
            "invalid Sec-WebSocket-Key",
        ),
        (
            // 17 bytes once decoded.
            replace(&good_lines(), "sec-websocket-key:", Some("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA=")),
            "invalid Sec-WebSocket-Key",
        ),
        (
            {
                let mut l = good_lines();
                l.push("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==");
                l
            },
            "invalid Sec-WebSocket-Key",
        ),
        (replace(&good_lines(), "host:", None), "missing Host header"),
    ];
    for (lines, reason) in cases {
        let r = accept(&lines, &cfg).unwrap_err();
        assert_eq!((r.status, r.reason), (400, reason), "{lines:?}");
        let resp = String::from_utf8(r.to_response()).unwrap();
        assert!(resp.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(resp.ends_with(&format!("\r\n\r\n{reason}\n")));
    }
}

#[test]
fn http_1_0_parses_but_is_not_upgraded() {
    let mut req = request_with(&good_lines());
    let at = req.windows(8).position(|w| w == b"HTTP/1.1").unwrap();
    req[at + 7] = b'0';
    let head = head_of(&req);
    assert_eq!(head.minor_version, 0);
    let r = accept_upgrade(&head, &HandshakeConfig::default()).unwrap_err();
    assert_eq!(r.status, 400);
    // Anything else is malformed.
    req[at + 7] = b'2';
    let r = parse_request(&req, &HandshakeConfig::default()).unwrap_err();
    assert_eq!(r.status, 400);
    assert_eq!(parse_request(b"GET / HTTP/2.0\r\n\r\n", &HandshakeConfig::default()).unwrap_err().status, 400);
}

#[test]
fn malformed_requests_are_400() {
    let cfg = HandshakeConfig::default();
    for bad in [
        &b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
        b"GE\x00T / HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00", // a TLS ClientHello on the plain port
    ] {
        assert_eq!(parse_request(bad, &cfg).unwrap_err().status, 400, "{bad:?}");
    }
}

#[test]
fn wrong_version_is_426_with_header() {
    for v in [None, Some("Sec-WebSocket-Version: 8"), Some("Sec-WebSocket-Version: 14")] {
        let lines = replace(&good_lines(), "sec-websocket-version:", v);
        let r = accept(&lines, &HandshakeConfig::default()).unwrap_err();
        assert_eq!(r.status, 426);
        let resp = String::from_utf8(r.to_response()).unwrap();
        assert!(resp.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{resp}");
        assert!(resp.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{resp}");
    }
}

#[test]
fn header_too_large_is_431() {
    let cfg = HandshakeConfig { max_header_bytes: 100, ..Default::default() };
    let mut req = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 200));
    // Under the limit and incomplete: wait.
    assert_eq!(parse_request(&req[..99], &cfg), Ok(Parsed::Partial));
    assert_eq!(parse_request(&req[..100], &cfg).unwrap_err().status, 431);
    assert_eq!(parse_request(&req, &cfg).unwrap_err().status, 431);
    // Too many headers.
    let mut lines = good_lines();
    lines.extend(std::iter::repeat_n("X: y", MAX_HEADERS));
    let r = parse_request(&request_with(&lines), &HandshakeConfig::default()).unwrap_err();
    assert_eq!(r.status, 431);
    assert!(String::from_utf8(r.to_response())
        .unwrap()
        .starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
}

#[test]
fn head_of_exactly_max_bytes_is_accepted() {
    let req = request_with(&good_lines());
    let cfg = HandshakeConfig { max_header_bytes: req.len(), ..Default::default() };
    let mut with_frame = req.clone();
    with_frame.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
    match parse_request(&with_frame, &cfg).unwrap() {
        Parsed::Complete { consumed, .. } => assert_eq!(consumed, req.len()),
        Parsed::Partial => panic!(),
    }
}

#[test]
fn origin_allow_list_is_403() {
    let cfg = HandshakeConfig { allowed_origins: Some(vec!["https://app.example.com".into()]), ..Default::default() };
    let mut lines = good_lines();
    lines.push("Origin: https://APP.example.com");
    assert!(accept(&lines, &cfg).is_ok());
    let mut lines = good_lines();
    lines.push("Origin: https://evil.example.com");
    assert_eq!(accept(&lines, &cfg).unwrap_err().status, 403);
    // No Origin with an allow-list: refused.
    assert_eq!(accept(&good_lines(), &cfg).unwrap_err().status, 403);
    // No allow-list: anything goes.
    let mut lines = good_lines();
    lines.push("Origin: https://evil.example.com");
    assert!(accept(&lines, &HandshakeConfig::default()).is_ok());
}

#[test]
fn subprotocol_selection() {
    let cfg = HandshakeConfig { subprotocols: vec!["v2.feed".into(), "v1.feed".into()], ..Default::default() };
    // The client's preference order wins, across several headers.
    let mut lines = good_lines();
    lines.push("Sec-WebSocket-Protocol: chat, v1.feed");
    lines.push("Sec-WebSocket-Protocol: v2.feed");
    let a = accept(&lines, &cfg).unwrap();
    assert_eq!(a.subprotocol.as_deref(), Some("v1.feed"));
    let resp = String::from_utf8(a.response).unwrap();
    assert!(resp.contains("\r\nSec-WebSocket-Protocol: v1.feed\r\n"), "{resp}");
    // Nothing in common: no header at all.
    let mut lines = good_lines();
    lines.push("Sec-WebSocket-Protocol: chat, superchat");
    let a = accept(&lines, &cfg).unwrap();
    assert_eq!(a.subprotocol, None);
    assert!(!String::from_utf8(a.response).unwrap().contains("Sec-WebSocket-Protocol"));
    // Nothing offered: never pick one the client did not offer.
    let a = accept(&good_lines(), &cfg).unwrap();
    assert_eq!(a.subprotocol, None);
    assert!(!String::from_utf8(a.response).unwrap().contains("Sec-WebSocket-Protocol"));
    // Exact match only.
    let mut lines = good_lines();
    lines.push("Sec-WebSocket-Protocol: V1.FEED");
    assert_eq!(accept(&lines, &cfg).unwrap().subprotocol, None);
}

#[test]
fn byte_at_a_time_and_pipelined_frame() {
    let req = request_with(&good_lines());
    let mut stream = req.clone();
    let frame = [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
    stream.extend_from_slice(&frame);
    let cfg = HandshakeConfig::default();
    for n in 0..req.len() {
        assert_eq!(parse_request(&stream[..n], &cfg), Ok(Parsed::Partial), "at {n}");
    }
    for n in req.len()..=stream.len() {
        match parse_request(&stream[..n], &cfg).unwrap() {
            Parsed::Complete { consumed, .. } => assert_eq!(consumed, req.len()),
            Parsed::Partial => panic!("partial at {n}"),
        }
    }
    assert_eq!(parse_request_chunked(&stream, &[1], &cfg), parse_request(&stream, &cfg));
}

#[test]
fn plain_http_responses() {
    let r = http_response(200, "text/plain", b"ok\n");
    assert_eq!(
        r,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\
          Connection: close\r\n\r\nok\n"
    );
    let r = Rejection { status: 403, reason: "origin not allowed" }.to_response();
    let s = String::from_utf8(r).unwrap();
    assert!(s.contains("Content-Length: 19\r\n"), "{s}");
    assert!(s.contains("Content-Type: text/plain\r\n"));
    assert!(s.contains("Connection: close\r\n"));
}

#[test]
fn client_round_trip() {
    let key = generate_key([7; 16]);
    let req = client_request("localhost:9000", "/feed?x=1", &key);
    let head = head_of(&req);
    assert_eq!(head.path, "/feed?x=1");
    let a = accept_upgrade(&head, &HandshakeConfig::default()).unwrap();
    let mut resp = a.response.clone();
    resp.extend_from_slice(&[0x81, 0x00]);
    for n in 0..a.response.len() {
        assert_eq!(parse_response(&resp[..n], &key), Ok(None));
    }
    assert_eq!(parse_response(&resp, &key), Ok(Some(a.response.len())));
    // Wrong key.
    assert_eq!(parse_response(&resp, &generate_key([8; 16])), Err(HandshakeError::BadAccept));
}

#[test]
fn client_refusals() {
    let key = KEY;
    let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n";
    let check = |extra: &str| parse_response(format!("{ok}{extra}\r\n").as_bytes(), key);
    assert!(check("").is_ok());
    assert_eq!(check("Sec-WebSocket-Protocol: chat\r\n"), Err(HandshakeError::UnexpectedSubprotocol));
    assert_eq!(check("Sec-WebSocket-Extensions: permessage-deflate\r\n"), Err(HandshakeError::UnexpectedExtension));
    assert_eq!(check("Sec-WebSocket-Accept: AAAA\r\n"), Err(HandshakeError::BadAccept));
    assert_eq!(parse_response(b"HTTP/1.1 400 Bad Request\r\n\r\n", key), Err(HandshakeError::Status(400)));
    assert_eq!(
        parse_response(b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\n\r\n", key),
        Err(HandshakeError::MissingConnection)
    );
    assert_eq!(
        parse_response(b"HTTP/1.1 101 OK\r\nConnection: upgrade\r\n\r\n", key),
        Err(HandshakeError::MissingUpgrade)
    );
    assert_eq!(parse_response(b"HTTP/1.1 1x1\r\n\r\n", key), Err(HandshakeError::Malformed));
}

#[test]
fn client_subprotocol_offer_and_choice() {
    let key = generate_key([9; 16]);
    let req = client_request_with("h", "/ws?topics=A", &key, Some("wsgate.v1.json"));
    let head = head_of(&req);
    let cfg = HandshakeConfig { subprotocols: vec!["wsgate.v1.json".into()], ..HandshakeConfig::default() };
    let a = accept_upgrade(&head, &cfg).unwrap();
    assert_eq!(parse_response_with(&a.response, &key, Some("wsgate.v1.json")), Ok(Some(a.response.len())));
    // A client that offered it refuses a server that chose nothing or something else; one that offered nothing
    // still refuses any choice.
    let plain = accept_upgrade(&head, &HandshakeConfig::default()).unwrap();
    assert_eq!(
        parse_response_with(&plain.response, &key, Some("wsgate.v1.json")),
        Err(HandshakeError::MissingSubprotocol)
    );
    assert_eq!(parse_response(&a.response, &key), Err(HandshakeError::UnexpectedSubprotocol));
    let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n";
    let check = |extra: &str| parse_response_with(format!("{ok}{extra}\r\n").as_bytes(), KEY, Some("x"));
    assert!(check("Sec-WebSocket-Protocol: x\r\n").is_ok());
    assert_eq!(check("Sec-WebSocket-Protocol: y\r\n"), Err(HandshakeError::UnexpectedSubprotocol));
    assert_eq!(
        check("Sec-WebSocket-Protocol: x\r\nSec-WebSocket-Protocol: x\r\n"),
        Err(HandshakeError::UnexpectedSubprotocol)
    );
}

fn arb_request() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        Just("Host: h".to_string()),
        Just("Upgrade: websocket".to_string()),
        Just("Connection: keep-alive, Upgrade".to_string()),
        Just(format!("Sec-WebSocket-Key: {KEY}")),
        Just("Sec-WebSocket-Version: 13".to_string()),
        Just("Sec-WebSocket-Protocol: a, b".to_string()),
        "[A-Za-z-]{1,12}: [ -~]{0,30}",
    ];
    (
        prop_oneof![Just("GET"), Just("POST"), Just("get")],
        "/[a-z?=&]{0,20}",
        proptest::collection::vec(line, 0..12),
        proptest::collection::vec(any::<u8>(), 0..20),
    )
        .prop_map(|(m, p, lines, tail)| {
            let mut s = format!("{m} {p} HTTP/1.1\r\n");
            for l in lines {
                s.push_str(&l);
                s.push_str("\r\n");
            }
            s.push_str("\r\n");
            let mut b = s.into_bytes();
            b.extend(tail);
            b
        })
}

proptest! {
    /// Parsing the bytes in random chunks gives the same answer as parsing them whole.
    #[test]
    fn chunked_request_equals_whole(req in arb_request(), chunks in proptest::collection::vec(1usize..40, 1..8),
                                    max in prop_oneof![Just(8192usize), 20usize..200]) {
        let cfg = HandshakeConfig { max_header_bytes: max, subprotocols: vec!["b".into()], ..Default::default() };
        let whole = parse_request(&req, &cfg);
        prop_assert_eq!(&parse_request_chunked(&req, &chunks, &cfg), &whole);
        if let Ok(Parsed::Complete { head, .. }) = whole {
            let _ = accept_upgrade(&head, &cfg);
        }
    }

    /// Arbitrary bytes: no panic, and chunked still equals whole.
    #[test]
    fn chunked_garbage_equals_whole(bytes in proptest::collection::vec(any::<u8>(), 0..200),
                                    chunks in proptest::collection::vec(1usize..16, 1..8)) {
        let cfg = HandshakeConfig { max_header_bytes: 128, ..Default::default() };
        prop_assert_eq!(parse_request_chunked(&bytes, &chunks, &cfg), parse_request(&bytes, &cfg));
    }
}

#[test]
fn credentials_never_reach_a_log_line() {
    assert_eq!(redact_target("/ws?topics=a&token=s3cr3t&x=1"), "/ws?topics=a&token=<redacted>&x=1");
    assert_eq!(redact_target("/ws?access_token=s3cr3t"), "/ws?access_token=<redacted>");
    assert_eq!(redact_target("/ws?topics=a"), "/ws?topics=a");
    assert_eq!(redact_target("/ws"), "/ws");
    let bytes =
        b"GET /ws?token=s3cr3t HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cr3t2\r\nCookie: id=s3cr3t3\r\n\r\n";
    let head = head_of(bytes);
    let shown = format!("{head:?}");
    assert!(!shown.contains("s3cr3t") && shown.contains("<redacted>") && shown.contains("/ws?token="), "{shown}");
    let refused = String::from_utf8(Rejection { status: 401, reason: "unauthorized" }.to_response()).unwrap();
    assert!(refused.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{refused}");
    assert!(
        refused.contains("\r\nWWW-Authenticate: Bearer realm=\"wsgate\"\r\n")
            && refused.ends_with("\r\n\r\nunauthorized\n")
    );
}
