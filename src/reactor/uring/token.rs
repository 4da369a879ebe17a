//! `user_data` of every submitted operation: what kind of operation it is, and whose.
//!
//! Layout: `kind` in the top 4 bits, then 60 bits of value: a [`ConnKey`] (generation below 2^28, index below
//! 2^32, see `GenSlab`) or, for `SendSlot`, the send slot that holds the key: its index below 2^32 and, above it,
//! how often the slot has been used (28 bits, wrapping), so that a late cancel of a finished send cannot hit the
//! next send in the same slot.

use crate::conn::ConnKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Accept = 0,
    Recv = 1,
    Send = 2,
    SendSlot = 3,
    Cancel = 4,
    Wake = 5,
}

const VALUE_BITS: u32 = 60;
const VALUE_MASK: u64 = (1 << VALUE_BITS) - 1;

pub fn encode(op: Op, value: u64) -> u64 {
    debug_assert_eq!(value & !VALUE_MASK, 0, "user_data value does not fit in 60 bits");
    ((op as u64) << VALUE_BITS) | (value & VALUE_MASK)
}

/// `None` for a kind this loop never submits (which would be a bug; the completion is then ignored).
pub fn decode(user_data: u64) -> Option<(Op, u64)> {
    let op = match user_data >> VALUE_BITS {
        0 => Op::Accept,
        1 => Op::Recv,
        2 => Op::Send,
        3 => Op::SendSlot,
        4 => Op::Cancel,
        5 => Op::Wake,
        _ => return None,
    };
    Some((op, user_data & VALUE_MASK))
}

pub fn conn(op: Op, key: ConnKey) -> u64 {
    encode(op, key.0)
}

const SLOT_USES_MASK: u32 = (1 << 28) - 1;

/// `user_data` of a send held by slot `index` on its `uses`-th use.
pub fn slot(index: u32, uses: u32) -> u64 {
    encode(Op::SendSlot, (u64::from(uses & SLOT_USES_MASK) << 32) | u64::from(index))
}

/// The slot index in the value of a `SendSlot` token.
pub fn slot_index(value: u64) -> u32 {
    value as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(kind in 0u8..6, generation in 1u64..(1 << 28), index in any::<u32>()) {
            let op = decode(u64::from(kind) << VALUE_BITS).unwrap().0;
            let value = (generation << 32) | u64::from(index);
            prop_assert_eq!(decode(encode(op, value)), Some((op, value)));
        }
    }

    #[test]
    fn slot_tokens_differ_per_use_and_keep_the_index() {
        let (first, next) = (slot(7, 1), slot(7, 2));
        assert_ne!(first, next);
        for token in [first, next, slot(7, u32::MAX)] {
            let (op, value) = decode(token).unwrap();
            assert_eq!((op, slot_index(value)), (Op::SendSlot, 7));
        }
    }

    #[test]
    fn unknown_kinds_are_refused() {
        assert_eq!(decode(15 << VALUE_BITS), None);
    }
}
