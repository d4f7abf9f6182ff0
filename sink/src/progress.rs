//! The progress topic adapter: appends commit records (the commit point) and
//! reads them back for recovery and for read-committed consumers.
//!
//! ```text
//!   CommitRecord ──encode (JSON + CRC)──▶ key "job/slot" ──▶ `iot.progress` partition 0
//!   partition 0, earliest..high watermark ──decode──▶ commits + what could not be trusted
//!   a job's history: back from the end to its newest record ─log_from─▶ read forward to the end
//! ```
//!
//! The key is the job and `epoch % RETAINED_SLOTS`: compaction keeps the
//! last few commits of every job, enough to fall back past a corrupt snapshot
//! and to finish every commit that may still be partly published.
//! A broker that does not compact (tansu), or has not yet, keeps every
//! commit: recovery therefore reads back from the end, only as far as the
//! newest record's `log_from` (the oldest commit it may fall back to), so a
//! restart does not grow with the job's age.

use iotflow_redpanda::scan::{FETCH_MAX_BYTES, fetch_from, offsets, read_range};
use rskafka::client::Client;
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::record::{Record, RecordAndOffset};

use crate::committer::RETAINED_SLOTS;
use crate::protocol::{CommitRecord, ProtocolError, history_needs, history_start};

/// What can go wrong talking to the progress topic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProgressError {
    #[error("progress topic {topic}: {source}")]
    Broker {
        topic: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Encode(#[from] ProtocolError),
}

/// A job's recent commits as read from the end of the progress topic.
#[derive(Debug, Default)]
pub struct History {
    /// The job's records from `read_from` to the end, with offsets, in log order.
    pub commits: Vec<(i64, CommitRecord)>,
    pub untrusted: Vec<Untrusted>,
    /// Where reading started, and how many records it read in all.
    pub read_from: i64,
    pub records_read: u64,
}

/// What [`ProgressLog::poll_from`] read.
#[derive(Debug)]
pub struct Poll {
    pub commits: Vec<CommitRecord>,
    pub untrusted: Vec<Untrusted>,
    /// The offset to poll from next.
    pub next: i64,
    /// Whether the read reached the end of the topic as the broker saw it.
    pub at_end: bool,
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
        let key = format!("{}/{}", record.job, record.epoch % RETAINED_SLOTS);
        let r = Record {
            key: Some(key.into_bytes()),
            value: Some(record.encode()?),
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
        let (commits, untrusted) = decode_all(records);
        Ok((commits, untrusted, end.max(offset)))
    }

    /// What one fetch from `offset` brings, waiting up to `max_wait_ms` for
    /// something to arrive: how a follower keeps up with a job that commits
    /// every 250 ms in one round trip per poll ([`Self::read_from`] takes
    /// four). An offset retention deleted is read as [`Self::read_from`]
    /// does, from the earliest retained.
    pub async fn poll_from(&self, offset: i64, max_wait_ms: i32) -> Result<Poll, ProgressError> {
        let (records, end) = match fetch_from(&self.pc, offset, FETCH_MAX_BYTES, max_wait_ms).await
        {
            Ok(answer) => answer,
            Err(e) if e.is_offset_out_of_range() => {
                let (commits, untrusted, next) = self.read_from(offset).await?;
                return Ok(Poll {
                    commits,
                    untrusted,
                    next,
                    at_end: true,
                });
            }
            Err(e) => return Err(broker_err(self.pc.topic(), e)),
        };
        let next = records.last().map_or(offset, |r| r.offset + 1);
        let (commits, untrusted) = decode_all(records);
        Ok(Poll {
            commits,
            untrusted,
            next,
            at_end: next >= end,
        })
    }

    /// Decoded records of `[from, to)` with their offsets.
    async fn read_decoded(
        &self,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, Result<CommitRecord, ProtocolError>)>, ProgressError> {
        let records = read_range(&self.pc, from, to)
            .await
            .map_err(|e| broker_err(self.pc.topic(), e))?;
        Ok(records
            .into_iter()
            .filter_map(|r| Some((r.offset, CommitRecord::decode(&r.record.value?))))
            .collect())
    }

    /// The newest record that `matches`, reading back from the end in chunks
    /// growing ×4; with the topic's earliest and end offsets and the records read.
    pub async fn newest(
        &self,
        matches: impl Fn(&CommitRecord) -> bool,
    ) -> Result<(i64, i64, Option<(i64, CommitRecord)>, u64), ProgressError> {
        let topic = self.pc.topic().to_owned();
        let (earliest, end) = offsets(&self.pc).await.map_err(|e| broker_err(&topic, e))?;
        let (mut to, mut chunk, mut read) = (end, 16i64, 0u64);
        while to > earliest {
            let start = to.saturating_sub(chunk).max(earliest);
            let decoded = self.read_decoded(start, to).await?;
            read += decoded.len() as u64;
            let found = decoded
                .into_iter()
                .rev()
                .find_map(|(offset, r)| r.ok().filter(|c| matches(c)).map(|c| (offset, c)));
            if found.is_some() {
                return Ok((earliest, end, found, read));
            }
            to = start;
            chunk = (chunk * 4).min(20_000);
        }
        Ok((earliest, end, None, read))
    }

    /// Job `job`'s recent history: back from the end to its newest record
    /// (chunks growing ×4), then forward from the oldest `log_from` that the
    /// newest and the highest-generation records name (the whole retained
    /// topic for records without one) to the end.
    pub async fn read_history(&self, job: &str) -> Result<History, ProgressError> {
        let (earliest, end, newest, mut read) = self.newest(|c| c.job == job).await?;
        let Some(mut from) = newest.map(|(offset, c)| history_start(&c, offset, earliest, end))
        else {
            return Ok(History {
                read_from: earliest,
                records_read: read,
                ..History::default()
            });
        };
        loop {
            let decoded = self.read_decoded(from, end).await?;
            read += decoded.len() as u64;
            let mut history = History {
                read_from: from,
                records_read: read,
                ..History::default()
            };
            for (offset, r) in decoded {
                match r {
                    Ok(c) if c.job == job => history.commits.push((offset, c)),
                    Ok(_) => {}
                    Err(error) => history.untrusted.push(Untrusted { offset, error }),
                }
            }
            match history_needs(&history.commits, from, earliest, end) {
                None => return Ok(history),
                Some(earlier) => from = earlier,
            }
        }
    }
}

/// Commit records and what could not be trusted; a tombstone (no value) is
/// compaction's, not a commit.
fn decode_all(records: Vec<RecordAndOffset>) -> (Vec<CommitRecord>, Vec<Untrusted>) {
    let (mut commits, mut untrusted) = (Vec::new(), Vec::new());
    for r in records {
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
    (commits, untrusted)
}

fn broker_err(topic: &str, e: impl std::error::Error + Send + Sync + 'static) -> ProgressError {
    ProgressError::Broker {
        topic: topic.to_owned(),
        source: Box::new(e),
    }
}
