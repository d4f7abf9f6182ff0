//! Assign, on the device's worker: dedupe once, then each aggregation's
//! filter, group key and windows; one sorted run per (aggregation, key,
//! window) and epoch, bound for the worker that owns the key.
//!
//! ```text
//!   ReadingBatch@e ──▶ rows by series (device, metric) ──dedupe──▶ survivors
//!     for each aggregation: lacks a grouped dimension? counted | where? counted
//!       each window of its event time still open under W_{e−1} (else counted late_partial)
//!       ──▶ RunBatch for key_owner(key): (aggregation, key, start) + its (ts, value bits), sorted
//!   snapshot delta of e: reports, watermark, the dedupe keys e added
//! ```
//!
//! Runs, not readings, cross the second exchange: a fleet-wide aggregation
//! sends one run per worker and window, and its owner merges sorted runs
//! instead of sorting the fleet's readings on one worker.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use compact_str::CompactString;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use super::dedupe::{Row, SEEN_SWEEP_MIN, Seen, SeriesSeen, by_series, dedupe};
use super::names::Names;
use crate::aggregate::ordered_bits;
use crate::aggregation::{Aggregation, RECORD_OUTCOME_METRIC};
use crate::job::{Classified, Epoch, JobConfig, MAX_EPOCHS_IN_FLIGHT, StateHooks, held_from};
use crate::metrics::{AggregationCounts, JobMetrics};
use crate::snapshot::{self, Capture, CapturePlan, WorkerSnapshot};
use crate::watermark::{ShareReport, WatermarkCombiner};

/// Runs bound for one worker: per (aggregation, group key, window slot), one
/// worker's readings of that window in one epoch, sorted by (event time,
/// value bits): ready to merge. A run is shared: within a process it moves to
/// the arrangement without a copy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunBatch {
    /// The worker that owns these keys' windows.
    pub worker: u32,
    pub runs: Vec<(RunHead, Run)>,
}

/// One run's (event time, [`ordered_bits`] of the value), sorted.
pub type Run = Arc<[(i64, u64)]>;

/// One run of a [`RunBatch`]: its window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunHead {
    pub aggregation: u16,
    pub key: CompactString,
    pub start: i64,
}

/// The Assign operator's state between epochs.
struct State {
    cfg: JobConfig,
    worker: u32,
    workers: u32,
    combiner: WatermarkCombiner,
    /// Dedupe keys by series id, and how many there are.
    seen: Vec<SeriesSeen>,
    seen_len: usize,
    sweep_at: usize,
    /// Per aggregation: its keys and scratch.
    per_aggregation: Vec<PerAggregation>,
    /// What each epoch's snapshot holds, when the job commits.
    capture: Option<CapturePlan>,
    /// Dedupe keys this epoch added, for the snapshot delta: (series, seq, expires at).
    seen_added: Vec<(u32, u64, i64)>,
    // Scratch kept for its capacity.
    counts: Vec<u32>,
    grouped: Vec<Row>,
    keep: Vec<bool>,
}

/// What Assign keeps for one aggregation.
#[derive(Default)]
struct PerAggregation {
    /// Whether its key or filter reads the dimensions.
    uses_dims: bool,
    /// Whether its key holds the device (its windows stay on this worker).
    by_device: bool,
    /// (series, dims id) → group key (`None`: a grouped dimension is missing).
    keys: FxHashMap<(u32, u32), Option<CompactString>>,
    /// Scratch: (dims id, window slot, event time, value bits) of one series.
    run: Vec<(u32, i64, i64, u64)>,
}

/// One series' rows of an epoch, deduped (`keep`), with its names.
struct SeriesRows<'a> {
    id: u32,
    rows: &'a [Row],
    keep: &'a [bool],
    device: &'a str,
    metric: &'a str,
}

/// What an epoch's runs are built with.
struct RunContext<'a> {
    names: &'a Names,
    /// W_{e−1}: what was already final.
    wm: Option<i64>,
    lateness_ms: i64,
    worker: u32,
    workers: u32,
}

impl PerAggregation {
    /// `series`' readings of aggregation `ai` as sorted runs, each into the
    /// batch of its key's owner; what it skips into `counts`.
    fn runs(
        &mut self,
        agg: &Aggregation,
        ai: u16,
        series: &SeriesRows<'_>,
        ctx: &RunContext<'_>,
        counts: &mut AggregationCounts,
        batches: &mut [RunBatch],
    ) {
        let (names, wm) = (ctx.names, ctx.wm);
        self.run.clear();
        for (r, _) in series.rows.iter().zip(series.keep).filter(|(_, k)| **k) {
            if self.uses_dims && !agg.has_dimensions(names.dims_of(r.dims)) {
                counts.missing_dimension += 1;
                continue;
            }
            if agg.filter.is_some()
                && !agg.keeps(series.device, series.metric, r.value, names.dims_of(r.dims))
            {
                counts.filtered += 1;
                continue;
            }
            let (run, partial) = (&mut self.run, &mut counts.late_partial);
            agg.slots_of(r.ts_ms, |start| {
                if agg.slot_final(start, r.ts_ms, ctx.lateness_ms, wm) {
                    *partial += 1;
                } else {
                    run.push((r.dims, start, r.ts_ms, ordered_bits(r.value)));
                }
            });
        }
        // By (dimensions, window), each run in (ts, value) order.
        self.run.sort_unstable();
        for window in self.run.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
            let (dims, start) = (window[0].0, window[0].1);
            // A key that holds no dimension is the same for every dimension id.
            let slot = if self.uses_dims { dims } else { 0 };
            let Some(key) = self
                .keys
                .entry((series.id, slot))
                .or_insert_with(|| agg.group_key(series.device, series.metric, names.dims_of(dims)))
                .clone()
            else {
                continue;
            };
            let run: Run = window.iter().map(|&(_, _, ts, v)| (ts, v)).collect();
            // A key holding the device is owned by the device's worker: this one.
            let owner = match self.by_device {
                true => ctx.worker,
                false => agg.key_owner(&key, ctx.workers),
            } as usize;
            let head = RunHead {
                aggregation: ai,
                start,
                key,
            };
            batches[owner].runs.push((head, run));
        }
    }
}

/// See the module docs.
pub(crate) fn assign<'scope>(
    readings: Stream<'scope, Epoch, Vec<Classified>>,
    reports: Stream<'scope, Epoch, Vec<ShareReport>>,
    cfg: JobConfig,
    names: Rc<RefCell<Names>>,
    metrics: Arc<JobMetrics>,
    hooks: &StateHooks,
) -> Stream<'scope, Epoch, Vec<RunBatch>> {
    let (worker, workers) = (
        readings.scope().index() as u32,
        readings.scope().peers() as u32,
    );
    // Classify already grouped the readings by the worker of their device.
    let by_device = Exchange::new(|c: &Classified| match c {
        Classified::Readings(b) => u64::from(b.worker),
        _ => 0,
    });
    let mut builder = OperatorBuilder::new("Assign".to_owned(), readings.scope());
    let mut readings_in = builder.new_input(readings, by_device);
    let mut reports_in = builder.new_input(reports, Pipeline);
    let (runs_out, runs) = builder.new_output::<Vec<RunBatch>>();
    let mut runs_out = OutputBuilder::from(runs_out);
    let start = hooks.start;
    let capture = hooks.capture.clone();
    let first_staged = hooks.plan.first;
    let mut state = State {
        combiner: WatermarkCombiner::new(cfg.watermark),
        per_aggregation: cfg
            .aggregations
            .iter()
            .map(|a| PerAggregation {
                uses_dims: a.reads_dimensions(),
                by_device: a.device_position().is_some(),
                ..PerAggregation::default()
            })
            .collect(),
        cfg,
        worker,
        workers,
        seen: Vec::new(),
        seen_len: 0,
        sweep_at: SEEN_SWEEP_MIN,
        capture: capture.is_some().then_some(hooks.plan),
        seen_added: Vec::new(),
        counts: Vec::new(),
        grouped: Vec::new(),
        keep: Vec::new(),
    };
    if let Some(snap) = &hooks.restore {
        state.restore(snap, &mut names.borrow_mut());
    }

    builder.build(move |caps| {
        let mut caps = held_from(caps, start);
        let mut next: Epoch = start;
        let mut pending: BTreeMap<Epoch, Vec<Row>> = BTreeMap::new();
        let mut pending_reports: BTreeMap<Epoch, Vec<ShareReport>> = BTreeMap::new();
        let mut spare_rows: Vec<Vec<Row>> = Vec::new();

        move |frontiers| {
            readings_in.for_each(|time, data| {
                let rows = pending
                    .entry(crate::job::epoch_of(&time))
                    .or_insert_with(|| spare_rows.pop().unwrap_or_default());
                let mut names = names.borrow_mut();
                for c in data.drain(..) {
                    let Classified::Readings(batch) = c else {
                        continue;
                    };
                    rows.reserve(batch.len());
                    rows.extend(batch.iter().map(|r| Row {
                        ts_ms: r.ts_ms,
                        value: r.value,
                        seq: r.seq.unwrap_or_default(),
                        series: names.series_of(&r),
                        dims: names.dims_id(r.dims),
                        sequenced: r.seq.is_some(),
                    }));
                }
            });
            reports_in.for_each(|time, data| crate::job::stash(&mut pending_reports, &time, data));
            let (readings_frontier, reports_frontier) = (&frontiers[0], &frontiers[1]);
            while let Some([runs_cap]) = caps.as_deref_mut() {
                if readings_frontier.less_equal(&next) || reports_frontier.less_equal(&next) {
                    break;
                }
                let mut arrived = pending.remove(&next).unwrap_or_default();
                let reports = pending_reports.remove(&next).unwrap_or_default();
                let mut batches = state.epoch(next, &arrived, &reports, &names.borrow(), &metrics);
                arrived.clear();
                // Only vectors worth keeping, and no more than epochs in flight.
                if arrived.capacity() > 0 && spare_rows.len() <= MAX_EPOCHS_IN_FLIGHT as usize {
                    spare_rows.push(arrived);
                }
                // Replayed epochs were committed before: nothing to stage.
                if let Some(capture) = capture.as_ref().filter(|_| next >= first_staged) {
                    let snap = state.snapshot(next, &names.borrow());
                    capture.borrow_mut().put(next, snap);
                }
                if !batches.is_empty() {
                    runs_out
                        .activate()
                        .session(runs_cap)
                        .give_container(&mut batches);
                }
                if readings_frontier.frontier().is_empty()
                    && reports_frontier.frontier().is_empty()
                    && pending.is_empty()
                {
                    caps = None;
                    break;
                }
                next += 1;
                runs_cap.downgrade(&next);
            }
        }
    });
    runs
}

impl State {
    /// The restored dedupe keys and watermark inputs.
    fn restore(&mut self, snap: &WorkerSnapshot, names: &mut Names) {
        self.combiner =
            WatermarkCombiner::restored(self.cfg.watermark, &snap.reports, snap.watermark);
        for k in &snap.seen {
            let series = names.series_named(&k.series.device, &k.series.metric);
            if self.seen.len() <= series as usize {
                self.seen
                    .resize_with(series as usize + 1, SeriesSeen::default);
            }
            // Restored keys (epoch 0) are older than any epoch a run starts
            // at > 0, and at 0 nothing was restored.
            let seen = Seen {
                expires_at: k.expires_at,
                epoch: 0,
                row: 0,
            };
            self.seen[series as usize].insert(k.seq, seen);
        }
        self.seen_len = self.seen.iter().map(SeriesSeen::len).sum();
    }

    /// Epoch `epoch`'s rows: dedupe, then every aggregation's runs, by owner worker.
    fn epoch(
        &mut self,
        epoch: Epoch,
        arrived: &[Row],
        reports: &[ShareReport],
        names: &Names,
        metrics: &JobMetrics,
    ) -> Vec<RunBatch> {
        let wm_before = self.combiner.watermark();
        let mut batches: Vec<RunBatch> = (0..self.workers)
            .map(|worker| RunBatch {
                worker,
                ..RunBatch::default()
            })
            .collect();
        let groups = by_series(arrived, &mut self.counts, &mut self.grouped);
        self.keep.clear();
        self.keep.resize(self.grouped.len(), true);
        if self.seen.len() < names.series.len() {
            self.seen
                .resize_with(names.series.len(), SeriesSeen::default);
        }
        let mut duplicates = 0u64;
        let mut counts = vec![AggregationCounts::default(); self.cfg.aggregations.len()];
        let cfg = self.cfg.clone();
        let ctx = RunContext {
            names,
            wm: wm_before,
            lateness_ms: cfg.lateness_ms,
            worker: self.worker,
            workers: self.workers,
        };
        let capture = self.capture.is_some_and(|p| p.at(epoch) == Capture::Delta);
        for (series, range) in groups {
            let series_seen = &mut self.seen[series as usize];
            let before = series_seen.len();
            let rows = &self.grouped[range.clone()];
            let keep = &mut self.keep[range];
            let expiry = |ts: i64| cfg.final_everywhere_at(ts);
            let deduped = dedupe(rows, epoch, wm_before, expiry, series_seen, keep);
            self.seen_len += series_seen.len() - before;
            for (r, _) in rows.iter().zip(keep.iter()).filter(|(_, k)| **k) {
                if let (Some(seq), true) = (r.seq(), capture) {
                    self.seen_added.push((series, seq, expiry(r.ts_ms)));
                }
            }
            let (device, metric) = names.ids_of(series);
            let rows = SeriesRows {
                id: series,
                rows,
                keep,
                device: names.name(device),
                metric: names.name(metric),
            };
            // Record outcomes feed the bad-data rules' windows only, and are not readings.
            let outcomes = rows.metric == RECORD_OUTCOME_METRIC;
            if !outcomes {
                duplicates += deduped;
            }
            for (ai, (agg, per)) in cfg
                .aggregations
                .iter()
                .zip(&mut self.per_aggregation)
                .enumerate()
                .filter(|(_, (agg, _))| agg.takes_readings() != outcomes)
            {
                per.runs(agg, ai as u16, &rows, &ctx, &mut counts[ai], &mut batches);
            }
        }
        for r in reports {
            self.combiner.apply(r);
        }
        if let Some(w) = self.combiner.watermark()
            && self.seen_len >= self.sweep_at
        {
            self.seen.iter_mut().for_each(|s| s.retain_live(w));
            self.seen_len = self.seen.iter().map(SeriesSeen::len).sum();
            self.sweep_at = (2 * self.seen_len).max(SEEN_SWEEP_MIN);
        }
        metrics.duplicates.fetch_add(duplicates, Ordering::Relaxed);
        for (agg, counts) in self.cfg.aggregations.iter().zip(counts) {
            if counts != AggregationCounts::default() && agg.takes_readings() {
                metrics.add_aggregation(&agg.name, counts);
            }
        }
        batches.retain(|b| !b.runs.is_empty());
        batches
    }

    /// This epoch's snapshot of Assign's part (Collect or Emit adds the
    /// windows): the keys it added, or with checkpoints every key held at a
    /// checkpoint and none between.
    fn snapshot(&mut self, epoch: Epoch, names: &Names) -> WorkerSnapshot {
        // Keys the epoch's own watermark expired are in no state (see
        // `WorkerSnapshot::drop_closed`): on a backlog, most of them.
        let watermark = self.combiner.emitted();
        let capture = self.capture.map_or(Capture::Nothing, |p| p.at(epoch));
        if capture == Capture::Whole {
            self.seen_added.clear();
            for (series, seen) in self.seen.iter().enumerate() {
                let keys = seen
                    .iter()
                    .map(|(seq, s)| (series as u32, seq, s.expires_at));
                self.seen_added.extend(keys);
            }
        }
        self.seen_added
            .retain(|&(_, _, expires_at)| snapshot::outlives(expires_at, watermark));
        // Ordered by interned ids, not by name: one order within a run
        // without comparing strings (an epoch adds a key per reading).
        self.seen_added.sort_unstable();
        // Names once per run of one series, shared by its keys.
        let mut run: Option<(u32, Arc<snapshot::SeriesName>)> = None;
        let seen = self
            .seen_added
            .drain(..)
            .map(|(series, seq, expires_at)| {
                let name = match &run {
                    Some((id, name)) if *id == series => Arc::clone(name),
                    _ => {
                        let (device, metric) = names.ids_of(series);
                        let name = Arc::new(snapshot::SeriesName {
                            device: names.compact_name(device),
                            metric: names.compact_name(metric),
                        });
                        run = Some((series, Arc::clone(&name)));
                        name
                    }
                };
                snapshot::SeenKey {
                    series: name,
                    seq,
                    expires_at,
                }
            })
            .collect();
        WorkerSnapshot {
            format: snapshot::SNAPSHOT_FORMAT,
            epoch,
            worker: self.worker,
            workers: self.workers,
            reports: self.combiner.reports(),
            watermark,
            seen,
            windows: Vec::new(),
            alerts: Vec::new(),
            // The sink fills in the predecessor's size and checksum.
            previous: (capture == Capture::Delta).then(|| snapshot::Link {
                epoch: epoch - 1,
                bytes: 0,
                checksum: 0,
            }),
        }
    }
}
