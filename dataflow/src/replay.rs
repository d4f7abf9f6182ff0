//! Epochs cut again exactly as they were committed.
//!
//! ```text
//!   commits e+1..=f (state unusable) ──cuts──▶ source resumed after e:
//!     epoch k ≤ f: take records below the cut's end per partition, report its recorded state
//!     epoch k > f: cut by time or records, as always
//! ```
//!
//! A live source cuts epochs by wall-clock time and marks partitions idle
//! by wall-clock quiet, so an epoch cut again after a restart differs from
//! the one committed. That matters when recovery resumes before commits it
//! has records of: their outputs may be published already, and publishing
//! skips what a partition's tail holds by (epoch, index). Those epochs must
//! hold the same records and see the same partition states, hence the same
//! watermarks, to produce the same outputs; a cut records both.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::job::Epoch;
use crate::watermark::ShareState;

/// Where a committed epoch ended on each input partition, and each one's state then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cut {
    pub epoch: Epoch,
    /// Per partition: the next offset to read once the epoch was done, and its state.
    pub partitions: BTreeMap<i32, (i64, ShareState)>,
}

/// The cuts a resumed source repeats, in epoch order, before it cuts epochs itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    cuts: VecDeque<Cut>,
}

impl Replay {
    /// The cuts of consecutive epochs from `start` on; the rest are dropped
    /// (an epoch after a gap could not be reached by replaying).
    pub fn new(cuts: impl IntoIterator<Item = Cut>, start: Epoch) -> Self {
        let mut next = start;
        let cuts = cuts
            .into_iter()
            .take_while(|c| {
                let consecutive = c.epoch == next;
                next += 1;
                consecutive
            })
            .collect();
        Self { cuts }
    }

    /// The last epoch replayed, if any.
    pub fn last(&self) -> Option<Epoch> {
        self.cuts.back().map(|c| c.epoch)
    }

    /// Where partition `partition`'s reading in `epoch` stops (records at
    /// this offset and after belong to later epochs); `None` once epochs are
    /// cut live. A partition the cut does not name reads nothing.
    pub fn end(&self, epoch: Epoch, partition: i32, next_offset: i64) -> Option<i64> {
        let cut = self.cuts.front().filter(|c| c.epoch == epoch)?;
        Some(cut.partitions.get(&partition).map_or(next_offset, |p| p.0))
    }

    /// The state partition `partition` reported at the end of `epoch`, if
    /// the epoch is replayed. One the cut does not name is active (it holds
    /// the watermark back, as a partition never read does).
    pub fn state(&self, epoch: Epoch, partition: i32) -> Option<ShareState> {
        let cut = self.cuts.front().filter(|c| c.epoch == epoch)?;
        Some(
            cut.partitions
                .get(&partition)
                .map_or(ShareState::Active, |p| p.1),
        )
    }

    /// `epoch` is over; whether it was the last replayed one.
    pub fn finished(&mut self, epoch: Epoch) -> bool {
        if self.cuts.front().is_some_and(|c| c.epoch == epoch) {
            self.cuts.pop_front();
            return self.cuts.is_empty();
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(epoch: Epoch, parts: &[(i32, i64, ShareState)]) -> Cut {
        Cut {
            epoch,
            partitions: parts.iter().map(|&(p, o, s)| (p, (o, s))).collect(),
        }
    }

    #[test]
    fn epochs_are_replayed_in_order_up_to_the_first_gap_then_cut_live() {
        let cuts = [
            cut(5, &[(0, 10, ShareState::Active), (1, 7, ShareState::Idle)]),
            cut(6, &[(0, 12, ShareState::Active), (1, 7, ShareState::Idle)]),
            cut(8, &[(0, 30, ShareState::Active)]),
        ];
        let mut replay = Replay::new(cuts, 5);
        assert_eq!(replay.last(), Some(6), "epoch 8 follows a gap");
        assert_eq!(replay.end(5, 0, 3), Some(10));
        assert_eq!(replay.state(5, 1), Some(ShareState::Idle));
        // Not the epoch at the front: nothing is said about it.
        assert_eq!(replay.end(6, 0, 10), None);
        // A partition the cut does not name reads nothing and holds the watermark.
        assert_eq!(replay.end(5, 3, 44), Some(44));
        assert_eq!(replay.state(5, 3), Some(ShareState::Active));
        assert!(!replay.finished(4), "not the epoch being replayed");
        assert!(!replay.finished(5));
        assert_eq!(replay.end(6, 0, 10), Some(12));
        assert!(replay.finished(6));
        assert_eq!(replay.end(7, 0, 12), None);
        assert_eq!(replay.state(7, 0), None);
        assert_eq!(replay.last(), None);
    }

    #[test]
    fn cuts_that_do_not_start_at_the_first_epoch_replay_nothing() {
        let replay = Replay::new([cut(6, &[(0, 1, ShareState::Active)])], 5);
        assert_eq!(replay, Replay::default());
    }
}
