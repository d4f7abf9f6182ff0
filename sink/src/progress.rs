//! The progress topic adapter: appends commit records (the commit point) and
//! reads them back for recovery and for read-committed consumers.
//!
//! ```text
//!   CommitRecord ──encode (JSON + CRC)──▶ key "job/slot" ──▶ `iot.progress` partition 0
//!   partition 0, earliest..high watermark ──decode──▶ commits + what could not be trusted
//! ```
//!
//! The key is the job and `epoch % KEPT_COMMITS`: compaction keeps the last
//! few commits of every job, enough to fall back past a corrupt snapshot,
//! while the topic stays small forever.

use iotflow_redpanda::scan::{offsets, read_range};
use rskafka::client::Client;
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::record::Record;

use crate::protocol::{CommitRecord, ProtocolError};

/// Commits per job that compaction keeps (by key).
pub const KEPT_COMMITS: u64 = 3;

/// What can go wrong talking to the progress topic.
#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    #[error("progress topic {topic}: {source}")]
    Broker {
        topic: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A record on the progress topic that is not a usable commit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untrusted {
    pub offset: i64,
    pub error: ProtocolError,
}

/// Logs `untrusted` records: one warning for all of them (a shared progress
/// topic can hold many of other jobs or older formats), each at debug.
pub fn report_untrusted(untrusted: &[Untrusted]) {
    let Some(first) = untrusted.first() else {
        return;
    };
    tracing::warn!(
        count = untrusted.len(),
        first_offset = first.offset,
        error = %first.error,
        "progress records not trusted (skipped)"
    );
    for u in untrusted {
        tracing::debug!(offset = u.offset, error = %u.error, "progress record not trusted");
    }
}

/// The single partition of a progress topic.
#[derive(Debug)]
pub struct ProgressLog {
    pc: PartitionClient,
}

impl ProgressLog {
    pub async fn open(client: &Client, topic: &str) -> Result<Self, ProgressError> {
        let pc = client
            .partition_client(topic, 0, UnknownTopicHandling::Error)
            .await
            .map_err(|e| broker_err(topic, e))?;
        Ok(Self { pc })
    }

    /// Appends `record`; returns its offset once the broker acknowledged it.
    pub async fn append(&self, record: &CommitRecord) -> Result<i64, ProgressError> {
        let key = format!("{}/{}", record.job, record.epoch % KEPT_COMMITS);
        let r = Record {
            key: Some(key.into_bytes()),
            value: Some(record.encode()),
            headers: Default::default(),
            timestamp: chrono::Utc::now(),
        };
        let offsets = self
            .pc
            .produce(vec![r], Compression::NoCompression)
            .await
            .map_err(|e| broker_err(self.pc.topic(), e))?;
        Ok(offsets.first().copied().unwrap_or(-1))
    }

    /// Every commit record from the earliest retained offset to the end, in
    /// log order, and the records that could not be trusted (torn, corrupt,
    /// from a newer format, or not ours at all).
    pub async fn read_all(&self) -> Result<(Vec<CommitRecord>, Vec<Untrusted>), ProgressError> {
        let (commits, untrusted, _) = self.read_from(0).await?;
        Ok((commits, untrusted))
    }

    /// [`Self::read_all`] from `offset` on (or the earliest retained), and the
    /// offset to read from next time.
    pub async fn read_from(
        &self,
        offset: i64,
    ) -> Result<(Vec<CommitRecord>, Vec<Untrusted>, i64), ProgressError> {
        let topic = self.pc.topic().to_owned();
        let (earliest, end) = offsets(&self.pc).await.map_err(|e| broker_err(&topic, e))?;
        let records = read_range(&self.pc, offset.max(earliest), end)
            .await
            .map_err(|e| broker_err(&topic, e))?;
        let (mut commits, mut untrusted) = (Vec::new(), Vec::new());
        for r in records {
            // A tombstone (no value) is compaction's, not a commit.
            let Some(value) = r.record.value else {
                continue;
            };
            match CommitRecord::decode(&value) {
                Ok(c) => commits.push(c),
                Err(error) => untrusted.push(Untrusted {
                    offset: r.offset,
                    error,
                }),
            }
        }
        Ok((commits, untrusted, end.max(offset)))
    }
}

fn broker_err(topic: &str, e: impl std::error::Error + Send + Sync + 'static) -> ProgressError {
    ProgressError::Broker {
        topic: topic.to_owned(),
        source: Box::new(e),
    }
}
