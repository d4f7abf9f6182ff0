//! The exactly-once epoch commit protocol, as plain types and functions: no
//! I/O. Adapters (progress topic, output partitions, staging directory) feed
//! it what they read and do what it decides.
//!
//! ```text
//!   epoch e: every worker stages (outputs + snapshot, checksummed)
//!     ──all staged──▶ CommitRecord(e) appended to the progress topic   ← the commit point
//!     ──▶ publish: per output partition, skip what its tail shows is there
//!   start: latest valid commit ──▶ Plan { restore, republish, discard later staging }
//! ```
//!
//! A commit record is JSON followed by a CRC-32 of it, so a torn or foreign
//! record on the progress topic is recognised and never trusted.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use iotflow_dataflow::sealed::{Unsealed, seal, unseal};
use serde::{Deserialize, Serialize};

/// Bumped when the record's meaning changes; older readers refuse newer records.
pub const COMMIT_FORMAT: u32 = 1;

/// What can be wrong with protocol input.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("commit record: {0}")]
    Sealed(#[from] Unsealed),
    #[error("commit record format {found} is newer than this binary's {COMMIT_FORMAT}")]
    Format { found: u32 },
    #[error("worker {worker} staged epoch {epoch} twice")]
    StagedTwice { worker: u32, epoch: u64 },
    #[error("worker {worker} is not one of the {workers} workers")]
    UnknownWorker { worker: u32, workers: u32 },
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
}

/// One worker's final windows waiting for the next Parquet roll: the first
/// `bytes` bytes of the segment file `path` (relative to the state
/// directory), frames appended once per epoch since epoch `since`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEntry {
    pub worker: u32,
    pub since: u64,
    pub rows: u64,
    pub path: String,
    pub bytes: u64,
}

impl CommitRecord {
    /// Checksummed JSON (`iotflow_dataflow::sealed`).
    pub fn encode(&self) -> Vec<u8> {
        seal(self)
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
    pub pending: Option<PendingEntry>,
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

    /// The commit record, once every worker has staged; `None` before.
    pub fn commit(&self, job: &str, generation: u64) -> Option<CommitRecord> {
        if self.staged.len() != self.workers as usize {
            return None;
        }
        let mut record = CommitRecord {
            format: COMMIT_FORMAT,
            job: job.to_owned(),
            generation,
            epoch: self.epoch,
            source_offsets: BTreeMap::new(),
            publish: Vec::new(),
            files: Vec::new(),
            snapshots: Vec::new(),
            workers: self.workers,
            pending: Vec::new(),
        };
        for s in self.staged.values() {
            record.source_offsets.extend(&s.source_offsets);
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
        discard: Vec<u64>,
        /// Newer commits skipped because their snapshots failed verification.
        skipped: Vec<u64>,
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
    snapshots_ok: impl Fn(&CommitRecord) -> bool,
) -> Plan {
    let mut valid = JobCommits::default();
    for c in commits.iter().filter(|c| c.job == job) {
        valid.push(c.clone());
    }
    let generation = valid.next_generation();
    let mut skipped = Vec::new();
    for c in valid.newest_first() {
        if snapshots_ok(c) {
            let discard = staged_on_disk.range(c.epoch + 1..).copied().collect();
            return Plan::Resume {
                generation,
                from: Box::new(c.clone()),
                discard,
                skipped,
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
    use proptest::prelude::*;

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
            pending: None,
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
        assert_eq!(ra.encode(), rb.encode(), "staging order does not matter");
        assert_eq!(ra.source_offsets, BTreeMap::from([(0, 1_000), (1, 1_001)]));
        assert_eq!(ra.snapshots.len(), 2);
    }

    #[test]
    fn records_round_trip_and_corruption_is_caught() {
        let c = commit_of(9, 3, 2);
        let bytes = c.encode();
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
            CommitRecord::decode(&newer.encode()),
            Err(ProtocolError::Format {
                found: COMMIT_FORMAT + 1
            })
        );
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
                discard,
                skipped,
            } => {
                assert_eq!((generation, from.epoch), (3, 2));
                assert_eq!((discard, skipped), (vec![3, 4], vec![]));
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

    proptest! {
        /// A model of the whole protocol under crashes: a run of `epochs`
        /// deterministic epochs, with a crash after any protocol step any number
        /// of times, ends with each output partition holding exactly the records
        /// of a crash-free run, in order: no duplicate, no gap.
        #[test]
        fn crashes_at_any_step_leave_exactly_the_crash_free_output(
            sizes in prop::collection::vec((0u64..5, 0u64..5), 1..8),
            crashes in prop::collection::vec(0usize..200, 0..12),
        ) {
            // Epoch e puts sizes[e].p records into partition p (two partitions).
            let expected: Vec<Vec<(u64, u64)>> = (0..2)
                .map(|p| sizes.iter().enumerate()
                    .flat_map(|(e, s)| (0..if p == 0 { s.0 } else { s.1 }).map(move |i| (e as u64, i)))
                    .collect())
                .collect();
            let mut log: Vec<CommitRecord> = Vec::new();
            let mut outputs: Vec<Vec<(u64, u64)>> = vec![Vec::new(), Vec::new()];
            let mut crash_points: BTreeSet<usize> = crashes.into_iter().collect();
            let mut step = 0usize;
            // Returns false when the process "dies" at this step.
            let mut alive = |crash_points: &mut BTreeSet<usize>| {
                step += 1;
                !crash_points.remove(&(step - 1))
            };
            'process: for _ in 0..100 {
                let plan = plan_recovery("job", &log, &BTreeSet::new(), |_| true);
                let (generation, mut next) = match &plan {
                    Plan::Fresh { generation, .. } => (*generation, 0),
                    Plan::Resume { generation, from, .. } => {
                        // Finish publishing the recovered epoch.
                        for t in &from.publish {
                            let out = &mut outputs[t.partition as usize];
                            let tail = out.last().map(|&(epoch, index)| TailMark { epoch, index });
                            for i in unpublished(tail, from.epoch, t.records) {
                                if !alive(&mut crash_points) { continue 'process; }
                                out.push((from.epoch, i));
                            }
                        }
                        (*generation, from.epoch + 1)
                    }
                };
                while (next as usize) < sizes.len() {
                    let mut staging = EpochStaging::new(next, 2);
                    for w in 0..2u32 {
                        if !alive(&mut crash_points) { continue 'process; }
                        let records = if w == 0 { sizes[next as usize].0 } else { sizes[next as usize].1 };
                        staging.stage(w, Staged {
                            publish: vec![PublishTarget { topic: "t".into(), partition: w as i32, records, checksum: 0 }],
                            ..Staged::default()
                        }).unwrap();
                    }
                    let record = staging.commit("job", generation).unwrap();
                    if !alive(&mut crash_points) { continue 'process; }
                    log.push(record.clone());
                    for t in &record.publish {
                        for i in 0..t.records {
                            if !alive(&mut crash_points) { continue 'process; }
                            outputs[t.partition as usize].push((record.epoch, i));
                        }
                    }
                    next += 1;
                }
                break;
            }
            prop_assert_eq!(outputs, expected);
        }
    }
}
