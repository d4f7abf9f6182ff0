//! The exactly-once epoch commit protocol, as plain types and functions: no
//! I/O. Adapters (progress topic, output partitions, staging directory) feed
//! it what they read and do what it decides.
//!
//! ```text
//!   epoch e: every worker stages (outputs + snapshot, checksummed)
//!     ──all staged──▶ CommitRecord(e) appended to the progress topic   ← the commit point
//!     ──▶ publish: per output partition, skip what its tail shows is there
//!   start: latest valid commit C ──▶ Plan { restore C, finish publishing every valid
//!          commit in C.unpublished_from..=C.epoch, discard later staging }
//! ```
//!
//! Commits are pipelined (`committer`): epoch e+1 may commit while e is still
//! being published. So a commit record names the oldest epoch that may not be
//! fully published when it was written (`unpublished_from`), and recovery
//! finishes every valid commit from there to the one it resumes from, in epoch
//! order: each output partition is written in epoch order, so its tail says
//! how far each of them got.
//!
//! A commit record is JSON followed by a CRC-32 of it, so a torn or foreign
//! record on the progress topic is recognised and never trusted.

use std::collections::BTreeMap;
use std::ops::Range;

use iotflow_dataflow::replay::Cut;
use iotflow_dataflow::sealed::{Unsealed, seal, unseal};
use iotflow_dataflow::watermark::ShareState;
use serde::{Deserialize, Serialize};

mod checkpoint;
mod history;

pub use checkpoint::{Checkpoint, Checkpoints};
pub use history::{JobCommits, Plan, history_needs, history_start, plan_recovery, valid_history};

/// Bumped when the record's meaning changes; older readers refuse newer records.
/// 2: pipelined commits (`unpublished_from`, `log_from`): a format-1 reader
/// would finish publishing only the latest commit. 3: a commit between
/// checkpoints (`checkpoint`): its snapshots are the checkpoint's, and a
/// format-2 reader would resume from them at the commit's offsets. Records
/// with their own snapshots are still written as 2.
pub const COMMIT_FORMAT: u32 = 3;
const FORMAT_WITHOUT_CHECKPOINT: u32 = 2;

/// What can be wrong with protocol input.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    #[error("commit record: {0}")]
    Sealed(#[from] Unsealed),
    #[error("commit record format {found} is newer than this binary's {COMMIT_FORMAT}")]
    Format { found: u32 },
    #[error("worker {worker} staged epoch {epoch} twice")]
    StagedTwice { worker: u32, epoch: u64 },
    #[error("worker {worker} is not one of the {workers} workers")]
    UnknownWorker { worker: u32, workers: u32 },
    #[error("encoding a commit record: {0}")]
    Encode(String),
    #[error("epoch {epoch}: {what}")]
    Unexpected { epoch: u64, what: &'static str },
}

/// What one output partition receives in one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishTarget {
    pub topic: String,
    pub partition: i32,
    pub records: u64,
    /// CRC-32 of the epoch's records for this partition, in publish order.
    pub checksum: u32,
}

/// A file the epoch adds to a dataset: staged under `staged`, published at `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub staged: String,
    pub path: String,
    pub bytes: u64,
    pub checksum: u32,
}

/// One worker's state snapshot after the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEntry {
    pub worker: u32,
    pub path: String,
    pub bytes: u64,
    pub checksum: u32,
    /// The epoch of the whole snapshot this one's delta chain starts from.
    #[serde(default)]
    pub base: u64,
}

/// The commit point of one epoch: everything recovery needs to finish it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    pub format: u32,
    pub job: String,
    /// Raised by every start; a record from a lower generation is a stale instance's.
    pub generation: u64,
    pub epoch: u64,
    /// Next offset to read per input partition once this epoch is done.
    pub source_offsets: BTreeMap<i32, i64>,
    pub publish: Vec<PublishTarget>,
    pub files: Vec<FileEntry>,
    pub snapshots: Vec<SnapshotEntry>,
    /// Workers that staged the epoch (snapshots are sharded over them).
    pub workers: u32,
    /// Final windows written to segments but not yet rolled into a Parquet file.
    #[serde(default)]
    pub pending: Vec<PendingEntry>,
    /// The oldest epoch that may not be fully published when this record was
    /// written: every valid commit from it to this one is finished by
    /// recovery. Absent (format 1): only this epoch.
    #[serde(default)]
    pub unpublished_from: Option<u64>,
    /// The progress-topic offset from which a reader sees every commit that
    /// recovery may fall back to from this one (the oldest of the last
    /// `KEPT_COMMITS`, and every commit in their unpublished ranges): recovery
    /// reads from there, not from the topic's start.
    #[serde(default)]
    pub log_from: Option<i64>,
    /// Each input partition's state at the end of the epoch (with
    /// `source_offsets`, where the epoch was cut): recovery that resumes
    /// before this commit cuts the epoch again the same way. Absent in
    /// records of older binaries. (Never skipped when empty: records cross
    /// processes as bincode, which is not self-describing.)
    #[serde(default)]
    pub source_states: BTreeMap<i32, ShareState>,
    /// A commit between checkpoints: `snapshots` are the checkpoint's, and
    /// recovery from this commit restores them, then cuts the epochs since
    /// again as they were, staging none of them (format 3).
    #[serde(default)]
    pub checkpoint: Option<Checkpoint>,
}

/// One worker's final windows of one dataset waiting for the next Parquet
/// roll: the first `bytes` bytes of the segment file `path` (relative to the
/// state directory), frames appended once per epoch since epoch `since`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEntry {
    #[serde(default = "default_dataset")]
    pub dataset: String,
    pub worker: u32,
    pub since: u64,
    pub rows: u64,
    pub path: String,
    pub bytes: u64,
}

fn default_dataset() -> String {
    crate::parquet::DATASET.to_owned()
}

impl CommitRecord {
    /// Checksummed JSON (`iotflow_dataflow::sealed`).
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        seal(self).map_err(|e| ProtocolError::Encode(e.to_string()))
    }

    /// The epochs whose outputs may not all be published when this record was
    /// written: recovery finishes the valid commits among them.
    pub fn maybe_unpublished(&self) -> std::ops::RangeInclusive<u64> {
        self.unpublished_from.unwrap_or(self.epoch).min(self.epoch)..=self.epoch
    }

    /// Where the epoch was cut on each input partition, and each one's
    /// state then; `None` when the record does not say every partition's
    /// state, or an input stopped (such an epoch never ends the same way).
    pub fn cut(&self) -> Option<Cut> {
        let partitions: BTreeMap<i32, (i64, ShareState)> = self
            .source_offsets
            .iter()
            .map(|(p, o)| Some((*p, (*o, *self.source_states.get(p)?))))
            .collect::<Option<_>>()?;
        if partitions.values().any(|(_, s)| *s == ShareState::Stopped) {
            return None;
        }
        Some(Cut {
            epoch: self.epoch,
            partitions,
        })
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let record: CommitRecord = unseal(bytes)?;
        if record.format > COMMIT_FORMAT {
            return Err(ProtocolError::Format {
                found: record.format,
            });
        }
        Ok(record)
    }
}

/// Collects the workers' staging of one epoch; the epoch may commit once all have staged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochStaging {
    pub epoch: u64,
    workers: u32,
    staged: BTreeMap<u32, Staged>,
}

/// What one worker staged.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Staged {
    pub publish: Vec<PublishTarget>,
    pub files: Vec<FileEntry>,
    pub snapshot: Option<SnapshotEntry>,
    pub source_offsets: BTreeMap<i32, i64>,
    /// One entry per dataset with rows waiting for a roll.
    pub pending: Vec<PendingEntry>,
    /// Each input partition's state at the end of the epoch.
    #[serde(default)]
    pub source_states: BTreeMap<i32, ShareState>,
}

impl EpochStaging {
    pub fn new(epoch: u64, workers: u32) -> Self {
        Self {
            epoch,
            workers,
            staged: BTreeMap::new(),
        }
    }

    pub fn stage(&mut self, worker: u32, staged: Staged) -> Result<(), ProtocolError> {
        if worker >= self.workers {
            return Err(ProtocolError::UnknownWorker {
                worker,
                workers: self.workers,
            });
        }
        if self.staged.contains_key(&worker) {
            return Err(ProtocolError::StagedTwice {
                worker,
                epoch: self.epoch,
            });
        }
        self.staged.insert(worker, staged);
        Ok(())
    }

    /// Whether every worker has staged.
    pub fn complete(&self) -> bool {
        self.staged.len() == self.workers as usize
    }

    /// The commit record, once every worker has staged; `None` before.
    pub fn commit(&self, job: &str, generation: u64) -> Option<CommitRecord> {
        if !self.complete() {
            return None;
        }
        let mut record = CommitRecord {
            format: FORMAT_WITHOUT_CHECKPOINT,
            job: job.to_owned(),
            generation,
            epoch: self.epoch,
            source_offsets: BTreeMap::new(),
            publish: Vec::new(),
            files: Vec::new(),
            snapshots: Vec::new(),
            workers: self.workers,
            pending: Vec::new(),
            unpublished_from: Some(self.epoch),
            log_from: None,
            source_states: BTreeMap::new(),
            checkpoint: None,
        };
        for s in self.staged.values() {
            record.source_offsets.extend(&s.source_offsets);
            record.source_states.extend(&s.source_states);
            record.publish.extend(s.publish.iter().cloned());
            record.files.extend(s.files.iter().cloned());
            record.snapshots.extend(s.snapshot.iter().cloned());
            record.pending.extend(s.pending.iter().cloned());
        }
        // One canonical order: the record's bytes depend only on what was staged.
        record
            .publish
            .sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        record.files.sort_by(|a, b| a.path.cmp(&b.path));
        Some(record)
    }
}

/// Where an output partition's tail stands: the last record's epoch and its
/// index within that epoch's records for the partition (both in headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TailMark {
    pub epoch: u64,
    pub index: u64,
}

/// Which of epoch `epoch`'s `records` for a partition still need publishing,
/// given the partition's tail: a crash between batches leaves a prefix there.
pub fn unpublished(tail: Option<TailMark>, epoch: u64, records: u64) -> Range<u64> {
    match tail {
        Some(t) if t.epoch > epoch => records..records,
        Some(t) if t.epoch == epoch => (t.index + 1).min(records)..records,
        _ => 0..records,
    }
}

/// Staged and committed epochs for the protocol's tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use iotflow_dataflow::watermark::ShareState;

    pub fn staged(worker: u32, partition: i32, records: u64) -> Staged {
        Staged {
            publish: vec![PublishTarget {
                topic: "iot.aggregates".into(),
                partition,
                records,
                checksum: 7 * records as u32,
            }],
            files: vec![FileEntry {
                staged: format!("staging/e/w{worker}.parquet"),
                path: format!("aggregates/date=2026-11-22/w{worker}.parquet"),
                bytes: 100,
                checksum: worker,
            }],
            snapshot: Some(SnapshotEntry {
                worker,
                path: format!("snap/w{worker}"),
                bytes: 10,
                checksum: 3,
                base: 0,
            }),
            source_offsets: BTreeMap::from([(partition, 1_000 + i64::from(worker))]),
            pending: Vec::new(),
            source_states: BTreeMap::from([(partition, ShareState::Active)]),
        }
    }

    pub fn commit_of(epoch: u64, generation: u64, workers: u32) -> CommitRecord {
        let mut s = EpochStaging::new(epoch, workers);
        for w in 0..workers {
            s.stage(w, staged(w, w as i32, epoch)).unwrap();
        }
        s.commit("job", generation).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{commit_of, staged};
    use super::*;

    #[test]
    fn an_epoch_commits_only_when_every_worker_staged_and_in_one_order() {
        let mut a = EpochStaging::new(4, 2);
        assert_eq!(a.commit("job", 1), None);
        a.stage(1, staged(1, 1, 5)).unwrap();
        assert_eq!(a.commit("job", 1), None);
        assert_eq!(
            a.stage(1, staged(1, 1, 5)),
            Err(ProtocolError::StagedTwice {
                worker: 1,
                epoch: 4
            })
        );
        assert!(matches!(
            a.stage(2, Staged::default()),
            Err(ProtocolError::UnknownWorker { .. })
        ));
        a.stage(0, staged(0, 0, 3)).unwrap();
        let mut b = EpochStaging::new(4, 2);
        b.stage(0, staged(0, 0, 3)).unwrap();
        b.stage(1, staged(1, 1, 5)).unwrap();
        let (ra, rb) = (a.commit("job", 1).unwrap(), b.commit("job", 1).unwrap());
        assert_eq!(
            ra.encode().unwrap(),
            rb.encode().unwrap(),
            "staging order does not matter"
        );
        assert_eq!(ra.source_offsets, BTreeMap::from([(0, 1_000), (1, 1_001)]));
        assert_eq!(ra.snapshots.len(), 2);
    }

    #[test]
    fn records_round_trip_and_corruption_is_caught() {
        let c = commit_of(9, 3, 2);
        let bytes = c.encode().unwrap();
        assert_eq!(CommitRecord::decode(&bytes).unwrap(), c);
        assert_eq!(
            CommitRecord::decode(&bytes[..3]),
            Err(ProtocolError::Sealed(Unsealed::Truncated(3)))
        );
        for i in [0, bytes.len() / 2, bytes.len() - 5, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            assert!(CommitRecord::decode(&bad).is_err(), "flip at {i} accepted");
        }
        let torn = &bytes[..bytes.len() - 9];
        assert!(CommitRecord::decode(torn).is_err());
        let mut newer = c.clone();
        newer.format = COMMIT_FORMAT + 1;
        assert_eq!(
            CommitRecord::decode(&newer.encode().unwrap()),
            Err(ProtocolError::Format {
                found: COMMIT_FORMAT + 1
            })
        );
    }

    #[test]
    fn records_cross_processes_intact() {
        // Timely exchanges records between processes with bincode, which is
        // not self-describing: a field skipped when empty would shift the rest.
        let mut c = commit_of(9, 3, 2);
        c.log_from = None;
        c.unpublished_from = Some(7);
        let bytes = bincode::serialize(&c).unwrap();
        assert_eq!(bincode::deserialize::<CommitRecord>(&bytes).unwrap(), c);
        c.source_states.clear();
        let bytes = bincode::serialize(&c).unwrap();
        assert_eq!(bincode::deserialize::<CommitRecord>(&bytes).unwrap(), c);
    }

    #[test]
    fn unpublished_skips_exactly_what_the_tail_shows() {
        assert_eq!(unpublished(None, 5, 3), 0..3);
        assert_eq!(
            unpublished(Some(TailMark { epoch: 4, index: 9 }), 5, 3),
            0..3
        );
        assert_eq!(
            unpublished(Some(TailMark { epoch: 5, index: 0 }), 5, 3),
            1..3
        );
        assert_eq!(
            unpublished(Some(TailMark { epoch: 5, index: 2 }), 5, 3),
            3..3
        );
        assert_eq!(
            unpublished(Some(TailMark { epoch: 6, index: 0 }), 5, 3),
            3..3
        );
    }
}
