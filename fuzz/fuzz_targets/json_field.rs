//! Field lookup: `upstream::json_field::find_top_level` on arbitrary bytes never panics, borrows a `String`
//! answer from the line, and never depends on bytes past the end of the line. On every input serde_json accepts
//! as an object it agrees with serde_json's view of the first top-level member of that name: a string that
//! unescapes to the same text, another kind of value, or no such member (unless the object nests deeper than
//! `MAX_DEPTH`, where it may say `Invalid`); and a prefix of such an input answers the same or `Invalid`.
//!
//! Input: the line. It is looked up under several names: plain, empty, and ones that only match keys with escapes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use wsgate::upstream::json_field::{find_top_level, unescape, Field, MAX_DEPTH};

const NAMES: [&str; 5] = ["topic", "", "a", "\u{e9}\"\\/\n", "\u{1f600}"];

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|&c| is_ws(c)) {
        i += 1;
    }
    i
}

/// serde_json's view of the first top-level `name` member of `text`, which serde_json accepts as an object
/// (a `Value` keeps the last of duplicate keys; this keeps the first). serde_json parses every key and value;
/// this only steps over the top level's `{ : , }`.
fn serde_first(text: &str, name: &str) -> Option<Value> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    assert_eq!(b[i], b'{');
    i = skip_ws(b, i + 1);
    if b[i] == b'}' {
        return None;
    }
    loop {
        let mut keys = serde_json::Deserializer::from_str(&text[i..]).into_iter::<String>();
        let key = keys.next().expect("a key").expect("a valid key");
        i = skip_ws(b, i + keys.byte_offset());
        assert_eq!(b[i], b':');
        i += 1;
        let mut values = serde_json::Deserializer::from_str(&text[i..]).into_iter::<Value>();
        let value = values.next().expect("a value").expect("a valid value");
        if key == name {
            return Some(value);
        }
        i = skip_ws(b, i + values.byte_offset());
        match b[i] {
            b',' => i = skip_ws(b, i + 1),
            b'}' => return None,
            other => panic!("unexpected {:?} after a member", char::from(other)),
        }
    }
}

/// Nesting depth: a scalar is 0, a container 1 + its deepest element.
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(members) => 1 + members.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// What holds on any input.
fn check_any<'a>(line: &'a [u8], name: &str) -> Field<'a> {
    let got = find_top_level(line, name);
    let first = line.iter().copied().find(|&b| !is_ws(b));
    assert_eq!(got == Field::NotAnObject, first != Some(b'{'), "NotAnObject iff no leading brace");
    if let Field::String { raw, escaped } = got {
        let start = raw.as_ptr().addr().wrapping_sub(line.as_ptr().addr());
        assert!(start <= line.len() && raw.len() <= line.len() - start, "raw lies inside the line");
        assert_eq!(line.get(start.wrapping_sub(1)), Some(&b'"'), "raw starts after a quote");
        assert_eq!(line.get(start + raw.len()), Some(&b'"'), "raw ends at a quote");
        assert_eq!(escaped, raw.contains(&b'\\'));
        assert!(!raw.iter().any(|&b| b < 0x20), "no raw control character");
        let mut out = String::new();
        let decoded = unescape(raw, &mut out);
        if !escaped {
            if let Ok(s) = std::str::from_utf8(raw) {
                assert_eq!(decoded, Ok(()));
                assert_eq!(out, s, "unescaping text without escapes is the identity");
            }
        }
        if decoded.is_err() {
            assert!(out.is_empty(), "out untouched on error");
        }
    }
    // The answer never depends on bytes past the end: a NUL continues no token.
    let mut longer = line.to_vec();
    longer.push(0);
    assert_eq!(find_top_level(&longer, name), got, "a byte past the end changed the answer");
    got
}

fuzz_target!(|data: &[u8]| {
    let answers: Vec<Field<'_>> = NAMES.iter().map(|name| check_any(data, name)).collect();
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(value) = serde_json::from_str::<Value>(text) else { return };
    if !value.is_object() {
        assert!(answers.iter().all(|&a| a == Field::NotAnObject), "serde_json saw a non-object: {answers:?}");
        return;
    }
    let too_deep = depth(&value) > MAX_DEPTH;
    for (name, got) in NAMES.iter().zip(answers) {
        let want = serde_first(text, name);
        match (got, &want) {
            (Field::String { raw, .. }, Some(Value::String(s))) => {
                let mut out = String::new();
                assert_eq!(unescape(raw, &mut out), Ok(()), "serde_json decoded {s:?}");
                assert_eq!(&out, s);
            }
            (Field::NotString, Some(v)) if !v.is_string() => {}
            (Field::Absent, None) => {}
            (Field::Invalid, _) if too_deep => {}
            (got, want) => panic!("{name:?}: {got:?}, but serde_json says {want:?}"),
        }
        // A prefix answers the same, or Invalid (or NotAnObject before the brace).
        for cut in [text.len() / 2, text.len().saturating_sub(1)] {
            let prefix = &data[..cut];
            let short = find_top_level(prefix, name);
            let before_brace = !prefix.contains(&b'{');
            assert!(
                short == got || short == Field::Invalid || (before_brace && short == Field::NotAnObject),
                "{name:?}: prefix of {cut} bytes gives {short:?}, the whole line {got:?}"
            );
        }
    }
});
