//! `iotflow run`: the streaming job, Kafka in, Kafka (and Parquet) out, exactly
//! once through the commit protocol unless `--at-least-once`.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use iotflow_dataflow::job::{self, EmitMode, Epoch, JobConfig, StateHooks};
use iotflow_dataflow::kafka::{EpochMode, KafkaSourceConfig, kafka_source};
use iotflow_dataflow::operators::windows::Captures;
use iotflow_dataflow::runner::Parallelism;
use iotflow_dataflow::{JobMetrics, ParseLimits, WatermarkConfig, WindowSpec};
use iotflow_redpanda::topics::{self, TopicSpec};
use iotflow_sink::exactly_once::{ExactlyOnceConfig, Roll, commit_outputs};
use iotflow_sink::kafka::{KafkaSinkConfig, publish_aggregates, publish_dead_letters};
use iotflow_sink::parquet::write_dataset;
use serde::{Deserialize, Serialize};

use crate::pipeline_log::{PipelineLog, RunEnd};
use crate::target::BrokerSelect;

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
    /// Topic to read readings from.
    #[arg(long, env = "IOTFLOW_INPUT_TOPIC", default_value = topics::READINGS)]
    input: String,
    /// Topic to write aggregates to (created like the input if missing).
    #[arg(long, env = "IOTFLOW_OUTPUT_TOPIC", default_value = topics::AGGREGATES)]
    output_topic: String,
    /// Dead-letter topic for rejected and late records (created if missing).
    #[arg(long, env = "IOTFLOW_DLQ_TOPIC", default_value = topics::DLQ)]
    dlq: String,
    /// Window size.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    window: Duration,
    /// Slide of hopping windows (default: tumbling, slide = window).
    #[arg(long, value_parser = humantime::parse_duration)]
    slide: Option<Duration>,
    /// Bounded out-of-orderness: the watermark trails the event time by this much.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    max_out_of_order: Duration,
    /// Allowed lateness after the watermark passes a window's end.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    lateness: Duration,
    /// When windows are emitted.
    #[arg(long, value_enum, default_value = "final")]
    emit: EmitArg,
    /// Deterministic epochs of N records per partition (default: epochs by time).
    #[arg(long)]
    epoch_records: Option<u64>,
    /// Epoch length when epochs are cut by time.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "250ms")]
    epoch_interval: Duration,
    /// A caught-up partition quiet this long stops holding the watermark back.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    idle_timeout: Duration,
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
    /// The job's name in commit records [default: <input>-to-<output topic>].
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
    /// Snapshots are deltas per epoch; they fold into a whole one once they add up to
    /// this many bytes or the last whole one, whichever is more.
    #[arg(long, env = "IOTFLOW_SNAPSHOT_FOLD_BYTES", default_value_t = 1 << 20)]
    snapshot_fold_bytes: u64,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Reads a hostfile: one `host:port` per line; blank lines and `#` comments ignored.
pub fn read_hostfile(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading hostfile {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

/// What a run did, on this process (`--json` prints it).
#[derive(Debug, Serialize, Deserialize)]
pub struct RunSummary {
    pub records: u64,
    pub records_accepted: u64,
    pub readings_accepted: u64,
    pub duplicates: u64,
    pub rejected: std::collections::BTreeMap<String, u64>,
    pub late_partial: u64,
    pub windows_final: u64,
    pub window_updates: u64,
    pub last_epoch: u64,
    pub watermark_ms: Option<i64>,
    /// Exactly-once runs: the last committed epoch, and this run's commits.
    pub last_committed_epoch: Option<u64>,
    pub commits: u64,
    pub commit_latency_ms_mean: Option<f64>,
    pub commit_latency_ms_max: Option<f64>,
    pub seconds: f64,
}

fn summary(m: &JobMetrics, started: Instant) -> RunSummary {
    let wm = m.watermark_ms.load(Relaxed);
    let commits = m.commits.load(Relaxed);
    RunSummary {
        records: m.records_in.load(Relaxed),
        records_accepted: m.records_accepted.load(Relaxed),
        readings_accepted: m.readings_accepted.load(Relaxed),
        duplicates: m.duplicates.load(Relaxed),
        rejected: m
            .rejected()
            .into_iter()
            .map(|(r, n)| (r.to_owned(), n))
            .collect(),
        late_partial: m.late_partial.load(Relaxed),
        windows_final: m.windows_emitted.load(Relaxed),
        window_updates: m.updates_emitted.load(Relaxed),
        last_epoch: m.last_epoch.load(Relaxed),
        watermark_ms: (wm != i64::MIN).then_some(wm),
        last_committed_epoch: u64::try_from(m.last_committed_epoch.load(Relaxed)).ok(),
        commits,
        commit_latency_ms_mean: (commits > 0)
            .then(|| m.commit_latency_micros_sum.load(Relaxed) as f64 / commits as f64 / 1e3),
        commit_latency_ms_max: (commits > 0)
            .then(|| m.commit_latency_micros_max.load(Relaxed) as f64 / 1e3),
        seconds: started.elapsed().as_secs_f64(),
    }
}

pub async fn run(home: &Path, args: RunArgs) -> Result<()> {
    // First, so a SIGUSR1 sent once the job shows any sign of life never kills it.
    let drain = Arc::new(AtomicBool::new(false));
    let drain_signal = {
        let drain = Arc::clone(&drain);
        let mut usr1 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                .context("installing the SIGUSR1 handler")?;
        tokio::spawn(async move {
            while usr1.recv().await.is_some() {
                if !drain.swap(true, Relaxed) {
                    eprintln!(
                        "draining: reading each partition to its current end, then closing every window"
                    );
                }
            }
        })
    };
    let window = match args.slide {
        Some(slide) => WindowSpec::hopping(millis(args.window), millis(slide))?,
        None => WindowSpec::tumbling(millis(args.window))?,
    };
    let job_cfg = JobConfig {
        window,
        lateness_ms: millis(args.lateness),
        watermark: WatermarkConfig {
            max_out_of_order_ms: millis(args.max_out_of_order),
            idle_timeout_ms: millis(args.idle_timeout),
            outliers: 1,
        },
        emit: match args.emit {
            EmitArg::Final => EmitMode::Final,
            EmitArg::Updates => EmitMode::Updates,
        },
        limits: ParseLimits::default(),
    };
    let parallelism = Parallelism {
        workers: args.workers,
        processes: args.processes,
        process: args.process,
        hosts: match &args.hostfile {
            Some(f) => read_hostfile(f)?,
            None if args.processes > 1 => bail!("--processes > 1 needs --hostfile"),
            None => Vec::new(),
        },
    };
    let timely_config = parallelism.timely_config()?;
    let target = args.select.connect(home).await?;
    let listed = topics::list_topics(&target.client).await?;
    let input_partitions = listed
        .iter()
        .find(|t| t.name == args.input)
        .map(|t| t.partitions.len() as i32)
        .with_context(|| {
            format!(
                "input topic {} does not exist (create it with `iotflow topics create`)",
                args.input
            )
        })?;
    let missing: Vec<TopicSpec> = [&args.output_topic, &args.dlq]
        .into_iter()
        .filter(|name| !listed.iter().any(|t| &&t.name == name))
        .map(|name| TopicSpec::new(name.as_str(), input_partitions))
        .collect();
    if !missing.is_empty() {
        topics::create_topics(&target.client, &target.bootstrap, &missing).await?;
    }
    let mut source_cfg = KafkaSourceConfig::new(target.bootstrap.clone(), args.input.clone());
    source_cfg.epochs = match args.epoch_records {
        Some(n) if n > 0 => EpochMode::Records(n),
        _ => EpochMode::Time(args.epoch_interval),
    };
    source_cfg.until_end = args.until_end;
    source_cfg.drain = Arc::clone(&drain);
    source_cfg.idle_timeout = args.idle_timeout;
    // Topics created above have the input's partition count.
    let partitions_of = |name: &str| {
        listed
            .iter()
            .find(|t| t.name == name)
            .map_or(input_partitions as usize, |t| t.partitions.len())
    };
    let job_name = args
        .job
        .clone()
        .unwrap_or_else(|| format!("{}-to-{}", args.input, args.output_topic));
    let sink = |topic: &str| KafkaSinkConfig {
        bootstrap: target.bootstrap.clone(),
        topic: topic.to_owned(),
        partitions: partitions_of(topic),
        source_topic: args.input.clone(),
        job: job_name.clone(),
    };
    let (agg_cfg, dlq_cfg) = (sink(&args.output_topic), sink(&args.dlq));
    let exactly_once = if args.at_least_once {
        None
    } else {
        let mut cfg = ExactlyOnceConfig {
            job: job_name.clone(),
            generation: 0,
            state_dir: args.state_dir.clone().unwrap_or_else(|| {
                PathBuf::from("data/state").join(crate::recovery::dir_name(&job_name))
            }),
            parquet_dir: args.parquet_dir.clone().unwrap_or_else(|| {
                PathBuf::from("data/parquet").join(crate::recovery::dir_name(&job_name))
            }),
            bootstrap: target.bootstrap.clone(),
            progress_topic: args.progress_topic.clone(),
            topics: [
                (args.output_topic.clone(), partitions_of(&args.output_topic)),
                (args.dlq.clone(), partitions_of(&args.dlq)),
            ],
            source_topic: args.input.clone(),
            roll: Roll {
                rows: args.parquet_roll_rows,
                epochs: args.parquet_roll_epochs,
            },
            window: job_cfg.window,
            lateness_ms: job_cfg.lateness_ms,
            fold_bytes: args.snapshot_fold_bytes,
            fresh: false,
        };
        let workers = (args.workers * args.processes) as u32;
        let start = crate::recovery::prepare(
            &target.client,
            &target.bootstrap,
            &mut cfg,
            workers,
            args.process,
        )
        .await?;
        source_cfg.start_epoch = start.epoch;
        source_cfg.start_offsets = start.offsets.clone();
        Some((cfg, Arc::new(start)))
    };
    if args.start_at == StartAt::Latest && source_cfg.start_offsets.is_empty() {
        source_cfg.start_offsets = end_offsets(&target.client, &args.input).await?;
        eprintln!(
            "new job: starting at the end of {} {:?}",
            args.input, source_cfg.start_offsets
        );
    }
    let parquet_dir = if exactly_once.is_some() {
        None
    } else {
        args.parquet_dir.clone()
    };

    let metrics = Arc::new(JobMetrics::default());
    let log_dir = args.pipeline_log.clone().or_else(|| match &exactly_once {
        Some((cfg, _)) => Some(cfg.parquet_dir.join("_pipeline")),
        None => args.parquet_dir.as_ref().map(|d| d.join("_pipeline")),
    });
    let pipeline_log = match log_dir.filter(|_| !args.pipeline_log_interval.is_zero()) {
        Some(dir) => Some(Arc::new(Mutex::new(PipelineLog::open(
            &dir,
            &job_name,
            args.process,
            exactly_once.as_ref().map(|(cfg, _)| cfg.generation),
        )?))),
        None => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let source_err: Arc<Mutex<Option<String>>> = Arc::default();
    let sink_err: Arc<Mutex<Option<String>>> = Arc::default();
    let started = Instant::now();
    let status_server = match args.http {
        Some(addr) => {
            let (bound, task) = crate::http::serve(addr, Arc::clone(&metrics), started).await?;
            eprintln!("status page: http://{bound}/  metrics: http://{bound}/metrics");
            Some(task)
        }
        None => None,
    };
    let job = {
        let (metrics, stop, source_err, sink_err) = (
            Arc::clone(&metrics),
            Arc::clone(&stop),
            Arc::clone(&source_err),
            Arc::clone(&sink_err),
        );
        tokio::task::spawn_blocking(move || {
            let guards = timely::execute(timely_config, move |worker| {
                worker.dataflow::<Epoch, _, _>(|scope| {
                    let gate = job::Backpressure::new(Arc::clone(&metrics));
                    let source = kafka_source(
                        scope,
                        source_cfg.clone(),
                        Arc::clone(&source_err),
                        Arc::clone(&stop),
                        gate.clone(),
                        Arc::clone(&metrics),
                    );
                    let captures: Captures = Rc::default();
                    let hooks = match &exactly_once {
                        Some((_, start)) => StateHooks {
                            start: start.epoch,
                            restore: start.snapshots.get(scope.index()).cloned(),
                            capture: Some(Rc::clone(&captures)),
                        },
                        None => StateHooks::default(),
                    };
                    let streams = job::build_with_state(
                        source,
                        job_cfg,
                        Arc::clone(&metrics),
                        Arc::clone(&stop),
                        &gate,
                        hooks,
                    );
                    if let Some((cfg, start)) = &exactly_once {
                        let published = commit_outputs(
                            streams.results,
                            streams.dead,
                            captures,
                            start.epoch,
                            cfg.clone(),
                            Arc::clone(&sink_err),
                            Arc::clone(&stop),
                            Arc::clone(&metrics),
                            start
                                .pending
                                .get(scope.index())
                                .cloned()
                                .unwrap_or_default(),
                        );
                        gate.also_wait_for(published);
                        return;
                    }
                    if let Some(dir) = &parquet_dir {
                        write_dataset(
                            streams.results.clone(),
                            dir.clone(),
                            Arc::clone(&sink_err),
                            Arc::clone(&stop),
                        );
                    }
                    publish_aggregates(
                        streams.results,
                        agg_cfg.clone(),
                        Arc::clone(&sink_err),
                        Arc::clone(&stop),
                    );
                    publish_dead_letters(
                        streams.dead,
                        dlq_cfg.clone(),
                        Arc::clone(&sink_err),
                        Arc::clone(&stop),
                    );
                });
                while worker.step_or_park(Some(Duration::from_millis(50))) {}
            })
            .map_err(|e| anyhow::anyhow!("starting timely: {e}"))?;
            for joined in guards.join() {
                joined.map_err(|e| anyhow::anyhow!("a worker failed: {e}"))?;
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    let progress = (!args.progress_interval.is_zero()).then(|| {
        let (metrics, interval) = (Arc::clone(&metrics), args.progress_interval);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            let mut last = (Instant::now(), 0u64);
            loop {
                tick.tick().await;
                let s = summary(&metrics, started);
                let now = Instant::now();
                let rate = s.readings_accepted.saturating_sub(last.1) as f64
                    / now.duration_since(last.0).as_secs_f64().max(1e-3);
                last = (now, s.readings_accepted);
                eprintln!("{}", progress_line(&s, rate, &metrics.lag()));
            }
        })
    });
    let logging = pipeline_log.as_ref().map(|log| {
        let (metrics, log, interval) = (
            Arc::clone(&metrics),
            Arc::clone(log),
            args.pipeline_log_interval,
        );
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
                // An observation log: losing it must not stop the job.
                if let Err(e) = written {
                    tracing::warn!(error = format!("{e:#}"), "pipeline log stopped");
                    break;
                }
            }
        })
    });
    let interrupted = Arc::new(AtomicBool::new(false));
    let ctrl_c = {
        let (stop, interrupted) = (Arc::clone(&stop), Arc::clone(&interrupted));
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("stopping: finishing the current epoch (open windows are not emitted)");
            interrupted.store(true, Relaxed);
            stop.store(true, Relaxed);
        })
    };
    let result = job.await.context("job thread");
    for task in [
        progress,
        logging,
        Some(ctrl_c),
        Some(drain_signal),
        status_server,
    ]
    .into_iter()
    .flatten()
    {
        task.abort();
    }
    let failure = match result {
        Ok(Ok(())) => [&source_err, &sink_err]
            .into_iter()
            .find_map(|slot| slot.lock().ok().and_then(|mut s| s.take()))
            .map(|e| anyhow::anyhow!("the job failed: {e}"))
            .or_else(|| {
                (stop.load(Relaxed) && !interrupted.load(Relaxed)).then(|| {
                    anyhow::anyhow!(
                        "the job stopped because a source in another process stopped (see that process's log)"
                    )
                })
            }),
        Ok(Err(e)) | Err(e) => Some(e),
    };
    if let Some(log) = &pipeline_log {
        let end = if failure.is_some() {
            RunEnd::Failed
        } else if interrupted.load(Relaxed) {
            RunEnd::Interrupted
        } else if drain.load(Relaxed) {
            RunEnd::Drained
        } else {
            RunEnd::InputEnd
        };
        if let Err(e) = log
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))
            .and_then(|mut l| l.write(&metrics, end))
        {
            tracing::warn!(
                error = format!("{e:#}"),
                "writing the pipeline log's last sample"
            );
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let s = summary(&metrics, started);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
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
    }
    Ok(())
}
