//! The batched rskafka producer.
//!
//! ```text
//!   records ──key→partition (Kafka's murmur2)──▶ per-partition batch
//!     ──full──▶ bounded channel (backpressure) ──▶ one sender task per partition
//!                                                     produce, retry retriable errors
//! ```
//!
//! One request in flight per partition keeps each partition's order equal to
//! the input order, even across retries; partitions proceed in parallel. Note
//! that a retried produce whose first attempt did reach the broker writes the
//! batch twice: rskafka has no idempotent producer, so consumers dedupe by
//! `(device_id, seq)`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use rskafka::client::Client;
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::record::Record;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

pub use iotflow_redpanda::partitioner::{murmur2, partition_for};

use crate::simulator::{RecordClass, SimRecord};

/// Errors of the producer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProduceError {
    /// The topic does not exist (user: create it with `iotflow topics create`).
    #[error("topic {0} does not exist or has no partitions")]
    NoSuchTopic(String),
    /// Produce failed after all retries (broker or environment).
    #[error("producing to {topic}/{partition} failed after {attempts} attempts: {source}")]
    Produce {
        topic: String,
        partition: i32,
        attempts: u32,
        #[source]
        source: Box<rskafka::client::error::Error>,
    },
    #[error(transparent)]
    Broker(#[from] iotflow_redpanda::Error),
    /// A sender task died (ours).
    #[error("sender task for partition {0} stopped unexpectedly")]
    SenderLost(i32),
}

/// Producer settings; defaults are what the throughput figures were measured with.
#[derive(Debug, Clone, Copy)]
pub struct ProducerConfig {
    /// Records per produce request (default 5,000).
    pub batch_records: usize,
    /// Payload bytes per produce request (default 1 MiB).
    pub batch_bytes: usize,
    /// Full batches queued per partition before the generator waits (default 2).
    pub queued_batches: usize,
    /// Retries of a retriable produce error, with doubling backoff (default 8).
    pub max_retries: u32,
    pub compression: Compression,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            batch_records: 5_000,
            batch_bytes: 1 << 20,
            queued_batches: 2,
            max_retries: 8,
            compression: Compression::NoCompression,
        }
    }
}

/// When to stop and how fast to go.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pace {
    /// Stop after this many records.
    pub count: Option<u64>,
    /// Stop after this much wall time.
    pub duration: Option<Duration>,
    /// Records per second at most.
    pub rate: Option<f64>,
}

/// Live counters, shared with a progress display.
#[derive(Debug, Default)]
pub struct Counters {
    pub generated: AtomicU64,
    pub acked: AtomicU64,
    pub bytes: AtomicU64,
}

/// The final summary of a produce run.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ProduceSummary {
    pub records: u64,
    pub readings: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub disordered: u64,
    pub by_class: BTreeMap<String, u64>,
    pub by_partition: BTreeMap<i32, u64>,
}

impl ProduceSummary {
    pub fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.seconds.max(1e-9)
    }
    pub fn readings_per_sec(&self) -> f64 {
        self.readings as f64 / self.seconds.max(1e-9)
    }
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
}

/// The name of a record class in summaries: `valid`, `late`, `duplicate`, or the bad-record reason.
pub fn class_name(class: RecordClass) -> String {
    match class {
        RecordClass::Valid => "valid".into(),
        RecordClass::Late => "late".into(),
        RecordClass::Duplicate => "duplicate".into(),
        RecordClass::Bad(kind) => format!("bad:{}", kind.code()),
    }
}

/// Produces `records` to `topic` until `pace` says stop or the iterator ends.
pub async fn produce(
    client: &Client,
    topic: &str,
    records: impl Iterator<Item = SimRecord>,
    pace: Pace,
    config: ProducerConfig,
    counters: Arc<Counters>,
) -> Result<ProduceSummary, ProduceError> {
    let partitions = iotflow_redpanda::topics::partitions_of(client, topic)
        .await?
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ProduceError::NoSuchTopic(topic.to_owned()))?;

    let mut senders = Vec::with_capacity(partitions.len());
    let mut tasks = JoinSet::new();
    for &partition in &partitions {
        let pc = client
            .partition_client(topic, partition, UnknownTopicHandling::Retry)
            .await
            .map_err(|source| iotflow_redpanda::Error::Partition {
                op: "connect",
                topic: topic.to_owned(),
                partition,
                source: Box::new(source),
            })?;
        let (tx, rx) = mpsc::channel::<Vec<Record>>(config.queued_batches.max(1));
        senders.push(tx);
        tasks.spawn(send_loop(pc, rx, config, Arc::clone(&counters)));
    }

    let started = Instant::now();
    let mut summary = ProduceSummary::default();
    let mut batches: Vec<Vec<Record>> = vec![Vec::new(); partitions.len()];
    let mut batch_bytes = vec![0usize; partitions.len()];
    let mut failed = None;
    for (n, rec) in records.enumerate() {
        let n = n as u64;
        if pace.count.is_some_and(|c| n >= c) {
            break;
        }
        if n.is_multiple_of(256) {
            if pace.duration.is_some_and(|d| started.elapsed() >= d) {
                break;
            }
            if let Some(rate) = pace.rate.filter(|r| *r > 0.0) {
                let due = Duration::from_secs_f64(n as f64 / rate);
                let elapsed = started.elapsed();
                if due > elapsed {
                    tokio::time::sleep(due - elapsed).await;
                }
            }
        }
        let idx = partition_for(rec.key.as_bytes(), partitions.len());
        summary.records += 1;
        summary.readings += u64::from(rec.readings);
        summary.bytes += (rec.key.len() + rec.value.len()) as u64;
        summary.disordered += u64::from(rec.disordered);
        *summary.by_class.entry(class_name(rec.class)).or_default() += 1;
        *summary.by_partition.entry(partitions[idx]).or_default() += 1;
        counters.generated.fetch_add(1, Ordering::Relaxed);
        counters
            .bytes
            .fetch_add((rec.key.len() + rec.value.len()) as u64, Ordering::Relaxed);
        batch_bytes[idx] += rec.key.len() + rec.value.len();
        batches[idx].push(Record {
            key: Some(rec.key.into_bytes()),
            value: Some(rec.value),
            headers: BTreeMap::new(),
            timestamp: Utc
                .timestamp_millis_opt(rec.arrival_ms)
                .single()
                .unwrap_or_default(),
        });
        if batches[idx].len() >= config.batch_records || batch_bytes[idx] >= config.batch_bytes {
            batch_bytes[idx] = 0;
            let batch = std::mem::take(&mut batches[idx]);
            if senders[idx].send(batch).await.is_err() {
                failed = Some(partitions[idx]);
                break;
            }
        }
    }
    if failed.is_none() {
        for (idx, batch) in batches.into_iter().enumerate() {
            if !batch.is_empty() && senders[idx].send(batch).await.is_err() {
                failed = Some(partitions[idx]);
                break;
            }
        }
    }
    drop(senders);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(ProduceError::SenderLost(failed.unwrap_or(-1))),
        }
    }
    if let Some(p) = failed {
        return Err(ProduceError::SenderLost(p));
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

async fn send_loop(
    pc: PartitionClient,
    mut rx: mpsc::Receiver<Vec<Record>>,
    config: ProducerConfig,
    counters: Arc<Counters>,
) -> Result<(), ProduceError> {
    while let Some(batch) = rx.recv().await {
        let n = batch.len() as u64;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match pc.produce(batch.clone(), config.compression).await {
                Ok(_) => break,
                Err(e)
                    if attempt <= config.max_retries
                        && iotflow_redpanda::is_retriable_kafka(&e) =>
                {
                    let backoff = Duration::from_millis(50u64 << attempt.min(6));
                    tracing::warn!(topic = pc.topic(), partition = pc.partition(), attempt, error = %e, "produce failed; retrying");
                    tokio::time::sleep(backoff).await;
                }
                Err(source) => {
                    return Err(ProduceError::Produce {
                        topic: pc.topic().to_owned(),
                        partition: pc.partition(),
                        attempts: attempt,
                        source: Box::new(source),
                    });
                }
            }
        }
        counters.acked.fetch_add(n, Ordering::Relaxed);
    }
    Ok(())
}
