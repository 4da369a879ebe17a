//! Handshake: `parse_request` + `accept_upgrade` never panic; parsing in chunks equals parsing
//! whole; every 101 we build is accepted by our own client-side checker with the request's key;
//! every refusal is a well-formed HTTP response carrying its status.
//!
//! Input: byte 0 = chunk size (1..=64) and config switches, the rest = the request bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::proto::handshake::{
    accept_upgrade, parse_request, parse_response, HandshakeConfig, HandshakeError, Parsed,
};
use wsgate::proto::oracle::parse_request_chunked;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, input)) = data.split_first() else {
        return;
    };
    let cfg = HandshakeConfig {
        max_header_bytes: if ctl & 0x80 != 0 { 256 } else { 8192 },
        subprotocols: vec!["chat".into(), "v1".into()],
        allowed_origins: (ctl & 0x40 != 0).then(|| vec!["http://a.example".into()]),
    };
    let chunk = usize::from(ctl & 0x3F) + 1;
    let whole = parse_request(input, &cfg);
    assert_eq!(parse_request_chunked(input, &[chunk], &cfg), whole);
    let head = match whole {
        Ok(Parsed::Complete { head, consumed }) => {
            assert!(consumed <= input.len() && consumed <= cfg.max_header_bytes);
            head
        }
        Ok(Parsed::Partial) => {
            assert!(input.len() < cfg.max_header_bytes);
            return;
        }
        Err(rejection) => {
            assert!(matches!(rejection.status, 400 | 431));
            check_refusal(&rejection.to_response(), rejection.status);
            return;
        }
    };
    let _ = head.path_only();
    match accept_upgrade(&head, &cfg) {
        Ok(accepted) => {
            let key = head.key.as_deref().expect("accepted without a key");
            if let Some(p) = &accepted.subprotocol {
                assert!(head.protocols.contains(p), "chose a protocol not offered");
                assert!(cfg.subprotocols.contains(p));
                assert_eq!(
                    parse_response(&accepted.response, key),
                    Err(HandshakeError::UnexpectedSubprotocol)
                );
            } else {
                assert_eq!(
                    parse_response(&accepted.response, key),
                    Ok(Some(accepted.response.len()))
                );
            }
        }
        Err(rejection) => {
            assert!(matches!(rejection.status, 400 | 403 | 405 | 426));
            check_refusal(&rejection.to_response(), rejection.status);
        }
    }
});

fn check_refusal(response: &[u8], status: u16) {
    assert_eq!(
        parse_response(response, "k"),
        Err(HandshakeError::Status(status))
    );
}
