//! The windowed-aggregation dataflow, independent of where records come from
//! and where results go.
//!
//! ```text
//!   source ──SourceEvent (records or line batches + one status per partition share per epoch)──▶ Classify
//!   Classify ◀──ShareReports of epoch e−1 (broadcast, fed back +1)── Classify
//!      ├─▶ dead letters (parse rejects, `late`)
//!      ├─▶ ReadingBatch per worker ──exchange──▶ Windows ◀── ShareReports (broadcast)
//!      └─▶ ShareReports of epoch e                       └─▶ WindowResult (final / updates)
//! ```
//!
//! Epoch e's records are classified against W_{e−1}, the watermark after every
//! report of epochs < e, and windows with `end + lateness ≤ W_e` are emitted at
//! epoch e. Both depend only on what each partition held in each epoch, so with
//! record-count epochs the output is the same for any number of workers.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};
use timely::dataflow::ProbeHandle;
use timely::dataflow::Stream;
use timely::dataflow::operators::core::{ConnectLoop, Feedback, Partition, Probe};
use timely::dataflow::operators::vec::Broadcast;

use compact_str::CompactString;

use crate::aggregate::{Measured, Stats};
use crate::aggregation::{Aggregation, AggregationInput, Window};
use crate::metrics::JobMetrics;
use crate::operators::windows::Captures;
use crate::operators::{classify, windows};
use crate::reading::{InputMapping, ParseLimits, Reading, RejectReason};
use crate::snapshot::WorkerSnapshot;
use crate::watermark::{ShareReport, ShareState, WatermarkConfig};
use crate::window::{WindowError, WindowSpec};

/// Timely timestamps are epochs.
pub type Epoch = u64;

/// The epoch a received batch belongs to. Our operators send every batch under
/// one capability, so a stamp is a single epoch; its least element is it.
pub fn epoch_of(cap: &timely::dataflow::operators::InputCapability<Epoch>) -> Epoch {
    cap.least().copied().unwrap_or_default()
}

/// Keeps a received batch with the others of its epoch until the operator
/// gets to that epoch.
pub fn stash<D>(
    pending: &mut std::collections::BTreeMap<Epoch, Vec<D>>,
    cap: &timely::dataflow::operators::InputCapability<Epoch>,
    data: &mut Vec<D>,
) {
    pending.entry(epoch_of(cap)).or_default().append(data);
}

/// An operator's capabilities, moved to `start` (a resumed job's first epoch;
/// nothing earlier will ever be sent) and held until the operator drops them.
pub fn held_from(
    mut caps: Vec<timely::dataflow::operators::Capability<Epoch>>,
    start: Epoch,
) -> Option<Vec<timely::dataflow::operators::Capability<Epoch>>> {
    for c in caps.iter_mut() {
        c.downgrade(&start);
    }
    Some(caps)
}

/// How many epochs a source may run ahead of the last epoch the dataflow completed.
pub const MAX_EPOCHS_IN_FLIGHT: u64 = 4;

/// Backpressure from the end of the dataflow to its sources: a source starts
/// epoch e only once every epoch before e − [`MAX_EPOCHS_IN_FLIGHT`] is
/// complete at the probed outputs, and (with a byte bound) while the bytes
/// held for later stages are under their limit, so a slow operator or sink
/// holds the source (and the Kafka fetcher's bounded queues hold the broker)
/// instead of buffers growing between operators. One per worker; `build`
/// attaches it.
#[derive(Clone, Debug)]
pub struct Backpressure {
    probe: ProbeHandle<Epoch>,
    metrics: Arc<JobMetrics>,
    bound: std::rc::Rc<std::cell::RefCell<Option<ByteBound>>>,
}

/// Bytes a later stage holds (e.g. outputs staged but not yet published),
/// and the limit past which sources wait.
#[derive(Clone, Debug)]
pub struct ByteBound {
    pub held: Arc<std::sync::atomic::AtomicU64>,
    pub limit: u64,
}

impl Backpressure {
    /// Makes the source also wait for `stream` (e.g. a sink's progress).
    pub fn also_wait_for<'scope, D: timely::Container>(
        &self,
        stream: Stream<'scope, Epoch, D>,
    ) -> Stream<'scope, Epoch, D> {
        stream.probe_with(&self.probe)
    }

    /// Makes the source also wait while `bound.held` is at or above its limit.
    pub fn also_bound(&self, bound: ByteBound) {
        *self.bound.borrow_mut() = Some(bound);
    }
}

impl Backpressure {
    pub fn new(metrics: Arc<JobMetrics>) -> Self {
        Self {
            probe: ProbeHandle::new(),
            metrics,
            bound: Default::default(),
        }
    }

    /// Whether a source may start (or go on with) `epoch` now.
    pub fn admits(&self, epoch: Epoch) -> bool {
        let done = self
            .probe
            .with_frontier(|f| f.iter().min().copied().unwrap_or(Epoch::MAX));
        let under_bound = self.bound.borrow().as_ref().is_none_or(|b| {
            // The oldest epoch in flight always goes on: its outputs are what frees bytes.
            epoch <= done || b.held.load(std::sync::atomic::Ordering::Relaxed) < b.limit
        });
        let admitted = under_bound && epoch.saturating_sub(MAX_EPOCHS_IN_FLIGHT) <= done;
        if admitted {
            self.metrics.epochs_in_flight_peak.fetch_max(
                epoch.saturating_sub(done),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        admitted
    }
}

pub use iotflow_jobfile::EmitMode;

/// Everything the dataflow needs to know.
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// How long after the watermark passes a window's end it still accepts readings.
    pub lateness_ms: i64,
    pub watermark: WatermarkConfig,
    pub limits: ParseLimits,
    /// How records become readings (and dimensions).
    pub input: Arc<InputMapping>,
    /// What is computed from them; at least one.
    pub aggregations: Arc<[Aggregation]>,
    /// Rules over the aggregations' final windows.
    pub alerts: crate::alert::AlertRules,
}

impl JobConfig {
    /// Whether aggregation `index` keeps digests instead of readings.
    pub fn keeps_digests(&self, index: u16) -> bool {
        self.aggregations
            .get(usize::from(index))
            .is_some_and(Aggregation::keeps_digests)
    }

    /// The default job: today's shapes, one aggregation per (device, metric)
    /// named `aggregates` with today's measures.
    pub fn single(
        window: WindowSpec,
        lateness_ms: i64,
        watermark: WatermarkConfig,
        emit: EmitMode,
        limits: ParseLimits,
    ) -> Self {
        Self {
            lateness_ms,
            watermark,
            limits,
            input: Arc::new(InputMapping::new(
                iotflow_jobfile::Mapping::Preset(iotflow_jobfile::Preset::Auto),
                Vec::new(),
            )),
            aggregations: vec![Aggregation::per_device(
                iotflow_jobfile::DEFAULT_AGGREGATION,
                window,
                emit,
            )]
            .into(),
            alerts: crate::alert::AlertRules::default(),
        }
    }

    /// The job a job file states.
    pub fn from_plan(
        plan: &iotflow_jobfile::JobPlan,
        limits: ParseLimits,
    ) -> Result<Self, WindowError> {
        let aggregations = plan
            .aggregations
            .iter()
            .map(|a| {
                let window = match a.window {
                    iotflow_jobfile::WindowKind::Hopping { size_ms, slide_ms } => {
                        Window::Grid(WindowSpec::hopping(size_ms, slide_ms)?)
                    }
                    iotflow_jobfile::WindowKind::Session { gap_ms } if gap_ms > 0 => {
                        Window::Session { gap_ms }
                    }
                    iotflow_jobfile::WindowKind::Session { gap_ms } => {
                        return Err(WindowError::Size(gap_ms));
                    }
                };
                Ok(Aggregation {
                    name: a.name.as_str().into(),
                    group_by: a.group_by.clone(),
                    group_names: a
                        .group_by
                        .iter()
                        .map(|g| plan.group_output_name(g).into())
                        .collect(),
                    window,
                    emit: a.emit,
                    measures: a.measures.clone(),
                    percentiles: a.percentiles,
                    filter: a.filter.clone(),
                    input: AggregationInput::Readings,
                })
            })
            .collect::<Result<Vec<_>, WindowError>>()?;
        // A bad-data rule watches windows of its own: each device's record
        // outcomes on the grid of the aggregation it names.
        let mut aggregations = aggregations;
        let mut alert_plans = plan.alerts.clone();
        for p in &mut alert_plans {
            if let iotflow_jobfile::AlertRule::BadData { .. } = p.rule
                && let Some(on) = aggregations.get(p.on)
            {
                let outcomes = Aggregation::record_outcomes(&p.name, on.window);
                p.on = aggregations.len();
                aggregations.push(outcomes);
            }
        }
        let w = &plan.watermark;
        let alerts = crate::alert::AlertRules::new(&alert_plans, &aggregations, w.lateness_ms);
        Ok(Self {
            lateness_ms: w.lateness_ms,
            watermark: WatermarkConfig {
                max_out_of_order_ms: w.max_out_of_order_ms,
                idle_timeout_ms: w.idle_timeout_ms,
                outliers: 1,
            },
            limits,
            input: Arc::new(InputMapping::new(
                plan.input.mapping.clone(),
                plan.input
                    .dimensions
                    .iter()
                    .map(|d| d.path.clone())
                    .collect(),
            )),
            aggregations: aggregations.into(),
            alerts,
        })
    }

    /// Where its windows close and live, for snapshots.
    pub fn window_rules(&self) -> crate::snapshot::WindowRules {
        crate::snapshot::WindowRules {
            aggregations: Arc::clone(&self.aggregations),
            lateness_ms: self.lateness_ms,
        }
    }

    /// Whether a reading at `ts` is late for aggregation `agg`: every window it falls in is final.
    pub fn late_for(&self, agg: &Aggregation, ts: i64, wm: Option<i64>) -> bool {
        agg.late(ts, self.lateness_ms, wm)
    }

    /// When a reading at `ts` is final in every aggregation: its dedupe key lives until then.
    pub fn final_everywhere_at(&self, ts: i64) -> i64 {
        self.aggregations
            .iter()
            .map(|a| a.final_at(ts, self.lateness_ms))
            .max()
            .unwrap_or(i64::MAX)
    }
}

/// One record from a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawRecord {
    pub partition: i32,
    /// Kafka offset, or byte offset of the line in a file.
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// A shared slice: file lines point into one buffer per read, not one allocation each.
    pub value: bytes::Bytes,
    /// The source record's own timestamp (Kafka's, epoch ms; 0 for file
    /// lines): a dead letter carries it, so a replay writes the same record.
    pub timestamp_ms: i64,
}

/// Consecutive lines of one file slice, sharing its buffer: one event for
/// thousands of records instead of one each (a file source's unit of work).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineBatch {
    pub partition: i32,
    /// File offset of `buf[0]`: a line's offset is `base + start`; or, if
    /// `numbered`, the first line's number: line i's offset is `base + i`.
    pub base: i64,
    pub buf: bytes::Bytes,
    /// `(start, end)` of each line in `buf`, in file order.
    pub spans: Vec<(u32, u32)>,
    /// Lines numbered one by one (a Parquet file's rows as JSON) rather
    /// than found at byte offsets.
    pub numbered: bool,
}

impl LineBatch {
    /// Line `i`, at `span`, as a record of its own (for the dead-letter topic).
    pub fn record(&self, i: usize, (start, end): (u32, u32)) -> RawRecord {
        RawRecord {
            partition: self.partition,
            offset: self.offset(i, start),
            key: None,
            value: self.buf.slice(start as usize..end as usize),
            timestamp_ms: 0,
        }
    }

    /// Every line as a record of its own.
    #[cfg(test)]
    pub(crate) fn records(&self) -> impl Iterator<Item = RawRecord> + '_ {
        self.spans
            .iter()
            .enumerate()
            .map(|(i, &span)| self.record(i, span))
    }

    /// Offset of the last line; `None` when empty.
    pub fn last_offset(&self) -> Option<i64> {
        let &(start, _) = self.spans.last()?;
        Some(self.offset(self.spans.len() - 1, start))
    }

    fn offset(&self, i: usize, start: u32) -> i64 {
        match self.numbered {
            true => self.base + i as i64,
            false => self.base + i64::from(start),
        }
    }
}

/// The state of one partition share at the end of an epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStatus {
    pub partition: i32,
    pub share: u32,
    pub shares: u32,
    pub state: ShareState,
    /// Next offset to read; the epoch covered offsets below it.
    pub next_offset: i64,
}

/// What sources emit: records, and once per epoch a status per owned share.
/// They stay on their worker (Classify is next to the source).
#[derive(Debug, Clone)]
pub enum SourceEvent {
    Record(RawRecord),
    Lines(LineBatch),
    /// A Parquet file's rows, read column by column.
    Rows(crate::parquet_file::RowBatch),
    Status(PartitionStatus),
}

/// A record bound for the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadRecord {
    pub reason: RejectReason,
    pub record: RawRecord,
}

/// One window's aggregate at an epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowResult {
    /// Index of its aggregation in [`JobConfig::aggregations`].
    pub aggregation: u16,
    /// The group values joined by `|` ([`Aggregation::group_key`]); inline up
    /// to 24 bytes: no allocation for usual `device|metric` keys.
    pub group: CompactString,
    pub window_start: i64,
    pub window_end: i64,
    pub measured: Measured,
    pub is_final: bool,
}

impl WindowResult {
    /// A result of the default job's shape: `device|metric`, today's measures.
    pub fn new(
        device_id: &str,
        metric: &str,
        start: i64,
        end: i64,
        stats: Stats,
        is_final: bool,
    ) -> Self {
        let mut group = CompactString::from(device_id);
        group.push(crate::aggregation::KEY_SEPARATOR);
        group.push_str(metric);
        Self {
            aggregation: 0,
            group,
            window_start: start,
            window_end: end,
            measured: Measured {
                stats,
                // Not measured by the default job's records.
                first_value: 0.0,
                last_value: 0.0,
                percentiles: Vec::new(),
            },
            is_final,
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.measured.stats
    }

    /// The group values, in `group_by` order.
    pub fn group_values(&self) -> impl Iterator<Item = &str> + '_ {
        let fleet = self.group.is_empty();
        self.group
            .split(crate::aggregation::KEY_SEPARATOR)
            .filter(move |_| !fleet)
    }
}

/// What Classify emits, split three ways right after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Classified {
    Dead(DeadRecord),
    Readings(ReadingBatch),
    Report(ShareReport),
}

/// Accepted readings bound for one worker, column by column: one exchange
/// message moves thousands of readings, and their names travel as bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReadingBatch {
    /// The worker that owns their devices: `device_owner(device, peers)`.
    pub worker: u32,
    /// Each reading's `device 0xFF metric` (0xFF never occurs in UTF-8), one
    /// after the other: the key a worker interns in one lookup.
    names: Vec<u8>,
    /// Per reading: where its names end in `names`, and where its device ends.
    ends: Vec<(u32, u32)>,
    ts_ms: Vec<i64>,
    value: Vec<f64>,
    seq: Vec<Option<u64>>,
    /// Each reading's dimensions ([`encode_dims`]), when the job has any:
    /// `dim_ends` is then as long as `ends`, else empty.
    dims: Vec<u8>,
    dim_ends: Vec<u32>,
}

/// One reading of a [`ReadingBatch`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchReading<'a> {
    /// `device 0xFF metric`.
    pub names: &'a [u8],
    /// Length of the device id at the start of `names`.
    pub device_len: usize,
    pub ts_ms: i64,
    pub value: f64,
    pub seq: Option<u64>,
    /// Its dimensions, encoded ([`decode_dims`]); empty without dimensions.
    pub dims: &'a [u8],
}

/// Marks a missing dimension in [`encode_dims`]: never a byte of UTF-8.
const MISSING_DIM: u8 = 0xFE;

/// A record's dimensions as bytes: each value (or 0xFE when missing), each
/// followed by 0xFF. Equal dimensions give equal bytes, so a worker interns them.
pub fn encode_dims(dims: &[Option<CompactString>], out: &mut Vec<u8>) {
    for d in dims {
        match d {
            Some(v) => out.extend_from_slice(v.as_bytes()),
            None => out.push(MISSING_DIM),
        }
        out.push(ReadingBatch::SEPARATOR);
    }
}

/// The inverse of [`encode_dims`] (lossy only if the bytes were damaged in transit).
pub fn decode_dims(bytes: &[u8]) -> Vec<Option<CompactString>> {
    let Some(body) = bytes.strip_suffix(&[ReadingBatch::SEPARATOR]) else {
        return Vec::new();
    };
    body.split(|b| *b == ReadingBatch::SEPARATOR)
        .map(|v| (v != [MISSING_DIM]).then(|| CompactString::from_utf8_lossy(v)))
        .collect()
}

impl BatchReading<'_> {
    /// Device and metric names (lossy only if the batch was damaged in transit).
    pub fn device_and_metric(&self) -> (CompactString, CompactString) {
        let split = self.device_len.min(self.names.len());
        let (device, metric) = self.names.split_at(split);
        let metric = metric.get(1..).unwrap_or_default();
        (
            CompactString::from_utf8_lossy(device),
            CompactString::from_utf8_lossy(metric),
        )
    }
}

impl ReadingBatch {
    /// Separates device and metric in `names`, and dimensions.
    pub const SEPARATOR: u8 = 0xFF;

    pub fn new(worker: u32) -> Self {
        Self {
            worker,
            ..Self::default()
        }
    }

    pub fn push(&mut self, r: &Reading) {
        self.push_parts(&r.device_id, &r.metric, r.ts_ms, r.value, r.seq);
    }

    /// [`Self::push`] with the record's encoded dimensions.
    pub fn push_with_dims(&mut self, r: &Reading, dims: &[u8]) {
        self.push(r);
        self.dims.extend_from_slice(dims);
        self.dim_ends.push(self.dims.len() as u32);
    }

    pub fn push_parts(
        &mut self,
        device: &str,
        metric: &str,
        ts_ms: i64,
        value: f64,
        seq: Option<u64>,
    ) {
        self.names.extend_from_slice(device.as_bytes());
        self.names.push(Self::SEPARATOR);
        self.names.extend_from_slice(metric.as_bytes());
        // Names are at most `ParseLimits::max_id_len` bytes and batches are
        // flushed after a few thousand readings, far below 4 GiB.
        self.ends
            .push((self.names.len() as u32, device.len() as u32));
        self.ts_ms.push(ts_ms);
        self.value.push(value);
        self.seq.push(seq);
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The readings in push order. A batch whose columns disagree (damaged in
    /// transit) yields only what all columns have.
    pub fn iter(&self) -> impl Iterator<Item = BatchReading<'_>> + '_ {
        let mut start = 0usize;
        let mut dim_start = 0usize;
        self.ends
            .iter()
            .zip(&self.ts_ms)
            .zip(&self.value)
            .zip(&self.seq)
            .enumerate()
            .map(move |(i, ((((end, device_len), ts_ms), value), seq))| {
                let end = (*end as usize).clamp(start, self.names.len());
                let names = &self.names[start..end];
                start = end;
                let dims = match self.dim_ends.get(i) {
                    Some(&e) => {
                        let e = (e as usize).clamp(dim_start, self.dims.len());
                        let d = &self.dims[dim_start..e];
                        dim_start = e;
                        d
                    }
                    None => &[],
                };
                BatchReading {
                    names,
                    device_len: *device_len as usize,
                    ts_ms: *ts_ms,
                    value: *value,
                    seq: *seq,
                    dims,
                }
            })
    }
}

/// The dataflow's outputs.
#[allow(missing_debug_implementations)] // timely streams are not `Debug`
pub struct JobStreams<'scope> {
    pub results: Stream<'scope, Epoch, Vec<WindowResult>>,
    /// Alert events, on the worker of their key.
    pub alerts: Stream<'scope, Epoch, Vec<crate::alert::AlertEvent>>,
    pub dead: Stream<'scope, Epoch, Vec<DeadRecord>>,
    /// Every share report, on every worker (broadcast): the epoch's source progress.
    pub reports: Stream<'scope, Epoch, Vec<ShareReport>>,
}

/// Where a worker's dataflow starts and what it keeps: the first epoch, the
/// state to start from (this worker's share of the snapshot of the epoch
/// before), and, when the job commits, where each epoch's snapshot is left.
#[derive(Default)]
#[allow(missing_debug_implementations)] // holds an `Rc` cell of snapshots
pub struct StateHooks {
    pub start: Epoch,
    pub restore: Option<WorkerSnapshot>,
    pub capture: Option<Captures>,
    /// With `capture`: what is captured at each epoch.
    pub plan: crate::snapshot::CapturePlan,
}

/// Builds the dataflow over `source` in its scope. `stop` is raised when any
/// source of the job, in any process, reports [`ShareState::Stopped`];
/// `gate` probes the outputs for the source's backpressure.
pub fn build<'scope>(
    source: Stream<'scope, Epoch, Vec<SourceEvent>>,
    cfg: JobConfig,
    metrics: Arc<JobMetrics>,
    stop: Arc<AtomicBool>,
    gate: &Backpressure,
) -> JobStreams<'scope> {
    build_with_state(source, cfg, metrics, stop, gate, StateHooks::default())
}

/// [`build`], starting from `hooks.start` with `hooks.restore`, leaving each
/// epoch's snapshot in `hooks.capture`.
pub fn build_with_state<'scope>(
    source: Stream<'scope, Epoch, Vec<SourceEvent>>,
    cfg: JobConfig,
    metrics: Arc<JobMetrics>,
    stop: Arc<AtomicBool>,
    gate: &Backpressure,
    hooks: StateHooks,
) -> JobStreams<'scope> {
    let scope = source.scope();
    let (loop_handle, fed_back) = scope.feedback::<Vec<ShareReport>>(1);
    let classified = classify::classify(
        source,
        fed_back,
        cfg.clone(),
        Arc::clone(&metrics),
        stop,
        hooks.start,
        hooks.restore.as_ref(),
    );
    let mut parts = classified
        .partition::<timely::container::CapacityContainerBuilder<Vec<Classified>>, _, _>(3, |c| {
            match c {
                Classified::Dead(_) => (0, c),
                Classified::Readings(_) => (1, c),
                Classified::Report(_) => (2, c),
            }
        })
        .into_iter();
    let (Some(dead), Some(readings), Some(reports)) = (parts.next(), parts.next(), parts.next())
    else {
        unreachable!("partition(3) returns three streams")
    };
    use timely::dataflow::operators::vec::Map;
    let dead = dead.flat_map(|c| match c {
        Classified::Dead(d) => Some(d),
        _ => None,
    });
    let reports = reports
        .flat_map(|c| match c {
            Classified::Report(r) => Some(r),
            _ => None,
        })
        .broadcast();
    reports.clone().connect_loop(loop_handle);
    let (results, alerts) = windows::windows(readings, reports.clone(), cfg, metrics, hooks);
    let results = results.probe_with(&gate.probe);
    let alerts = alerts.probe_with(&gate.probe);
    let dead = dead.probe_with(&gate.probe);
    JobStreams {
        results,
        alerts,
        dead,
        reports,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_batch_numbers_lines_by_byte_offset_or_one_by_one() {
        let mut lines = LineBatch {
            partition: 3,
            base: 1_000,
            buf: bytes::Bytes::from_static(b"{a}\n{bb}\n{c}"),
            spans: vec![(0, 3), (4, 8), (9, 12)],
            numbered: false,
        };
        let offsets = |l: &LineBatch| -> Vec<i64> { l.records().map(|r| r.offset).collect() };
        assert_eq!(offsets(&lines), [1_000, 1_004, 1_009]);
        assert_eq!(lines.last_offset(), Some(1_009));
        assert_eq!(&lines.record(1, lines.spans[1]).value[..], b"{bb}");
        lines.numbered = true;
        assert_eq!(offsets(&lines), [1_000, 1_001, 1_002]);
        assert_eq!(lines.last_offset(), Some(1_002));
        lines.spans.clear();
        assert_eq!(lines.last_offset(), None);
    }
}
