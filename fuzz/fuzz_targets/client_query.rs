//! What a client puts in a request target for `/ws`, `/sse` and `/poll`: `client::query::param`, topic patterns
//! and positions, and `client::sse::resume_point`, on arbitrary text never panic; a decoded parameter never
//! contains a raw escape it could not decode; what parses as a pattern or position writes back as itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::client::{query, sse, Pattern, Position};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The header value, if any, comes after the first newline.
    let (target, last_event_id) = match text.split_once('\n') {
        Some((t, h)) => (t, Some(h)),
        None => (text, None),
    };
    for name in ["topics", "since", "snapshot"] {
        if let Some(Ok(value)) = query::param(target, name) {
            if name == "topics" {
                for p in value.split(',').filter_map(|t| Pattern::parse(t).ok()) {
                    assert_eq!(Pattern::parse(&p.as_written()), Ok(p.clone()));
                }
            }
            if let Ok(position) = value.parse::<Position>() {
                assert_eq!(position.to_string().parse::<Position>().ok(), Some(position));
            }
        }
    }
    if let Ok(Some(position)) = sse::resume_point(target, last_event_id) {
        assert_eq!(position.to_string().parse::<Position>().ok(), Some(position));
    }
});
