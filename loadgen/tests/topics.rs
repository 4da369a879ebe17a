//! `subscribe --topics`: the real `wsgate` binary fed by the real `feed --topics`, measured by the real
//! `wsgate-loadgen subscribe` — per-topic accounting in both formats, churn with resume, and a resume storm with
//! and without enough history. Small and short (a few hundred connections, 2 s windows): the point is the
//! checking, not the load.

mod common;

use common::{run_loadgen, run_loadgen_status, u, Feed, Gateway};
use serde_json::Value;

const TOPICS: &str = "50";
/// 1,000 msg/s over 50 topics: 20 per topic per second; 5 topics per connection: 100 per connection.
const RATE: &str = "1000";

fn feed(gw: &Gateway) -> Feed {
    let ingest = gw.ingest.as_deref().expect("ingest address");
    Feed::connect(ingest, &["--rate", RATE, "--size", "128", "--topics", TOPICS, "--duration", "60"])
}

/// `subscribe --topics 50 --per-conn 5` with 200 connections over 2 processes and `extra` options.
fn subscribe(gw: &Gateway, extra: &[&str]) -> Vec<String> {
    subscribe_shape(gw, 200, 5, extra)
}

fn subscribe_shape(gw: &Gateway, connections: u64, per_conn: u64, extra: &[&str]) -> Vec<String> {
    let (connections, per_conn) = (connections.to_string(), per_conn.to_string());
    let mut args: Vec<String> = [
        "subscribe",
        "--url",
        &gw.ws_url,
        "--connections",
        &connections,
        "--procs",
        "2",
        "--topics",
        TOPICS,
        "--per-conn",
        &per_conn,
        "--warmup",
        "0.5",
        "--duration",
        "2",
        "--grace",
        "1",
        "--server-pid",
        &gw.pid(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn run(args: &[String]) -> Value {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_loadgen(&args).0
}

/// Zero loss, every topic heard by its 20 subscribers, and a passing verdict.
fn assert_clean(report: &Value) {
    assert_clean_shape(report, 200, 5);
}

fn assert_clean_shape(report: &Value, connections: u64, per_conn: u64) {
    assert_eq!(report["verdict"], "pass", "{report:#}");
    assert_eq!(u(report, "connections_ok"), connections);
    assert_eq!(u(report, "messages_lost"), 0, "{report:#}");
    assert_eq!((u(report, "gaps"), u(report, "duplicates"), u(report, "reorders")), (0, 0, 0));
    let t = &report["topics"];
    assert_eq!((u(t, "holes"), u(t, "chain_holes"), u(t, "chain_duplicates")), (0, 0, 0), "{t:#}");
    assert_eq!((u(t, "unexpected_topic"), u(t, "topics_silent")), (0, 0));
    assert_eq!(u(t, "subscriptions"), connections * per_conn);
    assert_eq!(t["error_replies"], serde_json::json!({}));
    let per_topic = t["per_topic"].as_object().expect("per_topic");
    assert_eq!(per_topic.len(), 50);
    // 200 x 5 (or 50 x 20) subscriptions over 50 topics: 20 subscribers each, ~20 messages a second for ~2 s.
    for (name, c) in per_topic {
        assert!(u(c, "expected") >= 20 * 30, "{name}: {c}");
        assert_eq!((u(c, "lost"), u(c, "duplicates"), u(c, "reorders")), (0, 0, 0), "{name}: {c}");
    }
}

#[test]
fn market_shape_checks_every_topic_in_both_formats() {
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0"]);
    let _feed = feed(&gw);
    let json = run(&subscribe(&gw, &[]));
    assert_clean(&json);
    // 100 deliveries a second per connection.
    let rate = json["topics"]["deliveries_per_s"].as_f64().unwrap();
    assert!((18_000.0..=22_000.0).contains(&rate), "{rate} deliveries/s");
    assert_eq!(u(&json["topics"], "replayed"), 0);
    assert!(json["latency_us"]["count"].as_u64().unwrap() > 30_000);
    let raw = run(&subscribe(&gw, &["--format", "raw"]));
    assert_clean(&raw);
    assert_eq!(raw["topics"]["format"], "raw");
}

#[test]
fn churn_resumes_every_topic_exactly_once() {
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0"]);
    let _feed = feed(&gw);
    let report = run(&subscribe(&gw, &["--churn-interval", "400"]));
    assert_clean(&report);
    let t = &report["topics"];
    // Every connection drops about every 400 ms from the warm-up's start to the window's end (2.5 s).
    let drops = u(t, "drops");
    assert!(drops >= 200 * 5, "{drops} drops");
    assert_eq!(u(t, "reconnects"), drops, "every drop came back");
    assert_eq!(u(t, "reconnect_failures"), 0);
    assert_eq!(u(&report, "disconnects"), 0, "drops on purpose are not disconnects");
    assert_eq!(t["gap_notices"], serde_json::json!({}));
}

/// 20 topics per connection, each at its own position when the connection drops: a resume needs 20 requests,
/// more than the gateway lets wait (16), so the loadgen must pace them.
#[test]
fn churn_with_twenty_topics_per_connection_paces_its_requests() {
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0"]);
    let _feed = feed(&gw);
    let report = run(&subscribe_shape(&gw, 50, 20, &["--churn-interval", "300"]));
    assert_clean_shape(&report, 50, 20);
    let t = &report["topics"];
    assert!(u(t, "drops") >= 50 * 6, "{t:#}");
    assert_eq!(u(t, "reconnects"), u(t, "drops"));
}

#[test]
fn a_resume_storm_replays_what_it_missed() {
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0"]);
    let _feed = feed(&gw);
    let report = run(&subscribe(&gw, &["--storm-at", "0.5", "--storm-away", "300"]));
    assert_clean(&report);
    let t = &report["topics"];
    let storm = &t["storm"];
    assert_eq!((u(storm, "dropped"), u(storm, "resubscribed"), u(storm, "live")), (200, 200, 200), "{storm:#}");
    let all_live = storm["all_live_ms"].as_f64().expect("every connection came back");
    assert!(all_live >= 300.0, "back after --storm-away at the earliest: {all_live} ms");
    // Away 300 ms at 100 messages a second per connection: about 30 replayed each.
    let replayed = u(t, "replayed");
    assert!((200 * 20..=200 * 40).contains(&replayed), "{replayed} replayed");
    assert_eq!(t["gap_notices"], serde_json::json!({}));
}

/// History of 2 messages per topic, away for 400 ms (8 messages per topic): every resume gets a gap notice per
/// topic, and what the notices cover is neither lost nor a failure.
#[test]
fn gaps_the_gateway_announces_are_covered_not_lost() {
    let gw = Gateway::start_with_config("short-history", "history_messages = 2\n", &["--ingest", "127.0.0.1:0"]);
    let _feed = feed(&gw);
    let (status, report, _) = {
        let args = subscribe(&gw, &["--storm-at", "0.5", "--storm-away", "400"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_loadgen_status(&args)
    };
    assert!(status.success(), "{report:#}");
    assert_clean(&report);
    let t = &report["topics"];
    assert_eq!(u(&t["gap_notices"], "history"), 1000, "one per subscription: {t:#}");
    // About 8 missed per topic and connection, 2 of them replayed.
    let covered = u(t, "gap_covered");
    assert!((1000 * 4..=1000 * 8).contains(&covered), "{covered} covered");
    assert_eq!(u(t, "replayed"), 2000, "the history's 2 messages per subscription");
}
