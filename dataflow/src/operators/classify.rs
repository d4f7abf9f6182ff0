//! Classify: parse, validate and judge lateness, before the exchange.
//!
//! ```text
//!   SourceEvent@e ──▶ wait until every ShareReport of epochs < e arrived (W_{e−1})
//!     Record / each line of a LineBatch ──parse──▶ Dead(reason)
//!       | all windows final under W_{e−1}? Dead(late)
//!       | its readings ──▶ the ReadingBatch of their device's worker (sent when full or at the end)
//!       with a bad-data rule, also one record-outcome reading per record (0 accepted,
//!       1 refused for a reason that keeps its device and time) to the same worker
//!     Status ──at the end of e──▶ ShareReport { top event times of the partition, state }
//! ```
//!
//! Lateness is judged here, next to the source, because the dead-letter topic
//! wants the original bytes and they are not worth shipping across workers.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use crate::aggregation::RECORD_OUTCOME_METRIC;
use crate::job::encode_dims;
use crate::job::{
    Classified, DeadRecord, Epoch, JobConfig, PartitionStatus, RawRecord, ReadingBatch, SourceEvent,
};
use crate::metrics::{JobMetrics, LatenessCounts, lateness_bucket};
use crate::operators::windows::device_owner;
use crate::reading::{
    Columns, Dims, MappedColumns, PlainRecord, Reading, RejectReason, parse_borrowed,
};
use crate::snapshot::WorkerSnapshot;
use crate::watermark::{ShareReport, ShareState, TopK, WatermarkCombiner};

/// Readings per [`ReadingBatch`]: big enough that the exchange moves few
/// messages, small enough that workers start on them early.
const READINGS_PER_BATCH: usize = 4_096;

/// Judges one record: parse, then late or not under the watermark of the epoch before.
struct Judge<'a> {
    cfg: &'a JobConfig,
    wm: Option<i64>,
    lateness: LatenessCounts,
    lateness_sum: u64,
    /// Records go through the job's input mapping, not today's shapes.
    mapped: bool,
    /// The last mapped record's dimensions, and encoded for its readings.
    dims: Dims,
    dim_bytes: Vec<u8>,
}

/// Where a judged record's readings are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parsed {
    /// In the `PlainRecord` slot (the default job's fast path).
    Plain,
    /// In the scratch readings.
    Scratch,
    /// In the scratch readings, their dimensions in `Judge::dim_bytes`.
    Mapped,
}

impl Judge<'_> {
    /// A parsed record at event time `ts` from the partition whose top event
    /// times are `top`: late, or not.
    fn judge(&mut self, top: &mut TopK, ts: i64) -> Result<(), RejectReason> {
        // Against the k-th newest, as the watermark: one outlier does not
        // make all that follows late.
        let behind = top.kth().map_or(0, |t| t.saturating_sub(ts));
        self.lateness[lateness_bucket(behind)] += 1;
        self.lateness_sum += behind.max(0) as u64;
        top.observe(ts);
        // Late only when every window of the reading is final in every aggregation.
        let (cfg, wm) = (self.cfg, self.wm);
        if cfg
            .aggregations
            .iter()
            .filter(|a| a.takes_readings())
            .all(|a| cfg.late_for(a, ts, wm))
        {
            Err(RejectReason::Late)
        } else {
            Ok(())
        }
    }

    /// Parses and judges one record's payload the job's way: through its
    /// input mapping (a job file's fields or dimensions), else today's shapes.
    fn payload<'a>(
        &mut self,
        top: &mut TopK,
        payload: &'a [u8],
        scratch: &mut Vec<Reading>,
        plain: &mut PlainRecord<'a>,
    ) -> Result<Parsed, RejectReason> {
        if !self.mapped {
            return Ok(match self.record(top, payload, scratch, plain)? {
                true => Parsed::Plain,
                false => Parsed::Scratch,
            });
        }
        self.mapped(top, payload, scratch)?;
        Ok(Parsed::Mapped)
    }

    /// A Parquet row read through the mapping's columns (readings into
    /// `scratch`) and judged; `None` when the columns cannot answer for it
    /// (render it and parse it instead).
    fn mapped_row(
        &mut self,
        top: &mut TopK,
        columns: &MappedColumns<'_>,
        row: usize,
        scratch: &mut Vec<Reading>,
    ) -> Option<Result<(), RejectReason>> {
        scratch.clear();
        columns.readings(row, &self.cfg.limits, scratch, &mut self.dims)?;
        let ts = scratch.first()?.ts_ms;
        Some(self.judge_mapped(top, ts))
    }

    /// Parses and judges one record through the job's input mapping (its
    /// readings in `scratch`, its dimensions in `self.dims`): also refused
    /// when no aggregation can use it for a missing dimension.
    fn mapped(
        &mut self,
        top: &mut TopK,
        payload: &[u8],
        scratch: &mut Vec<Reading>,
    ) -> Result<(), RejectReason> {
        scratch.clear();
        let dims = &mut self.dims;
        self.cfg
            .input
            .parse(payload, &self.cfg.limits, scratch, dims)?;
        let ts = scratch
            .first()
            .map(|r| r.ts_ms)
            .ok_or(RejectReason::NoMetrics)?;
        self.judge_mapped(top, ts)
    }

    /// Judges a mapped record at `ts` with its dimensions in `self.dims`,
    /// refused when no aggregation can use it for a missing dimension; the
    /// dimensions encoded into `self.dim_bytes`.
    fn judge_mapped(&mut self, top: &mut TopK, ts: i64) -> Result<(), RejectReason> {
        self.judge(top, ts)?;
        if !self
            .cfg
            .aggregations
            .iter()
            .any(|a| a.takes_readings() && a.has_dimensions(&self.dims))
        {
            return Err(RejectReason::MissingDimension);
        }
        self.dim_bytes.clear();
        encode_dims(&self.dims, &mut self.dim_bytes);
        Ok(())
    }

    /// Parses and judges one record; its readings are in `plain` (`true`) or
    /// in `scratch`.
    fn record<'a>(
        &mut self,
        top: &mut TopK,
        payload: &'a [u8],
        scratch: &mut Vec<Reading>,
        plain: &mut PlainRecord<'a>,
    ) -> Result<bool, RejectReason> {
        let parsed = parse_borrowed(payload, &self.cfg.limits, scratch, plain)?;
        let ts = match parsed {
            true => plain.ts_ms,
            false => scratch
                .first()
                .map(|r| r.ts_ms)
                .ok_or(RejectReason::NoMetrics)?,
        };
        self.judge(top, ts)?;
        Ok(parsed)
    }
}

/// A partition's top-k event times (k = outliers + 1).
fn top_of(tops: &mut FxHashMap<i32, TopK>, partition: i32, k: usize) -> &mut TopK {
    tops.entry(partition).or_insert_with(|| TopK::new(k))
}

/// See the module docs. `reports` is the broadcast report stream, fed back with +1.
pub fn classify<'scope>(
    source: Stream<'scope, Epoch, Vec<SourceEvent>>,
    reports: Stream<'scope, Epoch, Vec<ShareReport>>,
    cfg: JobConfig,
    metrics: Arc<JobMetrics>,
    stop: Arc<AtomicBool>,
    start: Epoch,
    restore: Option<&WorkerSnapshot>,
) -> Stream<'scope, Epoch, Vec<Classified>> {
    let k = cfg.watermark.outliers + 1;
    let peers = source.scope().peers() as u32;
    // A partition's top event times are in its latest report.
    let (combiner, tops) = match restore {
        Some(s) => (
            WatermarkCombiner::restored(cfg.watermark, &s.reports, s.watermark),
            s.reports
                .iter()
                .map(|r| {
                    let mut top = TopK::new(k);
                    top.merge(&r.top);
                    (r.partition, top)
                })
                .collect(),
        ),
        None => (WatermarkCombiner::new(cfg.watermark), FxHashMap::default()),
    };
    source.binary_frontier(
        reports,
        Pipeline,
        Pipeline,
        "Classify",
        move |cap, _info| {
            let mut cap = cap;
            cap.downgrade(&start);
            let mut cap = Some(cap);
            let mut next: Epoch = start;
            let mut pending: BTreeMap<Epoch, Vec<SourceEvent>> = BTreeMap::new();
            let mut pending_reports: BTreeMap<Epoch, Vec<ShareReport>> = BTreeMap::new();
            let mut combiner = combiner;
            let mut tops: FxHashMap<i32, TopK> = tops;
            let mut statuses: Vec<PartitionStatus> = Vec::new();
            let mut scratch: Vec<Reading> = Vec::new();
            // A job file's mapping, or dimensions: the general parser, dimensions with every reading.
            let mapped = !cfg.input.is_default();
            let peers = peers.max(1);
            let mut batches: Vec<ReadingBatch> = (0..peers).map(ReadingBatch::new).collect();
            // A bad-data rule counts each device's records: one outcome reading per record.
            let outcomes = cfg.aggregations.iter().any(|a| !a.takes_readings());

            move |(source_in, source_frontier), (reports_in, reports_frontier), output| {
                source_in.for_each(|time, data| crate::job::stash(&mut pending, &time, data));
                reports_in
                    .for_each(|time, data| crate::job::stash(&mut pending_reports, &time, data));
                while let Some(c) = cap.as_mut() {
                    // W_{next−1} needs every report stamped ≤ next (fed back with +1).
                    if reports_frontier.less_equal(&next) {
                        break;
                    }
                    while let Some(entry) = pending_reports.first_entry() {
                        if *entry.key() > next {
                            break;
                        }
                        for r in entry.remove() {
                            if r.state == ShareState::Stopped {
                                // One stopped source stops the job in every process.
                                stop.store(true, Ordering::Relaxed);
                            }
                            combiner.apply(&r);
                        }
                    }
                    let wm = combiner.watermark();
                    metrics.observe_watermark(wm);
                    if let Some(events) = pending.remove(&next) {
                        let mut judge = Judge {
                            cfg: &cfg,
                            wm,
                            lateness: Default::default(),
                            lateness_sum: 0,
                            mapped,
                            dims: Vec::new(),
                            dim_bytes: Vec::new(),
                        };
                        let mut dead: Vec<Classified> = Vec::new();
                        let mut records = 0u64;
                        let mut records_accepted = 0u64;
                        let mut accepted = 0u64;
                        let mut session = output.session(c);
                        let mut accept = |parsed: Parsed,
                                          plain: &PlainRecord<'_>,
                                          scratch: &mut Vec<Reading>,
                                          dims: &[u8]| {
                            records_accepted += 1;
                            let mut give = |worker: usize, batch: &mut ReadingBatch| {
                                if batch.len() >= READINGS_PER_BATCH {
                                    let full =
                                        std::mem::replace(batch, ReadingBatch::new(worker as u32));
                                    session.give(Classified::Readings(full));
                                }
                            };
                            if parsed == Parsed::Plain {
                                let p = plain;
                                let worker = device_owner(p.device_id, peers) as usize;
                                let batch = &mut batches[worker];
                                for &(metric, value) in p.metrics() {
                                    accepted += 1;
                                    batch.push_parts(p.device_id, metric, p.ts_ms, value, p.seq);
                                }
                                if outcomes {
                                    let m = RECORD_OUTCOME_METRIC;
                                    batch.push_parts(p.device_id, m, p.ts_ms, 0.0, p.seq);
                                }
                                give(worker, batch);
                                return;
                            }
                            if outcomes && let Some(r) = scratch.first() {
                                let outcome = Reading {
                                    metric: RECORD_OUTCOME_METRIC.into(),
                                    value: 0.0,
                                    ..r.clone()
                                };
                                let worker = device_owner(&r.device_id, peers) as usize;
                                match parsed {
                                    Parsed::Mapped => {
                                        batches[worker].push_with_dims(&outcome, dims)
                                    }
                                    _ => batches[worker].push(&outcome),
                                }
                            }
                            for r in scratch.drain(..) {
                                accepted += 1;
                                let worker = device_owner(&r.device_id, peers) as usize;
                                match parsed {
                                    Parsed::Mapped => batches[worker].push_with_dims(&r, dims),
                                    _ => batches[worker].push(&r),
                                }
                                give(worker, &mut batches[worker]);
                            }
                        };
                        let mut refused_outcomes: Vec<Reading> = Vec::new();
                        let mut reject = |reason: RejectReason, record: RawRecord| {
                            metrics.reject(reason, 1);
                            if outcomes
                                && reason.keeps_identity()
                                && let Some(id) = cfg.input.identity(&record.value, &cfg.limits)
                            {
                                refused_outcomes.push(Reading {
                                    device_id: id.device_id,
                                    metric: RECORD_OUTCOME_METRIC.into(),
                                    ts_ms: id.ts_ms,
                                    value: 1.0,
                                    seq: id.seq,
                                });
                            }
                            dead.push(Classified::Dead(DeadRecord { reason, record }));
                        };
                        for event in events {
                            match event {
                                SourceEvent::Status(s) => statuses.push(s),
                                SourceEvent::Record(record) => {
                                    records += 1;
                                    let top = top_of(&mut tops, record.partition, k);
                                    let mut plain = PlainRecord::default();
                                    match judge.payload(
                                        top,
                                        &record.value,
                                        &mut scratch,
                                        &mut plain,
                                    ) {
                                        Ok(p) => accept(p, &plain, &mut scratch, &judge.dim_bytes),
                                        Err(reason) => reject(reason, record),
                                    }
                                }
                                SourceEvent::Rows(rows) => {
                                    records += rows.len() as u64;
                                    let top = top_of(&mut tops, rows.partition, k);
                                    // Columns straight to readings (today's shapes, or the
                                    // job's own mapping); a row they cannot take is rendered
                                    // and parsed.
                                    let (columns, mapped_columns) = match mapped {
                                        true => (
                                            None,
                                            MappedColumns::of(&rows.batch, &cfg.input, &cfg.limits),
                                        ),
                                        false => (Columns::of(&rows.batch, &cfg.limits), None),
                                    };
                                    let none = PlainRecord::default();
                                    for i in 0..rows.len() {
                                        if let Some(verdict) = mapped_columns
                                            .as_ref()
                                            .and_then(|c| judge.mapped_row(top, c, i, &mut scratch))
                                        {
                                            match verdict {
                                                Ok(()) => accept(
                                                    Parsed::Mapped,
                                                    &none,
                                                    &mut scratch,
                                                    &judge.dim_bytes,
                                                ),
                                                Err(reason) => reject(reason, rows.record(i)),
                                            }
                                            continue;
                                        }
                                        // The long shape, straight into the fast path's slot.
                                        if let Some(plain) = columns
                                            .as_ref()
                                            .and_then(|c| c.plain_row(i, &cfg.limits))
                                        {
                                            match judge.judge(top, plain.ts_ms) {
                                                Ok(()) => {
                                                    accept(Parsed::Plain, &plain, &mut scratch, &[])
                                                }
                                                Err(reason) => reject(reason, rows.record(i)),
                                            }
                                            continue;
                                        }
                                        scratch.clear();
                                        let read = columns
                                            .as_ref()
                                            .and_then(|c| c.readings(i, &cfg.limits, &mut scratch));
                                        if read.is_some() {
                                            let ts = scratch.first().map_or(0, |r| r.ts_ms);
                                            match judge.judge(top, ts) {
                                                Ok(()) => accept(
                                                    Parsed::Scratch,
                                                    &none,
                                                    &mut scratch,
                                                    &[],
                                                ),
                                                Err(reason) => reject(reason, rows.record(i)),
                                            }
                                            continue;
                                        }
                                        let record = rows.record(i);
                                        let mut plain = PlainRecord::default();
                                        match judge.payload(
                                            top,
                                            &record.value,
                                            &mut scratch,
                                            &mut plain,
                                        ) {
                                            Ok(p) => {
                                                accept(p, &plain, &mut scratch, &judge.dim_bytes)
                                            }
                                            Err(reason) => reject(reason, record),
                                        }
                                    }
                                }
                                SourceEvent::Lines(lines) => {
                                    records += lines.spans.len() as u64;
                                    // One slot per batch: records are parsed into it in place.
                                    let mut plain = PlainRecord::default();
                                    let top = top_of(&mut tops, lines.partition, k);
                                    for (i, &(from, to)) in lines.spans.iter().enumerate() {
                                        let payload = &lines.buf[from as usize..to as usize];
                                        match judge.payload(top, payload, &mut scratch, &mut plain)
                                        {
                                            Ok(p) => {
                                                accept(p, &plain, &mut scratch, &judge.dim_bytes)
                                            }
                                            Err(reason) => {
                                                reject(reason, lines.record(i, (from, to)))
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        for r in refused_outcomes {
                            let batch = &mut batches[device_owner(&r.device_id, peers) as usize];
                            match mapped {
                                true => batch.push_with_dims(&r, &[]),
                                false => batch.push(&r),
                            }
                        }
                        for batch in batches.iter_mut().filter(|b| !b.is_empty()) {
                            let worker = batch.worker;
                            session.give(Classified::Readings(std::mem::replace(
                                batch,
                                ReadingBatch::new(worker),
                            )));
                        }
                        session.give_iterator(dead.into_iter());
                        drop(session);
                        metrics.records_in.fetch_add(records, Ordering::Relaxed);
                        metrics
                            .records_accepted
                            .fetch_add(records_accepted, Ordering::Relaxed);
                        metrics.add_lateness(&judge.lateness, judge.lateness_sum);
                        metrics
                            .readings_accepted
                            .fetch_add(accepted, Ordering::Relaxed);
                    }
                    if source_frontier.less_equal(&next) {
                        break; // more of epoch `next` may still come
                    }
                    // Epoch `next` is complete here: report each share's progress.
                    if !statuses.is_empty() {
                        let mut session = output.session(c);
                        for s in statuses.drain(..) {
                            let top = tops
                                .get(&s.partition)
                                .map(|t| t.values().to_vec())
                                .unwrap_or_default();
                            session.give(Classified::Report(ShareReport {
                                partition: s.partition,
                                share: s.share,
                                shares: s.shares,
                                top,
                                state: s.state,
                                next_offset: s.next_offset,
                            }));
                        }
                    }
                    metrics.last_epoch.fetch_max(next, Ordering::Relaxed);
                    if source_frontier.is_empty() && pending.is_empty() {
                        cap = None;
                        break;
                    }
                    next += 1;
                    c.downgrade(&next);
                }
            }
        },
    )
}
