//! The Kafka source: partitions of the input topic, read with rskafka.
//!
//! ```text
//!   partitions, sorted ──i % workers──▶ owned by worker i (the same in every process)
//!   fetcher thread (own tokio runtime + client; `fetch`) ──per partition──▶ bounded queue
//!        └─ waits while a queue holds ≥ max_buffered_bytes: backpressure, not memory growth
//!   operator ──drains queues──▶ SourceEvent::Record@epoch
//!        epoch ends every `interval` (Time) or after N records per partition (Records),
//!        or where its commit cut it (`replay`: epochs cut again after recovery)
//!        ──▶ SourceEvent::Status per partition: Active | Idle | Finished
//! ```
//!
//! `until_end` reads up to the high watermarks seen at start, then finishes,
//! which closes every window; `drain` does the same with the high watermarks
//! seen when it is raised (a live job asked to finish). Errors stop the source and are reported through
//! [`SourceError`] for the runner to return.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, Stream};

use crate::job::{Backpressure, Epoch, PartitionStatus, SourceEvent};
use crate::metrics::JobMetrics;
use crate::replay::{Cut, Replay};
use crate::watermark::ShareState;

mod fetch;
use fetch::{Queue, start_fetcher};

/// Bytes asked for per fetch.
const FETCH_BYTES: i32 = 4 * 1024 * 1024;

/// Record bytes a partition's queue holds before its fetcher waits, unless
/// configured: one fetch's worth of read-ahead (16 MiB kept ~170 MB of
/// records queued on a backlog).
pub const DEFAULT_FETCH_BUFFER_BYTES: usize = FETCH_BYTES as usize;

/// How the source cuts epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochMode {
    /// Every `interval` of processing time (live jobs).
    Time(Duration),
    /// Every N records per partition: deterministic, the same for any worker count.
    Records(u64),
}

/// Kafka source settings.
#[derive(Debug, Clone)]
pub struct KafkaSourceConfig {
    pub bootstrap: iotflow_redpanda::Brokers,
    pub topic: String,
    pub epochs: EpochMode,
    /// Read to the high watermarks seen at start, then finish.
    pub until_end: bool,
    /// Once raised: read to the high watermarks of that moment, then finish.
    pub drain: Arc<AtomicBool>,
    /// A caught-up partition quiet this long stops holding the watermark back.
    pub idle_timeout: Duration,
    /// Per-partition bytes fetched ahead of the dataflow.
    pub max_buffered_bytes: usize,
    /// With epochs cut by time: at most this many records per partition in
    /// one epoch, so a backlog is cut into bounded epochs (progress is
    /// committed steadily while catching up, and an epoch's state stays small).
    pub max_epoch_records: u64,
    /// Where to start per partition (default: the earliest offset).
    pub start_offsets: BTreeMap<i32, i64>,
    /// The first epoch (a resumed job goes on after its last commit).
    pub start_epoch: Epoch,
    /// Committed epochs from `start_epoch` on to cut again as they were
    /// (recovery resumed before them): see [`crate::replay`].
    pub replay: Vec<Cut>,
}

impl KafkaSourceConfig {
    pub fn new(bootstrap: impl Into<iotflow_redpanda::Brokers>, topic: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            topic: topic.into(),
            epochs: EpochMode::Time(Duration::from_millis(250)),
            until_end: false,
            drain: Arc::default(),
            idle_timeout: Duration::from_secs(5),
            max_buffered_bytes: DEFAULT_FETCH_BUFFER_BYTES,
            max_epoch_records: 25_000,
            start_offsets: BTreeMap::new(),
            start_epoch: 0,
            replay: Vec::new(),
        }
    }
}

/// The first error any source hit; the run fails with it.
pub type SourceError = Arc<Mutex<Option<String>>>;

fn fail(slot: &SourceError, msg: String) {
    tracing::error!(error = %msg, "kafka source failed");
    if let Ok(mut s) = slot.lock() {
        s.get_or_insert(msg);
    }
}

struct Owned {
    partition: i32,
    queue: Arc<Mutex<Queue>>,
    next_offset: i64,
    taken_in_epoch: u64,
    last_record: Instant,
}

/// Partitions of `topic` this worker owns, in partition order.
pub fn owned_partitions(all: &[i32], worker: usize, peers: usize) -> Vec<i32> {
    let mut sorted = all.to_vec();
    sorted.sort_unstable();
    sorted
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % peers.max(1) == worker)
        .map(|(_, p)| p)
        .collect()
}

/// Where a partition's reading starts: the committed offset, or the earliest
/// without one. A committed offset the broker no longer retains stops the job:
/// skipping to the earliest would silently lose the records in between.
pub fn start_offset(committed: Option<i64>, earliest: i64) -> Result<i64, String> {
    match committed {
        Some(s) if s < earliest => Err(format!(
            "offset {s} is no longer retained (earliest is {earliest}); refusing to skip data"
        )),
        Some(s) => Ok(s),
        None => Ok(earliest),
    }
}

/// Decides a partition's state at the end of an epoch.
pub fn share_state(
    done_and_drained: bool,
    caught_up: bool,
    quiet: Duration,
    cfg_idle: Duration,
    deterministic: bool,
) -> ShareState {
    if done_and_drained {
        ShareState::Finished
    } else if !deterministic && caught_up && quiet >= cfg_idle {
        ShareState::Idle
    } else {
        ShareState::Active
    }
}

/// The Kafka source operator for this worker. `stop` ends it early (Ctrl-C).
pub fn kafka_source<'scope>(
    scope: Scope<'scope, Epoch>,
    cfg: KafkaSourceConfig,
    error: SourceError,
    stop: Arc<AtomicBool>,
    gate: Backpressure,
    metrics: Arc<JobMetrics>,
) -> Stream<'scope, Epoch, Vec<SourceEvent>> {
    let (worker, peers) = (scope.index(), scope.peers());
    source(scope, "KafkaSource", move |cap, info| {
        let activator = scope.activator_for(Rc::clone(&info.address));
        let sync_activator = scope.worker().sync_activator_for(info.address.to_vec());
        let mut cap = cap;
        cap.downgrade(&cfg.start_epoch);
        let mut cap = Some(cap);
        let mut epoch: Epoch = cfg.start_epoch;
        let mut epoch_started = Instant::now();
        let deterministic = matches!(cfg.epochs, EpochMode::Records(_));
        let mut replay = Replay::new(cfg.replay.clone(), cfg.start_epoch);
        let owned: Vec<Owned> = match start_fetcher(
            &cfg,
            worker,
            peers,
            Arc::clone(&error),
            Arc::clone(&stop),
            sync_activator,
            Arc::clone(&metrics),
        ) {
            Ok(queues) => queues
                .into_iter()
                .map(|(partition, start, queue)| Owned {
                    partition,
                    queue,
                    next_offset: start,
                    taken_in_epoch: 0,
                    last_record: Instant::now(),
                })
                .collect(),
            Err(e) => {
                fail(&error, e);
                Vec::new()
            }
        };
        let mut owned = owned;
        move |output| {
            let Some(c) = cap.as_mut() else { return };
            if stop.load(Ordering::Relaxed) || error.lock().map(|e| e.is_some()).unwrap_or(true) {
                // Tell every worker of every process, so none waits for us forever.
                let mut session = output.session(c);
                // A worker without partitions still tells the others, as partition −1.
                let stopped: Vec<(i32, i64)> = if owned.is_empty() {
                    vec![(-1, 0)]
                } else {
                    owned.iter().map(|o| (o.partition, o.next_offset)).collect()
                };
                for (partition, next_offset) in stopped {
                    session.give(SourceEvent::Status(PartitionStatus {
                        partition,
                        share: 0,
                        shares: 1,
                        state: ShareState::Stopped,
                        next_offset,
                    }));
                }
                drop(session);
                cap = None;
                return;
            }
            if owned.is_empty() {
                cap = None;
                return;
            }
            if !gate.admits(epoch) {
                // Records wait in the bounded queues; full queues pause the fetcher.
                activator.activate_after(crate::source::GATE_RETRY);
                return;
            }
            let per_epoch = match cfg.epochs {
                EpochMode::Records(n) => n.max(1),
                EpochMode::Time(_) => cfg.max_epoch_records.max(1),
            };
            {
                let mut session = output.session(c);
                for o in owned.iter_mut() {
                    let Ok(mut q) = o.queue.lock() else { continue };
                    // A replayed epoch takes what its cut took; a live one up to its bound.
                    let end = replay.end(epoch, o.partition, o.next_offset);
                    while end.map_or(o.taken_in_epoch < per_epoch, |end| o.next_offset < end) {
                        if let (Some(end), Some(r)) = (end, q.records.front())
                            && r.offset >= end
                        {
                            // The cut's last records are gone (compacted): it ends here all the same.
                            o.next_offset = end;
                            break;
                        }
                        let Some(rec) = q.records.pop_front() else {
                            break;
                        };
                        q.bytes = q.bytes.saturating_sub(rec.value.len());
                        o.next_offset = rec.offset + 1;
                        o.taken_in_epoch += 1;
                        o.last_record = Instant::now();
                        session.give(SourceEvent::Record(rec));
                    }
                }
            }
            let replayed = owned.iter().all(|o| {
                replay
                    .end(epoch, o.partition, o.next_offset)
                    .is_some_and(|end| o.next_offset >= end)
            });
            let epoch_over = replayed
                || replay.last().is_none()
                    && match cfg.epochs {
                        EpochMode::Time(interval) => {
                            epoch_started.elapsed() >= interval
                                || owned.iter().any(|o| o.taken_in_epoch >= per_epoch)
                        }
                        EpochMode::Records(n) => owned.iter().all(|o| {
                            o.taken_in_epoch >= n
                                || o.queue
                                    .lock()
                                    .map(|q| q.done && q.records.is_empty())
                                    .unwrap_or(true)
                        }),
                    };
            if epoch_over {
                let mut all_finished = true;
                let mut session = output.session(c);
                for o in owned.iter_mut() {
                    let (drained, caught_up) = match o.queue.lock() {
                        Ok(q) => {
                            metrics.set_next_offset(o.partition, o.next_offset);
                            metrics.set_end_offset(o.partition, q.high_watermark);
                            (
                                q.done && q.records.is_empty(),
                                q.records.is_empty() && o.next_offset >= q.high_watermark,
                            )
                        }
                        Err(_) => (true, true),
                    };
                    let state = replay.state(epoch, o.partition).unwrap_or_else(|| {
                        share_state(
                            drained,
                            caught_up,
                            o.last_record.elapsed(),
                            cfg.idle_timeout,
                            deterministic,
                        )
                    });
                    all_finished &= state == ShareState::Finished;
                    tracing::debug!(
                        epoch,
                        partition = o.partition,
                        next_offset = o.next_offset,
                        ?state,
                        "epoch cut"
                    );
                    session.give(SourceEvent::Status(PartitionStatus {
                        partition: o.partition,
                        share: 0,
                        shares: 1,
                        state,
                        next_offset: o.next_offset,
                    }));
                    o.taken_in_epoch = 0;
                }
                drop(session);
                if all_finished {
                    cap = None;
                    return;
                }
                if replay.finished(epoch) {
                    // Epochs are cut live from here: quiet is measured from now.
                    owned
                        .iter_mut()
                        .for_each(|o| o.last_record = Instant::now());
                }
                epoch += 1;
                epoch_started = Instant::now();
                c.downgrade(&epoch);
                activator.activate();
            } else if let EpochMode::Time(interval) = cfg.epochs {
                activator.activate_after(interval.saturating_sub(epoch_started.elapsed()));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_spread_round_robin_in_partition_order() {
        let all = [3, 0, 2, 1, 4];
        assert_eq!(owned_partitions(&all, 0, 2), vec![0, 2, 4]);
        assert_eq!(owned_partitions(&all, 1, 2), vec![1, 3]);
        assert_eq!(owned_partitions(&all, 2, 3), vec![2]);
        assert!(owned_partitions(&all, 5, 8).is_empty());
    }

    #[test]
    fn a_committed_offset_out_of_retention_stops_the_job() {
        assert_eq!(start_offset(None, 40), Ok(40));
        assert_eq!(start_offset(Some(57), 40), Ok(57));
        assert_eq!(start_offset(Some(40), 40), Ok(40));
        let err = start_offset(Some(12), 40).unwrap_err();
        assert!(
            err.contains("offset 12 is no longer retained (earliest is 40)"),
            "{err}"
        );
    }

    #[test]
    fn share_state_rules() {
        let t = Duration::from_secs(5);
        assert_eq!(
            share_state(true, true, Duration::ZERO, t, true),
            ShareState::Finished
        );
        assert_eq!(share_state(false, true, t, t, false), ShareState::Idle);
        assert_eq!(
            share_state(false, true, t, t, true),
            ShareState::Active,
            "deterministic epochs never idle"
        );
        assert_eq!(
            share_state(false, false, t * 10, t, false),
            ShareState::Active,
            "lagging is never idle"
        );
    }
}
