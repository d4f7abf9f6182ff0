//! The Commit operator: worker 0 feeds the [`Committer`] what the workers
//! staged and published, and carries out its actions: appends and garbage
//! collection on the commit thread, committed epochs broadcast to every
//! worker's publisher. Other workers' instances only pass their inputs on.
//!
//! ```text
//!   StagedMsg ─exchange to 0─▶ Event::Staged ─┐
//!   acks (fed back +1) ───────▶ Event::Published ├─▶ Committer ─▶ Append / Collect ─▶ commit thread
//!   staged frontier empty ────▶ Event::StagingEnded ┘                 │ (append, rename files, GC)
//!   CommitRecord(e) ◀── at e's staged capability ◀── Event::Appended ◀┘
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use iotflow_dataflow::job::{Epoch, epoch_of};
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::progress::Antichain;

use crate::committer::{Action, Collect, Committer, Event, Start};
use crate::error::SinkError;
use crate::failpoint::{self, Site};
use crate::protocol::CommitRecord;

use super::SinkContext;
use super::offload::Offload;
use super::publisher::Appender;
use super::stage_op::StagedMsg;
use super::state_dir;

/// A publisher's word that its share of an epoch is out: (epoch, worker).
pub type Ack = (Epoch, u32);

#[derive(Debug)]
enum Job {
    Append(Box<CommitRecord>),
    Collect(Collect),
}

#[derive(Debug)]
enum Done {
    Appended { epoch: Epoch, offset: i64 },
    Collected,
}

/// Attaches the Commit operator; returns the committed epochs' records.
pub fn commit<'scope>(
    staged: Stream<'scope, Epoch, Vec<StagedMsg>>,
    acks: Stream<'scope, Epoch, Vec<Ack>>,
    ctx: &SinkContext,
) -> Stream<'scope, Epoch, Vec<CommitRecord>> {
    let scope = staged.scope();
    let worker = scope.index();
    let mut builder = OperatorBuilder::new("Commit".to_owned(), scope);
    let info = builder.operator_info();
    let activator = scope.worker().sync_activator_for(info.address.to_vec());
    let mut staged_in = builder.new_input(staged, Exchange::new(|_: &StagedMsg| 0));
    let mut acks_in = builder.new_input(acks, Exchange::new(|_: &Ack| 0));
    // Acks only let commits go on and never lead to output: connected, acks
    // and commits would chase each other's frontiers forever.
    let (committed_out, committed) =
        builder.new_output_connection::<Vec<CommitRecord>, _>([(0, Antichain::from_elem(0))]);
    let mut committed_out = OutputBuilder::from(committed_out);
    let ctx = ctx.clone();
    let thread = (worker == 0).then(|| {
        let cfg = Arc::clone(&ctx.cfg);
        let mut appender: Option<Appender> = None;
        Offload::spawn(
            "commit",
            activator,
            move |job: Job| -> Result<Done, SinkError> {
                match job {
                    Job::Append(record) => {
                        let at = |e: SinkError| e.at("committing", record.epoch);
                        if appender.is_none() {
                            let connected = Appender::connect(
                                &cfg.bootstrap,
                                &cfg.progress_topic,
                                cfg.parquet_dir.clone(),
                            );
                            appender = Some(connected.map_err(at)?);
                        }
                        let offset = appender
                            .as_ref()
                            .ok_or(SinkError::ThreadGone("commit"))?
                            .commit(&record)
                            .map_err(at)?;
                        Ok(Done::Appended {
                            epoch: record.epoch,
                            offset,
                        })
                    }
                    Job::Collect(c) => {
                        state_dir::collect(&cfg.state_dir, &cfg.parquet_dir, &c)?;
                        Ok(Done::Collected)
                    }
                }
            },
        )
    });
    builder.build(move |caps| {
        drop(caps);
        let mut committer = Committer::new(Start {
            job: ctx.cfg.job.clone(),
            generation: ctx.cfg.generation,
            workers: ctx.workers,
            epoch: ctx.start,
            history: ctx.history.clone(),
            depth: ctx.cfg.depth,
        });
        let mut caps: BTreeMap<Epoch, Capability<Epoch>> = BTreeMap::new();
        let mut ended = false;
        let mut failed = false;
        let built = Instant::now();
        let thread = match thread {
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                ctx.fail(e);
                None
            }
            None => None,
        };
        move |frontiers| {
            let mut events = Vec::new();
            staged_in.for_each(|time, data| {
                let epoch = epoch_of(&time);
                if let Some(cap) = time.retain_least(0) {
                    caps.entry(epoch).or_insert(cap);
                }
                events.extend(data.drain(..).map(|m| Event::Staged {
                    epoch: m.epoch,
                    worker: m.worker,
                    staged: m.staged,
                }));
            });
            acks_in.for_each(|_, data| {
                events.extend(
                    data.drain(..)
                        .map(|(epoch, worker)| Event::Published { epoch, worker }),
                );
            });
            let Some(thread) = thread.as_ref().filter(|_| !failed) else {
                caps.clear();
                return;
            };
            for done in thread.done() {
                match done {
                    Ok(Done::Appended { epoch, offset }) => {
                        observe_commit(&ctx, epoch, built);
                        events.push(Event::Appended { epoch, offset });
                    }
                    Ok(Done::Collected) => {}
                    Err(e) => {
                        ctx.fail(e);
                        failed = true;
                    }
                }
            }
            if !ended && frontiers[0].is_empty() {
                ended = true;
                events.push(Event::StagingEnded);
            }
            if ctx.stop.load(Ordering::Relaxed) {
                failed = true;
            }
            for event in events {
                if failed {
                    break;
                }
                let actions = match committer.handle(event) {
                    Ok(a) => a,
                    Err(e) => {
                        ctx.fail(e.into());
                        failed = true;
                        break;
                    }
                };
                for action in actions {
                    let submitted = match action {
                        Action::Append(record) => {
                            if committer.in_flight() > 0 {
                                failpoint::hit(Site::CommitAhead);
                            }
                            thread.submit(Job::Append(record))
                        }
                        Action::Collect(c) => thread.submit(Job::Collect(c)),
                        Action::Publish(record) => {
                            if let Some(cap) = caps.remove(&record.epoch) {
                                committed_out
                                    .activate()
                                    .session(&cap)
                                    .give((*record).clone());
                            }
                            Ok(())
                        }
                    };
                    if let Err(e) = submitted {
                        ctx.fail(e);
                        failed = true;
                    }
                }
            }
            if failed || committer.done() {
                caps.clear();
            }
        }
    });
    committed
}

/// Records a commit's latency (worker 0's staging start → appended).
fn observe_commit(ctx: &SinkContext, epoch: Epoch, built: Instant) {
    let began = ctx.staging_began.borrow_mut().remove(&epoch);
    ctx.metrics
        .observe_commit(epoch, began.map_or(Duration::ZERO, |b| b.elapsed()));
    if ctx.metrics.commits.load(Ordering::Relaxed) == 1 {
        tracing::info!(
            epoch,
            after_ms = built.elapsed().as_millis() as u64,
            "first commit of this run"
        );
    }
    tracing::debug!(epoch, generation = ctx.cfg.generation, "committed");
}
