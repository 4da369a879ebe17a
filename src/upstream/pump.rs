//! Moves bytes from one non-blocking stream through its framing codec, routes and stamps each record, and hands
//! it to the [`Sink`], counting what is dropped.

use std::fmt::Display;
use std::io::{self, Read};
use std::time::Instant;

use tracing::warn;

use super::binary_codec::{self, BinaryCodec};
use super::codec::{Event, LineCodec};
use super::json_field;
use super::record::{Dropped, Framing, PayloadKind, Routed, Routing};
use super::sequence::Sequencer;
use super::watchdog::{SeqCheck, SeqEvent};
use super::{FeedStats, Message, Sink};

/// Reads per stream per loop turn, so one busy stream cannot starve the others (or the demo timer).
const READS_PER_TURN: usize = 16;

/// How a [`pump`] call ended.
#[derive(Debug)]
pub(super) enum Pumped {
    /// The socket has no more data for now (`WouldBlock`).
    Drained,
    /// The read budget ran out, or the sink has no room, with the socket possibly still readable: pump again
    /// after other work.
    Budget,
    /// End of stream (`None`) or a read error.
    Closed(Option<io::Error>),
}

/// One source's framing state.
#[derive(Debug)]
pub(super) enum Framer {
    /// Line framings (`auto`, `tab`), with the upstream's sequence field to check (`auto` only).
    Lines(LineCodec, Framing, Option<Box<UpstreamSeq>>),
    Binary(BinaryCodec),
}

impl Framer {
    pub(super) fn new(framing: Framing, max_bytes: usize) -> Self {
        match framing {
            Framing::Binary => Framer::Binary(BinaryCodec::new(max_bytes)),
            lines => Framer::Lines(LineCodec::new(max_bytes), lines, None),
        }
    }

    /// Also checks the sequence numbers in top-level field `field` of each JSON line (line framings); with
    /// `positions`, they are the messages' `seq` too (positions passed through from upstream).
    pub(super) fn with_seq_field(mut self, field: Option<String>, positions: bool) -> Self {
        if let (Framer::Lines(_, _, seq), Some(field)) = (&mut self, field) {
            *seq = Some(Box::new(UpstreamSeq { field, check: SeqCheck::default(), positions }));
        }
        self
    }

    /// Forgets an incomplete record (its stream is gone); returns how many bytes were discarded.
    pub(super) fn reset(&mut self) -> usize {
        match self {
            Framer::Lines(codec, ..) => codec.reset(),
            Framer::Binary(codec) => codec.reset(),
        }
    }
}

/// Reads until `WouldBlock`, end of stream, an error, the per-turn budget, or a sink without room. Every read
/// that completes records publishes them and then flushes the sink once. Adds the number of messages published
/// to `delivered`.
pub(super) fn pump<S: Sink>(
    stream: &mut impl Read,
    framer: &mut Framer,
    buf: &mut [u8],
    out: &mut Out<'_, S>,
    source: &dyn Display,
    delivered: &mut u64,
) -> Pumped {
    for _ in 0..READS_PER_TURN {
        if !out.ready() {
            return Pumped::Budget; // the sink has no room: read again once it has
        }
        match stream.read(buf) {
            Ok(0) => return Pumped::Closed(None),
            Ok(n) => *delivered += out.publish_chunk(framer, &buf[..n], source),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Pumped::Drained,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Pumped::Closed(Some(e)),
        }
    }
    Pumped::Budget
}

/// The feed thread's outputs: the sink, the counters, and what turns a record into a message (routing and the
/// sequencer).
pub(super) struct Out<'a, S> {
    pub(super) sink: &'a mut S,
    pub(super) stats: &'a FeedStats,
    pub(super) routing: &'a Routing,
    pub(super) sequencer: &'a mut Sequencer,
    /// A topic that had to be unescaped (reused).
    pub(super) scratch: &'a mut String,
    /// The clock of this turn (topic idleness).
    pub(super) now: Instant,
}

impl<S: Sink> Out<'_, S> {
    /// Decodes one chunk, publishes its records, flushes once if any, and returns how many were published.
    pub(super) fn publish_chunk(&mut self, framer: &mut Framer, chunk: &[u8], source: &dyn Display) -> u64 {
        let mut published = 0;
        let Out { sink, stats, routing, sequencer, scratch, now } = self;
        let mut to = Stamper { sink: &mut **sink, stats, sequencer, now: *now };
        match framer {
            Framer::Lines(codec, framing, seq) => {
                let framing = *framing;
                let mut lines = codec.handle_chunk(chunk);
                while let Some(ev) = lines.poll_event() {
                    let mut numbering = Numbering::Gateway;
                    if let (Some(seq), Event::Line(line)) = (seq.as_deref_mut(), &ev) {
                        let n = seq.check(line, to.stats, source);
                        if seq.positions {
                            numbering = Numbering::Upstream(n);
                        }
                    }
                    let routed = match ev {
                        Event::Line(line) => routing.route_line(line, framing, scratch),
                        Event::TooLong => Err(Dropped::TooLong),
                        Event::InvalidUtf8 => Err(Dropped::InvalidUtf8),
                    };
                    published += u64::from(to.forward(routed, PayloadKind::Text, numbering, source));
                }
            }
            Framer::Binary(codec) => {
                let mut records = codec.handle_chunk(chunk);
                while let Some(ev) = records.poll_event() {
                    let routed = match ev {
                        binary_codec::Event::Record { topic, payload } => routing.route_binary(topic, payload),
                        binary_codec::Event::TooLong { .. } => Err(Dropped::TooLong),
                    };
                    published += u64::from(to.forward(routed, PayloadKind::Binary, Numbering::Gateway, source));
                }
            }
        }
        if published > 0 {
            self.stats.add_published(published);
            self.stats.set_sequencer(self.sequencer);
            self.sink.flush();
        }
        published
    }

    /// Whether the sink takes more now (see [`Sink::ready`]).
    pub(super) fn ready(&self) -> bool {
        self.sink.ready()
    }

    /// Publishes one text message that needs no routing (the demo's, a client's); the caller flushes after its
    /// batch.
    pub(super) fn publish_one(&mut self, topic: &str, payload: &[u8], source: &dyn Display) {
        let mut to =
            Stamper { sink: &mut *self.sink, stats: self.stats, sequencer: &mut *self.sequencer, now: self.now };
        if to.forward(Ok(Routed { topic, payload }), PayloadKind::Text, Numbering::Gateway, source) {
            self.stats.add_published(1);
        }
    }

    pub(super) fn flush(&mut self) {
        self.stats.set_sequencer(self.sequencer);
        self.sink.flush();
    }
}

/// The upstream's own sequence numbers, read from one top-level field of its JSON lines
/// (`upstream_seq_field`) and checked for gaps (`docs/feed-protocol.md`).
#[derive(Debug)]
pub(super) struct UpstreamSeq {
    field: String,
    check: SeqCheck,
    /// The numbers are the messages' positions (`upstream_epoch`).
    positions: bool,
}

impl UpstreamSeq {
    /// Checks one line's number (a line without one is not checked); counts and logs what is wrong. Logs the
    /// 1st, 2nd, 4th, 8th… gap and reset, so a feed that skips all the time cannot flood the log.
    /// Returns the number.
    fn check(&mut self, line: &str, stats: &FeedStats, source: &dyn Display) -> Option<u64> {
        let n = json_field::find_top_level_u64(line.as_bytes(), &self.field)?;
        if self.positions && self.check.last().is_some_and(|last| n <= last) {
            // With positions from upstream, a number already seen is a replay (after a reconnect) that the
            // sequencer drops as `replayed`, not a reset of the numbering.
            return Some(n);
        }
        match self.check.handle_seq(n) {
            SeqEvent::InOrder => {}
            SeqEvent::Gap { last, got, missing } => {
                let total = stats.add_seq_gap(missing);
                if total.is_power_of_two() {
                    warn!(%source, last, got, missing, gaps = total, "upstream sequence gap: messages lost upstream");
                }
            }
            SeqEvent::Reset { last, got } => {
                let total = stats.add_seq_reset();
                if total.is_power_of_two() {
                    warn!(%source, last, got, resets = total, "upstream sequence went back (upstream restarted?)");
                }
            }
        }
        Some(n)
    }
}

/// Who gives a message its `seq`.
#[derive(Debug, Clone, Copy)]
enum Numbering {
    /// The feed's own sequencer: the next number.
    Gateway,
    /// The upstream (`upstream_epoch`): the number in its line, if it has one.
    Upstream(Option<u64>),
}

/// The part of [`Out`] that stamps and publishes (borrowed apart from the routing scratch a topic may live in).
struct Stamper<'a, S> {
    sink: &'a mut S,
    stats: &'a FeedStats,
    sequencer: &'a mut Sequencer,
    now: Instant,
}

impl<S: Sink> Stamper<'_, S> {
    /// Stamps and publishes a routed record, or counts why not; returns whether it was published.
    fn forward(
        &mut self,
        routed: Result<Routed<'_>, Dropped>,
        kind: PayloadKind,
        numbering: Numbering,
        source: &dyn Display,
    ) -> bool {
        let stamped = routed.and_then(|r| {
            let stamp = match numbering {
                Numbering::Gateway => self.sequencer.stamp(r.topic, self.now)?,
                Numbering::Upstream(Some(seq)) => self.sequencer.stamp_at(r.topic, seq, self.now)?,
                Numbering::Upstream(None) => return Err(Dropped::NoSeq),
            };
            Ok((r, stamp))
        });
        match stamped {
            Ok((r, stamp)) => {
                self.sink.publish(Message::new(r.topic, r.payload, kind, stamp));
                true
            }
            Err(reason) => {
                // Warn on the 1st, 2nd, 4th, 8th... drop of each reason so a misbehaving source cannot flood the log.
                let total = self.stats.add_dropped(reason);
                if total.is_power_of_two() {
                    warn!(%source, reason = reason.as_str(), total, "feed record dropped");
                }
                false
            }
        }
    }
}

/// Runs `f` with an [`Out`] over `sink`, a fresh sequencer (epoch 1, `max_topics`) and the default routing, at
/// `now`; returns its result and the counters.
#[cfg(test)]
pub(super) fn with_out<S: Sink, R>(
    sink: &mut S,
    max_topics: usize,
    now: Instant,
    f: impl FnOnce(&mut Out<'_, S>) -> R,
) -> (R, FeedStats) {
    let stats = FeedStats::default();
    let (routing, mut scratch) = (Routing::default(), String::new());
    let mut sequencer = Sequencer::new(1, max_topics, std::time::Duration::from_secs(60));
    let mut out = Out { sink, stats: &stats, routing: &routing, sequencer: &mut sequencer, scratch: &mut scratch, now };
    let r = f(&mut out);
    (r, stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::test_support::{channel_sink, Owned, RecordSink};
    use std::sync::atomic::Ordering;

    /// Returns its chunks one read at a time, then `WouldBlock`.
    struct Chunks(Vec<&'static [u8]>);
    impl Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let c = self.0.remove(0);
            buf[..c.len()].copy_from_slice(c);
            Ok(c.len())
        }
    }

    /// Pumps `chunks` through a source framed by `framing` into a [`RecordSink`].
    fn pump_records(
        framing: Framing,
        max: usize,
        max_topics: usize,
        chunks: Vec<&'static [u8]>,
    ) -> (Vec<Owned>, FeedStats) {
        let (tx, rx) = std::sync::mpsc::channel();
        let (delivered, stats) = with_out(&mut RecordSink(tx), max_topics, Instant::now(), |out| {
            let mut framer = Framer::new(framing, max);
            let (mut buf, mut delivered) = ([0u8; 1024], 0);
            let r = pump(&mut Chunks(chunks), &mut framer, &mut buf, out, &"test", &mut delivered);
            assert!(matches!(r, Pumped::Drained));
            delivered
        });
        let got: Vec<Owned> = rx.try_iter().collect();
        assert_eq!(delivered, got.len() as u64);
        (got, stats)
    }

    fn owned(topic: &str, payload: &[u8], kind: PayloadKind, seq: u64, prev: u64) -> Owned {
        Owned { topic: topic.into(), payload: payload.into(), kind, seq, prev }
    }

    #[test]
    fn publishes_lines_flushes_per_productive_read_and_counts_drops() {
        let (mut sink, rx, flushes) = channel_sink();
        let (delivered, stats) = with_out(&mut sink, 8, Instant::now(), |out| {
            let mut framer = Framer::new(Framing::Auto, 8);
            let mut stream = Chunks(vec![b"a\nb\n", b"par", b"tial\n\xff\n", b"waytoolongline\n"]);
            let (mut buf, mut delivered) = ([0u8; 64], 0);
            let r = pump(&mut stream, &mut framer, &mut buf, out, &"test", &mut delivered);
            assert!(matches!(r, Pumped::Drained));
            delivered
        });
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), ["a", "b", "partial"]);
        assert_eq!(delivered, 3);
        assert_eq!(flushes.load(Ordering::Relaxed), 2, "one flush per read that produced lines");
        assert_eq!(stats.messages_published(), 3);
        assert_eq!(stats.lines_invalid_utf8(), 1);
        assert_eq!(stats.lines_too_long(), 1);
        assert_eq!((stats.last_seq(), stats.topics()), (3, (1, 0)), "plain lines: one default topic");
    }

    #[test]
    fn positions_from_upstream_take_its_numbers_and_drop_replays_and_unnumbered_lines() {
        let (tx, rx) = std::sync::mpsc::channel();
        let lines: &[u8] = b"{\"topic\":\"A\",\"seq\":10}\n{\"topic\":\"B\",\"seq\":12}\n{\"topic\":\"A\"}\n\
            {\"topic\":\"A\",\"seq\":11}\n{\"topic\":\"A\",\"seq\":13}\n";
        let (_, stats) = with_out(&mut RecordSink(tx), 8, Instant::now(), |out| {
            let mut framer = Framer::new(Framing::Auto, 64).with_seq_field(Some("seq".into()), true);
            let (mut buf, mut delivered) = ([0u8; 1024], 0);
            pump(&mut Chunks(vec![lines]), &mut framer, &mut buf, out, &"test", &mut delivered);
        });
        let got: Vec<(String, u64, u64)> = rx.try_iter().map(|m: Owned| (m.topic, m.seq, m.prev)).collect();
        assert_eq!(got, [("A".into(), 10, 0), ("B".into(), 12, 0), ("A".into(), 13, 10)]);
        assert_eq!((stats.dropped(Dropped::NoSeq), stats.dropped(Dropped::Replayed)), (1, 1));
        assert_eq!(stats.seq_gaps(), (1, 1, 0), "11 is missing; a replayed number is not a reset");
    }

    #[test]
    fn auto_and_tab_lines_are_routed_stamped_and_bad_ones_counted() {
        let text = PayloadKind::Text;
        let (got, stats) = pump_records(
            Framing::Auto,
            64,
            8,
            vec![b"{\"topic\":\"A\",\"p\":1}\nplain\n{\"topic\":9}\n{\"topic\":\"A\"}\n"],
        );
        assert_eq!(
            got,
            [
                owned("A", b"{\"topic\":\"A\",\"p\":1}", text, 1, 0),
                owned("default", b"plain", text, 2, 0),
                owned("A", b"{\"topic\":\"A\"}", text, 3, 1),
            ]
        );
        assert_eq!(stats.dropped(Dropped::TopicNotString), 1);
        let (got, stats) = pump_records(Framing::Tab, 64, 8, vec![b"X\tone\nno tab\nX\ttwo\n*\tbad\n"]);
        assert_eq!(got, [owned("X", b"one", text, 1, 0), owned("X", b"two", text, 2, 1)]);
        assert_eq!((stats.dropped(Dropped::NoTab), stats.dropped(Dropped::BadTopic)), (1, 1));
    }

    #[test]
    fn binary_records_and_the_topic_cap() {
        // "t1" -> [0, 1]; "t2" -> [2] (the cap of one topic refuses it); "t1" -> 300 bytes (too long).
        let stream: &'static [u8] = &[2, b't', b'1', 0, 0, 0, 2, 0, 1, 2, b't', b'2', 0, 0, 0, 1, 2];
        let long: &'static [u8] = Box::leak({
            let mut v = vec![2, b't', b'1', 0, 0, 1, 44];
            v.extend([7u8; 300]);
            v.into_boxed_slice()
        });
        let (got, stats) = pump_records(Framing::Binary, 256, 1, vec![stream, long]);
        assert_eq!(got, [owned("t1", &[0, 1], PayloadKind::Binary, 1, 0)]);
        assert_eq!((stats.dropped(Dropped::TopicLimit), stats.dropped(Dropped::TooLong)), (1, 1));
    }
}
