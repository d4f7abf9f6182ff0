//! Which commits are valid, how much of the progress topic recovery reads,
//! and what a starting instance does: plain functions over the records read.

use std::collections::{BTreeMap, BTreeSet};

use iotflow_dataflow::replay::Cut;

use super::CommitRecord;

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
    use std::collections::BTreeMap;

    use iotflow_dataflow::watermark::ShareState;

    use super::super::fixtures::commit_of;
    use super::*;

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
