//! Query parameters of a request target (`/sse?topics=BTC-USD,ETH-*&since=1:2`), percent-decoded. Pure.

use std::borrow::Cow;

/// The first value of parameter `name` in `target`'s query, percent-decoded (`+` is a space); `None` when the
/// parameter is absent, `Some(Err(()))` when its escapes are malformed or decode to invalid UTF-8.
pub fn param<'a>(target: &'a str, name: &str) -> Option<Result<Cow<'a, str>, ()>> {
    let (_, query) = target.split_once('?')?;
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| decode(v))
    })
}

fn decode(v: &str) -> Result<Cow<'_, str>, ()> {
    if !v.contains(['%', '+']) {
        return Ok(Cow::Borrowed(v));
    }
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit)).ok_or(())?;
                let hex = std::str::from_utf8(hex).map_err(|_| ())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map(Cow::Owned).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_decodes() {
        let t = "/sse?topics=BTC-USD%2CETH-%2A&since=1:2&empty=&flag";
        assert_eq!(param(t, "topics"), Some(Ok(Cow::Borrowed("BTC-USD,ETH-*")).map(|c| c.into_owned().into())));
        assert_eq!(param(t, "since"), Some(Ok(Cow::Borrowed("1:2"))));
        assert_eq!(param(t, "empty"), Some(Ok(Cow::Borrowed(""))));
        assert_eq!(param(t, "flag"), Some(Ok(Cow::Borrowed(""))));
        assert_eq!(param(t, "none"), None);
        assert_eq!(param("/sse", "since"), None);
        assert_eq!(param("/sse?a=x+y#frag", "a"), Some(Ok(Cow::Owned("x y".into()))));
        for bad in ["/s?a=%", "/s?a=%4", "/s?a=%zz", "/s?a=%ff", "/s?a=%+5", "/s?a=%-1"] {
            assert_eq!(param(bad, "a"), Some(Err(())), "{bad}");
        }
    }
}
