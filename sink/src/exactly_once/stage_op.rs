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

use iotflow_dataflow::job::{Epoch, epoch_of, held_from};
use serde::{Deserialize, Serialize};
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::protocol::Staged;
use crate::records::AggregateRecord;

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

/// Attaches the Stage operator; returns the stream of what each worker staged.
pub fn stage<'scope>(
    records: Stream<'scope, Epoch, Vec<Outgoing>>,
    datasets: Vec<Stream<'scope, Epoch, Vec<AggregateRecord>>>,
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
    let ctx = ctx.clone();
    let thread: Result<StageThread, _> = {
        let (cfg, held) = (Arc::clone(&ctx.cfg), Arc::clone(&ctx.held));
        let mut stager = Stager::new(Arc::clone(&cfg), worker, ctx.restored.clone());
        Offload::spawn("stage", activator, move |job: StageJob| {
            let epoch = job.epoch;
            let mut staged = stager.stage(job).map_err(|e| e.at("staging", epoch))?;
            held.put(worker, staged.epoch, std::mem::take(&mut staged.outputs));
            Ok(staged)
        })
    };
    builder.build(move |caps| {
        let mut caps = held_from(caps, ctx.start);
        let mut next = ctx.start;
        let mut records: BTreeMap<Epoch, Vec<Outgoing>> = BTreeMap::new();
        let mut finals: BTreeMap<Epoch, Vec<Vec<AggregateRecord>>> = BTreeMap::new();
        let mut in_flight: BTreeMap<Epoch, Capability<Epoch>> = BTreeMap::new();
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                ctx.fail(e);
                None
            }
        };
        let datasets = datasets_in.len();
        move |frontiers| {
            records_in.for_each(|time, data| {
                records.entry(epoch_of(&time)).or_default().append(data);
            });
            for (i, input) in datasets_in.iter_mut().enumerate() {
                input.for_each(|time, data| {
                    let slots = finals
                        .entry(epoch_of(&time))
                        .or_insert_with(|| vec![Vec::new(); datasets]);
                    slots[i].append(data);
                });
            }
            let Some(thread) = thread.as_ref() else {
                caps = None;
                return;
            };
            for done in thread.done() {
                match done {
                    Ok(s) => {
                        if let Some(cap) = in_flight.remove(&s.epoch) {
                            staged_out.activate().session(&cap).give(StagedMsg {
                                worker,
                                epoch: s.epoch,
                                staged: s.staged,
                            });
                        }
                    }
                    Err(e) => {
                        ctx.fail(e);
                        in_flight.clear();
                    }
                }
            }
            if ctx.stop.load(Ordering::Relaxed) {
                caps = None;
                in_flight.clear();
                return;
            }
            while let Some([cap]) = caps.as_deref_mut() {
                if frontiers.iter().any(|f| f.less_equal(&next)) {
                    break;
                }
                let Some(snapshot) = ctx.captures.borrow_mut().take(next) else {
                    ctx.fail(crate::error::SinkError::Inconsistent {
                        epoch: next,
                        problem: format!("no snapshot on worker {worker}"),
                    });
                    caps = None;
                    break;
                };
                let inputs_done = frontiers.iter().all(|f| f.is_empty());
                let job = StageJob {
                    epoch: next,
                    records: records.remove(&next).unwrap_or_default(),
                    finals: finals.remove(&next).unwrap_or_default(),
                    snapshot,
                    // Nothing more will ever arrive: roll whatever is pending.
                    last: inputs_done && records.is_empty() && finals.is_empty(),
                };
                if worker == 0 {
                    ctx.staging_began.borrow_mut().insert(next, Instant::now());
                }
                if let Err(e) = thread.submit(job) {
                    ctx.fail(e);
                    caps = None;
                    break;
                }
                in_flight.insert(next, cap.delayed(&next));
                if inputs_done && records.is_empty() && finals.is_empty() {
                    caps = None;
                    break;
                }
                next += 1;
                cap.downgrade(&next);
            }
        }
    });
    staged
}
