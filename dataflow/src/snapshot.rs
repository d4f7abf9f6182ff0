//! What a worker's dataflow state looks like at an epoch boundary, in a form
//! that survives a restart with a different worker count: names, not the
//! per-worker ids the operators use, and a checksum over the bytes.
//!
//! ```text
//!   Assign:   latest report of each share + watermark ─┐
//!             dedupe keys + their expiry               ├─▶ WorkerSnapshot ─encode (JSON + CRC)─▶ bytes
//!   Emit:     open windows' readings                   ┘
//!   snapshots of N workers ──reshard (devices by `device_owner`)──▶ snapshots of M workers
//! ```
//!
//! A partition's top event times are in its latest report, so Classify
//! restores from the reports and needs no part of its own.

use std::sync::Arc;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::aggregation::Window;
pub use crate::operators::windows::device_owner;
use crate::sealed::Unsealed;

mod steps;
mod stored;
use crate::watermark::ShareReport;

/// Bumped when the layout changes; older binaries refuse newer snapshots.
/// 1: sealed JSON; 2: the compact binary form ([`WorkerSnapshot::encode`]),
/// windows by (device, metric); 3: windows by (aggregation, group key);
/// 4: alert series; 5: keys and readings as steps from the one before.
/// 1 and 2 are still read, as the default job's aggregation; 1 to 3
/// without alert state.
pub const SNAPSHOT_FORMAT: u32 = 5;

/// What a committing worker captures of its state at an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// Nothing: a replayed epoch (committed before), or one between checkpoints.
    Nothing,
    /// What the epoch added, linked to the epoch before.
    Delta,
    /// All of it, read out of the operators' state.
    Whole,
}

/// Which epochs' state a committing job captures, and how: the whole state
/// at the first epoch it stages; after it, with checkpoints every k epochs,
/// the whole state at every k-th epoch and nothing between (recovery
/// replays the epochs after the newest checkpoint, [`crate::replay`]);
/// without, what each epoch added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapturePlan {
    /// The first epoch the sink stages (epochs before it are replayed).
    pub first: u64,
    pub checkpoint_every: Option<std::num::NonZeroU64>,
}

impl CapturePlan {
    pub fn at(&self, epoch: u64) -> Capture {
        if epoch < self.first {
            return Capture::Nothing;
        }
        if epoch == self.first {
            return Capture::Whole;
        }
        match self.checkpoint_every {
            None => Capture::Delta,
            Some(k) if epoch.is_multiple_of(k.get()) => Capture::Whole,
            Some(_) => Capture::Nothing,
        }
    }
}

/// Where windows close and live: the job's aggregations and lateness.
#[derive(Debug, Clone)]
pub struct WindowRules {
    pub aggregations: std::sync::Arc<[crate::aggregation::Aggregation]>,
    pub lateness_ms: i64,
}

impl WindowRules {
    /// The watermark at which grid window `start` of aggregation `agg` is
    /// final; `None` for a session key's slot (its sessions decide).
    pub fn close_at(&self, agg: u16, start: i64) -> Option<i64> {
        match self.aggregations.get(agg as usize).map(|a| a.window) {
            Some(Window::Grid(w)) => Some(w.end(start).saturating_add(self.lateness_ms)),
            Some(Window::Session { .. }) => None,
            // A window of an aggregation the job no longer has: closed.
            None => Some(i64::MIN),
        }
    }

    /// The session gap of aggregation `agg`, if its windows are sessions.
    fn gap(&self, agg: u16) -> Option<i64> {
        match self.aggregations.get(agg as usize).map(|a| a.window) {
            Some(Window::Session { gap_ms }) => Some(gap_ms),
            _ => None,
        }
    }

    /// Drops from a session key's `readings` those of the sessions that
    /// watermark `wm` closed, as Collect does at each epoch.
    fn close_sessions(&self, gap_ms: i64, readings: &mut Vec<(i64, u64)>, wm: i64) {
        let mut sessions = crate::session::split(readings.iter().map(|r| r.0), gap_ms);
        let closed = sessions.close(gap_ms, self.lateness_ms, wm);
        if !closed.is_empty() {
            readings.retain(|(ts, _)| !closed.iter().any(|(f, l)| f <= ts && ts <= l));
        }
    }

    /// The worker among `workers` that owns `w`.
    pub fn owner(&self, w: &OpenWindow, workers: u32) -> u32 {
        match self.aggregations.get(w.aggregation as usize) {
            Some(a) => a.key_owner(&w.key, workers),
            None => 0,
        }
    }
}

/// Why snapshot bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot: {0}")]
    Sealed(#[from] Unsealed),
    #[error("snapshot format {found} is newer than this binary's {SNAPSHOT_FORMAT}")]
    Format { found: u32 },
    #[error("snapshots disagree: {0}")]
    Inconsistent(String),
    #[error("encoding a snapshot: {0}")]
    Encode(String),
}

/// The series a dedupe key belongs to, named once and shared by its keys.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeriesName {
    pub device: CompactString,
    pub metric: CompactString,
}

/// A dedupe key and the watermark at which it is forgotten. The names are
/// shared by every key of one series: a key is 24 bytes in memory, not 64,
/// and an epoch's delta holds one per reading until its stage thread has
/// written it. Ordered by series name, then seq and expiry; keys of one
/// series compare without reading the names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "SeenKeyFields", into = "SeenKeyFields")]
pub struct SeenKey {
    pub series: Arc<SeriesName>,
    pub seq: u64,
    pub expires_at: i64,
}

impl SeenKey {
    /// A key with names of its own; snapshots share one [`SeriesName`] per series.
    pub fn new(device: &str, metric: &str, seq: u64, expires_at: i64) -> Self {
        let series = Arc::new(SeriesName {
            device: device.into(),
            metric: metric.into(),
        });
        Self {
            series,
            seq,
            expires_at,
        }
    }

    fn cmp_series(&self, other: &Self) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.series, &other.series) {
            std::cmp::Ordering::Equal
        } else {
            self.series.cmp(&other.series)
        }
    }
}

impl PartialEq for SeenKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for SeenKey {}

impl PartialOrd for SeenKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SeenKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.cmp_series(other)
            .then(self.seq.cmp(&other.seq))
            .then(self.expires_at.cmp(&other.expires_at))
    }
}

/// A key's serde form: the fields it always had, names inline.
#[derive(Clone, Serialize, Deserialize)]
struct SeenKeyFields {
    device: CompactString,
    metric: CompactString,
    seq: u64,
    expires_at: i64,
}

impl From<SeenKeyFields> for SeenKey {
    fn from(k: SeenKeyFields) -> Self {
        Self::new(&k.device, &k.metric, k.seq, k.expires_at)
    }
}

impl From<SeenKey> for SeenKeyFields {
    fn from(k: SeenKey) -> Self {
        Self {
            device: k.series.device.clone(),
            metric: k.series.metric.clone(),
            seq: k.seq,
            expires_at: k.expires_at,
        }
    }
}

/// An open window of one aggregation and the readings it holds, as (event time, value bits).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OpenWindow {
    /// Index of its aggregation in the job's list.
    pub aggregation: u16,
    /// Its group values joined by `|`.
    pub key: CompactString,
    pub start: i64,
    /// `(ts, f64::to_bits(value))`, sorted: bits, so snapshots compare exactly.
    pub readings: Vec<(i64, u64)>,
}

impl OpenWindow {
    /// The order a snapshot holds its windows in: by aggregation, key and
    /// start, then readings (a delta may hold one window twice).
    pub fn snapshot_order(a: &Self, b: &Self) -> std::cmp::Ordering {
        (a.aggregation, &a.key, a.start)
            .cmp(&(b.aggregation, &b.key, b.start))
            .then_with(|| a.readings.cmp(&b.readings))
    }
}

/// What an alert rule remembers of one group key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertSeries {
    /// Index of the rule in the job's list.
    pub rule: u16,
    /// Index of the aggregation it watches: the key's owner follows from it.
    pub aggregation: u16,
    pub key: CompactString,
    pub series: crate::alert::Series,
}

/// Where a delta snapshot's predecessor is: the same worker's snapshot file
/// of `epoch`, with its size and checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub epoch: u64,
    pub bytes: u64,
    pub checksum: u32,
}

/// One worker's state after an epoch: whole (`previous` is `None`), or what
/// the epoch added on top of the snapshot `previous` names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerSnapshot {
    pub format: u32,
    pub epoch: u64,
    pub worker: u32,
    pub workers: u32,
    /// The latest report of every share: the watermark's inputs (the same on every worker).
    pub reports: Vec<ShareReport>,
    /// The job watermark after this epoch (it never goes back).
    pub watermark: Option<i64>,
    pub seen: Vec<SeenKey>,
    pub windows: Vec<OpenWindow>,
    /// Alert rules' series of this worker's keys (a delta: those the epoch changed).
    #[serde(default)]
    pub alerts: Vec<AlertSeries>,
    /// A delta's predecessor. A delta's `seen` and `windows` hold what its epoch
    /// added (new keys, each window's new readings); what the watermark closed
    /// is dropped when the chain is put together ([`materialize`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Link>,
}

/// Whether state due at `at` (a dedupe key's expiry, a grid window's close)
/// is still kept under `watermark`: what the watermark reached is final.
pub fn outlives(at: i64, watermark: Option<i64>) -> bool {
    watermark.is_none_or(|wm| at > wm)
}

impl WorkerSnapshot {
    /// Drops what its own watermark closed: dedupe keys expiring at or below
    /// it and grid windows closing at or below it. [`materialize`] drops them
    /// under any later head, whose watermark is no lower, so the chain holds
    /// the same state; but a delta of an epoch that opened and closed most of
    /// its windows (a backlog read in epochs of many windows' length) shrinks
    /// to what stays open, and so do the writes, reads and folds of the chain.
    /// Session keys stay: their sessions close epoch by epoch along the chain.
    pub fn drop_closed(&mut self, rules: &WindowRules) {
        let wm = self.watermark;
        self.seen.retain(|k| outlives(k.expires_at, wm));
        self.windows.retain(|w| {
            rules
                .close_at(w.aggregation, w.start)
                .is_none_or(|at| outlives(at, wm))
        });
    }

    /// When the last of its state is final: the latest key expiry or grid
    /// window close; `i64::MAX` while it holds a session key or an alert
    /// series (no single time ends those); `None` when it holds nothing.
    pub fn final_at(&self, rules: &WindowRules) -> Option<i64> {
        let keys = self.seen.iter().map(|k| k.expires_at);
        let windows = self
            .windows
            .iter()
            .map(|w| rules.close_at(w.aggregation, w.start).unwrap_or(i64::MAX));
        let alerts = self.alerts.iter().map(|_| i64::MAX);
        keys.chain(windows).chain(alerts).max()
    }
}

/// The whole state at the head of `chain` (a whole snapshot, then deltas,
/// oldest first): every key and reading added along it, less what the head's
/// watermark has closed: keys expiring at or below it and windows whose
/// `rules.close_at` (end + lateness) is at or below it, as Collect drops them.
pub fn materialize(
    chain: Vec<WorkerSnapshot>,
    rules: &WindowRules,
) -> Result<WorkerSnapshot, SnapshotError> {
    // Sized once: a fold's keys run to hundreds of thousands.
    let keys: usize = chain.iter().map(|s| s.seen.len()).sum();
    let mut chain = chain.into_iter();
    let Some(mut whole) = chain.next() else {
        return Err(SnapshotError::Inconsistent(
            "an empty snapshot chain".into(),
        ));
    };
    if whole.previous.is_some() {
        return Err(SnapshotError::Inconsistent(format!(
            "the chain starts with a delta (epoch {})",
            whole.epoch
        )));
    }
    whole.seen.reserve(keys - whole.seen.len());
    // A window can appear more than once in one snapshot (a first epoch holds
    // the restored run and the epoch's own): readings add up, never replace.
    let mut windows: std::collections::BTreeMap<(u16, CompactString, i64), Vec<(i64, u64)>> =
        std::collections::BTreeMap::new();
    // Session keys close sessions epoch by epoch, as Collect did: a later
    // reading must not join a session that had already closed.
    let close_sessions = |windows: &mut std::collections::BTreeMap<_, Vec<(i64, u64)>>,
                          wm: Option<i64>| {
        let Some(wm) = wm else { return };
        for ((agg, _, _), readings) in windows.iter_mut() {
            if let Some(gap) = rules.gap(*agg) {
                rules.close_sessions(gap, readings, wm);
            }
        }
        windows.retain(|_, r| !r.is_empty());
    };
    for w in whole.windows.drain(..) {
        windows
            .entry((w.aggregation, w.key, w.start))
            .or_default()
            .extend(w.readings);
    }
    close_sessions(&mut windows, whole.watermark);
    // A series in a later link replaces the earlier one: each holds it whole.
    let mut alerts: std::collections::BTreeMap<(u16, CompactString), AlertSeries> = whole
        .alerts
        .drain(..)
        .map(|a| ((a.rule, a.key.clone()), a))
        .collect();
    for delta in chain {
        if delta.previous.map(|l| l.epoch) != Some(whole.epoch) {
            return Err(SnapshotError::Inconsistent(format!(
                "epoch {} does not follow epoch {}",
                delta.epoch, whole.epoch
            )));
        }
        whole.epoch = delta.epoch;
        whole.reports = delta.reports;
        whole.watermark = delta.watermark;
        whole.seen.extend(delta.seen);
        alerts.extend(
            delta
                .alerts
                .into_iter()
                .map(|a| ((a.rule, a.key.clone()), a)),
        );
        for w in delta.windows {
            windows
                .entry((w.aggregation, w.key, w.start))
                .or_default()
                .extend(w.readings);
        }
        close_sessions(&mut windows, whole.watermark);
    }
    let open = |at: i64| outlives(at, whole.watermark);
    whole.seen.retain(|k| open(k.expires_at));
    whole.seen.sort_unstable();
    whole.alerts = alerts.into_values().collect();
    whole.windows = windows
        .into_iter()
        .filter(|((agg, _, start), _)| rules.close_at(*agg, *start).is_none_or(open))
        .map(|((aggregation, key, start), mut readings)| {
            readings.sort_unstable_by_key(|&(ts, bits)| {
                (ts, crate::aggregate::ordered_bits(f64::from_bits(bits)))
            });
            OpenWindow {
                aggregation,
                key,
                start,
                readings,
            }
        })
        .collect();
    Ok(whole)
}

/// Redistributes one epoch's snapshots of any number of workers over
/// `workers` workers; the union of the state is unchanged and every entry
/// lands where the new workers' routing sends its key.
pub fn reshard(
    snapshots: &[WorkerSnapshot],
    workers: u32,
    rules: &WindowRules,
) -> Result<Vec<WorkerSnapshot>, SnapshotError> {
    let Some(first) = snapshots.first() else {
        return Err(SnapshotError::Inconsistent("no snapshots".into()));
    };
    if snapshots.len() != first.workers as usize {
        return Err(SnapshotError::Inconsistent(format!(
            "{} snapshots for {} workers",
            snapshots.len(),
            first.workers
        )));
    }
    if let Some(s) = snapshots.iter().find(|s| s.epoch != first.epoch) {
        return Err(SnapshotError::Inconsistent(format!(
            "epochs {} and {}",
            first.epoch, s.epoch
        )));
    }
    let workers = workers.max(1);
    let mut out: Vec<WorkerSnapshot> = (0..workers)
        .map(|worker| WorkerSnapshot {
            format: SNAPSHOT_FORMAT,
            epoch: first.epoch,
            worker,
            workers,
            reports: first.reports.clone(),
            watermark: first.watermark,
            seen: Vec::new(),
            windows: Vec::new(),
            alerts: Vec::new(),
            previous: None,
        })
        .collect();
    if let Some(s) = snapshots.iter().find(|s| s.previous.is_some()) {
        return Err(SnapshotError::Inconsistent(format!(
            "worker {}'s snapshot is a delta: materialize it first",
            s.worker
        )));
    }
    for s in snapshots {
        for k in &s.seen {
            out[device_owner(&k.series.device, workers) as usize]
                .seen
                .push(k.clone());
        }
        for w in &s.windows {
            out[rules.owner(w, workers) as usize]
                .windows
                .push(w.clone());
        }
        for a in &s.alerts {
            let owner = rules
                .aggregations
                .get(a.aggregation as usize)
                .map_or(0, |agg| agg.key_owner(&a.key, workers));
            out[owner as usize].alerts.push(a.clone());
        }
    }
    // One canonical layout: the bytes depend on the state, not on the old sharding.
    for s in &mut out {
        s.seen.sort_unstable();
        s.windows.sort_unstable();
        s.alerts
            .sort_by(|a, b| (a.rule, &a.key).cmp(&(b.rule, &b.key)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
