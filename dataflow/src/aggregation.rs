//! One aggregation of a job, as the dataflow runs it: its group key, window,
//! measures and filter, and the rules that follow from them (one place each):
//! a reading's group key, the worker that owns a key's windows, when a
//! window is final.
//!
//! ```text
//!   reading (device, metric, dims) ──where──▶ kept?
//!     ──group_key──▶ "v1|v2|…" (group_by order; "" fleet-wide; None: a grouped dimension is missing)
//!     ──key_owner──▶ worker: the device's worker when the key holds the device
//!                     (no second exchange), else a hash of the key
//! ```

use compact_str::CompactString;
use iotflow_jobfile::expr::{Expr, Value};
use iotflow_jobfile::{FilterField, GroupField, Measure, PercentileMode};

use crate::job::EmitMode;
use crate::window::WindowSpec;

/// An aggregation's windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Tumbling or hopping, aligned to the Unix epoch.
    Grid(WindowSpec),
    /// Per group key, `[first reading, last reading + gap)`: a reading within
    /// `gap` of a session joins it, one that bridges two merges them.
    Session { gap_ms: i64 },
}

/// The one slot a session aggregation's key keeps its open readings under
/// (sessions have no start until they close).
pub const SESSION_SLOT: i64 = 0;

/// An aggregation the dataflow computes.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregation {
    pub name: CompactString,
    pub group_by: Vec<GroupField>,
    /// The group fields' names in output records (the device is `device_id`).
    pub group_names: Vec<CompactString>,
    pub window: Window,
    pub emit: EmitMode,
    pub measures: Vec<Measure>,
    /// Exact: a window keeps its readings. Approx: a digest per epoch
    /// ([`crate::digest::Digest`]), whatever its measures.
    pub percentiles: PercentileMode,
    pub filter: Option<Expr<FilterField>>,
    pub input: AggregationInput,
}

/// What an aggregation is computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AggregationInput {
    /// The readings, as the job file states (every aggregation a user writes).
    #[default]
    Readings,
    /// One reading per record of a device, named [`RECORD_OUTCOME_METRIC`]:
    /// 0 when accepted, 1 when dead-lettered for a reason that still names
    /// the device and a time. A bad-data rule's windows: mean = the share dead-lettered.
    RecordOutcomes,
}

/// The metric of record-outcome readings: a control character no input
/// name can hold, so no reading of a device can be mistaken for one.
pub const RECORD_OUTCOME_METRIC: &str = "\u{1}records";

/// Separates a group key's values; names and dimension values never hold it.
pub const KEY_SEPARATOR: char = '|';

impl Aggregation {
    /// Per (device, metric), today's measures: the default job's aggregation.
    pub fn per_device(name: &str, window: WindowSpec, emit: EmitMode) -> Self {
        Self {
            name: name.into(),
            group_by: vec![GroupField::Device, GroupField::Metric],
            group_names: vec!["device_id".into(), "metric".into()],
            window: Window::Grid(window),
            emit,
            measures: iotflow_jobfile::DEFAULT_MEASURES.to_vec(),
            percentiles: PercentileMode::Exact,
            filter: None,
            input: AggregationInput::Readings,
        }
    }

    /// The windows of a bad-data rule `rule`: each device's record outcomes
    /// (count, and mean = the share dead-lettered) over `window`.
    pub fn record_outcomes(rule: &str, window: Window) -> Self {
        Self {
            name: format!("{rule}:records").into(),
            group_by: vec![GroupField::Device],
            group_names: vec!["device_id".into()],
            window,
            emit: EmitMode::Final,
            measures: vec![Measure::Count, Measure::Mean],
            percentiles: PercentileMode::Exact,
            filter: None,
            input: AggregationInput::RecordOutcomes,
        }
    }

    /// Whether it aggregates the job's readings (not a rule's record outcomes).
    pub fn takes_readings(&self) -> bool {
        self.input == AggregationInput::Readings
    }

    /// Calls `f` with each window slot a reading at `ts` belongs to: grid
    /// windows' starts, or a session key's one slot.
    pub fn slots_of(&self, ts: i64, mut f: impl FnMut(i64)) {
        match self.window {
            Window::Grid(w) => w.windows_of(ts).for_each(f),
            Window::Session { .. } => f(SESSION_SLOT),
        }
    }

    /// Whether slot `start` of a reading at `ts` is final under watermark
    /// `wm`: its grid window's end + lateness, or the end of any session the
    /// reading could still start or extend (ts + gap) + lateness, is past.
    pub fn slot_final(&self, start: i64, ts: i64, lateness_ms: i64, wm: Option<i64>) -> bool {
        wm.is_some_and(|w| self.slot_close_at(start, ts).saturating_add(lateness_ms) <= w)
    }

    /// The end of slot `start` for a reading at `ts` (before lateness).
    fn slot_close_at(&self, start: i64, ts: i64) -> i64 {
        match self.window {
            Window::Grid(g) => g.end(start),
            Window::Session { gap_ms } => ts.saturating_add(gap_ms),
        }
    }

    /// Whether a reading at `ts` is late here: every slot of it is final.
    pub fn late(&self, ts: i64, lateness_ms: i64, wm: Option<i64>) -> bool {
        let mut late = true;
        self.slots_of(ts, |s| late &= self.slot_final(s, ts, lateness_ms, wm));
        late
    }

    /// The watermark at which every window a reading at `ts` can be in is
    /// final here, for its dedupe key. A session may go on past it, but a
    /// copy arriving then is late here (its own `ts + gap` has passed).
    pub fn final_at(&self, ts: i64, lateness_ms: i64) -> i64 {
        let mut last = i64::MIN;
        self.slots_of(ts, |s| last = last.max(self.slot_close_at(s, ts)));
        last.saturating_add(lateness_ms)
    }

    /// What its state depends on, as one line of text: name, key, window,
    /// measures, filter and emit mode, each spelled out (not its `Debug`
    /// form, which changes with the type).
    pub fn shape(&self) -> String {
        let window = match self.window {
            Window::Grid(w) => format!("grid {} every {}", w.size_ms(), w.slide_ms()),
            Window::Session { gap_ms } => format!("session {gap_ms}"),
        };
        let measures: Vec<String> = self.measures.iter().map(Measure::name).collect();
        let filter = self
            .filter
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let input = match self.input {
            AggregationInput::Readings => "",
            AggregationInput::RecordOutcomes => " | of record outcomes",
        };
        // Exact adds nothing: shapes written before digests stay valid.
        let state = match self.percentiles {
            PercentileMode::Exact => "",
            PercentileMode::Approx => " | digests",
        };
        format!(
            "{} | key {} | window {window} | measures {} | where {filter} | emit {:?}{input}{state}",
            self.name,
            self.group_names.join(","),
            measures.join(","),
            self.emit
        )
    }

    /// Whether its windows keep digests instead of readings: approx over
    /// grid windows (sessions find their bounds in their readings' times, so
    /// they keep them; `check` refuses approx there).
    pub fn keeps_digests(&self) -> bool {
        self.percentiles == PercentileMode::Approx && matches!(self.window, Window::Grid(_))
    }

    /// The ranks of the percentiles among its measures, in order.
    pub fn percentile_ranks(&self) -> Vec<f64> {
        self.measures
            .iter()
            .filter_map(|m| match m {
                Measure::Percentile(p) => Some(p.q),
                _ => None,
            })
            .collect()
    }

    /// Where the device stands in the key, if the key holds it.
    pub fn device_position(&self) -> Option<usize> {
        self.group_by.iter().position(|g| *g == GroupField::Device)
    }

    /// Whether the filter keeps a reading (a filter over a missing dimension does not).
    pub fn keeps(
        &self,
        device: &str,
        metric: &str,
        value: f64,
        dims: &[Option<CompactString>],
    ) -> bool {
        self.filter.as_ref().is_none_or(|f| {
            f.holds(&|field| match field {
                FilterField::Device => Some(Value::Text(device)),
                FilterField::Metric => Some(Value::Text(metric)),
                FilterField::Value => Some(Value::Number(value)),
                FilterField::Dimension(i) => dims.get(i)?.as_deref().map(Value::Text),
            })
        })
    }

    /// Whether its key or filter reads a dimension.
    pub fn reads_dimensions(&self) -> bool {
        self.group_by
            .iter()
            .any(|g| matches!(g, GroupField::Dimension(_)))
            || self.filter.as_ref().is_some_and(|f| {
                f.fields()
                    .iter()
                    .any(|f| matches!(f, FilterField::Dimension(_)))
            })
    }

    /// Whether a reading with these dimensions has every one the key needs.
    pub fn has_dimensions(&self, dims: &[Option<CompactString>]) -> bool {
        self.group_by.iter().all(|g| match g {
            GroupField::Dimension(i) => dims.get(*i).is_some_and(Option::is_some),
            _ => true,
        })
    }

    /// The group key of a reading: its group values joined by `|`, in
    /// `group_by` order; `None` when a grouped dimension is missing.
    pub fn group_key(
        &self,
        device: &str,
        metric: &str,
        dims: &[Option<CompactString>],
    ) -> Option<CompactString> {
        let mut key = CompactString::default();
        for (i, g) in self.group_by.iter().enumerate() {
            if i > 0 {
                key.push(KEY_SEPARATOR);
            }
            match g {
                GroupField::Device => key.push_str(device),
                GroupField::Metric => key.push_str(metric),
                GroupField::Dimension(d) => key.push_str(dims.get(*d)?.as_deref()?),
            }
        }
        Some(key)
    }

    /// The worker among `workers` that owns `key`'s windows: the device's
    /// worker when the key holds the device, so those windows never leave it.
    pub fn key_owner(&self, key: &str, workers: u32) -> u32 {
        match self.device_position() {
            Some(at) => {
                let device = key.split(KEY_SEPARATOR).nth(at).unwrap_or_default();
                crate::operators::windows::device_owner(device, workers)
            }
            None => crate::operators::windows::device_owner(key, workers),
        }
    }
}

#[cfg(test)]
mod tests {
    use iotflow_jobfile::expr::{self, FieldType, Fields};

    use super::*;
    use crate::operators::windows::device_owner;

    fn agg(group_by: Vec<GroupField>) -> Aggregation {
        Aggregation {
            group_by,
            ..Aggregation::per_device("a", WindowSpec::tumbling(1_000).unwrap(), EmitMode::Final)
        }
    }

    #[test]
    fn keys_join_group_values_and_a_missing_dimension_has_none() {
        let dims = [Some(CompactString::from("lyon")), None];
        let by = |g| agg(g).group_key("d-1", "temp", &dims);
        assert_eq!(
            by(vec![GroupField::Device, GroupField::Metric]).as_deref(),
            Some("d-1|temp")
        );
        assert_eq!(
            by(vec![GroupField::Dimension(0), GroupField::Metric]).as_deref(),
            Some("lyon|temp")
        );
        assert_eq!(by(vec![]).as_deref(), Some(""));
        assert_eq!(by(vec![GroupField::Dimension(1)]), None);
        assert!(!agg(vec![GroupField::Dimension(1)]).has_dimensions(&dims));
    }

    #[test]
    fn a_key_with_the_device_stays_on_the_device_s_worker() {
        let a = agg(vec![GroupField::Metric, GroupField::Device]);
        for d in ["d-1", "d-2", "pump-77"] {
            assert_eq!(a.key_owner(&format!("temp|{d}"), 5), device_owner(d, 5));
        }
        let fleet = agg(vec![]);
        assert_eq!(fleet.key_owner("", 3), device_owner("", 3));
    }

    #[test]
    fn a_shape_spells_out_what_the_state_depends_on() {
        let a = Aggregation::per_device(
            "aggregates",
            WindowSpec::tumbling(10_000).unwrap(),
            EmitMode::Final,
        );
        assert_eq!(
            a.shape(),
            "aggregates | key device_id,metric | window grid 10000 every 10000 | \
             measures count,sum,min,max,mean,stddev,first_ts,last_ts | where  | emit Final"
        );
        let sessions = Aggregation {
            window: Window::Session { gap_ms: 30_000 },
            ..a.clone()
        };
        assert_ne!(sessions.shape(), a.shape());
        let digests = Aggregation {
            percentiles: PercentileMode::Approx,
            ..a.clone()
        };
        assert_ne!(digests.shape(), a.shape());
    }

    struct F;
    impl Fields for F {
        type Field = FilterField;
        fn resolve(&self, n: &str) -> Result<(FilterField, FieldType), String> {
            match n {
                "metric" => Ok((FilterField::Metric, FieldType::Text)),
                "value" => Ok((FilterField::Value, FieldType::Number)),
                "site" => Ok((FilterField::Dimension(0), FieldType::Text)),
                _ => Err(String::new()),
            }
        }
    }

    #[test]
    fn filters_read_names_values_and_dimensions() {
        let mut a = agg(vec![]);
        a.filter = Some(expr::parse("metric == 't' and value > 1 and site != 'x'", &F).unwrap());
        let lyon = [Some(CompactString::from("lyon"))];
        assert!(a.keeps("d", "t", 2.0, &lyon));
        assert!(!a.keeps("d", "t", 1.0, &lyon));
        assert!(!a.keeps("d", "t", 2.0, &[None]), "unknown is not kept");
    }
}
