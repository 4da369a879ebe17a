//! Deadlines of open connections: the server's pings and their pong deadline, the idle timeout, the subscribe
//! deadline, and the maximum lifetime with its notice (`docs/client-protocol.md`, "Keepalive and limits").
//!
//! Each kind of deadline has one fixed duration, so each is a FIFO [`DeadlineQueue`]: arming and expiring cost
//! O(1) per connection, the fan-out path never looks at them, and a connection carries two bits
//! (`Conn::keepalive`). A ping is a constant two-byte frame queued as the connection's private bytes (it goes out
//! at a frame boundary of the broadcast, like every private byte). Entries of connections that closed, or whose
//! slot was reused (generational keys), are skipped when they expire.
//!
//! Semantics (why these codes): a missing pong or total silence means the peer or the path to it is most likely
//! gone; the gateway still sends a close frame (`1001` Going Away, with the reason — what Jetty and others send on
//! idle timeouts) in case the client is alive but broken, and cuts the connection after the usual linger
//! whatever happens; a client whose network is gone sees no close frame at all (`1006` in its API). A client that
//! subscribes to nothing under `require_subscription` breaks that gateway's policy: `1008`. The lifetime is
//! not the client's fault: a `notice` first, then `1001` with a reason that says to reconnect.

use std::time::{Duration, Instant};

use super::input::{self, InputCx};
use super::stats::ShardStats;
use super::timers::{DeadlineQueue, ExpiryQueue};
use crate::client::{encode, sse};
use crate::config::Config;
use crate::conn::{Conn, ConnKey, Phase, HEARD, PING_UNANSWERED};
use crate::proto::frame::{encode_frame_into, OpCode};

/// An unmasked ping frame with no payload: the same two bytes for every connection.
pub const PING: [u8; 2] = [0x89, 0x00];

/// The deadline settings; a zero duration turns that deadline off.
#[derive(Debug, Clone, Copy)]
pub struct KeepaliveSettings {
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub idle_timeout: Duration,
    /// Only with `require_subscription` (otherwise zero).
    pub subscribe_timeout: Duration,
    pub lifetime: Duration,
    pub lifetime_notice: Duration,
    /// Up to this much is taken off each connection's lifetime (already capped: see [`KeepaliveSettings::from_config`]).
    pub lifetime_jitter: Duration,
}

impl KeepaliveSettings {
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            ping_interval: cfg.ping_interval,
            pong_timeout: cfg.pong_timeout,
            idle_timeout: cfg.idle_timeout,
            subscribe_timeout: if cfg.require_subscription { cfg.subscribe_timeout } else { Duration::ZERO },
            lifetime: cfg.max_connection_lifetime,
            lifetime_notice: cfg.lifetime_notice,
            lifetime_jitter: cfg
                .lifetime_jitter
                .min(cfg.max_connection_lifetime.saturating_sub(cfg.lifetime_notice) / 2),
        }
    }
}

/// What kind of connection opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    WebSocket,
    /// A Server-Sent Events stream: it has heartbeats instead of pings, and its input is ignored, so only the
    /// lifetime applies.
    EventStream,
}

/// Which deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    Pong,
    Ping,
    Idle,
    Subscribe,
    Notice,
    Lifetime,
}

/// One loop thread's deadline queues.
#[derive(Debug)]
pub struct Keepalive {
    settings: KeepaliveSettings,
    /// The deadlines of one fixed duration, in the order they are looked at when several pass in one sweep: a
    /// pong deadline before the next ping.
    queues: [(Timer, Option<DeadlineQueue>); 4],
    /// Lifetime notices and ends: each connection's own (jittered), so in min-heaps; after the fixed ones.
    lifetimes: [(Timer, ExpiryQueue); 2],
}

impl Keepalive {
    pub fn new(settings: KeepaliveSettings) -> Self {
        let queue = |d: Duration| (!d.is_zero()).then(|| DeadlineQueue::new(d));
        let pings = !settings.ping_interval.is_zero();
        let queues = [
            (Timer::Pong, pings.then(|| DeadlineQueue::new(settings.pong_timeout))),
            (Timer::Ping, queue(settings.ping_interval)),
            (Timer::Idle, queue(settings.idle_timeout)),
            (Timer::Subscribe, queue(settings.subscribe_timeout)),
        ];
        let lifetimes = [(Timer::Notice, ExpiryQueue::default()), (Timer::Lifetime, ExpiryQueue::default())];
        Self { settings, queues, lifetimes }
    }

    fn queue(&mut self, timer: Timer) -> Option<&mut DeadlineQueue> {
        self.queues.iter_mut().find(|(t, _)| *t == timer).and_then(|(_, q)| q.as_mut())
    }

    fn arm(&mut self, timer: Timer, now: Instant, key: ConnKey) {
        if let Some(q) = self.queue(timer) {
            q.push(now, key);
        }
    }

    /// This connection's lifetime: the configured one less its share of the jitter (from its key and the time
    /// it opened: connections opened in the same instant still differ by key).
    fn lifetime_of(&self, key: ConnKey, now: Instant) -> Duration {
        let jitter = self.settings.lifetime_jitter.as_millis() as u64;
        if jitter == 0 {
            return self.settings.lifetime;
        }
        let nanos = now.duration_since(START.with(|s| *s)).as_nanos() as u64;
        self.settings.lifetime - Duration::from_millis(mix(key.0 ^ nanos.rotate_left(32)) % (jitter + 1))
    }

    /// A connection was upgraded to WebSocket, or opened as an event stream, at `now`.
    pub fn on_open(&mut self, key: ConnKey, kind: Opened, now: Instant) {
        if kind == Opened::WebSocket {
            for timer in [Timer::Ping, Timer::Idle, Timer::Subscribe] {
                self.arm(timer, now, key);
            }
        }
        if !self.settings.lifetime.is_zero() {
            let ends = now + self.lifetime_of(key, now);
            if !self.settings.lifetime_notice.is_zero() {
                self.lifetimes[0].1.push(ends - self.settings.lifetime_notice, key);
            }
            self.lifetimes[1].1.push(ends, key);
        }
    }

    /// The earliest deadline, for the loop's wait.
    pub fn next_deadline(&self) -> Option<Instant> {
        let fixed = self.queues.iter().filter_map(|(_, q)| q.as_ref()?.next_deadline());
        fixed.chain(self.lifetimes.iter().filter_map(|(_, q)| q.next_deadline())).min()
    }

    /// Takes the next deadline that has passed at `now`, in [`Timer`] order.
    pub fn pop_expired(&mut self, now: Instant) -> Option<(Timer, ConnKey)> {
        self.queues
            .iter_mut()
            .find_map(|(timer, q)| Some((*timer, q.as_mut()?.pop_expired(now)?)))
            .or_else(|| self.lifetimes.iter_mut().find_map(|(timer, q)| Some((*timer, q.pop_expired(now)?.1))))
    }
}

std::thread_local! {
    /// A fixed instant of this thread, to turn the opening `Instant` into a number for the jitter.
    static START: Instant = Instant::now();
}

/// splitmix64's finaliser: spreads the bits of `x` over the whole word.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Applies a passed deadline to its connection (if it is still open and the deadline still applies). Re-arms
/// the recurring ones through `cx.keepalive`.
pub fn on_expired(timer: Timer, conn: &mut Conn, key: ConnKey, now: Instant, cx: &mut InputCx<'_>) {
    if conn.phase != Phase::Open || conn.held_poll {
        return; // closing, or gone: the deadline no longer applies
    }
    let ws = conn.upgraded;
    let s = cx.keepalive.settings;
    match timer {
        Timer::Ping if ws => {
            input::private(&mut conn.outbuf, cx.pool).extend_from_slice(&PING);
            conn.keepalive |= PING_UNANSWERED;
            ShardStats::add(&cx.stats.pings_sent, 1);
            cx.keepalive.arm(Timer::Pong, now, key);
            cx.keepalive.arm(Timer::Ping, now, key);
            input::mark_dirty(conn, key, cx.dirty);
        }
        Timer::Pong if ws && conn.keepalive & PING_UNANSWERED != 0 => {
            tracing::debug!(?key, "no pong in time: closing with 1001");
            ShardStats::add(&cx.stats.pong_timeouts, 1);
            let reason = format!("no pong within {} ms", s.pong_timeout.as_millis());
            input::queue_close(conn, key, 1001, &reason, cx);
        }
        Timer::Idle if ws && conn.keepalive & HEARD != 0 => {
            conn.keepalive &= !HEARD;
            cx.keepalive.arm(Timer::Idle, now, key);
        }
        Timer::Idle if ws => {
            tracing::debug!(?key, "idle: closing with 1001");
            ShardStats::add(&cx.stats.idle_timeouts, 1);
            let reason = format!("idle: nothing received for {} ms", s.idle_timeout.as_millis());
            input::queue_close(conn, key, 1001, &reason, cx);
        }
        Timer::Subscribe if ws && conn.topics.is_none() && !conn.is_subscribed() => {
            tracing::debug!(?key, "no subscription in time: closing with 1008");
            ShardStats::add(&cx.stats.subscribe_timeouts, 1);
            let reason = format!("no subscription within {} ms", s.subscribe_timeout.as_millis());
            input::queue_close(conn, key, 1008, &reason, cx);
        }
        Timer::Notice => {
            let close_in = s.lifetime_notice.as_millis() as u64;
            let message = format!("connection lifetime reached: closing in {close_in} ms; reconnect and resume");
            let mut json = Vec::new();
            encode::notice("lifetime", &message, close_in, &mut json);
            let out = input::private(&mut conn.outbuf, cx.pool);
            if ws {
                encode_frame_into(out, OpCode::Text, &json);
            } else if conn.sse {
                sse::event(None, Some("notice"), &json, out);
            }
            input::mark_dirty(conn, key, cx.dirty);
        }
        Timer::Lifetime => {
            ShardStats::add(&cx.stats.lifetime_closes, 1);
            input::queue_close(conn, key, 1001, "connection lifetime reached: reconnect", cx);
        }
        _ => {} // the deadline no longer applies (answered, heard, subscribed)
    }
}

/// Bytes arrived from an open WebSocket client (any frame counts against the idle timeout).
pub fn on_input(conn: &mut Conn) {
    conn.keepalive |= HEARD;
}

/// A pong arrived: the ping is answered (any pong will do; the gateway's pings carry no payload).
pub fn on_pong(conn: &mut Conn) {
    conn.keepalive &= !PING_UNANSWERED;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> KeepaliveSettings {
        KeepaliveSettings {
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
            idle_timeout: Duration::ZERO,
            subscribe_timeout: Duration::from_secs(5),
            lifetime: Duration::from_secs(100),
            lifetime_notice: Duration::from_secs(20),
            lifetime_jitter: Duration::ZERO,
        }
    }

    #[test]
    fn a_websocket_arms_its_deadlines_and_they_pass_in_time_order() {
        let t = Instant::now();
        let mut k = Keepalive::new(settings());
        let key = ConnKey(1 << 32);
        k.on_open(key, Opened::WebSocket, t);
        assert_eq!(k.next_deadline(), Some(t + Duration::from_secs(5)));
        assert_eq!(k.pop_expired(t + Duration::from_secs(4)), None);
        assert_eq!(k.pop_expired(t + Duration::from_secs(5)), Some((Timer::Subscribe, key)));
        assert_eq!(k.pop_expired(t + Duration::from_secs(30)), Some((Timer::Ping, key)));
        assert_eq!(k.pop_expired(t + Duration::from_secs(80)), Some((Timer::Notice, key)));
        assert_eq!(k.pop_expired(t + Duration::from_secs(99)), None);
        assert_eq!(k.pop_expired(t + Duration::from_secs(100)), Some((Timer::Lifetime, key)));
        assert_eq!(k.next_deadline(), None, "no idle queue: idle_timeout is 0");
    }

    #[test]
    fn lifetimes_are_spread_over_the_jitter_and_each_notice_keeps_its_lead() {
        let t = Instant::now();
        let mut k = Keepalive::new(KeepaliveSettings { lifetime_jitter: Duration::from_secs(10), ..settings() });
        for i in 1..=1000u64 {
            k.on_open(ConnKey(i << 32), Opened::EventStream, t); // all in the same instant
        }
        let mut notices = std::collections::HashMap::new();
        let mut ends = Vec::new();
        let mut now = t;
        while now <= t + Duration::from_secs(101) {
            while let Some((timer, key)) = k.pop_expired(now) {
                match timer {
                    Timer::Notice => assert!(notices.insert(key, now).is_none(), "one notice each"),
                    Timer::Lifetime => {
                        let noticed = notices[&key];
                        assert_eq!(now - noticed, Duration::from_secs(20), "the notice comes lifetime_notice before");
                        ends.push(now - t);
                    }
                    other => panic!("{other:?}"),
                }
            }
            now += Duration::from_secs(1);
        }
        assert_eq!(ends.len(), 1000);
        assert!(ends.iter().all(|d| (90..=100).contains(&d.as_secs())), "within the jitter: {ends:?}");
        for second in 90..=100 {
            let n = ends.iter().filter(|d| d.as_secs() == second).count();
            assert!(n < 200, "{n} connections end in second {second}: not spread");
        }
    }

    #[test]
    fn the_jitter_is_capped_by_the_lifetime() {
        let mut cfg = Config::default();
        (cfg.max_connection_lifetime, cfg.lifetime_notice) = (Duration::from_secs(10), Duration::from_secs(4));
        assert_eq!(KeepaliveSettings::from_config(&cfg).lifetime_jitter, Duration::from_secs(3));
        cfg.max_connection_lifetime = Duration::from_secs(3600);
        assert_eq!(KeepaliveSettings::from_config(&cfg).lifetime_jitter, Duration::from_secs(60), "the default");
    }

    #[test]
    fn an_event_stream_has_only_its_lifetime() {
        let t = Instant::now();
        let mut k = Keepalive::new(settings());
        k.on_open(ConnKey(1 << 32), Opened::EventStream, t);
        assert_eq!(k.next_deadline(), Some(t + Duration::from_secs(80)));
    }

    #[test]
    fn a_pong_deadline_is_looked_at_before_a_ping_of_the_same_sweep() {
        let t = Instant::now();
        let mut k = Keepalive::new(settings());
        let (a, b) = (ConnKey(1 << 32), ConnKey(2 << 32));
        k.arm(Timer::Ping, t, a);
        k.arm(Timer::Pong, t, b);
        let late = t + Duration::from_secs(60);
        assert_eq!(k.pop_expired(late), Some((Timer::Pong, b)));
        assert_eq!(k.pop_expired(late), Some((Timer::Ping, a)));
    }

    #[test]
    fn everything_off() {
        let off = KeepaliveSettings {
            ping_interval: Duration::ZERO,
            pong_timeout: Duration::from_secs(1),
            idle_timeout: Duration::ZERO,
            subscribe_timeout: Duration::ZERO,
            lifetime: Duration::ZERO,
            lifetime_notice: Duration::from_secs(1),
            lifetime_jitter: Duration::from_secs(1),
        };
        let mut k = Keepalive::new(off);
        k.on_open(ConnKey(1 << 32), Opened::WebSocket, Instant::now());
        assert_eq!(k.next_deadline(), None);
    }

    #[test]
    fn the_ping_frame_is_an_empty_ping() {
        let mut out = Vec::new();
        encode_frame_into(&mut out, OpCode::Ping, &[]);
        assert_eq!(out, PING);
    }
}
