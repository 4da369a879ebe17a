//! Token authentication and the Origin allow-list against the real binary: valid tokens (HS256, RS256, ES256;
//! query or `Authorization: Bearer`) work on WebSocket, SSE and long-poll; expired, not yet valid, tampered,
//! `alg: none`, HS/RS-confused, wrong-audience and missing tokens are `401` before anything is served, with a body
//! and log lines that never carry the token; topics outside the token's claim are `403` at connect and
//! `forbidden` by control message or publish; expiry closes a WebSocket (4001) unless refreshed, ends an event
//! stream (which resumes with a fresh token) and answers a held poll; Origin rules and CORS on every transport.
//! Keys: `tests/fixtures/auth/` (test-only).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::raw::{http_exchange, read_head, Request, Response};
use common::{ws_read_text, Gateway};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::WebSocket;

type Ws = WebSocket<TcpStream>;

const SECRET: &str = "wsgate-test-secret-0123456789abcdef-0123456789";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/auth");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn hs(claims: &Value) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap()).unwrap()
}

fn rs(claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(&fixture("rsa_private.pem")).unwrap();
    encode(&Header::new(Algorithm::RS256), claims, &key).unwrap()
}

fn es(claims: &Value) -> String {
    let key = EncodingKey::from_ec_pem(&fixture("ec_private.pem")).unwrap();
    encode(&Header::new(Algorithm::ES256), claims, &key).unwrap()
}

/// A token for `sub` valid `secs` from now, allowing `topics` and `publish`.
fn claims(secs: u64, topics: &[&str], publish: &[&str]) -> Value {
    json!({"sub": "alice", "aud": "wsgate", "exp": now() + secs, "topics": topics, "publish": publish})
}

/// A gateway with HS256 token auth (`auth_audience = ["wsgate"]`, no leeway) and a feed to publish into.
fn hs_gateway(extra: &str, args: &[&str]) -> Gateway {
    let secret = common::unique_temp_path("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let toml = format!("auth_secret_file = {secret:?}\nauth_audience = [\"wsgate\"]\nauth_leeway = 0\n{extra}");
    let mut all = vec!["--ingest", "127.0.0.1:0"];
    all.extend_from_slice(args);
    Gateway::start_with_config(&toml, &all)
}

/// A WebSocket client in the JSON format on `path`, with extra request headers; the handshake must succeed.
fn ws(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Ws {
    let mut req = format!("ws://{}{path}", gw.ws_addr).into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", "wsgate.v1.json".parse().unwrap());
    for (name, value) in headers {
        req.headers_mut()
            .insert(tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
    }
    tungstenite::client(req, common::tcp_connect(gw.ws_addr)).unwrap_or_else(|e| panic!("{path}: {e}")).0
}

fn read_json(ws: &mut Ws) -> Value {
    let text = ws_read_text(ws);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn send(ws: &mut Ws, v: &Value) {
    ws.send(tungstenite::Message::Text(v.to_string())).unwrap();
}

fn publish(gw: &Gateway, lines: &str) {
    let mut p = gw.publisher();
    common::write_all(&mut p, lines.as_bytes());
    common::finish(p);
}

fn get(gw: &Gateway, target: &str, headers: &str) -> Response {
    http_exchange(gw.ws_addr, format!("GET {target} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").as_bytes())
}

/// The status of an upgrade request for `path` with extra headers.
fn upgrade_status(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut req = Request::upgrade(gw.ws_addr).path(path);
    for (n, v) in headers {
        req = req.set(n, v);
    }
    let mut s = common::tcp_connect(gw.ws_addr);
    s.write_all(&req.bytes()).unwrap();
    let (head, body) = read_head(&mut s);
    Response { status: head.status, head, body }
}

/// Opens `/sse` (raw TCP); returns the stream, its response head and what followed it.
fn sse(gw: &Gateway, target: &str, headers: &str) -> (TcpStream, common::raw::Head, Vec<u8>) {
    let mut s = common::tcp_connect(gw.ws_addr);
    write!(s, "GET {target} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").unwrap();
    let (head, rest) = read_head(&mut s);
    (s, head, rest)
}

/// Reads the event stream until `done` holds for what arrived, or it ends (then `ended` is true).
fn read_sse_until(s: &mut TcpStream, buf: &mut Vec<u8>, timeout: Duration, done: impl Fn(&str) -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    loop {
        if done(&String::from_utf8_lossy(buf)) {
            return false;
        }
        assert!(Instant::now() < deadline, "stream text so far: {:?}", String::from_utf8_lossy(buf));
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) => return true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
}

fn assert_unauthorized(resp: &Response, what: &str, token: &str) {
    assert_eq!(resp.status, 401, "{what}: {resp:?}");
    assert_eq!(resp.head.header("www-authenticate"), Some("Bearer realm=\"wsgate\""), "{what}");
    let body = String::from_utf8_lossy(&resp.body);
    assert!(body.is_empty() || body == "unauthorized\n", "{what}: the body says no more: {body:?}");
    if !token.is_empty() {
        assert!(!body.contains(token), "{what}");
    }
}

#[test]
fn a_valid_token_works_on_websocket_sse_and_poll() {
    let gw = hs_gateway("", &["--threads", "1"]);
    let token = hs(&claims(300, &["BTC-*"], &[]));
    // WebSocket: the token in the query, then in the Authorization header.
    let mut by_query = ws(&gw, &format!("/ws?topics=BTC-USD&token={token}"), &[]);
    assert_eq!(read_json(&mut by_query)["wsgate"], "subscribed");
    let bearer = format!("Bearer {token}");
    let mut by_header = ws(&gw, "/ws?topics=BTC-*", &[("Authorization", &bearer)]);
    assert_eq!(read_json(&mut by_header)["wsgate"], "subscribed");
    // SSE with the token in the query (what EventSource can do).
    let (mut stream, head, mut buf) = sse(&gw, &format!("/sse?topics=BTC-USD&token={token}"), "");
    assert_eq!(head.status, 200);
    // Long-poll with the header: held until the message comes.
    let addr = gw.ws_addr;
    let poll_request = format!("GET /poll?topics=BTC-USD HTTP/1.1\r\nHost: x\r\nAuthorization: {bearer}\r\n\r\n");
    let poll = std::thread::spawn(move || http_exchange(addr, poll_request.as_bytes()));
    std::thread::sleep(Duration::from_millis(300));
    publish(&gw, "{\"topic\":\"BTC-USD\",\"px\":1}\n");
    for c in [&mut by_query, &mut by_header] {
        let v = read_json(c);
        assert_eq!((v["topic"].as_str(), v["data"]["px"].as_u64()), (Some("BTC-USD"), Some(1)), "{v}");
    }
    assert!(!read_sse_until(&mut stream, &mut buf, common::IO_TIMEOUT, |t| t.contains("\"px\":1")));
    let answer = poll.join().unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    let v: Value = serde_json::from_str(&answer.body_text()).unwrap();
    assert_eq!(v["messages"][0]["topic"], "BTC-USD", "{v}");
}

#[test]
fn rs256_and_es256_keys_verify_their_own_tokens_only() {
    for (file, good, other) in
        [("rsa_public.pem", rs as fn(&Value) -> String, es as fn(&Value) -> String), ("ec_public.pem", es, rs)]
    {
        let toml = format!("auth_public_key_file = \"{FIXTURES}/{file}\"\nauth_audience = [\"wsgate\"]\n");
        let gw = Gateway::start_with_config(&toml, &["--ingest", "127.0.0.1:0"]);
        let c = claims(300, &["*"], &[]);
        let mut client = ws(&gw, &format!("/ws?token={}", good(&c)), &[]);
        publish(&gw, "{\"topic\":\"t\",\"n\":1}\n");
        assert_eq!(read_json(&mut client)["data"]["n"], 1, "{file}");
        let wrong = other(&c);
        assert_unauthorized(&upgrade_status(&gw, &format!("/ws?token={wrong}"), &[]), file, &wrong);
        // The HS/RS confusion: HS256 keyed with the public key's PEM bytes, which anyone may have.
        let forged =
            encode(&Header::new(Algorithm::HS256), &c, &EncodingKey::from_secret(&fixture(file)).unwrap()).unwrap();
        assert_unauthorized(&upgrade_status(&gw, &format!("/ws?token={forged}"), &[]), "HS/RS confusion", &forged);
        assert_unauthorized(&get(&gw, &format!("/sse?token={forged}"), ""), "HS/RS confusion, SSE", &forged);
    }
}

#[test]
fn bad_tokens_are_refused_with_401_and_never_logged() {
    let gw = hs_gateway("", &["--log-level", "debug"]);
    let good = claims(300, &["*"], &[]);
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let valid = hs(&good);
    let (signed, sig) = valid.rsplit_once('.').unwrap();
    let tampered_sig = format!("{signed}.{}{}", if sig.starts_with('A') { "B" } else { "A" }, &sig[1..]);
    let header = signed.split_once('.').unwrap().0;
    let escalated =
        format!("{header}.{}.{sig}", b64(&json!({"exp": now() + 300, "aud": "wsgate", "topics": ["*"], "x": 1})));
    let none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&good));
    let cases: Vec<(&str, String)> = vec![
        ("expired", hs(&json!({"aud": "wsgate", "exp": now() - 5, "topics": ["*"]}))),
        ("not yet valid", hs(&json!({"aud": "wsgate", "exp": now() + 300, "nbf": now() + 120, "topics": ["*"]}))),
        ("tampered signature", tampered_sig),
        ("claims changed, signature kept", escalated),
        ("alg none", none),
        ("wrong audience", hs(&json!({"aud": "other", "exp": now() + 300, "topics": ["*"]}))),
        ("no audience", hs(&json!({"exp": now() + 300, "topics": ["*"]}))),
        (
            "another secret",
            encode(
                &Header::new(Algorithm::HS256),
                &good,
                &EncodingKey::from_secret(b"another secret that is long enough!!").unwrap(),
            )
            .unwrap(),
        ),
        ("garbage", "not-a-token".to_string()),
    ];
    for (what, token) in &cases {
        assert_unauthorized(&upgrade_status(&gw, &format!("/ws?topics=a&token={token}"), &[]), what, token);
        let bearer = format!("Bearer {token}");
        assert_unauthorized(&upgrade_status(&gw, "/ws", &[("Authorization", &bearer)]), what, token);
        assert_unauthorized(&get(&gw, &format!("/sse?token={token}"), ""), what, token);
        assert_unauthorized(&get(&gw, "/poll", &format!("Authorization: {bearer}\r\n")), what, token);
    }
    assert_unauthorized(&upgrade_status(&gw, "/ws", &[]), "no token", "");
    assert_unauthorized(&get(&gw, "/sse?topics=a", ""), "no token", "");
    assert_unauthorized(&get(&gw, "/poll", ""), "no token", "");
    let bearer = format!("Bearer {valid}");
    assert_unauthorized(
        &upgrade_status(&gw, &format!("/ws?token={valid}"), &[("Authorization", &bearer)]),
        "two tokens",
        "",
    );
    // The valid one still works, by both routes.
    assert_eq!(upgrade_status(&gw, &format!("/ws?token={valid}"), &[]).status, 101);
    assert_eq!(upgrade_status(&gw, "/ws", &[("Authorization", &bearer)]).status, 101);
    // The log says why (by category) and never shows a token, not even at debug level.
    let logged = common::poll_until(Duration::from_secs(5), || gw.stderr().contains("not yet valid"));
    let log = gw.stderr();
    assert!(logged && log.contains("expired") && log.contains("bad signature"), "{log}");
    for (what, token) in &cases {
        let sig = token.rsplit('.').next().unwrap();
        assert!(sig.len() < 8 || !log.contains(sig), "{what}: token in the log:\n{log}");
        assert!(!log.contains(token.as_str()), "{what}: token in the log:\n{log}");
    }
    assert!(!log.contains(sig), "the valid token's signature is in the log:\n{log}");
}

#[test]
fn topics_outside_the_claim_are_refused_everywhere() {
    let gw = hs_gateway("publish_topics = [\"*\"]\n", &[]);
    let token = hs(&claims(300, &["BTC-*", "news"], &["chat-*"]));
    // At connect: 403 before upgrading, on every transport.
    for path in ["/ws?topics=ETH-USD", "/ws?topics=BTC-USD,ETH-USD", "/ws?topics=*", "/ws?topics=B*"] {
        let resp = upgrade_status(&gw, &format!("{path}&token={token}"), &[]);
        assert_eq!((resp.status, String::from_utf8_lossy(&resp.body).as_ref()), (403, "forbidden\n"), "{path}");
    }
    for target in ["/sse?topics=ETH-USD", "/sse", "/sse?topics=*", "/poll?topics=ETH-*", "/poll"] {
        let sep = if target.contains('?') { '&' } else { '?' };
        assert_eq!(get(&gw, &format!("{target}{sep}token={token}"), "").status, 403, "{target}");
    }
    // Without topics=, a WebSocket whose token does not cover `*` opens with nothing to read.
    let mut client = ws(&gw, &format!("/ws?token={token}"), &[]);
    // By control message: `forbidden`, and the connection stays.
    send(&mut client, &json!({"op":"subscribe","id":1,"topics":["BTC-USD","ETH-USD"]}));
    let v = read_json(&mut client);
    assert_eq!(
        (v["wsgate"].as_str(), v["code"].as_str(), v["id"].as_u64()),
        (Some("error"), Some("forbidden"), Some(1))
    );
    send(&mut client, &json!({"op":"subscribe","id":2,"topics":["*"]}));
    assert_eq!(read_json(&mut client)["code"], "forbidden");
    send(&mut client, &json!({"op":"subscribe","id":3,"topics":["BTC-USD","news","chat-room"]}));
    assert_eq!(read_json(&mut client)["code"], "forbidden", "chat-room may be published on, not read");
    send(&mut client, &json!({"op":"subscribe","id":4,"topics":["BTC-USD","news"]}));
    assert_eq!(read_json(&mut client)["wsgate"], "subscribed");
    // Publishing: inside the publish claim goes through (a reader of chat-room, with its own token, gets it);
    // outside it is `forbidden`.
    let reader_token = hs(&claims(300, &["chat-*"], &[]));
    let mut reader = ws(&gw, &format!("/ws?topics=chat-room&token={reader_token}"), &[]);
    assert_eq!(read_json(&mut reader)["wsgate"], "subscribed");
    send(&mut client, &json!({"op":"publish","id":5,"topic":"news","data":"mine?"}));
    let v = read_json(&mut client);
    assert_eq!((v["code"].as_str(), v["id"].as_u64()), (Some("forbidden"), Some(5)), "{v}");
    send(&mut client, &json!({"op":"publish","id":6,"topic":"chat-room","data":"hello"}));
    let v = read_json(&mut reader);
    assert_eq!((v["topic"].as_str(), v["text"].as_str()), (Some("chat-room"), Some("hello")), "{v}");
    // Nothing of the topics it may not read arrives, what it may read does.
    publish(
        &gw,
        "{\"topic\":\"ETH-USD\",\"n\":1}\n{\"topic\":\"chat-room\",\"n\":2}\n{\"topic\":\"BTC-USD\",\"n\":3}\n",
    );
    let v = read_json(&mut client);
    assert_eq!((v["topic"].as_str(), v["data"]["n"].as_u64()), (Some("BTC-USD"), Some(3)), "{v}");
}

#[test]
fn expiry_closes_a_websocket_unless_refreshed() {
    let gw = hs_gateway("", &["--threads", "1"]);
    let short = hs(&claims(2, &["BTC-*", "ETH-*"], &[]));
    let started = Instant::now();
    let mut left_alone = ws(&gw, &format!("/ws?topics=BTC-USD&token={short}"), &[]);
    let mut refreshed = ws(&gw, &format!("/ws?topics=BTC-USD,ETH-*&token={short}"), &[]);
    for c in [&mut left_alone, &mut refreshed] {
        assert_eq!(read_json(c)["wsgate"], "subscribed");
    }
    // Bad refreshes leave the connection as it was.
    send(&mut refreshed, &json!({"op":"refresh","id":"r0","token":"garbage"}));
    let v = read_json(&mut refreshed);
    assert_eq!((v["code"].as_str(), v["id"].as_str()), (Some("unauthorized"), Some("r0")), "{v}");
    let bob = hs(&json!({"sub": "bob", "aud": "wsgate", "exp": now() + 60, "topics": ["*"]}));
    send(&mut refreshed, &json!({"op":"refresh","id":"r1","token":bob}));
    assert_eq!(read_json(&mut refreshed)["code"], "unauthorized", "another subject");
    // A good refresh with narrower claims: what they no longer cover is unsubscribed first.
    let long = hs(&claims(60, &["BTC-*"], &[]));
    send(&mut refreshed, &json!({"op":"refresh","id":"r2","token":long}));
    let v = read_json(&mut refreshed);
    assert_eq!(v["wsgate"], "unsubscribed", "{v}");
    assert_eq!(v["topics"][0]["topic"], "ETH-*", "{v}");
    let v = read_json(&mut refreshed);
    assert_eq!((v["wsgate"].as_str(), v["id"].as_str()), (Some("refreshed"), Some("r2")), "{v}");
    assert!(v["exp"].as_u64().unwrap() >= now() + 55, "{v}");
    send(&mut refreshed, &json!({"op":"subscribe","id":"s","topics":["ETH-USD"]}));
    assert_eq!(read_json(&mut refreshed)["code"], "forbidden", "the new token's claims, not the old ones");

    // The one left alone is closed with 4001 when its token expires (at most 2 s from its issue).
    left_alone.get_mut().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let frame = loop {
        match left_alone.read() {
            Ok(tungstenite::Message::Close(frame)) => break frame,
            Ok(tungstenite::Message::Text(t)) => panic!("unexpected message {t}"),
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame: {e}"),
        }
    };
    let frame = frame.expect("a close code");
    assert_eq!((u16::from(frame.code), frame.reason.as_ref()), (4001, "token expired"));
    let closed_after = started.elapsed();
    assert!(closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(4), "{closed_after:?}");
    // The refreshed one lives on past the first token's expiry and still receives.
    std::thread::sleep(Duration::from_millis(500));
    publish(&gw, "{\"topic\":\"ETH-USD\",\"n\":1}\n{\"topic\":\"BTC-USD\",\"n\":2}\n");
    let v = read_json(&mut refreshed);
    assert_eq!((v["topic"].as_str(), v["data"]["n"].as_u64()), (Some("BTC-USD"), Some(2)), "{v}");
}

#[test]
fn a_whole_feed_connection_whose_refresh_narrows_leaves_the_whole_feed() {
    let gw = hs_gateway("", &["--threads", "1"]);
    let mut client = ws(&gw, &format!("/ws?token={}", hs(&claims(60, &["*"], &[]))), &[]);
    publish(&gw, "{\"topic\":\"ETH-USD\",\"n\":1}\n");
    assert_eq!(read_json(&mut client)["data"]["n"], 1, "the whole feed");
    send(&mut client, &json!({"op":"refresh","id":1,"token":hs(&claims(60, &["BTC-USD"], &[]))}));
    let v = read_json(&mut client);
    assert_eq!((v["wsgate"].as_str(), v["topics"][0]["topic"].as_str()), (Some("unsubscribed"), Some("*")), "{v}");
    assert_eq!(read_json(&mut client)["wsgate"], "refreshed");
    send(&mut client, &json!({"op":"subscribe","id":2,"topics":["BTC-USD"]}));
    assert_eq!(read_json(&mut client)["wsgate"], "subscribed");
    publish(&gw, "{\"topic\":\"ETH-USD\",\"n\":2}\n{\"topic\":\"BTC-USD\",\"n\":3}\n");
    assert_eq!(read_json(&mut client)["data"]["n"], 3, "nothing outside the new claim");
}

#[test]
fn an_event_stream_ends_at_expiry_and_resumes_with_a_fresh_token() {
    let gw = hs_gateway("", &["--threads", "1"]);
    let short = hs(&claims(2, &["BTC-*"], &[]));
    let (mut s, head, mut buf) = sse(&gw, &format!("/sse?topics=BTC-USD&token={short}"), "");
    assert_eq!(head.status, 200);
    publish(&gw, "{\"topic\":\"BTC-USD\",\"n\":1}\n");
    assert!(!read_sse_until(&mut s, &mut buf, common::IO_TIMEOUT, |t| t.contains("\"n\":1")));
    let text = String::from_utf8_lossy(&buf).into_owned();
    let last_id = text.lines().filter_map(|l| l.strip_prefix("id: ")).next_back().expect("an id").to_string();
    // At expiry: a `token_expired` error event, then the end of the stream.
    let ended = read_sse_until(&mut s, &mut buf, Duration::from_secs(5), |_| false);
    assert!(ended);
    let text = String::from_utf8_lossy(&buf).into_owned();
    assert!(text.contains("event: wsgate-error\ndata: {\"wsgate\":\"error\",\"code\":\"token_expired\""), "{text}");
    // The same URL is now refused; a fresh token resumes where the stream ended.
    assert_eq!(get(&gw, &format!("/sse?topics=BTC-USD&token={short}"), "").status, 401);
    publish(&gw, "{\"topic\":\"BTC-USD\",\"n\":2}\n");
    let fresh = hs(&claims(60, &["BTC-*"], &[]));
    let (mut s2, head, mut buf2) =
        sse(&gw, &format!("/sse?topics=BTC-USD&token={fresh}"), &format!("Last-Event-ID: {last_id}\r\n"));
    assert_eq!(head.status, 200);
    assert!(!read_sse_until(&mut s2, &mut buf2, common::IO_TIMEOUT, |t| t.contains("\"n\":2")));
    assert!(!String::from_utf8_lossy(&buf2).contains("\"n\":1"), "resumed after what it had");
}

#[test]
fn a_held_poll_is_answered_when_its_token_expires() {
    let gw = hs_gateway("poll_timeout = 20000\n", &["--threads", "1"]);
    let token = hs(&claims(2, &["*"], &[]));
    let started = Instant::now();
    let resp = get(&gw, &format!("/poll?token={token}"), "");
    let took = started.elapsed();
    assert_eq!(resp.status, 200, "{resp:?}");
    let v: Value = serde_json::from_str(&resp.body_text()).unwrap();
    assert_eq!(v["messages"], json!([]), "{v}");
    assert!(took < Duration::from_secs(4), "answered at expiry, not at poll_timeout: {took:?}");
    assert_eq!(get(&gw, &format!("/poll?since={}&token={token}", v["next"].as_str().unwrap()), "").status, 401);
}

#[test]
fn optional_auth_lets_anonymous_clients_read_but_not_publish() {
    let gw = hs_gateway("auth_optional = true\npublish_topics = [\"*\"]\n", &[]);
    let mut anonymous = ws(&gw, "/ws?topics=BTC-USD", &[]);
    assert_eq!(read_json(&mut anonymous)["wsgate"], "subscribed");
    send(&mut anonymous, &json!({"op":"publish","id":1,"topic":"BTC-USD","data":"x"}));
    assert_eq!(read_json(&mut anonymous)["code"], "forbidden");
    assert_eq!(get(&gw, "/sse?topics=BTC-USD&token=garbage", "").status, 401, "a token sent must be valid");
    let mut writer = ws(&gw, &format!("/ws?token={}", hs(&claims(60, &["*"], &["BTC-*"]))), &[]);
    send(&mut writer, &json!({"op":"publish","id":2,"topic":"BTC-USD","data":{"n":7}}));
    assert_eq!(read_json(&mut anonymous)["data"]["n"], 7);
}

#[test]
fn origins_are_checked_on_every_transport_and_cors_echoes_only_allowed_ones() {
    let gw = hs_gateway("allowed_origins = [\"https://app.example\"]\n", &[]);
    let token = hs(&claims(60, &["*"], &[]));
    let evil = "Origin: https://evil.example\r\n";
    // A foreign origin is 403 before the token is looked at (valid or not).
    for target in [format!("/sse?token={token}"), format!("/poll?token={token}"), "/sse".into(), "/poll".into()] {
        let resp = get(&gw, &target, evil);
        assert_eq!(resp.status, 403, "{target}");
        assert!(resp.head.header("access-control-allow-origin").is_none(), "{target}");
    }
    for path in [format!("/ws?token={token}"), "/ws".into()] {
        assert_eq!(upgrade_status(&gw, &path, &[("Origin", "https://evil.example")]).status, 403, "{path}");
    }
    // An allowed origin (any case) is echoed, never `*`.
    let resp = get(&gw, &format!("/poll?token={token}&since=0:0"), "Origin: https://APP.example\r\n");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.head.header("access-control-allow-origin"), Some("https://APP.example"));
    assert_eq!(resp.head.header("vary"), Some("Origin"));
    let (_s, head, _) = sse(&gw, &format!("/sse?token={token}"), "Origin: https://app.example\r\n");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(upgrade_status(&gw, &format!("/ws?token={token}"), &[("Origin", "https://app.example")]).status, 101);
    // Preflight, for a cross-origin fetch with an Authorization header.
    let preflight = |origin: &str| {
        let request = format!(
            "OPTIONS /poll HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: GET\r\n\
             Access-Control-Request-Headers: authorization\r\n\r\n"
        );
        http_exchange(gw.ws_addr, request.as_bytes())
    };
    let ok = preflight("https://app.example");
    assert_eq!(ok.status, 204, "{ok:?}");
    assert_eq!(ok.head.header("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(ok.head.header("access-control-allow-methods"), Some("GET"));
    assert!(ok.head.header("access-control-allow-headers").is_some_and(|h| h.contains("Authorization")));
    let refused = preflight("https://evil.example");
    assert_eq!(refused.status, 403);
    assert!(refused.head.header("access-control-allow-origin").is_none());
    // Without an allow-list, any origin gets `*`.
    let open = hs_gateway("", &[]);
    let resp = get(&open, &format!("/poll?token={token}&since=0:0"), evil);
    assert_eq!(resp.head.header("access-control-allow-origin"), Some("*"));
}
