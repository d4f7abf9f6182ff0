//! `iotflow tail`: the results viewer, read-committed. It follows the
//! progress topic and shows an epoch's aggregates only once the epoch is
//! committed and all of it is published (`sink::committed`).

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{TimeZone, Utc};
use clap::Args;
use iotflow_redpanda::rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use iotflow_redpanda::rskafka::record::RecordAndOffset;
use iotflow_redpanda::{scan, topics};
use iotflow_sink::AggregateRecord;
use iotflow_sink::committed::{Assembly, Offer};
use iotflow_sink::progress::ProgressLog;
use iotflow_sink::protocol::{CommitRecord, JobCommits};
use iotflow_sink::records::{EPOCH_HEADER, JOB_HEADER};

use crate::target::BrokerSelect;

#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub select: BrokerSelect,
    /// Output topic to follow.
    #[arg(long, env = "IOTFLOW_OUTPUT_TOPIC", default_value = topics::AGGREGATES)]
    pub topic: String,
    /// Topic with the commit records.
    #[arg(long, env = "IOTFLOW_PROGRESS_TOPIC", default_value = topics::PROGRESS)]
    pub progress_topic: String,
    /// Job to follow [default: the job of the newest commit that publishes to `--topic`].
    #[arg(long)]
    pub job: Option<String>,
    /// Start from the oldest committed epoch still in the topics, not from now.
    #[arg(long)]
    pub from_beginning: bool,
    /// One JSON aggregate per line (the record value) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Exit once no epoch was shown for this long (e.g. `10s`) [default: follow forever].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub exit_when_idle: Option<Duration>,
}

/// How long a fetch waits for new records.
const POLL_MS: i32 = 200;
/// How long a fetch waits for the rest of an epoch that is committed: its
/// records are being published, so they are moments away. Partitions are
/// read one after another, so a long wait here (per partition) would let the
/// viewer fall behind a job that commits every 250 ms.
const ASSEMBLY_WAIT_MS: i32 = 20;

/// A partition of the followed topic: where reading stands and what was read ahead.
struct Partition {
    pc: PartitionClient,
    next: i64,
    ahead: VecDeque<RecordAndOffset>,
}

pub async fn run(home: &Path, args: TailArgs) -> Result<()> {
    let target = args.select.connect(home).await?;
    // The job may not have created its output yet: wait for it.
    let started = Instant::now();
    while topics::partitions_of(&target.client, &args.topic)
        .await?
        .is_none()
    {
        if args.exit_when_idle.is_some_and(|d| started.elapsed() >= d) {
            bail!("topic {} does not exist", args.topic);
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS as u64)).await;
    }
    let info = topics::describe_topic(&target.client, &args.topic)
        .await
        .with_context(|| format!("describing {}", args.topic))?;
    // Positions before the progress topic is read: whatever a commit read
    // below names but is not yet published lies past them (see `Assembly`).
    let mut parts: BTreeMap<i32, Partition> = BTreeMap::new();
    for p in info {
        let pc = target
            .client
            .partition_client(
                args.topic.as_str(),
                p.partition,
                UnknownTopicHandling::Retry,
            )
            .await
            .with_context(|| format!("connecting to {}/{}", args.topic, p.partition))?;
        let next = if args.from_beginning {
            p.earliest
        } else {
            p.high_watermark
        };
        parts.insert(
            p.partition,
            Partition {
                pc,
                next,
                ahead: VecDeque::new(),
            },
        );
    }
    let progress = ProgressLog::open(&target.client, &args.progress_topic)
        .await
        .with_context(|| format!("opening {}", args.progress_topic))?;
    let (mut log_next, mut job, mut commits) = (0i64, args.job.clone(), JobCommits::default());
    if !args.from_beginning {
        // Only the job's recent history matters: read from where its newest
        // record says it starts, not from the topic's beginning.
        let (earliest, _, newest, _) = progress
            .newest(|c| match &job {
                Some(j) => &c.job == j,
                None => c.publish.iter().any(|t| t.topic == args.topic),
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
    let mut shown: Option<u64> = None;
    let mut first_read = true;
    let mut last_shown = Instant::now();
    let mut out = std::io::stdout().lock();
    loop {
        let (records, untrusted, next) = progress.read_from(log_next).await?;
        log_next = next;
        iotflow_sink::progress::report_untrusted(&untrusted);
        if job.is_none() {
            job = records
                .iter()
                .rev()
                .find(|c| c.publish.iter().any(|t| t.topic == args.topic))
                .map(|c| c.job.clone());
        }
        if let Some(job) = &job {
            for c in records.into_iter().filter(|c| &c.job == job) {
                commits.push(c);
            }
        }
        if first_read && !args.from_beginning {
            // From now on: what is committed already is history.
            shown = commits.newest_first().next().map(|c| c.epoch);
        }
        first_read = false;
        let next_commit: Option<CommitRecord> = commits
            .newest_first()
            .filter(|c| shown.is_none_or(|s| c.epoch > s))
            .last()
            .cloned();
        let Some(commit) = next_commit else {
            if args
                .exit_when_idle
                .is_some_and(|d| last_shown.elapsed() >= d)
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS as u64)).await;
            continue;
        };
        let mut assembly = Assembly::new(&commit, &args.topic);
        while !assembly.complete() {
            let mut progressed = false;
            for (&p, part) in parts.iter_mut() {
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
                    .with_context(|| format!("reading {}/{p}", args.topic))?;
                    if let Some(last) = records.last() {
                        part.next = last.offset + 1;
                    }
                    part.ahead.extend(records);
                }
                while let Some(r) = part.ahead.front() {
                    // Another job's output on the same topic is not this job's to show.
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
                            args.topic, r.offset
                        )
                    })?;
                    if assembly.decide(p, epoch) == Offer::Later {
                        break;
                    }
                    if let Some(r) = part.ahead.pop_front() {
                        // Taken, or skipped (an epoch shown before, or before we started).
                        let _ = assembly.offer(p, epoch, r);
                        progressed = true;
                    }
                }
            }
            if !progressed
                && args
                    .exit_when_idle
                    .is_some_and(|d| last_shown.elapsed() >= d)
            {
                bail!(
                    "epoch {} is committed but not all of it arrived on {} within {:?}",
                    commit.epoch,
                    args.topic,
                    args.exit_when_idle.unwrap_or_default()
                );
            }
        }
        show(&mut out, commit.epoch, assembly, args.json)?;
        shown = Some(commit.epoch);
        last_shown = Instant::now();
    }
}

fn epoch_of(r: &RecordAndOffset) -> Option<u64> {
    std::str::from_utf8(r.record.headers.get(EPOCH_HEADER)?)
        .ok()?
        .parse()
        .ok()
}

fn show(
    out: &mut impl Write,
    epoch: u64,
    assembly: Assembly<RecordAndOffset>,
    json: bool,
) -> Result<()> {
    let records = assembly.into_records();
    if json {
        for (_, r) in &records {
            out.write_all(r.record.value.as_deref().unwrap_or_default())?;
            out.write_all(b"\n")?;
        }
        return Ok(out.flush()?);
    }
    writeln!(
        out,
        "── epoch {epoch} committed · {} aggregates",
        records.len()
    )?;
    if !records.is_empty() {
        writeln!(
            out,
            "{:<16} {:<12} {:<19} {:>6} {:>10} {:>10} {:>10} final",
            "device", "metric", "window start (UTC)", "count", "mean", "min", "max"
        )?;
    }
    for (_, r) in &records {
        let value = r.record.value.as_deref().unwrap_or_default();
        match serde_json::from_slice::<AggregateRecord>(value) {
            Ok(a) => writeln!(
                out,
                "{:<16} {:<12} {:<19} {:>6} {:>10.3} {:>10.3} {:>10.3} {}",
                a.device_id,
                a.metric,
                Utc.timestamp_millis_opt(a.window_start)
                    .single()
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_else(|| a.window_start.to_string()),
                a.count,
                a.mean,
                a.min,
                a.max,
                if a.is_final { "yes" } else { "no" }
            )?,
            Err(_) => writeln!(out, "{}", String::from_utf8_lossy(value))?,
        }
    }
    Ok(out.flush()?)
}
