//! Checkpoints: the whole state every K epochs, and the commits between
//! them naming the newest one with the cuts since (commit format 3).
//!
//! ```text
//!   commit c with every worker's snapshot ──▶ the newest checkpoint (c, its offsets)
//!   commit c' with none ──▶ the checkpoint's snapshots + its offsets + cuts c+1..=c'
//!   recovery from c': restore c, cut c+1..=c' again as they were, stage from c'+1
//! ```

use std::collections::BTreeMap;

use iotflow_dataflow::replay::Cut;
use serde::{Deserialize, Serialize};

use super::{COMMIT_FORMAT, CommitRecord, ProtocolError, SnapshotEntry};

/// The newest checkpoint before a commit that has no snapshot of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub epoch: u64,
    /// Next offset to read per input partition once the checkpoint's epoch was done.
    pub source_offsets: BTreeMap<i32, i64>,
    /// The epochs after it, through the commit's own, as they were cut.
    pub cuts: Vec<Cut>,
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::{commit_of, staged};
    use super::super::{EpochStaging, Staged};
    use super::*;

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
}
