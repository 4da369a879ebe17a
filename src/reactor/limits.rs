//! The open-files limit: a gateway holds one descriptor per connection.

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. Returns the resulting soft limit and logs a warning when
/// it is below `wanted` (the configured maximum connections plus a margin).
pub fn raise_nofile_limit(wanted: u64) -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the rlimit struct we own; RLIMIT_NOFILE is a valid resource.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "getrlimit(RLIMIT_NOFILE) failed");
        return 0;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit only reads the struct; raising the soft limit up to the hard limit is always allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        } else {
            tracing::warn!(error = %std::io::Error::last_os_error(), "could not raise the open-files limit");
        }
    }
    let soft: u64 = lim.rlim_cur;
    if soft < wanted {
        tracing::warn!(
            open_files_limit = soft,
            wanted,
            "open-files limit is below max_connections: accepts will fail with EMFILE past it \
             (run several processes on the same port, or raise the hard limit)"
        );
    }
    soft
}
