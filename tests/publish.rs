//! Client publishing (`{"op":"publish"}`, `docs/client-protocol.md`): off by default; on for the topics in
//! `publish_topics`; published messages are sequenced with the feed, so subscribers on every loop thread see the
//! same messages in the same order; too large, not allowed and too fast each get their error code, and the
//! connection stays.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::json::{self, Value};
use common::{ws_read_text, Gateway};
use tungstenite::WebSocket;

type Ws = WebSocket<TcpStream>;

fn client(gw: &Gateway, path: &str) -> Ws {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}{path}", gw.ws_addr).into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", "wsgate.v1.json".parse().unwrap());
    tungstenite::client(req, common::tcp_connect(gw.ws_addr)).expect("handshake").0
}

fn read_json(ws: &mut Ws) -> Value {
    let text = ws_read_text(ws);
    json::parse(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn send(ws: &mut Ws, text: &str) {
    ws.send(tungstenite::Message::Text(text.into())).unwrap();
}

fn error_code(ws: &mut Ws) -> String {
    let v = read_json(ws);
    assert_eq!(v.get("wsgate").and_then(Value::as_str), Some("error"), "{v:?}");
    v.get("code").and_then(Value::as_str).unwrap().to_string()
}

#[test]
fn publishing_is_off_by_default() {
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0"]);
    let mut ws = client(&gw, "/ws?topics=chat");
    read_json(&mut ws); // subscribed
    send(&mut ws, r#"{"op":"publish","id":1,"topic":"chat","data":"hi"}"#);
    assert_eq!(error_code(&mut ws), "publish_denied");
}

/// Four clients (over both loop threads) publish at once; all of them receive all messages, each in the same
/// order, and the order agrees with the seq the feed thread gave.
#[test]
fn published_messages_reach_every_subscriber_in_one_order() {
    let gw = Gateway::start_with_config(
        "publish_topics = [\"chat-*\"]\npublish_rate = 1000\npublish_max_bytes = 64\n",
        &["--ingest", "127.0.0.1:0", "--threads", "2"],
    );
    const CLIENTS: usize = 4;
    const EACH: usize = 50;
    let mut clients: Vec<Ws> = (0..CLIENTS).map(|_| client(&gw, "/ws?topics=chat-room")).collect();
    for ws in &mut clients {
        assert_eq!(read_json(ws).get("wsgate").and_then(Value::as_str), Some("subscribed"));
    }
    // The feed runs meanwhile: its messages and the clients' share one sequence.
    let mut p = gw.publisher();
    common::write_all(&mut p, b"{\"topic\":\"chat-room\",\"from\":\"feed\"}\n");
    for i in 0..EACH {
        for (c, ws) in clients.iter_mut().enumerate() {
            send(ws, &format!(r#"{{"op":"publish","topic":"chat-room","data":{{"from":{c},"i":{i}}}}}"#));
        }
    }
    let mut orders = Vec::new();
    for ws in &mut clients {
        let mut got = Vec::new();
        let mut last_seq = 0;
        while got.len() < CLIENTS * EACH + 1 {
            let v = read_json(ws);
            assert!(v.get("wsgate").is_none(), "no error expected: {v:?}");
            let seq = v.get("seq").and_then(Value::as_u64).unwrap();
            let prev = v.get("prev").and_then(Value::as_u64).unwrap();
            assert_eq!(prev, last_seq, "the topic's chain has no hole");
            last_seq = seq;
            let data = v.get("data").unwrap();
            got.push((seq, format!("{:?}/{:?}", data.get("from"), data.get("i"))));
        }
        orders.push(got);
    }
    assert!(orders.windows(2).all(|w| w[0] == w[1]), "every subscriber saw one order");
    // Each client's own messages stay in the order it sent them.
    for c in 0..CLIENTS {
        let mine: Vec<String> = orders[0]
            .iter()
            .filter(|(_, m)| m.starts_with(&format!("Some(Num({c}.0))")))
            .map(|(_, m)| m.clone())
            .collect();
        let want: Vec<String> = (0..EACH).map(|i| format!("Some(Num({c}.0))/Some(Num({i}.0))")).collect();
        assert_eq!(mine, want);
    }
}

#[test]
fn refusals_have_codes_and_the_connection_stays() {
    let gw = Gateway::start_with_config(
        "publish_topics = [\"chat-*\", \"news\"]\npublish_rate = 3\npublish_max_bytes = 16\n",
        &["--ingest", "127.0.0.1:0", "--threads", "1"],
    );
    let mut ws = client(&gw, "/ws?topics=news");
    read_json(&mut ws); // subscribed
    send(&mut ws, r#"{"op":"publish","topic":"prices","data":"x"}"#);
    assert_eq!(error_code(&mut ws), "publish_denied");
    send(&mut ws, r#"{"op":"publish","topic":"news","data":"this is more than sixteen bytes"}"#);
    assert_eq!(error_code(&mut ws), "too_large");
    send(&mut ws, r#"{"op":"publish","topic":"bad topic","data":"x"}"#);
    assert_eq!(error_code(&mut ws), "bad_topic");
    // A burst of 3 goes; the 4th and 5th are refused; a second later there is room again.
    for i in 0..5 {
        send(&mut ws, &format!(r#"{{"op":"publish","id":{i},"topic":"news","data":"m{i}"}}"#));
    }
    let (mut texts, mut limited) = (Vec::new(), Vec::new());
    while texts.len() + limited.len() < 5 {
        let v = read_json(&mut ws);
        match v.get("wsgate").and_then(Value::as_str) {
            Some("error") => {
                assert_eq!(v.get("code").and_then(Value::as_str), Some("rate_limited"), "{v:?}");
                limited.push(v.get("id").and_then(Value::as_u64).unwrap());
            }
            _ => texts.push(v.get("text").and_then(Value::as_str).unwrap().to_string()),
        }
    }
    assert_eq!((texts, limited), (vec!["m0".to_string(), "m1".into(), "m2".into()], vec![3, 4]));
    std::thread::sleep(Duration::from_millis(400));
    send(&mut ws, r#"{"op":"publish","topic":"news","data":"again"}"#);
    assert_eq!(read_json(&mut ws).get("text").and_then(Value::as_str), Some("again"));
}
