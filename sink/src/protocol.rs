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

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use iotflow_dataflow::replay::Cut;
use iotflow_dataflow::sealed::{Unsealed, seal, unseal};
use iotflow_dataflow::watermark::ShareState;
use serde::{Deserialize, Serialize};

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

/// The newest checkpoint before a commit that has no snapshot of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub epoch: u64,
    /// Next offset to read per input partition once the checkpoint's epoch was done.
    pub source_offsets: BTreeMap<i32, i64>,
    /// The epochs after it, through the commit's own, as they were cut.
    pub cuts: Vec<Cut>,
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

/// The run's newest checkpoint, which the commits after it name until the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoints {
    latest: Option<(Vec<SnapshotEntry>, Checkpoint)>,
}

impl Checkpoints {
    /// Completes `record` before it is appended: one with every worker's
    /// snapshot is the newest checkpoint; one with none names the newest
    /// checkpoint's snapshots, and the cuts since it (format 3).
    pub fn complete(&mut self, record: &mut CommitRecord) -> Result<(), ProtocolError> {
        if record.snapshots.len() == record.workers as usize {
            let checkpoint = Checkpoint {
                epoch: record.epoch,
                source_offsets: record.source_offsets.clone(),
                cuts: Vec::new(),
            };
            self.latest = Some((record.snapshots.clone(), checkpoint));
            return Ok(());
        }
        let (Some((snapshots, checkpoint)), Some(cut), true) = (
            self.latest.as_mut(),
            record.cut(),
            record.snapshots.is_empty(),
        ) else {
            return Err(ProtocolError::Unexpected {
                epoch: record.epoch,
                what: "snapshots of some workers only, or none and no checkpoint before",
            });
        };
        checkpoint.cuts.push(cut);
        record.snapshots.clone_from(snapshots);
        record.checkpoint = Some(checkpoint.clone());
        record.format = COMMIT_FORMAT;
        Ok(())
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

/// The valid commits of one job, fed in log order. An instance commits
/// under a generation above every earlier one. A newer generation's first
/// commit, at epoch s, voids every older generation's commits from s on (it
/// resumed before them, so they are another history); a record from an older
/// generation after that is a stale instance's and is void too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobCommits {
    owner: u64,
    highest: u64,
    by_epoch: BTreeMap<u64, CommitRecord>,
}

impl JobCommits {
    /// Takes the next record of the job from the log; whether it is valid.
    pub fn push(&mut self, commit: CommitRecord) -> bool {
        self.highest = self.highest.max(commit.generation);
        if commit.generation < self.owner {
            return false;
        }
        if commit.generation > self.owner {
            self.owner = commit.generation;
            self.by_epoch.retain(|e, _| *e < commit.epoch);
        }
        // Same generation, same epoch again: a retried append; the latest counts.
        self.by_epoch.insert(commit.epoch, commit);
        true
    }

    /// The generation the next instance takes: above every one seen, void or not.
    pub fn next_generation(&self) -> u64 {
        self.highest + 1
    }

    /// Valid commits, newest epoch first.
    pub fn newest_first(&self) -> impl Iterator<Item = &CommitRecord> {
        self.by_epoch.values().rev()
    }

    pub fn get(&self, epoch: u64) -> Option<&CommitRecord> {
        self.by_epoch.get(&epoch)
    }
}

/// Where recovery from `c` (at `offset`) must start reading the progress
/// topic: its `log_from`, or the record itself when it needs nothing before;
/// a format-1 record (no pipelining fields) from the earliest retained offset.
pub fn history_start(c: &CommitRecord, offset: i64, earliest: i64, end: i64) -> i64 {
    let from = match (c.unpublished_from, c.log_from) {
        (None, _) => earliest,
        (Some(_), None) => offset,
        (Some(_), Some(from)) => from,
    };
    from.clamp(earliest, end)
}

/// Whether the job's records read from offset `from` (with their offsets,
/// in log order) are enough: the highest generation's newest record must
/// have its own history in view too (a stale instance may have written the
/// newest record). `Some(earlier)`: read from there.
pub fn history_needs(
    commits: &[(i64, CommitRecord)],
    from: i64,
    earliest: i64,
    end: i64,
) -> Option<i64> {
    let (offset, c) = commits.iter().max_by_key(|(o, c)| (c.generation, *o))?;
    let needed = history_start(c, *offset, earliest, end);
    (needed < from).then_some(needed)
}

/// The valid commits of `job` up to epoch `upto` among `read` (with their
/// offsets, in log order), oldest first, with their offsets: what a resumed
/// committer starts from.
pub fn valid_history(
    read: &[(i64, CommitRecord)],
    job: &str,
    upto: u64,
) -> Vec<(CommitRecord, i64)> {
    let mut valid = JobCommits::default();
    let mut offsets = BTreeMap::new();
    for (offset, c) in read.iter().filter(|(_, c)| c.job == job) {
        if valid.push(c.clone()) {
            offsets.insert((c.epoch, c.generation), *offset);
        }
    }
    let mut history: Vec<(CommitRecord, i64)> = valid
        .newest_first()
        .filter(|c| c.epoch <= upto)
        .filter_map(|c| Some((c.clone(), *offsets.get(&(c.epoch, c.generation))?)))
        .collect();
    history.reverse();
    history
}

/// What a starting instance does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// No usable commit: start from the beginning of the input.
    Fresh { generation: u64, discard: Vec<u64> },
    /// Restore `from`'s snapshots and offsets, make sure its outputs are all
    /// published, discard staged epochs after it, and go on with `from.epoch + 1`.
    Resume {
        generation: u64,
        from: Box<CommitRecord>,
        /// The valid commits whose publishing may be unfinished, oldest first
        /// (`from` last): finish each, in this order, before going on.
        finish: Vec<CommitRecord>,
        discard: Vec<u64>,
        /// Newer commits skipped because their snapshots failed verification.
        skipped: Vec<u64>,
        /// How the skipped commits' epochs were cut, oldest first, as far as
        /// their records say: the resumed run cuts them the same way, so
        /// what they published is published again, not something else.
        replay: Vec<Cut>,
    },
}

/// Plans recovery from the progress topic's records of this `job` (in log
/// order, undecodable ones already reported and dropped), the epochs found
/// staged on disk, and a check of each commit's snapshots (present, sizes and
/// checksums match). The newest commit whose snapshots verify wins; every
/// staged epoch after it is discarded; the generation goes above every one seen.
pub fn plan_recovery(
    job: &str,
    commits: &[CommitRecord],
    staged_on_disk: &BTreeSet<u64>,
    mut snapshots_ok: impl FnMut(&CommitRecord) -> bool,
) -> Plan {
    let mut valid = JobCommits::default();
    for c in commits.iter().filter(|c| c.job == job) {
        valid.push(c.clone());
    }
    let generation = valid.next_generation();
    let mut skipped = Vec::new();
    for c in valid.newest_first() {
        // Every commit that may be partly published must be in view: one
        // that is not (compacted away, or not read) is never skipped silently.
        let finish: Option<Vec<CommitRecord>> = c
            .maybe_unpublished()
            .map(|e| valid.get(e).cloned())
            .collect();
        if let Some(finish) = finish.filter(|_| snapshots_ok(c)) {
            let discard = staged_on_disk.range(c.epoch + 1..).copied().collect();
            let replay = (c.epoch + 1..).map_while(|e| valid.get(e)?.cut()).collect();
            return Plan::Resume {
                generation,
                from: Box::new(c.clone()),
                finish,
                discard,
                skipped,
                replay,
            };
        }
        skipped.push(c.epoch);
    }
    Plan::Fresh {
        generation,
        discard: staged_on_disk.iter().copied().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(worker: u32, partition: i32, records: u64) -> Staged {
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

    fn commit_of(epoch: u64, generation: u64, workers: u32) -> CommitRecord {
        let mut s = EpochStaging::new(epoch, workers);
        for w in 0..workers {
            s.stage(w, staged(w, w as i32, epoch)).unwrap();
        }
        s.commit("job", generation).unwrap()
    }

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

    #[test]
    fn recovery_finishes_every_valid_commit_that_may_be_unpublished_oldest_first() {
        let mut commits: Vec<CommitRecord> = (0..6).map(|e| commit_of(e, 1, 1)).collect();
        commits[5].unpublished_from = Some(3);
        // Generation 2 resumed after epoch 3: its epoch 4 voids generation 1's 4 and 5.
        let mut resumed = commit_of(4, 2, 1);
        resumed.unpublished_from = Some(2);
        let plan =
            |commits: &[CommitRecord]| match plan_recovery("job", commits, &BTreeSet::new(), |_| {
                true
            }) {
                Plan::Resume { finish, .. } => finish
                    .iter()
                    .map(|c| (c.epoch, c.generation))
                    .collect::<Vec<_>>(),
                other => panic!("{other:?}"),
            };
        assert_eq!(plan(&commits), vec![(3, 1), (4, 1), (5, 1)]);
        commits.push(resumed);
        assert_eq!(plan(&commits), vec![(2, 1), (3, 1), (4, 2)]);
    }

    #[test]
    fn a_commit_whose_unpublished_range_is_not_in_view_is_never_resumed_from() {
        let mut newest = commit_of(7, 1, 1);
        newest.unpublished_from = Some(4);
        // Commit 5 is missing (compacted away, or never read).
        let commits = vec![commit_of(4, 1, 1), commit_of(6, 1, 1), newest];
        match plan_recovery("job", &commits, &BTreeSet::new(), |_| true) {
            Plan::Resume { from, skipped, .. } => {
                assert_eq!((from.epoch, skipped), (6, vec![7]));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn commits_between_checkpoints_name_the_checkpoint_and_the_cuts_since() {
        let mut checkpoints = Checkpoints::default();
        let without_snapshots = |epoch: u64| {
            let mut s = EpochStaging::new(epoch, 2);
            for w in 0..2 {
                let staged = Staged {
                    snapshot: None,
                    ..staged(w, w as i32, epoch)
                };
                s.stage(w, staged).unwrap();
            }
            s.commit("job", 1).unwrap()
        };
        let mut first = without_snapshots(3);
        assert!(
            checkpoints.complete(&mut first).is_err(),
            "nothing to name yet"
        );
        let mut checkpoint = commit_of(4, 1, 2);
        checkpoints.complete(&mut checkpoint).unwrap();
        assert_eq!((checkpoint.format, &checkpoint.checkpoint), (2, &None));
        let (mut five, mut six) = (without_snapshots(5), without_snapshots(6));
        checkpoints.complete(&mut five).unwrap();
        checkpoints.complete(&mut six).unwrap();
        assert_eq!(six.format, COMMIT_FORMAT);
        assert_eq!(six.snapshots, checkpoint.snapshots);
        let named = six.checkpoint.clone().unwrap();
        assert_eq!(
            (named.epoch, &named.source_offsets),
            (4, &checkpoint.source_offsets)
        );
        assert_eq!(named.cuts, vec![five.cut().unwrap(), six.cut().unwrap()]);
        // Some workers with snapshots and some without: refused.
        let mut mixed = EpochStaging::new(7, 2);
        mixed.stage(0, staged(0, 0, 7)).unwrap();
        let no_snapshot = Staged {
            snapshot: None,
            ..staged(1, 1, 7)
        };
        mixed.stage(1, no_snapshot).unwrap();
        assert!(
            checkpoints
                .complete(&mut mixed.commit("job", 1).unwrap())
                .is_err()
        );
        // The next checkpoint starts over.
        let mut eight = commit_of(8, 1, 2);
        checkpoints.complete(&mut eight).unwrap();
        let mut nine = without_snapshots(9);
        checkpoints.complete(&mut nine).unwrap();
        let named = nine.checkpoint.unwrap();
        assert_eq!((named.epoch, named.cuts.len()), (8, 1));
        // A format-2 reader refuses what it would misread.
        let bytes = six.encode().unwrap();
        assert_eq!(CommitRecord::decode(&bytes).unwrap(), six);
    }

    #[test]
    fn skipped_commits_are_cut_again_as_recorded_up_to_one_that_does_not_say_how() {
        let mut idle = commit_of(5, 1, 2);
        idle.source_states.insert(1, ShareState::Idle);
        let mut older_binary = commit_of(7, 1, 2);
        older_binary.source_states.clear();
        let commits = vec![
            commit_of(3, 1, 2),
            commit_of(4, 1, 2),
            idle,
            commit_of(6, 1, 2),
            older_binary,
            commit_of(8, 1, 2),
        ];
        // Only commit 4's state is intact.
        let Plan::Resume {
            from,
            skipped,
            replay,
            ..
        } = plan_recovery("job", &commits, &BTreeSet::new(), |c| c.epoch <= 4)
        else {
            panic!("resumes");
        };
        assert_eq!((from.epoch, skipped), (4, vec![8, 7, 6, 5]));
        let cut = |epoch: u64, idle: bool| Cut {
            epoch,
            partitions: BTreeMap::from([
                (0, (1_000, ShareState::Active)),
                (
                    1,
                    (
                        1_001,
                        [ShareState::Active, ShareState::Idle][usize::from(idle)],
                    ),
                ),
            ]),
        };
        // Epoch 7's record does not say its states: it and 8 are cut live.
        assert_eq!(replay, vec![cut(5, true), cut(6, false)]);
        // A stopped input: that epoch is never cut the same way.
        let mut stopped = commit_of(5, 1, 1);
        stopped.source_states.insert(0, ShareState::Stopped);
        assert_eq!(stopped.cut(), None);
        assert_eq!(commit_of(5, 1, 1).cut().map(|c| c.epoch), Some(5));
    }

    #[test]
    fn a_newer_generation_voids_the_older_history_from_where_it_resumed() {
        let mut log = JobCommits::default();
        for (epoch, generation) in [(0, 1), (1, 1), (2, 1), (3, 1)] {
            assert!(log.push(commit_of(epoch, generation, 1)));
        }
        // Generation 2 resumed after epoch 1: its epoch 2 voids generation 1's 2 and 3.
        assert!(log.push(commit_of(2, 2, 1)));
        // A stale generation-1 instance appends epoch 4 afterwards: void.
        assert!(!log.push(commit_of(4, 1, 1)));
        let valid: Vec<(u64, u64)> = log
            .newest_first()
            .map(|c| (c.epoch, c.generation))
            .collect();
        assert_eq!(valid, vec![(2, 2), (1, 1), (0, 1)]);
        assert_eq!(log.next_generation(), 3);
        // Recovery never resumes from the stale record.
        let records: Vec<CommitRecord> = [(0, 1), (1, 1), (2, 1), (3, 1), (2, 2), (4, 1)]
            .into_iter()
            .map(|(e, g)| commit_of(e, g, 1))
            .collect();
        match plan_recovery("job", &records, &BTreeSet::new(), |_| true) {
            Plan::Resume {
                generation, from, ..
            } => assert_eq!((generation, from.epoch), (3, 2)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn recovery_resumes_from_the_newest_verified_commit() {
        let commits = vec![commit_of(0, 1, 2), commit_of(1, 1, 2), commit_of(2, 2, 2)];
        let staged = BTreeSet::from([2, 3, 4]);
        match plan_recovery("job", &commits, &staged, |_| true) {
            Plan::Resume {
                generation,
                from,
                finish,
                discard,
                skipped,
                replay,
            } => {
                assert_eq!((generation, from.epoch), (3, 2));
                assert_eq!((discard, skipped), (vec![3, 4], vec![]));
                assert_eq!(replay, vec![], "nothing skipped, nothing cut again");
                assert_eq!(finish, vec![*from], "a format-1 record: only itself");
            }
            other => panic!("{other:?}"),
        }
        // The newest snapshot is corrupt: fall back one commit, never start empty.
        match plan_recovery("job", &commits, &staged, |c| c.epoch != 2) {
            Plan::Resume {
                from,
                discard,
                skipped,
                ..
            } => {
                assert_eq!(from.epoch, 1);
                assert_eq!((discard, skipped), (vec![2, 3, 4], vec![2]));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            plan_recovery("job", &commits, &staged, |_| false),
            Plan::Fresh {
                generation: 3,
                discard: vec![2, 3, 4]
            }
        );
        assert_eq!(
            plan_recovery("other-job", &commits, &BTreeSet::new(), |_| true),
            Plan::Fresh {
                generation: 1,
                discard: vec![]
            }
        );
    }
}
