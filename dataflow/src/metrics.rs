//! The job's counters, in one place. Operators add per batch; readers (the CLI
//! summary, the Prometheus endpoint and status page of `run --http`) take
//! snapshots.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use serde::Serialize;

use crate::alert_board::{ActiveAlert, AlertBoard};
use crate::reading::RejectReason;

/// Upper bounds (ms, inclusive) of the lateness histogram's buckets; one more
/// bucket holds everything above the last.
pub const LATENESS_BUCKETS_MS: [i64; 12] = [
    0, 100, 250, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000,
];

/// Counts per lateness bucket (the last one is +Inf) and the sum, in ms.
pub type LatenessCounts = [u64; LATENESS_BUCKETS_MS.len() + 1];

/// The bucket of a record `behind_ms` behind its partition's newest event time.
pub fn lateness_bucket(behind_ms: i64) -> usize {
    // Nearly every record is in order: the first bucket, without a search.
    if behind_ms <= LATENESS_BUCKETS_MS[0] {
        return 0;
    }
    LATENESS_BUCKETS_MS.partition_point(|&le| le < behind_ms)
}

/// Commits kept for the metrics log between two of its samples.
const RECENT_COMMITS: usize = 4096;

/// One commit, as the metrics log records it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CommitSample {
    pub epoch: u64,
    /// Wall clock when the commit record was acknowledged, epoch ms.
    pub at_ms: i64,
    /// From the start of the epoch's staging to the acknowledgement.
    pub latency_ms: f64,
}

/// Counters shared by every worker of one process.
#[derive(Debug)]
pub struct JobMetrics {
    /// Whether the schema registry holds the job (registry-encoded input only).
    pub registry: std::sync::OnceLock<std::sync::Arc<iotflow_schema::RegistryStatus>>,
    pub records_in: AtomicU64,
    /// Input records that yielded readings (before deduplication).
    pub records_accepted: AtomicU64,
    pub readings_accepted: AtomicU64,
    pub duplicates: AtomicU64,
    /// Readings dropped from some (not all) of their windows because those were final
    /// (a window of a hopping aggregation, or every window of one aggregation of several).
    pub late_partial: AtomicU64,
    /// Readings an aggregation's `where` did not keep, summed over aggregations.
    pub readings_filtered: AtomicU64,
    /// Readings an aggregation skipped for lacking a dimension it groups by
    /// (another aggregation used them), summed over aggregations.
    pub missing_dimension_partial: AtomicU64,
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
    /// The last epoch whose commit record is on the progress topic (−1: none yet).
    pub last_committed_epoch: AtomicI64,
    pub commits: AtomicU64,
    /// From the start of an epoch's staging (worker 0) to its commit record
    /// acknowledged: the sum, for the mean, and the largest.
    pub commit_latency_micros_sum: AtomicU64,
    pub commit_latency_micros_max: AtomicU64,
    /// Bytes of the last snapshot a worker of this process wrote.
    pub snapshot_bytes_last: AtomicU64,
    /// Per input partition read here: (next offset to take, high watermark).
    /// The fetcher refreshes the high watermark even while the job is held
    /// back, so lag keeps growing when the job stalls and input does not.
    offsets: Mutex<BTreeMap<i32, (i64, i64)>>,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    /// How far behind its partition's newest event time each timestamped record came.
    lateness: [AtomicU64; LATENESS_BUCKETS_MS.len() + 1],
    lateness_sum_ms: AtomicU64,
    /// Commits not yet taken by the metrics log (oldest dropped past `RECENT_COMMITS`).
    recent_commits: Mutex<VecDeque<CommitSample>>,
    /// Per aggregation (by name): what it skipped and emitted.
    aggregations: Mutex<BTreeMap<String, AggregationCounts>>,
    /// Alerts of this process's series, as committed.
    alert_board: Mutex<AlertBoard>,
}

/// One aggregation's counts (the job-wide ones sum them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AggregationCounts {
    /// Reading-window pairs dropped because that window was already final here.
    pub late_partial: u64,
    /// Readings its `where` did not keep.
    pub filtered: u64,
    /// Readings without a dimension it groups by.
    pub missing_dimension: u64,
    /// Final windows it emitted.
    pub windows: u64,
}

impl Default for JobMetrics {
    fn default() -> Self {
        Self {
            registry: std::sync::OnceLock::new(),
            records_in: AtomicU64::new(0),
            records_accepted: AtomicU64::new(0),
            readings_accepted: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            late_partial: AtomicU64::new(0),
            readings_filtered: AtomicU64::new(0),
            missing_dimension_partial: AtomicU64::new(0),
            windows_emitted: AtomicU64::new(0),
            updates_emitted: AtomicU64::new(0),
            watermark_ms: AtomicI64::new(i64::MIN),
            last_epoch: AtomicU64::new(0),
            window_state_updates: AtomicI64::new(0),
            window_state_peak: AtomicU64::new(0),
            epochs_in_flight_peak: AtomicU64::new(0),
            last_committed_epoch: AtomicI64::new(-1),
            commits: AtomicU64::new(0),
            commit_latency_micros_sum: AtomicU64::new(0),
            commit_latency_micros_max: AtomicU64::new(0),
            snapshot_bytes_last: AtomicU64::new(0),
            offsets: Mutex::new(BTreeMap::new()),
            rejected: std::array::from_fn(|_| AtomicU64::new(0)),
            lateness: std::array::from_fn(|_| AtomicU64::new(0)),
            lateness_sum_ms: AtomicU64::new(0),
            recent_commits: Mutex::new(VecDeque::new()),
            aggregations: Mutex::new(BTreeMap::new()),
            alert_board: Mutex::new(AlertBoard::default()),
        }
    }
}

impl JobMetrics {
    /// Adds `counts` to aggregation `name`'s, and the skips to the job's sums.
    pub fn add_aggregation(&self, name: &str, counts: AggregationCounts) {
        self.late_partial
            .fetch_add(counts.late_partial, Ordering::Relaxed);
        self.readings_filtered
            .fetch_add(counts.filtered, Ordering::Relaxed);
        self.missing_dimension_partial
            .fetch_add(counts.missing_dimension, Ordering::Relaxed);
        if let Ok(mut all) = self.aggregations.lock() {
            let mine = all.entry(name.to_owned()).or_default();
            mine.late_partial += counts.late_partial;
            mine.filtered += counts.filtered;
            mine.missing_dimension += counts.missing_dimension;
            mine.windows += counts.windows;
        }
    }

    /// Each aggregation's counts so far.
    /// Works on the alert board (nothing happens if a panic poisoned it).
    pub fn with_alert_board<R>(&self, f: impl FnOnce(&mut AlertBoard) -> R) -> Option<R> {
        self.alert_board.lock().ok().map(|mut b| f(&mut b))
    }

    /// Active alerts of this process's series, as committed.
    pub fn active_alerts(&self) -> Vec<ActiveAlert> {
        self.with_alert_board(|b| b.active()).unwrap_or_default()
    }

    pub fn aggregations(&self) -> BTreeMap<String, AggregationCounts> {
        self.aggregations
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

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

    /// Adds an operator's batch of lateness counts (`sum_ms` over its records).
    pub fn add_lateness(&self, counts: &LatenessCounts, sum_ms: u64) {
        for (total, n) in self.lateness.iter().zip(counts) {
            if *n > 0 {
                total.fetch_add(*n, Ordering::Relaxed);
            }
        }
        self.lateness_sum_ms.fetch_add(sum_ms, Ordering::Relaxed);
    }

    /// Records per lateness bucket (not cumulative) and their summed lateness, ms.
    pub fn lateness(&self) -> (LatenessCounts, u64) {
        (
            std::array::from_fn(|i| self.lateness[i].load(Ordering::Relaxed)),
            self.lateness_sum_ms.load(Ordering::Relaxed),
        )
    }

    /// Commits since the last call, oldest first.
    pub fn take_commits(&self) -> Vec<CommitSample> {
        self.recent_commits
            .lock()
            .map(|mut c| c.drain(..).collect())
            .unwrap_or_default()
    }

    /// The job takes `partition` from `next` on.
    pub fn set_next_offset(&self, partition: i32, next: i64) {
        if let Ok(mut o) = self.offsets.lock() {
            o.entry(partition).or_insert((next, next)).0 = next;
        }
    }

    /// `partition`'s high watermark (the end of its input so far) is `end`.
    pub fn set_end_offset(&self, partition: i32, end: i64) {
        if let Ok(mut o) = self.offsets.lock() {
            let e = o.entry(partition).or_insert((end, end));
            e.1 = e.1.max(end);
        }
    }

    /// Lag per input partition (only partitions this process reads).
    pub fn lag(&self) -> BTreeMap<i32, i64> {
        self.partition_offsets()
            .into_iter()
            .map(|(p, (next, end))| (p, (end - next).max(0)))
            .collect()
    }

    fn partition_offsets(&self) -> BTreeMap<i32, (i64, i64)> {
        self.offsets.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Every metric in Prometheus' text exposition format (version 0.0.4).
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let load = |a: &AtomicU64| vec![(String::new(), a.load(Ordering::Relaxed) as f64)];
        if let Some(registry) = self.registry.get() {
            let waiting = registry.waiting().map_or(0.0, |(d, _)| d.as_secs_f64());
            metric(
                "iotflow_schema_registry_waiting_seconds",
                "gauge",
                "How long the job has waited for the schema registry to answer (0: it answers).",
                &[(String::new(), waiting)],
            );
        }
        metric(
            "iotflow_records_in_total",
            "counter",
            "Input records read (accepted or not).",
            &load(&self.records_in),
        );
        metric(
            "iotflow_records_accepted_total",
            "counter",
            "Input records that yielded readings (before deduplication).",
            &load(&self.records_accepted),
        );
        metric(
            "iotflow_readings_accepted_total",
            "counter",
            "Readings that passed validation.",
            &load(&self.readings_accepted),
        );
        metric(
            "iotflow_duplicates_total",
            "counter",
            "Readings dropped as duplicates of (device, seq, metric).",
            &load(&self.duplicates),
        );
        metric(
            "iotflow_late_partial_total",
            "counter",
            "Reading-window pairs dropped because that window was already final.",
            &load(&self.late_partial),
        );
        metric(
            "iotflow_readings_filtered_total",
            "counter",
            "Readings an aggregation's `where` did not keep, summed over aggregations.",
            &load(&self.readings_filtered),
        );
        metric(
            "iotflow_missing_dimension_partial_total",
            "counter",
            "Readings an aggregation skipped for lacking a dimension it groups by, summed over aggregations.",
            &load(&self.missing_dimension_partial),
        );
        let per = self.aggregations();
        let labelled = |f: fn(&AggregationCounts) -> u64| -> Vec<(String, f64)> {
            per.iter()
                .map(|(name, c)| (format!("{{aggregation=\"{name}\"}}"), f(c) as f64))
                .collect()
        };
        if !per.is_empty() {
            let skipped: Vec<(String, f64)> = [
                (
                    "late",
                    (|c| c.late_partial) as fn(&AggregationCounts) -> u64,
                ),
                ("filtered", |c| c.filtered),
                ("missing_dimension", |c| c.missing_dimension),
            ]
            .into_iter()
            .flat_map(|(why, f)| {
                per.iter().map(move |(name, c)| {
                    (
                        format!("{{aggregation=\"{name}\",why=\"{why}\"}}"),
                        f(c) as f64,
                    )
                })
            })
            .collect();
            metric(
                "iotflow_aggregation_readings_skipped_total",
                "counter",
                "Readings an aggregation did not take while others could: late there, filtered by its `where`, or without a dimension it groups by.",
                &skipped,
            );
            metric(
                "iotflow_aggregation_windows_emitted_total",
                "counter",
                "Final window results emitted, per aggregation.",
                &labelled(|c| c.windows),
            );
        }
        metric(
            "iotflow_windows_emitted_total",
            "counter",
            "Final window results emitted.",
            &load(&self.windows_emitted),
        );
        metric(
            "iotflow_window_updates_emitted_total",
            "counter",
            "Non-final window results emitted (updates mode).",
            &load(&self.updates_emitted),
        );
        let rejected: Vec<(String, f64)> = RejectReason::ALL
            .iter()
            .zip(&self.rejected)
            .map(|(r, n)| {
                (
                    format!("{{reason=\"{}\"}}", r.code()),
                    n.load(Ordering::Relaxed) as f64,
                )
            })
            .collect();
        metric(
            "iotflow_dead_letters_total",
            "counter",
            "Records sent to the dead-letter topic, by reason.",
            &rejected,
        );
        let wm = self.watermark_ms.load(Ordering::Relaxed);
        if wm != i64::MIN {
            metric(
                "iotflow_watermark_ms",
                "gauge",
                "The job watermark, epoch milliseconds.",
                &[(String::new(), wm as f64)],
            );
        }
        metric(
            "iotflow_last_epoch",
            "gauge",
            "The last epoch the input finished.",
            &load(&self.last_epoch),
        );
        metric(
            "iotflow_window_state_updates",
            "gauge",
            "Updates held in the window-state arrangements.",
            &[(
                String::new(),
                self.window_state_updates.load(Ordering::Relaxed) as f64,
            )],
        );
        metric(
            "iotflow_epochs_in_flight_peak",
            "gauge",
            "The furthest a source ran ahead of completed epochs.",
            &load(&self.epochs_in_flight_peak),
        );
        let committed = self.last_committed_epoch.load(Ordering::Relaxed);
        if committed >= 0 {
            metric(
                "iotflow_last_committed_epoch",
                "gauge",
                "The last epoch committed on the progress topic.",
                &[(String::new(), committed as f64)],
            );
        }
        metric(
            "iotflow_commits_total",
            "counter",
            "Epochs committed by this process.",
            &load(&self.commits),
        );
        let secs = |a: &AtomicU64| vec![(String::new(), a.load(Ordering::Relaxed) as f64 / 1e6)];
        metric(
            "iotflow_commit_latency_seconds_sum",
            "counter",
            "Staging start to commit acknowledged, summed over commits.",
            &secs(&self.commit_latency_micros_sum),
        );
        metric(
            "iotflow_commit_latency_seconds_max",
            "gauge",
            "The longest staging start to commit acknowledged.",
            &secs(&self.commit_latency_micros_max),
        );
        metric(
            "iotflow_snapshot_bytes",
            "gauge",
            "Bytes of the last state snapshot written.",
            &load(&self.snapshot_bytes_last),
        );
        let (counts, sum_ms) = self.lateness();
        let mut cumulative = 0;
        let mut buckets: Vec<(String, f64)> = counts
            .iter()
            .enumerate()
            .map(|(i, n)| {
                cumulative += n;
                let le = LATENESS_BUCKETS_MS
                    .get(i)
                    .map_or_else(|| "+Inf".to_owned(), |ms| format!("{}", *ms as f64 / 1e3));
                (format!("_bucket{{le=\"{le}\"}}"), cumulative as f64)
            })
            .collect();
        buckets.push(("_sum".to_owned(), sum_ms as f64 / 1e3));
        buckets.push(("_count".to_owned(), cumulative as f64));
        metric(
            "iotflow_record_lateness_seconds",
            "histogram",
            "How far each timestamped record's event time is behind the newest one its partition had shown (0: in order).",
            &buckets,
        );
        let rules = self.with_alert_board(|b| b.counts()).unwrap_or_default();
        if !rules.is_empty() {
            let active: Vec<(String, f64)> = rules
                .iter()
                .map(|(name, severity, c)| {
                    (
                        format!("{{alert=\"{name}\",severity=\"{severity}\"}}"),
                        c.active as f64,
                    )
                })
                .collect();
            metric(
                "iotflow_alerts_active",
                "gauge",
                "Alerts firing now, per rule (this process's keys, as committed).",
                &active,
            );
            let events: Vec<(String, f64)> = rules
                .iter()
                .flat_map(|(name, _, c)| {
                    [("firing", c.fired), ("resolved", c.resolved)].map(|(state, n)| {
                        (format!("{{alert=\"{name}\",state=\"{state}\"}}"), n as f64)
                    })
                })
                .collect();
            metric(
                "iotflow_alert_events_total",
                "counter",
                "Alert events committed since this process started, per rule and state.",
                &events,
            );
        }
        let lag: Vec<(String, f64)> = self
            .lag()
            .into_iter()
            .map(|(p, n)| (format!("{{partition=\"{p}\"}}"), n as f64))
            .collect();
        metric(
            "iotflow_partition_lag_records",
            "gauge",
            "Records between the next offset to read and the high watermark.",
            &lag,
        );
        let ends: Vec<(String, f64)> = self
            .partition_offsets()
            .into_iter()
            .map(|(p, (_, end))| (format!("{{partition=\"{p}\"}}"), end as f64))
            .collect();
        metric(
            "iotflow_partition_end_offset",
            "gauge",
            "Each input partition's high watermark, refreshed even while the job is held back: its rate is the input rate.",
            &ends,
        );
        out
    }

    /// Epoch `epoch` committed `latency` after its staging started.
    pub fn observe_commit(&self, epoch: u64, latency: std::time::Duration) {
        let micros = latency.as_micros().min(u128::from(u64::MAX)) as u64;
        self.last_committed_epoch
            .fetch_max(epoch.min(i64::MAX as u64) as i64, Ordering::Relaxed);
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.commit_latency_micros_sum
            .fetch_add(micros, Ordering::Relaxed);
        self.commit_latency_micros_max
            .fetch_max(micros, Ordering::Relaxed);
        let at_ms = chrono::Utc::now().timestamp_millis();
        if let Ok(mut recent) = self.recent_commits.lock() {
            if recent.len() == RECENT_COMMITS {
                recent.pop_front();
            }
            recent.push_back(CommitSample {
                epoch,
                at_ms,
                latency_ms: micros as f64 / 1e3,
            });
        }
    }

    pub fn observe_watermark(&self, wm: Option<i64>) {
        if let Some(w) = wm {
            self.watermark_ms.fetch_max(w, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lateness_buckets_are_inclusive_upper_bounds() {
        assert_eq!(
            lateness_bucket(-5),
            0,
            "ahead of the partition counts as in order"
        );
        assert_eq!(lateness_bucket(0), 0);
        assert_eq!(lateness_bucket(1), 1);
        assert_eq!(lateness_bucket(100), 1);
        assert_eq!(lateness_bucket(101), 2);
        assert_eq!(lateness_bucket(300_000), LATENESS_BUCKETS_MS.len() - 1);
        assert_eq!(lateness_bucket(300_001), LATENESS_BUCKETS_MS.len());
    }

    #[test]
    fn commits_wait_for_the_log_and_the_oldest_go_past_the_bound() {
        let m = JobMetrics::default();
        for e in 0..RECENT_COMMITS as u64 + 3 {
            m.observe_commit(e, std::time::Duration::from_millis(2));
        }
        let taken = m.take_commits();
        assert_eq!(taken.len(), RECENT_COMMITS);
        assert_eq!(taken[0].epoch, 3);
        assert_eq!(taken[0].latency_ms, 2.0);
        assert!(m.take_commits().is_empty(), "taken once");
    }

    /// Every sample line parses as `name{labels} number` under a HELP and TYPE.
    #[test]
    fn prometheus_text_is_well_formed_and_carries_the_values() {
        let m = JobMetrics::default();
        m.records_in.fetch_add(42, Ordering::Relaxed);
        m.reject(RejectReason::Late, 3);
        m.observe_watermark(Some(1_763_787_600_000));
        m.set_end_offset(2, 20);
        m.set_next_offset(2, 3);
        let mut late = [0; LATENESS_BUCKETS_MS.len() + 1];
        late[lateness_bucket(0)] += 5;
        late[lateness_bucket(1_500)] += 2;
        late[lateness_bucket(900_000)] += 1;
        m.add_lateness(&late, 3_000 + 900_000);
        let skipped = AggregationCounts {
            late_partial: 4,
            filtered: 9,
            missing_dimension: 1,
            windows: 0,
        };
        m.add_aggregation("site_1m", skipped);
        m.add_aggregation(
            "site_1m",
            AggregationCounts {
                windows: 6,
                ..Default::default()
            },
        );
        m.add_aggregation(
            "fleet",
            AggregationCounts {
                filtered: 2,
                ..Default::default()
            },
        );
        let text = m.prometheus();
        for sample in [
            "iotflow_aggregation_readings_skipped_total{aggregation=\"site_1m\",why=\"filtered\"} 9\n",
            "iotflow_aggregation_readings_skipped_total{aggregation=\"site_1m\",why=\"late\"} 4\n",
            "iotflow_aggregation_readings_skipped_total{aggregation=\"fleet\",why=\"missing_dimension\"} 0\n",
            "iotflow_aggregation_windows_emitted_total{aggregation=\"site_1m\"} 6\n",
            "iotflow_readings_filtered_total 11\n",
            "iotflow_late_partial_total 4\n",
        ] {
            assert!(text.contains(sample), "{sample} missing:\n{text}");
        }
        for sample in [
            "iotflow_record_lateness_seconds_bucket{le=\"0\"} 5\n",
            "iotflow_record_lateness_seconds_bucket{le=\"1\"} 5\n",
            "iotflow_record_lateness_seconds_bucket{le=\"2\"} 7\n",
            "iotflow_record_lateness_seconds_bucket{le=\"300\"} 7\n",
            "iotflow_record_lateness_seconds_bucket{le=\"+Inf\"} 8\n",
            "iotflow_record_lateness_seconds_sum 903\n",
            "iotflow_record_lateness_seconds_count 8\n",
        ] {
            assert!(text.contains(sample), "{sample} missing:\n{text}");
        }
        assert!(text.contains("iotflow_records_in_total 42\n"), "{text}");
        assert!(
            text.contains("iotflow_dead_letters_total{reason=\"late\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("iotflow_watermark_ms 1763787600000\n"),
            "{text}"
        );
        assert!(
            text.contains("iotflow_partition_lag_records{partition=\"2\"} 17\n")
                && text.contains("iotflow_partition_end_offset{partition=\"2\"} 20\n"),
            "{text}"
        );
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap_or_default().to_owned());
            } else if !line.starts_with("# HELP ") {
                let (name, value) = line.rsplit_once(' ').expect("sample line");
                let bare = name.split('{').next().unwrap_or_default();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| bare.strip_suffix(s).filter(|f| typed.contains(*f)))
                    .unwrap_or(bare);
                assert!(typed.contains(family), "{bare} has no TYPE");
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
    }
}
