//! The whole commit protocol under crashes, driven by the real
//! [`Committer`](super::Committer): a model of the progress topic and the
//! output partitions that a run may leave after any step, recovered by
//! `plan_recovery` as a starting instance does.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use proptest::prelude::*;

use super::tests::staged;
use super::*;
use crate::protocol::{
    Plan, TailMark, history_needs, history_start, plan_recovery, unpublished, valid_history,
};

/// The world the committer's actions act on, with crashes.
#[derive(Default)]
struct World {
    log: Vec<CommitRecord>,
    outputs: Vec<Vec<(u64, u64)>>,
    crash_points: BTreeSet<usize>,
    step: usize,
}

impl World {
    /// Whether the process survives this step.
    fn alive(&mut self) -> bool {
        self.step += 1;
        !self.crash_points.remove(&(self.step - 1))
    }

    /// Publishes `records` of `epoch` to `partition`, skipping what its tail shows.
    fn publish(&mut self, epoch: u64, partition: usize, records: u64) -> bool {
        let tail = self.outputs[partition]
            .last()
            .map(|&(epoch, index)| TailMark { epoch, index });
        for i in unpublished(tail, epoch, records) {
            if !self.alive() {
                return false;
            }
            self.outputs[partition].push((epoch, i));
        }
        true
    }
}

proptest! {
    /// The whole protocol under crashes, driven by the real committer: a
    /// run of deterministic epochs on two workers, whose publishing and
    /// staging interleave as `order` says, killed after any step any
    /// number of times and recovered by `plan_recovery`, ends with each
    /// output partition holding exactly a crash-free run's records.
    #[test]
    fn crashes_at_any_step_leave_exactly_the_crash_free_output(
        sizes in prop::collection::vec((0u64..4, 0u64..4), 1..8),
        crashes in prop::collection::vec(0usize..300, 0..12),
        order in prop::collection::vec(0usize..3, 0..400),
        depth in 1usize..6,
    ) {
        let expected: Vec<Vec<(u64, u64)>> = (0..2)
            .map(|p| sizes.iter().enumerate()
                .flat_map(|(e, s)| (0..if p == 0 { s.0 } else { s.1 }).map(move |i| (e as u64, i)))
                .collect())
            .collect();
        let records = |epoch: u64, worker: u32| {
            let s = sizes[epoch as usize];
            if worker == 0 { s.0 } else { s.1 }
        };
        let mut world = World {
            outputs: vec![Vec::new(), Vec::new()],
            crash_points: crashes.into_iter().collect(),
            ..World::default()
        };
        let mut choice = order.into_iter().cycle();
        'process: for _ in 0..100 {
            // As recovery reads it: only the suffix the newest record names.
            let from = world.log.last().map_or(0, |c| {
                let end = world.log.len() as i64;
                history_start(c, end - 1, 0, end)
            });
            let read: Vec<(i64, CommitRecord)> = world.log.iter().cloned().enumerate()
                .skip(from as usize)
                .map(|(o, c)| (o as i64, c))
                .collect();
            prop_assert_eq!(history_needs(&read, from, 0, world.log.len() as i64), None);
            let suffix: Vec<CommitRecord> = read.iter().map(|(_, c)| c.clone()).collect();
            let plan = plan_recovery("job", &suffix, &BTreeSet::new(), |_| true);
            let (generation, first, history) = match plan {
                Plan::Fresh { generation, .. } => (generation, 0, Vec::new()),
                Plan::Resume { generation, from, finish, .. } => {
                    for c in &finish {
                        for t in &c.publish {
                            if !world.publish(c.epoch, t.partition as usize, t.records) {
                                continue 'process;
                            }
                        }
                    }
                    let history = valid_history(&read, "job", from.epoch);
                    (generation, from.epoch + 1, history)
                }
            };
            let mut committer = Committer::new(Start {
                job: "job".into(), generation, workers: 2, epoch: first, history, depth,
            });
            // Pending work: (epoch, worker) to stage, an append, publishes per worker.
            let mut to_stage: Vec<VecDeque<u64>> =
                vec![(first..sizes.len() as u64).collect(); 2];
            let mut append: Option<Box<CommitRecord>> = None;
            let mut to_publish: Vec<VecDeque<Arc<CommitRecord>>> = vec![VecDeque::new(); 2];
            let mut ended = false;
            while !committer.done() {
                if !ended && to_stage.iter().all(VecDeque::is_empty) {
                    ended = true;
                    let actions = committer.handle(Event::StagingEnded).unwrap();
                    take(actions, &mut append, &mut to_publish);
                    continue;
                }
                // Pick some ready work, as `order` says.
                let ready: Vec<usize> = (0..5)
                    .filter(|&k| match k {
                        0 | 1 => !to_stage[k].is_empty(),
                        2 => append.is_some(),
                        _ => !to_publish[k - 3].is_empty(),
                    })
                    .collect();
                prop_assert!(!ready.is_empty(), "stuck");
                let k = ready[choice.next().unwrap_or(0) % ready.len()];
                if !world.alive() {
                    continue 'process;
                }
                let actions = match k {
                    0 | 1 => {
                        let worker = k as u32;
                        let Some(epoch) = to_stage[k].pop_front() else { continue };
                        committer.handle(Event::Staged {
                            epoch,
                            worker,
                            staged: staged(worker, records(epoch, worker)),
                        }).unwrap()
                    }
                    2 => {
                        let Some(record) = append.take() else { continue };
                        world.log.push(*record.clone());
                        let offset = world.log.len() as i64 - 1;
                        committer.handle(Event::Appended { epoch: record.epoch, offset }).unwrap()
                    }
                    _ => {
                        let worker = k - 3;
                        let Some(c) = to_publish[worker].pop_front() else { continue };
                        for t in c.publish.iter().filter(|t| t.partition as usize == worker) {
                            if !world.publish(c.epoch, worker, t.records) {
                                continue 'process;
                            }
                        }
                        committer.handle(Event::Published { epoch: c.epoch, worker: worker as u32 }).unwrap()
                    }
                };
                take(actions, &mut append, &mut to_publish);
            }
            break;
        }
        prop_assert_eq!(world.outputs, expected);
    }
}

fn take(
    actions: Vec<Action>,
    append: &mut Option<Box<CommitRecord>>,
    to_publish: &mut [VecDeque<Arc<CommitRecord>>],
) {
    for a in actions {
        match a {
            Action::Append(r) => *append = Some(r),
            Action::Publish(c) => to_publish
                .iter_mut()
                .for_each(|q| q.push_back(Arc::clone(&c))),
            Action::Collect(_) => {}
        }
    }
}
