//! Windows: dedupe, assign to event-time windows, emit when the frontier says so.
//!
//! ```text
//!   Reading@e (exchanged by device) ──(device, seq, metric) seen?──▶ duplicate, dropped
//!     ──▶ each window of its event time still open under W_{e−1} ──▶ window state
//!   when both inputs passed e: apply reports of e → W_e
//!     updates mode: changed open windows ──▶ WindowResult(final = false)
//!     windows with end + lateness ≤ W_e ──▶ WindowResult(final = true); state dropped
//! ```
//!
//! Of copies with the same (device, seq, metric) the one from the earliest
//! epoch survives, and within an epoch the smallest (event time, value), so
//! even conflicting copies (not producer retries) give the same output in any
//! arrival order. A window keeps its readings until it is final and computes statistics over
//! them sorted, so results are bit-identical however records were spread over
//! workers and epochs. Dedupe entries are dropped once every window their event
//! time belongs to is final: a later copy is then judged `late` upstream.

use std::collections::BTreeMap;
use std::sync::Arc;

use compact_str::CompactString;
use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::atomic::Ordering;

use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;

use crate::aggregate::Stats;
use crate::job::{Classified, Epoch, JobConfig, WindowResult};
use crate::metrics::JobMetrics;
use crate::reading::Reading;
use crate::watermark::{ShareReport, WatermarkCombiner};

/// (device id, metric id, window start), ids from this worker's [`Names`].
type WindowKey = (u32, u32, i64);
/// (device id, metric id, seq).
type SeenKey = (u32, u32, u64);

/// Interns device and metric names: keys become small `Copy` tuples, hashed
/// and compared without touching strings.
#[derive(Default)]
struct Names {
    ids: FxHashMap<CompactString, u32>,
    names: Vec<CompactString>,
}

impl Names {
    fn id(&mut self, name: &CompactString) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.clone());
        self.ids.insert(name.clone(), id);
        id
    }

    fn name(&self, id: u32) -> String {
        self.names
            .get(id as usize)
            .map(|n| n.to_string())
            .unwrap_or_default()
    }

    /// The result of window `key` with statistics `s`.
    fn result(&self, key: WindowKey, end: i64, s: Stats, is_final: bool) -> WindowResult {
        WindowResult::new(self.name(key.0), self.name(key.1), key.2, end, s, is_final)
    }
}

#[derive(Default)]
struct WindowState {
    values: Vec<(i64, f64)>,
    changed: bool,
}

/// A stable hash of the device id: the same worker for a device in every process.
pub fn device_hash(device: &str) -> u64 {
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
) -> Stream<'scope, Epoch, Vec<WindowResult>> {
    let by_device = Exchange::new(|c: &Classified| match c {
        Classified::Reading(r) => device_hash(&r.device_id),
        _ => 0,
    });
    readings.binary_frontier(
        reports,
        by_device,
        Pipeline,
        "Windows",
        move |cap, _info| {
            let mut cap = Some(cap);
            let mut next: Epoch = 0;
            let mut pending: BTreeMap<Epoch, Vec<Reading>> = BTreeMap::new();
            let mut pending_reports: BTreeMap<Epoch, Vec<ShareReport>> = BTreeMap::new();
            let mut combiner = WatermarkCombiner::new(cfg.watermark);
            let mut names = Names::default();
            let mut state: FxHashMap<WindowKey, WindowState> = FxHashMap::default();
            // Windows by the watermark that finalizes them: end + lateness.
            let mut closing: BTreeMap<i64, Vec<WindowKey>> = BTreeMap::new();
            let mut seen: FxHashSet<SeenKey> = FxHashSet::default();
            let mut seen_expiry: BTreeMap<i64, Vec<SeenKey>> = BTreeMap::new();

            move |(readings_in, readings_frontier), (reports_in, reports_frontier), output| {
                readings_in.for_each(|time, data| {
                    let bucket = pending.entry(crate::job::epoch_of(&time)).or_default();
                    bucket.extend(data.drain(..).filter_map(|c| match c {
                        Classified::Reading(r) => Some(r),
                        _ => None,
                    }));
                });
                reports_in.for_each(|time, data| {
                    pending_reports
                        .entry(crate::job::epoch_of(&time))
                        .or_default()
                        .append(data)
                });
                while let Some(c) = cap.as_mut() {
                    if readings_frontier.less_equal(&next) || reports_frontier.less_equal(&next) {
                        break;
                    }
                    let wm_before = combiner.watermark();
                    let (mut duplicates, mut partial) = (0u64, 0u64);
                    // Dedupe in two passes so the survivor of conflicting copies does
                    // not depend on arrival order: an earlier epoch's copy wins, and
                    // within an epoch the smallest (event time, value).
                    let readings = pending.remove(&next).unwrap_or_default();
                    let mut keep = vec![true; readings.len()];
                    let mut chosen: FxHashMap<SeenKey, usize> = FxHashMap::default();
                    let mut ids = Vec::with_capacity(readings.len());
                    for (i, r) in readings.iter().enumerate() {
                        let (device, metric) = (names.id(&r.device_id), names.id(&r.metric));
                        ids.push((device, metric));
                        let Some(seq) = r.seq else { continue };
                        let key = (device, metric, seq);
                        if seen.contains(&key) {
                            duplicates += 1;
                            keep[i] = false;
                            continue;
                        }
                        match chosen.entry(key) {
                            std::collections::hash_map::Entry::Vacant(v) => {
                                v.insert(i);
                            }
                            std::collections::hash_map::Entry::Occupied(mut o) => {
                                duplicates += 1;
                                let j = *o.get();
                                let rank = |x: &Reading| (x.ts_ms, x.value.to_bits());
                                if rank(r) < rank(&readings[j]) {
                                    keep[j] = false;
                                    o.insert(i);
                                } else {
                                    keep[i] = false;
                                }
                            }
                        }
                    }
                    for (key, i) in chosen {
                        let last_end = cfg
                            .window
                            .windows_of(readings[i].ts_ms)
                            .last()
                            .map(|s| cfg.window.end(s).saturating_add(cfg.lateness_ms))
                            .unwrap_or(i64::MAX);
                        seen.insert(key);
                        seen_expiry.entry(last_end).or_default().push(key);
                    }
                    for ((r, (device, metric)), _) in
                        readings.iter().zip(ids).zip(&keep).filter(|(_, k)| **k)
                    {
                        for start in cfg.window.windows_of(r.ts_ms) {
                            if cfg.is_final(start, wm_before) {
                                partial += 1;
                                continue;
                            }
                            let key = (device, metric, start);
                            let w = state.entry(key).or_insert_with_key(|k| {
                                let close_at = cfg.window.end(k.2).saturating_add(cfg.lateness_ms);
                                closing.entry(close_at).or_default().push(*k);
                                WindowState::default()
                            });
                            w.values.push((r.ts_ms, r.value));
                            w.changed = true;
                        }
                    }
                    for r in pending_reports.remove(&next).unwrap_or_default() {
                        combiner.apply(&r);
                    }
                    let wm = combiner.watermark();
                    let mut out: Vec<WindowResult> = Vec::new();
                    if let Some(w) = wm {
                        while let Some(entry) = closing.first_entry() {
                            if *entry.key() > w {
                                break;
                            }
                            for key in entry.remove() {
                                if let Some(mut ws) = state.remove(&key)
                                    && let Some(s) = Stats::of(&mut ws.values)
                                {
                                    let end = cfg.window.end(key.2);
                                    out.push(names.result(key, end, s, true));
                                }
                            }
                        }
                        while let Some(entry) = seen_expiry.first_entry() {
                            if *entry.key() > w {
                                break;
                            }
                            for key in entry.remove() {
                                seen.remove(&key);
                            }
                        }
                    }
                    let finals = out.len() as u64;
                    if cfg.emit == crate::job::EmitMode::Updates {
                        for (key, ws) in state.iter_mut().filter(|(_, ws)| ws.changed) {
                            ws.changed = false;
                            let mut values = ws.values.clone();
                            if let Some(s) = Stats::of(&mut values) {
                                let end = cfg.window.end(key.2);
                                out.push(names.result(*key, end, s, false));
                            }
                        }
                    }
                    metrics.duplicates.fetch_add(duplicates, Ordering::Relaxed);
                    metrics.late_partial.fetch_add(partial, Ordering::Relaxed);
                    metrics.windows_emitted.fetch_add(finals, Ordering::Relaxed);
                    metrics
                        .updates_emitted
                        .fetch_add(out.len() as u64 - finals, Ordering::Relaxed);
                    if !out.is_empty() {
                        // Unordered: workers interleave anyway; sinks sort by key.
                        output.session(c).give_iterator(out.into_iter());
                    }
                    if readings_frontier.is_empty()
                        && reports_frontier.is_empty()
                        && pending.is_empty()
                    {
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
