//! The fetcher thread behind a worker's Kafka source: one tokio runtime
//! and client, a task per owned partition filling that partition's bounded
//! queue, which the source operator drains.
//!
//! ```text
//!   start_fetcher: partitions, offsets ──▶ thread ──per partition──▶ fetch_partition ──▶ Queue
//!        └─ waits while a queue holds ≥ max_bytes: backpressure, not memory growth
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rskafka::client::partition::UnknownTopicHandling;

use super::{FETCH_BYTES, KafkaSourceConfig, SourceError, fail, owned_partitions, start_offset};
use crate::job::RawRecord;
use crate::metrics::JobMetrics;

/// A partition's records fetched ahead of the dataflow.
#[derive(Default)]
pub(super) struct Queue {
    pub(super) records: VecDeque<RawRecord>,
    pub(super) bytes: usize,
    pub(super) high_watermark: i64,
    /// No more records will come (bounded mode reached its end).
    pub(super) done: bool,
}

pub(super) type OwnedQueues = Vec<(i32, i64, Arc<Mutex<Queue>>)>;

/// Looks up partitions and offsets, then starts the fetcher thread.
pub(super) fn start_fetcher(
    cfg: &KafkaSourceConfig,
    worker: usize,
    peers: usize,
    error: SourceError,
    stop: Arc<AtomicBool>,
    activator: timely::scheduling::SyncActivator,
    metrics: Arc<JobMetrics>,
) -> Result<OwnedQueues, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the fetch runtime: {e}"))?;
    let setup = runtime.block_on(async {
        let client = iotflow_redpanda::connect(&cfg.bootstrap, Duration::from_secs(30))
            .await
            .map_err(|e| e.to_string())?;
        let all = iotflow_redpanda::topics::partitions_of(&client, &cfg.topic)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("input topic {} does not exist", cfg.topic))?;
        let mut owned = Vec::new();
        for p in owned_partitions(&all, worker, peers) {
            let pc = client
                .partition_client(cfg.topic.as_str(), p, UnknownTopicHandling::Retry)
                .await
                .map_err(|e| format!("{}/{p}: {e}", cfg.topic))?;
            let (earliest, end) = iotflow_redpanda::scan::offsets(&pc)
                .await
                .map_err(|e| e.to_string())?;
            let start = start_offset(cfg.start_offsets.get(&p).copied(), earliest)
                .map_err(|e| format!("{}/{p}: {e}", cfg.topic))?;
            owned.push((p, start, end, pc));
        }
        Ok::<_, String>((client, owned))
    })?;
    let (_client, owned) = setup;
    for (p, start, end, _) in &owned {
        // Lag from the start, not only from the first epoch cut.
        metrics.set_next_offset(*p, *start);
        metrics.set_end_offset(*p, *end);
    }
    let queues: OwnedQueues = owned
        .iter()
        .map(|(p, start, end, _)| {
            let q = Queue {
                high_watermark: *end,
                done: cfg.until_end && start >= end,
                ..Queue::default()
            };
            (*p, *start, Arc::new(Mutex::new(q)))
        })
        .collect();
    let tasks: Vec<_> = owned
        .into_iter()
        .zip(queues.iter().map(|(_, _, q)| Arc::clone(q)))
        .map(|((_, start, end, pc), q)| (pc, start, end, q))
        .collect();
    let (until_end, max_bytes, topic) = (cfg.until_end, cfg.max_buffered_bytes, cfg.topic.clone());
    let drain = Arc::clone(&cfg.drain);
    std::thread::Builder::new()
        .name(format!("kafka-fetch-{worker}"))
        .spawn(move || {
            runtime.block_on(async move {
                let mut set = tokio::task::JoinSet::new();
                for (pc, start, end, q) in tasks {
                    let (error, stop, drain, activator, topic, metrics) = (
                        Arc::clone(&error),
                        Arc::clone(&stop),
                        Arc::clone(&drain),
                        activator.clone(),
                        topic.clone(),
                        Arc::clone(&metrics),
                    );
                    set.spawn(async move {
                        let bound = Bound {
                            end,
                            until_end,
                            drain: &drain,
                        };
                        let feed = Feed {
                            queue: &q,
                            max_bytes,
                            activator: &activator,
                            metrics: &metrics,
                        };
                        if let Err(e) = fetch_partition(&pc, start, bound, feed, &stop).await {
                            fail(&error, format!("{topic}/{}: {e}", pc.partition()));
                            let _ = activator.activate();
                        }
                    });
                }
                while set.join_next().await.is_some() {}
            })
        })
        .map_err(|e| format!("starting the fetch thread: {e}"))?;
    Ok(queues)
}

/// Where a partition's reading ends: nowhere, or at `end` once `until_end`
/// (from the start) or `drain` (raised later, ending at that moment's high watermark).
struct Bound<'a> {
    end: i64,
    until_end: bool,
    drain: &'a AtomicBool,
}

/// Where a partition's records go: its queue (at most `max_bytes`), the
/// worker to wake, and the metrics that show its high watermark.
struct Feed<'a> {
    queue: &'a Mutex<Queue>,
    max_bytes: usize,
    activator: &'a timely::scheduling::SyncActivator,
    metrics: &'a JobMetrics,
}

/// How often a held-back fetcher still asks for the high watermark.
const END_OFFSET_REFRESH: Duration = Duration::from_secs(1);

async fn fetch_partition(
    pc: &rskafka::client::partition::PartitionClient,
    start: i64,
    bound: Bound<'_>,
    feed: Feed<'_>,
    stop: &AtomicBool,
) -> Result<(), String> {
    let Bound {
        mut end,
        mut until_end,
        drain,
    } = bound;
    let Feed {
        queue,
        max_bytes,
        activator,
        metrics,
    } = feed;
    let mut next = start;
    let mut end_asked = Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if !until_end && drain.load(Ordering::Relaxed) {
            // Everything produced before the request is below this high watermark.
            end = iotflow_redpanda::scan::offsets(pc)
                .await
                .map_err(|e| e.to_string())?
                .1;
            until_end = true;
            tracing::info!(partition = pc.partition(), end, "draining to the end");
        }
        if until_end && next >= end {
            if let Ok(mut q) = queue.lock() {
                q.done = true;
            }
            let _ = activator.activate();
            return Ok(());
        }
        if queue_full(queue, max_bytes) {
            // Held back: input may still be arriving, and lag must show it.
            if end_asked.elapsed() >= END_OFFSET_REFRESH {
                end_asked = Instant::now();
                if let Ok((_, high_watermark)) = iotflow_redpanda::scan::offsets(pc).await {
                    metrics.set_end_offset(pc.partition(), high_watermark);
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        // A resumed source starts at a committed offset, often inside a batch.
        let (records, high_watermark) = iotflow_redpanda::scan::fetch_from(
            pc,
            next,
            FETCH_BYTES,
            100,
        )
        .await
        .map_err(|e| {
            if e.is_offset_out_of_range() {
                format!(
                    "offset {next} is out of range (no longer retained?); refusing to skip data"
                )
            } else {
                e.to_string()
            }
        })?;
        let limit = if until_end { end } else { i64::MAX };
        let mut batch: Vec<RawRecord> = Vec::with_capacity(records.len());
        for r in records {
            if r.offset < next || r.offset >= limit {
                continue;
            }
            next = r.offset + 1;
            batch.push(RawRecord {
                partition: pc.partition(),
                offset: r.offset,
                key: r.record.key,
                value: r.record.value.unwrap_or_default().into(),
                timestamp_ms: r.record.timestamp.timestamp_millis(),
            });
        }
        metrics.set_end_offset(pc.partition(), high_watermark);
        if let Ok(mut q) = queue.lock() {
            q.high_watermark = high_watermark;
            q.bytes += batch.iter().map(|r| r.value.len()).sum::<usize>();
            q.records.extend(batch);
        }
        if activator.activate().is_err() {
            return Ok(()); // the worker is gone: nobody will read further
        }
    }
}

fn queue_full(queue: &Mutex<Queue>, max_bytes: usize) -> bool {
    queue
        .lock()
        .map(|q| q.bytes >= max_bytes && max_bytes > 0)
        .unwrap_or(true)
}
