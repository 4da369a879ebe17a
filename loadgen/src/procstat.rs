//! What the kernel says about processes: CPU time and resident memory from `/proc`, and the open-files limit.
//! Linux only, like the rest of the load generator.

use std::io;

/// Clock ticks per second for `/proc/PID/stat` times.
fn ticks_per_s() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// utime + stime of process `pid` (all its threads), in nanoseconds.
pub fn cpu_ns(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_cpu_ticks(&stat)
        .map(|ticks| ticks * (1_000_000_000 / ticks_per_s()))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("cannot parse /proc/{pid}/stat")))
}

/// utime + stime (fields 14 and 15) from the text of `/proc/PID/stat`; the command name (field 2) may contain
/// spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state); utime is field 14.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vmrss(&status)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no VmRSS in /proc/{pid}/status")))
}

pub fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Sum of [`cpu_ns`] over `pids`; `None` if any cannot be read (a process exited).
pub fn total_cpu_ns(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|&p| cpu_ns(p).ok()).sum()
}

/// Sum of [`rss_bytes`] over `pids`.
pub fn total_rss_bytes(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|&p| rss_bytes(p).ok()).sum()
}

/// CPU time this process has used so far (all threads), from `getrusage(RUSAGE_SELF)`, in nanoseconds.
pub fn self_cpu_ns() -> u64 {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage into memory we own.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The open-files limit `(soft, hard)`.
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into memory we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Raises the soft open-files limit to the hard one; returns the new soft limit.
pub fn raise_nofile_to_hard() -> io::Result<u64> {
    let (soft, hard) = nofile_limit()?;
    if soft < hard {
        let lim = libc::rlimit { rlim_cur: hard, rlim_max: hard };
        // SAFETY: setrlimit only reads the struct; raising soft up to hard needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(hard)
}

/// Descriptors a process needs beyond one per connection (stdio, epoll, timerfd, waker, pipes, libraries).
pub const FD_RESERVE: u64 = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_the_name() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194304 100 0 0 0 250 75 0 0 20 0 1 0 100 1000 10";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn vmrss_in_bytes() {
        assert_eq!(parse_vmrss("Name:\tx\nVmRSS:\t    2048 kB\nVmSwap: 0 kB\n"), Some(2048 * 1024));
        assert_eq!(parse_vmrss("Name:\tx\n"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 0);
        cpu_ns(me).unwrap();
        assert!(nofile_limit().unwrap().0 > 0);
    }
}
