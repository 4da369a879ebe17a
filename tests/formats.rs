//! Formats chosen by subprotocol (`docs/client-protocol.md`): a client that asks for `wsgate.v1.json` receives
//! every message as a JSON envelope with its topic and position; one that asks for nothing (or `wsgate.v1.raw`)
//! receives the upstream payload exactly, as before; both at once, from the same feed.

mod common;

use std::time::Duration;

use common::json::{self, Value};
use common::{ws_expect_silence, ws_read_text, Gateway};

fn client_with_protocol(gw: &Gateway, protocol: &str) -> tungstenite::WebSocket<std::net::TcpStream> {
    use tungstenite::client::IntoClientRequest;
    let mut req = gw.ws_url().into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let stream = common::tcp_connect(gw.ws_addr);
    let (ws, resp) = tungstenite::client(req, stream).expect("handshake");
    assert_eq!(resp.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap()), Some(protocol));
    ws
}

fn num(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or_else(|| panic!("no {key} in {v:?}"))
}

#[test]
fn json_clients_get_envelopes_and_raw_clients_the_payload() {
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0"]);
    let epoch = num(&gw.health(), "epoch");
    let mut json_client = client_with_protocol(&gw, "wsgate.v1.json");
    let mut raw_named = client_with_protocol(&gw, "wsgate.v1.raw");
    let mut raw = gw.ws_connect();
    let mut p = gw.publisher();
    common::write_all(&mut p, b"{\"topic\":\"BTC-USD\",\"px\":1}\nplain text\n{\"topic\":\"BTC-USD\",\"px\":2}\n");
    for ws in [&mut raw, &mut raw_named] {
        assert_eq!(ws_read_text(ws), "{\"topic\":\"BTC-USD\",\"px\":1}");
        assert_eq!(ws_read_text(ws), "plain text");
        assert_eq!(ws_read_text(ws), "{\"topic\":\"BTC-USD\",\"px\":2}");
    }
    let envelopes: Vec<Value> =
        (0..3).map(|_| json::parse(&ws_read_text(&mut json_client)).expect("an envelope is JSON")).collect();
    let want = [("BTC-USD", 1, 0), ("default", 2, 0), ("BTC-USD", 3, 1)];
    for (env, (topic, seq, prev)) in envelopes.iter().zip(want) {
        assert_eq!(env.get("topic").and_then(Value::as_str), Some(topic), "{env:?}");
        assert_eq!((num(env, "epoch"), num(env, "seq"), num(env, "prev")), (epoch, seq, prev), "{env:?}");
    }
    assert_eq!(envelopes[0].get("data").and_then(|d| d.get("px")).and_then(Value::as_u64), Some(1));
    assert_eq!(envelopes[1].get("text").and_then(Value::as_str), Some("plain text"));
    for ws in [&mut raw, &mut json_client] {
        ws_expect_silence(ws, Duration::from_millis(200));
    }
}

#[test]
fn a_slow_json_client_is_closed_like_any_other_and_the_raw_clients_keep_going() {
    let gw = Gateway::start_with_config("max_lag_bytes = 262144\n", &["--ingest", "127.0.0.1:0", "--threads", "1"]);
    let stalled = client_with_protocol(&gw, "wsgate.v1.json");
    let mut raw = gw.ws_connect();
    let mut p = gw.publisher();
    let line = format!("{}\n", "q".repeat(1000));
    let reader = std::thread::spawn(move || {
        for _ in 0..8000 {
            ws_read_text(&mut raw);
        }
    });
    for _ in 0..8 {
        common::write_all(&mut p, line.repeat(1000).as_bytes());
    }
    reader.join().expect("the raw client got all 8,000 lines");
    let closed = common::poll_until(Duration::from_secs(5), || num(&gw.health(), "slow_consumers") == 1);
    assert!(closed, "the stalled JSON client was not closed as a slow consumer");
    drop(stalled);
}
