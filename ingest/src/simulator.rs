//! The device simulator: a pure, seeded iterator of Kafka records.
//!
//! ```text
//!   slot (tick, device[, metric]) ──arrival time──▶ draw class
//!     valid ──(15 %: event time up to `disorder` older)──▶ JSON in the chosen format
//!     late  ──event time `late_by` behind arrival──▶ JSON
//!     bad   ──one of every BRIEF §3 class──▶ broken bytes
//!     valid + duplicate ──▶ the same bytes again, 1–16 records later (a producer retry)
//! ```
//!
//! Arrival order is the iteration order: at each tick of `interval`, every
//! device sends one reading, devices spread evenly within the tick. The same
//! config gives the same records in the same order, byte for byte.

use std::collections::VecDeque;
use std::fmt::Write as _;

use serde::Serialize;

pub use crate::episodes::Episodes;
use crate::episodes::{Episode, EpisodeKind, OVERHEAT_DEGREES};
use crate::rng::SplitMix64;

/// Wire format of valid records (BRIEF §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `{"device_id","ts","seq","metrics":{...}}`, one record per device per tick.
    Canonical,
    /// `{"device_id","timestamp":<float s>,"seq",<metric>:<value>,...}`.
    Flat,
    /// `{"device_id","sensor","ts_ms","value","seq"}`, one record per metric.
    Long,
}

/// The classes of bad input of BRIEF §3; each maps to one reject reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BadKind {
    MalformedJson,
    MissingDeviceId,
    MissingTimestamp,
    NonNumericValue,
    NonFiniteValue,
    AbsurdTimestamp,
    Oversized,
    InvalidUtf8,
}

impl BadKind {
    pub const ALL: [BadKind; 8] = [
        BadKind::MalformedJson,
        BadKind::MissingDeviceId,
        BadKind::MissingTimestamp,
        BadKind::NonNumericValue,
        BadKind::NonFiniteValue,
        BadKind::AbsurdTimestamp,
        BadKind::Oversized,
        BadKind::InvalidUtf8,
    ];

    /// The dead-letter reason code the dataflow gives this class.
    pub fn code(self) -> &'static str {
        match self {
            BadKind::MalformedJson => "malformed_json",
            BadKind::MissingDeviceId => "missing_device_id",
            BadKind::MissingTimestamp => "missing_timestamp",
            BadKind::NonNumericValue => "non_numeric_value",
            BadKind::NonFiniteValue => "non_finite_value",
            BadKind::AbsurdTimestamp => "absurd_timestamp",
            BadKind::Oversized => "oversized",
            BadKind::InvalidUtf8 => "invalid_utf8",
        }
    }

    pub fn from_code(code: &str) -> Option<BadKind> {
        BadKind::ALL.into_iter().find(|k| k.code() == code)
    }
}

/// What the simulator meant a record to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordClass {
    Valid,
    /// Valid JSON whose event time is `late_by` behind its arrival.
    Late,
    /// Byte-identical repeat of an earlier record (same device and `seq`).
    Duplicate,
    Bad(BadKind),
}

/// One simulated Kafka record.
#[derive(Debug, Clone, PartialEq)]
pub struct SimRecord {
    /// Device id; the Kafka key.
    pub key: String,
    pub value: Vec<u8>,
    /// Event time carried in the payload (for bad records: the arrival time).
    pub ts_ms: i64,
    /// When the device sent it (the simulated wall clock); the Kafka record timestamp.
    pub arrival_ms: i64,
    pub class: RecordClass,
    /// Valid, but with an event time older than its arrival (bounded disorder).
    pub disordered: bool,
    /// Metric readings in the record (0 for bad records).
    pub readings: u32,
}

/// One simulated metric: a daily cycle around `mean` plus noise and spikes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricSpec {
    pub name: String,
    pub mean: f64,
    /// Amplitude of the daily cycle; noise is a tenth of it.
    pub spread: f64,
    /// Decimals the value is rounded to, as a real sensor reports it.
    pub decimals: i32,
}

impl MetricSpec {
    pub fn new(name: &str, mean: f64, spread: f64, decimals: i32) -> Self {
        Self {
            name: name.to_owned(),
            mean,
            spread,
            decimals,
        }
    }
}

/// Default metrics: temperature °C, relative humidity %, pressure hPa.
pub fn default_metrics() -> Vec<MetricSpec> {
    vec![
        MetricSpec::new("temperature", 21.0, 4.0, 2),
        MetricSpec::new("humidity", 50.0, 15.0, 1),
        MetricSpec::new("pressure", 1013.0, 8.0, 1),
    ]
}

/// Simulator settings. Ratios are fractions of records in [0, 1]; bad, late
/// and duplicate are exclusive draws, so their sum must be ≤ 1.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimConfig {
    pub devices: u32,
    pub metrics: Vec<MetricSpec>,
    /// Event-time spacing of one device's readings.
    pub interval_ms: i64,
    /// Event time of the first tick, epoch ms.
    pub start_ms: i64,
    pub seed: u64,
    pub format: Format,
    /// Largest delay of a disordered record (exclusive), ms.
    pub disorder_ms: i64,
    /// Share of valid records that are disordered.
    pub disorder_ratio: f64,
    pub late_ratio: f64,
    /// How far a late record's event time is behind its arrival, ms.
    pub late_by_ms: i64,
    pub duplicate_ratio: f64,
    pub bad_ratio: f64,
    /// Relative weights of the bad classes (default: all equal).
    pub bad_mix: Vec<(BadKind, u32)>,
    /// Share of valid readings that are anomalous spikes of 6–10 noise σ.
    pub spike_ratio: f64,
    /// Size of an oversized payload (must exceed the parser's limit, 64 KiB).
    pub oversized_bytes: usize,
    /// With N > 0, valid records carry `"site":"site-<device % N>"`, a
    /// dimension for job files (the default job reads it as a bad metric).
    pub sites: u32,
    /// Spells of trouble (overheating, stuck sensors, silence); none by default.
    pub episodes: Option<Episodes>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            devices: 100,
            metrics: default_metrics(),
            interval_ms: 1000,
            start_ms: 1_763_787_600_000, // 2025-11-22T05:00:00Z
            seed: 42,
            format: Format::Canonical,
            disorder_ms: 2000,
            disorder_ratio: 0.15,
            late_ratio: 0.0,
            late_by_ms: 60_000,
            duplicate_ratio: 0.0,
            bad_ratio: 0.0,
            bad_mix: BadKind::ALL.iter().map(|k| (*k, 1)).collect(),
            spike_ratio: 0.002,
            oversized_bytes: 100 * 1024,
            sites: 0,
            episodes: None,
        }
    }
}

/// A simulator setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid simulator setting: {0}")]
pub struct ConfigError(pub String);

impl SimConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError(m));
        if self.devices == 0 {
            return bad("devices must be at least 1".into());
        }
        if self.metrics.is_empty() {
            return bad("at least one metric is needed".into());
        }
        // Names go into JSON unescaped and into output keys `device|metric|…`.
        if let Some(m) = self.metrics.iter().find(|m| {
            m.name.is_empty()
                || !m
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        }) {
            return bad(format!(
                "metric name `{}` must be ASCII letters, digits, '_', '.' or '-'",
                m.name
            ));
        }
        if self.interval_ms <= 0 {
            return bad("interval must be positive".into());
        }
        for (name, r) in [
            ("disorder ratio", self.disorder_ratio),
            ("late ratio", self.late_ratio),
            ("duplicate ratio", self.duplicate_ratio),
            ("bad ratio", self.bad_ratio),
            ("spike ratio", self.spike_ratio),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return bad(format!("{name} must be in [0, 1], not {r}"));
            }
        }
        if self.late_ratio + self.duplicate_ratio + self.bad_ratio > 1.0 {
            return bad("late + duplicate + bad ratios exceed 1".into());
        }
        if let Some(e) = &self.episodes {
            e.validate().map_err(ConfigError)?;
        }
        if self.disorder_ms < 1 || self.late_by_ms < 1 {
            return bad("disorder and late-by must be at least 1 ms".into());
        }
        if self.bad_ratio > 0.0 && self.bad_mix.iter().all(|(_, w)| *w == 0) {
            return bad("bad ratio > 0 but every bad class has weight 0".into());
        }
        Ok(())
    }
}

/// The simulator itself; an endless iterator (bound it with `take`).
#[derive(Debug)]
pub struct Simulator {
    cfg: SimConfig,
    rng: SplitMix64,
    /// Per (device, metric): offset of the mean (in spreads) and phase of the daily cycle.
    shape: Vec<(f64, f64)>,
    seq: Vec<u64>,
    tick: i64,
    device: u32,
    metric: usize,
    emitted: u64,
    pending: VecDeque<(u64, SimRecord)>,
    bad_total_weight: u32,
    /// The site of the record being generated (`SimConfig::sites`).
    site: Option<u32>,
    /// The metric an overheating spell heats: `temperature`, else the first.
    heated: usize,
}

const DAY_MS: f64 = 86_400_000.0;

impl Simulator {
    pub fn new(cfg: SimConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        // Device shapes come from their own stream so they do not depend on the ratios.
        let mut shape_rng = SplitMix64::new(cfg.seed ^ 0x5EED_5AA9_E000_0001);
        let shape = (0..cfg.devices as usize * cfg.metrics.len())
            .map(|_| {
                (
                    0.25 * shape_rng.normal(),
                    std::f64::consts::TAU * shape_rng.f64(),
                )
            })
            .collect();
        let bad_total_weight = cfg.bad_mix.iter().map(|(_, w)| *w).sum();
        Ok(Self {
            rng: SplitMix64::new(cfg.seed),
            shape,
            seq: vec![0; cfg.devices as usize],
            tick: 0,
            device: 0,
            metric: 0,
            emitted: 0,
            pending: VecDeque::new(),
            bad_total_weight,
            site: None,
            heated: cfg
                .metrics
                .iter()
                .position(|m| m.name == "temperature")
                .unwrap_or(0),
            cfg,
        })
    }

    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// The device id of device number `d`.
    pub fn device_id(d: u32) -> String {
        format!("dev-{d:05}")
    }

    /// Advances to the next (tick, device, metric) slot and returns the current one.
    fn next_slot(&mut self) -> (i64, u32, Option<usize>) {
        let slot = (
            self.tick,
            self.device,
            (self.cfg.format == Format::Long).then_some(self.metric),
        );
        if self.cfg.format == Format::Long {
            self.metric += 1;
            if self.metric < self.cfg.metrics.len() {
                return slot;
            }
            self.metric = 0;
        }
        self.device += 1;
        if self.device == self.cfg.devices {
            self.device = 0;
            self.tick += 1;
        }
        slot
    }

    /// The spell `device` is in at `ts_ms`.
    fn episode(&self, device: u32, ts_ms: i64) -> Option<Episode> {
        let e = self.cfg.episodes.as_ref()?;
        e.at(self.cfg.seed, device, self.cfg.start_ms, ts_ms)
    }

    /// The daily cycle of (device, metric) at `ts_ms`, plus `noise` (in spreads).
    fn daily(&self, device: u32, metric: usize, ts_ms: i64, noise: f64) -> f64 {
        let m = &self.cfg.metrics[metric];
        let (offset, phase) = self.shape[device as usize * self.cfg.metrics.len() + metric];
        let day = std::f64::consts::TAU * (ts_ms.rem_euclid(DAY_MS as i64) as f64 / DAY_MS);
        m.mean + m.spread * (offset + 0.5 * (day + phase).sin() + noise)
    }

    fn value(&mut self, device: u32, metric: usize, ts_ms: i64) -> f64 {
        let m = &self.cfg.metrics[metric];
        let noise = 0.1 * self.rng.normal();
        let mut v = self.daily(device, metric, ts_ms, noise);
        if self.rng.f64() < self.cfg.spike_ratio {
            let sigma = 0.1 * m.spread;
            let sign = if self.rng.f64() < 0.5 { -1.0 } else { 1.0 };
            v += sign * sigma * (6.0 + 4.0 * self.rng.f64());
        }
        match self.episode(device, ts_ms) {
            Some(ep) if ep.kind == EpisodeKind::Stuck => {
                v = self.daily(device, metric, ep.start_ms, 0.0);
            }
            Some(ep) if ep.kind == EpisodeKind::Overheat && metric == self.heated => {
                v += OVERHEAT_DEGREES * ep.ramp(ts_ms);
            }
            _ => {}
        }
        let scale = 10f64.powi(m.decimals);
        (v * scale).round() / scale
    }

    fn pick_bad(&mut self) -> BadKind {
        let mut x = (self.rng.next_u64() % u64::from(self.bad_total_weight.max(1))) as u32;
        for (kind, w) in &self.cfg.bad_mix {
            if x < *w {
                return *kind;
            }
            x -= w;
        }
        BadKind::MalformedJson
    }

    /// The next slot's record; `None` when its device is in a silent spell
    /// (its draws are made all the same, so silence changes nothing else).
    fn generate(&mut self) -> Option<SimRecord> {
        let (tick, device, metric) = self.next_slot();
        self.site = (self.cfg.sites > 0).then(|| device % self.cfg.sites);
        let cfg = &self.cfg;
        let arrival_ms = cfg.start_ms
            + tick * cfg.interval_ms
            + i64::from(device) * cfg.interval_ms / i64::from(cfg.devices);
        let (bad_r, late_r, dup_r) = (cfg.bad_ratio, cfg.late_ratio, cfg.duplicate_ratio);
        let late_possible = arrival_ms - cfg.late_by_ms >= cfg.start_ms;
        // Fixed draw order: class, disorder, delay; determinism depends on it.
        let u = self.rng.f64();
        let disorder_draw = self.rng.f64();
        let delay = self.rng.range(1, self.cfg.disorder_ms);
        let (class, wants_dup) = if u < bad_r {
            (RecordClass::Bad(self.pick_bad()), false)
        } else if u < bad_r + late_r {
            // Without `late_by` of history a late record would just be disordered.
            let class = if late_possible {
                RecordClass::Late
            } else {
                RecordClass::Valid
            };
            (class, false)
        } else if u < bad_r + late_r + dup_r {
            (RecordClass::Valid, true)
        } else {
            (RecordClass::Valid, false)
        };
        let disordered = class == RecordClass::Valid && disorder_draw < self.cfg.disorder_ratio;
        let ts_ms = match class {
            RecordClass::Late => {
                arrival_ms - self.cfg.late_by_ms - self.rng.range(0, self.cfg.interval_ms)
            }
            _ if disordered => arrival_ms - delay,
            _ => arrival_ms,
        };
        let seq = self.seq[device as usize];
        self.seq[device as usize] += 1;
        let metrics: Vec<usize> = match metric {
            Some(m) => vec![m],
            None => (0..self.cfg.metrics.len()).collect(),
        };
        let values: Vec<(usize, f64)> = metrics
            .iter()
            .map(|&m| (m, self.value(device, m, ts_ms)))
            .collect();
        let key = Self::device_id(device);
        let record = match class {
            RecordClass::Bad(kind) => {
                let value = self.bad_payload(kind, &key, arrival_ms, seq, &values);
                SimRecord {
                    key,
                    value,
                    ts_ms: arrival_ms,
                    arrival_ms,
                    class,
                    disordered: false,
                    readings: 0,
                }
            }
            _ => SimRecord {
                value: self.encode(&key, ts_ms, seq, &values).into_bytes(),
                key,
                ts_ms,
                arrival_ms,
                class,
                disordered,
                readings: values.len() as u32,
            },
        };
        let silent = self
            .episode(device, arrival_ms)
            .is_some_and(|ep| ep.kind == EpisodeKind::Silent);
        if wants_dup {
            let gap = self.rng.range(1, 17) as u64;
            if !silent {
                let mut dup = record.clone();
                dup.class = RecordClass::Duplicate;
                self.pending.push_back((self.emitted + gap, dup));
            }
        }
        (!silent).then_some(record)
    }

    /// Valid JSON in the configured format.
    fn encode(&self, device_id: &str, ts_ms: i64, seq: u64, values: &[(usize, f64)]) -> String {
        let mut s = String::with_capacity(128);
        let name = |m: usize| self.cfg.metrics[m].name.as_str();
        let site = self
            .site
            .map(|n| format!(r#","site":"site-{n}""#))
            .unwrap_or_default();
        match self.cfg.format {
            Format::Canonical => {
                let _ = write!(
                    s,
                    r#"{{"device_id":"{device_id}"{site},"ts":{ts_ms},"seq":{seq},"metrics":{{"#
                );
                for (i, (m, v)) in values.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "," };
                    let _ = write!(s, r#"{sep}"{}":{}"#, name(*m), v);
                }
                s.push_str("}}");
            }
            Format::Flat => {
                let (secs, millis) = (ts_ms.div_euclid(1000), ts_ms.rem_euclid(1000));
                let _ = write!(
                    s,
                    r#"{{"device_id":"{device_id}"{site},"timestamp":{secs}.{millis:03},"seq":{seq}"#
                );
                for (m, v) in values {
                    let _ = write!(s, r#","{}":{}"#, name(*m), v);
                }
                s.push('}');
            }
            Format::Long => {
                for (m, v) in values {
                    let _ = write!(
                        s,
                        r#"{{"device_id":"{device_id}"{site},"sensor":"{}","ts_ms":{ts_ms},"value":{v},"seq":{seq}}}"#,
                        name(*m)
                    );
                }
            }
        }
        s
    }

    /// A record of `kind`, built from what the device would have sent.
    fn bad_payload(
        &self,
        kind: BadKind,
        device_id: &str,
        ts_ms: i64,
        seq: u64,
        values: &[(usize, f64)],
    ) -> Vec<u8> {
        let good = self.encode(device_id, ts_ms, seq, values);
        let first_metric = self.cfg.metrics[values[0].0].name.as_str();
        match kind {
            // Cut inside the object: never valid JSON.
            BadKind::MalformedJson => good.as_bytes()[..good.len() * 2 / 3].to_vec(),
            BadKind::MissingDeviceId => good.replacen(&format!(r#""device_id":"{device_id}","#), "", 1).into_bytes(),
            BadKind::MissingTimestamp => {
                format!(r#"{{"device_id":"{device_id}","seq":{seq},"{first_metric}":{}}}"#, values[0].1).into_bytes()
            }
            BadKind::NonNumericValue => {
                format!(r#"{{"device_id":"{device_id}","ts_ms":{ts_ms},"seq":{seq},"{first_metric}":"n/a"}}"#).into_bytes()
            }
            // What Python's json.dumps writes for float('nan').
            BadKind::NonFiniteValue => {
                format!(r#"{{"device_id":"{device_id}","ts_ms":{ts_ms},"seq":{seq},"{first_metric}":NaN}}"#).into_bytes()
            }
            // A clock reset to the epoch: year 1970.
            BadKind::AbsurdTimestamp => {
                format!(r#"{{"device_id":"{device_id}","ts_ms":{},"seq":{seq},"{first_metric}":{}}}"#, ts_ms % 1_000_000, values[0].1)
                    .into_bytes()
            }
            BadKind::Oversized => {
                let pad = "x".repeat(self.cfg.oversized_bytes);
                format!(r#"{{"device_id":"{device_id}","ts_ms":{ts_ms},"seq":{seq},"{first_metric}":{},"firmware_dump":"{pad}"}}"#, values[0].1)
                    .into_bytes()
            }
            BadKind::InvalidUtf8 => {
                let mut b = good.into_bytes();
                // Inside the device id string: the JSON structure stays intact.
                if let Some(pos) = b.iter().position(|&c| c == b'-') {
                    b[pos] = 0xFF;
                }
                b
            }
        }
    }
}

impl Iterator for Simulator {
    type Item = SimRecord;

    fn next(&mut self) -> Option<SimRecord> {
        let due = self
            .pending
            .front()
            .is_some_and(|(at, _)| *at <= self.emitted);
        let mut record = match due {
            true => self.pending.pop_front().map(|(_, r)| r),
            false => None,
        };
        // A silent spell ends within its length, so this loop does too.
        while record.is_none() {
            record = self.generate();
        }
        self.emitted += 1;
        record
    }
}
