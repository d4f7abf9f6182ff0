//! `iotflow scan`: read a topic to its end and audit what is in it.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use iotflow_dataflow::{Audit, AuditCounts, ParseLimits};
use iotflow_redpanda::rskafka::client::partition::UnknownTopicHandling;
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
    /// JSON output.
    #[arg(long)]
    pub json: bool,
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
    let info = topics::describe_topic(&target.client, topic)
        .await
        .with_context(|| format!("describing {topic}"))?;
    let mut audit = Audit::new(
        ParseLimits::default(),
        i64::try_from(behind.as_millis()).unwrap_or(i64::MAX),
    );
    let mut partitions = Vec::new();
    for p in info {
        let pc = target
            .client
            .partition_client(topic, p.partition, UnknownTopicHandling::Retry)
            .await
            .with_context(|| format!("connecting to {topic}/{}", p.partition))?;
        let records = scan::read_range(&pc, p.earliest, p.high_watermark).await?;
        audit.partition(
            records
                .iter()
                .map(|r| r.record.value.as_deref().unwrap_or_default()),
        );
        partitions.push((p.partition, records.len() as i64));
    }
    Ok(ScanReport {
        topic: topic.to_owned(),
        partitions,
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
