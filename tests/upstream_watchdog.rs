//! The upstream watchdog and sequence check, against a real upstream TCP server played by the test:
//! a jump in the upstream's own sequence numbers (`upstream_seq_field`) is counted and logged; a silent
//! connection is dropped and made again with `upstream_silence_reconnect`.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::time::Duration;

use common::{poll_until, ws_read_text, Gateway};

fn line(seq: u64) -> String {
    format!("{{\"topic\":\"BTC-USD\",\"seq\":{seq},\"px\":{}}}\n", 100 + seq)
}

#[test]
fn a_jump_in_upstream_sequence_numbers_is_a_counted_and_logged_gap() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let toml = format!("upstream = \"{}\"\nupstream_seq_field = \"seq\"\n", listener.local_addr().unwrap());
    let gw = Gateway::start_with_config(&toml, &[]);
    let (mut upstream, _) = listener.accept().unwrap();
    gw.wait_upstream("connected", Duration::from_secs(5));
    let mut ws = gw.ws_connect();
    // 1..=5 in order, then 9 (6, 7, 8 lost upstream), 10, then back to 1 (an upstream restart).
    for seq in (1..=5).chain([9, 10, 1]) {
        upstream.write_all(line(seq).as_bytes()).unwrap();
    }
    for _ in 0..8 {
        ws_read_text(&mut ws); // every message is still forwarded
    }
    let mut last = None;
    let ok = poll_until(Duration::from_secs(5), || {
        let s = gw.scrape();
        let seen = (
            s.sum("wsgate_upstream_seq_gaps_total", &[]),
            s.sum("wsgate_upstream_seq_missing_total", &[]),
            s.sum("wsgate_upstream_seq_resets_total", &[]),
        );
        last = Some(seen);
        seen == (1.0, 3.0, 1.0)
    });
    assert!(ok, "(gaps, missing, resets) = {last:?}, want (1, 3, 1)");
    let h = gw.health();
    assert_eq!(h.get("upstream_seq_gaps").and_then(common::json::Value::as_u64), Some(1), "{h:?}");
    let log = gw.stderr();
    assert!(log.contains("upstream sequence gap") && log.contains("missing=3"), "{log}");
    assert!(log.contains("upstream sequence went back"), "{log}");
}

#[test]
fn lines_without_the_field_are_not_checked() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let toml = format!("upstream = \"{}\"\nupstream_seq_field = \"seq\"\n", listener.local_addr().unwrap());
    let gw = Gateway::start_with_config(&toml, &[]);
    let (mut upstream, _) = listener.accept().unwrap();
    let mut ws = gw.ws_connect();
    upstream.write_all(b"{\"seq\":1}\nplain line\n{\"seq\":2}\n{\"seq\":\"x\"}\n{\"seq\":3}\n").unwrap();
    for _ in 0..5 {
        ws_read_text(&mut ws);
    }
    let s = gw.scrape();
    assert_eq!(s.sum("wsgate_upstream_seq_gaps_total", &[]) + s.sum("wsgate_upstream_seq_resets_total", &[]), 0.0);
}

#[test]
fn a_silent_upstream_is_dropped_and_reconnected_when_asked() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let toml = format!(
        "upstream = \"{}\"\nupstream_silence = 300\nupstream_silence_reconnect = true\n",
        listener.local_addr().unwrap()
    );
    let gw = Gateway::start_with_config(&toml, &[]);
    let (first, _) = listener.accept().unwrap();
    // It says nothing: the gateway gives up on it and connects again.
    listener.set_nonblocking(false).unwrap();
    let (mut second, _) = listener.accept().unwrap();
    let s = gw.scrape();
    assert!(s.sum("wsgate_upstream_silence_reconnects_total", &[]) >= 1.0);
    assert!(s.sum("wsgate_upstream_silences_total", &[]) >= 1.0);
    let mut ws = gw.ws_connect();
    second.write_all(b"after the reconnect\n").unwrap();
    assert_eq!(ws_read_text(&mut ws), "after the reconnect");
    drop(first);
}
