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

use compact_str::CompactString;
use differential_dataflow::operators::arrange::arrangement::arrange_core;
use differential_dataflow::trace::implementations::{ValBatcher, ValSpine};
use rustc_hash::FxHashMap;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::{Concat, ConnectLoop, Feedback};

use super::alerts::alerts;
use super::assign::assign;
use super::collect::collect;
use super::emit::{EmitHooks, emit};
use super::names::Names;
pub use super::names::device_owner;
use crate::alert::AlertEvent;
use crate::job::{Classified, Epoch, JobConfig, StateHooks, WindowResult};
use crate::metrics::JobMetrics;
use crate::snapshot::{AlertSeries, OpenWindow, WorkerSnapshot};
use crate::watermark::ShareReport;

/// (aggregation, group key id, window start or `SESSION_SLOT`), key ids
/// from this worker's [`Keys`].
pub(super) type WindowKey = (u32, u32, i64);
/// One epoch's readings of one window from one worker: (event time,
/// [`ordered_bits`] of the value), sorted. Runs, not single readings, are the
/// arrangement's values: an update per window and epoch instead of one per
/// reading, so sorting and merging batches costs a fraction as much.
///
/// Shared, so the copies the arrangement's merges and a closed window's
/// retraction make are reference counts, not allocations.
pub(super) type WindowVal = Arc<[(i64, u64)]>;
pub(super) type Update = ((WindowKey, WindowVal), Epoch, isize);
pub(super) type StateSpine = ValSpine<WindowKey, WindowVal, Epoch, isize>;

/// Each staged epoch's snapshot of this worker, as its
/// [`crate::snapshot::CapturePlan`] says: Assign's part (reports, watermark,
/// dedupe keys), the windows (Collect's deltas, or Emit's whole state read
/// out of the arrangement) and the alert series. Epochs that capture nothing
/// still carry the reports (where the epoch was cut). A sink takes it and
/// links the chain.
#[derive(Debug, Default)]
pub struct Snapshots {
    ready: BTreeMap<Epoch, WorkerSnapshot>,
    windows: BTreeMap<Epoch, Vec<OpenWindow>>,
    alerts: BTreeMap<Epoch, Vec<AlertSeries>>,
}

impl Snapshots {
    /// Assign's part of `epoch`.
    pub(crate) fn put(&mut self, epoch: Epoch, snapshot: WorkerSnapshot) {
        self.ready.insert(epoch, snapshot);
    }

    /// Collect's part of `epoch`.
    pub(super) fn add_windows(&mut self, epoch: Epoch, windows: Vec<OpenWindow>) {
        self.windows.entry(epoch).or_default().extend(windows);
    }

    /// The Alerts operator's part of `epoch`.
    pub(super) fn add_alerts(&mut self, epoch: Epoch, series: Vec<AlertSeries>) {
        self.alerts.entry(epoch).or_default().extend(series);
    }

    /// The snapshot of `epoch`, once this worker's operators finished it.
    pub fn take(&mut self, epoch: Epoch) -> Option<WorkerSnapshot> {
        let mut snap = self.ready.remove(&epoch)?;
        snap.windows = self.windows.remove(&epoch).unwrap_or_default();
        snap.alerts = self.alerts.remove(&epoch).unwrap_or_default();
        Some(snap)
    }
}

/// Where a worker's operators leave their snapshots; shared by one worker's operators.
pub type Captures = Rc<RefCell<Snapshots>>;

/// What Collect tells Emit about a window at an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct WindowEvent {
    pub key: WindowKey,
    /// Final under this epoch's watermark; otherwise it changed and stays open.
    pub closed: bool,
    /// A session's (first, last) reading times; `None` for grid windows.
    pub span: Option<(i64, i64)>,
}

/// The group keys of every aggregation on this worker, interned.
#[derive(Default)]
pub(super) struct Keys {
    /// Per aggregation: key → id.
    ids: Vec<FxHashMap<CompactString, u32>>,
    names: Vec<CompactString>,
}

impl Keys {
    pub fn id(&mut self, aggregation: u16, key: &CompactString) -> u32 {
        let a = aggregation as usize;
        if self.ids.len() <= a {
            self.ids.resize_with(a + 1, FxHashMap::default);
        }
        if let Some(&id) = self.ids[a].get(key) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(key.clone());
        self.ids[a].insert(key.clone(), id);
        id
    }

    pub fn name(&self, id: u32) -> CompactString {
        self.names.get(id as usize).cloned().unwrap_or_default()
    }
}

/// See the module docs.
pub fn windows<'scope>(
    readings: Stream<'scope, Epoch, Vec<Classified>>,
    reports: Stream<'scope, Epoch, Vec<ShareReport>>,
    cfg: JobConfig,
    metrics: Arc<JobMetrics>,
    mut hooks: StateHooks,
) -> (
    Stream<'scope, Epoch, Vec<WindowResult>>,
    Stream<'scope, Epoch, Vec<AlertEvent>>,
) {
    let scope = readings.scope();
    let alert_state = hooks.restore.as_mut().map(|s| {
        (
            s.reports.clone(),
            s.watermark,
            std::mem::take(&mut s.alerts),
        )
    });
    let capture = hooks.capture.clone().map(|c| (c, hooks.plan));
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
    let (updates, events) = collect(runs, reports.clone(), cfg.clone(), Rc::clone(&keys), hooks);
    let (retract_handle, retractions) = scope.feedback::<Vec<Update>>(1);
    // Pipeline: Collect is already on the key's worker, and the ids are per worker.
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
        cfg.clone(),
        keys,
        Arc::clone(&metrics),
        EmitHooks {
            start,
            capture: capture.clone(),
        },
    );
    retractions.connect_loop(retract_handle);
    // Without rules nothing reads the results a second time (a stream's
    // second reader gets every result cloned).
    let events = match cfg.alerts.is_empty() {
        true => timely::dataflow::operators::generic::operator::empty(scope),
        false => alerts(
            results.clone(),
            reports,
            cfg,
            start,
            alert_state,
            capture,
            metrics,
        ),
    };
    (results, events)
}
