//! A validated job: what `iotflow check` prints and what `run` builds.
//! Every value here passed validation; the engine does not check again.

use std::fmt;

use crate::expr::Expr;

/// A whole job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobPlan {
    /// The job's name: its key in the progress topic.
    pub name: String,
    /// How to reach the cluster (`[kafka]`); the flags override each setting.
    pub kafka: crate::kafka::KafkaSettings,
    pub input: InputPlan,
    pub watermark: WatermarkPlan,
    /// Where rejected and late records go.
    pub dead_letter_topic: String,
    pub aggregations: Vec<AggregationPlan>,
    /// Rules over the aggregations' windows; their events go to `alert_outputs`.
    pub alerts: Vec<crate::alert::AlertPlan>,
    pub alert_outputs: crate::alert::AlertOutputs,
}

/// Where readings come from and how records map to them.
#[derive(Debug, Clone, PartialEq)]
pub struct InputPlan {
    pub topic: String,
    /// How the topic's record values are encoded.
    pub format: crate::InputFormat,
    /// Where the schemas of a registry-encoded format are.
    pub registry: crate::RegistrySettings,
    pub mapping: Mapping,
    /// String fields kept with every reading as grouping keys.
    pub dimensions: Vec<Dimension>,
}

/// How a record's fields become readings.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapping {
    /// One of today's three shapes (or any of them, recognised per record).
    Preset(Preset),
    Fields(FieldMapping),
}

/// The shapes iotflow has always read (BRIEF §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// Any of the three, recognised per record.
    Auto,
    /// `{"device_id","ts","seq","metrics":{name: number}}`
    Canonical,
    /// `{"device_id","timestamp", <metric>: number, ...}`
    Flat,
    /// `{"device_id","sensor"|"metric","ts_ms","value","seq"}`
    Long,
}

impl Preset {
    pub const NAMES: [(&'static str, Preset); 4] = [
        ("auto", Preset::Auto),
        ("canonical", Preset::Canonical),
        ("flat", Preset::Flat),
        ("long", Preset::Long),
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, p)| *p == self)
            .map_or("auto", |(n, _)| n)
    }
}

/// A field of a record: a dotted path through nested objects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPath(pub Vec<String>);

impl FieldPath {
    pub fn parse(path: &str) -> Option<Self> {
        let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
        parts
            .iter()
            .all(|p| !p.is_empty() && !p.contains(['*', '[', ']']))
            .then_some(Self(parts))
    }

    /// The last segment: the name a dimension gets unless aliased.
    pub fn last(&self) -> &str {
        self.0.last().map_or("", String::as_str)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// A mapping of the user's own fields.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldMapping {
    pub device: FieldPath,
    pub time: FieldPath,
    pub time_unit: TimeUnit,
    pub seq: Option<FieldPath>,
    pub metrics: MetricFields,
}

/// How a number in the time field is read (strings are always RFC 3339).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    /// By magnitude: < 1e11 seconds, < 1e14 ms, < 1e17 µs, else ns.
    Auto,
    Seconds,
    Millis,
    Micros,
    Nanos,
}

impl TimeUnit {
    pub const NAMES: [(&'static str, TimeUnit); 5] = [
        ("auto", TimeUnit::Auto),
        ("s", TimeUnit::Seconds),
        ("ms", TimeUnit::Millis),
        ("us", TimeUnit::Micros),
        ("ns", TimeUnit::Nanos),
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, u)| *u == self)
            .map_or("auto", |(n, _)| n)
    }
}

/// Which fields are metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricFields {
    /// Every numeric top-level field that is not the device, time, seq or a dimension.
    EveryOtherNumeric,
    /// These fields (a path ending in `.*`: every numeric field of that object).
    Listed(Vec<MetricField>),
    /// One reading per record: its metric's name in one field, its value in another.
    Long { name: FieldPath, value: FieldPath },
}

/// A listed metric.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricField {
    /// Named by its last segment.
    One(FieldPath),
    /// Every numeric field of this object, named by its key.
    EveryIn(FieldPath),
}

/// A grouping field of every reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dimension {
    pub name: String,
    pub path: FieldPath,
}

/// Event-time progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkPlan {
    pub max_out_of_order_ms: i64,
    pub lateness_ms: i64,
    pub idle_timeout_ms: i64,
}

/// One aggregation of the job.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregationPlan {
    pub name: String,
    /// Empty: fleet-wide.
    pub group_by: Vec<GroupField>,
    pub window: WindowKind,
    pub measures: Vec<Measure>,
    pub percentiles: PercentileMode,
    pub filter: Option<Expr<FilterField>>,
    pub emit: EmitMode,
    pub topic: Option<String>,
    /// How the topic's values are encoded.
    pub format: crate::OutputFormat,
    pub parquet: Option<String>,
}

impl AggregationPlan {
    /// Whether the key holds the device, so windows stay on the device's worker.
    pub fn keyed_by_device(&self) -> bool {
        self.group_by.contains(&GroupField::Device)
    }
}

/// A field a group key is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupField {
    Device,
    Metric,
    /// Index into [`InputPlan::dimensions`].
    Dimension(usize),
}

/// A field a filter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterField {
    Device,
    Metric,
    Value,
    /// Index into [`InputPlan::dimensions`].
    Dimension(usize),
}

/// When windows are emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmitMode {
    /// Each window once, when final.
    Final,
    /// Changed windows every epoch with `final = false`, then once with `final = true`.
    Updates,
}

/// A window of event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// `[s, s + size)` for every multiple s of `slide` (tumbling: slide = size).
    Hopping { size_ms: i64, slide_ms: i64 },
    /// Per group key, `[first event, last event + gap)`; readings closer than
    /// `gap` to a session join it, and a reading that bridges two merges them.
    Session { gap_ms: i64 },
}

impl WindowKind {
    /// How long after its last possible reading's time a window can stay open
    /// (before lateness): the size for grid windows, the gap for sessions.
    pub fn extent_ms(&self) -> i64 {
        match *self {
            WindowKind::Hopping { size_ms, .. } => size_ms,
            WindowKind::Session { gap_ms } => gap_ms,
        }
    }
}

impl fmt::Display for WindowKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WindowKind::Hopping { size_ms, slide_ms } if size_ms == slide_ms => {
                write!(f, "tumbling {}", Ms(size_ms))
            }
            WindowKind::Hopping { size_ms, slide_ms } => {
                write!(f, "hopping {} every {}", Ms(size_ms), Ms(slide_ms))
            }
            WindowKind::Session { gap_ms } => write!(f, "session {}", Ms(gap_ms)),
        }
    }
}

/// A duration in milliseconds, shown as humans write them (`1m 30s`).
#[derive(Debug, Clone, Copy)]
pub struct Ms(pub i64);

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = std::time::Duration::from_millis(self.0.max(0) as u64);
        write!(f, "{}", humantime::format_duration(d))
    }
}

/// A measure of a window's readings.
#[derive(Debug, Clone, PartialEq)]
pub enum Measure {
    Count,
    Sum,
    Min,
    Max,
    Mean,
    /// Population standard deviation.
    Stddev,
    FirstTs,
    LastTs,
    /// The value of the earliest reading (ties: the smallest value).
    FirstValue,
    /// The value of the latest reading (ties: the largest value).
    LastValue,
    Percentile(Percentile),
}

/// The simple measures by name, in today's output order.
pub const SIMPLE_MEASURES: [(&str, Measure); 10] = [
    ("count", Measure::Count),
    ("sum", Measure::Sum),
    ("min", Measure::Min),
    ("max", Measure::Max),
    ("mean", Measure::Mean),
    ("stddev", Measure::Stddev),
    ("first_ts", Measure::FirstTs),
    ("last_ts", Measure::LastTs),
    ("first_value", Measure::FirstValue),
    ("last_value", Measure::LastValue),
];

/// Today's measures: the default, and the default job's.
pub const DEFAULT_MEASURES: [Measure; 8] = [
    Measure::Count,
    Measure::Sum,
    Measure::Min,
    Measure::Max,
    Measure::Mean,
    Measure::Stddev,
    Measure::FirstTs,
    Measure::LastTs,
];

impl Measure {
    /// Its name in the job file and in JSON output (`p99.9`).
    pub fn name(&self) -> String {
        match self {
            Measure::Percentile(p) => p.name.clone(),
            m => SIMPLE_MEASURES
                .iter()
                .find(|(_, s)| s == m)
                .map_or_else(String::new, |(n, _)| (*n).to_owned()),
        }
    }

    /// Its Parquet column (`p99_9`: dots are awkward in SQL).
    pub fn column(&self) -> String {
        self.name().replace('.', "_")
    }

    /// Whether computing it needs every value of the window (exact percentiles).
    pub fn is_percentile(&self) -> bool {
        matches!(self, Measure::Percentile(_))
    }
}

/// A percentile `pNN`: the value at rank q (0 < q < 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Percentile {
    /// As written, canonical: `p95`, `p99.9`.
    pub name: String,
    pub q: f64,
}

/// How percentiles are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PercentileMode {
    /// Linear interpolation between closest ranks (DuckDB's `quantile_cont`): keeps every value.
    Exact,
    /// A mergeable sketch with a bounded relative error: keeps a few kilobytes per window.
    Approx,
}
