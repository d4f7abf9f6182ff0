//! Collect, on the worker that owns each group key: the runs of every
//! aggregation into the window-state arrangement, and each window's
//! lifecycle (open, touched, final) under the watermark.
//!
//! ```text
//!   RunBatch@e (exchanged by key owner) ──▶ intern (aggregation, key)
//!     grid:    window (aggregation, key, start) opens, due at end + lateness
//!     session: the key's sessions take each reading's time (joining, merging),
//!              due at the first session's last reading + gap + lateness
//!     ──▶ ((aggregation, key, start | SESSION_SLOT), run) +1 @e ──▶ arrangement
//!     approx aggregations: one epoch's runs of a window as one digest (crate::digest)
//!   apply reports of e → W_e ──▶ WindowEvents: closed (due ≤ W_e), touched (updates mode)
//!   snapshot delta of e: the runs e added
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use rustc_hash::{FxHashMap, FxHashSet};
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use super::assign::{RunBatch, RunHead};
use super::windows::{Keys, Update, WindowEvent, WindowKey, WindowVal};
use crate::aggregate::{from_ordered_bits, ordered_bits};
use crate::aggregation::Window;
use crate::digest::Digest;
use crate::job::{EmitMode, Epoch, JobConfig, StateHooks, held_from};
use crate::session::Sessions;
use crate::snapshot::{Capture, OpenWindow};
use crate::watermark::{ShareReport, WatermarkCombiner};

/// The windows open on this worker and when they close.
struct Lifecycle {
    cfg: JobConfig,
    /// Open grid windows.
    open: FxHashSet<WindowKey>,
    /// Grid windows by the watermark that finalizes them; session keys by
    /// when their first session may (checked again when due: sessions grow).
    closing: BTreeMap<i64, Vec<WindowKey>>,
    sessions: FxHashMap<WindowKey, Sessions>,
    touched: FxHashSet<WindowKey>,
}

impl Lifecycle {
    fn new(cfg: JobConfig) -> Self {
        Self {
            cfg,
            open: FxHashSet::default(),
            closing: BTreeMap::new(),
            sessions: FxHashMap::default(),
            touched: FxHashSet::default(),
        }
    }

    /// `run` (sorted (ts, value bits)) arrived for window `key`.
    fn add(&mut self, key: WindowKey, run: &[(i64, u64)]) {
        let Some(agg) = self.cfg.aggregations.get(key.0 as usize) else {
            return;
        };
        let lateness = self.cfg.lateness_ms;
        match agg.window {
            Window::Grid(w) => {
                if self.open.insert(key) {
                    let due = w.end(key.2).saturating_add(lateness);
                    self.closing.entry(due).or_default().push(key);
                }
            }
            Window::Session { gap_ms } => {
                let sessions = self.sessions.entry(key).or_default();
                let before = sessions.next_close(gap_ms, lateness);
                for &(ts, _) in run {
                    sessions.add(ts, gap_ms);
                }
                let after = sessions.next_close(gap_ms, lateness);
                if let Some(due) = after.filter(|_| after != before) {
                    self.closing.entry(due).or_default().push(key);
                }
            }
        }
        if agg.emit == EmitMode::Updates {
            self.touched.insert(key);
        }
    }

    /// Everything final under `wm` as closed events, then what changed as touched ones.
    fn events(&mut self, wm: Option<i64>) -> Vec<WindowEvent> {
        let mut events = Vec::new();
        if let Some(w) = wm {
            while let Some(entry) = self.closing.first_entry() {
                if *entry.key() > w {
                    break;
                }
                for key in entry.remove() {
                    self.close(key, w, &mut events);
                }
            }
        }
        for key in std::mem::take(&mut self.touched) {
            match self.sessions.get(&key) {
                Some(s) => events.extend(s.spans().map(|span| WindowEvent {
                    key,
                    closed: false,
                    span: Some(span),
                })),
                None if self.open.contains(&key) => events.push(WindowEvent {
                    key,
                    closed: false,
                    span: None,
                }),
                None => {}
            }
        }
        events
    }

    fn close(&mut self, key: WindowKey, wm: i64, events: &mut Vec<WindowEvent>) {
        let Some(agg) = self.cfg.aggregations.get(key.0 as usize) else {
            return;
        };
        match agg.window {
            Window::Grid(_) => {
                if self.open.remove(&key) {
                    self.touched.remove(&key);
                    events.push(WindowEvent {
                        key,
                        closed: true,
                        span: None,
                    });
                }
            }
            Window::Session { gap_ms } => {
                let lateness = self.cfg.lateness_ms;
                let Some(sessions) = self.sessions.get_mut(&key) else {
                    return;
                };
                for span in sessions.close(gap_ms, lateness, wm) {
                    events.push(WindowEvent {
                        key,
                        closed: true,
                        span: Some(span),
                    });
                }
                match sessions.next_close(gap_ms, lateness) {
                    Some(due) => self.closing.entry(due).or_default().push(key),
                    None => {
                        self.sessions.remove(&key);
                        self.touched.remove(&key);
                    }
                }
            }
        }
    }
}

/// See the module docs.
pub(super) fn collect<'scope>(
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
            plan,
        } = hooks;
        let mut caps = held_from(caps, start);
        let mut next: Epoch = start;
        let mut pending: BTreeMap<Epoch, Vec<RunBatch>> = BTreeMap::new();
        let mut pending_reports: BTreeMap<Epoch, Vec<ShareReport>> = BTreeMap::new();
        let mut combiner = WatermarkCombiner::new(cfg.watermark);
        let mut life = Lifecycle::new(cfg.clone());
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
                let mut readings: Vec<(i64, u64)> = w
                    .readings
                    .iter()
                    .map(|&(ts, bits)| (ts, ordered_bits(f64::from_bits(bits))))
                    .collect();
                readings.sort_unstable();
                // A chain of deltas holds a digest per epoch: one is enough.
                if cfg.keeps_digests(w.aggregation) {
                    readings = Digest::of_entries(&readings).entries();
                }
                life.add(key, &readings);
                restored.push(((key, readings.into()), start, 1));
            }
            // Restoring touches nothing: updates report what epochs change.
            life.touched.clear();
        }

        move |frontiers| {
            runs_in.for_each(|time, data| crate::job::stash(&mut pending, &time, data));
            reports_in.for_each(|time, data| crate::job::stash(&mut pending_reports, &time, data));
            let (runs_frontier, reports_frontier) = (&frontiers[0], &frontiers[1]);
            while let Some([updates_cap, events_cap]) = caps.as_deref_mut() {
                if runs_frontier.less_equal(&next) || reports_frontier.less_equal(&next) {
                    break;
                }
                let mut out: Vec<Update> = std::mem::take(&mut restored);
                // Deltas only: a whole capture Emit reads out of the arrangement.
                let delta = capture.as_ref().filter(|_| plan.at(next) == Capture::Delta);
                let mut batches = pending.remove(&next).unwrap_or_default();
                // One order of runs whatever order the workers' batches came in:
                // sessions merge the same way, snapshots have the same bytes.
                batches.sort_unstable_by_key(|b| b.worker);
                {
                    let mut keys = keys.borrow_mut();
                    // An approx aggregation's runs of one window, as one digest.
                    let mut digests: BTreeMap<WindowKey, (RunHead, Digest)> = BTreeMap::new();
                    let mut add = |key: WindowKey, head: RunHead, run: WindowVal| {
                        life.add(key, &run);
                        if delta.is_some() {
                            opened.push(OpenWindow {
                                aggregation: head.aggregation,
                                key: head.key,
                                start: head.start,
                                readings: run
                                    .iter()
                                    .map(|&(ts, b)| (ts, from_ordered_bits(b).to_bits()))
                                    .collect(),
                            });
                        }
                        out.push(((key, run), next, 1));
                    };
                    for batch in batches {
                        for (head, run) in batch.runs {
                            let key = (
                                u32::from(head.aggregation),
                                keys.id(head.aggregation, &head.key),
                                head.start,
                            );
                            if cfg.keeps_digests(head.aggregation) {
                                let digest =
                                    &mut digests.entry(key).or_insert((head, Digest::default())).1;
                                run.iter().for_each(|&(ts, b)| digest.add(ts, b));
                            } else {
                                add(key, head, run);
                            }
                        }
                    }
                    for (key, (head, digest)) in digests {
                        add(key, head, digest.entries().into());
                    }
                }
                for r in pending_reports.remove(&next).unwrap_or_default() {
                    combiner.apply(&r);
                }
                let mut window_events = life.events(combiner.watermark());
                if let Some(capture) = delta {
                    opened.sort_unstable_by(OpenWindow::snapshot_order);
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
