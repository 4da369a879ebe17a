//! Client control messages: `client::control::parse` on arbitrary bytes never panics; every error carries a
//! known code and a short message; a request it accepts has valid patterns, and its id (if any) is the JSON
//! text of a string or number no longer than the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::client::control::{parse, Control, MAX_ID_BYTES};

fuzz_target!(|data: &[u8]| {
    match parse(data, 16) {
        Ok(control) => {
            if let Some(id) = control.id() {
                assert!(id.len() <= MAX_ID_BYTES);
                let v: serde_json::Value = serde_json::from_str(id).expect("an id is JSON text");
                assert!(v.is_string() || v.is_number());
            }
            match control {
                Control::Subscribe { patterns, .. } | Control::Unsubscribe { patterns, .. } => {
                    assert!(!patterns.is_empty() && patterns.len() <= 16);
                    for p in patterns {
                        assert_eq!(wsgate::client::Pattern::parse(&p.as_written()), Ok(p.clone()));
                    }
                }
                Control::Publish { topic, payload, .. } => {
                    assert!(wsgate::upstream::topic::check(topic.as_bytes()).is_ok());
                    assert!(!payload.is_empty());
                }
                Control::Refresh { token, .. } => {
                    assert!(!token.0.is_empty());
                    assert_eq!(format!("{:?}", token), "<redacted>");
                }
            }
        }
        Err(e) => {
            assert!(!e.code.as_str().is_empty());
            assert!(e.message.len() < 400, "{}", e.message);
        }
    }
});
