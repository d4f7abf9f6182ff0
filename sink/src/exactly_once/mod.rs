//! The exactly-once sinks: the commit protocol's state machine
//! ([`crate::committer`]) driven by the dataflow's frontiers, with its I/O on
//! threads of their own, for any number of output topics and Parquet datasets.
//!
//! ```text
//!   every worker, frontier past e:
//!     Stage    (stage thread) outputs of e for its partitions ─▶ <state>/epochs/e/w.out
//!              final rows per dataset ─▶ pending segments ─roll─▶ <parquet>/.staging/*.parquet
//!              snapshot of e ─▶ <state>/epochs/e/w.snap          (all fsynced)
//!              ──StagedMsg(e)──▶ worker 0
//!   worker 0:
//!     Commit   Committer: every worker staged e, e−1 appended, fewer than `depth` epochs
//!              unpublished ─▶ (commit thread) CommitRecord(e) appended to the progress
//!              topic ← THE COMMIT POINT ─▶ Parquet files renamed in ─▶ CommitRecord(e) broadcast
//!   every worker:
//!     Publish  (publish thread) its partitions' records of e, after what each tail shows
//!              ──ack(e, w), fed back +1──▶ Commit (published_through, garbage collection)
//!   sources: start epoch e only when acks reached e − MAX_EPOCHS_IN_FLIGHT and the
//!            staged-but-unpublished bytes are under `max_unpublished_bytes`
//! ```
//!
//! Module map: `outgoing` (records and the staged file), `stager` + `chain` +
//! `pending` (a worker's staging), `publisher` (broker I/O), `state_dir`
//! (layout, GC), `offload` (threads, held outputs), `stage_op`, `commit_op`,
//! `publish_op` (the timely shells), `recovery` (start of a run).

mod chain;
mod commit_op;
mod offload;
pub mod outgoing;
pub mod pending;
mod publish_op;
mod publisher;
pub mod rebuild;
pub mod recovery;
mod stage_op;
mod stager;
pub mod state_dir;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use iotflow_dataflow::job::Epoch;
use iotflow_dataflow::metrics::JobMetrics;
use iotflow_dataflow::operators::windows::Captures;
use iotflow_dataflow::snapshot::CapturePlan;
use timely::dataflow::Stream;
use timely::dataflow::operators::core::{ConnectLoop, Feedback};

use crate::error::SinkError;
use crate::protocol::CommitRecord;
use crate::shape::Row;

pub use commit_op::Ack;
pub use iotflow_dataflow::snapshot::WindowRules;
pub use offload::Held;
pub use outgoing::{Outgoing, OutputId, OutputTopic};
pub use pending::{PendingRows, Roll};

/// Where and how the job commits.
#[derive(Debug, Clone)]
pub struct ExactlyOnceConfig {
    pub job: String,
    /// Set by recovery: above every generation on the progress topic.
    pub generation: u64,
    pub state_dir: PathBuf,
    pub parquet_dir: PathBuf,
    pub bootstrap: iotflow_redpanda::Brokers,
    pub progress_topic: String,
    /// The output topics; [`OutputId`] indexes this list.
    pub outputs: Vec<OutputTopic>,
    /// The Parquet datasets (directories under `parquet_dir`).
    pub datasets: Vec<crate::parquet::Dataset>,
    pub roll: Roll,
    /// Which windows a snapshot chain's watermark has closed, and where windows live.
    pub closing: WindowRules,
    /// Deltas fold into a whole snapshot once they add up to this many bytes
    /// or the last whole one, whichever is more.
    pub fold_bytes: u64,
    /// The whole state every this many epochs and no snapshot between
    /// (recovery replays the epochs after the newest checkpoint); `None`:
    /// a delta every epoch.
    pub checkpoint_every: Option<std::num::NonZeroU64>,
    /// Committed epochs that may wait for publishing at once (pipelining).
    pub depth: usize,
    /// Staged-but-unpublished output bytes (per process) past which the
    /// sources wait before starting another epoch.
    pub max_unpublished_bytes: u64,
    /// No commit of this job exists (set by recovery): none of its records can
    /// be on the output topics, so their tails are not read.
    pub fresh: bool,
}

pub use crate::kafka::FailureSlot;

/// What every operator of one worker's sinks shares.
#[derive(Clone)]
pub struct SinkContext {
    pub cfg: Arc<ExactlyOnceConfig>,
    /// The run's first epoch.
    pub start: Epoch,
    /// Workers in all processes.
    pub workers: u32,
    /// What recovery read: the kept commits before `start`, with their offsets.
    pub history: Vec<(CommitRecord, i64)>,
    /// This worker's pending rows per dataset, from recovery.
    pub restored: Vec<PendingRows>,
    pub captures: Captures,
    /// This process's staged-but-unpublished outputs.
    pub held: Arc<Held>,
    pub metrics: Arc<JobMetrics>,
    pub error: FailureSlot,
    pub stop: Arc<AtomicBool>,
    /// When worker 0 began staging each epoch (commit latency).
    staging_began: Rc<RefCell<BTreeMap<Epoch, Instant>>>,
}

impl std::fmt::Debug for SinkContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkContext")
            .field("job", &self.cfg.job)
            .field("start", &self.start)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

/// One worker's part of a run: where it starts and what it shares.
#[derive(Debug)]
pub struct WorkerSinks {
    pub cfg: Arc<ExactlyOnceConfig>,
    pub start: Epoch,
    pub history: Vec<(CommitRecord, i64)>,
    pub restored: Vec<PendingRows>,
    pub held: Arc<Held>,
    pub metrics: Arc<JobMetrics>,
    pub error: FailureSlot,
    pub stop: Arc<AtomicBool>,
}

impl SinkContext {
    /// What the workers capture at each epoch: the sink's plan.
    pub fn capture_plan(&self) -> CapturePlan {
        CapturePlan {
            first: self.start,
            checkpoint_every: self.cfg.checkpoint_every,
        }
    }

    /// Records the first failure and stops the job.
    pub fn fail(&self, e: SinkError) {
        crate::kafka::record_failure(&self.error, &self.stop, e.to_string());
    }
}

/// Attaches the exactly-once sinks to a worker's dataflow: `records` (any
/// output topic's, routed by [`Outgoing::partition`]) and each dataset's
/// final rows, in `cfg.datasets` order; `captures` are this worker's
/// snapshots. Returns the acks (for the sources' backpressure).
pub fn commit_outputs<'scope>(
    records: Stream<'scope, Epoch, Vec<Outgoing>>,
    datasets: Vec<Stream<'scope, Epoch, Vec<Row>>>,
    captures: Captures,
    sinks: WorkerSinks,
) -> Stream<'scope, Epoch, Vec<Ack>> {
    let scope = records.scope();
    let ctx = SinkContext {
        workers: scope.peers() as u32,
        cfg: sinks.cfg,
        start: sinks.start,
        history: sinks.history,
        restored: sinks.restored,
        captures,
        held: sinks.held,
        metrics: sinks.metrics,
        error: sinks.error,
        stop: sinks.stop,
        staging_began: Rc::default(),
    };
    let staged = stage_op::stage(records, datasets, &ctx);
    let (ack_handle, acks_back) = scope.feedback::<Vec<Ack>>(1);
    let committed = commit_op::commit(staged, acks_back, &ctx);
    let acks = publish_op::publish(committed, &ctx);
    acks.clone().connect_loop(ack_handle);
    acks
}
