//! The command line of the real binary: every setting as a flag, `--print-config`, and refusals that name the key.

mod common;

use std::process::Command;

use common::{unique_temp_path, Gateway};

fn wsgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wsgate")).args(args).output().expect("run wsgate")
}

#[test]
fn print_config_shows_file_and_flags_and_reads_back() {
    let path = unique_temp_path("print.toml");
    std::fs::write(&path, "history_messages = 77\nsse_heartbeat = 2500\n").unwrap();
    let path = path.to_str().unwrap();
    let out = wsgate(&["--config", path, "--history-bytes", "12345", "--print-config"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();
    for line in ["history_messages = 77", "sse_heartbeat = 2500", "history_bytes = 12345", "max_lag_bytes = 4194304"] {
        assert!(printed.lines().any(|l| l == line), "{line:?} missing from:\n{printed}");
    }
    // The printed file starts a gateway with the same settings.
    let again = unique_temp_path("again.toml");
    std::fs::write(&again, &printed).unwrap();
    let out = wsgate(&["--config", again.to_str().unwrap(), "--print-config"]);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), printed);
}

#[test]
fn invalid_values_are_refused_naming_the_key() {
    let cases: &[(&[&str], &str)] = &[
        (&["--history-messages", "lots"], "--history-messages"),
        (&["--max-lag-bytes", "0"], "max_lag_bytes"),
        (&["--listen", "not-an-address"], "listen (--listen)"),
        (&["--uring-recv-buffers", "1000"], "uring_recv_buffers"),
        (&["--sse-event-names=maybe"], "--sse-event-names"),
    ];
    for (args, named) in cases {
        let out = wsgate(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(named), "{args:?}: {err:?} does not name {named}");
    }
    let path = unique_temp_path("typo.toml");
    std::fs::write(&path, "max_lagg_bytes = 5\n").unwrap();
    let out = wsgate(&["--config", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(2) && err.contains("unknown key `max_lagg_bytes`"), "{err}");
}

#[test]
fn a_setting_given_only_as_a_flag_takes_effect() {
    // `max_header_bytes` had no flag before every key became one: a head over it is refused with 431.
    let gw = Gateway::start(&["--max-header-bytes", "512"]);
    let mut stream = common::tcp_connect(gw.ws_addr);
    let head = format!("GET /ws HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "a".repeat(600));
    common::write_all(&mut stream, head.as_bytes());
    let mut response = String::new();
    let _ = std::io::Read::read_to_string(&mut stream, &mut response);
    assert!(response.starts_with("HTTP/1.1 431"), "{response:?}");
}
