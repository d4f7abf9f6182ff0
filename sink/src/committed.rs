//! Read-committed reading of an output topic (`iotflow tail`): an epoch is
//! shown once its commit record is on the progress topic and every record
//! the commit names has arrived, so a reader sees whole committed epochs and
//! nothing else.
//!
//! ```text
//!   progress topic ──JobCommits (generation rules)──▶ next valid epoch e > shown
//!   output partition p ──records (epoch header)──▶ Assembly(e): older skipped,
//!        epoch e taken until the commit's count for p, later ones wait
//!   every count met ──▶ epoch e, in partition then publish order
//! ```

use std::collections::BTreeMap;

use crate::protocol::CommitRecord;

/// What the reader does with a partition's next record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Part of the epoch being assembled: taken, read on.
    Taken,
    /// From an earlier epoch (already shown, or before the reader started): read on.
    Skipped,
    /// From a later epoch, or this partition is complete: leave it for later.
    Later,
}

/// One committed epoch being gathered from the output partitions.
#[derive(Debug, Clone)]
pub struct Assembly<R> {
    epoch: u64,
    want: BTreeMap<i32, u64>,
    got: BTreeMap<i32, Vec<R>>,
}

impl<R> Assembly<R> {
    /// The records `commit` publishes to `topic`.
    pub fn new(commit: &CommitRecord, topic: &str) -> Self {
        let mut want = BTreeMap::new();
        for t in commit.publish.iter().filter(|t| t.topic == topic) {
            *want.entry(t.partition).or_default() += t.records;
        }
        Self {
            epoch: commit.epoch,
            want,
            got: BTreeMap::new(),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// What to do with `partition`'s next record, which carries epoch `epoch`.
    pub fn decide(&self, partition: i32, epoch: u64) -> Offer {
        if epoch < self.epoch {
            Offer::Skipped
        } else if epoch > self.epoch || !self.needs(partition) {
            Offer::Later
        } else {
            Offer::Taken
        }
    }

    /// Offers `partition`'s next record, which carries epoch `epoch`: taken
    /// when [`Self::decide`] says so, handed back otherwise.
    pub fn offer(&mut self, partition: i32, epoch: u64, record: R) -> Result<(), (Offer, R)> {
        match self.decide(partition, epoch) {
            Offer::Taken => {
                self.got.entry(partition).or_default().push(record);
                Ok(())
            }
            other => Err((other, record)),
        }
    }

    /// Whether `partition` still needs records of this epoch.
    pub fn needs(&self, partition: i32) -> bool {
        let want = self.want.get(&partition).copied().unwrap_or(0);
        self.got.get(&partition).map_or(0, Vec::len) < want as usize
    }

    pub fn complete(&self) -> bool {
        self.want.keys().all(|p| !self.needs(*p))
    }

    /// The epoch's records, partition by partition in publish order.
    pub fn into_records(self) -> Vec<(i32, R)> {
        self.got
            .into_iter()
            .flat_map(|(p, records)| records.into_iter().map(move |r| (p, r)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{EpochStaging, PublishTarget, Staged};

    fn commit(epoch: u64, counts: &[(&str, i32, u64)]) -> CommitRecord {
        let mut s = EpochStaging::new(epoch, 1);
        s.stage(
            0,
            Staged {
                publish: counts
                    .iter()
                    .map(|&(topic, partition, records)| PublishTarget {
                        topic: topic.into(),
                        partition,
                        records,
                        checksum: 0,
                    })
                    .collect(),
                ..Staged::default()
            },
        )
        .unwrap();
        s.commit("job", 1).unwrap()
    }

    #[test]
    fn an_epoch_is_complete_only_with_every_record_its_commit_names() {
        let c = commit(5, &[("out", 0, 2), ("out", 1, 1), ("dlq", 0, 7)]);
        let mut a = Assembly::new(&c, "out");
        assert!(!a.complete());
        assert_eq!(a.offer(0, 4, "old"), Err((Offer::Skipped, "old")));
        assert_eq!(a.offer(0, 5, "a"), Ok(()));
        assert_eq!(a.offer(1, 6, "next"), Err((Offer::Later, "next")));
        assert!(!a.complete() && a.needs(0) && a.needs(1));
        assert_eq!(a.offer(1, 5, "c"), Ok(()));
        assert_eq!(a.offer(0, 5, "b"), Ok(()));
        assert_eq!(a.decide(0, 5), Offer::Later, "partition 0 has its two");
        assert_eq!(
            a.decide(2, 5),
            Offer::Later,
            "nothing wanted from partition 2"
        );
        assert!(a.complete(), "the dlq counts are another topic's");
        assert_eq!(a.into_records(), vec![(0, "a"), (0, "b"), (1, "c")]);
    }

    #[test]
    fn an_epoch_with_nothing_for_the_topic_is_complete_at_once() {
        let a: Assembly<()> = Assembly::new(&commit(3, &[("dlq", 0, 1)]), "out");
        assert!(a.complete());
        assert!(a.into_records().is_empty());
    }
}
