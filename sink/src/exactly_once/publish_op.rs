//! The Publish operator (every worker): each committed epoch goes to this
//! worker's publish thread, which sends the worker's staged outputs of it to
//! their partitions; the ack goes back to the committer (and holds the
//! sources back while epochs wait).
//!
//! ```text
//!   CommitRecord(e) (broadcast) ─▶ publish thread: Held.take(worker, e) ─▶ Publisher::publish
//!   ack (e, worker) ◀── at e's capability ◀── done
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use iotflow_dataflow::job::Epoch;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::scheduling::SyncActivator;

use crate::error::SinkError;
use crate::protocol::CommitRecord;

use super::SinkContext;
use super::commit_op::Ack;
use super::offload::Offload;
use super::publisher::Publisher;

/// Starts this worker's publish thread: each committed epoch's outputs of
/// this worker, from `Held`, to their partitions.
fn publish_thread(
    ctx: &SinkContext,
    worker: u32,
    activator: SyncActivator,
) -> Result<Offload<Epoch, Result<Epoch, SinkError>>, SinkError> {
    let (cfg, held) = (Arc::clone(&ctx.cfg), Arc::clone(&ctx.held));
    let mut publisher: Option<Publisher> = None;
    Offload::spawn("publish", activator, move |epoch: Epoch| {
        let outputs = held.take(worker, epoch);
        if !outputs.is_empty() {
            let at = |e: SinkError| e.at("publishing", epoch);
            if publisher.is_none() {
                let connected = Publisher::connect(&cfg.bootstrap, &cfg.job, cfg.fresh);
                publisher = Some(connected.map_err(at)?);
            }
            publisher
                .as_mut()
                .ok_or(SinkError::ThreadGone("publish"))?
                .publish(epoch, &outputs)
                .map_err(at)?;
        }
        Ok(epoch)
    })
}

/// Attaches the Publish operator; returns the acks.
pub fn publish<'scope>(
    committed: Stream<'scope, Epoch, Vec<CommitRecord>>,
    ctx: &SinkContext,
) -> Stream<'scope, Epoch, Vec<Ack>> {
    let scope = committed.scope();
    let worker = scope.index() as u32;
    let mut builder = OperatorBuilder::new("Publish".to_owned(), scope);
    let info = builder.operator_info();
    let activator = scope.worker().sync_activator_for(info.address.to_vec());
    let mut committed_in = builder.new_input(committed.broadcast(), Pipeline);
    let (acks_out, acks) = builder.new_output::<Vec<Ack>>();
    let mut acks_out = OutputBuilder::from(acks_out);
    let ctx = ctx.clone();
    let thread = publish_thread(&ctx, worker, activator);
    builder.build(move |caps| {
        drop(caps);
        let mut in_flight: BTreeMap<Epoch, Capability<Epoch>> = BTreeMap::new();
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                ctx.fail(e);
                None
            }
        };
        move |_frontiers| {
            let mut arrived = Vec::new();
            committed_in.for_each(|time, data| {
                if let Some(cap) = time.retain_least(0) {
                    for c in data.drain(..) {
                        // Committed: its alert events are what the outputs hold now.
                        ctx.metrics.with_alert_board(|b| b.committed(c.epoch));
                        in_flight.entry(c.epoch).or_insert_with(|| cap.clone());
                        arrived.push(c.epoch);
                    }
                }
            });
            let Some(thread) = thread.as_ref() else {
                in_flight.clear();
                return;
            };
            if ctx.stop.load(Ordering::Relaxed) {
                in_flight.clear();
                return;
            }
            for epoch in arrived {
                if let Err(e) = thread.submit(epoch) {
                    ctx.fail(e);
                    in_flight.clear();
                    return;
                }
            }
            for done in thread.done() {
                match done {
                    Ok(epoch) => {
                        if let Some(cap) = in_flight.remove(&epoch) {
                            acks_out.activate().session(&cap).give((epoch, worker));
                        }
                    }
                    Err(e) => {
                        ctx.fail(e);
                        in_flight.clear();
                    }
                }
            }
        }
    });
    acks
}
