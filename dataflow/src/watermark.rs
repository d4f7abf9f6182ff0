//! Watermarks: how far event time has certainly progressed.
//!
//! ```text
//!   per partition:  k-th largest event time seen − max_out_of_order
//!                   (k = outliers + 1: `outliers` absurd timestamps cannot move it)
//!   job:            min over partitions that are not idle
//!   idle partition: caught up (fetch offset = high watermark) and no record for idle_timeout
//!   monotonic:      the job watermark never goes back
//! ```
//!
//! Pure: the caller supplies processing time (`now_ms`) and fetch positions.

use std::collections::BTreeMap;

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

#[derive(Debug, Clone, Default)]
struct PartitionClock {
    /// The `outliers + 1` largest event times, descending.
    top: Vec<i64>,
    last_record_ms: Option<i64>,
    caught_up: bool,
}

/// Watermark state of one source (all its partitions).
#[derive(Debug, Clone)]
pub struct Watermarks {
    cfg: WatermarkConfig,
    partitions: BTreeMap<i32, PartitionClock>,
    emitted: Option<i64>,
}

impl Watermarks {
    /// Tracks `partitions`; each holds the watermark back until it has data or is idle.
    pub fn new(cfg: WatermarkConfig, partitions: impl IntoIterator<Item = i32>) -> Self {
        Self {
            cfg,
            partitions: partitions
                .into_iter()
                .map(|p| (p, PartitionClock::default()))
                .collect(),
            emitted: None,
        }
    }

    /// A record with event time `ts` arrived on `partition` at processing time `now_ms`.
    pub fn observe(&mut self, partition: i32, ts: i64, now_ms: i64) {
        let k = self.cfg.outliers + 1;
        let clock = self.partitions.entry(partition).or_default();
        clock.last_record_ms = Some(now_ms);
        if clock.top.len() < k || ts > clock.top[clock.top.len() - 1] {
            let pos = clock.top.partition_point(|&t| t >= ts);
            clock.top.insert(pos, ts);
            clock.top.truncate(k);
        }
    }

    /// The source's fetch position on `partition`: caught up when `next_offset >= high_watermark`.
    pub fn position(&mut self, partition: i32, next_offset: i64, high_watermark: i64) {
        self.partitions.entry(partition).or_default().caught_up = next_offset >= high_watermark;
    }

    /// The watermark of one partition, once it has seen `outliers + 1` records.
    pub fn partition_watermark(&self, partition: i32) -> Option<i64> {
        let clock = self.partitions.get(&partition)?;
        let kth = clock.top.get(self.cfg.outliers)?;
        Some(kth.saturating_sub(self.cfg.max_out_of_order_ms))
    }

    fn idle(&self, clock: &PartitionClock, now_ms: i64) -> bool {
        // Never idle while behind: a lagging partition must hold the watermark back.
        clock.caught_up
            && clock
                .last_record_ms
                .is_none_or(|t| now_ms.saturating_sub(t) >= self.cfg.idle_timeout_ms)
    }

    /// The job watermark at processing time `now_ms`: the minimum over active
    /// partitions; when all are idle, the maximum (nothing holds it back).
    /// `None` until some partition has one. Never decreases.
    pub fn watermark(&mut self, now_ms: i64) -> Option<i64> {
        let mut active_min: Option<i64> = None;
        let mut blocked = false;
        let mut idle_max: Option<i64> = None;
        for (&p, clock) in &self.partitions {
            let wm = self.partition_watermark(p);
            if self.idle(clock, now_ms) {
                idle_max = idle_max.max(wm);
            } else {
                match wm {
                    Some(w) => active_min = Some(active_min.map_or(w, |m| m.min(w))),
                    None => blocked = true,
                }
            }
        }
        let candidate = if blocked {
            None
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

    #[test]
    fn minimum_over_partitions_minus_out_of_order() {
        let mut w = Watermarks::new(cfg(), [0, 1]);
        for ts in [10_000, 11_000] {
            w.observe(0, ts, 0);
        }
        assert_eq!(
            w.watermark(0),
            None,
            "partition 1 has no data and is not idle"
        );
        for ts in [20_000, 21_000] {
            w.observe(1, ts, 0);
        }
        // Partition watermarks use the 2nd largest time: 10_000 - 1_000 and 20_000 - 1_000.
        assert_eq!(w.watermark(0), Some(9_000));
    }

    #[test]
    fn one_absurd_timestamp_does_not_advance_it() {
        let mut w = Watermarks::new(cfg(), [0]);
        for ts in [10_000, 11_000, 4_000_000_000_000, 12_000] {
            w.observe(0, ts, 0);
        }
        assert_eq!(w.watermark(0), Some(11_000));
        w.observe(0, 4_000_000_000_001, 0);
        assert!(
            w.watermark(0).unwrap() > 1_000_000_000_000,
            "two of them are a trend, not an outlier"
        );
    }

    #[test]
    fn a_caught_up_quiet_partition_stops_holding_it_back() {
        let mut w = Watermarks::new(cfg(), [0, 1]);
        for ts in [50_000, 51_000] {
            w.observe(0, ts, 0);
        }
        for ts in [5_000, 6_000] {
            w.observe(1, ts, 0);
        }
        w.position(1, 10, 10);
        assert_eq!(
            w.watermark(1_000),
            Some(4_000),
            "quiet, but not for the idle timeout yet"
        );
        assert_eq!(w.watermark(5_000), Some(49_000), "idle now");
        w.observe(1, 7_000, 6_000);
        assert_eq!(w.watermark(6_000), Some(49_000), "never goes back");
    }

    #[test]
    fn a_lagging_partition_is_never_idle() {
        let mut w = Watermarks::new(cfg(), [0, 1]);
        for ts in [50_000, 51_000] {
            w.observe(0, ts, 0);
        }
        w.position(1, 0, 1_000);
        assert_eq!(w.watermark(1_000_000), None, "partition 1 has unread data");
        w.position(1, 1_000, 1_000);
        // 2nd largest of partition 0 (50_000) minus out-of-order.
        assert_eq!(w.watermark(1_000_000), Some(49_000));
    }

    #[test]
    fn all_idle_takes_the_maximum() {
        let mut w = Watermarks::new(cfg(), [0, 1]);
        for (p, ts) in [(0, 10_000), (0, 11_000), (1, 30_000), (1, 31_000)] {
            w.observe(p, ts, 0);
        }
        w.position(0, 2, 2);
        w.position(1, 2, 2);
        assert_eq!(w.watermark(10_000), Some(29_000));
    }
}
