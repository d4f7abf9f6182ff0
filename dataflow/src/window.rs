//! Event-time windows, aligned to the Unix epoch.
//!
//! ```text
//!   tumbling 10s:        |----w0----|----w1----|----w2----|
//!   hopping 10s/5s:      |----w0----|
//!                             |----w1----|
//!                                  |----w2----|
//!   windows_of(ts) = every start s with s ≤ ts < s + size, s ≡ 0 (mod slide)
//! ```
//!
//! Windows are half-open `[start, start + size)`. The slide may not exceed the
//! size: gaps between windows would accept readings into no window at all.

/// Why a window spec is unusable (user configuration).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WindowError {
    #[error("window size must be positive, not {0} ms")]
    Size(i64),
    #[error("window slide must be in 1..=size ({size} ms), not {slide} ms")]
    Slide { size: i64, slide: i64 },
}

/// Tumbling (`slide == size`) or hopping windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    size_ms: i64,
    slide_ms: i64,
}

impl WindowSpec {
    pub fn tumbling(size_ms: i64) -> Result<Self, WindowError> {
        Self::hopping(size_ms, size_ms)
    }

    pub fn hopping(size_ms: i64, slide_ms: i64) -> Result<Self, WindowError> {
        if size_ms <= 0 {
            return Err(WindowError::Size(size_ms));
        }
        if slide_ms <= 0 || slide_ms > size_ms {
            return Err(WindowError::Slide {
                size: size_ms,
                slide: slide_ms,
            });
        }
        Ok(Self { size_ms, slide_ms })
    }

    pub fn size_ms(&self) -> i64 {
        self.size_ms
    }

    pub fn slide_ms(&self) -> i64 {
        self.slide_ms
    }

    /// The end (exclusive) of the window starting at `start`.
    pub fn end(&self, start: i64) -> i64 {
        start.saturating_add(self.size_ms)
    }

    /// Starts of every window containing `ts`, ascending.
    pub fn windows_of(&self, ts: i64) -> impl Iterator<Item = i64> + use<> {
        let last = ts - ts.rem_euclid(self.slide_ms);
        // The earliest start s with s + size > ts, on the slide grid.
        let span = (self.size_ms - 1) / self.slide_ms;
        let first = last - span * self.slide_ms;
        let (slide, size) = (self.slide_ms, self.size_ms);
        (0..=span)
            .map(move |k| first + k * slide)
            .filter(move |s| *s <= ts && ts < s + size)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn tumbling_assigns_exactly_one_aligned_window() {
        let w = WindowSpec::tumbling(10_000).unwrap();
        assert_eq!(
            w.windows_of(1_763_787_609_999).collect::<Vec<_>>(),
            [1_763_787_600_000]
        );
        assert_eq!(
            w.windows_of(1_763_787_610_000).collect::<Vec<_>>(),
            [1_763_787_610_000]
        );
        assert_eq!(w.windows_of(-1).collect::<Vec<_>>(), [-10_000]);
    }

    #[test]
    fn hopping_assigns_size_over_slide_windows() {
        let w = WindowSpec::hopping(10_000, 5_000).unwrap();
        assert_eq!(w.windows_of(12_000).collect::<Vec<_>>(), [5_000, 10_000]);
        assert_eq!(w.windows_of(10_000).collect::<Vec<_>>(), [5_000, 10_000]);
        let uneven = WindowSpec::hopping(10_000, 3_000).unwrap();
        assert_eq!(
            uneven.windows_of(10_000).collect::<Vec<_>>(),
            [3_000, 6_000, 9_000]
        );
    }

    #[test]
    fn bad_specs_are_refused() {
        assert_eq!(WindowSpec::tumbling(0), Err(WindowError::Size(0)));
        assert!(WindowSpec::hopping(10, 11).is_err());
        assert!(WindowSpec::hopping(10, 0).is_err());
    }

    proptest! {
        /// Oracle: the windows of ts are exactly the grid starts within (ts - size, ts].
        #[test]
        fn windows_match_a_naive_scan(size in 1i64..5_000, slide_pick in 1i64..5_000, ts in -100_000i64..100_000) {
            let slide = 1 + slide_pick % size;
            let w = WindowSpec::hopping(size, slide).unwrap();
            let got: Vec<i64> = w.windows_of(ts).collect();
            let naive: Vec<i64> = ((ts - size - slide)..=ts)
                .filter(|s| s.rem_euclid(slide) == 0 && *s <= ts && ts < s + size)
                .collect();
            prop_assert_eq!(got, naive);
        }
    }
}
