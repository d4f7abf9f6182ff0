//! Exact sums of floats as integers per binary exponent, mergeable by union.
//!
//! A finite `f64` is `m · 2^e` with an integer `m < 2^53`: a sum of floats is
//! a sum of such terms, kept exactly as one unsigned integer per (sign,
//! exponent). Adding two sums adds their integers, so a sum is the same
//! whatever order its values came in, and two sums' entries simply union.
//! Only when a window is emitted do the parts become one big integer, and
//! that integer one correctly rounded `f64`.
//!
//! Written here because no crate keeps a float sum as integers that merge by
//! union (superaccumulators keep carries in a layout of their own).

use num_bigint::{BigInt, BigUint, Sign};
use rustc_hash::FxHashMap;

/// Σ mantissas per (negative, exponent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ExactSum {
    parts: FxHashMap<(bool, i32), u128>,
}

/// `x` as (negative, mantissa, exponent): `x = ±m · 2^e`.
fn decompose(x: f64) -> (bool, u64, i32) {
    debug_assert!(x.is_finite(), "window values are finite");
    let bits = x.to_bits();
    let negative = bits >> 63 == 1;
    let field = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1 << 52) - 1);
    match field {
        0 => (negative, fraction, -1074),
        _ => (negative, fraction | 1 << 52, field - 1075),
    }
}

impl ExactSum {
    /// Adds `m · 2^exponent` with the sign given.
    pub fn add_part(&mut self, negative: bool, exponent: i32, m: u128) {
        if m == 0 {
            return;
        }
        let part = self.parts.entry((negative, exponent)).or_default();
        let (sum, carried) = part.overflowing_add(m);
        *part = sum;
        if carried {
            self.add_part(negative, exponent + 128, 1);
        }
    }

    pub fn add(&mut self, x: f64) {
        let (negative, m, e) = decompose(x);
        self.add_part(negative, e, u128::from(m));
    }

    /// Adds `x²`, exactly: `m² < 2^106`.
    pub fn add_square(&mut self, x: f64) {
        let (_, m, e) = decompose(x);
        self.add_part(false, 2 * e, u128::from(m) * u128::from(m));
    }

    /// Its parts as (negative, exponent, value < 2^64), in no fixed order:
    /// a u128 part is written as two, the high one 64 exponents up.
    pub fn parts(&self) -> impl Iterator<Item = (bool, i32, u64)> + '_ {
        self.parts.iter().flat_map(|(&(negative, e), &v)| {
            let (lo, hi) = (v as u64, (v >> 64) as u64);
            [(negative, e, lo), (negative, e + 64, hi)]
                .into_iter()
                .filter(|p| p.2 != 0)
        })
    }

    /// The exact sum as `n · 2^exponent`; `None` when nothing was added.
    pub fn exact(&self) -> Option<(BigInt, i32)> {
        let low = self.parts.keys().map(|&(_, e)| e).min()?;
        let mut n = BigInt::default();
        for (&(negative, e), &v) in &self.parts {
            // Exponents span at most a few thousand: the shift is bounded.
            let part = BigInt::from(v) << (e - low) as usize;
            if negative {
                n -= part;
            } else {
                n += part;
            }
        }
        Some((n, low))
    }
}

/// `n · 2^exponent`, correctly rounded to the nearest `f64`.
pub(super) fn to_f64(n: &BigInt, exponent: i32) -> f64 {
    rounded(n.sign(), n.magnitude(), false, i64::from(exponent))
}

/// `n · 2^exponent / d`, correctly rounded to the nearest `f64` (`d > 0`).
pub(super) fn ratio_to_f64(n: &BigInt, exponent: i32, d: &BigUint) -> f64 {
    // Enough quotient bits that truncating it and keeping whether anything
    // was left (sticky) rounds as the exact ratio would.
    let shift = (66 + d.bits()).saturating_sub(n.magnitude().bits()) as usize;
    let scaled = n.magnitude() << shift;
    let (q, r) = (&scaled / d, &scaled % d);
    let sticky = r.bits() > 0;
    rounded(n.sign(), &q, sticky, i64::from(exponent) - shift as i64)
}

/// `±(m + a little when sticky) · 2^exponent`, rounded to nearest, ties to even.
fn rounded(sign: Sign, m: &BigUint, sticky: bool, exponent: i64) -> f64 {
    let bits = m.bits();
    if bits == 0 {
        return 0.0;
    }
    // The top 64 bits, left-aligned, with a sticky lowest bit for anything
    // below them: u64 → f64 then rounds to nearest exactly as the whole would.
    let (top, scale) = if bits > 64 {
        let shift = bits - 64;
        let top = (m >> shift as usize).iter_u64_digits().next().unwrap_or(0);
        let lost = m.trailing_zeros().is_some_and(|z| z < shift);
        (top | u64::from(lost || sticky), shift as i64)
    } else {
        let top = m.iter_u64_digits().next().unwrap_or(0) << (64 - bits);
        (top | u64::from(sticky), bits as i64 - 64)
    };
    let v = scale_by_power_of_two(top as f64, scale + exponent);
    match sign {
        Sign::Minus => -v,
        _ => v,
    }
}

/// `v · 2^e` (exact while the result is normal).
fn scale_by_power_of_two(mut v: f64, mut e: i64) -> f64 {
    const STEP: i64 = 1000;
    while e > STEP && v.is_finite() {
        v *= 2f64.powi(STEP as i32);
        e -= STEP;
    }
    while e < -STEP && v != 0.0 {
        v *= 2f64.powi(-STEP as i32);
        e += STEP;
    }
    v * 2f64.powi(e as i32)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sum_of(values: &[f64]) -> f64 {
        let mut s = ExactSum::default();
        values.iter().for_each(|&v| s.add(v));
        s.exact().map_or(0.0, |(n, e)| to_f64(&n, e))
    }

    #[test]
    fn sums_are_exact_where_floats_lose_digits() {
        // 1e16 + 1 + 1 − 1e16: a float sum says 0 or 4 depending on order.
        assert_eq!(sum_of(&[1e16, 1.0, 1.0, -1e16]), 2.0);
        // The doubles nearest 0.1, 0.2 and 0.3 sum to exactly 2^-55.
        assert_eq!(sum_of(&[0.1, 0.2, -0.3]), 2f64.powi(-55));
        assert_eq!(sum_of(&[f64::MAX, f64::MAX, -f64::MAX]), f64::MAX);
        assert_eq!(sum_of(&[5e-324, 5e-324]), 1e-323);
        assert_eq!(sum_of(&[-0.5, -0.25]), -0.75);
    }

    #[test]
    fn ratios_round_correctly() {
        let third = ratio_to_f64(&BigInt::from(1), 0, &BigUint::from(3u32));
        assert_eq!(third, 1.0 / 3.0);
        let tiny = ratio_to_f64(&BigInt::from(-7), -1074, &BigUint::from(7u32));
        assert_eq!(tiny, -5e-324);
        // Ties to even: 2^53 + 1 is halfway between two floats.
        let tie = BigInt::from((1u64 << 53) + 1);
        assert_eq!(to_f64(&tie, 0), 9007199254740992.0);
    }

    proptest! {
        /// Oracle: integers sum exactly as i128 does, in any order, split anyhow.
        #[test]
        fn integer_sums_match_i128(values in prop::collection::vec(-(1i64 << 60)..(1i64 << 60), 0..60)) {
            let floats: Vec<f64> = values.iter().map(|&v| v as f64).collect();
            let truth: i128 = floats.iter().map(|&v| v as i128).sum();
            prop_assert_eq!(sum_of(&floats), truth as f64);
            let mut rev = floats.clone();
            rev.reverse();
            prop_assert_eq!(sum_of(&rev).to_bits(), sum_of(&floats).to_bits());
        }

        /// Parts written out and read back (as snapshots and the state do) sum the same.
        #[test]
        fn parts_round_trip(values in prop::collection::vec(any::<f64>().prop_filter("finite", |v| v.is_finite()), 0..40)) {
            let mut s = ExactSum::default();
            values.iter().for_each(|&v| { s.add(v); s.add_square(v); });
            let mut back = ExactSum::default();
            for (negative, e, v) in s.parts() {
                back.add_part(negative, e, u128::from(v));
            }
            let value = |s: &ExactSum| s.exact().map(|(n, e)| to_f64(&n, e).to_bits());
            prop_assert_eq!(value(&back), value(&s));
        }
    }
}
