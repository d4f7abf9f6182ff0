//! The broker side of the protocol: publishing committed epochs to their
//! output partitions, and appending commit records. Each runs on a thread of
//! its own with a current-thread runtime; the timely workers never block on
//! the broker.
//!
//! ```text
//!   Publisher: epoch e's StagedOutputs, per (topic, partition):
//!     tail (job's last epoch/index; read once, then tracked) ─unpublished─▶ the rest,
//!     produced in batches on a client that tries each request once;
//!     a failed produce ─▶ read the tail again ─▶ retry (until PUBLISH_DEADLINE)
//!   Appender: CommitRecord ─▶ progress topic (the commit point) ─▶ its Parquet files renamed
//! ```
//!
//! A produce whose answer is lost may still have stored its batch: rskafka's
//! own retry would write it twice, so producing goes through
//! `redpanda::connect_once` and every retry starts from the tail.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use iotflow_dataflow::job::Epoch;
use rskafka::client::Client;
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::record::Record;

use crate::error::SinkError;
use crate::failpoint::{self, Site};
use crate::kafka::tail_mark;
use crate::parquet;
use crate::progress::ProgressLog;
use crate::protocol::{CommitRecord, TailMark, unpublished};
use crate::records::{EPOCH_HEADER, INDEX_HEADER, JOB_HEADER};

use super::outgoing::{StagedOutputs, StagedRecord};

/// How long publishing one partition's share of an epoch may keep failing
/// (e.g. through a broker restart) before the job stops.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(60);
/// Records per produce request.
const BATCH: usize = 5_000;

fn runtime() -> Result<tokio::runtime::Runtime, SinkError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SinkError::io("starting a runtime", "sink"))
}

/// Publishes committed epochs, partition by partition, exactly once.
pub struct Publisher {
    runtime: tokio::runtime::Runtime,
    /// Retrying client: reading tails.
    client: Client,
    /// Client that tries each request once: producing.
    once: Client,
    /// `(topic, partition)` → (reader, producer).
    partitions: BTreeMap<(String, i32), (PartitionClient, PartitionClient)>,
    /// Where each partition's tail of this job's records stands, once read.
    tails: BTreeMap<(String, i32), Option<TailMark>>,
    job: String,
    /// No commit of this job existed at start: no tail to read.
    fresh: bool,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("job", &self.job)
            .field("partitions", &self.partitions.len())
            .finish_non_exhaustive()
    }
}

impl Publisher {
    pub fn connect(
        bootstrap: &iotflow_redpanda::Brokers,
        job: &str,
        fresh: bool,
    ) -> Result<Self, SinkError> {
        let runtime = runtime()?;
        let (client, once) = runtime.block_on(async {
            let client = iotflow_redpanda::connect(bootstrap, Duration::from_secs(30)).await;
            let once = iotflow_redpanda::connect_once(bootstrap).await;
            (client, once)
        });
        Ok(Self {
            runtime,
            client: client.map_err(|e| SinkError::Connect(e.to_string()))?,
            once: once.map_err(|e| SinkError::Connect(e.to_string()))?,
            partitions: BTreeMap::new(),
            tails: BTreeMap::new(),
            job: job.to_owned(),
            fresh,
        })
    }

    fn partition(&mut self, topic: &str, partition: i32) -> Result<(), SinkError> {
        let key = (topic.to_owned(), partition);
        if self.partitions.contains_key(&key) {
            return Ok(());
        }
        let broker = |e: rskafka::client::error::Error| SinkError::Broker {
            topic: topic.to_owned(),
            partition,
            detail: e.to_string(),
        };
        let (reader, producer) = self.runtime.block_on(async {
            let reader = self
                .client
                .partition_client(topic, partition, UnknownTopicHandling::Retry)
                .await;
            let producer = self
                .once
                .partition_client(topic, partition, UnknownTopicHandling::Retry)
                .await;
            (reader, producer)
        });
        self.partitions
            .insert(key, (reader.map_err(broker)?, producer.map_err(broker)?));
        Ok(())
    }

    /// Publishes epoch `epoch`'s records, skipping in each partition the
    /// prefix its tail shows is there.
    pub fn publish(&mut self, epoch: Epoch, outputs: &StagedOutputs) -> Result<(), SinkError> {
        for part in &outputs.parts {
            if !part.records.is_empty() {
                self.publish_partition(epoch, &part.topic, part.partition, &part.records)?;
            }
        }
        Ok(())
    }

    fn publish_partition(
        &mut self,
        epoch: Epoch,
        topic: &str,
        partition: i32,
        records: &[StagedRecord],
    ) -> Result<(), SinkError> {
        self.partition(topic, partition)?;
        let key = (topic.to_owned(), partition);
        let Some((reader, producer)) = self.partitions.get(&key) else {
            return Err(SinkError::ThreadGone("publish"));
        };
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        let tail = loop {
            let tail = match self.tails.get(&key) {
                Some(t) => *t,
                None if self.fresh => None,
                None => self
                    .runtime
                    .block_on(tail_mark(reader, &self.job))
                    .map_err(|detail| SinkError::Broker {
                        topic: topic.to_owned(),
                        partition,
                        detail,
                    })?,
            };
            let todo = unpublished(tail, epoch, records.len() as u64);
            // Each chunk's records are built when it is sent: one copy of each payload.
            let produced = todo.step_by(BATCH).try_for_each(|from| {
                let to = (from + BATCH as u64).min(records.len() as u64);
                let chunk: Vec<Record> = (from..to)
                    .map(|i| record(&records[i as usize], epoch, i, &self.job))
                    .collect();
                self.runtime
                    .block_on(producer.produce(chunk, Compression::NoCompression))
                    .map(|_| failpoint::hit(Site::PublishBatch))
            });
            match produced {
                Ok(()) => break tail,
                Err(e) if started.elapsed() < PUBLISH_DEADLINE => {
                    tracing::warn!(
                        topic,
                        partition,
                        epoch,
                        error = %e,
                        "produce failed; reading the tail again before retrying"
                    );
                    self.tails.remove(&key);
                    self.fresh = false;
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    return Err(SinkError::Broker {
                        topic: topic.to_owned(),
                        partition,
                        detail: e.to_string(),
                    });
                }
            }
        };
        let last = TailMark {
            epoch,
            index: records.len() as u64 - 1,
        };
        self.tails
            .insert(key, Some(tail.map_or(last, |t| t.max(last))));
        Ok(())
    }
}

/// The broker record of `r`, the `index`-th of its partition in `epoch`.
fn record(r: &StagedRecord, epoch: Epoch, index: u64, job: &str) -> Record {
    let mut record = r.to_record();
    let headers = &mut record.headers;
    headers.insert(JOB_HEADER.to_owned(), job.as_bytes().to_vec());
    headers.insert(EPOCH_HEADER.to_owned(), epoch.to_string().into_bytes());
    headers.insert(INDEX_HEADER.to_owned(), index.to_string().into_bytes());
    record
}

/// Appends commit records and moves their Parquet files into the datasets.
pub struct Appender {
    runtime: tokio::runtime::Runtime,
    log: ProgressLog,
    staging: PathBuf,
    parquet_dir: PathBuf,
}

impl std::fmt::Debug for Appender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appender")
            .field("parquet_dir", &self.parquet_dir)
            .finish_non_exhaustive()
    }
}

impl Appender {
    pub fn connect(
        bootstrap: &iotflow_redpanda::Brokers,
        progress_topic: &str,
        parquet_dir: PathBuf,
    ) -> Result<Self, SinkError> {
        let runtime = runtime()?;
        let log = runtime.block_on(async {
            let client = iotflow_redpanda::connect(bootstrap, Duration::from_secs(30))
                .await
                .map_err(|e| SinkError::Connect(e.to_string()))?;
            Ok::<_, SinkError>(ProgressLog::open(&client, progress_topic).await?)
        })?;
        Ok(Self {
            runtime,
            log,
            staging: parquet_dir.join(parquet::STAGING),
            parquet_dir,
        })
    }

    /// Appends `commit` (the commit point) and moves its files into the
    /// datasets; returns the record's offset on the progress topic.
    pub fn commit(&self, commit: &CommitRecord) -> Result<i64, SinkError> {
        failpoint::hit(Site::BeforeCommit);
        let offset = self.runtime.block_on(self.log.append(commit))?;
        failpoint::hit(Site::AfterCommit);
        publish_files(&self.staging, &self.parquet_dir, commit)?;
        Ok(offset)
    }
}

/// Moves `commit`'s Parquet files into the datasets (idempotent, verified).
pub fn publish_files(
    staging: &std::path::Path,
    parquet_dir: &std::path::Path,
    commit: &CommitRecord,
) -> Result<(), SinkError> {
    for f in &commit.files {
        parquet::publish(staging, parquet_dir, f)?;
    }
    Ok(())
}
