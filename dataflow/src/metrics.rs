//! The job's counters, in one place. Operators add per batch; readers (the CLI
//! summary, later the Prometheus endpoint) take snapshots.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::reading::RejectReason;

/// Counters shared by every worker of one process.
#[derive(Debug)]
pub struct JobMetrics {
    pub records_in: AtomicU64,
    pub readings_accepted: AtomicU64,
    pub duplicates: AtomicU64,
    /// Readings dropped from some (not all) of their hopping windows because those were final.
    pub late_partial: AtomicU64,
    pub windows_emitted: AtomicU64,
    pub updates_emitted: AtomicU64,
    /// The job watermark, epoch ms (`i64::MIN` until there is one).
    pub watermark_ms: AtomicI64,
    pub last_epoch: AtomicU64,
    /// Updates held in the window-state arrangements, summed over workers.
    pub window_state_updates: AtomicI64,
    /// The most any one worker's window state held.
    pub window_state_peak: AtomicU64,
    /// The furthest a source started an epoch ahead of the completed ones.
    pub epochs_in_flight_peak: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
}

impl Default for JobMetrics {
    fn default() -> Self {
        Self {
            records_in: AtomicU64::new(0),
            readings_accepted: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            late_partial: AtomicU64::new(0),
            windows_emitted: AtomicU64::new(0),
            updates_emitted: AtomicU64::new(0),
            watermark_ms: AtomicI64::new(i64::MIN),
            last_epoch: AtomicU64::new(0),
            window_state_updates: AtomicI64::new(0),
            window_state_peak: AtomicU64::new(0),
            epochs_in_flight_peak: AtomicU64::new(0),
            rejected: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl JobMetrics {
    pub fn reject(&self, reason: RejectReason, n: u64) {
        if let Some(i) = RejectReason::ALL.iter().position(|r| *r == reason) {
            self.rejected[i].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Rejected records by reason code (only reasons seen).
    pub fn rejected(&self) -> BTreeMap<&'static str, u64> {
        RejectReason::ALL
            .iter()
            .zip(&self.rejected)
            .map(|(r, n)| (r.code(), n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    pub fn observe_watermark(&self, wm: Option<i64>) {
        if let Some(w) = wm {
            self.watermark_ms.fetch_max(w, Ordering::Relaxed);
        }
    }
}
