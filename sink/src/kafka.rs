//! Publishing results to Kafka, epoch by epoch (at least once).
//!
//! ```text
//!   WindowResult@e ──buffer──▶ frontier passed e ──▶ its shape's record, sorted by key
//!        ──murmur2(key) % partitions──▶ produce per partition (epoch in value and header)
//!   DeadRecord@e ──▶ original key and bytes, reason + source in headers ──▶ DLQ partition
//!        = source partition % DLQ partitions (keeps each source partition's order)
//! ```
//!
//! Each output partition has exactly one publishing worker (partition p is
//! published by worker p % workers): records are exchanged to it first. A
//! crash between produce calls can repeat an epoch on restart; the
//! exactly-once commit protocol replaces this path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iotflow_dataflow::job::{DeadRecord, Epoch, WindowResult};

use crate::shape::AggregateShape;
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::record::Record;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

use crate::exactly_once::outgoing::StagedRecord;
use crate::protocol::TailMark;
use crate::records::{
    EPOCH_HEADER, INDEX_HEADER, JOB_HEADER, dead_letter_partition, key_partition,
};

/// The first error a sink hit; the job stops and fails with it.
pub type FailureSlot = Arc<Mutex<Option<String>>>;

/// Where a sink writes.
#[derive(Debug, Clone)]
pub struct KafkaSinkConfig {
    pub bootstrap: iotflow_redpanda::Brokers,
    pub topic: String,
    /// Partitions of `topic`: records are routed so that each partition has
    /// exactly one publishing worker (concurrent writers to one partition are
    /// slow on some brokers, and the commit protocol needs a single writer).
    pub partitions: usize,
    /// Name of the source topic, for dead letters' headers.
    pub source_topic: String,
    /// The job, named in every record's [`JOB_HEADER`].
    pub job: String,
    /// The shape of the aggregates this topic carries (none for dead letters).
    pub shape: Option<crate::shape::AggregateShape>,
}

struct Publisher {
    runtime: tokio::runtime::Runtime,
    partitions: Vec<PartitionClient>,
    job: String,
}

impl Publisher {
    fn connect(cfg: &KafkaSinkConfig) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("sink runtime: {e}"))?;
        let partitions = runtime.block_on(async {
            let client = iotflow_redpanda::connect(&cfg.bootstrap, Duration::from_secs(30))
                .await
                .map_err(|e| e.to_string())?;
            let partitions = iotflow_redpanda::topics::partitions_of(&client, &cfg.topic)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("output topic {} does not exist", cfg.topic))?;
            let mut pcs = Vec::new();
            for p in partitions {
                pcs.push(
                    client
                        .partition_client(cfg.topic.as_str(), p, UnknownTopicHandling::Retry)
                        .await
                        .map_err(|e| format!("{}/{p}: {e}", cfg.topic))?,
                );
            }
            Ok::<_, String>(pcs)
        })?;
        Ok(Self {
            runtime,
            partitions,
            job: cfg.job.clone(),
        })
    }

    fn publish(&self, epoch: Epoch, by_partition: Vec<Vec<Record>>) -> Result<(), String> {
        let started = std::time::Instant::now();
        let records: usize = by_partition.iter().map(Vec::len).sum();
        let _timer = scopeguard(move || {
            tracing::debug!(
                records,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "published epoch"
            );
        });
        self.runtime.block_on(async {
            for (pc, mut records) in self.partitions.iter().zip(by_partition) {
                for (i, r) in records.iter_mut().enumerate() {
                    r.headers
                        .insert(JOB_HEADER.to_owned(), self.job.as_bytes().to_vec());
                    r.headers
                        .insert(EPOCH_HEADER.to_owned(), epoch.to_string().into_bytes());
                    r.headers
                        .insert(INDEX_HEADER.to_owned(), i.to_string().into_bytes());
                }
                // Moved into each request, not copied: a failure stops the sink.
                let mut records = records.into_iter().peekable();
                while records.peek().is_some() {
                    let chunk: Vec<Record> = records.by_ref().take(5_000).collect();
                    pc.produce(chunk, Compression::NoCompression)
                        .await
                        .map_err(|e| {
                            format!("producing to {}/{}: {e}", pc.topic(), pc.partition())
                        })?;
                }
            }
            Ok(())
        })
    }
}

/// Where job `job`'s records in partition `pc` end: the epoch and index
/// headers of its last one, `None` when there is none. Records of other
/// iotflow jobs after it are stepped over (reading back in growing chunks);
/// a record without epoch and index headers was not written by a publisher of
/// ours, and that is an error: the partition is not iotflow's alone. Records
/// from before the job header existed count as the job's.
pub async fn tail_mark(pc: &PartitionClient, job: &str) -> Result<Option<TailMark>, String> {
    let place = || format!("{}/{}", pc.topic(), pc.partition());
    let (earliest, end) = iotflow_redpanda::scan::offsets(pc)
        .await
        .map_err(|e| format!("{}: {e}", place()))?;
    let (mut to, mut chunk) = (end, 1);
    while to > earliest {
        let from = to.saturating_sub(chunk).max(earliest);
        let records = iotflow_redpanda::scan::read_range(pc, from, to)
            .await
            .map_err(|e| format!("{}: {e}", place()))?;
        for r in records.iter().rev() {
            let header = |name: &str| r.record.headers.get(name).map(Vec::as_slice);
            let number = |name: &str| -> Option<u64> {
                std::str::from_utf8(header(name)?).ok()?.parse().ok()
            };
            match (number(EPOCH_HEADER), number(INDEX_HEADER)) {
                (Some(epoch), Some(index)) => {
                    if header(JOB_HEADER).is_none_or(|j| j == job.as_bytes()) {
                        return Ok(Some(TailMark { epoch, index }));
                    }
                }
                _ => {
                    return Err(format!(
                        "{} offset {}: a record without {EPOCH_HEADER}/{INDEX_HEADER} headers; \
                         another writer uses this partition",
                        place(),
                        r.offset
                    ));
                }
            }
        }
        to = from;
        chunk = (chunk * 4).min(50_000);
    }
    Ok(None)
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// Records a sink's first failure and stops the job: every sink fails this way.
pub fn record_failure(slot: &FailureSlot, stop: &AtomicBool, msg: String) {
    tracing::error!(error = %msg, "sink failed");
    if let Ok(mut s) = slot.lock() {
        s.get_or_insert(msg);
    }
    stop.store(true, Ordering::Relaxed);
}

/// The Kafka value and headers of an aggregate of `shape`.
pub fn aggregate_record(
    r: &WindowResult,
    epoch: Epoch,
    shape: &AggregateShape,
) -> Result<(String, Record), String> {
    StagedRecord::aggregate(r, epoch, shape)
        .map(|(key, record)| (key, record.into_record()))
        .map_err(|e| e.to_string())
}

/// Turns one epoch's items into `(partition index, record)` in publish order.
type Encoder<T> = fn(Vec<T>, Epoch, &KafkaSinkConfig) -> Result<Vec<(usize, Record)>, String>;

/// The shared sink: route each item to the worker that owns its output
/// partition, buffer by epoch, and when the frontier passes an epoch publish its
/// records in the order `encode` gives them.
fn publish_by_epoch<T: timely::ExchangeData>(
    stream: Stream<'_, Epoch, Vec<T>>,
    name: &str,
    cfg: KafkaSinkConfig,
    error: FailureSlot,
    stop: Arc<AtomicBool>,
    partition_of: fn(&T, usize) -> usize,
    encode: Encoder<T>,
) {
    let partitions = cfg.partitions.max(1);
    let route = Exchange::new(move |item: &T| partition_of(item, partitions) as u64);
    let mut publisher: Option<Publisher> = None;
    let mut pending: BTreeMap<Epoch, Vec<T>> = BTreeMap::new();
    stream.sink(route, name, move |(input, frontier)| {
        input.for_each(|time, data| iotflow_dataflow::job::stash(&mut pending, &time, data));
        while let Some(entry) = pending.first_entry() {
            if frontier.less_equal(entry.key()) || stop.load(Ordering::Relaxed) {
                break;
            }
            let epoch = *entry.key();
            let items = entry.remove();
            if publisher.is_none() {
                match Publisher::connect(&cfg) {
                    Ok(p) => publisher = Some(p),
                    Err(e) => return record_failure(&error, &stop, e),
                }
            }
            let Some(p) = publisher.as_ref() else { return };
            let records = match encode(items, epoch, &cfg) {
                Ok(r) => r,
                Err(e) => return record_failure(&error, &stop, e),
            };
            let mut by_partition = vec![Vec::new(); p.partitions.len()];
            for (partition, record) in records {
                if let Some(list) = by_partition.get_mut(partition) {
                    list.push(record);
                }
            }
            if let Err(e) = p.publish(epoch, by_partition) {
                return record_failure(&error, &stop, e);
            }
        }
    });
}

/// The Kafka key of an aggregate: its group values and window start joined by `|`.
pub fn aggregate_key(r: &WindowResult) -> String {
    AggregateShape::key(&r.group, r.window_start)
}

/// Publishes aggregates (of `cfg.shape`) to `cfg.topic` as each epoch completes, sorted by key.
pub fn publish_aggregates(
    stream: Stream<'_, Epoch, Vec<WindowResult>>,
    cfg: KafkaSinkConfig,
    error: FailureSlot,
    stop: Arc<AtomicBool>,
) {
    publish_by_epoch(
        stream,
        "PublishAggregates",
        cfg,
        error,
        stop,
        |r, partitions| key_partition(aggregate_key(r).as_bytes(), partitions) as usize,
        |results, epoch, cfg| {
            let shape = cfg
                .shape
                .as_ref()
                .ok_or_else(|| format!("{}: aggregates without a shape", cfg.topic))?;
            let mut keyed = results
                .iter()
                .map(|r| aggregate_record(r, epoch, shape))
                .collect::<Result<Vec<_>, String>>()?;
            keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let n = cfg.partitions.max(1);
            Ok(keyed
                .into_iter()
                .map(|(key, record)| (key_partition(key.as_bytes(), n) as usize, record))
                .collect())
        },
    );
}

/// Publishes dead letters to `cfg.topic` as each epoch completes: partition =
/// source partition % DLQ partitions, in source offset order.
pub fn publish_dead_letters(
    stream: Stream<'_, Epoch, Vec<DeadRecord>>,
    cfg: KafkaSinkConfig,
    error: FailureSlot,
    stop: Arc<AtomicBool>,
) {
    publish_by_epoch(
        stream,
        "PublishDeadLetters",
        cfg,
        error,
        stop,
        |d, partitions| dead_letter_partition(d.record.partition, partitions) as usize,
        |mut dead, _epoch, cfg| {
            dead.sort_by_key(|d| (d.record.partition, d.record.offset));
            let n = cfg.partitions.max(1);
            Ok(dead
                .into_iter()
                .map(|d| {
                    let partition = dead_letter_partition(d.record.partition, n) as usize;
                    (
                        partition,
                        StagedRecord::dead_letter(d, &cfg.source_topic).into_record(),
                    )
                })
                .collect())
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_key_is_the_published_key() {
        let stats = iotflow_dataflow::Stats {
            count: 1,
            sum: 1.0,
            min: 1.0,
            max: 1.0,
            mean: 1.0,
            stddev: 0.0,
            first_ts: 1_763_787_600_001,
            last_ts: 1_763_787_600_001,
        };
        let r = WindowResult::new(
            "dev-1",
            "t",
            1_763_787_600_000,
            1_763_787_610_000,
            stats,
            true,
        );
        let agg = iotflow_dataflow::Aggregation::per_device(
            "aggregates",
            iotflow_dataflow::WindowSpec::tumbling(10_000).unwrap(),
            iotflow_dataflow::EmitMode::Final,
        );
        let (key, record) = aggregate_record(&r, 3, &AggregateShape::of(&agg)).unwrap();
        assert_eq!(key, "dev-1|t|1763787600000");
        assert_eq!(key, aggregate_key(&r));
        assert_eq!(record.key.as_deref(), Some(key.as_bytes()));
        assert!(record.headers.is_empty(), "the publisher adds the headers");
    }
}
