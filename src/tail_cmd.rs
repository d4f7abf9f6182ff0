//! `iotflow tail`: the results viewer, read-committed. It follows the
//! progress topic and shows an epoch's aggregates only once the epoch is
//! committed and all of it is published (`crate::follow`).

use std::borrow::Cow;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use chrono::{TimeZone, Utc};
use clap::Args;
use iotflow_redpanda::topics;
use iotflow_sink::AggregateRecord;

use crate::follow::{Follower, Start};
use crate::registry_args::{RegistryArgs, as_json};
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
    /// Avro values (`run --output-format avro`) are shown as JSON, their
    /// schemas read from --schema-registry.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub async fn run(home: &Path, args: TailArgs) -> Result<()> {
    let decoder = args.registry.output_decoder()?;
    let target = args.select.connect(home).await?;
    let start = if args.from_beginning {
        Start::Beginning
    } else {
        Start::Now
    };
    let mut follower = Follower::open(
        &target.client,
        &args.topic,
        &args.progress_topic,
        args.job.clone(),
        start,
        args.exit_when_idle,
    )
    .await?;
    let mut out = std::io::stdout().lock();
    while let Some(epoch) = follower.next().await? {
        let values: Vec<Cow<'_, [u8]>> = epoch
            .records
            .iter()
            .map(|(_, r)| {
                as_json(
                    r.record.value.as_deref().unwrap_or_default(),
                    decoder.as_ref(),
                )
            })
            .collect();
        show(&mut out, epoch.epoch, &values, args.json)?;
    }
    Ok(())
}

fn show(out: &mut impl Write, epoch: u64, records: &[Cow<'_, [u8]>], json: bool) -> Result<()> {
    if json {
        for value in records {
            out.write_all(value)?;
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
    for value in records {
        let value: &[u8] = value;
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
