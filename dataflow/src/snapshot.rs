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

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::aggregation::Window;
pub use crate::operators::windows::device_owner;
use crate::sealed::Unsealed;

mod stored;
use crate::watermark::ShareReport;

/// Bumped when the layout changes; older binaries refuse newer snapshots.
/// 1: sealed JSON; 2: the compact binary form ([`WorkerSnapshot::encode`]),
/// windows by (device, metric); 3: windows by (aggregation, group key);
/// 4: alert series. 1 and 2 are still read, as the default job's
/// aggregation; 1 to 3 without alert state.
pub const SNAPSHOT_FORMAT: u32 = 4;

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

/// A dedupe key and the watermark at which it is forgotten.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeenKey {
    pub device: CompactString,
    pub metric: CompactString,
    pub seq: u64,
    pub expires_at: i64,
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
}

impl WorkerSnapshot {
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
            out[device_owner(&k.device, workers) as usize]
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
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::aggregation::Aggregation;
    use crate::job::EmitMode;
    use crate::watermark::ShareState;
    use crate::window::WindowSpec;

    /// Per (device, metric) and per metric, tumbling 10, no lateness.
    fn rules() -> WindowRules {
        let per_device =
            Aggregation::per_device("a", WindowSpec::tumbling(10).unwrap(), EmitMode::Final);
        let per_metric = Aggregation {
            name: "m".into(),
            group_by: vec![iotflow_jobfile::GroupField::Metric],
            ..per_device.clone()
        };
        WindowRules {
            aggregations: vec![per_device, per_metric].into(),
            lateness_ms: 0,
        }
    }

    fn snapshot(worker: u32, workers: u32, devices: &[&str]) -> WorkerSnapshot {
        WorkerSnapshot {
            format: SNAPSHOT_FORMAT,
            epoch: 7,
            worker,
            workers,
            reports: vec![ShareReport {
                partition: 0,
                share: 0,
                shares: 1,
                top: vec![5, 4],
                state: ShareState::Active,
                next_offset: 12,
            }],
            watermark: Some(3),
            seen: devices
                .iter()
                .map(|d| SeenKey {
                    device: (*d).into(),
                    metric: "t".into(),
                    seq: 1,
                    expires_at: 100,
                })
                .collect(),
            windows: devices
                .iter()
                .map(|d| OpenWindow {
                    aggregation: 0,
                    key: format!("{d}|t").into(),
                    start: 0,
                    readings: vec![(1, 2.5f64.to_bits())],
                })
                .collect(),
            alerts: devices
                .iter()
                .map(|d| AlertSeries {
                    rule: 0,
                    aggregation: 0,
                    key: format!("{d}|t").into(),
                    series: crate::alert::Series {
                        streak: 2,
                        streak_since: 10,
                        last_seen: Some(9),
                        baseline: (3, 1.5, 0.25),
                        ..Default::default()
                    },
                })
                .collect(),
            previous: None,
        }
    }

    #[test]
    fn round_trip_and_every_corruption_is_caught() {
        let s = snapshot(0, 1, &["a", "b"]);
        let bytes = s.encode().unwrap();
        assert_eq!(WorkerSnapshot::decode(&bytes).unwrap(), s);
        let json = crate::sealed::seal(&s).unwrap();
        assert!(
            json.len() > 2 * bytes.len(),
            "{} vs {} bytes",
            json.len(),
            bytes.len()
        );
        assert_eq!(
            WorkerSnapshot::decode(&json).unwrap(),
            s,
            "format 1 still reads"
        );
        for i in (0..bytes.len()).step_by(7) {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(
                WorkerSnapshot::decode(&bad).is_err(),
                "flip at {i} accepted"
            );
        }
        assert!(WorkerSnapshot::decode(&bytes[..bytes.len() - 1]).is_err());
        assert_eq!(
            WorkerSnapshot::decode(&[]),
            Err(SnapshotError::Sealed(Unsealed::Truncated(0)))
        );
    }

    #[test]
    fn a_chain_puts_together_what_each_epoch_added_less_what_closed() {
        // Windows of 10: start 0 closes at 10, start 10 at 20.
        let close_at = &rules();
        let key = |device: &str, seq, expires_at| SeenKey {
            device: device.into(),
            metric: "t".into(),
            seq,
            expires_at,
        };
        let window = |device: &str, start, readings: &[(i64, f64)]| OpenWindow {
            aggregation: 0,
            key: format!("{device}|t").into(),
            start,
            readings: readings.iter().map(|&(t, v)| (t, v.to_bits())).collect(),
        };
        let mut whole = snapshot(0, 1, &[]);
        whole.epoch = 4;
        whole.watermark = Some(5);
        whole.seen = vec![key("a", 1, 10)];
        // The same window twice: a restored run and the epoch's own.
        whole.windows = vec![window("a", 0, &[(3, 1.0)]), window("a", 0, &[(4, 0.5)])];
        let delta = |epoch: u64, wm, seen, windows| {
            let mut d = snapshot(0, 1, &[]);
            (d.epoch, d.watermark, d.seen, d.windows) = (epoch, Some(wm), seen, windows);
            d.previous = Some(Link {
                epoch: epoch - 1,
                bytes: 0,
                checksum: 0,
            });
            d
        };
        let five = delta(
            5,
            8,
            vec![key("a", 2, 20)],
            vec![window("a", 0, &[(1, 2.0)]), window("a", 10, &[(12, 4.0)])],
        );
        let six = delta(6, 10, vec![], vec![window("a", 10, &[(11, 5.0)])]);
        let got = materialize(vec![whole.clone(), five.clone(), six.clone()], close_at).unwrap();
        assert_eq!(got.epoch, 6);
        assert_eq!(got.watermark, Some(10));
        assert_eq!(got.previous, None);
        assert_eq!(got.seen, vec![key("a", 2, 20)], "a/1 expired at 10");
        assert_eq!(
            got.windows,
            vec![window("a", 10, &[(11, 5.0), (12, 4.0)])],
            "window 0 closed at 10; window 10's readings sorted"
        );
        let at_five = materialize(vec![whole.clone(), five.clone()], close_at).unwrap();
        assert_eq!(
            at_five.windows[0],
            window("a", 0, &[(1, 2.0), (3, 1.0), (4, 0.5)])
        );
        assert!(
            materialize(vec![five.clone(), six.clone()], close_at).is_err(),
            "no whole start"
        );
        assert!(materialize(vec![whole, six], close_at).is_err(), "a gap");
        assert!(
            reshard(&[five], 1, &rules()).is_err(),
            "deltas are put together first"
        );
    }

    /// A session closed at one epoch stays closed: a later reading within the
    /// gap of it starts a new session, as Collect saw it, not a merged one.
    #[test]
    fn a_chain_closes_sessions_epoch_by_epoch() {
        let session = Aggregation {
            name: "s".into(),
            window: Window::Session { gap_ms: 10 },
            ..Aggregation::per_device("s", WindowSpec::tumbling(10).unwrap(), EmitMode::Final)
        };
        let rules = WindowRules {
            aggregations: vec![session].into(),
            lateness_ms: 0,
        };
        let slot = |times: &[i64]| OpenWindow {
            aggregation: 0,
            key: "a|t".into(),
            start: crate::aggregation::SESSION_SLOT,
            readings: times.iter().map(|&t| (t, 1f64.to_bits())).collect(),
        };
        let mut whole = snapshot(0, 1, &[]);
        (whole.epoch, whole.watermark, whole.windows) = (1, Some(0), vec![slot(&[1, 5])]);
        let mut closes = snapshot(0, 1, &[]);
        (closes.epoch, closes.watermark, closes.windows) = (2, Some(16), vec![]);
        closes.previous = Some(Link {
            epoch: 1,
            bytes: 0,
            checksum: 0,
        });
        let mut later = snapshot(0, 1, &[]);
        (later.epoch, later.watermark, later.windows) = (3, Some(16), vec![slot(&[12])]);
        later.previous = Some(Link {
            epoch: 2,
            bytes: 0,
            checksum: 0,
        });
        let got = materialize(vec![whole, closes, later], &rules).unwrap();
        assert_eq!(
            got.windows,
            vec![slot(&[12])],
            "[1, 15) closed at 16; 12 is a session of its own"
        );
    }

    #[test]
    fn inconsistent_sets_are_refused() {
        let a = snapshot(0, 2, &["a"]);
        assert!(
            reshard(std::slice::from_ref(&a), 1, &rules()).is_err(),
            "one of two snapshots"
        );
        let mut b = snapshot(1, 2, &["b"]);
        b.epoch = 8;
        assert!(reshard(&[a, b], 1, &rules()).is_err(), "two epochs");
        assert!(reshard(&[], 1, &rules()).is_err());
    }

    /// Tumbling 10 per device (0), sessions of gap 10 per device (1).
    fn grid_and_session_rules() -> WindowRules {
        let grid = Aggregation::per_device("g", WindowSpec::tumbling(10).unwrap(), EmitMode::Final);
        let session = Aggregation {
            name: "s".into(),
            window: Window::Session { gap_ms: 10 },
            ..grid.clone()
        };
        WindowRules {
            aggregations: vec![grid, session].into(),
            lateness_ms: 0,
        }
    }

    /// A chain: a whole snapshot, then deltas, watermarks never going back.
    /// Per link: (watermark step, keys (device, expiry − watermark), grid
    /// windows (device, start − watermark in tens, reading), session readings
    /// (device, time − watermark), an alert series or not).
    fn arb_chain() -> impl Strategy<Value = Vec<WorkerSnapshot>> {
        let link = (
            // Sometimes a step past everything open: the next link stands alone.
            prop_oneof![3 => 0i64..25, 1 => 40i64..80],
            prop::collection::vec((0u8..3, -10i64..30), 0..5),
            prop::collection::vec((0u8..3, -2i64..3, 0i64..10), 0..5),
            prop::collection::vec((0u8..3, -15i64..70), 0..4),
            prop::bool::weighted(0.1),
        );
        prop::collection::vec(link, 1..7).prop_map(|links| {
            let mut wm = 0;
            links
                .into_iter()
                .enumerate()
                .map(|(i, (step, keys, grid, session, alert))| {
                    wm += step;
                    let mut s = snapshot(0, 1, &[]);
                    s.epoch = i as u64;
                    s.watermark = Some(wm);
                    s.previous = (i > 0).then(|| Link {
                        epoch: i as u64 - 1,
                        bytes: 0,
                        checksum: 0,
                    });
                    s.seen = keys
                        .into_iter()
                        .enumerate()
                        .map(|(n, (d, e))| SeenKey {
                            device: format!("d{d}").into(),
                            metric: "t".into(),
                            seq: (i * 10 + n) as u64,
                            expires_at: wm + e,
                        })
                        .collect();
                    let start = |tens: i64| (wm / 10 + tens) * 10;
                    s.windows = grid
                        .into_iter()
                        .map(|(d, tens, at)| OpenWindow {
                            aggregation: 0,
                            key: format!("d{d}|t").into(),
                            start: start(tens),
                            readings: vec![(start(tens) + at, 1f64.to_bits())],
                        })
                        .chain(session.into_iter().map(|(d, at)| OpenWindow {
                            aggregation: 1,
                            key: format!("d{d}|t").into(),
                            start: crate::aggregation::SESSION_SLOT,
                            readings: vec![(wm + at, 2f64.to_bits())],
                        }))
                        .collect();
                    if !alert {
                        s.alerts.clear();
                    } else {
                        s.alerts = snapshot(0, 1, &["d0"]).alerts;
                    }
                    s
                })
                .collect()
        })
    }

    proptest! {
        /// Leaving out of each link what its own watermark closed keeps the
        /// chain's state; once a watermark closed all the chain held, the
        /// next link alone (made whole) is that state.
        #[test]
        fn links_without_what_closed_and_a_link_after_everything_closed_keep_the_state(
            chain in arb_chain(),
        ) {
            let rules = grid_and_session_rules();
            let mut dropped = chain.clone();
            dropped.iter_mut().for_each(|s| s.drop_closed(&rules));
            prop_assert_eq!(
                materialize(dropped.clone(), &rules).unwrap(),
                materialize(chain.clone(), &rules).unwrap()
            );
            let mut final_at = dropped[0].final_at(&rules);
            for i in 1..dropped.len() {
                if final_at.is_none_or(|at| !outlives(at, dropped[i].watermark)) {
                    let mut alone = dropped[i].clone();
                    alone.previous = None;
                    prop_assert_eq!(
                        materialize(vec![alone], &rules).unwrap(),
                        materialize(chain[..=i].to_vec(), &rules).unwrap(),
                        "link {} after everything closed", i
                    );
                }
                final_at = final_at.max(dropped[i].final_at(&rules));
            }
        }

        /// Resharding N → M keeps exactly the same state, puts every key on the
        /// worker the routing picks, and M → N → M is the identity.
        #[test]
        fn resharding_keeps_the_state_and_routes_every_key(
            devices in prop::collection::btree_set("[a-z]{1,6}", 0..40),
            from in 1u32..5,
            to in 1u32..5,
        ) {
            let devices: Vec<String> = devices.into_iter().collect();
            let mut shards: Vec<Vec<&str>> = vec![Vec::new(); from as usize];
            for d in &devices {
                shards[device_owner(d, from) as usize].push(d);
            }
            let rules = rules();
            let mut before: Vec<WorkerSnapshot> = shards
                .iter()
                .enumerate()
                .map(|(w, ds)| snapshot(w as u32, from, ds))
                .collect();
            // Aggregation 1 (per metric) keyed by the device's name as its metric.
            for d in &devices {
                let w = OpenWindow { aggregation: 1, key: d.as_str().into(), start: 0, readings: vec![(1, 1)] };
                let owner = rules.owner(&w, from) as usize;
                before[owner].windows.push(w);
            }
            let after = reshard(&before, to, &rules).unwrap();
            prop_assert_eq!(after.len(), to as usize);
            let mut all: Vec<String> = Vec::new();
            for s in &after {
                for w in &s.windows {
                    prop_assert_eq!(rules.owner(w, to), s.worker);
                    if w.aggregation == 0 {
                        let device = w.key.split('|').next().unwrap_or_default();
                        prop_assert_eq!(device_owner(device, to), s.worker);
                        all.push(device.to_string());
                    }
                }
                for k in &s.seen {
                    prop_assert_eq!(device_owner(&k.device, to), s.worker);
                }
                // Alert series follow their aggregation's key owner.
                for a in &s.alerts {
                    let device = a.key.split('|').next().unwrap_or_default();
                    prop_assert_eq!(device_owner(device, to), s.worker);
                }
            }
            prop_assert_eq!(after.iter().map(|s| s.alerts.len()).sum::<usize>(), devices.len());
            all.sort();
            prop_assert_eq!(all, devices.clone());
            prop_assert_eq!(after.iter().map(|s| s.windows.len()).sum::<usize>(), 2 * devices.len());
            let back = reshard(&reshard(&after, from, &rules).unwrap(), to, &rules).unwrap();
            prop_assert_eq!(back, after);
        }
    }
}
