//! Alert rules as a job file states them (`[[alert]]`), validated: each rule
//! watches the final windows of one aggregation, per group key.

use crate::expr::Expr;

/// The alert topic when `[output] alerts_topic` is not set.
pub const DEFAULT_ALERTS_TOPIC: &str = "iot.alerts";
/// The alert dataset when `[output] alerts_parquet` is not set.
pub const DEFAULT_ALERTS_DATASET: &str = "alerts";

/// The dead-letter reasons a bad-data rule counts: those whose records still
/// name a valid device and event time (the dataflow's `keeps_identity`, held
/// to this list by a test).
pub const BAD_DATA_REASONS: [&str; 5] = [
    "non_numeric_value",
    "non_finite_value",
    "no_metrics",
    "missing_dimension",
    "invalid_dimension",
];

/// The fields of every alert event; its group fields stand beside them, so
/// no group field may be named like one.
pub const ALERT_EVENT_FIELDS: [&str; 9] = [
    "alert",
    "state",
    "severity",
    "window_start",
    "window_end",
    "value",
    "threshold",
    "since",
    "epoch",
];

/// Where alert events go: one topic and one Parquet dataset for every rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertOutputs {
    pub topic: String,
    /// How the topic's values are encoded.
    pub format: crate::OutputFormat,
    pub parquet: String,
}

/// One `[[alert]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertPlan {
    pub name: String,
    /// Index of the aggregation it watches in [`crate::JobPlan::aggregations`].
    pub on: usize,
    pub severity: String,
    pub rule: AlertRule,
}

/// What makes an alert fire and resolve.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertRule {
    /// `when` holds for `streak` consecutive windows: firing; then `clear`
    /// (by default: `when` is false) at a later window: resolved. With
    /// `change_of`, the fields `change` and `rate` are the measure's change
    /// from the previous consecutive window (per second for `rate`).
    Condition {
        when: Expr<AlertField>,
        clear: Option<Expr<AlertField>>,
        streak: u32,
        /// Index into the aggregation's measures.
        change_of: Option<usize>,
    },
    /// The measure lies more than `deviations` standard deviations from its
    /// series' exponentially weighted baseline (weight `alpha`, judged after
    /// `warmup` windows) for `streak` consecutive windows; resolved when
    /// within `clear_deviations`.
    Anomaly {
        of: usize,
        deviations: f64,
        clear_deviations: f64,
        alpha: f64,
        warmup: u32,
        streak: u32,
    },
    /// No reading of the key for more than `absent_for_ms` of event time
    /// while the watermark moved on; resolved by its next reading.
    Absence { absent_for_ms: i64 },
    /// Per device and window of the watched aggregation's grid: the share of
    /// its records that were dead-lettered (for a reason that still names the
    /// device and a time) is above `share`, with at least `min_records`
    /// records, for `streak` consecutive windows; resolved at or below
    /// `clear_share`.
    BadData {
        share: f64,
        clear_share: f64,
        min_records: u64,
        streak: u32,
    },
}

impl AlertRule {
    /// The rule's kind as `check` and the docs name it.
    pub fn kind(&self) -> &'static str {
        match self {
            AlertRule::Condition {
                change_of: None, ..
            } => "threshold",
            AlertRule::Condition { .. } => "rate of change",
            AlertRule::Anomaly { .. } => "anomaly",
            AlertRule::Absence { .. } => "absence",
            AlertRule::BadData { .. } => "bad data",
        }
    }
}

/// A field an alert condition reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertField {
    /// Index into the aggregation's measures.
    Measure(usize),
    /// Index into the aggregation's group fields.
    Group(usize),
    /// The change rule's measure minus its previous consecutive window's.
    Change,
    /// [`AlertField::Change`] per second between the two windows' starts.
    Rate,
}
