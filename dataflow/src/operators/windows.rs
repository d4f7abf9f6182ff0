//! Windows, on the worker that owns each group key: collect the runs of
//! every aggregation into a differential arrangement, emit windows when the
//! frontier and the watermark say so.
//!
//! ```text
//!   ReadingBatch@e ──exchange (device)──▶ Assign (dedupe, filters, keys, runs; assign.rs)
//!     ──RunBatch──exchange (key owner)──▶ Collect
//!       ((aggregation, key, start), sorted run) +1 @e ──▶ WindowState arrangement
//!       apply reports of e → W_e
//!         ──▶ WindowEvent @e: closed (end + lateness ≤ W_e) / touched (updates mode)
//!   Emit @e, once the arrangement is complete through e:
//!     closed ──runs from the trace, merged──▶ WindowResult(final) + the runs −1 @e+1 (fed back)
//!     touched ──runs from the trace, merged──▶ WindowResult(final = false)
//! ```
//!
//! The arrangement is the window state: it is sharded by key owner (a key
//! holding the device stays on the device's worker), it compacts as epochs
//! complete, and the retraction of a closed window makes the trace forget it.
//! A window's runs merge into (event time, `total_cmp`) order, the canonical
//! order of [`Measured::of_sorted`], so results are bit-identical however
//! readings were spread over workers and epochs.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use compact_str::CompactString;
use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::operators::arrange::arrangement::arrange_core;
use differential_dataflow::trace::cursor::{Cursor, cursor_list};
use differential_dataflow::trace::implementations::spine_fueled::SpineBatch;
use differential_dataflow::trace::implementations::{ValBatcher, ValSpine};
use differential_dataflow::trace::{SpanOf, TraceReader};
use rustc_hash::{FxHashMap, FxHashSet};
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::core::{Concat, ConnectLoop, Feedback};
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::progress::frontier::AntichainRef;

use super::assign::{RunBatch, assign};
use super::names::Names;
pub use super::names::device_owner;
use crate::aggregate::{Measured, from_ordered_bits, ordered_bits};
use crate::job::{Classified, EmitMode, Epoch, JobConfig, StateHooks, WindowResult, held_from};
use crate::metrics::JobMetrics;
use crate::snapshot::{OpenWindow, WorkerSnapshot};
use crate::watermark::{ShareReport, WatermarkCombiner};

/// (aggregation, group key id, window start), key ids from this worker's [`Keys`].
type WindowKey = (u32, u32, i64);
/// One epoch's readings of one window from one worker: (event time,
/// [`ordered_bits`] of the value), sorted. Runs, not single readings, are the
/// arrangement's values: an update per window and epoch instead of one per
/// reading, so sorting and merging batches costs a fraction as much.
///
/// Shared, so the copies the arrangement's merges and a closed window's
/// retraction make are reference counts, not allocations.
type WindowVal = Arc<[(i64, u64)]>;
type Update = ((WindowKey, WindowVal), Epoch, isize);
type StateSpine = ValSpine<WindowKey, WindowVal, Epoch, isize>;

/// Each epoch's snapshot of this worker: Assign's part (reports, watermark,
/// the dedupe keys the epoch added) and Collect's (the window readings it
/// added), a delta on the epoch before, or whole at the first epoch of a run
/// (which re-adds everything restored). A sink takes it and links the chain.
#[derive(Debug, Default)]
pub struct Snapshots {
    ready: BTreeMap<Epoch, WorkerSnapshot>,
    windows: BTreeMap<Epoch, Vec<OpenWindow>>,
}

impl Snapshots {
    /// Assign's part of `epoch`.
    pub(crate) fn put(&mut self, epoch: Epoch, snapshot: WorkerSnapshot) {
        self.ready.insert(epoch, snapshot);
    }

    /// Collect's part of `epoch`.
    fn add_windows(&mut self, epoch: Epoch, windows: Vec<OpenWindow>) {
        self.windows.entry(epoch).or_default().extend(windows);
    }

    /// The snapshot of `epoch`, once this worker's operators finished it.
    pub fn take(&mut self, epoch: Epoch) -> Option<WorkerSnapshot> {
        let mut snap = self.ready.remove(&epoch)?;
        snap.windows = self.windows.remove(&epoch).unwrap_or_default();
        Some(snap)
    }
}

/// Where a worker's operators leave their snapshots; shared by one worker's operators.
pub type Captures = Rc<RefCell<Snapshots>>;

/// What Collect tells Emit about a window at an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct WindowEvent {
    key: WindowKey,
    /// Final under this epoch's watermark; otherwise it changed and stays open.
    closed: bool,
}

/// The group keys of every aggregation on this worker, interned.
#[derive(Default)]
struct Keys {
    ids: FxHashMap<(u16, CompactString), u32>,
    names: Vec<CompactString>,
}

impl Keys {
    fn id(&mut self, aggregation: u16, key: &CompactString) -> u32 {
        if let Some(&id) = self.ids.get(&(aggregation, key.clone())) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(key.clone());
        self.ids.insert((aggregation, key.clone()), id);
        id
    }

    fn name(&self, id: u32) -> CompactString {
        self.names.get(id as usize).cloned().unwrap_or_default()
    }
}

/// Makes `key` open, and due to close at its aggregation's close time, if it was not yet.
fn track(
    cfg: &JobConfig,
    key: WindowKey,
    open: &mut FxHashSet<WindowKey>,
    closing: &mut BTreeMap<i64, Vec<WindowKey>>,
) {
    if open.insert(key)
        && let Some(agg) = cfg.aggregations.get(key.0 as usize)
    {
        closing
            .entry(cfg.close_at(agg, key.2))
            .or_default()
            .push(key);
    }
}

/// See the module docs.
pub fn windows<'scope>(
    readings: Stream<'scope, Epoch, Vec<Classified>>,
    reports: Stream<'scope, Epoch, Vec<ShareReport>>,
    cfg: JobConfig,
    metrics: Arc<JobMetrics>,
    hooks: StateHooks,
) -> Stream<'scope, Epoch, Vec<WindowResult>> {
    let scope = readings.scope();
    let names = Rc::new(RefCell::new(Names::default()));
    let keys = Rc::new(RefCell::new(Keys::default()));
    let start = hooks.start;
    let runs = assign(
        readings,
        reports.clone(),
        cfg.clone(),
        names,
        Arc::clone(&metrics),
        &hooks,
    );
    let (updates, events) = collect(runs, reports, cfg.clone(), Rc::clone(&keys), hooks);
    let (retract_handle, retractions) = scope.feedback::<Vec<Update>>(1);
    // Pipeline: Collect is already on the key's worker, and the ids are per worker.
    let state = arrange_core::<_, _, ValBatcher<WindowKey, WindowVal, Epoch, isize>, StateSpine>(
        updates.concat(retractions),
        Pipeline,
        "WindowState",
        ValBatcher::new,
    );
    let (results, retractions) = emit(events, state.stream, state.trace, cfg, keys, metrics, start);
    retractions.connect_loop(retract_handle);
    results
}

/// The window lifecycle on the key's worker: runs in, state updates and
/// window events out; see the module docs.
fn collect<'scope>(
    runs: Stream<'scope, Epoch, Vec<RunBatch>>,
    reports: Stream<'scope, Epoch, Vec<ShareReport>>,
    cfg: JobConfig,
    keys: Rc<RefCell<Keys>>,
    hooks: StateHooks,
) -> (
    Stream<'scope, Epoch, Vec<Update>>,
    Stream<'scope, Epoch, Vec<WindowEvent>>,
) {
    let by_owner = Exchange::new(|b: &RunBatch| u64::from(b.worker));
    let mut builder = OperatorBuilder::new("Collect".to_owned(), runs.scope());
    let mut runs_in = builder.new_input(runs, by_owner);
    let mut reports_in = builder.new_input(reports, Pipeline);
    let (updates_out, updates) = builder.new_output::<Vec<Update>>();
    let (events_out, events) = builder.new_output::<Vec<WindowEvent>>();
    let mut updates_out = OutputBuilder::from(updates_out);
    let mut events_out = OutputBuilder::from(events_out);

    builder.build(move |caps| {
        let StateHooks {
            start,
            restore,
            capture,
        } = hooks;
        let mut caps = held_from(caps, start);
        let mut next: Epoch = start;
        let mut pending: BTreeMap<Epoch, Vec<RunBatch>> = BTreeMap::new();
        let mut pending_reports: BTreeMap<Epoch, Vec<ShareReport>> = BTreeMap::new();
        let mut combiner = WatermarkCombiner::new(cfg.watermark);
        let mut open: FxHashSet<WindowKey> = FxHashSet::default();
        // Open windows by the watermark that finalizes them: end + lateness.
        let mut closing: BTreeMap<i64, Vec<WindowKey>> = BTreeMap::new();
        let mut touched: FxHashSet<WindowKey> = FxHashSet::default();
        // The restored windows' readings enter the arrangement at the first epoch.
        let mut restored: Vec<Update> = Vec::new();
        let mut opened: Vec<OpenWindow> = Vec::new();
        if let Some(snap) = restore {
            combiner = WatermarkCombiner::restored(cfg.watermark, &snap.reports, snap.watermark);
            let mut keys = keys.borrow_mut();
            for w in snap.windows {
                let key = (
                    u32::from(w.aggregation),
                    keys.id(w.aggregation, &w.key),
                    w.start,
                );
                track(&cfg, key, &mut open, &mut closing);
                let mut readings: Vec<(i64, u64)> = w
                    .readings
                    .iter()
                    .map(|&(ts, bits)| (ts, ordered_bits(f64::from_bits(bits))))
                    .collect();
                readings.sort_unstable();
                if capture.is_some() {
                    opened.push(OpenWindow {
                        readings: w.readings,
                        ..w
                    });
                }
                restored.push(((key, readings.into()), start, 1));
            }
        }

        move |frontiers| {
            runs_in.for_each(|time, data| {
                pending
                    .entry(crate::job::epoch_of(&time))
                    .or_default()
                    .append(data)
            });
            reports_in.for_each(|time, data| {
                pending_reports
                    .entry(crate::job::epoch_of(&time))
                    .or_default()
                    .append(data)
            });
            let (runs_frontier, reports_frontier) = (&frontiers[0], &frontiers[1]);
            while let Some([updates_cap, events_cap]) = caps.as_deref_mut() {
                if runs_frontier.less_equal(&next) || reports_frontier.less_equal(&next) {
                    break;
                }
                let mut out: Vec<Update> = std::mem::take(&mut restored);
                {
                    let mut keys = keys.borrow_mut();
                    for batch in pending.remove(&next).unwrap_or_default() {
                        for (head, run) in batch.runs() {
                            let key = (
                                u32::from(head.aggregation),
                                keys.id(head.aggregation, &head.key),
                                head.start,
                            );
                            track(&cfg, key, &mut open, &mut closing);
                            let emit = cfg
                                .aggregations
                                .get(head.aggregation as usize)
                                .map(|a| a.emit);
                            if emit == Some(EmitMode::Updates) {
                                touched.insert(key);
                            }
                            if capture.is_some() {
                                opened.push(OpenWindow {
                                    aggregation: head.aggregation,
                                    key: head.key.clone(),
                                    start: head.start,
                                    readings: run
                                        .iter()
                                        .map(|&(ts, b)| (ts, from_ordered_bits(b).to_bits()))
                                        .collect(),
                                });
                            }
                            out.push(((key, run.into()), next, 1));
                        }
                    }
                }
                for r in pending_reports.remove(&next).unwrap_or_default() {
                    combiner.apply(&r);
                }
                let mut window_events: Vec<WindowEvent> = Vec::new();
                if let Some(w) = combiner.watermark() {
                    while let Some(entry) = closing.first_entry() {
                        if *entry.key() > w {
                            break;
                        }
                        for key in entry.remove() {
                            open.remove(&key);
                            touched.remove(&key);
                            window_events.push(WindowEvent { key, closed: true });
                        }
                    }
                }
                window_events.extend(
                    touched
                        .drain()
                        .map(|key| WindowEvent { key, closed: false }),
                );
                if let Some(capture) = &capture {
                    // One order within a run, whatever the arrival order of batches.
                    opened.sort_unstable_by(|a, b| {
                        (a.aggregation, &a.key, a.start)
                            .cmp(&(b.aggregation, &b.key, b.start))
                            .then_with(|| a.readings.cmp(&b.readings))
                    });
                    capture
                        .borrow_mut()
                        .add_windows(next, std::mem::take(&mut opened));
                }
                if !out.is_empty() {
                    updates_out
                        .activate()
                        .session(updates_cap)
                        .give_container(&mut out);
                }
                if !window_events.is_empty() {
                    events_out
                        .activate()
                        .session(events_cap)
                        .give_container(&mut window_events);
                }
                if runs_frontier.frontier().is_empty()
                    && reports_frontier.frontier().is_empty()
                    && pending.is_empty()
                {
                    caps = None;
                    break;
                }
                next += 1;
                updates_cap.downgrade(&next);
                events_cap.downgrade(&next);
            }
        }
    });
    (updates, events)
}

/// Reads closed and touched windows out of the arrangement; see the module docs.
fn emit<'scope>(
    events: Stream<'scope, Epoch, Vec<WindowEvent>>,
    batches: Stream<'scope, Epoch, Vec<SpanOf<TraceAgent<StateSpine>>>>,
    trace: TraceAgent<StateSpine>,
    cfg: JobConfig,
    keys: Rc<RefCell<Keys>>,
    metrics: Arc<JobMetrics>,
    start: Epoch,
) -> (
    Stream<'scope, Epoch, Vec<WindowResult>>,
    Stream<'scope, Epoch, Vec<Update>>,
) {
    let mut builder = OperatorBuilder::new("Emit".to_owned(), events.scope());
    let mut events_in = builder.new_input(events, Pipeline);
    // Only its frontier matters: past e, the trace holds every update of e.
    let mut batches_in = builder.new_input(batches, Pipeline);
    let (results_out, results) = builder.new_output::<Vec<WindowResult>>();
    let (retract_out, retractions) = builder.new_output::<Vec<Update>>();
    let mut results_out = OutputBuilder::from(results_out);
    let mut retract_out = OutputBuilder::from(retract_out);

    builder.build(move |caps| {
        let mut caps = held_from(caps, start);
        let mut trace = Some(trace);
        let mut next: Epoch = start;
        let mut pending: BTreeMap<Epoch, Vec<WindowEvent>> = BTreeMap::new();
        let mut values: Vec<(i64, f64)> = Vec::new();
        let mut scratch: Vec<f64> = Vec::new();
        let ranks: Vec<Vec<f64>> = cfg
            .aggregations
            .iter()
            .map(|a| a.percentile_ranks())
            .collect();
        let mut merged: Vec<(i64, u64)> = Vec::new();
        let mut state_len: i64 = 0;

        move |frontiers| {
            events_in.for_each(|time, data| {
                pending
                    .entry(crate::job::epoch_of(&time))
                    .or_default()
                    .append(data)
            });
            batches_in.for_each(|_, _| {});
            let (events_frontier, batches_frontier) = (&frontiers[0], &frontiers[1]);
            while let (Some([results_cap, retract_cap]), Some(tr)) =
                (caps.as_deref_mut(), trace.as_mut())
            {
                if events_frontier.less_equal(&next) || batches_frontier.less_equal(&next) {
                    break;
                }
                let mut window_events = pending.remove(&next).unwrap_or_default();
                // Nothing reads the state after the last epoch: forgetting it is wasted work.
                let retract = !(events_frontier.frontier().is_empty() && pending.is_empty());
                let mut out: Vec<WindowResult> = Vec::new();
                let mut undo: Vec<Update> = Vec::new();
                if !window_events.is_empty() {
                    window_events.sort_unstable();
                    // Everything through `next` is in the trace; no update is later (we
                    // hold the capability for the only input that could add one).
                    let Some(batches) = tr.batches_through(AntichainRef::new(&[])) else {
                        // The empty upper is beyond every compaction frontier we set.
                        unreachable!("the window-state trace refused a cursor over all of it")
                    };
                    let (mut cursor, storage) = cursor_list(batches);
                    let keys = keys.borrow();
                    for ev in window_events {
                        cursor.seek_key(&storage, &ev.key);
                        if cursor.get_key(&storage) != Some(&ev.key) {
                            continue;
                        }
                        merged.clear();
                        while let Some(run) = cursor.get_val(&storage) {
                            let mut n: isize = 0;
                            cursor.map_times(&storage, |_, d| n += *d);
                            for _ in 0..n.max(0) {
                                merged.extend_from_slice(&run[..]);
                            }
                            if ev.closed && retract && n != 0 {
                                undo.push(((ev.key, run.clone()), next + 1, -n));
                            }
                            cursor.step_val(&storage);
                        }
                        // (ts, ordered bits) order is the canonical (ts, total_cmp) order;
                        // a stable sort merges the sorted runs in O(n log runs).
                        merged.sort();
                        values.clear();
                        values.extend(merged.iter().map(|&(ts, b)| (ts, from_ordered_bits(b))));
                        let (agg, key, start) = ev.key;
                        let (Some(spec), Some(qs)) =
                            (cfg.aggregations.get(agg as usize), ranks.get(agg as usize))
                        else {
                            continue;
                        };
                        if let Some(measured) = Measured::of_sorted(&values, qs, &mut scratch) {
                            out.push(WindowResult {
                                aggregation: agg as u16,
                                group: keys.name(key),
                                window_start: start,
                                window_end: spec.window.end(start),
                                measured,
                                is_final: ev.closed,
                            });
                        }
                    }
                }
                let finals = out.iter().filter(|r| r.is_final).count() as u64;
                metrics.windows_emitted.fetch_add(finals, Ordering::Relaxed);
                metrics
                    .updates_emitted
                    .fetch_add(out.len() as u64 - finals, Ordering::Relaxed);
                if !out.is_empty() {
                    // Unordered: workers interleave anyway; sinks sort by key.
                    results_out
                        .activate()
                        .session(results_cap)
                        .give_container(&mut out);
                }
                if !undo.is_empty() {
                    retract_out
                        .activate()
                        .session(retract_cap)
                        .give_container(&mut undo);
                }
                next += 1;
                tr.set_logical_compaction(AntichainRef::new(&[next]));
                tr.set_physical_compaction(AntichainRef::new(&[next]));
                let mut held = 0usize;
                tr.map_spans(|s| held += s.inner.as_ref().map_or(0, |b| b.len()));
                metrics
                    .window_state_updates
                    .fetch_add(held as i64 - state_len, Ordering::Relaxed);
                metrics
                    .window_state_peak
                    .fetch_max(held as u64, Ordering::Relaxed);
                state_len = held as i64;
                if events_frontier.frontier().is_empty() && pending.is_empty() {
                    caps = None;
                    trace = None;
                    break;
                }
                results_cap.downgrade(&next);
                retract_cap.downgrade(&next);
            }
        }
    });
    (results, retractions)
}
