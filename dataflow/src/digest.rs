//! What an aggregation with `percentiles = "approx"` keeps of a window
//! instead of its readings: a digest, the same whatever order it was merged in.
//!
//! ```text
//!   one epoch's readings of a window ──Digest::add──▶ Digest ──entries──▶ (i64, u64) pairs
//!   the entries of any number of digests, any order ──Digest::of_entries──▶ Digest ──measured──▶ Measured
//! ```
//!
//! The window state (the arrangement, snapshot deltas and their
//! materialization, resharding) holds a window as a multiset of `(i64, u64)`
//! pairs that merge by union. A digest is written as such pairs, so that the
//! union of two digests' entries is the digest of both their readings:
//!
//! - DDSketch bins, `(tag | key, count)`: the counts of one key add up;
//! - exact sums of the values and of their squares, `(tag | exponent,
//!   integer)`: integers, they add up ([`exact_sum`]);
//! - the extreme readings (earliest, latest, smallest, largest) as readings
//!   `(event time, ordered bits)`: the union's extremes are among them.
//!
//! Tags are negative times, which no reading has (event times are checked
//! to lie in [2000, 2100)). Merging is integer addition and min/max, so a
//! result depends on the readings only, never on their order, the epochs or
//! the workers: bit-identical for any -w/-n, as exact aggregations are.
//!
//! Percentiles use sketches-ddsketch's logarithmic mapping (`Config::key`
//! and `Config::value`, relative accuracy [`RELATIVE_ACCURACY`]); the rank
//! walk is its `DDSketch::quantile`'s, tested against it. Its own sketch is
//! not the state: its collapsing store lays bins out by the order values came
//! in and does not give them out. Bins here are unbounded, one per occupied
//! key (at most ~3,600 per sign from 1e-9 to 1e300), so none collapses and no
//! merge order changes one.
//!
//! State: a window holds one digest per epoch that added readings to it
//! (`2 + bins + exponents` pairs, bins ≈ ln(max/min)/0.02 per sign), not one
//! pair per reading; a digest is smaller than the readings it replaces once a
//! window gets more than a few dozen readings per epoch.

mod exact_sum;
#[cfg(test)]
mod tests;

use std::sync::LazyLock;

use num_bigint::{BigInt, BigUint};
use rustc_hash::FxHashMap;
use sketches_ddsketch::Config;

use crate::aggregate::{Measured, Stats, from_ordered_bits};
use exact_sum::{ExactSum, ratio_to_f64, to_f64};

/// Relative accuracy of approximate percentiles: each estimate of the value
/// `x` at a rank is within `RELATIVE_ACCURACY · |x|` of it.
pub const RELATIVE_ACCURACY: f64 = 0.01;

/// Magnitudes at or below this are counted as zero (and estimated as 0).
pub const ZERO_MAGNITUDE: f64 = 1e-9;

/// The crate's mapping; its bin limit is never used (bins are kept here).
static MAPPING: LazyLock<Config> =
    LazyLock::new(|| Config::new(RELATIVE_ACCURACY, 2048, ZERO_MAGNITUDE));

/// An entry's time slot below zero: `i64::MIN + kind << 40 + payload`.
const KIND_SHIFT: u32 = 40;
const PAYLOAD_MASK: i64 = (1 << KIND_SHIFT) - 1;
const POSITIVE: i64 = 1;
const NEGATIVE: i64 = 2;
const ZERO: i64 = 3;
const SUM: i64 = 4;
const SQUARES: i64 = 5;
/// Bin keys (i32) are stored offset to be non-negative.
const KEY_OFFSET: i64 = 1 << 31;
/// Exponents (within ±2,200) likewise; the sign is the bit above them.
const EXPONENT_OFFSET: i64 = 8192;
const SIGN_BIT: i64 = 1 << 14;

fn tag(kind: i64, payload: i64) -> i64 {
    i64::MIN + (kind << KIND_SHIFT) + payload
}

fn untag(ts: i64) -> Option<(i64, i64)> {
    (ts < 0).then(|| {
        let t = ts.wrapping_sub(i64::MIN);
        (t >> KIND_SHIFT, t & PAYLOAD_MASK)
    })
}

fn exponent_payload(negative: bool, exponent: i32) -> i64 {
    i64::from(exponent) + EXPONENT_OFFSET + if negative { SIGN_BIT } else { 0 }
}

/// The readings a digest remembers as they were, `(event time, ordered bits)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extremes {
    /// Smallest and largest by (time, value): first and last value.
    first: (i64, u64),
    last: (i64, u64),
    /// Smallest and largest by (value, time).
    low: (u64, i64),
    high: (u64, i64),
}

impl Extremes {
    fn of(ts: i64, bits: u64) -> Self {
        Self {
            first: (ts, bits),
            last: (ts, bits),
            low: (bits, ts),
            high: (bits, ts),
        }
    }

    fn add(&mut self, ts: i64, bits: u64) {
        self.first = self.first.min((ts, bits));
        self.last = self.last.max((ts, bits));
        self.low = self.low.min((bits, ts));
        self.high = self.high.max((bits, ts));
    }
}

/// See the module docs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Digest {
    /// DDSketch bins: key → count, for values above [`ZERO_MAGNITUDE`]…
    positive: FxHashMap<i32, u64>,
    /// …below its negative (keyed by magnitude)…
    negative: FxHashMap<i32, u64>,
    /// …and within it.
    zero: u64,
    sum: ExactSum,
    squares: ExactSum,
    extremes: Option<Extremes>,
}

impl Digest {
    /// Adds one reading: its event time and the [`ordered_bits`](crate::aggregate::ordered_bits) of its value.
    pub fn add(&mut self, ts: i64, bits: u64) {
        let v = from_ordered_bits(bits);
        if v > ZERO_MAGNITUDE {
            *self.positive.entry(MAPPING.key(v)).or_default() += 1;
        } else if v < -ZERO_MAGNITUDE {
            *self.negative.entry(MAPPING.key(-v)).or_default() += 1;
        } else {
            self.zero += 1;
        }
        self.sum.add(v);
        self.squares.add_square(v);
        self.add_extreme(ts, bits);
    }

    fn add_extreme(&mut self, ts: i64, bits: u64) {
        match &mut self.extremes {
            Some(e) => e.add(ts, bits),
            None => self.extremes = Some(Extremes::of(ts, bits)),
        }
    }

    /// The digest whose entries are `entries`: any number of digests'
    /// entries, in any order.
    pub fn of_entries(entries: &[(i64, u64)]) -> Self {
        let mut d = Self::default();
        for &(ts, v) in entries {
            let Some((kind, payload)) = untag(ts) else {
                d.add_extreme(ts, v);
                continue;
            };
            let key = (payload - KEY_OFFSET) as i32;
            let exponent = ((payload & (SIGN_BIT - 1)) - EXPONENT_OFFSET) as i32;
            let negative = payload & SIGN_BIT != 0;
            match kind {
                POSITIVE => add_count(d.positive.entry(key).or_default(), v),
                NEGATIVE => add_count(d.negative.entry(key).or_default(), v),
                ZERO => add_count(&mut d.zero, v),
                SUM => d.sum.add_part(negative, exponent, u128::from(v)),
                SQUARES => d.squares.add_part(negative, exponent, u128::from(v)),
                _ => debug_assert!(false, "an entry of no known kind: {ts}"),
            }
        }
        d
    }

    /// Its entries, sorted: the pairs the window state keeps.
    pub fn entries(&self) -> Vec<(i64, u64)> {
        let mut out: Vec<(i64, u64)> = Vec::new();
        let bins = |kind, bins: &FxHashMap<i32, u64>, out: &mut Vec<_>| {
            out.extend(
                bins.iter()
                    .map(|(&k, &n)| (tag(kind, i64::from(k) + KEY_OFFSET), n)),
            );
        };
        bins(POSITIVE, &self.positive, &mut out);
        bins(NEGATIVE, &self.negative, &mut out);
        if self.zero > 0 {
            out.push((tag(ZERO, 0), self.zero));
        }
        for (kind, sum) in [(SUM, &self.sum), (SQUARES, &self.squares)] {
            out.extend(
                sum.parts()
                    .map(|(neg, e, v)| (tag(kind, exponent_payload(neg, e)), v)),
            );
        }
        if let Some(e) = self.extremes {
            let mut readings = [e.first, e.last, (e.low.1, e.low.0), (e.high.1, e.high.0)];
            readings.sort_unstable();
            let mut last = None;
            for r in readings {
                if last != Some(r) {
                    out.push(r);
                }
                last = Some(r);
            }
        }
        // Not deduplicated: two sum parts may share an exponent, and add up.
        out.sort_unstable();
        out
    }

    /// How many readings it holds.
    pub fn count(&self) -> u64 {
        let bins = |b: &FxHashMap<i32, u64>| b.values().fold(0u64, |a, &n| a.saturating_add(n));
        bins(&self.positive)
            .saturating_add(bins(&self.negative))
            .saturating_add(self.zero)
    }

    /// Every measure of its readings; percentiles at ranks `qs`. `None` when empty.
    ///
    /// Exact: count, min, max, first/last time and value. Sum: the exact sum,
    /// correctly rounded; mean: the exact sum over the count, correctly
    /// rounded; stddev: the square root of the exact population variance,
    /// rounded once before it (each may differ from an exact aggregation's,
    /// which adds in (time, value) order, in the last bits). Percentiles: see
    /// [`Digest::percentile`].
    pub fn measured(&self, qs: &[f64]) -> Option<Measured> {
        let e = self.extremes?;
        let count = self.count();
        if count == 0 {
            return None;
        }
        let n = BigUint::from(count);
        let (sum, mean, stddev) = match (self.sum.exact(), self.squares.exact()) {
            (Some((x, xe)), Some((q, qe))) => {
                // n²·variance = n·Σx² − (Σx)², exactly, at one exponent.
                let low = qe.min(2 * xe);
                let nq = (BigInt::from(n.clone()) * q) << (qe - low) as usize;
                let x2 = (&x * &x) << (2 * xe - low) as usize;
                let variance = ratio_to_f64(&(nq - x2), low, &(&n * &n));
                (
                    to_f64(&x, xe),
                    ratio_to_f64(&x, xe, &n),
                    variance.max(0.0).sqrt(),
                )
            }
            // Every value was ±0.
            _ => (0.0, 0.0, 0.0),
        };
        let (min, max) = (from_ordered_bits(e.low.0), from_ordered_bits(e.high.0));
        let bins = self.ascending_bins();
        Some(Measured {
            stats: Stats {
                count,
                sum,
                min,
                max,
                mean,
                stddev,
                first_ts: e.first.0,
                last_ts: e.last.0,
            },
            first_value: from_ordered_bits(e.first.1),
            last_value: from_ordered_bits(e.last.1),
            percentiles: qs
                .iter()
                .map(|&q| percentile(&bins, count, q, min, max))
                .collect(),
        })
    }

    /// (estimate, count) per bin, by ascending value, as the crate walks them.
    fn ascending_bins(&self) -> Vec<(f64, u64)> {
        let sorted = |b: &FxHashMap<i32, u64>| {
            let mut v: Vec<(i32, u64)> = b.iter().map(|(&k, &n)| (k, n)).collect();
            v.sort_unstable();
            v
        };
        let mut bins: Vec<(f64, u64)> = sorted(&self.negative)
            .into_iter()
            .rev()
            .map(|(k, n)| (-MAPPING.value(k), n))
            .collect();
        if self.zero > 0 {
            bins.push((0.0, self.zero));
        }
        bins.extend(
            sorted(&self.positive)
                .into_iter()
                .map(|(k, n)| (MAPPING.value(k), n)),
        );
        bins
    }

    /// The estimate of the value at `rank` (0-based) of its readings: the
    /// bin's value, as `DDSketch::quantile` gives it (for tests against it).
    #[cfg(test)]
    fn bin_value_at_rank(&self, rank: u64) -> f64 {
        value_at_rank(&self.ascending_bins(), rank)
    }
}

fn add_count(slot: &mut u64, n: u64) {
    *slot = slot.saturating_add(n);
}

fn value_at_rank(bins: &[(f64, u64)], rank: u64) -> f64 {
    let mut seen = 0u64;
    for &(v, n) in bins {
        seen = seen.saturating_add(n);
        if seen > rank {
            return v;
        }
    }
    bins.last().map_or(f64::NAN, |b| b.0)
}

/// The percentile at rank `q` of `count` readings, as DuckDB's
/// `quantile_cont` defines it (linear between the closest ranks ⌊q(n−1)⌋
/// and ⌈q(n−1)⌉), from the sketch's estimates of those two ranks' values.
///
/// The bound: the first and last rank are the exact min and max; any other
/// rank's estimate is within [`RELATIVE_ACCURACY`]·|x| of the value x at it
/// (|x| ≤ [`ZERO_MAGNITUDE`] reads 0), clamped to [min, max]. So when the two
/// ranks' values have one sign the result is within `RELATIVE_ACCURACY` of
/// the exact percentile, relatively; otherwise within `RELATIVE_ACCURACY ·
/// max(|x_lo|, |x_hi|)`.
fn percentile(bins: &[(f64, u64)], count: u64, q: f64, min: f64, max: f64) -> f64 {
    let last = count - 1;
    let at = |rank: u64| match rank {
        0 => min,
        r if r == last => max,
        r => value_at_rank(bins, r).clamp(min, max),
    };
    let pos = q.clamp(0.0, 1.0) * last as f64;
    let (lo, hi) = (pos.floor() as u64, (pos.ceil() as u64).min(last));
    let (a, b) = (at(lo.min(last)), at(hi));
    if lo == hi || a == b {
        a
    } else {
        a + (pos - lo as f64) * (b - a)
    }
}
