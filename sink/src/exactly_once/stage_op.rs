//! The Stage operator (every worker): once the frontier passes epoch e, hand
//! e's outputs, final rows and snapshot to this worker's stage thread; when
//! the thread has written them durably, tell the committer.
//!
//! ```text
//!   Outgoing (exchanged to the partition's publisher) ─┐
//!   final rows per dataset (local)                     ├─ frontier past e ─▶ StageJob(e) ─▶ stage thread
//!   Captures: this worker's snapshot of e ─────────────┘                          │
//!   StagedMsg(e) ◀── at e's capability ◀── Stager::stage done ◀───────────────────┘
//!                     (outputs left in Held for the publish thread)
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use iotflow_dataflow::job::{Epoch, epoch_of, held_from, stash};
use serde::{Deserialize, Serialize};
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::progress::frontier::MutableAntichain;
use timely::scheduling::SyncActivator;

use crate::error::SinkError;
use crate::protocol::Staged;
use crate::shape::Row;

use super::SinkContext;
use super::offload::Offload;
use super::outgoing::Outgoing;
use super::stager::{StageJob, StagedEpoch, Stager};

/// What a worker tells the committer about an epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedMsg {
    pub worker: u32,
    pub epoch: Epoch,
    pub staged: Staged,
}

type StageThread = Offload<StageJob, Result<StagedEpoch, crate::error::SinkError>>;

/// Starts this worker's stage thread: staging, then the outputs into `Held`
/// for the publish thread, before the worker says it staged.
fn stage_thread(
    ctx: &SinkContext,
    worker: u32,
    activator: SyncActivator,
) -> Result<StageThread, SinkError> {
    let (cfg, held) = (Arc::clone(&ctx.cfg), Arc::clone(&ctx.held));
    let mut stager = Stager::new(cfg, ctx.capture_plan(), worker, ctx.restored.clone());
    Offload::spawn("stage", activator, move |job: StageJob| {
        let epoch = job.epoch;
        let mut staged = stager.stage(job).map_err(|e| e.at("staging", epoch))?;
        held.put(worker, staged.epoch, std::mem::take(&mut staged.outputs));
        Ok(staged)
    })
}

/// A worker's epochs between their inputs and their staging.
struct Shell {
    ctx: SinkContext,
    worker: u32,
    thread: StageThread,
    /// The next epoch to stage.
    next: Epoch,
    records: BTreeMap<Epoch, Vec<Outgoing>>,
    /// Per epoch, each dataset's final rows.
    finals: BTreeMap<Epoch, Vec<Vec<Row>>>,
    datasets: usize,
    /// Epochs handed to the thread, with the capability their message needs.
    in_flight: BTreeMap<Epoch, Capability<Epoch>>,
}

impl Shell {
    /// The thread's answers: what each staged epoch tells the committer.
    fn answers(&mut self, mut emit: impl FnMut(&Capability<Epoch>, StagedMsg)) {
        for done in self.thread.done() {
            match done {
                Ok(s) => {
                    if let Some(cap) = self.in_flight.remove(&s.epoch) {
                        let msg = StagedMsg {
                            worker: self.worker,
                            epoch: s.epoch,
                            staged: s.staged,
                        };
                        emit(&cap, msg);
                    }
                }
                Err(e) => {
                    self.ctx.fail(e);
                    self.in_flight.clear();
                }
            }
        }
    }

    /// Hands every epoch the frontiers have passed to the thread; false once
    /// nothing more will be staged (the end, a stop or a failure).
    fn submit_ready(
        &mut self,
        cap: &mut Capability<Epoch>,
        frontiers: &[MutableAntichain<Epoch>],
    ) -> bool {
        if self.ctx.stop.load(Ordering::Relaxed) {
            self.in_flight.clear();
            return false;
        }
        while !frontiers.iter().any(|f| f.less_equal(&self.next)) {
            let next = self.next;
            let Some(snapshot) = self.ctx.captures.borrow_mut().take(next) else {
                self.ctx.fail(SinkError::Inconsistent {
                    epoch: next,
                    problem: format!("no snapshot on worker {}", self.worker),
                });
                return false;
            };
            let inputs_done = frontiers.iter().all(|f| f.is_empty());
            let records = self.records.remove(&next).unwrap_or_default();
            let finals = self.finals.remove(&next).unwrap_or_default();
            let rest_empty = self.records.is_empty() && self.finals.is_empty();
            let job = StageJob {
                epoch: next,
                records,
                finals,
                snapshot,
                // Nothing more will ever arrive: roll whatever is pending.
                last: inputs_done && rest_empty,
            };
            if self.worker == 0 {
                self.ctx
                    .staging_began
                    .borrow_mut()
                    .insert(next, Instant::now());
            }
            if let Err(e) = self.thread.submit(job) {
                self.ctx.fail(e);
                return false;
            }
            self.in_flight.insert(next, cap.delayed(&next));
            if inputs_done && rest_empty {
                return false;
            }
            self.next += 1;
            cap.downgrade(&self.next);
        }
        true
    }
}

/// Attaches the Stage operator; returns the stream of what each worker staged.
pub fn stage<'scope>(
    records: Stream<'scope, Epoch, Vec<Outgoing>>,
    datasets: Vec<Stream<'scope, Epoch, Vec<Row>>>,
    ctx: &SinkContext,
) -> Stream<'scope, Epoch, Vec<StagedMsg>> {
    let scope = records.scope();
    let worker = scope.index() as u32;
    let mut builder = OperatorBuilder::new("Stage".to_owned(), scope);
    let info = builder.operator_info();
    let activator = scope.worker().sync_activator_for(info.address.to_vec());
    let mut records_in = builder.new_input(records, Exchange::new(Outgoing::publisher));
    let mut datasets_in: Vec<_> = datasets
        .into_iter()
        .map(|d| builder.new_input(d, Pipeline))
        .collect();
    let (staged_out, staged) = builder.new_output::<Vec<StagedMsg>>();
    let mut staged_out = OutputBuilder::from(staged_out);
    let mut shell = match stage_thread(ctx, worker, activator) {
        Ok(thread) => Some(Shell {
            ctx: ctx.clone(),
            worker,
            thread,
            next: ctx.start,
            records: BTreeMap::new(),
            finals: BTreeMap::new(),
            datasets: datasets_in.len(),
            in_flight: BTreeMap::new(),
        }),
        Err(e) => {
            ctx.fail(e);
            None
        }
    };
    let start = ctx.start;
    builder.build(move |caps| {
        let mut caps = held_from(caps, start);
        move |frontiers| {
            let Some(shell) = shell.as_mut() else {
                caps = None;
                return;
            };
            // Epochs before the first staged one are replayed: committed before.
            records_in.for_each(|time, data| {
                if epoch_of(&time) >= start {
                    stash(&mut shell.records, &time, data);
                }
            });
            for (i, input) in datasets_in.iter_mut().enumerate() {
                input.for_each(|time, data| {
                    if epoch_of(&time) < start {
                        return;
                    }
                    let slots = shell
                        .finals
                        .entry(epoch_of(&time))
                        .or_insert_with(|| vec![Vec::new(); shell.datasets]);
                    slots[i].append(data);
                });
            }
            shell.answers(|cap, msg| staged_out.activate().session(cap).give(msg));
            if let Some([cap]) = caps.as_deref_mut()
                && !shell.submit_ready(cap, frontiers)
            {
                caps = None;
            }
        }
    });
    staged
}
