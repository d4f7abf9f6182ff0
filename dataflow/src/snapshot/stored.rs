//! The stored form of a [`WorkerSnapshot`]: each name once, keys and
//! readings as varints, sealed with a CRC-32; and the formats older
//! binaries wrote, read as today's.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use super::{
    AlertSeries, Link, OpenWindow, SNAPSHOT_FORMAT, SeenKey, SnapshotError, WorkerSnapshot,
};
use crate::sealed::{Unsealed, bincode_with_checksum, checked_body, codec, unseal};
use crate::watermark::ShareReport;

/// (aggregation, key name, start, readings).
type StoredWindow = (u16, u32, i64, Vec<(i64, u64)>);
/// [`StoredWindow`], its readings borrowed.
type StoredWindowRef<'a> = (u16, u32, i64, &'a [(i64, u64)]);
/// (rule, aggregation, key name, series).
type StoredAlert = (u16, u16, u32, crate::alert::Series);
/// Format 2's windows: (device name, metric name, start, readings).
type StoredWindowV2 = (u32, u32, i64, Vec<(i64, u64)>);

/// The stored form: each name once, keys and readings as varints, so a
/// snapshot costs a few bytes per reading, not a JSON object.
#[derive(Serialize, Deserialize)]
struct Stored {
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

/// [`Stored`] as encoding writes it: the same fields in the same order,
/// borrowed from the snapshot instead of copied.
#[derive(Serialize)]
struct StoredRef<'a> {
    format: u32,
    epoch: u64,
    worker: u32,
    workers: u32,
    reports: &'a [ShareReport],
    watermark: Option<i64>,
    names: Vec<&'a str>,
    seen: Vec<(u32, u32, u64, i64)>,
    windows: Vec<StoredWindowRef<'a>>,
    previous: Option<Link>,
    alerts: Vec<(u16, u16, u32, &'a crate::alert::Series)>,
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
    fn upgrade(self) -> Stored {
        Stored {
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
    /// The last (device, metric) pair named, and its ids.
    last_pair: Option<(&'a str, &'a str, u32, u32)>,
}

impl<'a> Interner<'a> {
    fn id(&mut self, name: &'a str) -> u32 {
        *self.ids.entry(name).or_insert_with(|| {
            self.names.push(name);
            self.names.len() as u32 - 1
        })
    }

    /// The ids of a key's device and metric. Keys come sorted by series, so
    /// most repeat the pair before: compared, not hashed again.
    fn pair(&mut self, device: &'a str, metric: &'a str) -> (u32, u32) {
        match self.last_pair {
            Some((d, m, di, mi)) if d == device && m == metric => (di, mi),
            _ => {
                let (di, mi) = (self.id(device), self.id(metric));
                self.last_pair = Some((device, metric, di, mi));
                (di, mi)
            }
        }
    }
}

impl WorkerSnapshot {
    /// The compact binary form followed by its CRC-32 (4 bytes, big endian).
    pub fn encode(&self) -> Result<Vec<u8>, SnapshotError> {
        let mut names = Interner::default();
        let seen = self
            .seen
            .iter()
            .map(|k| {
                let (device, metric) = names.pair(&k.device, &k.metric);
                (device, metric, k.seq, k.expires_at)
            })
            .collect();
        let windows = self
            .windows
            .iter()
            .map(|w| (w.aggregation, names.id(&w.key), w.start, &w.readings[..]))
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
        let s: Stored = match format {
            2 => codec()
                .deserialize::<StoredV2>(body)
                .map_err(decode)?
                .upgrade()
                .upgrade(),
            3 => codec()
                .deserialize::<StoredV3>(body)
                .map_err(decode)?
                .upgrade(),
            _ => codec().deserialize(body).map_err(decode)?,
        };
        let name = |i: u32| -> Result<CompactString, SnapshotError> {
            s.names
                .get(i as usize)
                .map(CompactString::from)
                .ok_or_else(|| Unsealed::Decode(format!("name {i} out of range")).into())
        };
        // A loop, not a fallible collect: that one cannot size the vector
        // ahead, and a backlog's snapshot holds a key per open reading.
        let mut seen = Vec::with_capacity(s.seen.len());
        for &(d, m, seq, expires_at) in &s.seen {
            seen.push(SeenKey {
                device: name(d)?,
                metric: name(m)?,
                seq,
                expires_at,
            });
        }
        let windows = s
            .windows
            .into_iter()
            .map(|(aggregation, key, start, readings)| {
                Ok(OpenWindow {
                    aggregation,
                    key: name(key)?,
                    start,
                    readings,
                })
            })
            .collect::<Result<_, SnapshotError>>()?;
        let alerts = s
            .alerts
            .into_iter()
            .map(|(rule, aggregation, key, series)| {
                Ok(AlertSeries {
                    rule,
                    aggregation,
                    key: name(key)?,
                    series,
                })
            })
            .collect::<Result<_, SnapshotError>>()?;
        Ok(WorkerSnapshot {
            alerts,
            format: s.format,
            epoch: s.epoch,
            worker: s.worker,
            workers: s.workers,
            reports: s.reports,
            watermark: s.watermark,
            seen,
            windows,
            previous: s.previous,
        })
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
            (s.seen[0].device.as_str(), s.seen[0].metric.as_str()),
            ("dev-1", "temp")
        );
        let again = WorkerSnapshot::decode(&s.encode().unwrap()).unwrap();
        assert_eq!((again.format, again.windows), (SNAPSHOT_FORMAT, s.windows));
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
