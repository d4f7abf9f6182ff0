//! The stored form of a [`WorkerSnapshot`]: each name once, keys and
//! readings as varint steps, sealed with a CRC-32; and the formats older
//! binaries wrote, read as today's.

use std::sync::Arc;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use super::steps::{Steps, StepsOf};
use super::{
    AlertSeries, Link, OpenWindow, SNAPSHOT_FORMAT, SeenKey, SeriesName, SnapshotError,
    WorkerSnapshot,
};
use crate::sealed::{Unsealed, bincode_with_checksum, checked_body, codec, unseal};
use crate::watermark::ShareReport;

/// (aggregation, key name, start, readings).
type StoredWindow = (u16, u32, i64, Vec<(i64, u64)>);
/// (rule, aggregation, key name, series).
type StoredAlert = (u16, u16, u32, crate::alert::Series);
/// Format 2's windows: (device name, metric name, start, readings).
type StoredWindowV2 = (u32, u32, i64, Vec<(i64, u64)>);

/// The stored form: each name once, keys in runs of one series and
/// readings in their window as [`steps`](super::steps) from the one before
/// (two to four bytes a key and about twelve a reading, where whole values
/// took fifteen and eighteen).
#[derive(Deserialize)]
struct Stored {
    format: u32,
    epoch: u64,
    worker: u32,
    workers: u32,
    reports: Vec<ShareReport>,
    watermark: Option<i64>,
    names: Vec<String>,
    seen: Vec<KeyRun>,
    windows: Vec<SteppedWindow>,
    previous: Option<Link>,
    alerts: Vec<StoredAlert>,
}

/// (device name, metric name, (seq, expires at) of each key).
type KeyRun = (u32, u32, Steps<(u64, i64)>);
/// (aggregation, key name, start, readings).
type SteppedWindow = (u16, u32, i64, Steps<(i64, u64)>);
/// [`KeyRun`] and [`SteppedWindow`] as encoding writes them.
type KeyRunRef<'a> = (u32, u32, StepsOf<'a, SeenKey>);
type SteppedWindowRef<'a> = (u16, u32, i64, StepsOf<'a, (i64, u64)>);

/// [`Stored`] as encoding writes it: the same fields in the same order,
/// borrowed from the snapshot.
#[derive(Serialize)]
struct StoredRef<'a> {
    format: u32,
    epoch: u64,
    worker: u32,
    workers: u32,
    reports: &'a [ShareReport],
    watermark: Option<i64>,
    names: Vec<&'a str>,
    seen: Vec<KeyRunRef<'a>>,
    windows: Vec<SteppedWindowRef<'a>>,
    previous: Option<Link>,
    alerts: Vec<(u16, u16, u32, &'a crate::alert::Series)>,
}

/// Format 4, as it was stored: whole values, each name once.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct StoredV4 {
    format: u32,
    epoch: u64,
    worker: u32,
    workers: u32,
    reports: Vec<ShareReport>,
    watermark: Option<i64>,
    names: Vec<String>,
    /// (device name, metric name, seq, expires at).
    seen: Vec<(u32, u32, u64, i64)>,
    windows: Vec<StoredWindow>,
    previous: Option<Link>,
    alerts: Vec<StoredAlert>,
}

/// Format 3, as it was stored: no alert series.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct StoredV3 {
    format: u32,
    epoch: u64,
    worker: u32,
    workers: u32,
    reports: Vec<ShareReport>,
    watermark: Option<i64>,
    names: Vec<String>,
    seen: Vec<(u32, u32, u64, i64)>,
    windows: Vec<StoredWindow>,
    previous: Option<Link>,
}

impl StoredV3 {
    fn upgrade(self) -> StoredV4 {
        StoredV4 {
            format: self.format,
            epoch: self.epoch,
            worker: self.worker,
            workers: self.workers,
            reports: self.reports,
            watermark: self.watermark,
            names: self.names,
            seen: self.seen,
            windows: self.windows,
            previous: self.previous,
            alerts: Vec::new(),
        }
    }
}

/// Format 2, as it was stored.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct StoredV2 {
    format: u32,
    epoch: u64,
    worker: u32,
    workers: u32,
    reports: Vec<ShareReport>,
    watermark: Option<i64>,
    names: Vec<String>,
    seen: Vec<(u32, u32, u64, i64)>,
    windows: Vec<StoredWindowV2>,
    previous: Option<Link>,
}

impl StoredV2 {
    /// As format 3: windows of aggregation 0 keyed `device|metric`.
    fn upgrade(self) -> StoredV3 {
        let mut names = self.names;
        let mut pairs: rustc_hash::FxHashMap<(u32, u32), u32> = Default::default();
        let windows = self
            .windows
            .into_iter()
            .map(|(d, m, start, readings)| {
                let key = *pairs.entry((d, m)).or_insert_with(|| {
                    let get = |i: u32| names.get(i as usize).cloned().unwrap_or_default();
                    names.push(format!("{}|{}", get(d), get(m)));
                    names.len() as u32 - 1
                });
                (0, key, start, readings)
            })
            .collect();
        StoredV3 {
            format: self.format,
            epoch: self.epoch,
            worker: self.worker,
            workers: self.workers,
            reports: self.reports,
            watermark: self.watermark,
            names,
            seen: self.seen,
            windows,
            previous: self.previous,
        }
    }
}

/// Each distinct name once, in order of first use.
#[derive(Default)]
struct Interner<'a> {
    ids: rustc_hash::FxHashMap<&'a str, u32>,
    names: Vec<&'a str>,
}

impl<'a> Interner<'a> {
    fn id(&mut self, name: &'a str) -> u32 {
        *self.ids.entry(name).or_insert_with(|| {
            self.names.push(name);
            self.names.len() as u32 - 1
        })
    }
}

impl WorkerSnapshot {
    /// The compact binary form followed by its CRC-32 (4 bytes, big endian).
    pub fn encode(&self) -> Result<Vec<u8>, SnapshotError> {
        let mut names = Interner::default();
        // Keys come grouped by series, each group one run (a key outside
        // its group would only start another).
        let seen: Vec<KeyRunRef<'_>> = self
            .seen
            .chunk_by(|a, b| a.cmp_series(b).is_eq())
            .map(|run| {
                let series = &run[0].series;
                let (device, metric) = (names.id(&series.device), names.id(&series.metric));
                (device, metric, StepsOf(run))
            })
            .collect();
        let windows = self
            .windows
            .iter()
            .map(|w| {
                let key = names.id(&w.key);
                (w.aggregation, key, w.start, StepsOf(&w.readings[..]))
            })
            .collect();
        let alerts = self
            .alerts
            .iter()
            .map(|a| (a.rule, a.aggregation, names.id(&a.key), &a.series))
            .collect();
        let stored = StoredRef {
            format: SNAPSHOT_FORMAT,
            epoch: self.epoch,
            worker: self.worker,
            workers: self.workers,
            reports: &self.reports,
            watermark: self.watermark,
            names: names.names,
            seen,
            windows,
            previous: self.previous,
            alerts,
        };
        bincode_with_checksum(&stored).map_err(|e| SnapshotError::Encode(e.to_string()))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        use bincode::Options;
        let body = checked_body(bytes)?;
        if body.first() == Some(&b'{') {
            // Format 1: sealed JSON.
            let s: WorkerSnapshot = unseal(bytes)?;
            return Ok(s);
        }
        let format: u32 = codec()
            .allow_trailing_bytes()
            .deserialize(body)
            .map_err(|e| Unsealed::Decode(e.to_string()))?;
        if format > SNAPSHOT_FORMAT {
            return Err(SnapshotError::Format { found: format });
        }
        let decode = |e: bincode::Error| Unsealed::Decode(e.to_string());
        match format {
            2 => codec()
                .deserialize::<StoredV2>(body)
                .map_err(decode)?
                .upgrade()
                .upgrade()
                .upgrade()
                .into_snapshot(),
            3 => codec()
                .deserialize::<StoredV3>(body)
                .map_err(decode)?
                .upgrade()
                .upgrade()
                .into_snapshot(),
            4 => codec()
                .deserialize::<StoredV4>(body)
                .map_err(decode)?
                .upgrade()
                .into_snapshot(),
            _ => codec()
                .deserialize::<Stored>(body)
                .map_err(decode)?
                .into_snapshot(),
        }
    }
}

/// Name `i` of a snapshot's names.
fn name_in(names: &[String], i: u32) -> Result<CompactString, SnapshotError> {
    names
        .get(i as usize)
        .map(CompactString::from)
        .ok_or_else(|| Unsealed::Decode(format!("name {i} out of range")).into())
}

impl Stored {
    fn into_snapshot(self) -> Result<WorkerSnapshot, SnapshotError> {
        let names = &self.names;
        let mut seen = Vec::with_capacity(self.seen.iter().map(|r| r.2.0.len()).sum());
        for (d, m, keys) in self.seen {
            let series = Arc::new(SeriesName {
                device: name_in(names, d)?,
                metric: name_in(names, m)?,
            });
            seen.extend(keys.0.into_iter().map(|(seq, expires_at)| SeenKey {
                series: Arc::clone(&series),
                seq,
                expires_at,
            }));
        }
        let windows = self
            .windows
            .into_iter()
            .map(|(aggregation, key, start, readings)| {
                Ok(OpenWindow {
                    aggregation,
                    key: name_in(names, key)?,
                    start,
                    readings: readings.0,
                })
            })
            .collect::<Result<_, SnapshotError>>()?;
        let alerts = self
            .alerts
            .into_iter()
            .map(|(rule, aggregation, key, series)| {
                Ok(AlertSeries {
                    rule,
                    aggregation,
                    key: name_in(names, key)?,
                    series,
                })
            })
            .collect::<Result<_, SnapshotError>>()?;
        Ok(WorkerSnapshot {
            alerts,
            format: self.format,
            epoch: self.epoch,
            worker: self.worker,
            workers: self.workers,
            reports: self.reports,
            watermark: self.watermark,
            seen,
            windows,
            previous: self.previous,
        })
    }
}

impl StoredV4 {
    /// As format 5: consecutive keys of one series as one run.
    fn upgrade(self) -> Stored {
        let seen: Vec<KeyRun> = self
            .seen
            .chunk_by(|a, b| (a.0, a.1) == (b.0, b.1))
            .map(|run| {
                let keys = run.iter().map(|&(_, _, seq, expires_at)| (seq, expires_at));
                (run[0].0, run[0].1, Steps(keys.collect()))
            })
            .collect();
        Stored {
            format: self.format,
            epoch: self.epoch,
            worker: self.worker,
            workers: self.workers,
            reports: self.reports,
            watermark: self.watermark,
            names: self.names,
            seen,
            windows: self
                .windows
                .into_iter()
                .map(|(aggregation, key, start, readings)| {
                    (aggregation, key, start, Steps(readings))
                })
                .collect(),
            previous: self.previous,
            alerts: self.alerts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sealed::with_checksum;

    /// Snapshots an older binary wrote (format 2, windows by device and
    /// metric) read as the default job's: aggregation 0, keyed `device|metric`.
    #[test]
    fn format_2_snapshots_read_as_the_default_job_s_windows() {
        use bincode::Options;
        let old = StoredV2 {
            format: 2,
            epoch: 9,
            worker: 0,
            workers: 1,
            reports: Vec::new(),
            watermark: Some(5),
            names: vec!["dev-1".into(), "temp".into()],
            seen: vec![(0, 1, 4, 100)],
            windows: vec![(0, 1, 10, vec![(12, 2.5f64.to_bits())])],
            previous: None,
        };
        let bytes = with_checksum(codec().serialize(&old).unwrap());
        let s = WorkerSnapshot::decode(&bytes).unwrap();
        assert_eq!((s.format, s.epoch), (2, 9));
        assert_eq!(
            s.windows,
            vec![OpenWindow {
                aggregation: 0,
                key: "dev-1|temp".into(),
                start: 10,
                readings: vec![(12, 2.5f64.to_bits())],
            }]
        );
        assert_eq!(
            (
                s.seen[0].series.device.as_str(),
                s.seen[0].series.metric.as_str()
            ),
            ("dev-1", "temp")
        );
        let again = WorkerSnapshot::decode(&s.encode().unwrap()).unwrap();
        assert_eq!((again.format, again.windows), (SNAPSHOT_FORMAT, s.windows));
    }

    /// Format 4 (whole values, not steps) reads as today's: the same keys,
    /// windows and alert series, and today's encoding gives them back.
    #[test]
    fn format_4_snapshots_read_as_today_s() {
        use bincode::Options;
        let old = StoredV4 {
            format: 4,
            epoch: 7,
            worker: 1,
            workers: 2,
            reports: Vec::new(),
            watermark: Some(5),
            names: vec!["dev-1".into(), "temp".into(), "dev-1|temp".into()],
            seen: vec![(0, 1, 4, 100), (0, 1, 5, 100), (0, 1, 9, -3)],
            windows: vec![(
                1,
                2,
                10,
                vec![(12, 2.5f64.to_bits()), (11, f64::NAN.to_bits())],
            )],
            previous: None,
            alerts: Vec::new(),
        };
        let bytes = with_checksum(codec().serialize(&old).unwrap());
        let s = WorkerSnapshot::decode(&bytes).unwrap();
        assert_eq!((s.format, s.epoch, s.worker), (4, 7, 1));
        let keys: Vec<_> = s
            .seen
            .iter()
            .map(|k| (k.series.device.as_str(), k.seq, k.expires_at))
            .collect();
        assert_eq!(
            keys,
            [("dev-1", 4, 100), ("dev-1", 5, 100), ("dev-1", 9, -3)]
        );
        assert_eq!(s.windows[0].key, "dev-1|temp");
        assert_eq!(s.windows[0].readings, old.windows[0].3);
        let again = WorkerSnapshot::decode(&s.encode().unwrap()).unwrap();
        assert_eq!(again.format, SNAPSHOT_FORMAT);
        assert_eq!((again.seen, again.windows), (s.seen, s.windows));
    }

    /// Steps take the extremes: seqs and times far apart, down as well as up.
    #[test]
    fn keys_and_readings_at_the_extremes_step_back_exactly() {
        let mut s = WorkerSnapshot::decode(
            &WorkerSnapshot {
                format: SNAPSHOT_FORMAT,
                epoch: 1,
                worker: 0,
                workers: 1,
                reports: Vec::new(),
                watermark: None,
                seen: Vec::new(),
                windows: Vec::new(),
                alerts: Vec::new(),
                previous: None,
            }
            .encode()
            .unwrap(),
        )
        .unwrap();
        for (seq, expires_at) in [(u64::MAX, i64::MIN), (0, i64::MAX), (7, -1), (3, 0)] {
            s.seen.push(SeenKey::new("d", "m", seq, expires_at));
        }
        s.windows.push(OpenWindow {
            aggregation: 0,
            key: "d|m".into(),
            start: i64::MAX,
            readings: vec![(i64::MIN, u64::MAX), (i64::MAX, 0), (-1, 1)],
        });
        let back = WorkerSnapshot::decode(&s.encode().unwrap()).unwrap();
        assert_eq!(back, s);
    }

    /// Format 3 (before alert series) reads as today's with none.
    #[test]
    fn format_3_snapshots_read_without_alert_series() {
        use bincode::Options;
        let old = StoredV3 {
            format: 3,
            epoch: 4,
            worker: 0,
            workers: 1,
            reports: Vec::new(),
            watermark: Some(5),
            names: vec!["k|t".into()],
            seen: Vec::new(),
            windows: vec![(1, 0, 10, vec![(12, 2.5f64.to_bits())])],
            previous: None,
        };
        let bytes = with_checksum(codec().serialize(&old).unwrap());
        let s = WorkerSnapshot::decode(&bytes).unwrap();
        assert_eq!((s.format, s.windows.len(), s.alerts.len()), (3, 1, 0));
        assert_eq!(s.windows[0].key, "k|t");
    }
}
