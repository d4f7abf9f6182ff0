//! Session windows of one group key: spans of readings closer than the gap,
//! as Flink defines them: a reading opens `[ts, ts + gap)`, and sessions
//! whose intervals overlap merge, so a session is `[first, last + gap)`.
//!
//! ```text
//!   gap 10:   3 ·  8 ·       25 · 31            → [3, 18) and [25, 41)
//!   + 16:     3 ·  8 · 16 ·  25 · 31            → [3, 41): 16 bridges them
//!   final when the watermark reaches last + gap + lateness
//! ```
//!
//! The open sessions of a key are always the gap-connected runs of its
//! present readings, so [`split`] of the readings rebuilds them (restore,
//! snapshot chains).

use std::collections::BTreeMap;

/// The open sessions of one key: disjoint `(first, last)` reading times.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sessions {
    spans: BTreeMap<i64, i64>,
}

impl Sessions {
    /// Adds a reading at `ts`: it joins (and merges) every session whose
    /// interval overlaps `[ts, ts + gap)`, or starts one.
    pub fn add(&mut self, ts: i64, gap_ms: i64) {
        let (mut first, mut last) = (ts, ts);
        // Sessions starting before ts + gap and ending (last + gap) after ts.
        let overlapping: Vec<(i64, i64)> = self
            .spans
            .range(..ts.saturating_add(gap_ms))
            .rev()
            .take_while(|(_, l)| l.saturating_add(gap_ms) > ts)
            .map(|(f, l)| (*f, *l))
            .collect();
        for (f, l) in overlapping {
            self.spans.remove(&f);
            first = first.min(f);
            last = last.max(l);
        }
        self.spans.insert(first, last);
    }

    /// Takes out the sessions final under watermark `wm`: `last + gap + lateness ≤ wm`.
    pub fn close(&mut self, gap_ms: i64, lateness_ms: i64, wm: i64) -> Vec<(i64, i64)> {
        let closed: Vec<(i64, i64)> = self
            .spans
            .iter()
            .filter(|(_, l)| close_at(**l, gap_ms, lateness_ms) <= wm)
            .map(|(f, l)| (*f, *l))
            .collect();
        for (f, _) in &closed {
            self.spans.remove(f);
        }
        closed
    }

    /// When the first of them becomes final.
    pub fn next_close(&self, gap_ms: i64, lateness_ms: i64) -> Option<i64> {
        self.spans
            .values()
            .map(|l| close_at(*l, gap_ms, lateness_ms))
            .min()
    }

    pub fn spans(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.spans.iter().map(|(f, l)| (*f, *l))
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

/// The watermark at which a session whose last reading is at `last` is final.
pub fn close_at(last: i64, gap_ms: i64, lateness_ms: i64) -> i64 {
    last.saturating_add(gap_ms).saturating_add(lateness_ms)
}

/// The sessions of readings at `times` (ascending).
pub fn split(times: impl IntoIterator<Item = i64>, gap_ms: i64) -> Sessions {
    let mut s = Sessions::default();
    for ts in times {
        s.add(ts, gap_ms);
    }
    s
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn readings_within_the_gap_join_and_a_bridge_merges() {
        let mut s = split([3, 8, 25, 31], 10);
        assert_eq!(s.spans().collect::<Vec<_>>(), [(3, 8), (25, 31)]);
        s.add(16, 10);
        assert_eq!(s.spans().collect::<Vec<_>>(), [(3, 31)]);
        // Exactly last + gap starts a new session: intervals are half-open.
        s.add(41, 10);
        assert_eq!(s.spans().collect::<Vec<_>>(), [(3, 31), (41, 41)]);
        s.add(-7, 10);
        assert_eq!(
            s.spans().collect::<Vec<_>>(),
            [(-7, -7), (3, 31), (41, 41)],
            "[-7, 3) ends where 3 starts"
        );
        s.add(-6, 10);
        assert_eq!(
            s.spans().collect::<Vec<_>>(),
            [(-7, 31), (41, 41)],
            "[-6, 4) overlaps both"
        );
        assert_eq!(s.next_close(10, 5), Some(46));
        assert_eq!(s.close(10, 5, 50), vec![(-7, 31)]);
        assert_eq!(s.close(10, 5, 50), vec![]);
        assert_eq!(s.close(10, 5, 56), vec![(41, 41)]);
        assert!(s.is_empty());
    }

    proptest! {
        /// Oracle: in any arrival order, the sessions are the runs of the
        /// sorted times whose neighbours are closer than the gap.
        #[test]
        fn sessions_are_the_gap_connected_runs_in_any_order(
            mut times in prop::collection::vec(-1_000i64..1_000, 1..60),
            gap in 1i64..80,
            seed in any::<u64>(),
        ) {
            let mut x = seed | 1;
            for i in (1..times.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                times.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut s = Sessions::default();
            for &t in &times {
                s.add(t, gap);
            }
            times.sort_unstable();
            let mut naive: Vec<(i64, i64)> = Vec::new();
            for t in times {
                match naive.last_mut() {
                    Some((_, last)) if t < *last + gap => *last = (*last).max(t),
                    _ => naive.push((t, t)),
                }
            }
            prop_assert_eq!(s.spans().collect::<Vec<_>>(), naive);
        }
    }
}
