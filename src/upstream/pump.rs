//! Moves bytes from one non-blocking stream through its [`LineCodec`] into the [`Sink`], counting drops.

use std::fmt::Display;
use std::io::{self, Read};

use tracing::warn;

use super::codec::{Event, LineCodec};
use super::{FeedStats, Message, Sink};

/// Reads per stream per loop turn, so one busy stream cannot starve the others (or the demo timer).
const READS_PER_TURN: usize = 16;

/// How a [`pump`] call ended.
#[derive(Debug)]
pub(super) enum Pumped {
    /// The socket has no more data for now (`WouldBlock`).
    Drained,
    /// The read budget ran out with the socket possibly still readable: pump again after other work.
    Budget,
    /// End of stream (`None`) or a read error.
    Closed(Option<io::Error>),
}

/// Reads until `WouldBlock`, end of stream, an error, or the per-turn budget. Every read that completes
/// lines publishes them and then flushes the sink once. Adds the number of messages published to `delivered`.
pub(super) fn pump<S: Sink>(
    stream: &mut impl Read,
    codec: &mut LineCodec,
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
            Ok(n) => *delivered += out.publish_chunk(codec, &buf[..n], source),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Pumped::Drained,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Pumped::Closed(Some(e)),
        }
    }
    Pumped::Budget
}

/// The feed thread's outputs: the sink and the counters.
pub(super) struct Out<'a, S> {
    pub(super) sink: &'a mut S,
    pub(super) stats: &'a FeedStats,
}

impl<S: Sink> Out<'_, S> {
    /// Decodes one chunk, publishes its lines, flushes once if any, and returns how many were published.
    pub(super) fn publish_chunk(&mut self, codec: &mut LineCodec, chunk: &[u8], source: &dyn Display) -> u64 {
        let max = codec.max_line_bytes();
        let mut published = 0;
        let mut lines = codec.handle_chunk(chunk);
        while let Some(ev) = lines.poll_event() {
            match ev {
                Event::Line(line) => {
                    self.sink.publish(Message::new(line.as_bytes()));
                    published += 1;
                }
                // Warn on the 1st, 2nd, 4th, 8th... drop so a misbehaving source cannot flood the log.
                Event::TooLong => {
                    let total = self.stats.add_too_long();
                    if total.is_power_of_two() {
                        warn!(%source, max_line_bytes = max, total, "dropped a line longer than max_line_bytes");
                    }
                }
                Event::InvalidUtf8 => {
                    let total = self.stats.add_invalid_utf8();
                    if total.is_power_of_two() {
                        warn!(%source, total, "dropped a line that is not valid UTF-8");
                    }
                }
            }
        }
        drop(lines);
        if published > 0 {
            self.stats.add_published(published);
            self.sink.flush();
        }
        published
    }

    /// Whether the sink takes more now (see [`Sink::ready`]).
    pub(super) fn ready(&self) -> bool {
        self.sink.ready()
    }

    /// Publishes one message the feed generated itself (the demo); the caller flushes after its batch.
    pub(super) fn publish_one(&mut self, payload: &[u8]) {
        self.sink.publish(Message::new(payload));
        self.stats.add_published(1);
    }

    pub(super) fn flush(&mut self) {
        self.sink.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::test_support::channel_sink;
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

    #[test]
    fn publishes_lines_flushes_per_productive_read_and_counts_drops() {
        let (mut sink, rx, flushes) = channel_sink();
        let stats = FeedStats::default();
        let mut out = Out { sink: &mut sink, stats: &stats };
        let mut codec = LineCodec::new(8);
        let mut stream = Chunks(vec![b"a\nb\n", b"par", b"tial\n\xff\n", b"waytoolongline\n"]);
        let mut buf = [0u8; 64];
        let mut delivered = 0;
        let r = pump(&mut stream, &mut codec, &mut buf, &mut out, &"test", &mut delivered);
        assert!(matches!(r, Pumped::Drained));
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), ["a", "b", "partial"]);
        assert_eq!(delivered, 3);
        assert_eq!(flushes.load(Ordering::Relaxed), 2, "one flush per read that produced lines");
        assert_eq!(stats.messages_published(), 3);
        assert_eq!(stats.lines_invalid_utf8(), 1);
        assert_eq!(stats.lines_too_long(), 1);
    }
}
