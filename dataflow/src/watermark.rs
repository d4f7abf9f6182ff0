//! Watermarks: how far event time has certainly progressed.
//!
//! ```text
//!   source share (a partition, or a slice of one) ──epoch e──▶ ShareReport { top-k event times, state }
//!   WatermarkCombiner, fed every report of epochs ≤ e, gives W_e:
//!     partition watermark = k-th largest event time − max_out_of_order   (k = outliers + 1)
//!     W = min over Active partitions; max over Idle ones when none is Active;
//!         +∞ when every partition is Finished; never decreases
//! ```
//!
//! A partition is Idle when it is caught up (fetch offset = high watermark) and
//! quiet for the idle timeout; the source decides that from processing time.
//! With `outliers = 1`, one absurd timestamp cannot move a partition's watermark.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Watermark settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkConfig {
    pub max_out_of_order_ms: i64,
    /// Processing time after which a caught-up, quiet partition stops holding the watermark back.
    pub idle_timeout_ms: i64,
    /// How many far-ahead event times per partition are ignored (default 1).
    pub outliers: usize,
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        Self {
            max_out_of_order_ms: 2_000,
            idle_timeout_ms: 5_000,
            outliers: 1,
        }
    }
}

/// The `k` largest values seen, descending.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopK {
    k: usize,
    top: Vec<i64>,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        Self {
            k: k.max(1),
            top: Vec::with_capacity(k.max(1)),
        }
    }

    pub fn observe(&mut self, ts: i64) {
        if self.top.len() < self.k {
            let pos = self.top.partition_point(|&t| t >= ts);
            self.top.insert(pos, ts);
        } else if let Some(last) = self.top.last_mut()
            && ts > *last
        {
            // Called per record: the smallest makes way and `ts` moves up past
            // the smaller ones, without `insert`'s shifting call.
            *last = ts;
            let mut i = self.top.len() - 1;
            while i > 0 && self.top[i - 1] < self.top[i] {
                self.top.swap(i - 1, i);
                i -= 1;
            }
        }
    }

    pub fn merge(&mut self, values: &[i64]) {
        for &v in values {
            self.observe(v);
        }
    }

    /// The k-th largest value, once k values were seen.
    pub fn kth(&self) -> Option<i64> {
        self.top.get(self.k - 1).copied()
    }

    pub fn values(&self) -> &[i64] {
        &self.top
    }
}

/// Whether a share holds the watermark back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShareState {
    Active,
    /// Caught up and quiet for the idle timeout.
    Idle,
    /// Bounded input fully read.
    Finished,
    /// The source stopped early (error or interrupt): every worker of every
    /// process stops too, and nothing is final because of it.
    Stopped,
}

/// What one share of a partition says at the end of an epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareReport {
    pub partition: i32,
    pub share: u32,
    /// How many shares the partition is split into (1 for Kafka partitions).
    pub shares: u32,
    /// The share's largest event times so far (cumulative), descending.
    pub top: Vec<i64>,
    pub state: ShareState,
    /// The next source offset to read: the share covered every offset below it.
    #[serde(default)]
    pub next_offset: i64,
}

/// Folds share reports into the job watermark. Pure; the same reports in any
/// order give the same watermark.
#[derive(Debug, Clone)]
pub struct WatermarkCombiner {
    cfg: WatermarkConfig,
    shares: BTreeMap<(i32, u32), ShareReport>,
    emitted: Option<i64>,
}

impl WatermarkCombiner {
    pub fn new(cfg: WatermarkConfig) -> Self {
        Self {
            cfg,
            shares: BTreeMap::new(),
            emitted: None,
        }
    }

    /// Records a report; a later report of the same share replaces the earlier.
    pub fn apply(&mut self, report: &ShareReport) {
        self.shares
            .insert((report.partition, report.share), report.clone());
    }

    /// The latest report of every share, in (partition, share) order.
    pub fn reports(&self) -> Vec<ShareReport> {
        self.shares.values().cloned().collect()
    }

    /// Rebuilds the combiner a snapshot describes: its reports and the
    /// watermark it had emitted (which never goes back).
    pub fn restored(cfg: WatermarkConfig, reports: &[ShareReport], emitted: Option<i64>) -> Self {
        let mut c = Self::new(cfg);
        for r in reports {
            c.apply(r);
        }
        c.emitted = emitted;
        c
    }

    /// The watermark last returned by [`Self::watermark`], without recomputing.
    pub fn emitted(&self) -> Option<i64> {
        self.emitted
    }

    /// The watermark after every report applied so far; `None` while some
    /// active partition has no watermark yet. Never decreases.
    pub fn watermark(&mut self) -> Option<i64> {
        let mut active_min: Option<i64> = None;
        let mut blocked = false;
        let mut idle_max: Option<i64> = None;
        let mut any_unfinished = false;
        let mut partitions: BTreeMap<i32, (TopK, u32, u32, bool, bool)> = BTreeMap::new();
        for r in self.shares.values() {
            let entry = partitions
                .entry(r.partition)
                .or_insert_with(|| (TopK::new(self.cfg.outliers + 1), r.shares, 0, true, true));
            entry.0.merge(&r.top);
            entry.2 += 1;
            entry.3 &= r.state == ShareState::Finished;
            entry.4 &= matches!(r.state, ShareState::Idle | ShareState::Finished);
        }
        for (top, shares, reported, finished, quiet) in partitions.values() {
            let wm = top
                .kth()
                .map(|t| t.saturating_sub(self.cfg.max_out_of_order_ms));
            if reported < shares {
                // Not every slice of this partition has spoken: it holds everything back.
                blocked = true;
                any_unfinished = true;
            } else if *finished {
                continue;
            } else if *quiet {
                any_unfinished = true;
                idle_max = idle_max.max(wm);
            } else {
                any_unfinished = true;
                match wm {
                    Some(w) => active_min = Some(active_min.map_or(w, |m| m.min(w))),
                    None => blocked = true,
                }
            }
        }
        let candidate = if blocked {
            None
        } else if !any_unfinished && !partitions.is_empty() {
            Some(i64::MAX)
        } else {
            active_min.or(idle_max)
        };
        if let Some(c) = candidate {
            self.emitted = Some(self.emitted.map_or(c, |e| e.max(c)));
        }
        self.emitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> WatermarkConfig {
        WatermarkConfig {
            max_out_of_order_ms: 1_000,
            idle_timeout_ms: 5_000,
            outliers: 1,
        }
    }

    fn report(partition: i32, times: &[i64], state: ShareState) -> ShareReport {
        let mut top = TopK::new(2);
        top.merge(times);
        ShareReport {
            partition,
            share: 0,
            shares: 1,
            top: top.values().to_vec(),
            state,
            next_offset: 0,
        }
    }

    proptest::proptest! {
        #[test]
        fn top_k_holds_the_k_largest_in_descending_order(
            k in 1usize..5,
            times in proptest::collection::vec(-20i64..20, 0..40),
        ) {
            let mut top = TopK::new(k);
            top.merge(&times);
            let mut naive = times.clone();
            naive.sort_unstable_by(|a, b| b.cmp(a));
            naive.truncate(k);
            proptest::prop_assert_eq!(top.values(), &naive[..]);
        }
    }

    #[test]
    fn minimum_over_partitions_minus_out_of_order() {
        let mut c = WatermarkCombiner::new(cfg());
        c.apply(&report(0, &[10_000, 11_000], ShareState::Active));
        c.apply(&report(1, &[], ShareState::Active));
        assert_eq!(
            c.watermark(),
            None,
            "partition 1 has no data and is not idle"
        );
        c.apply(&report(1, &[20_000, 21_000], ShareState::Active));
        // The 2nd largest time of each partition minus out-of-order.
        assert_eq!(c.watermark(), Some(9_000));
    }

    #[test]
    fn one_absurd_timestamp_does_not_advance_it() {
        let mut c = WatermarkCombiner::new(cfg());
        c.apply(&report(
            0,
            &[10_000, 11_000, 4_000_000_000_000, 12_000],
            ShareState::Active,
        ));
        assert_eq!(c.watermark(), Some(11_000));
        c.apply(&report(
            0,
            &[12_000, 4_000_000_000_000, 4_000_000_000_001],
            ShareState::Active,
        ));
        assert!(
            c.watermark().unwrap() > 1_000_000_000_000,
            "two of them are a trend"
        );
    }

    #[test]
    fn idle_partitions_stop_holding_it_back_and_all_idle_takes_the_maximum() {
        let mut c = WatermarkCombiner::new(cfg());
        c.apply(&report(0, &[50_000, 51_000], ShareState::Active));
        c.apply(&report(1, &[5_000, 6_000], ShareState::Active));
        assert_eq!(c.watermark(), Some(4_000));
        c.apply(&report(1, &[5_000, 6_000], ShareState::Idle));
        assert_eq!(c.watermark(), Some(49_000));
        c.apply(&report(0, &[50_000, 51_000], ShareState::Idle));
        c.apply(&report(1, &[70_000, 71_000], ShareState::Idle));
        assert_eq!(c.watermark(), Some(69_000));
        c.apply(&report(1, &[7_000, 8_000], ShareState::Active));
        assert_eq!(c.watermark(), Some(69_000), "never goes back");
    }

    #[test]
    fn an_idle_partition_without_data_does_not_block() {
        let mut c = WatermarkCombiner::new(cfg());
        c.apply(&report(0, &[50_000, 51_000], ShareState::Active));
        c.apply(&report(1, &[], ShareState::Idle));
        assert_eq!(c.watermark(), Some(49_000));
    }

    #[test]
    fn finished_everywhere_is_the_end_of_time() {
        let mut c = WatermarkCombiner::new(cfg());
        c.apply(&report(0, &[50_000, 51_000], ShareState::Finished));
        c.apply(&report(1, &[60_000, 61_000], ShareState::Active));
        assert_eq!(c.watermark(), Some(59_000));
        c.apply(&report(1, &[60_000, 61_000], ShareState::Finished));
        assert_eq!(c.watermark(), Some(i64::MAX));
    }

    /// A stopped source is not an idle one: everyone else going idle or
    /// finishing must not close windows it may still hold readings for.
    #[test]
    fn a_stopped_partition_still_holds_it_back() {
        let mut c = WatermarkCombiner::new(cfg());
        c.apply(&report(0, &[50_000, 51_000], ShareState::Finished));
        c.apply(&report(1, &[20_000, 21_000], ShareState::Stopped));
        assert_eq!(c.watermark(), Some(19_000));
        c.apply(&report(2, &[], ShareState::Stopped));
        c.apply(&report(1, &[40_000, 41_000], ShareState::Active));
        assert_eq!(
            c.watermark(),
            Some(19_000),
            "a stopped partition without data blocks"
        );
    }

    #[test]
    fn shares_of_one_partition_merge_their_top_times() {
        let mut c = WatermarkCombiner::new(cfg());
        let mut a = report(0, &[10_000, 30_000], ShareState::Active);
        a.shares = 2;
        assert_eq!(c.watermark(), None);
        c.apply(&a);
        assert_eq!(c.watermark(), None, "share 1 has not reported");
        let mut b = report(0, &[20_000], ShareState::Active);
        b.shares = 2;
        b.share = 1;
        c.apply(&b);
        // Union {30_000, 20_000, 10_000}: 2nd largest 20_000.
        assert_eq!(c.watermark(), Some(19_000));
    }
}
