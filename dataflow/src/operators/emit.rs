//! Emit: once the arrangement is complete through epoch e, read the windows
//! Collect named out of it, merge their runs, compute the measures.
//!
//! ```text
//!   grid window closed  ──runs, merged──▶ WindowResult(final) + the runs −1 @e+1 (fed back)
//!   grid window touched ──runs, merged──▶ WindowResult(final = false)
//!   approx aggregation's window: its digests' entries ──Digest──▶ WindowResult
//!   session key: its runs, merged; each event's span [first, last] of them
//!     ──▶ WindowResult [first, last + gap); closed ones: the runs −1 and what
//!         is left (readings of open sessions) +1 as one run @e+1
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::trace::cursor::{Cursor, cursor_list};
use differential_dataflow::trace::implementations::spine_fueled::SpineBatch;
use differential_dataflow::trace::{SpanOf, TraceReader};
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::progress::frontier::AntichainRef;

use super::windows::{Captures, Keys, StateSpine, Update, WindowEvent, WindowVal};
use crate::aggregate::{Measured, from_ordered_bits};
use crate::aggregation::{Aggregation, Window};
use crate::digest::Digest;
use crate::job::{Epoch, JobConfig, WindowResult, held_from};
use crate::metrics::{AggregationCounts, JobMetrics};
use crate::snapshot::{Capture, CapturePlan, OpenWindow};

/// What the windows of one epoch are computed with.
struct Measures {
    cfg: JobConfig,
    keys: Rc<RefCell<Keys>>,
    /// Percentile ranks per aggregation.
    ranks: Vec<Vec<f64>>,
    merged: Vec<(i64, u64)>,
    values: Vec<(i64, f64)>,
    scratch: Vec<f64>,
}

impl Measures {
    /// One key's events (all of them, sorted) with its runs and their
    /// multiplicities: results into `out`, the state's changes into `undo`
    /// (when `retract`).
    fn key(
        &mut self,
        events: &[WindowEvent],
        runs: &[(WindowVal, isize)],
        next: Epoch,
        retract: bool,
        out: &mut Vec<WindowResult>,
        undo: &mut Vec<Update>,
    ) {
        let Some(first) = events.first() else { return };
        let (agg, key, start) = first.key;
        let Some(spec) = self.cfg.aggregations.get(agg as usize) else {
            return;
        };
        self.merged.clear();
        for (run, n) in runs {
            for _ in 0..(*n).max(0) {
                self.merged.extend_from_slice(&run[..]);
            }
        }
        let group = self.keys.borrow().name(key);
        let qs = self.ranks.get(agg as usize).map_or(&[][..], Vec::as_slice);
        let closed = events.iter().any(|e| e.closed);
        if closed && retract {
            undo.extend(
                runs.iter()
                    .map(|(run, n)| ((first.key, run.clone()), next + 1, -n)),
            );
        }
        if spec.keeps_digests() {
            // Digests: grid windows only (`check` refuses approx sessions).
            if let (Window::Grid(w), Some(measured)) =
                (spec.window, Digest::of_entries(&self.merged).measured(qs))
            {
                out.push(WindowResult {
                    aggregation: agg as u16,
                    group,
                    window_start: start,
                    window_end: w.end(start),
                    measured,
                    is_final: closed,
                });
            }
            return;
        }
        // (ts, ordered bits) order is the canonical (ts, total_cmp) order;
        // a stable sort merges the sorted runs in O(n log runs).
        self.merged.sort();
        self.values.clear();
        self.values.extend(
            self.merged
                .iter()
                .map(|&(ts, b)| (ts, from_ordered_bits(b))),
        );
        let mut result = |readings: &[(i64, f64)], start: i64, end: i64, is_final: bool| {
            if let Some(measured) = Measured::of_sorted(readings, qs, &mut self.scratch) {
                out.push(WindowResult {
                    aggregation: agg as u16,
                    group: group.clone(),
                    window_start: start,
                    window_end: end,
                    measured,
                    is_final,
                });
            }
        };
        match spec.window {
            Window::Grid(w) => result(&self.values, start, w.end(start), first.closed),
            Window::Session { gap_ms } => {
                let mut keep = vec![true; self.values.len()];
                for e in events {
                    let Some((from, to)) = e.span else { continue };
                    let lo = self.values.partition_point(|r| r.0 < from);
                    let hi = self.values.partition_point(|r| r.0 <= to);
                    result(
                        &self.values[lo..hi],
                        from,
                        to.saturating_add(gap_ms),
                        e.closed,
                    );
                    if e.closed {
                        keep[lo..hi].iter_mut().for_each(|k| *k = false);
                    }
                }
                // What open sessions hold goes back in as one run.
                if closed && retract {
                    let rest: WindowVal = self
                        .merged
                        .iter()
                        .zip(&keep)
                        .filter(|(_, k)| **k)
                        .map(|(r, _)| *r)
                        .collect();
                    if !rest.is_empty() {
                        undo.push(((first.key, rest), next + 1, 1));
                    }
                }
            }
        }
    }
}

/// The whole window state through the epoch just emitted, as a snapshot's
/// open windows: every key's runs the trace holds, readings sorted. Windows
/// that epoch closed are still there (their retractions come an epoch
/// later); the stager drops what the watermark closed, as from a delta.
fn open_windows(trace: &mut TraceAgent<StateSpine>, keys: &Keys) -> Vec<OpenWindow> {
    let Some(batches) = trace.batches_through(AntichainRef::new(&[])) else {
        unreachable!("the window-state trace refused a cursor over all of it")
    };
    let (mut cursor, storage) = cursor_list(batches);
    let mut windows = Vec::new();
    while let Some(&(aggregation, id, start)) = cursor.get_key(&storage) {
        let mut readings: Vec<(i64, u64)> = Vec::new();
        for_each_run(&mut cursor, &storage, |run, n| {
            for _ in 0..n.max(0) {
                let bits = run
                    .iter()
                    .map(|&(ts, b)| (ts, from_ordered_bits(b).to_bits()));
                readings.extend(bits);
            }
        });
        if !readings.is_empty() {
            readings.sort_unstable();
            windows.push(OpenWindow {
                aggregation: aggregation as u16,
                key: keys.name(id),
                start,
                readings,
            });
        }
        cursor.step_key(&storage);
    }
    windows.sort_unstable_by(OpenWindow::snapshot_order);
    windows
}

/// `f` over each run the trace holds at the cursor's key, with its
/// multiplicity through every time (runs that sum to nothing left out).
fn for_each_run<C>(cursor: &mut C, storage: &C::Storage, mut f: impl FnMut(&WindowVal, isize))
where
    C: for<'a> Cursor<Val<'a> = &'a WindowVal, DiffGat<'a> = &'a isize>,
{
    while let Some(run) = cursor.get_val(storage) {
        let mut n: isize = 0;
        cursor.map_times(storage, |_, d| n += *d);
        if n != 0 {
            f(run, n);
        }
        cursor.step_val(storage);
    }
}

/// Counts an epoch's results in the job's metrics: final windows per
/// aggregation, and updates. A bad-data rule's windows are the rule's, not
/// the job's output.
fn count_emitted(metrics: &JobMetrics, aggregations: &[Aggregation], out: &[WindowResult]) {
    let mut per: Vec<u64> = vec![0; aggregations.len()];
    for r in out.iter().filter(|r| r.is_final) {
        if let Some(n) = per.get_mut(usize::from(r.aggregation)) {
            *n += 1;
        }
    }
    let mut finals = 0;
    for (agg, windows) in aggregations.iter().zip(per) {
        if windows > 0 && agg.takes_readings() {
            finals += windows;
            let counts = AggregationCounts {
                windows,
                ..AggregationCounts::default()
            };
            metrics.add_aggregation(&agg.name, counts);
        }
    }
    metrics.windows_emitted.fetch_add(finals, Ordering::Relaxed);
    let updates = out.iter().filter(|r| !r.is_final).count() as u64;
    metrics
        .updates_emitted
        .fetch_add(updates, Ordering::Relaxed);
}

/// Where Emit starts, and where it leaves the whole window state when the
/// plan says so.
pub(super) struct EmitHooks {
    pub start: Epoch,
    pub capture: Option<(Captures, CapturePlan)>,
}

/// See the module docs.
pub(super) fn emit<'scope>(
    events: Stream<'scope, Epoch, Vec<WindowEvent>>,
    batches: Stream<'scope, Epoch, Vec<SpanOf<TraceAgent<StateSpine>>>>,
    trace: TraceAgent<StateSpine>,
    cfg: JobConfig,
    keys: Rc<RefCell<Keys>>,
    metrics: Arc<JobMetrics>,
    hooks: EmitHooks,
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

    let EmitHooks { start, capture } = hooks;
    builder.build(move |caps| {
        let mut caps = held_from(caps, start);
        let mut trace = Some(trace);
        let mut next: Epoch = start;
        let mut pending: BTreeMap<Epoch, Vec<WindowEvent>> = BTreeMap::new();
        let mut measures = Measures {
            ranks: cfg
                .aggregations
                .iter()
                .map(|a| a.percentile_ranks())
                .collect(),
            cfg,
            keys,
            merged: Vec::new(),
            values: Vec::new(),
            scratch: Vec::new(),
        };
        let mut runs: Vec<(WindowVal, isize)> = Vec::new();
        let mut state_len: i64 = 0;

        move |frontiers| {
            events_in.for_each(|time, data| crate::job::stash(&mut pending, &time, data));
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
                    for events in window_events.chunk_by(|a, b| a.key == b.key) {
                        let key = events[0].key;
                        cursor.seek_key(&storage, &key);
                        if cursor.get_key(&storage) != Some(&key) {
                            continue;
                        }
                        runs.clear();
                        for_each_run(&mut cursor, &storage, |run, n| {
                            runs.push((run.clone(), n));
                        });
                        measures.key(events, &runs, next, retract, &mut out, &mut undo);
                    }
                }
                count_emitted(&metrics, &measures.cfg.aggregations, &out);
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
                if let Some((capture, plan)) = &capture
                    && plan.at(next) == Capture::Whole
                {
                    let windows = open_windows(tr, &measures.keys.borrow());
                    capture.borrow_mut().add_windows(next, windows);
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
