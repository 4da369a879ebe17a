//! Positions passed through from upstream (`upstream_epoch`): the upstream's own sequence numbers are the
//! messages' positions, so a client of one gateway process resumes on the next one (a restart, or another
//! node) from the same position: replayed from the new process's history where it reaches back, an exact
//! `gap` (reason `history`) where it does not. An upstream that replays what the gateway already has after a
//! reconnect is deduplicated (`feed_dropped{reason="replayed"}`).

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::json::{self, Value};
use common::{Gateway, IO_TIMEOUT};
use tungstenite::client::IntoClientRequest;
use tungstenite::WebSocket;

const EPOCH: u64 = 77;

fn line(seq: u64) -> String {
    format!("{{\"topic\":\"t\",\"seq\":{seq},\"px\":{}}}\n", 100 + seq)
}

fn send(upstream: &mut TcpStream, seqs: impl IntoIterator<Item = u64>) {
    let lines: String = seqs.into_iter().map(line).collect();
    upstream.write_all(lines.as_bytes()).unwrap();
}

fn gateway(upstream: SocketAddr) -> Gateway {
    let toml = format!("upstream = \"{upstream}\"\nupstream_seq_field = \"seq\"\nupstream_epoch = {EPOCH}\n");
    let gw = Gateway::start_with_config(&toml, &[]);
    gw.wait_upstream("connected", Duration::from_secs(5));
    gw
}

fn client(gw: &Gateway, path: &str) -> WebSocket<TcpStream> {
    let stream = common::tcp_connect(gw.ws_addr);
    let mut req = format!("ws://{}{path}", gw.ws_addr).into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", "wsgate.v1.json".parse().unwrap());
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    tungstenite::client(req, stream).unwrap().0
}

/// What a client reads: a message (seq, prev) or a gap notice (from seq, to seq, reason); other replies skipped.
#[derive(Debug, PartialEq)]
enum Item {
    Msg(u64, u64),
    Gap(u64, u64, String),
}

fn next_item(ws: &mut WebSocket<TcpStream>) -> Item {
    loop {
        let v = json::parse(&common::ws_read_text(ws)).unwrap();
        let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or_else(|| panic!("{k} in {v:?}"));
        match v.get("wsgate").and_then(Value::as_str) {
            None => {
                assert_eq!(num(&v, "epoch"), EPOCH, "the configured epoch: {v:?}");
                return Item::Msg(num(&v, "seq"), num(&v, "prev"));
            }
            Some("gap") => {
                let at = |k: &str| v.get(k).map(|p| num(p, "seq")).unwrap();
                let reason = v.get("reason").and_then(Value::as_str).unwrap().to_string();
                return Item::Gap(at("from"), at("to"), reason);
            }
            Some(_) => {} // subscribed and the like
        }
    }
}

#[test]
fn positions_survive_a_restart_and_replays_are_deduplicated() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_addr = listener.local_addr().unwrap();

    // The first process: a client receives up to seq 20 (the upstream numbers from 1).
    let mut first = gateway(upstream_addr);
    let (mut upstream, _) = listener.accept().unwrap();
    let mut ws = client(&first, "/ws?topics=t");
    std::thread::sleep(Duration::from_millis(100)); // subscribed
    send(&mut upstream, 1..=20);
    for seq in 1..=20 {
        assert_eq!(next_item(&mut ws), Item::Msg(seq, seq - 1));
    }
    assert_eq!(first.health().get("epoch").and_then(Value::as_u64), Some(EPOCH));
    drop(ws);
    first.stop(Duration::from_secs(10));

    // The next process connects; the upstream replays from 11 (what a feed with a replay window does) and goes on.
    let second = gateway(upstream_addr);
    let (mut upstream, _) = listener.accept().unwrap();
    send(&mut upstream, 11..=45);
    assert!(
        common::poll_until(Duration::from_secs(5), || second.health().get("feed_seq").and_then(Value::as_u64)
            == Some(45)),
        "the second process never reached seq 45: {:?}",
        second.health()
    );

    // Resuming from 20 on the new process: 21.. from its history, no gap, then live.
    let mut resumed = client(&second, &format!("/ws?topics=t&since={EPOCH}:20"));
    for seq in 21..=45 {
        assert_eq!(next_item(&mut resumed), Item::Msg(seq, seq - 1), "replayed across the restart");
    }
    // From before the new process's history (it starts at 11): an exact gap, then what it has.
    let mut behind = client(&second, &format!("/ws?topics=t&since={EPOCH}:5"));
    match next_item(&mut behind) {
        Item::Gap(from, to, reason) => {
            assert_eq!((from, reason.as_str()), (5, "history"));
            assert!((10..=11).contains(&to), "the gap ends where the history starts: {to}");
        }
        other => panic!("expected a history gap, got {other:?}"),
    }
    assert_eq!(next_item(&mut behind), Item::Msg(11, 0), "the new process's first message of t");

    // The upstream repeats 40..=45 (a reconnect replay) and goes on: the repeats are dropped, counted.
    send(&mut upstream, 40..=46);
    assert_eq!(next_item(&mut resumed), Item::Msg(46, 45), "no duplicate after a replay");
    let dropped = || second.scrape().sum("wsgate_feed_dropped_total", &[("reason", "replayed")]);
    assert!(common::poll_until(Duration::from_secs(5), || dropped() == 6.0), "replayed drops: {}", dropped());
}

#[test]
fn an_upstream_epoch_needs_the_upstream_s_numbers() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["--upstream-epoch", "77", "--demo", "--print-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("upstream_epoch"), "the message names the key: {err}");
}
