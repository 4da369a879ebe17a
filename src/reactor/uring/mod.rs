//! The io_uring backend. All of the ring's `unsafe` lives in this module (here, `bufring.rs`, `probe.rs`).
//!
//! - Accepting is one multishot accept; receiving is one multishot receive per connection into the loop
//!   thread's provided-buffer ring ([`BufRing`]); a connection has at most one send in flight.
//! - Queued operations go to the kernel in the `io_uring_enter` that also waits (`wait`), and sends also every
//!   `submit_batch` of them mid-pass, so that they leave while the pass is still deciding the rest (measured:
//!   p99 a quarter to a third lower at fan-out, `docs/benchmarks.md`); a full submission queue forces one too.
//! - The ring is `SINGLE_ISSUER | DEFER_TASKRUN` (completion work runs only inside our enter, so it batches and
//!   never interrupts the loop), or `SQPOLL` when asked for.
//!
//! Lifetime rules (the loop keeps its side of them; see `docs/architecture.md`):
//! 1. The bytes of a send stay valid and unmoved until its completion: broadcast chunks are kept by the loop's
//!    trim rule, private bytes are moved into the send slot and handed back with [`Event::Sent`], and a
//!    `sendmsg`'s `msghdr`/`iovec` live in a boxed scratch header that is reused only once the kernel has copied
//!    it (after the submitting enter where the kernel is `SUBMIT_STABLE`, else after the completion).
//! 2. A receive buffer is the loop's only while the completion that named it is handled; then it goes back.
//! 3. A socket is closed only when nothing is in flight on it: the loop cancels first and waits for the ends.

mod bufring;
mod probe;
mod teardown;
mod token;

use std::collections::VecDeque;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use io_uring::types::{CancelBuilder, Fd, Fixed, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};

use super::{Event, Handler, IoStats, Outgoing, Reactor, Sending, Waker};
use crate::conn::ConnKey;
pub use bufring::BufRing;
pub use probe::probe;
use token::Op;

/// Slices in one `sendmsg`: the rest of a chunk, private bytes, then newer chunks (as many as epoll's, so that a
/// subscriber a pass behind — a pass spans several feed batches at high rates — catches up in one send).
const MAX_IOV: usize = 64;
/// Buffer group id of the receive buffers (one group per ring).
const BGID: u16 = 0;
/// Completions copied out of the queue at a time.
const CQE_BATCH: usize = 256;

/// Settings of the io_uring backend (`uring_*` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UringConfig {
    /// Submission queue entries (the completion queue gets four times as many).
    pub sq_entries: u32,
    /// Provided receive buffers per loop thread (power of two, at most 32768).
    pub recv_buffers: u16,
    /// Bytes per receive buffer.
    pub recv_buffer_size: u32,
    /// Sends with several slices or private bytes that may be in flight at once per loop thread.
    pub send_slots: u32,
    /// Let a kernel thread poll the submission queue (burns a core; excludes `DEFER_TASKRUN`).
    pub sqpoll: bool,
    /// Register each connection's socket with the ring (fixed files), saving a file lookup per operation.
    pub fixed_files: bool,
    /// Hand queued sends to the kernel every this many, mid-pass, instead of only in the pass's one wait
    /// (0: only when the submission queue is full). Sends then leave while the loop is still deciding the rest,
    /// as they do on epoll, instead of a whole pass later.
    pub submit_batch: u32,
}

impl Default for UringConfig {
    fn default() -> Self {
        Self {
            sq_entries: 4096,
            recv_buffers: 1024,
            recv_buffer_size: 4096,
            send_slots: 32768,
            sqpoll: false,
            fixed_files: false,
            submit_batch: 64,
        }
    }
}

/// Builds a ring with the flags the backend runs with (also used by the probe).
fn build_ring(cfg: &UringConfig, sq_entries: u32) -> io::Result<IoUring> {
    let mut builder = IoUring::builder();
    builder.setup_cqsize(sq_entries.saturating_mul(4)).setup_submit_all().setup_single_issuer().dontfork();
    if cfg.sqpoll {
        builder.setup_sqpoll(1000);
    } else {
        builder.setup_defer_taskrun();
    }
    builder.build(sq_entries)
}

/// A send in flight that needs more than the bytes it sends: its private bytes (and, until the kernel has copied
/// it, a scratch header). Slots are made on first need, up to `uring_send_slots`, and reused after completion.
struct SendSlot {
    key: ConnKey,
    private: Vec<u8>,
    private_from: usize,
    /// The scratch header this send's `sendmsg` points to while it must be kept until the completion, else
    /// [`NO_SCRATCH`].
    scratch: u32,
    /// Times the slot was taken: part of the send's `user_data` ([`token::slot`]).
    uses: u32,
}

const NO_SCRATCH: u32 = u32::MAX;

// Slots stay allocated once made (up to one per connection with a send in flight): keep them small.
const _: () = assert!(std::mem::size_of::<SendSlot>() <= 48);

/// A `sendmsg`'s header and slices. Boxed, so it never moves; the kernel reads it when the operation is prepared
/// (at submission), or later under SQPOLL.
struct MsgScratch {
    msg: libc::msghdr,
    iov: [libc::iovec; MAX_IOV],
}

pub struct UringReactor {
    ring: IoUring,
    bufs: BufRing,
    listener: Option<TcpListener>,
    /// Accepting is wanted (off while paused after `EMFILE`, and after shutdown).
    accepting: bool,
    /// A multishot accept is in flight.
    accept_armed: bool,
    /// Kept for the eventfd it owns; the ring reads that descriptor.
    waker: Arc<Waker>,
    /// Target of the waker's read: leaked, because a read may still be in flight when the ring is dropped.
    wake_buf: *mut u64,
    wake_armed: bool,
    slots: Vec<SendSlot>,
    free_slots: Vec<u32>,
    max_slots: usize,
    // Boxed on purpose: the kernel holds pointers into a header, which must not move when the Vec grows.
    #[allow(clippy::vec_box)]
    scratch: Vec<Box<MsgScratch>>,
    free_scratch: Vec<u32>,
    /// Scratch headers used by entries not yet submitted; free again after the next submission (when stable).
    unsubmitted_scratch: Vec<u32>,
    /// The kernel copies what an entry points to when it takes the entry (`IORING_FEAT_SUBMIT_STABLE`, and no
    /// SQPOLL thread taking entries later): scratch headers can be reused right after a submission.
    submit_stable: bool,
    /// Connections whose multishot receive ended without an error (e.g. `ENOBUFS`): re-armed in the next wait.
    rearm: VecDeque<ConnKey>,
    /// Operations that found the submission queue full even after a flush: pushed first in the next wait.
    backlog: VecDeque<squeue::Entry>,
    /// Reused buffer for a batch of completions.
    cqes: Vec<cqueue::Entry>,
    /// Fixed-file table size (0: plain descriptors). Connection `index < fixed` uses table slot `index`.
    fixed: u32,
    /// Sends queued since the last submission, and how many trigger one (0: never mid-pass).
    unsubmitted_sends: u32,
    submit_batch: u32,
    stats: Arc<IoStats>,
}

/// Builds the same operation against a fixed-file slot or a plain descriptor.
macro_rules! on_fd {
    ($self:ident, $key:expr, $fd:expr, |$target:ident| $build:expr) => {
        if ($key.index() as u64) < u64::from($self.fixed) {
            let $target = Fixed($key.index() as u32);
            $build
        } else {
            let $target = Fd($fd);
            $build
        }
    };
}

impl UringReactor {
    /// Must run on the loop thread that will use it (`SINGLE_ISSUER`). `listener` and `waker` must be blocking.
    pub fn new(
        cfg: &UringConfig,
        listener: TcpListener,
        waker: Arc<Waker>,
        max_connections: usize,
        stats: Arc<IoStats>,
    ) -> io::Result<Self> {
        let ring = build_ring(cfg, cfg.sq_entries)?;
        let submit_stable = ring.params().is_feature_submit_stable() && !cfg.sqpoll;
        let bufs = BufRing::register(&ring.submitter(), cfg.recv_buffers, cfg.recv_buffer_size, BGID)?;
        let fixed = if cfg.fixed_files {
            // The table cannot exceed the open-files limit; connections past it use plain descriptors.
            let table = max_connections.min(open_files_limit()).min(u32::MAX as usize) as u32;
            ring.submitter().register_files_sparse(table)?;
            table
        } else {
            0
        };
        Ok(Self {
            ring,
            bufs,
            listener: Some(listener),
            accepting: true,
            accept_armed: false,
            waker,
            wake_buf: Box::into_raw(Box::new(0u64)),
            wake_armed: false,
            slots: Vec::new(),
            free_slots: Vec::new(),
            max_slots: cfg.send_slots.max(1) as usize,
            scratch: Vec::new(),
            free_scratch: Vec::new(),
            unsubmitted_scratch: Vec::new(),
            submit_stable,
            rearm: VecDeque::new(),
            backlog: VecDeque::new(),
            cqes: Vec::with_capacity(CQE_BATCH),
            fixed,
            unsubmitted_sends: 0,
            submit_batch: cfg.submit_batch,
            stats,
        })
    }

    /// Bytes this backend holds per loop thread whatever the number of connections (buffer ring, send slots made).
    pub fn fixed_bytes(&self) -> usize {
        self.bufs.mapped_bytes()
            + self.slots.len() * std::mem::size_of::<SendSlot>()
            + self.scratch.len() * std::mem::size_of::<MsgScratch>()
    }

    /// Queues `entry`; when the submission queue is full, hands what is queued to the kernel first. `false`:
    /// still no room (the kernel pushes back while its completion queue overflows).
    ///
    /// # Safety
    /// Whatever `entry` points to must stay valid until its completion.
    unsafe fn try_push(&mut self, entry: &squeue::Entry) -> bool {
        // SAFETY: the caller keeps the entry's memory valid until its completion.
        if unsafe { self.ring.submission().push(entry) }.is_ok() {
            return true;
        }
        IoStats::bump(&self.stats.midpass_submits);
        if let Err(e) = self.ring.submit() {
            tracing::debug!(error = %e, "mid-pass submit failed");
            return false;
        }
        self.submitted();
        // SAFETY: as above.
        unsafe { self.ring.submission().push(entry) }.is_ok()
    }

    /// Queues an operation that must not be lost (cancel, re-arm): if there is no room now, it waits in the
    /// backlog for the next pass.
    ///
    /// # Safety
    /// As [`UringReactor::try_push`].
    unsafe fn push(&mut self, entry: squeue::Entry) {
        // Behind a backlog, keep the order: a cancel must not overtake the receive it is meant to end.
        // SAFETY: forwarded from the caller.
        if !self.backlog.is_empty() || !unsafe { self.try_push(&entry) } {
            self.backlog.push_back(entry);
        }
    }

    /// A free send slot: a reused one, or a new one while under the limit.
    fn free_slot(&mut self) -> Option<u32> {
        if let Some(index) = self.free_slots.pop() {
            return Some(index);
        }
        if self.slots.len() >= self.max_slots {
            return None;
        }
        self.slots.push(SendSlot {
            key: ConnKey(0),
            private: Vec::new(),
            private_from: 0,
            scratch: NO_SCRATCH,
            uses: 0,
        });
        Some(self.slots.len() as u32 - 1)
    }

    /// A free scratch header (made on first need; at most one per entry not yet submitted, or per `sendmsg` in
    /// flight when the kernel is not `SUBMIT_STABLE`).
    fn free_scratch(&mut self) -> u32 {
        if let Some(index) = self.free_scratch.pop() {
            return index;
        }
        self.scratch.push(Box::new(MsgScratch {
            // SAFETY: msghdr is plain C data (pointers and integers); all zeroes is a valid, empty header.
            msg: unsafe { std::mem::zeroed() },
            iov: [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX_IOV],
        }));
        self.scratch.len() as u32 - 1
    }

    /// After a submission that took every queued entry: the kernel has copied their headers.
    fn submitted(&mut self) {
        if self.submit_stable && self.ring.submission().is_empty() {
            self.free_scratch.append(&mut self.unsubmitted_scratch);
        }
    }

    /// Counts a queued send; every `submit_batch` of them go to the kernel at once, mid-pass.
    fn sent_one(&mut self) {
        self.unsubmitted_sends += 1;
        if self.submit_batch > 0 && self.unsubmitted_sends >= self.submit_batch {
            self.unsubmitted_sends = 0;
            IoStats::bump(&self.stats.midpass_submits);
            match self.ring.submit() {
                Ok(_) => self.submitted(),
                Err(e) => tracing::debug!(error = %e, "mid-pass submit failed: the sends go with the next wait"),
            }
        }
    }

    fn arm_recv(&mut self, key: ConnKey, fd: RawFd) {
        let recv = on_fd!(self, key, fd, |t| opcode::RecvMulti::new(t, BGID).build());
        // SAFETY: a multishot receive points at no memory of ours: the kernel picks buffers from the ring, which
        // stays mapped for the life of the process.
        unsafe { self.push(recv.user_data(token::conn(Op::Recv, key))) };
    }

    /// Arms what the last pass left unarmed: the accept, the waker, backlogged entries, ended receives.
    fn arm(&mut self, h: &mut impl Handler) {
        while let Some(entry) = self.backlog.pop_front() {
            // SAFETY: entries in the backlog were built under the same rules as when first pushed.
            if !unsafe { self.try_push(&entry) } {
                self.backlog.push_front(entry);
                break;
            }
        }
        if self.accepting && !self.accept_armed {
            if let Some(listener) = &self.listener {
                let accept = opcode::AcceptMulti::new(Fd(listener.as_raw_fd())).flags(libc::SOCK_CLOEXEC).build();
                // SAFETY: a multishot accept points at no memory (no address out-parameters); the listener stays
                // open until its final completion (see `on_accept`).
                unsafe { self.push(accept.user_data(token::encode(Op::Accept, 0))) };
                self.accept_armed = true;
            }
        }
        if !self.wake_armed {
            let read = opcode::Read::new(Fd(self.waker.as_raw_fd()), self.wake_buf.cast(), 8).build();
            // SAFETY: `wake_buf` is a leaked 8-byte allocation, valid for the life of the process; the eventfd is
            // owned by `self.waker`, which lives as long as the ring.
            unsafe { self.push(read.user_data(token::encode(Op::Wake, 0))) };
            self.wake_armed = true;
        }
        // Re-arm at most as many receives as there are buffers, so a dry ring does not turn into a storm of
        // ENOBUFS completions; the rest wait a pass (their bytes wait in the socket).
        for _ in 0..self.rearm.len().min(usize::from(self.bufs.entries())) {
            let Some(key) = self.rearm.pop_front() else { break };
            match h.input_fd(key) {
                Some(fd) => self.arm_recv(key, fd),
                None => {
                    h.on_event(Event::RecvEnded { key, err: None });
                }
            }
        }
    }

    fn on_accept(&mut self, res: i32, flags: u32, h: &mut impl Handler) {
        if res >= 0 {
            // SAFETY: a successful accept completion carries a new descriptor that nothing else owns.
            h.on_event(Event::Accepted(unsafe { OwnedFd::from_raw_fd(res) }));
        }
        if cqueue::more(flags) {
            return;
        }
        self.accept_armed = false;
        if !self.accepting {
            // Shutdown cancelled it: the listener has no operation left and can close.
            self.listener = None;
        } else if res < 0 && -res != libc::ECANCELED {
            let err = io::Error::from_raw_os_error(-res);
            if super::is_fd_exhaustion(&err) {
                self.accepting = false;
                h.on_event(Event::AcceptStopped(err));
            } else {
                tracing::debug!(error = %err, "multishot accept ended: re-armed");
            }
        }
    }

    fn on_recv(&mut self, key: ConnKey, res: i32, flags: u32, h: &mut impl Handler) {
        if let Some(bid) = cqueue::buffer_select(flags) {
            let data = self.bufs.take(bid, res.max(0) as usize);
            if !data.is_empty() {
                IoStats::add(&self.stats.received_bytes, data.len() as u64);
                // A multishot receive cannot be paused: what the loop does not want, it discards.
                h.on_event(Event::Received { key, data });
            }
            self.bufs.push(bid);
        }
        if cqueue::more(flags) {
            return;
        }
        match res {
            // Ended early without an error, or the buffer ring ran dry: the bytes wait in the socket.
            n if n > 0 => self.rearm.push_back(key),
            n if -n == libc::ENOBUFS => {
                IoStats::bump(&self.stats.recv_enobufs);
                self.rearm.push_back(key);
            }
            0 => {
                h.on_event(Event::RecvEnded { key, err: None });
            }
            n => {
                h.on_event(Event::RecvEnded { key, err: Some(io::Error::from_raw_os_error(-n)) });
            }
        }
    }

    fn reap(&mut self, h: &mut impl Handler) {
        // Completions are copied out in batches: the queue's head is published once per batch, and handlers may
        // use the rest of the reactor meanwhile.
        let mut cqes = std::mem::take(&mut self.cqes);
        loop {
            cqes.clear();
            cqes.extend(self.ring.completion().take(CQE_BATCH));
            if cqes.is_empty() {
                break;
            }
            for cqe in &cqes {
                self.complete(cqe, h);
            }
            self.bufs.publish();
        }
        self.cqes = cqes;
    }

    fn complete(&mut self, cqe: &cqueue::Entry, h: &mut impl Handler) {
        let (res, flags) = (cqe.result(), cqe.flags());
        let Some((op, value)) = token::decode(cqe.user_data()) else {
            debug_assert!(false, "completion with unknown user_data {:#x}", cqe.user_data());
            return;
        };
        let result = || if res >= 0 { Ok(res as usize) } else { Err(io::Error::from_raw_os_error(-res)) };
        if matches!(op, Op::Send | Op::SendSlot) && res > 0 {
            IoStats::add(&self.stats.sent_bytes, res as u64);
        }
        match op {
            Op::Accept => self.on_accept(res, flags, h),
            Op::Recv => self.on_recv(ConnKey(value), res, flags, h),
            Op::Send => {
                let key = ConnKey(value);
                h.on_event(Event::Sent { key, result: result(), private: Vec::new(), private_from: 0 });
            }
            Op::SendSlot => {
                let index = token::slot_index(value);
                let slot = &mut self.slots[index as usize];
                let (key, private, private_from) = (slot.key, std::mem::take(&mut slot.private), slot.private_from);
                let scratch = std::mem::replace(&mut slot.scratch, NO_SCRATCH);
                if scratch != NO_SCRATCH {
                    self.free_scratch.push(scratch);
                }
                self.free_slots.push(index);
                h.on_event(Event::Sent { key, result: result(), private, private_from });
            }
            Op::Wake => self.wake_armed = false,
            Op::Cancel => {}
        }
    }
}

/// How long dropping the reactor waits for the kernel to end operations still in flight.
const DROP_CANCEL_TIMEOUT_SECS: u64 = 1;

impl Drop for UringReactor {
    /// Normally nothing is in flight here: the loop ends each connection's operations before it frees the
    /// connection. A loop that stops early (its wait failed, or shutdown's grace ran out) may still have sends in
    /// flight that point into memory freed right after the reactor (broadcast chunks, slots' private bytes,
    /// scratch headers), and closing the ring only starts the kernel's teardown. So cancel everything
    /// synchronously first (the kernel returns once every matched operation has ended, or at the timeout).
    /// If that cannot be confirmed (`teardown::clean`), the memory the kernel may still read is leaked, not
    /// freed: the slots' private bytes and the scratch headers here, the loop's broadcast chunks by the loop
    /// (told through `IoStats::teardown_unclean`).
    fn drop(&mut self) {
        let timeout = Timespec::new().sec(DROP_CANCEL_TIMEOUT_SECS);
        let result = self.ring.submitter().register_sync_cancel(Some(timeout), CancelBuilder::any());
        if let Err(e) = &result {
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::warn!(error = %e, "could not cancel the operations still in flight at exit");
            }
        }
        if teardown::clean(result.map_err(|e| e.raw_os_error())) {
            tracing::debug!("reactor dropped: nothing in flight");
            return;
        }
        let slots = std::mem::take(&mut self.slots);
        let scratch = std::mem::take(&mut self.scratch);
        let bytes: usize = slots.iter().map(|s| s.private.capacity()).sum::<usize>()
            + scratch.len() * std::mem::size_of::<MsgScratch>();
        tracing::warn!(
            leaked_bytes = bytes,
            "io_uring operations may still be in flight: their buffers are leaked rather than freed"
        );
        self.stats.teardown_unclean.store(1, std::sync::atomic::Ordering::Relaxed);
        std::mem::forget(slots);
        std::mem::forget(scratch);
    }
}

impl Reactor for UringReactor {
    const INLINE: bool = false;
    const MAX_IOV: usize = MAX_IOV;
    const NAME: &'static str = "uring";

    fn accept(&mut self, on: bool) {
        if on {
            self.accepting = self.listener.is_some();
            return;
        }
        self.accepting = false;
        if self.accept_armed {
            let cancel = opcode::AsyncCancel::new(token::encode(Op::Accept, 0)).build();
            // SAFETY: a cancel points at no memory.
            unsafe { self.push(cancel.user_data(token::encode(Op::Cancel, 0))) };
        } else {
            self.listener = None;
        }
    }

    fn attach(&mut self, key: ConnKey, fd: RawFd) -> io::Result<()> {
        if (key.index() as u64) < u64::from(self.fixed) {
            self.ring.submitter().register_files_update(key.index() as u32, &[fd])?;
        }
        self.arm_recv(key, fd);
        Ok(())
    }

    unsafe fn send(&mut self, key: ConnKey, fd: RawFd, out: Outgoing<'_>) -> Sending {
        let private_len = out.private.len() - out.private_from;
        let parts = out.parts().count();
        if parts == 0 {
            return Sending::Done(Ok(0));
        }
        if parts == 1 && private_len == 0 {
            let single = [out.head].into_iter().chain(out.tail.iter().copied()).find(|p| !p.is_empty()).unwrap_or(&[]);
            // The usual fan-out case: one broadcast slice, no memory of ours beyond the bytes themselves.
            let (ptr, len) = (single.as_ptr(), single.len().min(u32::MAX as usize) as u32);
            let send = on_fd!(self, key, fd, |t| opcode::Send::new(t, ptr, len).flags(libc::MSG_NOSIGNAL).build());
            let send = send.user_data(token::conn(Op::Send, key));
            // SAFETY: the caller keeps the broadcast bytes valid and unmoved until the completion (trait contract).
            return if unsafe { self.try_push(&send) } {
                self.sent_one();
                Sending::InFlight(token::conn(Op::Send, key))
            } else {
                IoStats::bump(&self.stats.sends_deferred);
                Sending::Deferred
            };
        }
        let Some(index) = self.free_slot() else {
            IoStats::bump(&self.stats.sends_deferred);
            return Sending::Deferred;
        };
        let scratch_index = (parts > 1).then(|| self.free_scratch());
        let slot = &mut self.slots[index as usize];
        slot.key = key;
        slot.uses = slot.uses.wrapping_add(1);
        slot.private_from = out.private_from;
        // Moving the Vec does not move its heap bytes, which the operation points into.
        slot.private = std::mem::take(out.private);
        let private = &slot.private[slot.private_from..];
        let user_data = token::slot(index, slot.uses);
        let send = match scratch_index {
            None => {
                // Only private bytes (a handshake response, an echo, a pong): a plain send, the slot keeping them.
                let (ptr, len) = (private.as_ptr(), private.len().min(u32::MAX as usize) as u32);
                on_fd!(self, key, fd, |t| opcode::Send::new(t, ptr, len).flags(libc::MSG_NOSIGNAL).build())
            }
            Some(si) => {
                let scratch = &mut self.scratch[si as usize];
                let mut n = 0;
                for part in [out.head, private].into_iter().chain(out.tail.iter().copied()) {
                    if !part.is_empty() && n < MAX_IOV {
                        scratch.iov[n] = libc::iovec { iov_base: part.as_ptr().cast_mut().cast(), iov_len: part.len() };
                        n += 1;
                    }
                }
                scratch.msg.msg_iov = scratch.iov.as_mut_ptr();
                scratch.msg.msg_iovlen = n;
                let msg: *const libc::msghdr = &scratch.msg;
                on_fd!(self, key, fd, |t| opcode::SendMsg::new(t, msg).flags(libc::MSG_NOSIGNAL as u32).build())
            }
        };
        let send = send.user_data(user_data);
        // SAFETY: the msghdr and iovecs live in a boxed scratch header, reused only after the kernel copied it
        // (`submitted`) or after the completion; the private bytes are owned by the slot until the completion;
        // the broadcast bytes are kept by the caller.
        if unsafe { self.try_push(&send) } {
            if let Some(si) = scratch_index {
                if self.submit_stable {
                    self.unsubmitted_scratch.push(si);
                } else {
                    self.slots[index as usize].scratch = si;
                }
            }
            self.sent_one();
            return Sending::InFlight(user_data);
        }
        let slot = &mut self.slots[index as usize];
        *out.private = std::mem::take(&mut slot.private);
        self.free_slots.push(index);
        if let Some(si) = scratch_index {
            self.free_scratch.push(si);
        }
        IoStats::bump(&self.stats.sends_deferred);
        Sending::Deferred
    }

    fn cancel(&mut self, key: ConnKey, _fd: RawFd, recv: bool, send: Option<u64>) {
        // By user_data, which the kernel finds by hash: cancelling by descriptor scans every armed request, which
        // made closing n connections at once cost O(n²) (seen at shutdown with 16k connections per loop).
        // A receive that is not armed (ended, or waiting to be re-armed) is not found: harmless, the re-arm
        // step ends it instead, because the connection no longer wants input.
        for target in recv.then(|| token::conn(Op::Recv, key)).into_iter().chain(send) {
            let cancel = opcode::AsyncCancel::new(target).build();
            // SAFETY: a cancel points at no memory.
            unsafe { self.push(cancel.user_data(token::encode(Op::Cancel, 0))) };
        }
    }

    fn detach(&mut self, key: ConnKey, _fd: RawFd) {
        if (key.index() as u64) < u64::from(self.fixed) {
            // The table's reference would keep the socket open (no FIN) after the loop closes its descriptor.
            if let Err(e) = self.ring.submitter().register_files_update(key.index() as u32, &[-1]) {
                tracing::warn!(error = %e, "could not drop a fixed-file slot");
            }
        }
    }

    fn wait(&mut self, timeout: Option<Duration>, h: &mut impl Handler) -> io::Result<()> {
        self.arm(h);
        if !self.rearm.is_empty() || !self.backlog.is_empty() {
            // Still work to hand over: do not sleep on it.
            return self.enter(Some(Duration::ZERO), h);
        }
        self.enter(timeout, h)
    }
}

impl UringReactor {
    /// The one `io_uring_enter` of a pass: submits everything queued, waits for a completion or the timeout,
    /// then handles every completion there is.
    fn enter(&mut self, timeout: Option<Duration>, h: &mut impl Handler) -> io::Result<()> {
        IoStats::bump(&self.stats.waits);
        self.unsubmitted_sends = 0;
        let ts = timeout.map(|t| Timespec::new().sec(t.as_secs()).nsec(t.subsec_nanos()));
        let args = match &ts {
            Some(ts) => SubmitArgs::new().timespec(ts),
            None => SubmitArgs::new(),
        };
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => self.submitted(),
            // ETIME: the timeout passed (normal). EINTR: a signal. EBUSY/EAGAIN: completions must be reaped
            // before the kernel takes more (completion-queue overflow): reap now, submit next pass.
            // ETIME still submitted everything first.
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => self.submitted(),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)) => {}
            Err(e) => return Err(e),
        }
        self.reap(h);
        Ok(())
    }
}

fn open_files_limit() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}
