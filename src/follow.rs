//! Following a job's committed output, epoch by epoch, read-committed: what
//! `tail` shows and what `notify` delivers. An epoch comes out once its
//! commit record is on the progress topic and every record it names has
//! arrived (`sink::committed`), so a follower never sees an uncommitted record.
//!
//! Each epoch comes with a [`Resume`]: where to read the progress topic and
//! each output partition from to see that epoch and everything after it
//! again — what a follower that must survive restarts (`notify`) keeps.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use iotflow_redpanda::rskafka::client::Client;
use iotflow_redpanda::rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use iotflow_redpanda::rskafka::record::RecordAndOffset;
use iotflow_redpanda::{scan, topics};
use iotflow_sink::committed::{Assembly, Offer};
use iotflow_sink::progress::ProgressLog;
use iotflow_sink::protocol::{CommitRecord, JobCommits};
use iotflow_sink::records::{EPOCH_HEADER, JOB_HEADER};
use serde::{Deserialize, Serialize};

/// How long a fetch of the progress topic waits for a new commit record.
const POLL_MS: i32 = 50;
/// How long a fetch waits for the rest of an epoch that is committed: its
/// records are being published, so they are moments away. Partitions are
/// read one after another, so a long wait here (per partition) would let the
/// follower fall behind a job that commits every 250 ms.
const ASSEMBLY_WAIT_MS: i32 = 20;

/// Where following starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// With the first epoch committed after the follower started.
    Now,
    /// With the oldest committed epoch still in the topics.
    Beginning,
    /// Where an earlier follower left off.
    At(Resume),
}

/// A place in a job's committed output: epochs from `epoch` on, read from
/// progress-topic offset `progress_from` and output offsets `offsets` (a
/// partition not named: from its earliest offset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    pub job: String,
    pub epoch: u64,
    pub progress_from: i64,
    pub offsets: BTreeMap<i32, i64>,
}

/// One committed epoch's records on the followed topic, partition by
/// partition in publish order, and where to resume to see it (`at`) or
/// what comes after it (`after`).
#[derive(Debug)]
pub struct CommittedEpoch {
    pub epoch: u64,
    pub records: Vec<(i32, RecordAndOffset)>,
    pub at: Resume,
    pub after: Resume,
}

/// A partition of the followed topic: where reading stands and what was read ahead.
struct Partition {
    pc: PartitionClient,
    next: i64,
    ahead: VecDeque<RecordAndOffset>,
}

impl Partition {
    /// The offset of the first record not yet taken.
    fn position(&self) -> i64 {
        self.ahead.front().map_or(self.next, |r| r.offset)
    }
}

/// Follows one topic's committed epochs.
pub struct Follower {
    topic: String,
    parts: BTreeMap<i32, Partition>,
    progress: ProgressLog,
    log_next: i64,
    /// Whether the last read of the progress topic reached its end.
    at_end: bool,
    job: Option<String>,
    commits: JobCommits,
    /// Per valid epoch: the progress offset of the read that brought its commit.
    read_at: BTreeMap<u64, i64>,
    /// The first epoch not yet handed out; `None`: decided by the first read.
    want_from: Option<u64>,
    exit_when_idle: Option<Duration>,
    last_shown: Instant,
}

impl Follower {
    /// Waits for `topic` to exist (up to `exit_when_idle`), then positions the follower.
    pub async fn open(
        client: &Client,
        topic: &str,
        progress_topic: &str,
        job: Option<String>,
        start: Start,
        exit_when_idle: Option<Duration>,
    ) -> Result<Self> {
        let started = Instant::now();
        while topics::partitions_of(client, topic).await?.is_none() {
            if exit_when_idle.is_some_and(|d| started.elapsed() >= d) {
                bail!("topic {topic} does not exist");
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS as u64)).await;
        }
        let info = topics::describe_topic(client, topic)
            .await
            .with_context(|| format!("describing {topic}"))?;
        // Positions before the progress topic is read: whatever a commit read
        // below names but is not yet published lies past them (see `Assembly`).
        let mut parts = BTreeMap::new();
        for p in info {
            let pc = client
                .partition_client(topic, p.partition, UnknownTopicHandling::Retry)
                .await
                .with_context(|| format!("connecting to {topic}/{}", p.partition))?;
            let next = match &start {
                Start::Now => p.high_watermark,
                Start::Beginning => p.earliest,
                Start::At(r) => r.offsets.get(&p.partition).copied().unwrap_or(p.earliest),
            };
            let next = next.max(p.earliest);
            let ahead = VecDeque::new();
            parts.insert(p.partition, Partition { pc, next, ahead });
        }
        let progress = ProgressLog::open(client, progress_topic)
            .await
            .with_context(|| format!("opening {progress_topic}"))?;
        let (mut log_next, mut job, mut want_from) = (0i64, job, None);
        match start {
            Start::Beginning => want_from = Some(0),
            Start::At(r) => {
                if job.as_ref().is_some_and(|j| *j != r.job) {
                    bail!(
                        "the saved position is job {}'s, not {}'s: remove it to start afresh",
                        r.job,
                        job.unwrap_or_default()
                    );
                }
                (log_next, job, want_from) = (r.progress_from, Some(r.job), Some(r.epoch));
            }
            Start::Now => {
                // Only the job's recent history matters: read from where its
                // newest record says it starts, not from the topic's beginning.
                let (earliest, _, newest, _) = progress
                    .newest(|c| match &job {
                        Some(j) => &c.job == j,
                        None => c.publish.iter().any(|t| t.topic == topic),
                    })
                    .await?;
                if let Some((offset, c)) = newest {
                    log_next = if c.unpublished_from.is_none() {
                        earliest
                    } else {
                        c.log_from.unwrap_or(offset)
                    };
                    job.get_or_insert(c.job);
                }
            }
        }
        Ok(Self {
            topic: topic.to_owned(),
            parts,
            progress,
            log_next,
            at_end: false,
            job,
            commits: JobCommits::default(),
            read_at: BTreeMap::new(),
            want_from,
            exit_when_idle,
            last_shown: Instant::now(),
        })
    }

    /// The next committed epoch; `None` once nothing came for `exit_when_idle`.
    pub async fn next(&mut self) -> Result<Option<CommittedEpoch>> {
        loop {
            // Epochs read already come first, once the topic was read to its
            // end (a newer generation there may void some): a follower that
            // fell behind catches up without a round trip per epoch.
            if self.at_end
                && let Some(commit) = self.oldest_wanted()
            {
                return self.assemble(&commit).await.map(Some);
            }
            let read_from = self.log_next;
            let asked = Instant::now();
            let (records, untrusted) = if self.want_from.is_none() {
                // The first read goes to the end: what is there is history.
                let (records, untrusted, next) = self.progress.read_from(read_from).await?;
                (self.log_next, self.at_end) = (next, true);
                (records, untrusted)
            } else {
                let poll = self.progress.poll_from(read_from, POLL_MS).await?;
                (self.log_next, self.at_end) = (poll.next, poll.at_end);
                (poll.commits, poll.untrusted)
            };
            iotflow_sink::progress::report_untrusted(&untrusted);
            if self.job.is_none() {
                self.job = records
                    .iter()
                    .rev()
                    .find(|c| c.publish.iter().any(|t| t.topic == self.topic))
                    .map(|c| c.job.clone());
            }
            if let Some(job) = &self.job {
                for c in records.into_iter().filter(|c| &c.job == job) {
                    let epoch = c.epoch;
                    if self.commits.push(c) {
                        self.read_at.insert(epoch, read_from);
                    }
                }
            }
            // Following from now: what is committed already is history.
            if self.want_from.is_none() {
                self.want_from = Some(
                    self.commits
                        .newest_first()
                        .next()
                        .map_or(0, |c| c.epoch + 1),
                );
            }
            if !self.at_end || self.oldest_wanted().is_some() {
                continue;
            }
            if self
                .exit_when_idle
                .is_some_and(|d| self.last_shown.elapsed() >= d)
            {
                return Ok(None);
            }
            // A broker that answers an empty fetch at once (not waiting for
            // records) is not asked again before the poll interval.
            let poll = Duration::from_millis(POLL_MS as u64);
            tokio::time::sleep(poll.saturating_sub(asked.elapsed())).await;
        }
    }

    /// The oldest commit not yet handed out (once the first read decided where following starts).
    fn oldest_wanted(&self) -> Option<CommitRecord> {
        let want_from = self.want_from?;
        self.commits
            .newest_first()
            .filter(|c| c.epoch >= want_from)
            .last()
            .cloned()
    }

    fn resume_at(&self, job: &str, epoch: u64, progress_from: i64) -> Resume {
        Resume {
            job: job.to_owned(),
            epoch,
            progress_from,
            offsets: self
                .parts
                .iter()
                .map(|(&p, part)| (p, part.position()))
                .collect(),
        }
    }

    /// Gathers `commit`'s records from the partitions.
    async fn assemble(&mut self, commit: &CommitRecord) -> Result<CommittedEpoch> {
        let progress_from = self.read_at.get(&commit.epoch).copied().unwrap_or(0);
        let at = self.resume_at(&commit.job, commit.epoch, progress_from);
        let mut assembly = Assembly::new(commit, &self.topic);
        while !assembly.complete() {
            let mut progressed = false;
            for (&p, part) in self.parts.iter_mut() {
                if !assembly.needs(p) {
                    continue;
                }
                if part.ahead.is_empty() {
                    let (records, _) = scan::fetch_from(
                        &part.pc,
                        part.next,
                        scan::FETCH_MAX_BYTES,
                        ASSEMBLY_WAIT_MS,
                    )
                    .await
                    .with_context(|| format!("reading {}/{p}", self.topic))?;
                    if let Some(last) = records.last() {
                        part.next = last.offset + 1;
                    }
                    part.ahead.extend(records);
                }
                while let Some(r) = part.ahead.front() {
                    // Another job's output on the same topic is not this job's.
                    if r.record
                        .headers
                        .get(JOB_HEADER)
                        .is_some_and(|j| j.as_slice() != commit.job.as_bytes())
                    {
                        part.ahead.pop_front();
                        progressed = true;
                        continue;
                    }
                    let epoch = epoch_of(r).with_context(|| {
                        format!(
                            "{}/{p} offset {}: no {EPOCH_HEADER} header (not an iotflow output?)",
                            self.topic, r.offset
                        )
                    })?;
                    if assembly.decide(p, epoch) == Offer::Later {
                        break;
                    }
                    if let Some(r) = part.ahead.pop_front() {
                        // Taken, or skipped (an epoch handed out before, or before we started).
                        let _ = assembly.offer(p, epoch, r);
                        progressed = true;
                    }
                }
            }
            if let Some(idle) = self.exit_when_idle
                && !progressed
                && self.last_shown.elapsed() >= idle
            {
                bail!(
                    "epoch {} is committed but not all of it arrived on {} within {idle:?}",
                    commit.epoch,
                    self.topic,
                );
            }
        }
        self.want_from = Some(commit.epoch + 1);
        self.last_shown = Instant::now();
        let after = self.resume_at(&commit.job, commit.epoch + 1, progress_from);
        Ok(CommittedEpoch {
            epoch: commit.epoch,
            records: assembly.into_records(),
            at,
            after,
        })
    }
}

fn epoch_of(r: &RecordAndOffset) -> Option<u64> {
    std::str::from_utf8(r.record.headers.get(EPOCH_HEADER)?)
        .ok()?
        .parse()
        .ok()
}
