//! Shared by the loadgen's integration tests: the real `wsgate` binary started on loopback, and the real
//! `wsgate-loadgen` binary run against it with its JSON report read back.
//!
//! Finding `wsgate`: `CARGO_BIN_EXE_*` only names binaries of this package, so the tests ask cargo to build
//! `wsgate` into the same target directory and profile as `wsgate-loadgen` (`$CARGO build -p wsgate --bin
//! wsgate`, a no-op when fresh; cargo holds no build lock while tests run) and run it from beside the
//! loadgen binary. If that build fails (no cargo at hand), an existing binary there is used.

#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;

pub const LOADGEN: &str = env!("CARGO_BIN_EXE_wsgate-loadgen");

pub fn wsgate_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let profile_dir = Path::new(LOADGEN).parent().expect("binary has a directory");
        let target_dir = profile_dir.parent().expect("profile directory has a parent");
        let bin = profile_dir.join("wsgate");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev".to_string(),
            Some(other) => other.to_string(),
            None => "dev".to_string(),
        };
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "wsgate", "--bin", "wsgate", "--profile", &profile])
            .env("CARGO_TARGET_DIR", target_dir)
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status();
        match status {
            Ok(s) if s.success() => {}
            other => eprintln!("cargo build -p wsgate failed ({other:?}); using {} if it exists", bin.display()),
        }
        assert!(bin.exists(), "no wsgate binary at {}", bin.display());
        bin
    })
}

pub fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("wsgate-loadgen-test-{}-{name}", std::process::id()))
}

/// A running gateway, killed on drop.
pub struct Gateway {
    pub child: Child,
    pub ws_url: String,
    pub ingest: Option<String>,
    config: Option<PathBuf>,
}

impl Gateway {
    /// `wsgate --listen 127.0.0.1:0 --threads 1 EXTRA…`; waits for the addresses it prints.
    pub fn start(extra: &[&str]) -> Gateway {
        let mut child = Command::new(wsgate_binary())
            .args(["--listen", "127.0.0.1:0", "--threads", "1", "--log-level", "warn"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start wsgate");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let want_ingest = extra.contains(&"--ingest");
        let (mut ws_url, mut ingest) = (None, None);
        while ws_url.is_none() || (want_ingest && ingest.is_none()) {
            let line = lines.next().expect("wsgate printed its addresses").expect("utf-8 line");
            if let Some(url) = line.strip_prefix("wsgate: listening on ").and_then(|rest| rest.split(' ').next()) {
                ws_url = Some(url.trim().to_string());
            } else if let Some(addr) = line.strip_prefix("wsgate: ingest listening on ") {
                ingest = Some(addr.trim().to_string());
            }
        }
        Gateway { child, ws_url: ws_url.expect("set"), ingest, config: None }
    }

    /// [`Gateway::start`] with a TOML config file holding `toml`.
    pub fn start_with_config(name: &str, toml: &str, extra: &[&str]) -> Gateway {
        let path = temp_path(&format!("{name}.toml"));
        std::fs::write(&path, toml).expect("write the config file");
        let mut args = vec!["--config", path.to_str().expect("UTF-8 temp path")];
        args.extend_from_slice(extra);
        let mut gw = Gateway::start(&args);
        gw.config = Some(path);
        gw
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(p) = &self.config {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A `wsgate-loadgen feed` process, killed on drop.
pub struct Feed(Child);

impl Feed {
    /// `feed --connect ADDR ARGS…`: publishes into a gateway's `--ingest` port.
    pub fn connect(addr: &str, args: &[&str]) -> Feed {
        let child = Command::new(LOADGEN)
            .args(["feed", "--connect", addr])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the feed");
        Feed(child)
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `wsgate-loadgen ARGS… --quiet --json F --hgrm F`; returns its exit status, the JSON report and the
/// `.hgrm` text (the run's summary goes to the test's stderr).
pub fn run_loadgen_status(args: &[&str]) -> (ExitStatus, serde_json::Value, String) {
    let tag = format!("{}-{}", args[0], std::thread::current().name().unwrap_or("main").replace("::", "-"));
    let json = temp_path(&format!("{tag}.json"));
    let hgrm = temp_path(&format!("{tag}.hgrm"));
    let out = Command::new(LOADGEN)
        .args(args)
        .args(["--quiet", "--json", json.to_str().unwrap(), "--hgrm", hgrm.to_str().unwrap()])
        .output()
        .expect("run wsgate-loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = match std::fs::read(&json) {
        Ok(bytes) => serde_json::from_slice(&bytes).expect("a JSON report"),
        Err(e) => panic!("no report ({e}); loadgen exited with {}", out.status),
    };
    let hgrm_text = std::fs::read_to_string(&hgrm).unwrap_or_default();
    let _ = std::fs::remove_file(json);
    let _ = std::fs::remove_file(hgrm);
    (out.status, report, hgrm_text)
}

/// [`run_loadgen_status`] for a run that must succeed.
pub fn run_loadgen(args: &[&str]) -> (serde_json::Value, String) {
    let (status, report, hgrm) = run_loadgen_status(args);
    assert!(status.success(), "loadgen exited with {status}: {report:#}");
    (report, hgrm)
}

/// An integer field of a report.
pub fn u(report: &serde_json::Value, key: &str) -> u64 {
    report[key].as_u64().unwrap_or_else(|| panic!("{key} missing or not an integer in {report:#}"))
}
