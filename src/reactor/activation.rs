//! systemd socket activation (`sd_listen_fds(3)`): listening sockets passed by the service manager as
//! descriptors 3, 4, … with `LISTEN_FDS=N` and `LISTEN_PID` (our pid) in the environment, and optional names in
//! `LISTEN_FDNAMES` (`FileDescriptorName=` in the `.socket` unit).
//!
//! A descriptor named `ingest` is the publisher listener; every other one is a WebSocket/HTTP listener. The
//! parsing is pure ([`parse`]); [`take`] reads the environment once, at start, before any thread is spawned, and
//! removes the variables so that nothing this process starts inherits them.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The first passed descriptor (`SD_LISTEN_FDS_START`).
pub const FIRST_FD: RawFd = 3;
/// The name that marks the ingest listener.
pub const INGEST_NAME: &str = "ingest";
/// More descriptors than this is a configuration error, not a plan.
const MAX_LISTEN_FDS: usize = 1024;

/// What the service manager passed.
#[derive(Debug, Default)]
pub struct Activation {
    pub listeners: Vec<OwnedFd>,
    pub ingest: Option<OwnedFd>,
}

/// Passed descriptors, each with its name (if named).
pub type Passed = Vec<(RawFd, Option<String>)>;

/// Which descriptors are meant for us: `Ok(None)` when the environment passes none to this process (no
/// `LISTEN_FDS`, or a `LISTEN_PID` of another process); otherwise each descriptor with its name (if named).
pub fn parse(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    names: Option<&str>,
    our_pid: u32,
) -> Result<Option<Passed>, String> {
    let Some(fds) = listen_fds else { return Ok(None) };
    match listen_pid.map(|p| p.trim().parse::<u32>()) {
        Some(Ok(pid)) if pid == our_pid => {}
        // Meant for another process (e.g. a wrapper that did not exec): not ours to take.
        Some(Ok(_)) | None => return Ok(None),
        Some(Err(_)) => return Err(format!("LISTEN_PID {:?} is not a process id", listen_pid.unwrap_or(""))),
    }
    let n: usize = fds.trim().parse().map_err(|_| format!("LISTEN_FDS {fds:?} is not a number"))?;
    if n > MAX_LISTEN_FDS {
        return Err(format!("LISTEN_FDS {n}: more than {MAX_LISTEN_FDS}"));
    }
    let names: Vec<Option<String>> = match names {
        Some(list) => list.split(':').map(|s| (!s.is_empty()).then(|| s.to_string())).collect(),
        None => Vec::new(),
    };
    Ok(Some((0..n).map(|i| (FIRST_FD + i as RawFd, names.get(i).cloned().flatten())).collect()))
}

/// Takes the descriptors systemd passed to this process, if any, and removes `LISTEN_*` from the environment.
/// Must run before any other thread is started (it changes the environment).
pub fn take() -> Result<Activation, String> {
    let var = |k: &str| std::env::var(k).ok();
    let parsed = parse(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    )?;
    let Some(fds) = parsed else { return Ok(Activation::default()) };
    for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(k);
    }
    let mut out = Activation::default();
    for (fd, name) in fds {
        // SAFETY: fcntl(F_GETFD) only asks whether `fd` is open; it changes nothing.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(format!("LISTEN_FDS names descriptor {fd}, which is not open"));
        }
        // SAFETY: the service manager passed `fd` to this process for it to own (sd_listen_fds(3)), it is open
        // (checked above), and nothing else in this process has claimed it (this runs once, at start).
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        match name.as_deref() {
            Some(INGEST_NAME) if out.ingest.is_none() => out.ingest = Some(owned),
            Some(INGEST_NAME) => return Err("more than one descriptor named \"ingest\"".into()),
            _ => out.listeners.push(owned),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_descriptors_meant_for_this_process_are_taken() {
        assert_eq!(parse(None, None, None, 7), Ok(None));
        assert_eq!(parse(Some("8"), Some("1"), None, 7), Ok(None), "another process's");
        assert_eq!(parse(None, Some("1"), None, 7), Ok(None), "no LISTEN_PID: not ours");
        assert_eq!(parse(Some("7"), Some("2"), None, 7), Ok(Some(vec![(3, None), (4, None)])));
        assert_eq!(parse(Some("7"), Some("0"), None, 7), Ok(Some(vec![])));
    }

    #[test]
    fn names_mark_the_ingest_listener() {
        let got = parse(Some("7"), Some("3"), Some("http::ingest"), 7).unwrap().unwrap();
        assert_eq!(got, vec![(3, Some("http".into())), (4, None), (5, Some("ingest".into()))]);
        // Fewer names than descriptors: the rest are unnamed.
        let got = parse(Some("7"), Some("2"), Some("ws"), 7).unwrap().unwrap();
        assert_eq!(got, vec![(3, Some("ws".into())), (4, None)]);
    }

    #[test]
    fn malformed_values_are_errors_that_name_the_variable() {
        assert!(parse(Some("x"), Some("1"), None, 7).unwrap_err().contains("LISTEN_PID"));
        assert!(parse(Some("7"), Some("one"), None, 7).unwrap_err().contains("LISTEN_FDS"));
        assert!(parse(Some("7"), Some("99999"), None, 7).unwrap_err().contains("LISTEN_FDS"));
    }
}
