//! Snapshot chains: a whole snapshot, then per-epoch deltas linked to it by
//! size and checksum, folded into a new whole one once they outweigh it.
//!
//! ```text
//!   e0 whole ◀── e1 delta ◀── e2 delta ◀── … ◀── ek delta   (each names its predecessor's size + CRC)
//!   deltas ≥ max(last whole, fold_bytes) ──▶ materialize the links still open + ek+1 ──▶ ek+1 whole
//!   ek+1's watermark closed all the chain holds ──▶ ek+1 alone is whole (no read back)
//!   recovery: head ─load_chain─▶ [whole, delta, …] ─materialize─▶ the worker's state
//! ```
//!
//! A fold reads only the links from the oldest one still open: a link whose
//! [`WorkerSnapshot::final_at`] the new watermark passed holds only keys that
//! expired and grid windows that closed, which [`materialize`] would drop.
//! On a backlog the watermark trails the data by a few epochs, so a fold
//! reads those few deltas, not the whole state.

use std::fs;
use std::path::Path;

use iotflow_dataflow::job::Epoch;
use iotflow_dataflow::snapshot::{Link, WindowRules, WorkerSnapshot, materialize, outlives};

use crate::error::SinkError;

use super::state_dir::snapshot_path;

/// A link of the chain as staging wrote it.
#[derive(Debug, Clone, Copy)]
struct Written {
    link: Link,
    /// When the last of its state is final ([`WorkerSnapshot::final_at`]).
    final_at: Option<i64>,
}

/// A worker's chain as staging writes it: its links since the last whole one.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    links: Vec<Written>,
}

impl Chain {
    /// The head: the link the next delta names.
    pub fn last(&self) -> Option<Link> {
        self.links.last().map(|w| w.link)
    }

    /// Whether the next delta should fold the chain into a whole snapshot:
    /// recovery then reads at most about twice the state, and writing costs
    /// at most about twice the deltas.
    pub fn should_fold(&self, fold_bytes: u64) -> bool {
        let Some((base, deltas)) = self.links.split_first() else {
            return false;
        };
        let delta_bytes: u64 = deltas.iter().map(|w| w.link.bytes).sum();
        delta_bytes >= base.link.bytes.max(fold_bytes)
    }

    /// The oldest link whose state `watermark` has not all closed: a fold
    /// starts there. `None`: it closed everything the chain holds, so the
    /// next snapshot (less what its watermark closed) is the whole state.
    pub fn oldest_open(&self, watermark: Option<i64>) -> Option<Link> {
        self.links
            .iter()
            .find(|w| w.final_at.is_some_and(|at| outlives(at, watermark)))
            .map(|w| w.link)
    }

    /// Records the snapshot just written at `link`, whose state is final at
    /// `final_at`; returns the epoch of the chain's whole snapshot (its base).
    pub fn wrote(&mut self, link: Link, whole: bool, final_at: Option<i64>) -> Epoch {
        if whole {
            self.links.clear();
        }
        self.links.push(Written { link, final_at });
        self.links[0].link.epoch
    }
}

/// The chain of snapshot files ending at `head` (worker `worker`'s), oldest
/// first, every link checked against the size and checksum its successor
/// names: back to the whole snapshot, or to the link of epoch `from`, which
/// then stands as the chain's start (its `previous` cleared).
pub fn load_chain(
    state_dir: &Path,
    worker: u32,
    head: Link,
    from: Option<Epoch>,
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
        let mut snap = WorkerSnapshot::decode(&bytes).map_err(|source| SinkError::Snapshot {
            path: path.clone(),
            source,
        })?;
        if from == Some(l.epoch) {
            snap.previous = None;
        }
        link = snap.previous;
        chain.push(snap);
    }
    chain.reverse();
    Ok(chain)
}

/// The whole state at `head` (from the link of epoch `from` on, if given:
/// see [`Chain::oldest_open`]), with `next` (the delta after it) added if
/// given: the chain loaded and put together. Recovery reads a commit's state
/// this way; staging folds a chain into a whole snapshot this way.
pub fn load_whole(
    state_dir: &Path,
    worker: u32,
    head: Link,
    from: Option<Epoch>,
    next: Option<WorkerSnapshot>,
    closing: &WindowRules,
) -> Result<WorkerSnapshot, SinkError> {
    let epoch = next.as_ref().map_or(head.epoch, |n| n.epoch);
    let mut chain = load_chain(state_dir, worker, head, from)?;
    chain.extend(next);
    materialize(chain, closing).map_err(|source| SinkError::Snapshot {
        path: state_dir.join(snapshot_path(epoch, worker)),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(epoch: Epoch, bytes: u64) -> Link {
        Link {
            epoch,
            bytes,
            checksum: 0,
        }
    }

    #[test]
    fn a_fold_starts_at_the_oldest_link_still_open_and_is_due_once_deltas_outweigh_the_base() {
        let mut chain = Chain::default();
        assert_eq!(chain.oldest_open(None), None);
        assert_eq!(chain.wrote(link(0, 100), true, Some(50)), 0);
        assert_eq!(chain.wrote(link(1, 30), false, Some(80)), 0);
        assert_eq!(chain.wrote(link(2, 60), false, None), 0);
        assert_eq!(chain.oldest_open(None), Some(link(0, 100)));
        assert_eq!(chain.oldest_open(Some(40)), Some(link(0, 100)));
        // What is due at the watermark is final: link 0 closed, link 1 open.
        assert_eq!(chain.oldest_open(Some(50)), Some(link(1, 30)));
        assert_eq!(chain.oldest_open(Some(80)), None);
        assert!(!chain.should_fold(1), "90 bytes of deltas on a base of 100");
        assert_eq!(chain.wrote(link(3, 10), false, Some(i64::MAX)), 0);
        assert!(chain.should_fold(1));
        assert!(!chain.should_fold(101), "below fold_bytes");
        assert_eq!(chain.oldest_open(Some(i64::MAX - 1)), Some(link(3, 10)));
        assert_eq!(chain.last(), Some(link(3, 10)));
        assert_eq!(chain.wrote(link(4, 5), true, Some(90)), 4);
        assert_eq!(chain.last(), Some(link(4, 5)));
        assert!(!chain.should_fold(1));
    }
}
