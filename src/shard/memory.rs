//! The process's memory as `/healthz` reports it: resident set size, and what the allocator holds (live heap
//! against freed memory it keeps), so an operator can tell data held by the gateway from memory held by malloc.

/// Bytes, as the kernel and the allocator see them. `None` where the platform does not say.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryUsage {
    /// Resident set size (`/proc/self/statm`).
    pub rss: Option<u64>,
    /// Heap bytes in use by the program (glibc `mallinfo2`: `uordblks + hblkhd`).
    pub heap_live: Option<u64>,
    /// Freed heap bytes the allocator keeps for reuse (`fordblks`); part of them may still count in RSS.
    pub heap_free: Option<u64>,
}

pub fn usage() -> MemoryUsage {
    let (heap_live, heap_free) = heap();
    MemoryUsage { rss: rss(), heap_live, heap_free }
}

fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page).ok().map(|p| pages * p)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap() -> (Option<u64>, Option<u64>) {
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct; it locks each arena while it sums it.
    let info = unsafe { libc::mallinfo2() };
    (Some((info.uordblks + info.hblkhd) as u64), Some(info.fordblks as u64))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap() -> (Option<u64>, Option<u64>) {
    (None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_rss_and_sees_a_large_allocation() {
        assert!(usage().rss.is_some_and(|r| r > 0));
        let big = std::hint::black_box(vec![1u8; 32 << 20]);
        // Other tests allocate and free concurrently: only what this one holds is certain.
        if let Some(live) = usage().heap_live {
            assert!(live >= 32 << 20, "heap_live {live} while 32 MiB are held");
        }
        drop(big);
    }
}
