use proptest::prelude::*;
use sketches_ddsketch::DDSketch;

use super::*;
use crate::aggregate::{Measured, ordered_bits, quantile_cont};

const QS: [f64; 8] = [0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.999, 1.0];

fn digest_of(readings: &[(i64, f64)]) -> Digest {
    let mut d = Digest::default();
    for &(ts, v) in readings {
        d.add(ts, ordered_bits(v));
    }
    d
}

fn bits(m: &Measured) -> Vec<u64> {
    let s = &m.stats;
    [
        s.sum,
        s.min,
        s.max,
        s.mean,
        s.stddev,
        m.first_value,
        m.last_value,
    ]
    .iter()
    .chain(&m.percentiles)
    .map(|v| v.to_bits())
    .chain([s.count, s.first_ts as u64, s.last_ts as u64])
    .collect()
}

/// Adversarial values: magnitudes from 1e-12 to 1e12 of both signs, zeros,
/// values within the zero band, long runs of one value, two far-apart modes.
fn adversarial() -> impl Strategy<Value = Vec<f64>> {
    let value = prop_oneof![
        (-12i32..12, 1.0f64..10.0, any::<bool>()).prop_map(|(e, m, neg)| if neg {
            -m * 10f64.powi(e)
        } else {
            m * 10f64.powi(e)
        }),
        Just(0.0),
        Just(-0.0),
        (-1e-9f64..1e-9),
        Just(1e12),
        Just(3e-7),
        (20.0f64..30.0),
    ];
    prop_oneof![
        prop::collection::vec(value, 1..400),
        // Two modes twelve orders of magnitude apart.
        (1usize..200, 1usize..200).prop_map(|(a, b)| {
            let mut v = vec![1e-6; a];
            v.extend(std::iter::repeat_n(1e6, b));
            v
        }),
        // One value many times: every rank is the same bin.
        (1usize..500, -1e3f64..1e3).prop_map(|(n, x)| vec![x; n]),
    ]
}

fn with_times(values: &[f64]) -> Vec<(i64, f64)> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| (1_700_000_000_000 + (i as i64 * 7919) % 1000, v))
        .collect()
}

/// The stated bound for the value `x` at one rank: α·|x|, and the zero band.
fn rank_bound(x: f64) -> f64 {
    RELATIVE_ACCURACY * x.abs() * (1.0 + 1e-9) + ZERO_MAGNITUDE
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Split anyhow, merged in any order, through the state's entries: the same bits.
    #[test]
    fn a_digest_is_the_same_whatever_order_it_merged_in(
        values in adversarial(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        seed in any::<u64>(),
    ) {
        let readings = with_times(&values);
        let whole = digest_of(&readings).measured(&QS).unwrap();
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(readings.len() + 1)).collect();
        cuts.extend([0, readings.len()]);
        cuts.sort_unstable();
        let mut entries: Vec<(i64, u64)> = cuts
            .windows(2)
            .flat_map(|w| digest_of(&readings[w[0]..w[1]]).entries())
            .collect();
        // Any order: a cheap deterministic shuffle.
        let n = entries.len();
        for i in (1..n).rev() {
            entries.swap(i, (seed.wrapping_mul(i as u64 + 1) >> 7) as usize % (i + 1));
        }
        // As snapshots store them: bits of the value, not ordered bits.
        let stored: Vec<(i64, u64)> = entries
            .iter()
            .map(|&(t, b)| (t, from_ordered_bits(b).to_bits()))
            .collect();
        let restored: Vec<(i64, u64)> = stored
            .iter()
            .map(|&(t, b)| (t, ordered_bits(f64::from_bits(b))))
            .collect();
        let merged = Digest::of_entries(&restored);
        prop_assert_eq!(bits(&merged.measured(&QS).unwrap()), bits(&whole));
        // And once more through its own entries (the compaction on restore).
        let again = Digest::of_entries(&merged.entries());
        prop_assert_eq!(bits(&again.measured(&QS).unwrap()), bits(&whole));
    }

    /// The documented error bound against DuckDB's `quantile_cont` (the
    /// exact aggregation's percentile), on adversarial inputs.
    #[test]
    fn approximate_percentiles_stay_within_their_bound(values in adversarial()) {
        let d = digest_of(&with_times(&values));
        let qs: Vec<f64> = (0..=100).map(|i| f64::from(i) / 100.0).chain([0.999, 0.9999]).collect();
        let got = d.measured(&qs).unwrap().percentiles;
        let mut sorted = values.clone();
        sorted.sort_unstable_by(f64::total_cmp);
        let last = sorted.len() - 1;
        for (&q, &approx) in qs.iter().zip(&got) {
            let exact = quantile_cont(&sorted, q);
            let pos = q * last as f64;
            let (lo, hi) = (sorted[pos.floor() as usize], sorted[(pos.ceil() as usize).min(last)]);
            let bound = rank_bound(lo).max(rank_bound(hi));
            prop_assert!(
                (approx - exact).abs() <= bound,
                "q {q}: approx {approx}, exact {exact}, bound {bound} (ranks' values {lo}, {hi})"
            );
            if lo.signum() == hi.signum() && lo.abs() > ZERO_MAGNITUDE && hi.abs() > ZERO_MAGNITUDE {
                prop_assert!(
                    (approx - exact).abs() <= RELATIVE_ACCURACY * exact.abs() * (1.0 + 1e-9),
                    "q {q}: approx {approx} not within 1 % of {exact}"
                );
            }
        }
    }

    /// Oracle: each rank's estimate is what sketches-ddsketch's own sketch
    /// says at that rank (values within its 2,048 bins, so it never collapses).
    #[test]
    fn ranks_read_as_the_crates_ddsketch_reads_them(
        values in prop::collection::vec(prop_oneof![
            (-6i32..9, 1.0f64..10.0, any::<bool>())
                .prop_map(|(e, m, neg)| if neg { -m * 10f64.powi(e) } else { m * 10f64.powi(e) }),
            Just(0.0),
        ], 3..300),
    ) {
        let d = digest_of(&with_times(&values));
        let mut theirs = DDSketch::new(*MAPPING);
        values.iter().for_each(|&v| theirs.add(v));
        let n = values.len() as u64;
        for rank in 1..n - 1 {
            let q = (rank as f64 + 0.5) / (n - 1) as f64;
            let expected = theirs.quantile(q).ok().flatten();
            prop_assert_eq!(Some(d.bin_value_at_rank(rank)), expected, "rank {}", rank);
        }
    }

    /// Everything but percentiles against the exact aggregation of the same readings.
    #[test]
    fn other_measures_match_the_exact_ones(values in adversarial()) {
        let mut readings = with_times(&values);
        let approx = digest_of(&readings).measured(&[]).unwrap();
        readings.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let exact = Measured::of_sorted(&readings, &[], &mut Vec::new()).unwrap();
        let (a, e) = (&approx.stats, &exact.stats);
        // Values, not bits: which of ±0 is the smaller is the one thing they may differ on.
        prop_assert_eq!((a.count, a.min, a.max, a.first_ts, a.last_ts), (e.count, e.min, e.max, e.first_ts, e.last_ts));
        prop_assert_eq!(approx.first_value.to_bits(), exact.first_value.to_bits());
        prop_assert_eq!(approx.last_value.to_bits(), exact.last_value.to_bits());
        let scale = values.iter().fold(0f64, |m, v| m.max(v.abs())) * values.len() as f64;
        prop_assert!((a.sum - e.sum).abs() <= scale * 1e-15, "sum {} vs {}", a.sum, e.sum);
        prop_assert!((a.mean - e.mean).abs() <= scale * 1e-15, "mean {} vs {}", a.mean, e.mean);
        // The exact aggregation's two passes round too (a constant's spread: ~1e-16 of it).
        let largest = values.iter().fold(0f64, |m, v| m.max(v.abs()));
        let tolerance = (a.max - a.min) * 1e-6 + largest * 1e-12;
        prop_assert!((a.stddev - e.stddev).abs() <= tolerance, "stddev {} vs {}", a.stddev, e.stddev);
    }
}

#[test]
fn sums_and_spread_are_exact_where_they_can_be() {
    let m = digest_of(&with_times(&[
        1e16, 1.0, 1.0, -1e16, 2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0,
    ]))
    .measured(&[0.5])
    .unwrap();
    assert_eq!(m.stats.sum, 42.0);
    assert_eq!(m.stats.mean, 3.5);
    let m = digest_of(&with_times(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]))
        .measured(&[])
        .unwrap();
    assert_eq!(m.stats.stddev, 2.0);
    // A constant has no spread at all, however large it is.
    let m = digest_of(&with_times(&[1e300; 7]))
        .measured(&[0.5])
        .unwrap();
    assert_eq!((m.stats.stddev, m.percentiles[0]), (0.0, 1e300));
    assert_eq!(digest_of(&[]).measured(&[0.5]), None);
}

#[test]
fn a_digest_is_smaller_than_a_busy_windows_readings() {
    let readings: Vec<(i64, f64)> = (0..10_000)
        .map(|i| {
            (
                1_700_000_000_000 + i,
                20.0 + f64::from(i as i32 % 1000) / 100.0,
            )
        })
        .collect();
    let entries = digest_of(&readings).entries();
    // 20.0..30.0 spans ln(1.5)/0.02 ≈ 21 bins: a few dozen pairs for 10,000 readings.
    assert!(entries.len() < 60, "{} entries", entries.len());
}
