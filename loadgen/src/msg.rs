//! The load generator's message format, shared by the feed (which writes it) and the subscribers (which read it).
//!
//! One line of JSON, padded to an exact size: `{"seq":N,"ts":T,"topic":"SYM","pad":"xxx…"}\n`.
//! `seq` is the feed's sequence number (per topic when there are topics, otherwise global, from 0), `ts` the
//! **scheduled** send time in CLOCK_MONOTONIC nanoseconds — not the time the feed got round to sending it — so
//! that latency measured against it includes any stall of the feed, the gateway or the network (no coordinated
//! omission). `seq` and `ts` come first so that a subscriber reads them without a JSON parser.

/// CLOCK_MONOTONIC in nanoseconds: comparable between processes on one machine (unlike `Instant`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into memory we own; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Name of topic `k` of `count`: `T` and `k` in decimal, zero-padded to at least 4 digits (to as many as
/// `count - 1` has, so every name of a run has the same length and names sort like their numbers): `T0000`,
/// `T0001`, … The feed and the subscribers derive names the same way, so neither needs the other's list.
pub fn topic_name(k: u32, count: u32) -> String {
    let width = count.saturating_sub(1).max(1).ilog10() as usize + 1;
    format!("T{k:0w$}", w = width.max(4))
}

/// Smallest line [`write_message`] can produce for the largest numbers (with a topic of `topic_len` bytes).
pub fn min_size(topic_len: usize) -> usize {
    let topic = if topic_len > 0 { ",\"topic\":\"\"".len() + topic_len } else { 0 };
    "{\"seq\":,\"ts\":,\"pad\":\"\"}\n".len() + 20 + 20 + topic
}

/// Appends one message line of exactly `size` bytes (newline included), or of the smallest possible size when
/// `size` is smaller than that.
pub fn write_message(out: &mut Vec<u8>, seq: u64, scheduled_ns: u64, topic: Option<&str>, size: usize) {
    use std::io::Write;
    let start = out.len();
    let _ = write!(out, "{{\"seq\":{seq},\"ts\":{scheduled_ns}");
    if let Some(topic) = topic {
        let _ = write!(out, ",\"topic\":\"{topic}\"");
    }
    out.extend_from_slice(b",\"pad\":\"");
    let used = out.len() - start + "\"}\n".len();
    out.resize(out.len() + size.saturating_sub(used), b'x');
    out.extend_from_slice(b"\"}\n");
}

/// A parsed message: sequence number, scheduled send time, topic (if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub seq: u64,
    pub scheduled_ns: u64,
    pub topic: Option<&'a [u8]>,
}

/// Reads `seq`, `ts` and `topic` from a payload written by [`write_message`] (no trailing newline needed).
pub fn parse_message(payload: &[u8]) -> Option<Parsed<'_>> {
    let rest = payload.strip_prefix(b"{\"seq\":")?;
    let (seq, rest) = parse_u64(rest)?;
    let rest = rest.strip_prefix(b",\"ts\":")?;
    let (scheduled_ns, rest) = parse_u64(rest)?;
    let topic =
        rest.strip_prefix(b",\"topic\":\"").and_then(|t| t.iter().position(|&b| b == b'"').map(|end| &t[..end]));
    Some(Parsed { seq, scheduled_ns, topic })
}

fn parse_u64(buf: &[u8]) -> Option<(u64, &[u8])> {
    let digits = buf.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in &buf[..digits] {
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some((v, &buf[digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_size_and_round_trip() {
        for size in [0usize, 40, 64, 128, 1000] {
            for topic in [None, Some("BTC-USD")] {
                let mut out = Vec::new();
                write_message(&mut out, u64::MAX, 1_234_567_890, topic, size);
                let min = min_size(topic.map_or(0, str::len));
                assert_eq!(out.len(), size.max(min.min(out.len())), "size {size} topic {topic:?}");
                if size >= min {
                    assert_eq!(out.len(), size);
                }
                assert_eq!(*out.last().unwrap(), b'\n');
                let line = &out[..out.len() - 1];
                assert!(std::str::from_utf8(line).is_ok());
                let p = parse_message(line).unwrap();
                assert_eq!((p.seq, p.scheduled_ns), (u64::MAX, 1_234_567_890));
                assert_eq!(p.topic, topic.map(str::as_bytes));
            }
        }
    }

    #[test]
    fn topic_names_have_one_width_per_run() {
        assert_eq!(topic_name(0, 1), "T0000");
        assert_eq!(topic_name(999, 1000), "T0999");
        assert_eq!(topic_name(9999, 10_000), "T9999");
        assert_eq!(topic_name(7, 10_001), "T00007");
        assert_eq!(topic_name(10_000, 10_001), "T10000");
    }

    #[test]
    fn rejects_foreign_payloads() {
        assert_eq!(parse_message(b"hello"), None);
        assert_eq!(parse_message(b"{\"seq\":,\"ts\":1}"), None);
        assert_eq!(parse_message(b"{\"seq\":99999999999999999999999,\"ts\":1}"), None);
    }

    #[test]
    fn clock_moves_forward() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a && a > 0);
    }
}
