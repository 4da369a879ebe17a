//! The provided-buffer ring of one loop thread: `entries` receive buffers of `buf_size` bytes the kernel picks
//! from for multishot receives, and the descriptor ring through which they are handed back.
//!
//! Lifetime rule: a buffer id belongs to the kernel from the moment its descriptor is published (tail store)
//! until the completion that names it is reaped; then to the loop only while that completion is handled; then
//! it is pushed back. Every id is therefore always either in the ring or held by exactly one completion.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

/// One anonymous mapping: `entries` 16-byte descriptors (page-aligned, as the kernel requires), then the
/// buffers.
pub struct BufRing {
    base: NonNull<u8>,
    map_len: usize,
    ring_bytes: usize,
    entries: u16,
    buf_size: u32,
    /// Tail as the loop sees it; published to the kernel by [`BufRing::publish`].
    local_tail: u16,
    /// Ids given back since the last publish (debug check: no id is pushed twice).
    #[cfg(debug_assertions)]
    held: Vec<bool>,
}

impl BufRing {
    /// Maps the memory, fills every descriptor and registers the ring as buffer group `bgid`.
    /// `entries` must be a power of two up to 32768.
    pub fn register(submitter: &Submitter<'_>, entries: u16, buf_size: u32, bgid: u16) -> io::Result<Self> {
        if !entries.is_power_of_two() || entries > 32768 || buf_size == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "buffer ring: entries must be a power of two"));
        }
        let page = 4096usize;
        let ring_bytes = (usize::from(entries) * std::mem::size_of::<BufRingEntry>()).next_multiple_of(page);
        let map_len = ring_bytes + usize::from(entries) * buf_size as usize;
        // SAFETY: an anonymous private mapping with no address hint touches no existing memory.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `ptr` is the mapping just made, `map_len` long; keeping it out of a forked child's address
        // space avoids copy-on-write of memory the kernel writes into.
        unsafe { libc::madvise(ptr, map_len, libc::MADV_DONTFORK) };
        let base = NonNull::new(ptr.cast::<u8>()).expect("mmap never returns null on success");
        let mut ring = Self {
            base,
            map_len,
            ring_bytes,
            entries,
            buf_size,
            local_tail: 0,
            #[cfg(debug_assertions)]
            held: vec![true; usize::from(entries)],
        };
        for bid in 0..entries {
            ring.push(bid);
        }
        ring.publish();
        // SAFETY: the descriptor ring is page-aligned, `entries` long, and stays mapped for the life of the
        // process (see Drop), so the kernel may read it and write the buffers it names for as long as the ring
        // is registered.
        let registered = unsafe { submitter.register_buf_ring_with_flags(base.as_ptr() as u64, entries, bgid, 0) };
        if let Err(e) = registered {
            // SAFETY: not registered, so nothing but us refers to the mapping.
            unsafe { libc::munmap(ptr, map_len) };
            return Err(e);
        }
        Ok(ring)
    }

    /// Takes buffer `bid`, which a completion named, with the `len` bytes the kernel filled, to be handled in
    /// place and then given back with [`BufRing::push`].
    pub fn take(&mut self, bid: u16, len: usize) -> &mut [u8] {
        assert!(bid < self.entries && len <= self.buf_size as usize, "buffer id or length out of range");
        #[cfg(debug_assertions)]
        {
            let held = &mut self.held[usize::from(bid)];
            debug_assert!(!*held, "completion names buffer {bid}, which the loop already holds");
            *held = true;
        }
        let offset = self.ring_bytes + usize::from(bid) * self.buf_size as usize;
        // SAFETY: in bounds of the mapping (checked above); the kernel finished writing it (its completion was
        // reaped) and will not touch it again until it is pushed back, and the returned borrow of `self` ends
        // before any push, so this is the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(offset), len) }
    }

    /// Gives buffer `bid` back (visible to the kernel after the next [`BufRing::publish`]).
    pub fn push(&mut self, bid: u16) {
        #[cfg(debug_assertions)]
        {
            let held = &mut self.held[usize::from(bid)];
            debug_assert!(*held, "buffer {bid} pushed back twice");
            *held = false;
        }
        let slot = usize::from(self.local_tail & (self.entries - 1));
        let addr = self.ring_bytes + usize::from(bid) * self.buf_size as usize;
        // SAFETY: `slot < entries`, inside the descriptor area; the kernel reads only descriptors before the
        // published tail, and this one is at or after it. Only the addr/len/bid fields are written: slot 0's
        // `resv` is the shared tail and must not be overwritten.
        let entry = unsafe { &mut *self.base.as_ptr().cast::<BufRingEntry>().add(slot) };
        // SAFETY: `addr` is inside the mapping.
        entry.set_addr(unsafe { self.base.as_ptr().add(addr) } as u64);
        entry.set_len(self.buf_size);
        entry.set_bid(bid);
        self.local_tail = self.local_tail.wrapping_add(1);
    }

    /// Makes pushed buffers visible to the kernel.
    pub fn publish(&mut self) {
        // SAFETY: the base is the first descriptor of a live, page-aligned ring, as `BufRingEntry::tail` needs.
        let tail = unsafe { BufRingEntry::tail(self.base.as_ptr().cast::<BufRingEntry>()) };
        // SAFETY: the tail is a u16 inside the mapping, aligned (offset 14 of a 16-aligned entry) and only ever
        // accessed atomically by us and the kernel. Release: the descriptors written before it are seen first.
        unsafe { AtomicU16::from_ptr(tail.cast_mut()) }.store(self.local_tail, Ordering::Release);
    }

    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// Bytes of memory the ring holds (fixed per loop thread, not per connection).
    pub fn mapped_bytes(&self) -> usize {
        self.map_len
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // The mapping is deliberately not unmapped: the ring is dropped only when its loop thread ends, and the
        // kernel may still be finishing cancelled receives into it while the io_uring instance is torn down
        // asynchronously. The process is exiting; the memory goes with it.
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    use io_uring::types::{Fd, SubmitArgs, Timespec};
    use io_uring::{cqueue, opcode, IoUring};

    use super::*;

    /// Many cycles through a 4-buffer ring: every byte written arrives once, in order, and every buffer comes back.
    /// A ring left dry ends the receive with ENOBUFS and loses nothing: re-arming picks the bytes up.
    #[test]
    fn buffers_cycle_and_a_dry_ring_loses_nothing() {
        let Ok(mut ring) = IoUring::new(64) else {
            eprintln!("SKIP: io_uring unavailable");
            return;
        };
        let Ok(mut bufs) = BufRing::register(&ring.submitter(), 4, 64, 7) else {
            eprintln!("SKIP: provided-buffer rings unavailable");
            return;
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let arm = |ring: &mut IoUring| {
            let recv = opcode::RecvMulti::new(Fd(server.as_raw_fd()), 7).build().user_data(1);
            // SAFETY: the receive writes only into the registered ring, which outlives it (never unmapped).
            unsafe { ring.submission().push(&recv).unwrap() };
        };
        arm(&mut ring);
        let sent: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (mut received, mut enobufs, mut written) = (Vec::new(), 0, 0);
        while received.len() < sent.len() {
            if written < sent.len() {
                let n = (sent.len() - written).min(1000);
                client.write_all(&sent[written..written + n]).unwrap();
                written += n;
            }
            let ts = Timespec::new().nsec(50_000_000);
            let _ = ring.submitter().submit_with_args(1, &SubmitArgs::new().timespec(&ts));
            let cqes: Vec<_> = ring.completion().collect();
            let mut rearm = false;
            for cqe in cqes {
                if let Some(bid) = cqueue::buffer_select(cqe.flags()) {
                    received.extend_from_slice(bufs.take(bid, cqe.result() as usize));
                    bufs.push(bid);
                }
                if !cqueue::more(cqe.flags()) {
                    assert!(cqe.result() > 0 || cqe.result() == -libc::ENOBUFS, "receive ended: {}", cqe.result());
                    enobufs += usize::from(cqe.result() == -libc::ENOBUFS);
                    rearm = true;
                }
            }
            bufs.publish();
            if rearm {
                arm(&mut ring);
            }
        }
        assert_eq!(received, sent, "bytes lost, duplicated or reordered");
        assert!(enobufs > 0, "1,000-byte writes into 4 × 64-byte buffers must run the ring dry at least once");
    }
}
