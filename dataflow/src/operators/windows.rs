//! Windows: dedupe, keep each window's readings in a differential arrangement,
//! emit windows when the frontier and the watermark say so.
//!
//! ```text
//!   ReadingBatch@e (Classify grouped the readings by device worker) ──exchange──▶ Assign
//!     (device, seq, metric) seen and not expired? ──▶ duplicate, dropped
//!     each window of its event time still open under W_{e−1}
//!       ──▶ ((device, metric, start), sorted run of (ts, value)) +1 @e ──▶ WindowState arrangement
//!     apply reports of e → W_e
//!       ──▶ WindowEvent @e: closed (end + lateness ≤ W_e) / touched (updates mode)
//!   Emit @e, once the arrangement is complete through e:
//!     closed ──runs from the trace, merged──▶ WindowResult(final) + the runs −1 @e+1 (fed back)
//!     touched ──runs from the trace, merged──▶ WindowResult(final = false)
//! ```
//!
//! The arrangement is the window state: it is sharded like the readings (by
//! device, so it can use the workers' interned names), it compacts as epochs
//! complete, and the retraction of a closed window makes the trace forget it.
//! A window's runs merge into (event time, `total_cmp`) order, the canonical
//! order of [`Stats::of_sorted`], so results are bit-identical however
//! readings were spread over workers and epochs.
//!
//! Of copies with the same (device, seq, metric) the one from the earliest
//! epoch survives, and within an epoch the smallest (event time, value), so
//! even conflicting copies (not producer retries) give the same output in any
//! arrival order. Dedupe entries are dropped once every window their event
//! time belongs to is final: a later copy is then judged `late` upstream.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Range;
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

use crate::aggregate::{Stats, from_ordered_bits, ordered_bits};
use crate::job::{
    BatchReading, Classified, EmitMode, Epoch, JobConfig, MAX_EPOCHS_IN_FLIGHT, StateHooks,
    WindowResult, held_from,
};
use crate::metrics::JobMetrics;
use crate::snapshot::{self, WorkerSnapshot};
use crate::watermark::{ShareReport, WatermarkCombiner};

/// (device id, metric id, window start), ids from this worker's [`Names`].
type WindowKey = (u32, u32, i64);
/// One epoch's readings of one window on one worker: (event time,
/// [`ordered_bits`] of the value), sorted. Runs, not single readings, are the
/// arrangement's values: an update per window and epoch instead of one per
/// reading, so sorting and merging batches costs a fraction as much.
///
/// Shared, so the copies the arrangement's merges and a closed window's
/// retraction make are reference counts, not allocations.
type WindowVal = Arc<[(i64, u64)]>;
type Update = ((WindowKey, WindowVal), Epoch, isize);
type StateSpine = ValSpine<WindowKey, WindowVal, Epoch, isize>;

/// One accepted reading on its device's worker, its (device, metric) interned.
#[derive(Debug, Clone, Copy, Default)]
struct Row {
    ts_ms: i64,
    value: f64,
    /// Meaningful if `sequenced`: 32 bytes, not the 40 of an `Option`.
    seq: u64,
    series: u32,
    sequenced: bool,
}

impl Row {
    fn seq(&self) -> Option<u64> {
        self.sequenced.then_some(self.seq)
    }
}

/// Where the surviving copy of a dedupe key came from: an earlier epoch, or
/// row `row` of its series' rows in epoch `epoch` (which may still lose to a
/// smaller copy of it);
/// and when the key expires: once the watermark reaches `expires_at`, every
/// window of that copy is final and the key counts as absent.
#[derive(Debug, Clone, Copy)]
struct Seen {
    expires_at: i64,
    epoch: Epoch,
    row: u32,
}

/// Expired dedupe keys are dropped in one sweep once the tables have grown to
/// twice what was live at the last sweep, and at least this many.
const SEEN_SWEEP_MIN: usize = 4096;

/// One series' dedupe keys (seq → [`Seen`]). Devices count seq up, so a new
/// key is nearly always above every other: it is appended to a vector kept
/// in seq order, where a copy finds it by binary search. A new key below
/// the largest goes to a map, so no order of arrival costs more than a hash.
#[derive(Debug, Default, Clone)]
struct SeriesSeen {
    ascending: Vec<(u64, Seen)>,
    others: FxHashMap<u64, Seen>,
    /// At least every key held; keys above it are absent.
    max: Option<u64>,
}

impl SeriesSeen {
    fn len(&self) -> usize {
        self.ascending.len() + self.others.len()
    }

    fn get_mut(&mut self, seq: u64) -> Option<&mut Seen> {
        if self.max.is_none_or(|m| seq > m) {
            return None;
        }
        match self.ascending.binary_search_by_key(&seq, |e| e.0) {
            Ok(i) => Some(&mut self.ascending[i].1),
            Err(_) => self.others.get_mut(&seq),
        }
    }

    /// Adds `seq`, which must be absent.
    fn insert_absent(&mut self, seq: u64, seen: Seen) {
        if self.max.is_none_or(|m| seq > m) {
            self.ascending.push((seq, seen));
            self.max = Some(seq);
        } else {
            self.others.insert(seq, seen);
        }
    }

    fn insert(&mut self, seq: u64, seen: Seen) {
        match self.get_mut(seq) {
            Some(held) => *held = seen,
            None => self.insert_absent(seq, seen),
        }
    }

    /// Drops the keys that expired under watermark `wm`.
    fn retain_live(&mut self, wm: i64) {
        self.ascending.retain(|(_, s)| s.expires_at > wm);
        self.others.retain(|_, s| s.expires_at > wm);
        // The bound shrinks back, so a device that restarts its count appends again.
        self.max = self
            .ascending
            .last()
            .map(|e| e.0)
            .into_iter()
            .chain(self.others.keys().copied())
            .max();
    }
}

/// Each epoch's snapshot of this worker, as Assign finishes the epoch: a
/// delta (reports, watermark, the dedupe keys and window readings the epoch
/// added) on the epoch before, or whole at the first epoch of a run (which
/// re-adds everything restored). A sink takes it and links the chain.
#[derive(Debug, Default)]
pub struct Snapshots {
    ready: BTreeMap<Epoch, WorkerSnapshot>,
}

impl Snapshots {
    /// The snapshot of `epoch`, once this worker's Assign finished it.
    pub fn take(&mut self, epoch: Epoch) -> Option<WorkerSnapshot> {
        self.ready.remove(&epoch)
    }
}

/// Where a worker's operators leave their snapshots; shared by one worker's operators.
pub type Captures = Rc<RefCell<Snapshots>>;

/// What Assign tells Emit about a window at an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct WindowEvent {
    key: WindowKey,
    /// Final under this epoch's watermark; otherwise it changed and stays open.
    closed: bool,
}

/// Interns device and metric names, and (device, metric) series: keys
/// become small `Copy` tuples, hashed and compared without touching strings,
/// and series index vectors.
#[derive(Default)]
struct Names {
    ids: FxHashMap<CompactString, u32>,
    names: Vec<CompactString>,
    /// `device 0xFF metric` (as batches carry them) → series id.
    pairs: FxHashMap<Box<[u8]>, u32>,
    by_ids: FxHashMap<(u32, u32), u32>,
    /// (device id, metric id) of each series id.
    series: Vec<(u32, u32)>,
}

impl Names {
    /// The series id of a batch reading.
    fn series_of(&mut self, r: &BatchReading<'_>) -> u32 {
        if let Some(&series) = self.pairs.get(r.names) {
            return series;
        }
        let (device, metric) = r.device_and_metric();
        let series = self.series_named(&device, &metric);
        self.pairs.insert(r.names.into(), series);
        series
    }

    fn series_named(&mut self, device: &CompactString, metric: &CompactString) -> u32 {
        let ids = (self.id(device), self.id(metric));
        let next = self.series.len() as u32;
        let series = *self.by_ids.entry(ids).or_insert(next);
        if series == next {
            self.series.push(ids);
        }
        series
    }

    /// (device id, metric id) of a series id.
    fn ids_of(&self, series: u32) -> (u32, u32) {
        self.series[series as usize]
    }

    fn id(&mut self, name: &CompactString) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.clone());
        self.ids.insert(name.clone(), id);
        id
    }

    fn compact_name(&self, id: u32) -> CompactString {
        self.names.get(id as usize).cloned().unwrap_or_default()
    }
}

/// The worker that owns `device`'s readings, windows and dedupe keys among
/// `workers`: the one routing rule for devices (exchange, re-sharding of
/// snapshots and of pending Parquet rows).
pub fn device_owner(device: &str, workers: u32) -> u32 {
    (device_hash(device) % u64::from(workers.max(1))) as u32
}

/// A stable hash of the device id: the same worker for a device in every process.
fn device_hash(device: &str) -> u64 {
    // FNV-1a: std's SipHash keys are random per process, which would split a
    // device across workers of different processes.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in device.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
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
    let start = hooks.start;
    let (updates, events) = assign(
        readings,
        reports,
        cfg,
        Rc::clone(&names),
        Arc::clone(&metrics),
        hooks,
    );
    let (retract_handle, retractions) = scope.feedback::<Vec<Update>>(1);
    // Pipeline: Assign already put each device on its worker, and the ids are per worker.
    let state = arrange_core::<_, _, ValBatcher<WindowKey, WindowVal, Epoch, isize>, StateSpine>(
        updates.concat(retractions),
        Pipeline,
        "WindowState",
        ValBatcher::new,
    );
    let (results, retractions) = emit(
        events,
        state.stream,
        state.trace,
        cfg,
        names,
        metrics,
        start,
    );
    retractions.connect_loop(retract_handle);
    results
}

/// Dedupe, window assignment and window lifecycle; see the module docs.
fn assign<'scope>(
    readings: Stream<'scope, Epoch, Vec<Classified>>,
    reports: Stream<'scope, Epoch, Vec<ShareReport>>,
    cfg: JobConfig,
    names: Rc<RefCell<Names>>,
    metrics: Arc<JobMetrics>,
    hooks: StateHooks,
) -> (
    Stream<'scope, Epoch, Vec<Update>>,
    Stream<'scope, Epoch, Vec<WindowEvent>>,
) {
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
        let mut pending: BTreeMap<Epoch, Vec<Row>> = BTreeMap::new();
        let mut pending_reports: BTreeMap<Epoch, Vec<ShareReport>> = BTreeMap::new();
        let mut combiner = WatermarkCombiner::new(cfg.watermark);
        let mut open: FxHashSet<WindowKey> = FxHashSet::default();
        // Open windows by the watermark that finalizes them: end + lateness.
        let mut closing: BTreeMap<i64, Vec<WindowKey>> = BTreeMap::new();
        // Dedupe keys by series id, and how many there are.
        let mut seen: Vec<SeriesSeen> = Vec::new();
        let mut seen_len = 0usize;
        let mut sweep_at = SEEN_SWEEP_MIN;
        let mut touched: FxHashSet<WindowKey> = FxHashSet::default();
        // Scratch: an epoch's rows by series, and one series' (window start, ts, value bits).
        let mut counts: Vec<u32> = Vec::new();
        // Kept for their capacity: fresh multi-megabyte vectors every epoch
        // cost page faults. Emptied epochs' row vectors, grouped rows, dedupe verdicts.
        let mut spare_rows: Vec<Vec<Row>> = Vec::new();
        let mut grouped: Vec<Row> = Vec::new();
        let mut keep: Vec<bool> = Vec::new();
        let mut run: Vec<(i64, i64, u64)> = Vec::new();
        // The restored windows' readings enter the arrangement at the first epoch.
        let mut restored: Vec<Update> = Vec::new();
        // Dedupe keys added this epoch, for the snapshot delta (restored ones at the
        // first): (series, seq, expires at).
        let mut seen_added: Vec<(u32, u64, i64)> = Vec::new();
        if let Some(snap) = restore {
            combiner = WatermarkCombiner::restored(cfg.watermark, &snap.reports, snap.watermark);
            let mut names = names.borrow_mut();
            for k in snap.seen {
                let series = names.series_named(&k.device, &k.metric);
                if seen.len() <= series as usize {
                    seen.resize_with(series as usize + 1, SeriesSeen::default);
                }
                seen[series as usize].insert(
                    k.seq,
                    Seen {
                        expires_at: k.expires_at,
                        epoch: 0,
                        row: 0,
                    },
                );
                if capture.is_some() {
                    seen_added.push((series, k.seq, k.expires_at));
                }
            }
            seen_len = seen.iter().map(SeriesSeen::len).sum();
            for w in snap.windows {
                let key = (names.id(&w.device), names.id(&w.metric), w.start);
                if open.insert(key) {
                    let close_at = cfg.window.end(w.start).saturating_add(cfg.lateness_ms);
                    closing.entry(close_at).or_default().push(key);
                }
                let mut readings: Vec<(i64, u64)> = w
                    .readings
                    .iter()
                    .map(|&(ts, bits)| (ts, ordered_bits(f64::from_bits(bits))))
                    .collect();
                readings.sort_unstable();
                restored.push(((key, readings.into()), start, 1));
            }
        }

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
                        sequenced: r.seq.is_some(),
                    }));
                }
            });
            reports_in.for_each(|time, data| {
                pending_reports
                    .entry(crate::job::epoch_of(&time))
                    .or_default()
                    .append(data)
            });
            let (readings_frontier, reports_frontier) = (&frontiers[0], &frontiers[1]);
            while let Some([updates_cap, events_cap]) = caps.as_deref_mut() {
                if readings_frontier.less_equal(&next) || reports_frontier.less_equal(&next) {
                    break;
                }
                let wm_before = combiner.watermark();
                let mut arrived = pending.remove(&next).unwrap_or_default();
                // A key's expiry: the end of the last window of its reading's event time.
                let expiry = |ts: i64| {
                    cfg.window
                        .windows_of(ts)
                        .last()
                        .map(|s| cfg.window.end(s).saturating_add(cfg.lateness_ms))
                        .unwrap_or(i64::MAX)
                };
                // Series by series: one series' rows, dedupe keys and windows are
                // worked on together, while they are in cache.
                let groups = by_series(&arrived, &mut counts, &mut grouped);
                arrived.clear();
                // Only vectors worth keeping, and no more than epochs in flight:
                // an epoch without readings must not stack empty ones on top.
                if arrived.capacity() > 0 && spare_rows.len() <= MAX_EPOCHS_IN_FLIGHT as usize {
                    spare_rows.push(arrived);
                }
                let rows = &grouped;
                keep.clear();
                keep.resize(rows.len(), true);
                let mut duplicates = 0u64;
                let mut partial = 0u64;
                let mut out: Vec<Update> = std::mem::take(&mut restored);
                let names_now = names.borrow();
                if seen.len() < names_now.series.len() {
                    seen.resize_with(names_now.series.len(), SeriesSeen::default);
                }
                for (series, range) in groups {
                    let series_seen = &mut seen[series as usize];
                    let before = series_seen.len();
                    let (rows, keep) = (&rows[range.clone()], &mut keep[range.clone()]);
                    // Restored keys (epoch 0) are older than any epoch a run starts
                    // at > 0, and at 0 nothing was restored.
                    duplicates += dedupe(rows, next, wm_before, expiry, series_seen, keep);
                    seen_len += series_seen.len() - before;
                    run.clear();
                    for r in rows
                        .iter()
                        .zip(keep.iter())
                        .filter(|(_, k)| **k)
                        .map(|(r, _)| r)
                    {
                        if let (Some(seq), true) = (r.seq(), capture.is_some()) {
                            seen_added.push((series, seq, expiry(r.ts_ms)));
                        }
                        for start in cfg.window.windows_of(r.ts_ms) {
                            if cfg.is_final(start, wm_before) {
                                partial += 1;
                            } else {
                                run.push((start, r.ts_ms, ordered_bits(r.value)));
                            }
                        }
                    }
                    // By window, each window's readings in (ts, value) order.
                    run.sort_unstable();
                    let (device, metric) = names_now.ids_of(series);
                    for window in run.chunk_by(|a, b| a.0 == b.0) {
                        let key = (device, metric, window[0].0);
                        if open.insert(key) {
                            let close_at = cfg.window.end(key.2).saturating_add(cfg.lateness_ms);
                            closing.entry(close_at).or_default().push(key);
                        }
                        if cfg.emit == EmitMode::Updates {
                            touched.insert(key);
                        }
                        let readings: WindowVal =
                            window.iter().map(|&(_, ts, v)| (ts, v)).collect();
                        out.push(((key, readings), next, 1));
                    }
                }
                drop(names_now);
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
                    if seen_len >= sweep_at {
                        seen.iter_mut().for_each(|s| s.retain_live(w));
                        seen_len = seen.iter().map(SeriesSeen::len).sum();
                        sweep_at = (2 * seen_len).max(SEEN_SWEEP_MIN);
                    }
                }
                window_events.extend(
                    touched
                        .drain()
                        .map(|key| WindowEvent { key, closed: false }),
                );
                if let Some(capture) = &capture {
                    let names = names.borrow();
                    // Ordered by interned ids, not by name: one order within
                    // a run without comparing strings (an epoch adds a key per
                    // reading); names are inline, no allocation when short.
                    seen_added.sort_unstable();
                    let keys: Vec<snapshot::SeenKey> = seen_added
                        .drain(..)
                        .map(|(series, seq, expires_at)| {
                            let (device, metric) = names.ids_of(series);
                            snapshot::SeenKey {
                                device: names.compact_name(device),
                                metric: names.compact_name(metric),
                                seq,
                                expires_at,
                            }
                        })
                        .collect();
                    let mut opened: Vec<_> =
                        out.iter().map(|((key, run), _, _)| (key, run)).collect();
                    opened.sort_unstable_by_key(|(key, _)| **key);
                    let windows: Vec<snapshot::OpenWindow> = opened
                        .into_iter()
                        .map(|(&(device, metric, start), run)| snapshot::OpenWindow {
                            device: names.compact_name(device),
                            metric: names.compact_name(metric),
                            start,
                            readings: run
                                .iter()
                                .map(|&(ts, b)| (ts, from_ordered_bits(b).to_bits()))
                                .collect(),
                        })
                        .collect();
                    let snap = WorkerSnapshot {
                        format: snapshot::SNAPSHOT_FORMAT,
                        epoch: next,
                        worker,
                        workers,
                        reports: combiner.reports(),
                        watermark: combiner.emitted(),
                        seen: keys,
                        windows,
                        // The sink fills in the predecessor's size and checksum.
                        previous: (next > start).then(|| snapshot::Link {
                            epoch: next - 1,
                            bytes: 0,
                            checksum: 0,
                        }),
                    };
                    capture.borrow_mut().ready.insert(next, snap);
                }
                metrics.duplicates.fetch_add(duplicates, Ordering::Relaxed);
                metrics.late_partial.fetch_add(partial, Ordering::Relaxed);
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
                if readings_frontier.frontier().is_empty()
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

/// An epoch's rows grouped by series into `grouped`, each group in arrival
/// order, and each series' range there (a counting sort; `counts` is
/// scratch, all zero between calls).
fn by_series(
    rows: &[Row],
    counts: &mut Vec<u32>,
    grouped: &mut Vec<Row>,
) -> Vec<(u32, Range<usize>)> {
    let mut groups: Vec<(u32, Range<usize>)> = Vec::new();
    for r in rows {
        let s = r.series as usize;
        if counts.len() <= s {
            counts.resize(s + 1, 0);
        }
        if counts[s] == 0 {
            groups.push((r.series, 0..0));
        }
        counts[s] += 1;
    }
    // Counts become each group's write position, then its end.
    let mut at = 0usize;
    for (series, range) in &mut groups {
        let s = *series as usize;
        *range = at..at;
        at += counts[s] as usize;
        counts[s] = range.start as u32;
    }
    grouped.clear();
    grouped.resize(rows.len(), Row::default());
    for r in rows {
        let next = &mut counts[r.series as usize];
        grouped[*next as usize] = *r;
        *next += 1;
    }
    for (series, range) in &mut groups {
        range.end = std::mem::take(&mut counts[*series as usize]) as usize;
    }
    groups
}

/// Dedupes `rows` (all of one series' rows in epoch `epoch`) against the
/// series' keys `seen` and each other: clears `keep` of the losers and says
/// how many there were; the survivors' keys are added to `seen`, expiring at
/// `expiry(event time)`. Keys that expired under `wm` (the watermark the
/// epoch is judged by) count as absent.
fn dedupe(
    rows: &[Row],
    epoch: Epoch,
    wm: Option<i64>,
    expiry: impl Fn(i64) -> i64,
    seen: &mut SeriesSeen,
    keep: &mut [bool],
) -> u64 {
    // The survivor of conflicting copies does not depend on arrival order: an
    // earlier epoch's copy wins, and within an epoch the smallest (event time, value).
    let mut duplicates = 0u64;
    let rank = |x: &Row| (x.ts_ms, x.value.to_bits());
    let expired = |s: &Seen| wm.is_some_and(|w| s.expires_at <= w);
    for (i, r) in rows.iter().enumerate() {
        let Some(seq) = r.seq() else { continue };
        let mine = Seen {
            expires_at: expiry(r.ts_ms),
            epoch,
            row: i as u32,
        };
        let Some(first) = seen.get_mut(seq) else {
            seen.insert_absent(seq, mine);
            continue;
        };
        if expired(first) {
            *first = mine;
            continue;
        }
        duplicates += 1;
        if first.epoch != epoch {
            keep[i] = false;
            continue;
        }
        // Same epoch, same series: a row of this slice.
        let j = first.row as usize;
        if rank(r) < rank(&rows[j]) {
            keep[j] = false;
            *first = mine;
        } else {
            keep[i] = false;
        }
    }
    duplicates
}

/// Reads closed and touched windows out of the arrangement; see the module docs.
fn emit<'scope>(
    events: Stream<'scope, Epoch, Vec<WindowEvent>>,
    batches: Stream<'scope, Epoch, Vec<SpanOf<TraceAgent<StateSpine>>>>,
    trace: TraceAgent<StateSpine>,
    cfg: JobConfig,
    names: Rc<RefCell<Names>>,
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
                    let names = names.borrow();
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
                        // (ts, ordered bits) order is the canonical (ts, total_cmp) order.
                        merged.sort_unstable();
                        values.clear();
                        values.extend(merged.iter().map(|&(ts, b)| (ts, from_ordered_bits(b))));
                        if let Some(s) = Stats::of_sorted(&values) {
                            let (device, metric, start) = ev.key;
                            out.push(WindowResult::new(
                                names.compact_name(device),
                                names.compact_name(metric),
                                start,
                                cfg.window.end(start),
                                s,
                                ev.closed,
                            ));
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn row(seq: Option<u64>, ts_ms: i64, value: f64) -> Row {
        Row {
            ts_ms,
            value,
            seq: seq.unwrap_or_default(),
            series: 0,
            sequenced: seq.is_some(),
        }
    }

    /// Keys expire at the event time rounded up to the next 10 s.
    fn expiry(ts: i64) -> i64 {
        (ts / 10_000 + 1) * 10_000
    }

    /// [`dedupe`] of all of `rows` (one series): which survive, how many did not.
    fn dedupe_all(
        rows: &[Row],
        epoch: Epoch,
        wm: Option<i64>,
        seen: &mut SeriesSeen,
    ) -> (Vec<bool>, u64) {
        let mut keep = vec![true; rows.len()];
        let duplicates = dedupe(rows, epoch, wm, expiry, seen, &mut keep);
        (keep, duplicates)
    }

    fn held_expiry(seen: &mut SeriesSeen, seq: u64) -> Option<i64> {
        seen.get_mut(seq).map(|s| s.expires_at)
    }

    #[test]
    fn an_earlier_epoch_wins_and_within_an_epoch_the_smallest_copy_in_any_order() {
        let mut seen = SeriesSeen::default();
        let first = [row(Some(7), 1_500, 2.0)];
        assert_eq!(dedupe_all(&first, 3, None, &mut seen), (vec![true], 0));
        // Epoch 4: a later copy of 7 loses whatever it holds; 8 comes three
        // times and its smallest (ts, value) wins in every arrival order.
        let copies = [
            row(Some(8), 2_000, 5.0),
            row(Some(8), 1_000, 9.0),
            row(Some(8), 1_000, 3.0),
        ];
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0], [0, 2, 1]] {
            let mut seen = seen.clone();
            let mut rows = vec![row(Some(7), 1_000, 1.0)];
            rows.extend(order.iter().map(|&i| copies[i]));
            let (keep, duplicates) = dedupe_all(&rows, 4, None, &mut seen);
            let winner = 1 + order.iter().position(|&i| i == 2).unwrap();
            let want: Vec<bool> = (0..rows.len()).map(|i| i == winner).collect();
            assert_eq!((keep, duplicates), (want, 3), "order {order:?}");
            assert_eq!(held_expiry(&mut seen, 8), Some(expiry(1_000)));
        }
    }

    #[test]
    fn an_expired_key_counts_as_absent_and_readings_without_seq_are_all_kept() {
        let mut seen = SeriesSeen::default();
        dedupe_all(&[row(Some(1), 9_000, 1.0)], 0, None, &mut seen);
        // Under a watermark before its expiry (10 000) the key still holds.
        let again = [row(Some(1), 12_000, 1.0)];
        assert_eq!(
            dedupe_all(&again, 1, Some(9_999), &mut seen),
            (vec![false], 1)
        );
        // At its expiry it is gone: the new copy is kept and its key renewed.
        assert_eq!(
            dedupe_all(&again, 2, Some(10_000), &mut seen),
            (vec![true], 0)
        );
        assert_eq!(held_expiry(&mut seen, 1), Some(20_000));
        assert_eq!(
            dedupe_all(&again, 3, Some(10_000), &mut seen),
            (vec![false], 1)
        );
        let unsequenced = [row(None, 1, 1.0), row(None, 1, 1.0)];
        assert_eq!(
            dedupe_all(&unsequenced, 4, None, &mut seen),
            (vec![true, true], 0)
        );
    }

    #[test]
    fn rows_group_by_series_in_arrival_order() {
        // Arrival i at event time i.
        let rows: Vec<Row> = [3u32, 1, 3, 0, 1, 3]
            .iter()
            .enumerate()
            .map(|(i, &series)| Row {
                series,
                ..row(None, i as i64, 0.0)
            })
            .collect();
        let (mut counts, mut grouped) = (vec![0; 2], vec![row(None, 9, 9.0); 9]);
        let groups = by_series(&rows, &mut counts, &mut grouped);
        let rows = grouped;
        assert_eq!(rows.len(), 6);
        let grouped: Vec<(u32, Vec<i64>)> = groups
            .into_iter()
            .map(|(series, range)| {
                assert!(rows[range.clone()].iter().all(|r| r.series == series));
                (series, rows[range].iter().map(|r| r.ts_ms).collect())
            })
            .collect();
        assert_eq!(grouped, [(3, vec![0, 2, 5]), (1, vec![1, 4]), (0, vec![3])]);
        assert!(counts.iter().all(|&c| c == 0), "{counts:?}");
    }

    proptest! {
        /// Whatever the order of seqs (restarts, disorder) and sweeps, a
        /// series' keys are exactly those of a map.
        #[test]
        fn series_seen_holds_what_a_map_holds(
            ops in prop::collection::vec((0u64..40, 0i64..100, prop::bool::weighted(0.1)), 1..200),
        ) {
            let mut seen = SeriesSeen::default();
            let mut model: BTreeMap<u64, i64> = BTreeMap::new();
            for (seq, expires_at, sweep) in ops {
                if sweep {
                    seen.retain_live(expires_at);
                    model.retain(|_, e| *e > expires_at);
                } else {
                    prop_assert_eq!(held_expiry(&mut seen, seq), model.get(&seq).copied());
                    let entry = Seen { expires_at, epoch: 0, row: 0 };
                    if model.insert(seq, expires_at).is_some() {
                        seen.insert(seq, entry);
                    } else {
                        seen.insert_absent(seq, entry);
                    }
                }
                prop_assert_eq!(seen.len(), model.len());
            }
            for seq in 0..40 {
                prop_assert_eq!(held_expiry(&mut seen, seq), model.get(&seq).copied());
            }
        }
    }
}
