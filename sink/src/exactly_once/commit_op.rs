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
use timely::scheduling::SyncActivator;

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

type CommitThread = Offload<Job, Result<Done, SinkError>>;

/// Starts worker 0's commit thread: appends (then the files' renames) and
/// garbage collection, in the order the committer asks for them.
fn commit_thread(ctx: &SinkContext, activator: SyncActivator) -> Result<CommitThread, SinkError> {
    let cfg = Arc::clone(&ctx.cfg);
    let mut appender: Option<Appender> = None;
    Offload::spawn("commit", activator, move |job: Job| match job {
        Job::Append(record) => {
            let at = |e: SinkError| e.at("committing", record.epoch);
            if appender.is_none() {
                let connected =
                    Appender::connect(&cfg.bootstrap, &cfg.progress_topic, cfg.parquet_dir.clone());
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
    })
}

/// Worker 0's half of the operator: the committer, its thread, and the
/// capabilities of staged epochs not yet committed.
struct Shell {
    ctx: SinkContext,
    committer: Committer,
    thread: CommitThread,
    caps: BTreeMap<Epoch, Capability<Epoch>>,
    ended: bool,
    failed: bool,
    built: Instant,
}

impl Shell {
    fn new(ctx: SinkContext, thread: CommitThread) -> Self {
        let committer = Committer::new(Start {
            job: ctx.cfg.job.clone(),
            generation: ctx.cfg.generation,
            workers: ctx.workers,
            epoch: ctx.start,
            history: ctx.history.clone(),
            depth: ctx.cfg.depth,
        });
        Self {
            ctx,
            committer,
            thread,
            caps: BTreeMap::new(),
            ended: false,
            failed: false,
            built: Instant::now(),
        }
    }

    /// The commit thread's answers, as events.
    fn answers(&mut self, events: &mut Vec<Event>) {
        for done in self.thread.done() {
            match done {
                Ok(Done::Appended { epoch, offset }) => {
                    observe_commit(&self.ctx, epoch, self.built);
                    events.push(Event::Appended { epoch, offset });
                }
                Ok(Done::Collected) => {}
                Err(e) => {
                    self.ctx.fail(e);
                    self.failed = true;
                }
            }
        }
    }

    /// Feeds `events` to the committer and carries out its actions;
    /// committed records go to `emit` with their epoch's capability.
    fn handle(
        &mut self,
        events: Vec<Event>,
        mut emit: impl FnMut(&Capability<Epoch>, CommitRecord),
    ) {
        if self.ctx.stop.load(Ordering::Relaxed) {
            self.failed = true;
        }
        for event in events {
            if self.failed {
                break;
            }
            let actions = match self.committer.handle(event) {
                Ok(a) => a,
                Err(e) => {
                    self.ctx.fail(e.into());
                    self.failed = true;
                    break;
                }
            };
            for action in actions {
                let submitted = match action {
                    Action::Append(record) => {
                        if self.committer.in_flight() > 0 {
                            failpoint::hit(Site::CommitAhead);
                        }
                        self.thread.submit(Job::Append(record))
                    }
                    Action::Collect(c) => self.thread.submit(Job::Collect(c)),
                    Action::Publish(record) => {
                        if let Some(cap) = self.caps.remove(&record.epoch) {
                            emit(&cap, (*record).clone());
                        }
                        Ok(())
                    }
                };
                if let Err(e) = submitted {
                    self.ctx.fail(e);
                    self.failed = true;
                }
            }
        }
        if self.failed || self.committer.done() {
            self.caps.clear();
        }
    }
}

/// Attaches the Commit operator; returns the committed epochs' records.
pub fn commit<'scope>(
    staged: Stream<'scope, Epoch, Vec<StagedMsg>>,
    acks: Stream<'scope, Epoch, Vec<Ack>>,
    ctx: &SinkContext,
) -> Stream<'scope, Epoch, Vec<CommitRecord>> {
    let scope = staged.scope();
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
    let mut shell = match (scope.index() == 0).then(|| commit_thread(ctx, activator)) {
        Some(Ok(thread)) => Some(Shell::new(ctx.clone(), thread)),
        Some(Err(e)) => {
            ctx.fail(e);
            None
        }
        None => None,
    };
    builder.build(move |caps| {
        drop(caps);
        move |frontiers| {
            let mut events = Vec::new();
            staged_in.for_each(|time, data| {
                if let Some((cap, shell)) = time.retain_least(0).zip(shell.as_mut()) {
                    shell.caps.entry(epoch_of(&time)).or_insert(cap);
                }
                events.extend(data.drain(..).map(|m| Event::Staged {
                    epoch: m.epoch,
                    worker: m.worker,
                    staged: m.staged,
                }));
            });
            acks_in.for_each(|_, data| {
                let acks = data
                    .drain(..)
                    .map(|(epoch, worker)| Event::Published { epoch, worker });
                events.extend(acks);
            });
            let Some(shell) = shell.as_mut() else {
                return;
            };
            shell.answers(&mut events);
            if !shell.ended && frontiers[0].is_empty() {
                shell.ended = true;
                events.push(Event::StagingEnded);
            }
            let staged_frontier = frontiers[0].frontier().first().copied();
            if let Some(epoch) = staged_frontier.and_then(|f| shell.committer.never_commits(f)) {
                // A worker stopped (its own error or a stop anywhere in the
                // job): this epoch never commits, and holding it would hold
                // the sources' gate, so the stop could never reach them.
                tracing::warn!(epoch, "not every worker staged; stopping commits");
                shell.failed = true;
            }
            shell.handle(events, |cap, record| {
                committed_out.activate().session(cap).give(record);
            });
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
