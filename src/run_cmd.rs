//! `iotflow run`: the streaming job, Kafka in, Kafka (and Parquet) out, exactly
//! once through the commit protocol unless `--at-least-once`. Flags become an
//! [`iotflow_runtime::LiveJobConfig`]; this file adds what a terminal needs:
//! signals, the progress line, the status page, the pipeline log, the summary.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use iotflow_dataflow::JobMetrics;
use iotflow_jobfile::{InputFormat, OutputFormat};
use iotflow_redpanda::topics;
use iotflow_runtime::{Controls, LiveJob, StartReport};

pub use iotflow_runtime::RunSummary;

use crate::pipeline_log::{PipelineLog, RunEnd};
use crate::registry_args::{self, RegistryArgs};
use crate::target::BrokerSelect;

mod config;
mod supervise;
pub use config::read_hostfile;
use supervise::{drain_on_sigusr1, spawn_watchdogs, stop_on_signals};

/// The end offset (high watermark) of every partition of `topic`.
pub async fn end_offsets(
    client: &iotflow_redpanda::rskafka::client::Client,
    topic: &str,
) -> Result<std::collections::BTreeMap<i32, i64>> {
    Ok(topics::describe_topic(client, topic)
        .await
        .with_context(|| format!("reading the end offsets of {topic}"))?
        .into_iter()
        .map(|p| (p.partition, p.high_watermark))
        .collect())
}

/// The live progress line: epochs, throughput over the last interval, lag per partition.
fn progress_line(s: &RunSummary, rate: f64, lag: &std::collections::BTreeMap<i32, i64>) -> String {
    let lags: Vec<String> = lag.values().map(i64::to_string).collect();
    format!(
        "epoch {:>6} | committed {:>6} | {:>10} records | {:>9.0} readings/s | lag {} | watermark {} | dlq {} | windows {}",
        s.last_epoch,
        s.last_committed_epoch
            .map_or_else(|| "-".to_owned(), |e| e.to_string()),
        s.records,
        rate,
        if lags.is_empty() {
            "-".to_owned()
        } else {
            lags.join("/")
        },
        s.watermark_ms
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.format("%H:%M:%S%.3f").to_string())
            .unwrap_or_else(|| "-".into()),
        s.rejected.values().sum::<u64>(),
        s.windows_final
    )
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EmitArg {
    /// Each window once, when final.
    Final,
    /// Changed windows every epoch (`final=false`), then once with `final=true`.
    Updates,
}

/// Where a job without commits starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StartAt {
    /// Each partition's earliest retained offset.
    Earliest,
    /// Each partition's end when the job starts: only what arrives from then on.
    Latest,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    select: BrokerSelect,
    /// The job file (TOML) stating the job: its input mapping, aggregations and
    /// outputs (`iotflow check` validates it). Without it, the flags below describe
    /// the default job: per (device, metric) over one window, into --output-topic.
    /// A flag given explicitly (or by its variable) overrides the file.
    #[arg(long, env = "IOTFLOW_JOB_FILE")]
    job_file: Option<PathBuf>,
    /// Topic to read readings from [default: iot.readings].
    #[arg(long, env = "IOTFLOW_INPUT_TOPIC")]
    input: Option<String>,
    /// Encoding of the input's values: json, or avro, protobuf or json-schema
    /// in the Confluent wire format, schemas by id from --schema-registry
    /// [default: the job file's `format`, else json].
    #[arg(long, env = "IOTFLOW_INPUT_FORMAT")]
    input_format: Option<InputFormat>,
    /// Encoding of every aggregation's topic values and of alert events:
    /// json, or avro in the Confluent wire format, each schema registered
    /// under `<topic>-value` in --schema-registry (Parquet keeps its typed
    /// schema) [default: each aggregation's `format` and `alerts_format`, else json].
    #[arg(long, env = "IOTFLOW_OUTPUT_FORMAT")]
    output_format: Option<OutputFormat>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Default job: topic to write aggregates to (created like the input if missing)
    /// [default: iot.aggregates].
    #[arg(long, env = "IOTFLOW_OUTPUT_TOPIC")]
    output_topic: Option<String>,
    /// Dead-letter topic for rejected and late records (created if missing) [default: iot.dlq].
    #[arg(long, env = "IOTFLOW_DLQ_TOPIC")]
    dlq: Option<String>,
    /// Default job: window size [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    window: Option<Duration>,
    /// Default job: slide of hopping windows (default: tumbling, slide = window).
    #[arg(long, value_parser = humantime::parse_duration)]
    slide: Option<Duration>,
    /// Bounded out-of-orderness: the watermark trails the event time by this much [default: 2s].
    #[arg(long, value_parser = humantime::parse_duration)]
    max_out_of_order: Option<Duration>,
    /// Allowed lateness after the watermark passes a window's end [default: 0s].
    #[arg(long, value_parser = humantime::parse_duration)]
    lateness: Option<Duration>,
    /// Default job: when windows are emitted [default: final].
    #[arg(long, value_enum)]
    emit: Option<EmitArg>,
    /// Deterministic epochs of N records per partition (default: epochs by time).
    #[arg(long)]
    epoch_records: Option<u64>,
    /// Epoch length when epochs are cut by time.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "250ms")]
    epoch_interval: Duration,
    /// With epochs cut by time, at most this many records per partition in one epoch:
    /// a backlog is cut into bounded epochs, so progress commits steadily while catching up.
    #[arg(long, env = "IOTFLOW_EPOCH_MAX_RECORDS", default_value_t = 25_000)]
    epoch_max_records: u64,
    /// Record bytes each input partition's fetcher may queue ahead of the dataflow
    /// before it waits (each fetch adds up to 4 MiB more): more hides fetch
    /// latency, less holds less memory on a backlog.
    #[arg(long, env = "IOTFLOW_FETCH_BUFFER_BYTES", default_value_t = iotflow_dataflow::kafka::DEFAULT_FETCH_BUFFER_BYTES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    fetch_buffer_bytes: usize,
    /// A caught-up partition quiet this long stops holding the watermark back [default: 5s].
    #[arg(long, value_parser = humantime::parse_duration)]
    idle_timeout: Option<Duration>,
    /// Process the input up to the end offsets seen at start, close every window, exit.
    /// (A running job does the same from the moment it gets SIGUSR1.)
    #[arg(long)]
    until_end: bool,
    /// Where a new job starts reading (a job with commits resumes after its last one).
    #[arg(long, value_enum, env = "IOTFLOW_START_AT", default_value = "earliest")]
    start_at: StartAt,
    /// How often the progress line is printed on stderr (0: never).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    progress_interval: Duration,
    /// Where counters are sampled to for `pipeline_health.ipynb`: samples-p<process>.jsonl
    /// and commits-p<process>.jsonl [default: <parquet dir>/_pipeline when there is one].
    #[arg(long, env = "IOTFLOW_PIPELINE_LOG")]
    pipeline_log: Option<PathBuf>,
    /// How often the pipeline log takes a sample (0: no log).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pipeline_log_interval: Duration,
    /// Worker threads per process.
    #[arg(short = 'w', long, env = "IOTFLOW_WORKERS", default_value_t = 1)]
    workers: usize,
    /// Number of processes.
    #[arg(short = 'n', long, default_value_t = 1)]
    processes: usize,
    /// This process's index (0-based).
    #[arg(short = 'p', long, default_value_t = 0)]
    process: usize,
    /// File with one `host:port` per process, in process order.
    #[arg(long)]
    hostfile: Option<PathBuf>,
    /// With several processes: stop (exit 3, naming it) when a peer sent no
    /// heartbeat (UDP, on its hostfile port) for this long; 0 turns the watchdog off.
    #[arg(long, env = "IOTFLOW_PEER_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
    peer_timeout: Duration,
    /// Stop (exit 3, naming the brokers) when no broker answered a metadata
    /// request over a fresh connection for this long (a cut link or a hung
    /// broker would otherwise hold the job, and every peer, for as long as TCP
    /// takes to give up); 0 turns the watchdog off.
    #[arg(long, env = "IOTFLOW_BROKER_TIMEOUT", value_parser = humantime::parse_duration, default_value = "30s")]
    broker_timeout: Duration,
    /// Print the final summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Serve Prometheus metrics at /metrics and a self-refreshing status page
    /// at / on this address (e.g. 127.0.0.1:9464; port 0 picks a free one).
    #[arg(long, env = "IOTFLOW_HTTP")]
    http: Option<std::net::SocketAddr>,
    /// Final windows as Parquet under DIR/aggregates/date=YYYY-MM-DD/ (files enter the
    /// dataset by atomic rename once their epoch commits) [default: data/parquet/<job>].
    #[arg(long, env = "IOTFLOW_PARQUET_DIR")]
    parquet_dir: Option<PathBuf>,
    /// Staged outputs and snapshots of the exactly-once protocol; a restart on the same
    /// directory resumes after the last commit [default: data/state/<job>].
    #[arg(long, env = "IOTFLOW_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// The job's name in commit records [default: the job file's `name`, else
    /// <input>-to-<output topic>].
    #[arg(long, env = "IOTFLOW_JOB")]
    job: Option<String>,
    /// The commit log topic (one partition, compacted; created if missing).
    #[arg(long, env = "IOTFLOW_PROGRESS_TOPIC", default_value = topics::PROGRESS)]
    progress_topic: String,
    /// Skip the commit protocol: publish each epoch as it completes (a crash can repeat
    /// output) and write Parquet only with --parquet-dir. For comparisons.
    #[arg(long)]
    at_least_once: bool,
    /// Roll a worker's final windows into a Parquet file once this many are pending.
    #[arg(long, env = "IOTFLOW_PARQUET_ROLL_ROWS", default_value_t = 500_000)]
    parquet_roll_rows: u64,
    /// Also roll once the oldest pending window is this many epochs old (240 × 250 ms = 1 min),
    /// or at the end of the input. Rolls count rows and epochs, never time, so replays
    /// write the same files.
    #[arg(long, env = "IOTFLOW_PARQUET_ROLL_EPOCHS", default_value_t = 240)]
    parquet_roll_epochs: u64,
    /// Also roll once the pending rows take this many bytes (their binary form, counted unpacked).
    #[arg(long, env = "IOTFLOW_PARQUET_ROLL_BYTES", default_value_t = 64 << 20)]
    parquet_roll_bytes: u64,
    /// Snapshots are deltas per epoch; they fold into a whole one once they add up to
    /// this many bytes or the last whole one, whichever is more.
    #[arg(long, env = "IOTFLOW_SNAPSHOT_FOLD_BYTES", default_value_t = 1 << 20)]
    snapshot_fold_bytes: u64,
    /// The whole state every this many epochs (a checkpoint) and no snapshot between:
    /// a restart restores the last checkpoint and replays the epochs since from the
    /// input, cut as they were committed (8 × 250 ms = 2 s of input live). 0: a snapshot
    /// delta every epoch instead (no replay on a restart, but on a backlog about a tenth
    /// slower and more memory).
    #[arg(long, env = "IOTFLOW_CHECKPOINT_EVERY", default_value_t = 8)]
    checkpoint_every: u64,
    /// Committed epochs that may still be publishing while the next commits
    /// (pipelining, 1 to 8; 1 = each commit waits for the previous epoch's publishing).
    #[arg(long, env = "IOTFLOW_COMMIT_DEPTH", default_value_t = 4,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=8))]
    commit_depth: usize,
    /// Output bytes staged but not yet published, per process, past which the
    /// sources wait before starting another epoch (256 MiB).
    #[arg(long, env = "IOTFLOW_MAX_UNPUBLISHED_BYTES", default_value_t = 256 << 20)]
    max_unpublished_bytes: u64,
}

/// Says how the run starts (the crash tests read these lines).
fn announce(report: &StartReport, input: &str, workers: usize) {
    match report {
        StartReport::Resumed {
            after,
            generation,
            offsets,
            skipped,
            replayed,
            checkpoint,
            rescaled_from,
            discarded,
        } => {
            if !skipped.is_empty() {
                eprintln!(
                    "snapshots of epochs {skipped:?} are damaged or missing: resuming from epoch {after}"
                );
            }
            if let Some(at) = checkpoint {
                eprintln!(
                    "state from the checkpoint of epoch {at}: epochs {}..={after} are replayed \
                     from the input as they were cut, not staged again",
                    at + 1
                );
            }
            if let Some((first, last)) = replayed {
                eprintln!(
                    "epochs {first}..={last} are cut again as they were committed: \
                     what they published is published again, not something else"
                );
            }
            if let Some(was) = rescaled_from {
                eprintln!(
                    "rescaling: epoch {after} was committed by {was} workers, resuming with {workers}"
                );
            }
            eprintln!(
                "resuming after committed epoch {after} (generation {generation}) at input offsets {offsets:?}; \
                 {discarded} staged epochs discarded"
            );
        }
        StartReport::Fresh { offsets, .. } | StartReport::Uncommitted { offsets }
            if !offsets.is_empty() =>
        {
            eprintln!("new job: starting at the end of {input} {offsets:?}");
        }
        _ => {}
    }
}

pub async fn run(home: &Path, args: RunArgs) -> Result<()> {
    let controls = Controls::default();
    // First, so a SIGUSR1 sent once the job shows any sign of life never kills it.
    let drain_signal = drain_on_sigusr1(&controls)?;
    // The job file first: a refused file needs no broker.
    let plan = args.plan()?;
    // The registry settings too: a job that cannot read its input or write
    // its outputs needs no broker.
    let registry = args.registry.registry(&plan.input.registry)?;
    let decoder = registry_args::decoder(&plan.input, registry.as_ref())?;
    config::check_registry(&plan, registry.as_ref())?;
    let target = args.select.connect_with(home, &plan.kafka).await?;
    let cfg = args.job_config(&plan, target.bootstrap.clone(), registry.as_ref(), decoder)?;
    if let Some(decoder) = cfg.dataflow.input.decoder() {
        // The status page and /metrics say when the registry holds the job.
        let _ = controls.metrics.registry.set(decoder.status());
    }
    let name = cfg.name.clone();
    // Before recovery, whose reads would hang on a cut link like any others.
    let watchdogs = spawn_watchdogs(&args, &name, &target.bootstrap)?;
    let job = LiveJob::prepare(&target.client, cfg, controls.clone()).await?;
    announce(
        job.report(),
        &plan.input.topic,
        args.workers * args.processes,
    );
    let metrics = Arc::clone(&controls.metrics);
    let log_dir = args
        .pipeline_log
        .clone()
        .or_else(|| job.parquet_dir().map(|d| d.join("_pipeline")));
    let pipeline_log = match log_dir.filter(|_| !args.pipeline_log_interval.is_zero()) {
        Some(dir) => Some(Arc::new(Mutex::new(PipelineLog::open(
            &dir,
            &name,
            args.process,
            job.generation(),
        )?))),
        None => None,
    };
    let started = Instant::now();
    let status_server = match args.http {
        Some(addr) => {
            let (bound, task) = crate::http::serve(addr, Arc::clone(&metrics), started).await?;
            eprintln!("status page: http://{bound}/  metrics: http://{bound}/metrics");
            Some(task)
        }
        None => None,
    };
    let running = tokio::task::spawn_blocking(move || job.run());
    let progress = (!args.progress_interval.is_zero())
        .then(|| print_progress(Arc::clone(&metrics), args.progress_interval, started));
    let logging = pipeline_log.as_ref().map(|log| {
        sample_pipeline(
            Arc::clone(&metrics),
            Arc::clone(log),
            args.pipeline_log_interval,
        )
    });
    let ctrl_c = stop_on_signals(&controls);
    let result = running.await.context("job thread");
    for task in [
        progress,
        logging,
        Some(ctrl_c),
        Some(drain_signal),
        status_server,
    ]
    .into_iter()
    .flatten()
    .chain(watchdogs.tasks)
    {
        task.abort();
    }
    let failure = match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(anyhow::Error::from(e)),
        Err(e) => Some(e),
    };
    if let Some(log) = &pipeline_log {
        last_sample(log, &controls, failure.is_some());
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some((hosts, job)) = &watchdogs.peers {
        iotflow_runtime::peers::say_goodbye(job, args.process, hosts).await;
    }
    print_summary(&RunSummary::of(&metrics, started), args.json)
}

/// The pipeline log's last sample, saying how the run ended.
fn last_sample(log: &Mutex<PipelineLog>, controls: &Controls, failed: bool) {
    let end = if failed {
        RunEnd::Failed
    } else if controls.interrupted.load(Relaxed) {
        RunEnd::Interrupted
    } else if controls.drain.load(Relaxed) {
        RunEnd::Drained
    } else {
        RunEnd::InputEnd
    };
    if let Err(e) = log
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))
        .and_then(|mut l| l.write(&controls.metrics, end))
    {
        tracing::warn!(
            error = format!("{e:#}"),
            "writing the pipeline log's last sample"
        );
    }
}

/// The progress line on stderr every `interval`.
fn print_progress(
    metrics: Arc<JobMetrics>,
    interval: Duration,
    started: Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        let mut last = (Instant::now(), 0u64);
        loop {
            tick.tick().await;
            let s = RunSummary::of(&metrics, started);
            let now = Instant::now();
            let rate = s.readings_accepted.saturating_sub(last.1) as f64
                / now.duration_since(last.0).as_secs_f64().max(1e-3);
            last = (now, s.readings_accepted);
            eprintln!("{}", progress_line(&s, rate, &metrics.lag()));
        }
    })
}

/// A pipeline-log sample every `interval`; losing the log never stops the job.
fn sample_pipeline(
    metrics: Arc<JobMetrics>,
    log: Arc<Mutex<PipelineLog>>,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            let written = log
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))
                .and_then(|mut log| {
                    let dir = log.dir().display().to_string();
                    log.write(&metrics, RunEnd::Running)
                        .with_context(|| format!("writing the pipeline log in {dir}"))
                });
            if let Err(e) = written {
                tracing::warn!(error = format!("{e:#}"), "pipeline log stopped");
                break;
            }
        }
    })
}

fn print_summary(s: &RunSummary, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    println!(
        "{} records ({} readings accepted, {} duplicates dropped) in {:.2} s: {:.0} readings/s; {} final windows, {} updates; epochs 0..={}",
        s.records,
        s.readings_accepted,
        s.duplicates,
        s.seconds,
        s.readings_accepted as f64 / s.seconds.max(1e-9),
        s.windows_final,
        s.window_updates,
        s.last_epoch
    );
    if let (Some(epoch), Some(mean), Some(max)) = (
        s.last_committed_epoch,
        s.commit_latency_ms_mean,
        s.commit_latency_ms_max,
    ) {
        println!(
            "  committed through epoch {epoch}: {} commits by this run, latency {mean:.1} ms mean, {max:.1} ms max",
            s.commits
        );
    }
    for (reason, n) in &s.rejected {
        println!("  dead letter: {reason:<20} {n:>10}");
    }
    Ok(())
}
