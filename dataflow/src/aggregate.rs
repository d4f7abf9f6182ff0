//! Aggregates of one (device, metric, window).
//!
//! ```text
//!   readings (ts, value), any order ──sort by (ts, value bits)──▶ count, sum (compensated),
//!   min, max, mean, population stddev (two-pass), first/last event time
//! ```
//!
//! Sorting first makes every float bit-identical whatever the arrival order,
//! the epoch boundaries or the number of workers: the invariance tests compare
//! bytes, not approximations.

use std::cmp::Ordering;

use iotflow_jobfile::Measure;
use serde::{Deserialize, Serialize};

/// The statistics of one window's readings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Population standard deviation (divides by n).
    pub stddev: f64,
    pub first_ts: i64,
    pub last_ts: i64,
}

fn canonical(a: &(i64, f64), b: &(i64, f64)) -> Ordering {
    a.0.cmp(&b.0).then_with(|| a.1.total_cmp(&b.1))
}

/// `v`'s bits mapped so that unsigned order is `f64::total_cmp` order: window
/// state keeps values as these, so an arrangement's sorted values are already
/// in the canonical order [`Stats::of_sorted`] wants.
pub fn ordered_bits(v: f64) -> u64 {
    let b = v.to_bits();
    if b >> 63 == 1 { !b } else { b | 1 << 63 }
}

/// The inverse of [`ordered_bits`].
pub fn from_ordered_bits(b: u64) -> f64 {
    f64::from_bits(if b >> 63 == 1 { b & !(1 << 63) } else { !b })
}

impl Stats {
    /// Statistics of `readings` (sorted in place); `None` when empty.
    pub fn of(readings: &mut [(i64, f64)]) -> Option<Stats> {
        readings.sort_unstable_by(canonical);
        Self::of_sorted(readings)
    }

    /// Statistics of `readings`, already sorted by (event time, `total_cmp`).
    pub fn of_sorted(readings: &[(i64, f64)]) -> Option<Stats> {
        if readings.is_empty() {
            return None;
        }
        debug_assert!(readings.is_sorted_by(|a, b| canonical(a, b).is_le()));
        let count = readings.len() as u64;
        let sum = neumaier_sum(readings.iter().map(|r| r.1));
        let mean = sum / count as f64;
        let sq = neumaier_sum(readings.iter().map(|r| (r.1 - mean) * (r.1 - mean)));
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        for &(_, v) in readings.iter() {
            min = min.min(v);
            max = max.max(v);
        }
        Some(Stats {
            count,
            sum,
            min,
            max,
            mean,
            stddev: (sq / count as f64).sqrt(),
            first_ts: readings[0].0,
            last_ts: readings[readings.len() - 1].0,
        })
    }
}

/// Every measure a job file can ask for, of one window's readings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub stats: Stats,
    /// The value of the earliest reading (of equal times, the smallest value).
    pub first_value: f64,
    /// The value of the latest reading (of equal times, the largest value).
    pub last_value: f64,
    /// The asked-for percentiles, in the order asked.
    pub percentiles: Vec<f64>,
}

impl Measured {
    /// The measures of `readings`, sorted in the canonical (time, `total_cmp`)
    /// order, with the percentiles at ranks `qs` (0 < q < 1); `scratch` holds
    /// the values sorted by value when there are percentiles.
    pub fn of_sorted(readings: &[(i64, f64)], qs: &[f64], scratch: &mut Vec<f64>) -> Option<Self> {
        let stats = Stats::of_sorted(readings)?;
        let percentiles = match qs.is_empty() {
            true => Vec::new(),
            false => {
                scratch.clear();
                scratch.extend(readings.iter().map(|r| r.1));
                scratch.sort_unstable_by(f64::total_cmp);
                qs.iter().map(|&q| quantile_cont(scratch, q)).collect()
            }
        };
        Some(Self {
            stats,
            first_value: readings[0].1,
            last_value: readings[readings.len() - 1].1,
            percentiles,
        })
    }
}

/// A measure's value of one window, typed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MeasureValue {
    Count(u64),
    Time(i64),
    Float(f64),
}

impl Measured {
    /// Measure `m` of this window; `percentile` counts the percentile measures
    /// read so far (they are kept in the order asked).
    pub fn value_of(&self, m: &Measure, percentile: &mut usize) -> MeasureValue {
        let measured = self;
        let s: &Stats = &measured.stats;
        match m {
            Measure::Count => MeasureValue::Count(s.count),
            Measure::Sum => MeasureValue::Float(s.sum),
            Measure::Min => MeasureValue::Float(s.min),
            Measure::Max => MeasureValue::Float(s.max),
            Measure::Mean => MeasureValue::Float(s.mean),
            Measure::Stddev => MeasureValue::Float(s.stddev),
            Measure::FirstTs => MeasureValue::Time(s.first_ts),
            Measure::LastTs => MeasureValue::Time(s.last_ts),
            Measure::FirstValue => MeasureValue::Float(measured.first_value),
            Measure::LastValue => MeasureValue::Float(measured.last_value),
            Measure::Percentile(_) => {
                let v = measured
                    .percentiles
                    .get(*percentile)
                    .copied()
                    .unwrap_or(f64::NAN);
                *percentile += 1;
                MeasureValue::Float(v)
            }
        }
    }
}

impl MeasureValue {
    /// As a number (times in epoch milliseconds).
    pub fn as_f64(&self) -> f64 {
        match *self {
            MeasureValue::Count(n) => n as f64,
            MeasureValue::Time(t) => t as f64,
            MeasureValue::Float(v) => v,
        }
    }
}

/// The value at rank `q` of `sorted` (ascending, not empty), interpolated
/// linearly between the closest ranks: DuckDB's `quantile_cont`, numpy's
/// default. Exact for a given input: no order or worker count changes it.
pub fn quantile_cont(sorted: &[f64], q: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return f64::NAN;
    };
    let pos = q.clamp(0.0, 1.0) * last as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let (a, b) = (sorted[lo.min(last)], sorted[hi.min(last)]);
    if lo == hi || a == b {
        a
    } else {
        a + (pos - lo as f64) * (b - a)
    }
}

/// Compensated (Neumaier) summation: exact to the last bit far more often than
/// a plain sum, and as deterministic for a fixed order.
fn neumaier_sum(values: impl Iterator<Item = f64>) -> f64 {
    let (mut sum, mut comp) = (0.0f64, 0.0f64);
    for v in values {
        let t = sum + v;
        if sum.abs() >= v.abs() {
            comp += (sum - t) + v;
        } else {
            comp += (v - t) + sum;
        }
        sum = t;
    }
    sum + comp
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn basic_statistics() {
        let mut r = vec![(30, 3.0), (10, 1.0), (20, 2.0)];
        let s = Stats::of(&mut r).unwrap();
        assert_eq!(
            (s.count, s.sum, s.min, s.max, s.mean),
            (3, 6.0, 1.0, 3.0, 2.0)
        );
        assert!((s.stddev - (2.0f64 / 3.0).sqrt()).abs() < 1e-15);
        assert_eq!((s.first_ts, s.last_ts), (10, 30));
        assert_eq!(Stats::of(&mut []), None);
    }

    #[test]
    fn compensated_sum_keeps_small_values_next_to_large_ones() {
        let mut r = vec![(0, 1e16), (1, 1.0), (2, -1e16)];
        assert_eq!(Stats::of(&mut r).unwrap().sum, 1.0);
    }

    #[test]
    fn percentiles_interpolate_between_closest_ranks_as_duckdb_does() {
        // DuckDB: SELECT quantile_cont(x, [0.5, 0.95, 0.999]) FROM (VALUES (1),(2),(3),(4),(10)) t(x)
        // → [3.0, 8.8, 9.976000000000003]
        let sorted = [1.0, 2.0, 3.0, 4.0, 10.0];
        assert_eq!(quantile_cont(&sorted, 0.5), 3.0);
        assert!((quantile_cont(&sorted, 0.95) - 8.8).abs() < 1e-12);
        assert!((quantile_cont(&sorted, 0.999) - 9.976).abs() < 1e-12);
        assert_eq!(quantile_cont(&[7.0], 0.99), 7.0);
        let mut scratch = Vec::new();
        let m = Measured::of_sorted(
            &[(1, 5.0), (1, 9.0), (2, -1.0), (3, 2.0), (3, 4.0)],
            &[0.5],
            &mut scratch,
        )
        .unwrap();
        assert_eq!(
            (m.first_value, m.last_value, m.percentiles.as_slice()),
            (5.0, 4.0, &[4.0][..])
        );
    }

    proptest! {
        /// Oracle: a percentile against a naive definition (the value at
        /// fractional rank q·(n−1) of the sorted values, interpolated).
        #[test]
        fn percentiles_match_a_naive_recomputation(
            mut values in prop::collection::vec(-1e6f64..1e6, 1..300),
            q in 0.001f64..0.999,
        ) {
            let mut readings: Vec<(i64, f64)> = values.iter().enumerate().map(|(i, v)| ((i % 7) as i64, *v)).collect();
            readings.sort_unstable_by(canonical);
            let mut scratch = Vec::new();
            let got = Measured::of_sorted(&readings, &[q], &mut scratch).unwrap().percentiles[0];
            values.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let rank = q * (values.len() - 1) as f64;
            let (lo, hi) = (values[rank.floor() as usize], values[rank.ceil() as usize]);
            let naive = lo + (hi - lo) * (rank - rank.floor());
            prop_assert!((got - naive).abs() <= 1e-9 * naive.abs().max(1.0), "{got} vs {naive}");
            prop_assert!(got >= values[0] && got <= values[values.len() - 1]);
        }

        /// Ordered bits sort like `total_cmp` and round-trip every bit.
        #[test]
        fn ordered_bits_follow_total_order(a in any::<f64>(), b in any::<f64>()) {
            prop_assert_eq!(ordered_bits(a).cmp(&ordered_bits(b)), a.total_cmp(&b));
            prop_assert_eq!(from_ordered_bits(ordered_bits(a)).to_bits(), a.to_bits());
        }

        /// Any permutation gives bit-identical statistics.
        #[test]
        fn order_does_not_change_a_single_bit(
            mut r in prop::collection::vec((0i64..1_000, -1e6f64..1e6), 1..200),
            seed in any::<u64>(),
        ) {
            let a = Stats::of(&mut r.clone()).unwrap();
            // A seeded shuffle.
            let mut x = seed | 1;
            for i in (1..r.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                r.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let b = Stats::of(&mut r).unwrap();
            prop_assert_eq!(a.sum.to_bits(), b.sum.to_bits());
            prop_assert_eq!(a.stddev.to_bits(), b.stddev.to_bits());
            prop_assert_eq!(a, b);
        }

        /// Oracle: within 1e-9 relative of a naive f64 computation.
        #[test]
        fn matches_a_naive_computation(mut r in prop::collection::vec((0i64..1_000, -1e3f64..1e3), 1..200)) {
            let n = r.len() as f64;
            let sum: f64 = r.iter().map(|x| x.1).sum();
            let mean = sum / n;
            let var: f64 = r.iter().map(|x| (x.1 - mean).powi(2)).sum::<f64>() / n;
            let s = Stats::of(&mut r).unwrap();
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
            prop_assert!(close(s.sum, sum));
            prop_assert!(close(s.mean, mean));
            prop_assert!(close(s.stddev, var.sqrt()));
        }
    }
}
