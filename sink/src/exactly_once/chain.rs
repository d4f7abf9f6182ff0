//! Snapshot chains: a whole snapshot, then per-epoch deltas linked to it by
//! size and checksum, folded into a new whole one once they outweigh it.
//!
//! ```text
//!   e0 whole ◀── e1 delta ◀── e2 delta ◀── … ◀── ek delta   (each names its predecessor's size + CRC)
//!   deltas ≥ max(last whole, fold_bytes) ──▶ materialize ──▶ ek+1 whole
//!   ek+1's watermark closed all the chain holds ──▶ ek+1 alone is whole (no read back)
//!   recovery: head ─load_chain─▶ [whole, delta, …] ─materialize─▶ the worker's state
//! ```

use std::fs;
use std::path::Path;

use iotflow_dataflow::job::Epoch;
use iotflow_dataflow::snapshot::{Link, WindowRules, WorkerSnapshot, materialize, outlives};

use crate::error::SinkError;

use super::state_dir::snapshot_path;

/// A worker's chain as staging writes it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Chain {
    pub last: Option<Link>,
    pub base: Epoch,
    base_bytes: u64,
    delta_bytes: u64,
    /// When the last of the chain's state is final ([`WorkerSnapshot::final_at`]).
    final_at: Option<i64>,
}

impl Chain {
    /// Whether the next delta should fold the chain into a whole snapshot:
    /// recovery then reads at most about twice the state, and writing costs
    /// at most about twice the deltas.
    pub fn should_fold(&self, fold_bytes: u64) -> bool {
        self.delta_bytes >= self.base_bytes.max(fold_bytes)
    }

    /// Whether `watermark` closed everything the chain holds, so that the
    /// next snapshot (less what its watermark closed) is the whole state.
    pub fn closed_by(&self, watermark: Option<i64>) -> bool {
        self.final_at.is_none_or(|at| !outlives(at, watermark))
    }

    /// Records the snapshot just written at `link`, whose state is final at `final_at`.
    pub fn wrote(&mut self, link: Link, whole: bool, final_at: Option<i64>) {
        if whole {
            (self.base, self.base_bytes, self.delta_bytes) = (link.epoch, link.bytes, 0);
            self.final_at = final_at;
        } else {
            self.delta_bytes += link.bytes;
            self.final_at = self.final_at.max(final_at);
        }
        self.last = Some(link);
    }
}

/// The chain of snapshot files ending at `head` (worker `worker`'s), oldest
/// first, every link checked against the size and checksum its successor names.
pub fn load_chain(
    state_dir: &Path,
    worker: u32,
    head: Link,
) -> Result<Vec<WorkerSnapshot>, SinkError> {
    let mut chain = Vec::new();
    let mut link = Some(head);
    while let Some(l) = link {
        let path = state_dir.join(snapshot_path(l.epoch, worker));
        let bytes = fs::read(&path).map_err(SinkError::io("reading", &path))?;
        if bytes.len() as u64 != l.bytes || crc32fast::hash(&bytes) != l.checksum {
            return Err(SinkError::Damaged {
                path,
                problem: "size or checksum differs from what its successor names".into(),
            });
        }
        let snap = WorkerSnapshot::decode(&bytes).map_err(|source| SinkError::Snapshot {
            path: path.clone(),
            source,
        })?;
        link = snap.previous;
        chain.push(snap);
    }
    chain.reverse();
    Ok(chain)
}

/// The whole state at `head`, with `next` (the delta after it) added if
/// given: the chain loaded and put together. Recovery reads a commit's state
/// this way; staging folds a chain into a whole snapshot this way.
pub fn load_whole(
    state_dir: &Path,
    worker: u32,
    head: Link,
    next: Option<WorkerSnapshot>,
    closing: &WindowRules,
) -> Result<WorkerSnapshot, SinkError> {
    let epoch = next.as_ref().map_or(head.epoch, |n| n.epoch);
    let mut chain = load_chain(state_dir, worker, head)?;
    chain.extend(next);
    materialize(chain, closing).map_err(|source| SinkError::Snapshot {
        path: state_dir.join(snapshot_path(epoch, worker)),
        source,
    })
}
