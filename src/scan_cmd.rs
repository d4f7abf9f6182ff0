//! `iotflow scan`: read a topic to its end and audit what is in it.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use iotflow_dataflow::{Audit, AuditCounts, ParseLimits};
use iotflow_redpanda::rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use iotflow_redpanda::topics::PartitionOffsets;
use iotflow_redpanda::{scan, topics};
use serde::Serialize;

use crate::target::{BrokerSelect, Target};

#[derive(Debug, Args)]
pub struct ScanArgs {
    #[command(flatten)]
    pub select: BrokerSelect,
    /// Topic to read.
    #[arg(long, env = "IOTFLOW_INPUT_TOPIC", default_value = topics::READINGS)]
    pub topic: String,
    /// A record this far behind its partition's newest event time counts as `behind`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub behind: Duration,
    /// Only fetch and count records and bytes (no parsing): rskafka's raw fetch rate.
    #[arg(long)]
    pub raw: bool,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// What `scan --raw` measured.
#[derive(Debug, Serialize)]
pub struct RawFetch {
    pub records: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
}

/// Fetches every partition of `topic` to its end, counting only.
/// Every partition of `topic` with its offsets and a client for it.
async fn partitions(
    target: &Target,
    topic: &str,
) -> Result<Vec<(PartitionOffsets, PartitionClient)>> {
    let info = topics::describe_topic(&target.client, topic)
        .await
        .with_context(|| format!("describing {topic}"))?;
    let mut out = Vec::with_capacity(info.len());
    for p in info {
        let pc = target
            .client
            .partition_client(topic, p.partition, UnknownTopicHandling::Retry)
            .await
            .with_context(|| format!("connecting to {topic}/{}", p.partition))?;
        out.push((p, pc));
    }
    Ok(out)
}

pub async fn raw_fetch(target: &Target, topic: &str) -> Result<RawFetch> {
    let parts = partitions(target, topic).await?;
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (p, pc) in parts {
        tasks.spawn(async move {
            let records = scan::read_range(&pc, p.earliest, p.high_watermark).await?;
            let bytes: usize = records.iter().map(|r| r.record.approximate_size()).sum();
            Ok::<_, iotflow_redpanda::Error>((records.len() as u64, bytes as u64))
        });
    }
    let (mut records, mut bytes) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        let (r, b) = joined.context("fetch task")??;
        records += r;
        bytes += b;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(RawFetch {
        records,
        bytes,
        seconds,
        records_per_sec: records as f64 / seconds.max(1e-9),
        mb_per_sec: bytes as f64 / 1e6 / seconds.max(1e-9),
    })
}

/// What `scan` found.
#[derive(Debug, Serialize)]
pub struct ScanReport {
    pub topic: String,
    pub partitions: Vec<(i32, i64)>,
    pub counts: AuditCounts,
    pub seconds: f64,
}

pub async fn run(home: &Path, args: ScanArgs) -> Result<()> {
    let target = args.select.connect(home).await?;
    if args.raw {
        let r = raw_fetch(&target, &args.topic).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            println!(
                "fetched {} records ({:.1} MB) from {} in {:.2} s: {:.0} records/s, {:.1} MB/s",
                r.records,
                r.bytes as f64 / 1e6,
                args.topic,
                r.seconds,
                r.records_per_sec,
                r.mb_per_sec
            );
        }
        return Ok(());
    }
    let report = scan_topic(&target, &args.topic, args.behind).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

pub async fn scan_topic(target: &Target, topic: &str, behind: Duration) -> Result<ScanReport> {
    let started = std::time::Instant::now();
    let parts = partitions(target, topic).await?;
    let mut audit = Audit::new(
        ParseLimits::default(),
        i64::try_from(behind.as_millis()).unwrap_or(i64::MAX),
    );
    let mut counts = Vec::new();
    for (p, pc) in parts {
        let records = scan::read_range(&pc, p.earliest, p.high_watermark).await?;
        audit.partition(
            records
                .iter()
                .map(|r| r.record.value.as_deref().unwrap_or_default()),
        );
        counts.push((p.partition, records.len() as i64));
    }
    Ok(ScanReport {
        topic: topic.to_owned(),
        partitions: counts,
        counts: audit.counts().clone(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

pub fn print_report(r: &ScanReport) {
    let c = &r.counts;
    println!(
        "read back {} records from {} ({} partitions) in {:.2} s",
        c.records,
        r.topic,
        r.partitions.len(),
        r.seconds
    );
    for (p, n) in &r.partitions {
        println!("  partition {p:<18} {n:>10}");
    }
    println!("  accepted records             {:>10}", c.accepted_records);
    println!("  accepted readings            {:>10}", c.accepted_readings);
    println!("  devices                      {:>10}", c.devices);
    println!("  duplicates (device, seq)     {:>10}", c.duplicates);
    println!("  far behind partition time    {:>10}", c.behind);
    for (reason, n) in &c.rejected {
        println!("  rejected: {reason:<18} {n:>10}");
    }
    for (metric, n) in &c.metrics {
        println!("  metric {metric:<21} {n:>10}");
    }
}
