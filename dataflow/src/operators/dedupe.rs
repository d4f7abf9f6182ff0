//! Dedupe of producer retries on the device's worker: (device, metric, seq)
//! keys, each kept until its reading is final in every aggregation.
//!
//! Of copies with the same (device, seq, metric) the one from the earliest
//! epoch survives, and within an epoch the smallest (event time, value), so
//! even conflicting copies (not producer retries) give the same output in any
//! arrival order. A key is dropped once every window its reading belongs to
//! is final everywhere: a later copy is then judged `late` upstream.

use std::ops::Range;

use rustc_hash::FxHashMap;

use crate::job::Epoch;

/// One accepted reading on its device's worker, its (device, metric) interned.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Row {
    pub ts_ms: i64,
    pub value: f64,
    /// Meaningful if `sequenced`: 32 bytes, not the 40 of an `Option`.
    pub seq: u64,
    pub series: u32,
    /// Its dimensions, interned by the worker ([`super::names::Names::dims_of`]); 0: none.
    pub dims: u32,
    pub sequenced: bool,
}

impl Row {
    pub fn seq(&self) -> Option<u64> {
        self.sequenced.then_some(self.seq)
    }
}

/// Where the surviving copy of a dedupe key came from: an earlier epoch, or
/// row `row` of its series' rows in epoch `epoch` (which may still lose to a
/// smaller copy of it);
/// and when the key expires: once the watermark reaches `expires_at`, every
/// window of that copy is final and the key counts as absent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    pub expires_at: i64,
    pub epoch: Epoch,
    pub row: u32,
}

/// Expired dedupe keys are dropped in one sweep once the tables have grown to
/// twice what was live at the last sweep, and at least this many.
pub(crate) const SEEN_SWEEP_MIN: usize = 4096;

/// One series' dedupe keys (seq → [`Seen`]). Devices count seq up, so a new
/// key is nearly always above every other: it is appended to a vector kept
/// in seq order, where a copy finds it by binary search. A new key below
/// the largest goes to a map, so no order of arrival costs more than a hash.
#[derive(Debug, Default, Clone)]
pub(crate) struct SeriesSeen {
    ascending: Vec<(u64, Seen)>,
    others: FxHashMap<u64, Seen>,
    /// At least every key held; keys above it are absent.
    max: Option<u64>,
}

impl SeriesSeen {
    pub fn len(&self) -> usize {
        self.ascending.len() + self.others.len()
    }

    pub fn get_mut(&mut self, seq: u64) -> Option<&mut Seen> {
        if self.max.is_none_or(|m| seq > m) {
            return None;
        }
        match self.ascending.binary_search_by_key(&seq, |e| e.0) {
            Ok(i) => Some(&mut self.ascending[i].1),
            Err(_) => self.others.get_mut(&seq),
        }
    }

    /// Adds `seq`, which must be absent.
    pub fn insert_absent(&mut self, seq: u64, seen: Seen) {
        if self.max.is_none_or(|m| seq > m) {
            self.ascending.push((seq, seen));
            self.max = Some(seq);
        } else {
            self.others.insert(seq, seen);
        }
    }

    pub fn insert(&mut self, seq: u64, seen: Seen) {
        match self.get_mut(seq) {
            Some(held) => *held = seen,
            None => self.insert_absent(seq, seen),
        }
    }

    /// Every key held, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Seen)> {
        self.ascending
            .iter()
            .map(|(seq, s)| (*seq, s))
            .chain(self.others.iter().map(|(seq, s)| (*seq, s)))
    }

    /// Drops the keys that expired under watermark `wm`.
    pub fn retain_live(&mut self, wm: i64) {
        self.ascending.retain(|(_, s)| s.expires_at > wm);
        self.others.retain(|_, s| s.expires_at > wm);
        // The bound shrinks back, so a device that restarts its count appends again.
        self.max = self
            .ascending
            .last()
            .map(|e| e.0)
            .into_iter()
            .chain(self.others.keys().copied())
            .max();
    }
}

/// An epoch's rows grouped by series into `grouped`, each group in arrival
/// order, and each series' range there (a counting sort; `counts` is
/// scratch, all zero between calls).
pub(crate) fn by_series(
    rows: &[Row],
    counts: &mut Vec<u32>,
    grouped: &mut Vec<Row>,
) -> Vec<(u32, Range<usize>)> {
    let mut groups: Vec<(u32, Range<usize>)> = Vec::new();
    for r in rows {
        let s = r.series as usize;
        if counts.len() <= s {
            counts.resize(s + 1, 0);
        }
        if counts[s] == 0 {
            groups.push((r.series, 0..0));
        }
        counts[s] += 1;
    }
    // Counts become each group's write position, then its end.
    let mut at = 0usize;
    for (series, range) in &mut groups {
        let s = *series as usize;
        *range = at..at;
        at += counts[s] as usize;
        counts[s] = range.start as u32;
    }
    grouped.clear();
    grouped.resize(rows.len(), Row::default());
    for r in rows {
        let next = &mut counts[r.series as usize];
        grouped[*next as usize] = *r;
        *next += 1;
    }
    for (series, range) in &mut groups {
        range.end = std::mem::take(&mut counts[*series as usize]) as usize;
    }
    groups
}

/// Dedupes `rows` (all of one series' rows in epoch `epoch`) against the
/// series' keys `seen` and each other: clears `keep` of the losers and says
/// how many there were; the survivors' keys are added to `seen`, expiring at
/// `expiry(event time)`. Keys that expired under `wm` (the watermark the
/// epoch is judged by) count as absent.
pub(crate) fn dedupe(
    rows: &[Row],
    epoch: Epoch,
    wm: Option<i64>,
    expiry: impl Fn(i64) -> i64,
    seen: &mut SeriesSeen,
    keep: &mut [bool],
) -> u64 {
    // The survivor of conflicting copies does not depend on arrival order: an
    // earlier epoch's copy wins, and within an epoch the smallest (event time, value).
    let mut duplicates = 0u64;
    let rank = |x: &Row| (x.ts_ms, x.value.to_bits());
    let expired = |s: &Seen| wm.is_some_and(|w| s.expires_at <= w);
    for (i, r) in rows.iter().enumerate() {
        let Some(seq) = r.seq() else { continue };
        let mine = Seen {
            expires_at: expiry(r.ts_ms),
            epoch,
            row: i as u32,
        };
        let Some(first) = seen.get_mut(seq) else {
            seen.insert_absent(seq, mine);
            continue;
        };
        if expired(first) {
            *first = mine;
            continue;
        }
        duplicates += 1;
        if first.epoch != epoch {
            keep[i] = false;
            continue;
        }
        // Same epoch, same series: a row of this slice.
        let j = first.row as usize;
        if rank(r) < rank(&rows[j]) {
            keep[j] = false;
            *first = mine;
        } else {
            keep[i] = false;
        }
    }
    duplicates
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use std::collections::BTreeMap;

    use super::*;

    fn row(seq: Option<u64>, ts_ms: i64, value: f64) -> Row {
        Row {
            ts_ms,
            value,
            seq: seq.unwrap_or_default(),
            series: 0,
            dims: 0,
            sequenced: seq.is_some(),
        }
    }

    /// Keys expire at the event time rounded up to the next 10 s.
    fn expiry(ts: i64) -> i64 {
        (ts / 10_000 + 1) * 10_000
    }

    /// [`dedupe`] of all of `rows` (one series): which survive, how many did not.
    fn dedupe_all(
        rows: &[Row],
        epoch: Epoch,
        wm: Option<i64>,
        seen: &mut SeriesSeen,
    ) -> (Vec<bool>, u64) {
        let mut keep = vec![true; rows.len()];
        let duplicates = dedupe(rows, epoch, wm, expiry, seen, &mut keep);
        (keep, duplicates)
    }

    fn held_expiry(seen: &mut SeriesSeen, seq: u64) -> Option<i64> {
        seen.get_mut(seq).map(|s| s.expires_at)
    }

    #[test]
    fn an_earlier_epoch_wins_and_within_an_epoch_the_smallest_copy_in_any_order() {
        let mut seen = SeriesSeen::default();
        let first = [row(Some(7), 1_500, 2.0)];
        assert_eq!(dedupe_all(&first, 3, None, &mut seen), (vec![true], 0));
        // Epoch 4: a later copy of 7 loses whatever it holds; 8 comes three
        // times and its smallest (ts, value) wins in every arrival order.
        let copies = [
            row(Some(8), 2_000, 5.0),
            row(Some(8), 1_000, 9.0),
            row(Some(8), 1_000, 3.0),
        ];
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0], [0, 2, 1]] {
            let mut seen = seen.clone();
            let mut rows = vec![row(Some(7), 1_000, 1.0)];
            rows.extend(order.iter().map(|&i| copies[i]));
            let (keep, duplicates) = dedupe_all(&rows, 4, None, &mut seen);
            let winner = 1 + order.iter().position(|&i| i == 2).unwrap();
            let want: Vec<bool> = (0..rows.len()).map(|i| i == winner).collect();
            assert_eq!((keep, duplicates), (want, 3), "order {order:?}");
            assert_eq!(held_expiry(&mut seen, 8), Some(expiry(1_000)));
        }
    }

    #[test]
    fn an_expired_key_counts_as_absent_and_readings_without_seq_are_all_kept() {
        let mut seen = SeriesSeen::default();
        dedupe_all(&[row(Some(1), 9_000, 1.0)], 0, None, &mut seen);
        // Under a watermark before its expiry (10 000) the key still holds.
        let again = [row(Some(1), 12_000, 1.0)];
        assert_eq!(
            dedupe_all(&again, 1, Some(9_999), &mut seen),
            (vec![false], 1)
        );
        // At its expiry it is gone: the new copy is kept and its key renewed.
        assert_eq!(
            dedupe_all(&again, 2, Some(10_000), &mut seen),
            (vec![true], 0)
        );
        assert_eq!(held_expiry(&mut seen, 1), Some(20_000));
        assert_eq!(
            dedupe_all(&again, 3, Some(10_000), &mut seen),
            (vec![false], 1)
        );
        let unsequenced = [row(None, 1, 1.0), row(None, 1, 1.0)];
        assert_eq!(
            dedupe_all(&unsequenced, 4, None, &mut seen),
            (vec![true, true], 0)
        );
    }

    #[test]
    fn rows_group_by_series_in_arrival_order() {
        // Arrival i at event time i.
        let rows: Vec<Row> = [3u32, 1, 3, 0, 1, 3]
            .iter()
            .enumerate()
            .map(|(i, &series)| Row {
                series,
                ..row(None, i as i64, 0.0)
            })
            .collect();
        let (mut counts, mut grouped) = (vec![0; 2], vec![row(None, 9, 9.0); 9]);
        let groups = by_series(&rows, &mut counts, &mut grouped);
        let rows = grouped;
        assert_eq!(rows.len(), 6);
        let grouped: Vec<(u32, Vec<i64>)> = groups
            .into_iter()
            .map(|(series, range)| {
                assert!(rows[range.clone()].iter().all(|r| r.series == series));
                (series, rows[range].iter().map(|r| r.ts_ms).collect())
            })
            .collect();
        assert_eq!(grouped, [(3, vec![0, 2, 5]), (1, vec![1, 4]), (0, vec![3])]);
        assert!(counts.iter().all(|&c| c == 0), "{counts:?}");
    }

    proptest! {
        /// Whatever the order of seqs (restarts, disorder) and sweeps, a
        /// series' keys are exactly those of a map.
        #[test]
        fn series_seen_holds_what_a_map_holds(
            ops in prop::collection::vec((0u64..40, 0i64..100, prop::bool::weighted(0.1)), 1..200),
        ) {
            let mut seen = SeriesSeen::default();
            let mut model: BTreeMap<u64, i64> = BTreeMap::new();
            for (seq, expires_at, sweep) in ops {
                if sweep {
                    seen.retain_live(expires_at);
                    model.retain(|_, e| *e > expires_at);
                } else {
                    prop_assert_eq!(held_expiry(&mut seen, seq), model.get(&seq).copied());
                    let entry = Seen { expires_at, epoch: 0, row: 0 };
                    if model.insert(seq, expires_at).is_some() {
                        seen.insert(seq, entry);
                    } else {
                        seen.insert_absent(seq, entry);
                    }
                }
                prop_assert_eq!(seen.len(), model.len());
            }
            for seq in 0..40 {
                prop_assert_eq!(held_expiry(&mut seen, seq), model.get(&seq).copied());
            }
        }
    }
}
