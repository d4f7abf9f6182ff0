//! Keys and readings stored as zigzag varint steps from the one before: a
//! device counts seq up by one, its keys of one window expire together, its
//! readings come a period apart, so most steps take one to three bytes where
//! whole values take nine. Written straight from the snapshot and read
//! straight into it, with no vector of steps in between.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::SeenKey;

/// A value stored as two integers, each as its step from the value before.
pub(super) trait ToPair {
    fn pair(&self) -> (u64, u64);
}

/// A value read back from its two integers.
pub(super) trait FromPair {
    fn from_pair(pair: (u64, u64)) -> Self;
}

/// A dedupe key's (seq, expiry).
impl ToPair for SeenKey {
    fn pair(&self) -> (u64, u64) {
        (self.seq, self.expires_at as u64)
    }
}

impl ToPair for (u64, i64) {
    fn pair(&self) -> (u64, u64) {
        (self.0, self.1 as u64)
    }
}

impl FromPair for (u64, i64) {
    fn from_pair((seq, expires_at): (u64, u64)) -> Self {
        (seq, expires_at as i64)
    }
}

/// A reading's (event time, value bits).
impl ToPair for (i64, u64) {
    fn pair(&self) -> (u64, u64) {
        (self.0 as u64, self.1)
    }
}

impl FromPair for (i64, u64) {
    fn from_pair((ts, bits): (u64, u64)) -> Self {
        (ts as i64, bits)
    }
}

/// `values` written as steps, the first from (0, 0).
pub(super) struct StepsOf<'a, T>(pub &'a [T]);

impl<T: ToPair> Serialize for StepsOf<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        let mut before = (0u64, 0u64);
        for v in self.0 {
            let now = v.pair();
            // Wrapping: any two values have a step, and it leads back exactly.
            let step = (
                now.0.wrapping_sub(before.0) as i64,
                now.1.wrapping_sub(before.1) as i64,
            );
            seq.serialize_element(&step)?;
            before = now;
        }
        seq.end()
    }
}

/// Values read back from [`StepsOf`].
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Steps<T>(pub Vec<T>);

/// A length read from a file reserves at most this many values ahead: a
/// damaged length cannot allocate more than the file holds.
const RESERVE_AT_MOST: usize = 1 << 16;

impl<'de, T: FromPair> Deserialize<'de> for Steps<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Walk<T>(PhantomData<T>);
        impl<'de, T: FromPair> Visitor<'de> for Walk<T> {
            type Value = Steps<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of steps")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Steps<T>, A::Error> {
                let ahead = seq.size_hint().unwrap_or(0).min(RESERVE_AT_MOST);
                let mut values = Vec::with_capacity(ahead);
                let mut at = (0u64, 0u64);
                while let Some((a, b)) = seq.next_element::<(i64, i64)>()? {
                    at = (at.0.wrapping_add(a as u64), at.1.wrapping_add(b as u64));
                    values.push(T::from_pair(at));
                }
                Ok(Steps(values))
            }
        }
        d.deserialize_seq(Walk(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sealed::codec;
    use bincode::Options;

    /// Any values, extremes and steps down included, read back exactly; a
    /// device's usual readings take a few bytes each.
    #[test]
    fn steps_lead_back_to_every_value_and_small_steps_are_small() {
        let readings: Vec<(i64, u64)> =
            vec![(i64::MIN, u64::MAX), (i64::MAX, 0), (-1, 1), (0, u64::MAX)];
        let bytes = codec().serialize(&StepsOf(&readings)).unwrap();
        let back: Steps<(i64, u64)> = codec().deserialize(&bytes).unwrap();
        assert_eq!(back.0, readings);

        let keys: Vec<(u64, i64)> = (0..100)
            .map(|i| (1_000 + i, 60_000 + i as i64 / 10))
            .collect();
        let bytes = codec().serialize(&StepsOf(&keys)).unwrap();
        let back: Steps<(u64, i64)> = codec().deserialize(&bytes).unwrap();
        assert_eq!(back.0, keys);
        // The first key whole (3 + 3 bytes), then a byte per step: 200 + 6 + the length.
        assert!(bytes.len() <= 210, "{} bytes", bytes.len());
    }
}
