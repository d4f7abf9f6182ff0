//! The commit protocol's order of steps as one sans-I/O state machine: events
//! in, actions out. The timely operators (`eo`) and the crash-model proptest
//! below drive this same type; neither writes the order again.
//!
//! ```text
//!   Staged(e, w) ×workers ─┐
//!   Appended(e−1)  ────────┼─▶ Append(CommitRecord e)           ← one append in flight,
//!   unpublished < depth ───┘                                       epochs in order
//!   Appended(e, offset) ───▶ Publish(e) (every worker; Parquet renames with it)
//!                            Collect (what no kept commit needs any more)
//!   Published(e, w) ×workers, and every epoch before ─▶ published_through = e
//! ```
//!
//! Pipelining: epoch e+1 may be appended while e is still being published,
//! up to `depth` committed-but-unpublished epochs. What recovery needs for
//! that, and why:
//! - commit records are appended in epoch order, one at a time, so the
//!   progress topic holds a prefix of the epochs;
//! - each output partition is published in epoch order (one publisher per
//!   partition, fed in order), so its tail says how far each epoch got;
//! - each record names `unpublished_from`, the oldest epoch not known to be
//!   fully published when it was written, so recovery from commit C finishes
//!   every valid commit in `C.unpublished_from..=C.epoch`, oldest first
//!   (replacing the old rule "only the latest commit can be partly published");
//! - staged outputs of those epochs stay on disk until a kept commit says they
//!   are published ([`Collect`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use crate::protocol::{Checkpoints, CommitRecord, EpochStaging, ProtocolError, Staged};

/// Commits per job that recovery may fall back through.
pub const KEPT_COMMITS: usize = 3;
/// The most committed epochs that may wait for publishing at once.
pub const MAX_DEPTH: usize = 8;
/// Records per job that must survive compaction of the progress topic: the
/// kept commits and every commit in their unpublished ranges, so commit
/// records are keyed by `epoch % RETAINED_SLOTS`.
pub const RETAINED_SLOTS: u64 = (KEPT_COMMITS + MAX_DEPTH) as u64;

/// What the committer is told.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Worker `worker` staged epoch `epoch` durably.
    Staged {
        epoch: u64,
        worker: u32,
        staged: Staged,
    },
    /// The commit record of `epoch` is on the progress topic at `offset`.
    Appended { epoch: u64, offset: i64 },
    /// Worker `worker` published its share of committed epoch `epoch`.
    Published { epoch: u64, worker: u32 },
    /// No worker will stage another epoch (the input ended or the job stops).
    StagingEnded,
}

/// What the committer asks its adapters to do.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// Append this record to the progress topic (the commit point), then move
    /// its Parquet files into the dataset; answer with [`Event::Appended`].
    Append(Box<CommitRecord>),
    /// Publish this committed epoch: every worker its output partitions;
    /// each answers with [`Event::Published`].
    Publish(Arc<CommitRecord>),
    /// Remove what no kept commit needs any more.
    Collect(Collect),
}

/// What garbage collection may remove: decided from the kept commits alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collect {
    /// Staged epoch directories (outputs, snapshots, Parquet staging) below
    /// this epoch: no kept commit's outputs or snapshot chains need them.
    pub epochs_below: u64,
    /// Staged outputs below this epoch (at or above `epochs_below`): all
    /// published. Their snapshots stay: a kept chain or checkpoint holds them.
    pub outputs_below: u64,
    /// Pending-row segments started at or before this epoch...
    pub segments_upto: u64,
    /// ...except these (relative paths), which kept commits name.
    pub segments_kept: BTreeSet<String>,
}

impl Collect {
    /// What the kept commits (oldest first, the newest last) still need.
    pub fn of(kept: &[&CommitRecord]) -> Option<Self> {
        let newest = kept.last()?;
        let outputs = kept.iter().map(|c| *c.maybe_unpublished().start());
        let chains = kept.iter().flat_map(|c| c.snapshots.iter().map(|s| s.base));
        let outputs_below = outputs.clone().min().unwrap_or(newest.epoch);
        Some(Self {
            epochs_below: outputs.chain(chains).min().unwrap_or(newest.epoch),
            outputs_below,
            segments_upto: newest.epoch,
            segments_kept: kept
                .iter()
                .flat_map(|c| &c.pending)
                .map(|p| p.path.clone())
                .collect(),
        })
    }
}

/// Where the committer starts: the run's first epoch and what recovery read.
#[derive(Debug, Clone)]
pub struct Start {
    pub job: String,
    pub generation: u64,
    pub workers: u32,
    /// The first epoch this run stages.
    pub epoch: u64,
    /// The valid commits before `epoch` that recovery read, oldest first,
    /// with their progress-topic offsets; all of them fully published.
    pub history: Vec<(CommitRecord, i64)>,
    /// How many committed epochs may wait for publishing at once (1 to [`MAX_DEPTH`]).
    pub depth: usize,
}

/// The protocol's state between events.
#[derive(Debug)]
pub struct Committer {
    job: String,
    generation: u64,
    workers: u32,
    depth: usize,
    staging: BTreeMap<u64, EpochStaging>,
    /// The next epoch to append.
    next: u64,
    /// The record being appended: one at a time, in epoch order.
    appending: Option<Arc<CommitRecord>>,
    /// Committed epochs not yet published by every worker: who has.
    unpublished: BTreeMap<u64, BTreeSet<u32>>,
    /// The oldest epoch not known to be fully published.
    unpublished_from: u64,
    /// The newest valid commits, oldest first.
    kept: VecDeque<Arc<CommitRecord>>,
    /// Progress-topic offsets of the valid commits a record may still need
    /// recovery to read (see [`Committer::log_from`]).
    offsets: BTreeMap<u64, i64>,
    staging_ended: bool,
    /// The run's newest checkpoint, for the commits between checkpoints.
    checkpoints: Checkpoints,
}

impl Committer {
    pub fn new(start: Start) -> Self {
        let offsets = start.history.iter().map(|(c, o)| (c.epoch, *o)).collect();
        let kept: VecDeque<Arc<CommitRecord>> = start
            .history
            .into_iter()
            .rev()
            .take(KEPT_COMMITS)
            .rev()
            .map(|(c, _)| Arc::new(c))
            .collect();
        Self {
            job: start.job,
            generation: start.generation,
            workers: start.workers,
            depth: start.depth.clamp(1, MAX_DEPTH),
            staging: BTreeMap::new(),
            next: start.epoch,
            appending: None,
            unpublished: BTreeMap::new(),
            unpublished_from: start.epoch,
            kept,
            offsets,
            staging_ended: false,
            checkpoints: Checkpoints::default(),
        }
    }

    /// Takes one event; the actions it makes possible, in the order to start them.
    pub fn handle(&mut self, event: Event) -> Result<Vec<Action>, ProtocolError> {
        let mut actions = Vec::new();
        match event {
            Event::Staged {
                epoch,
                worker,
                staged,
            } => {
                if epoch < self.next {
                    return Err(ProtocolError::StagedTwice { worker, epoch });
                }
                let workers = self.workers;
                self.staging
                    .entry(epoch)
                    .or_insert_with(|| EpochStaging::new(epoch, workers))
                    .stage(worker, staged)?;
            }
            Event::Appended { epoch, offset } => {
                let Some(commit) = self.appending.take_if(|c| c.epoch == epoch) else {
                    return Err(ProtocolError::Unexpected {
                        epoch,
                        what: "an append that was not asked for",
                    });
                };
                self.unpublished.insert(epoch, BTreeSet::new());
                self.offsets.insert(epoch, offset);
                self.kept.push_back(Arc::clone(&commit));
                while self.kept.len() > KEPT_COMMITS {
                    self.kept.pop_front();
                }
                actions.push(Action::Publish(commit));
                let kept: Vec<&CommitRecord> = self.kept.iter().map(Arc::as_ref).collect();
                actions.extend(Collect::of(&kept).map(Action::Collect));
            }
            Event::Published { epoch, worker } => {
                let Some(acked) = self.unpublished.get_mut(&epoch) else {
                    return Err(ProtocolError::Unexpected {
                        epoch,
                        what: "a publish of an epoch that is not waiting for one",
                    });
                };
                if worker >= self.workers || !acked.insert(worker) {
                    return Err(ProtocolError::Unexpected {
                        epoch,
                        what: "a second or unknown publisher",
                    });
                }
                while let Some(entry) = self.unpublished.first_entry() {
                    if entry.get().len() < self.workers as usize {
                        break;
                    }
                    self.unpublished_from = entry.key() + 1;
                    entry.remove();
                }
            }
            Event::StagingEnded => self.staging_ended = true,
        }
        actions.extend(self.append_next()?);
        Ok(actions)
    }

    /// The next epoch's append, if it may start now.
    fn append_next(&mut self) -> Result<Option<Action>, ProtocolError> {
        if self.appending.is_some() || self.unpublished.len() >= self.depth {
            return Ok(None);
        }
        let Some(mut record) = self
            .staging
            .get(&self.next)
            .and_then(|s| s.commit(&self.job, self.generation))
        else {
            return Ok(None);
        };
        self.staging.remove(&self.next);
        self.checkpoints.complete(&mut record)?;
        record.unpublished_from = Some(self.unpublished_from.min(self.next));
        record.log_from = self.log_from(&record);
        self.appending = Some(Arc::new(record.clone()));
        self.next += 1;
        Ok(Some(Action::Append(Box::new(record))))
    }

    /// Where recovery must start reading to resume from `record` or any
    /// commit it may fall back to: with it, the newest KEPT_COMMITS are the
    /// last ones kept and it, and each of those needs every commit from its
    /// `unpublished_from` on. `None`: nothing before the record itself.
    /// Offsets no record can need any more are forgotten.
    fn log_from(&mut self, record: &CommitRecord) -> Option<i64> {
        let skip = (self.kept.len() + 1).saturating_sub(KEPT_COMMITS);
        let newest = self.kept.iter().skip(skip).map(Arc::as_ref);
        let needed = newest
            .chain(std::iter::once(record))
            .map(|c| c.epoch.min(*c.maybe_unpublished().start()))
            .min()
            .unwrap_or(record.epoch);
        self.offsets = self.offsets.split_off(&needed);
        match self.offsets.first_key_value() {
            _ if needed >= record.epoch => None,
            Some((&epoch, &offset)) if epoch == needed => Some(offset),
            // A needed commit recovery did not read (it fell back past the
            // history it read): the whole topic, to be safe.
            _ => Some(0),
        }
    }

    /// Staging has ended and every staged epoch is committed and published:
    /// nothing more will happen. Epochs staged by only some workers (a stop)
    /// never commit.
    pub fn done(&self) -> bool {
        self.staging_ended && self.appending.is_none() && self.unpublished.is_empty()
    }

    /// Every epoch below this one is committed and fully published.
    pub fn published_below(&self) -> u64 {
        self.unpublished_from
    }

    /// The epoch that can never commit, once no worker will stage anything
    /// below `staged_frontier`: the next one to append, if not every worker
    /// staged it (a worker skips staging only when it stops).
    pub fn never_commits(&self, staged_frontier: u64) -> Option<u64> {
        let staged_by_all = self
            .staging
            .get(&self.next)
            .is_some_and(EpochStaging::complete);
        (self.next < staged_frontier && !staged_by_all).then_some(self.next)
    }

    /// Committed epochs still being published.
    pub fn in_flight(&self) -> usize {
        self.unpublished.len()
    }
}

#[cfg(test)]
mod crash_model;

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::protocol::{PublishTarget, SnapshotEntry};

    pub(super) fn staged(worker: u32, records: u64) -> Staged {
        Staged {
            publish: vec![PublishTarget {
                topic: "t".into(),
                partition: worker as i32,
                records,
                checksum: 0,
            }],
            snapshot: Some(SnapshotEntry {
                worker,
                path: format!("s{worker}"),
                bytes: 1,
                checksum: 0,
                base: 0,
            }),
            ..Staged::default()
        }
    }

    fn start(epoch: u64, depth: usize) -> Start {
        Start {
            job: "job".into(),
            generation: 1,
            workers: 2,
            epoch,
            history: Vec::new(),
            depth,
        }
    }

    fn appended(actions: &[Action]) -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Append(r) => Some(r.epoch),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn epochs_append_in_order_one_at_a_time_and_pipeline_up_to_the_depth() {
        let mut c = Committer::new(start(5, 2));
        let stage = |c: &mut Committer, epoch, worker| {
            c.handle(Event::Staged {
                epoch,
                worker,
                staged: staged(worker, 1),
            })
            .unwrap()
        };
        // Epoch 6 staged first: it waits for 5.
        assert!(appended(&stage(&mut c, 6, 0)).is_empty());
        assert!(appended(&stage(&mut c, 6, 1)).is_empty());
        assert!(appended(&stage(&mut c, 5, 1)).is_empty());
        assert_eq!(appended(&stage(&mut c, 5, 0)), [5]);
        // One append in flight: 6 waits for 5's answer.
        let a = c
            .handle(Event::Appended {
                epoch: 5,
                offset: 40,
            })
            .unwrap();
        assert!(matches!(&a[0], Action::Publish(r) if r.epoch == 5));
        assert_eq!(appended(&a), [6], "6 commits while 5 is publishing");
        let Action::Append(r6) = &a[a.len() - 1] else {
            panic!("{a:?}")
        };
        assert_eq!(r6.unpublished_from, Some(5));
        stage(&mut c, 7, 0);
        stage(&mut c, 7, 1);
        let a = c
            .handle(Event::Appended {
                epoch: 6,
                offset: 41,
            })
            .unwrap();
        assert!(appended(&a).is_empty(), "depth 2: 5 and 6 are unpublished");
        assert!(
            c.handle(Event::Published {
                epoch: 5,
                worker: 0
            })
            .unwrap()
            .is_empty()
        );
        let a = c
            .handle(Event::Published {
                epoch: 5,
                worker: 1,
            })
            .unwrap();
        let [Action::Append(r7)] = a.as_slice() else {
            panic!("{a:?}")
        };
        assert_eq!((r7.epoch, r7.unpublished_from), (7, Some(6)));
        assert_eq!(r7.log_from, Some(40), "commits 5 and 6 are the kept ones");
        assert!(
            c.handle(Event::Published {
                epoch: 5,
                worker: 1
            })
            .is_err()
        );
        assert!(
            c.handle(Event::Appended {
                epoch: 9,
                offset: 1
            })
            .is_err()
        );
        assert!(!c.done());
    }

    #[test]
    fn an_epoch_a_worker_never_staged_is_known_once_the_frontier_passes_it() {
        let mut c = Committer::new(start(0, 2));
        c.handle(Event::Staged {
            epoch: 0,
            worker: 0,
            staged: staged(0, 1),
        })
        .unwrap();
        assert_eq!(c.never_commits(0), None, "worker 1 may still stage 0");
        assert_eq!(c.never_commits(1), Some(0), "it never will");
        c.handle(Event::Staged {
            epoch: 0,
            worker: 1,
            staged: staged(1, 1),
        })
        .unwrap();
        assert_eq!(c.never_commits(1), None, "0 is being appended; 1 may come");
        assert_eq!(c.never_commits(5), Some(1), "1 never staged, by anyone");
    }

    #[test]
    fn garbage_is_what_no_kept_commit_needs() {
        let commit = |epoch: u64, from: u64, base: u64, segment: &str| {
            let mut s = EpochStaging::new(epoch, 1);
            let mut st = staged(0, 1);
            if let Some(snap) = st.snapshot.as_mut() {
                snap.base = base;
            }
            st.pending = vec![crate::protocol::PendingEntry {
                dataset: "d".into(),
                worker: 0,
                since: 0,
                rows: 1,
                path: segment.into(),
                bytes: 1,
            }];
            s.stage(0, st).unwrap();
            let mut r = s.commit("job", 1).unwrap();
            r.unpublished_from = Some(from);
            r
        };
        let (a, b, c) = (
            commit(10, 10, 8, "x"),
            commit(11, 10, 8, "x"),
            commit(12, 11, 12, "y"),
        );
        assert_eq!(
            Collect::of(&[&a, &b, &c]),
            Some(Collect {
                epochs_below: 8,
                outputs_below: 10,
                segments_upto: 12,
                segments_kept: BTreeSet::from(["x".into(), "y".into()]),
            })
        );
        assert_eq!(Collect::of(&[&c]).map(|g| g.epochs_below), Some(11));
        assert_eq!(Collect::of(&[]), None);
    }
}
