//! What one connection that reads several logs (its topic subscriptions, `docs/design-topics.md`) sends next, and
//! how a send of `n` bytes moves its cursors: the planning half of "everything pending for a connection leaves
//! in one send per pass", as pure code.
//!
//! A send is `[head][private][tail…]`, the shape every I/O backend takes (`reactor::Outgoing`): `head` is the rest
//! of the one chunk a connection may stand inside of (after a short write), `private` its own bytes (replies,
//! pongs), `tail` whole chunks from each source in log order. Every chunk ends on a frame boundary, so once the
//! head is written every source stands between frames, which is where private bytes may go; and interleaving
//! whole chunks of different logs never splits a frame.
//!
//! INVARIANT (kept by [`advance`]): at most one source stands inside a chunk, and it is the one the previous
//! send stopped in.

use super::log::{Cursor, FrameLog, Located};

/// Most slices of one send.
pub const MAX_PARTS: usize = 64;

/// A source's cursor has fallen out of its log (the retention rules should make this impossible).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    pub source: usize,
}

/// The broadcast slices of one send and the sources they advance.
#[derive(Debug)]
pub struct Plan<'a> {
    /// The rest of the chunk a source stands inside of, and that source.
    pub head: &'a [u8],
    pub head_source: usize,
    /// Whole chunks, in send order; `tail_source[i]` is the source `tail[i]` advances.
    pub tail: [&'a [u8]; MAX_PARTS],
    pub tail_source: [u8; MAX_PARTS],
    pub tail_len: usize,
}

impl Plan<'_> {
    pub fn tail(&self) -> &[&[u8]] {
        &self.tail[..self.tail_len]
    }
}

/// Plans the broadcast part of a send for sources `logs[i]` read at `cursors[i]`: the head, then up to `room`
/// whole chunks (none when `head_only`, e.g. once a close is queued), each source's in log order, sources in
/// turn. At most 255 sources.
pub fn plan<'a>(logs: &[&'a FrameLog], cursors: &[Cursor], room: usize, head_only: bool) -> Result<Plan<'a>, Trimmed> {
    debug_assert!(logs.len() == cursors.len() && logs.len() <= 255);
    let mut p = Plan { head: &[], head_source: 0, tail: [&[]; MAX_PARTS], tail_source: [0; MAX_PARTS], tail_len: 0 };
    let room = room.min(MAX_PARTS);
    let mut next = [None::<usize>; 256];
    for (s, (log, &cursor)) in logs.iter().zip(cursors).enumerate() {
        match log.locate(cursor) {
            Located::Trimmed => return Err(Trimmed { source: s }),
            Located::Head => {}
            Located::At { index, offset: 0 } => next[s] = Some(index),
            Located::At { index, offset } => {
                debug_assert!(p.head.is_empty(), "two sources inside a chunk");
                p.head = &log.chunk(index)[offset..];
                p.head_source = s;
                next[s] = Some(index + 1);
            }
        }
    }
    if head_only {
        return Ok(p);
    }
    for (s, log) in logs.iter().enumerate() {
        let Some(mut index) = next[s] else { continue };
        while index < log.chunk_count() && p.tail_len < room {
            p.tail[p.tail_len] = log.chunk(index);
            p.tail_source[p.tail_len] = s as u8;
            p.tail_len += 1;
            index += 1;
        }
    }
    Ok(p)
}

/// Moves `cursors` over the `written` bytes of a send of `[plan.head][private_len private bytes][plan.tail…]`;
/// returns how many private bytes went.
pub fn advance(plan: &Plan<'_>, private_len: usize, cursors: &mut [Cursor], mut written: usize) -> usize {
    let k = written.min(plan.head.len());
    cursors[plan.head_source] += k as u64;
    written -= k;
    if k < plan.head.len() {
        return 0;
    }
    let private = written.min(private_len);
    written -= private;
    if private < private_len {
        return private;
    }
    for (part, &source) in plan.tail().iter().zip(&plan.tail_source) {
        let k = written.min(part.len());
        cursors[usize::from(source)] += k as u64;
        written -= k;
        if k < part.len() {
            break;
        }
    }
    private
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    /// Logs whose bytes say which log and position they are: byte = log * 64 + (position % 64).
    fn logs(sizes: &[Vec<usize>]) -> Vec<FrameLog> {
        sizes
            .iter()
            .enumerate()
            .map(|(l, chunks)| {
                let mut log = FrameLog::new();
                let mut pos = 0usize;
                for &n in chunks {
                    log.push(Arc::from((pos..pos + n).map(|p| (l * 64 + p % 64) as u8).collect::<Vec<u8>>()));
                    pos += n;
                }
                log
            })
            .collect()
    }

    proptest! {
        /// Against a byte-level model: the planned send is each source's bytes from its cursor, in log order per
        /// source (head first, then whole chunks), with private bytes right after the head; and a send of any
        /// length moves each cursor by exactly that source's bytes among those written.
        #[test]
        fn plan_and_advance_agree_with_the_bytes(
            sizes in proptest::collection::vec(proptest::collection::vec(1usize..20, 0..6), 1..5),
            starts in proptest::collection::vec(0usize..200, 5),
            mid in 0usize..5,
            private_len in 0usize..10,
            room in 0usize..12,
            written_frac in 0.0f64..1.0,
        ) {
            let logs = logs(&sizes);
            let refs: Vec<&FrameLog> = logs.iter().collect();
            // Cursors at chunk boundaries, except possibly one (the mid source).
            let mut cursors: Vec<Cursor> = Vec::new();
            for (s, log) in logs.iter().enumerate() {
                let boundaries: Vec<u64> = std::iter::once(0)
                    .chain(sizes[s].iter().scan(0u64, |acc, &n| { *acc += n as u64; Some(*acc) }))
                    .collect();
                let b = boundaries[starts[s] % boundaries.len()];
                let inside = s == mid % logs.len() && b < log.head();
                cursors.push(if inside { b + (starts[s] as u64 % 3).min(log.head() - b - 1) } else { b });
            }
            let p = plan(&refs, &cursors, room, false).unwrap();
            prop_assert!(p.tail_len <= room.min(MAX_PARTS));
            // Per source, the planned bytes continue exactly from the cursor.
            for (s, log) in logs.iter().enumerate() {
                let mut expect = cursors[s];
                let mut parts: Vec<&[u8]> = Vec::new();
                if !p.head.is_empty() && p.head_source == s {
                    parts.push(p.head);
                }
                parts.extend(p.tail().iter().zip(&p.tail_source).filter(|(_, &src)| usize::from(src) == s).map(|(t, _)| *t));
                for part in parts {
                    for &b in part {
                        prop_assert_eq!(b, (s * 64 + (expect as usize) % 64) as u8);
                        expect += 1;
                    }
                }
                prop_assert!(expect <= log.head());
            }
            // A send of `written` bytes.
            let total = p.head.len() + private_len + p.tail().iter().map(|t| t.len()).sum::<usize>();
            let written = (written_frac * total as f64) as usize;
            let mut moved = cursors.clone();
            let private = advance(&p, private_len, &mut moved, written);
            // The model walks the bytes of the send in order, part by part (None: private bytes).
            let mut model = cursors.clone();
            let mut model_private = 0;
            let mut left = written;
            let parts = std::iter::once((p.head.len(), Some(p.head_source)))
                .chain(std::iter::once((private_len, None)))
                .chain(p.tail().iter().zip(&p.tail_source).map(|(t, &src)| (t.len(), Some(usize::from(src)))));
            for (len, target) in parts {
                let k = left.min(len);
                left -= k;
                match target {
                    Some(src) => model[src] += k as u64,
                    None => model_private = k,
                }
                if k < len {
                    break;
                }
            }
            prop_assert_eq!(&moved, &model);
            prop_assert_eq!(private, model_private);
            // Afterwards at most one source stands inside a chunk: the invariant holds for the next plan.
            let inside = logs.iter().zip(&moved).filter(|(l, &c)| matches!(l.locate(c), Located::At { offset, .. } if offset > 0)).count();
            prop_assert!(inside <= 1);
        }
    }

    #[test]
    fn head_only_once_a_close_is_queued_and_trimmed_cursors_are_reported() {
        let mut logs = logs(&[vec![4, 4], vec![3]]);
        let refs: Vec<&FrameLog> = logs.iter().collect();
        let p = plan(&refs, &[2, 0], 64, true).unwrap();
        assert_eq!((p.head.len(), p.head_source, p.tail_len), (2, 0, 0));
        let p = plan(&refs, &[4, 0], 64, false).unwrap();
        assert_eq!(p.tail(), &[&[4u8, 5, 6, 7][..], &[64, 65, 66][..]]);
        logs[1].trim_to(3);
        let refs: Vec<&FrameLog> = logs.iter().collect();
        assert_eq!(plan(&refs, &[0, 0], 64, false).unwrap_err(), Trimmed { source: 1 });
    }
}
