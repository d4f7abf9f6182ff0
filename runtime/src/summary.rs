//! What a run did, on this process, from its metrics.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use iotflow_dataflow::JobMetrics;
use iotflow_dataflow::metrics::AggregationCounts;
use serde::{Deserialize, Serialize};

/// What a run did, on this process (`iotflow run --json` prints it).
#[derive(Debug, Serialize, Deserialize)]
pub struct RunSummary {
    pub records: u64,
    pub records_accepted: u64,
    pub readings_accepted: u64,
    pub duplicates: u64,
    pub rejected: BTreeMap<String, u64>,
    pub late_partial: u64,
    pub windows_final: u64,
    pub window_updates: u64,
    pub last_epoch: u64,
    pub watermark_ms: Option<i64>,
    /// Exactly-once runs: the last committed epoch, and this run's commits.
    pub last_committed_epoch: Option<u64>,
    pub commits: u64,
    pub commit_latency_ms_mean: Option<f64>,
    pub commit_latency_ms_max: Option<f64>,
    pub seconds: f64,
    /// Per aggregation: readings it skipped (late there, filtered, without a
    /// grouped dimension) and the final windows it emitted.
    #[serde(default)]
    pub aggregations: BTreeMap<String, AggregationCounts>,
}

impl RunSummary {
    pub fn of(m: &JobMetrics, started: Instant) -> Self {
        let wm = m.watermark_ms.load(Relaxed);
        let commits = m.commits.load(Relaxed);
        Self {
            records: m.records_in.load(Relaxed),
            records_accepted: m.records_accepted.load(Relaxed),
            readings_accepted: m.readings_accepted.load(Relaxed),
            duplicates: m.duplicates.load(Relaxed),
            rejected: m
                .rejected()
                .into_iter()
                .map(|(r, n)| (r.to_owned(), n))
                .collect(),
            late_partial: m.late_partial.load(Relaxed),
            windows_final: m.windows_emitted.load(Relaxed),
            window_updates: m.updates_emitted.load(Relaxed),
            last_epoch: m.last_epoch.load(Relaxed),
            watermark_ms: (wm != i64::MIN).then_some(wm),
            last_committed_epoch: u64::try_from(m.last_committed_epoch.load(Relaxed)).ok(),
            commits,
            commit_latency_ms_mean: (commits > 0)
                .then(|| m.commit_latency_micros_sum.load(Relaxed) as f64 / commits as f64 / 1e3),
            commit_latency_ms_max: (commits > 0)
                .then(|| m.commit_latency_micros_max.load(Relaxed) as f64 / 1e3),
            seconds: started.elapsed().as_secs_f64(),
            aggregations: m.aggregations(),
        }
    }
}
