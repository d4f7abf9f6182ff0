//! `iotflow produce`: the device simulator into a topic.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use iotflow_ingest::encoding::{self, Encoding};
use iotflow_ingest::episodes::{EpisodeKind, Episodes};
use iotflow_ingest::producer::{self, Counters, Pace, ProduceSummary, ProducerConfig};
use iotflow_ingest::simulator::{BadKind, Format, MetricSpec, SimConfig, Simulator};
use iotflow_redpanda::rskafka::client::partition::Compression;
use iotflow_redpanda::topics::{self, TopicSpec};

use iotflow_schema::SchemaKind;

use crate::registry_args::{RegistryArgs, register};
use crate::target::{BrokerSelect, Target};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    /// `{"device_id","ts","seq","metrics":{..}}`
    Canonical,
    /// `{"device_id","timestamp":<s>,"seq",<metric>:<value>,..}`
    Flat,
    /// `{"device_id","sensor","ts_ms","value","seq"}`, one record per metric
    Long,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CompressionArg {
    None,
    Lz4,
    Zstd,
}

/// Simulator and producer flags (shared with `demo`).
#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    /// Number of simulated devices.
    #[arg(long, env = "IOTFLOW_DEVICES", default_value_t = 100)]
    pub devices: u32,
    /// With N > 0, every valid record carries `"site":"site-<device % N>"`: a
    /// dimension for job files (jobs/demo.toml groups by it; the default job,
    /// which has no dimensions, dead-letters such records).
    #[arg(long, env = "IOTFLOW_SITES", default_value_t = 0)]
    pub sites: u32,
    /// Metric names, comma-separated; temperature, humidity, pressure, co2 and
    /// battery get realistic ranges, other names a generic one.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "temperature,humidity,pressure"
    )]
    pub metrics: Vec<String>,
    /// Event-time spacing of one device's readings.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub interval: Duration,
    /// Stop after this many records (default 100000 unless --duration is given).
    #[arg(long, conflicts_with = "duration")]
    pub count: Option<u64>,
    /// Stop after this much wall time, e.g. `30s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Records per second at most (default: as fast as the broker takes them).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seed: the same flags and seed write the same records in the same order to each partition.
    #[arg(long, env = "IOTFLOW_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Event time of the first reading: RFC 3339, epoch milliseconds, or `now`.
    #[arg(long, value_parser = parse_start, default_value = "2025-11-22T05:00:00Z")]
    pub start: i64,
    /// JSON shape of valid records.
    #[arg(long, value_enum, default_value = "canonical")]
    pub format: FormatArg,
    /// Fraction of records re-sent later with the same `seq` (producer retries).
    #[arg(long, default_value_t = 0.0)]
    pub duplicates: f64,
    /// Fraction of bad records, spread over the classes of --bad-mix.
    #[arg(long, default_value_t = 0.0)]
    pub bad: f64,
    /// Weights of bad classes, e.g. `malformed_json=2,oversized=1` (default: all classes equally).
    /// Classes: malformed_json, missing_device_id, missing_timestamp, non_numeric_value,
    /// non_finite_value, absurd_timestamp, oversized, invalid_utf8.
    #[arg(long, value_parser = parse_bad_mix)]
    pub bad_mix: Option<BadMix>,
    /// Fraction of late records: event time --late-by behind arrival.
    #[arg(long, default_value_t = 0.0)]
    pub late: f64,
    /// How far behind arrival a late record's event time is.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub late_by: Duration,
    /// Largest event-time delay of a disordered (but not late) record.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub disorder: Duration,
    /// Fraction of valid records that are disordered.
    #[arg(long, default_value_t = 0.15)]
    pub disorder_ratio: f64,
    /// Fraction of readings that are anomalous spikes.
    #[arg(long, default_value_t = 0.002)]
    pub spikes: f64,
    /// Spells of trouble that alert rules should catch, comma-separated:
    /// overheat (temperature +60 °C), stuck (values frozen), silent (no records).
    #[arg(long, value_delimiter = ',', value_parser = parse_episode)]
    pub episodes: Vec<EpisodeKind>,
    /// Event time between the starts of one device's possible spells.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    pub episode_every: Duration,
    /// How long a spell lasts (event time).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2m")]
    pub episode_length: Duration,
    /// Fraction of possible spells that happen.
    #[arg(long, default_value_t = 0.05)]
    pub episode_share: f64,
    /// Records per produce request.
    #[arg(long, default_value_t = 5000)]
    pub batch_records: usize,
    /// Compression of produce requests.
    #[arg(long, value_enum, default_value = "none")]
    pub compression: CompressionArg,
}

#[derive(Debug, Clone)]
pub struct BadMix(Vec<(BadKind, u32)>);

fn parse_bad_mix(s: &str) -> Result<BadMix, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|part| {
            let (name, weight) = part.split_once('=').unwrap_or((part, "1"));
            let kind = BadKind::from_code(name.trim())
                .ok_or_else(|| format!("unknown bad class `{name}`"))?;
            let w = weight
                .trim()
                .parse::<u32>()
                .map_err(|e| format!("weight of {name}: {e}"))?;
            Ok((kind, w))
        })
        .collect::<Result<Vec<_>, String>>()
        .map(BadMix)
}

fn parse_episode(s: &str) -> Result<EpisodeKind, String> {
    EpisodeKind::from_code(s.trim()).ok_or_else(|| {
        let known: Vec<_> = EpisodeKind::ALL.iter().map(|k| k.code()).collect();
        format!("unknown episode `{s}`: one of {}", known.join(", "))
    })
}

fn parse_start(s: &str) -> Result<i64, String> {
    if s == "now" {
        return Ok(chrono::Utc::now().timestamp_millis());
    }
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("`{s}` is not RFC 3339, epoch ms or `now`: {e}"))
}

fn metric_spec(name: &str) -> MetricSpec {
    match name {
        "temperature" => MetricSpec::new(name, 21.0, 4.0, 2),
        "humidity" => MetricSpec::new(name, 50.0, 15.0, 1),
        "pressure" => MetricSpec::new(name, 1013.0, 8.0, 1),
        "co2" => MetricSpec::new(name, 600.0, 150.0, 0),
        "battery" => MetricSpec::new(name, 80.0, 10.0, 1),
        _ => MetricSpec::new(name, 50.0, 10.0, 2),
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl SimArgs {
    pub fn sim_config(&self) -> SimConfig {
        let defaults = SimConfig::default();
        SimConfig {
            devices: self.devices,
            metrics: self.metrics.iter().map(|m| metric_spec(m)).collect(),
            interval_ms: millis(self.interval),
            start_ms: self.start,
            seed: self.seed,
            format: match self.format {
                FormatArg::Canonical => Format::Canonical,
                FormatArg::Flat => Format::Flat,
                FormatArg::Long => Format::Long,
            },
            disorder_ms: millis(self.disorder),
            disorder_ratio: self.disorder_ratio,
            late_ratio: self.late,
            late_by_ms: millis(self.late_by),
            duplicate_ratio: self.duplicates,
            bad_ratio: self.bad,
            bad_mix: self
                .bad_mix
                .clone()
                .map(|m| m.0)
                .unwrap_or(defaults.bad_mix),
            spike_ratio: self.spikes,
            sites: self.sites,
            episodes: (!self.episodes.is_empty()).then(|| Episodes {
                kinds: self.episodes.clone(),
                every_ms: millis(self.episode_every),
                length_ms: millis(self.episode_length),
                share: self.episode_share,
            }),
            ..defaults
        }
    }

    pub fn pace(&self) -> Pace {
        Pace {
            count: self.count.or(if self.duration.is_none() {
                Some(100_000)
            } else {
                None
            }),
            duration: self.duration,
            rate: self.rate,
        }
    }

    pub fn producer_config(&self) -> ProducerConfig {
        ProducerConfig {
            batch_records: self.batch_records.max(1),
            compression: match self.compression {
                CompressionArg::None => Compression::NoCompression,
                CompressionArg::Lz4 => Compression::Lz4,
                CompressionArg::Zstd => Compression::Zstd,
            },
            ..ProducerConfig::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub select: BrokerSelect,
    /// Topic to write readings to.
    #[arg(long, env = "IOTFLOW_INPUT_TOPIC", default_value = topics::READINGS)]
    pub topic: String,
    /// Partitions of the topic if it has to be created.
    #[arg(long, env = "IOTFLOW_PARTITIONS", default_value_t = 4)]
    pub partitions: i32,
    #[command(flatten)]
    pub sim: SimArgs,
    /// Encoding of the values: json (the shape of --format), or avro or
    /// protobuf in the Confluent wire format, its schema registered under
    /// `<topic>-value` in --schema-registry (records that fit no schema, the
    /// bad ones, go as they are).
    #[arg(long, value_enum, default_value = "json")]
    pub encoding: EncodingArg,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print the final summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EncodingArg {
    Json,
    Avro,
    Protobuf,
}

/// The encoding of `sim`'s records, its schema registered for `topic`.
fn encoding(
    registry: &RegistryArgs,
    encoding: EncodingArg,
    topic: &str,
    sim: &SimArgs,
) -> Result<Option<Encoding>> {
    let (kind, schema) = match encoding {
        EncodingArg::Json => return Ok(None),
        EncodingArg::Avro => (
            SchemaKind::Avro,
            encoding::reading_schema(&sim.sim_config()),
        ),
        EncodingArg::Protobuf => (
            SchemaKind::Protobuf,
            encoding::reading_proto(&sim.sim_config()),
        ),
    };
    let Some(registry) = registry.registry(&Default::default())? else {
        let name = format!("{encoding:?}").to_lowercase();
        bail!("--encoding {name} registers its schema: add --schema-registry URL");
    };
    let subject = format!("{topic}-value");
    let id = register(&registry, &subject, kind, &schema)?;
    eprintln!("schema of the readings registered under {subject} as id {id}");
    match kind {
        SchemaKind::Protobuf => Encoding::protobuf(id, &schema),
        _ => Encoding::avro(id, &schema),
    }
    .map(Some)
    .map_err(|e| anyhow::anyhow!("the readings' schema: {e}"))
}

pub async fn run(home: &Path, args: ProduceArgs) -> Result<()> {
    let encoding = encoding(&args.registry, args.encoding, &args.topic, &args.sim)?;
    let target = args.select.connect(home).await?;
    let summary = produce_to(
        &target,
        &args.topic,
        args.partitions,
        &args.sim,
        encoding,
        true,
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&args.topic, &summary);
    }
    Ok(())
}

/// Ensures `topic` exists, then runs the simulator into it (with a progress bar
/// on a terminal if `bar`).
pub async fn produce_to(
    target: &Target,
    topic: &str,
    partitions: i32,
    sim: &SimArgs,
    encoding: Option<Encoding>,
    bar: bool,
) -> Result<ProduceSummary> {
    let exists = topics::partitions_of(&target.client, topic)
        .await?
        .is_some();
    if !exists {
        if partitions < 1 {
            bail!("--partitions must be at least 1");
        }
        topics::create_topics(
            &target.client,
            &target.bootstrap,
            &[TopicSpec::new(topic, partitions)],
        )
        .await
        .with_context(|| format!("creating topic {topic}"))?;
        eprintln!("created topic {topic} with {partitions} partitions");
    }
    let simulator = Simulator::new(sim.sim_config())?;
    let pace = sim.pace();
    let counters = Arc::new(Counters::default());
    let bar = match pace.count {
        _ if !bar => ProgressBar::hidden(),
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:30}] {human_pos}/{human_len} records {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let ticker = {
        let (bar, counters) = (bar.clone(), Arc::clone(&counters));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            let started = std::time::Instant::now();
            loop {
                tick.tick().await;
                let generated = counters.generated.load(Ordering::Relaxed);
                let acked = counters.acked.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                bar.set_position(generated);
                bar.set_message(format!(
                    "({acked} acked, {:.0} rec/s, {:.1} MB/s)",
                    acked as f64 / secs,
                    counters.bytes.load(Ordering::Relaxed) as f64 / 1e6 / secs
                ));
            }
        })
    };
    let records = simulator.map(move |r| match &encoding {
        Some(e) => e.encode(r),
        None => r,
    });
    let result = producer::produce(
        &target.client,
        topic,
        records,
        pace,
        sim.producer_config(),
        counters,
    )
    .await;
    ticker.abort();
    bar.finish_and_clear();
    Ok(result?)
}

pub fn print_summary(topic: &str, s: &ProduceSummary) {
    println!(
        "produced {} records ({} readings, {:.1} MB) to {topic} in {:.2} s: {:.0} readings/s, {:.0} records/s, {:.1} MB/s",
        s.records,
        s.readings,
        s.bytes as f64 / 1e6,
        s.seconds,
        s.readings_per_sec(),
        s.records_per_sec(),
        s.mb_per_sec()
    );
    println!(
        "  disordered (valid, event time behind arrival): {}",
        s.disordered
    );
    for (class, n) in &s.by_class {
        println!("  {class:<28} {n:>10}");
    }
    for (p, n) in &s.by_partition {
        println!("  partition {p:<18} {n:>10}");
    }
}
