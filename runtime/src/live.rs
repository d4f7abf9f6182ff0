//! [`LiveJob`]: the streaming job from its configuration to its end.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use iotflow_dataflow::JobMetrics;
use iotflow_dataflow::job::{self, ByteBound, Epoch, JobConfig, StateHooks};
use iotflow_dataflow::kafka::{EpochMode, KafkaSourceConfig, kafka_source};
use iotflow_dataflow::operators::windows::Captures;
use iotflow_dataflow::replay::Cut;
use iotflow_dataflow::runner::Parallelism;
use iotflow_dataflow::snapshot::{CapturePlan, WorkerSnapshot};
use iotflow_redpanda::topics::{self, TopicSpec};
use iotflow_sink::SinkError;
use iotflow_sink::alert_shape::{AlertRow, AlertShape};
use iotflow_sink::exactly_once::outgoing::{
    aggregate_outgoing, alert_outgoing, dead_outgoing, with_epoch,
};
use iotflow_sink::exactly_once::recovery::{self, RunStart};
use iotflow_sink::exactly_once::{
    ExactlyOnceConfig, Held, OutputId, OutputTopic, PendingRows, Roll, WorkerSinks, commit_outputs,
};
use iotflow_sink::kafka::{
    FailureSlot, KafkaSinkConfig, publish_aggregates, publish_dead_letters, record_failure,
};
use iotflow_sink::parquet::{Dataset, write_dataset};
use iotflow_sink::progress::ProgressLog;
use iotflow_sink::protocol::CommitRecord;
use iotflow_sink::shape::{AggregateRow, AggregateShape, DatasetShape, Row};
use rskafka::client::Client;
use timely::dataflow::operators::Concat;
use timely::dataflow::operators::vec::Filter;

/// Where a job without commits starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Each partition's earliest retained offset.
    Earliest,
    /// Each partition's end when the job starts: only what arrives from then on.
    Latest,
}

/// How outputs leave the job.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// Through the commit protocol.
    ExactlyOnce(Committing),
    /// Each epoch published as it completes (a crash can repeat output);
    /// Parquet only with a directory.
    AtLeastOnce { parquet_dir: Option<PathBuf> },
}

/// The commit protocol's settings.
#[derive(Debug, Clone)]
pub struct Committing {
    pub state_dir: PathBuf,
    pub parquet_dir: PathBuf,
    pub progress_topic: String,
    pub roll: Roll,
    pub fold_bytes: u64,
    /// The whole state every this many epochs and none between; `None`: a delta every epoch.
    pub checkpoint_every: Option<std::num::NonZeroU64>,
    /// Committed epochs that may wait for publishing at once.
    pub depth: usize,
    /// Staged-but-unpublished bytes per process before the sources wait.
    pub max_unpublished_bytes: u64,
}

/// Where one aggregation's results go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregationOutput {
    /// A topic (created like the input when missing).
    pub topic: Option<String>,
    /// A Parquet dataset under the Parquet directory.
    pub parquet: Option<String>,
    /// The topic's values in Avro under this registered schema, not JSON.
    pub avro: Option<iotflow_sink::AvroValues>,
}

/// Everything a live job needs to know.
#[derive(Debug, Clone)]
pub struct LiveJobConfig {
    pub bootstrap: iotflow_redpanda::Brokers,
    pub input: String,
    /// Per aggregation of `dataflow`, in its order.
    pub outputs: Vec<AggregationOutput>,
    /// Where alert events go, when the job has alert rules.
    pub alert_output: Option<AggregationOutput>,
    pub dlq_topic: String,
    /// The job's name: commit records, record headers, default directories.
    pub name: String,
    pub dataflow: JobConfig,
    pub epochs: EpochMode,
    /// With time epochs: records per partition per epoch at most.
    pub max_epoch_records: u64,
    /// Record bytes each partition's fetcher may hold ahead of the dataflow.
    pub fetch_buffer_bytes: usize,
    pub until_end: bool,
    pub idle_timeout: Duration,
    pub start_at: StartAt,
    pub parallelism: Parallelism,
    pub delivery: Delivery,
}

/// Shared with whoever watches and steers the job (signals, status page).
#[derive(Debug, Clone, Default)]
pub struct Controls {
    pub metrics: Arc<JobMetrics>,
    /// Raised: stop after the current epoch.
    pub stop: Arc<AtomicBool>,
    /// Raised: read every partition to its end of that moment, close every window, finish.
    pub drain: Arc<AtomicBool>,
    /// Raised with `stop` by an operator's request (Ctrl-C), not a failure elsewhere.
    pub interrupted: Arc<AtomicBool>,
}

/// What preparing the run found, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartReport {
    /// No commit of this job: from the beginning (or the end, with `StartAt::Latest`).
    Fresh {
        generation: u64,
        offsets: BTreeMap<i32, i64>,
    },
    /// After committed epoch `after`.
    Resumed {
        after: Epoch,
        generation: u64,
        offsets: BTreeMap<i32, i64>,
        /// Commits skipped because their state was damaged.
        skipped: Vec<Epoch>,
        /// The skipped commits' epochs cut again as they were committed
        /// (first and last), as far as their records say how.
        replayed: Option<(Epoch, Epoch)>,
        /// The state is this checkpoint's: the epochs after it through
        /// `after` are replayed from the input, not staged again.
        checkpoint: Option<Epoch>,
        /// Workers that committed `after`, when not the run's.
        rescaled_from: Option<u32>,
        discarded: usize,
    },
    /// At least once: no commits.
    Uncommitted { offsets: BTreeMap<i32, i64> },
}

/// What can stop a live job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error("input topic {0} does not exist (create it with `iotflow topics create`)")]
    NoInput(String),
    #[error(transparent)]
    Broker(#[from] iotflow_redpanda::Error),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("{0}")]
    Timely(String),
    #[error("the job failed: {0}")]
    Failed(String),
    #[error("the job stopped because a source in another process stopped (see that process's log)")]
    StoppedElsewhere,
    #[error(
        "{path}: the state was written by a job with other aggregations, windows, lateness, watermark or output formats; \
         its snapshots and staged outputs cannot be taken as this job's (give the changed job its own --job and --state-dir)"
    )]
    JobChanged { path: PathBuf },
    #[error(
        "alert rules need exactly-once delivery: an alert's state is only as good as the commit that holds it (drop --at-least-once)"
    )]
    AlertsNeedCommits,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What each worker starts from (shared by the workers of this process).
#[derive(Debug)]
struct Resume {
    cfg: Arc<ExactlyOnceConfig>,
    /// The first epoch staged.
    start: Epoch,
    /// The first epoch the dataflow runs (before `start`: replayed).
    state_start: Epoch,
    snapshots: Vec<WorkerSnapshot>,
    pending: Vec<Vec<PendingRows>>,
    history: Vec<(CommitRecord, i64)>,
    held: Arc<Held>,
    max_unpublished_bytes: u64,
    /// Epochs the source cuts again as they were committed.
    replay: Vec<Cut>,
}

/// The job's output topics and datasets, and which aggregation writes where.
#[derive(Debug, Clone)]
struct Routes {
    /// In [`OutputId`] order: each aggregation's topic (in aggregation order), then dead letters.
    topics: Vec<OutputTopic>,
    /// Per aggregation: its topic's id and its records' shape.
    aggregations: Vec<(Option<OutputId>, AggregateShape)>,
    dead_letters: OutputId,
    /// The alert topic's id, and how alert events are written.
    alerts: (Option<OutputId>, AlertShape),
    datasets: Vec<Dataset>,
}

impl Routes {
    fn new(cfg: &LiveJobConfig, partitions_of: impl Fn(&str) -> OutputTopic) -> Self {
        let mut topics = Vec::new();
        let mut aggregations = Vec::new();
        let mut datasets = Vec::new();
        for (i, (agg, out)) in cfg
            .dataflow
            .aggregations
            .iter()
            .zip(&cfg.outputs)
            .enumerate()
        {
            let shape = AggregateShape::of(agg).with_avro(out.avro.clone());
            let id = out.topic.as_deref().map(|t| {
                topics.push(partitions_of(t));
                OutputId(topics.len() as u16 - 1)
            });
            if let Some(name) = &out.parquet {
                datasets.push(Dataset {
                    name: name.clone(),
                    aggregation: i as u16,
                    shape: DatasetShape::Windows(shape.clone()),
                    topic: out.topic.clone(),
                });
            }
            aggregations.push((id, shape));
        }
        let alert_shape = AlertShape::of(&cfg.dataflow.alerts, &cfg.dataflow.aggregations)
            .with_avro(cfg.alert_output.as_ref().and_then(|o| o.avro.clone()));
        let mut alert_topic = None;
        if let Some(out) = &cfg.alert_output {
            alert_topic = out.topic.as_deref().map(|t| {
                topics.push(partitions_of(t));
                OutputId(topics.len() as u16 - 1)
            });
            if let Some(name) = &out.parquet {
                datasets.push(Dataset {
                    name: name.clone(),
                    aggregation: 0,
                    shape: DatasetShape::Alerts(alert_shape.clone()),
                    // Alert rows are not parsed back from their topic (yet).
                    topic: None,
                });
            }
        }
        topics.push(partitions_of(&cfg.dlq_topic));
        Self {
            dead_letters: OutputId(topics.len() as u16 - 1),
            topics,
            aggregations,
            alerts: (alert_topic, alert_shape),
            datasets,
        }
    }

    fn partitions(&self, id: OutputId) -> usize {
        self.topics
            .get(usize::from(id.0))
            .map_or(1, |t| t.partitions)
    }
}

/// A prepared job: topics exist, recovery is planned; [`LiveJob::run`] runs it.
#[derive(Debug)]
pub struct LiveJob {
    cfg: LiveJobConfig,
    routes: Routes,
    source: KafkaSourceConfig,
    controls: Controls,
    resume: Option<Arc<Resume>>,
    report: StartReport,
    /// Held for the whole run: one live instance per state directory.
    _lock: Option<File>,
}

impl LiveJob {
    /// Creates missing output topics and, committing, plans recovery and
    /// finishes publishing what the last commits left.
    pub async fn prepare(
        client: &Client,
        cfg: LiveJobConfig,
        controls: Controls,
    ) -> Result<Self, RuntimeError> {
        let listed = topics::list_topics(client).await?;
        let input_partitions = listed
            .iter()
            .find(|t| t.name == cfg.input)
            .map(|t| t.partitions.len() as i32)
            .ok_or_else(|| RuntimeError::NoInput(cfg.input.clone()))?;
        if cfg.alert_output.is_some() && matches!(cfg.delivery, Delivery::AtLeastOnce { .. }) {
            return Err(RuntimeError::AlertsNeedCommits);
        }
        let missing: Vec<TopicSpec> = cfg
            .outputs
            .iter()
            .chain(&cfg.alert_output)
            .filter_map(|o| o.topic.as_ref())
            .chain([&cfg.dlq_topic])
            .filter(|name| !listed.iter().any(|t| &&t.name == name))
            .map(|name| TopicSpec::new(name.as_str(), input_partitions))
            .collect();
        if !missing.is_empty() {
            topics::create_topics(client, &cfg.bootstrap, &missing).await?;
        }
        // Topics created above have the input's partition count.
        let partitions_of = |name: &str| OutputTopic {
            name: name.to_owned(),
            partitions: listed
                .iter()
                .find(|t| t.name == name)
                .map_or(input_partitions as usize, |t| t.partitions.len()),
        };
        let mut source = KafkaSourceConfig::new(cfg.bootstrap.clone(), cfg.input.clone());
        source.epochs = cfg.epochs;
        source.max_epoch_records = cfg.max_epoch_records;
        source.max_buffered_bytes = cfg.fetch_buffer_bytes;
        source.until_end = cfg.until_end;
        source.drain = Arc::clone(&controls.drain);
        source.idle_timeout = cfg.idle_timeout;
        let routes = Routes::new(&cfg, partitions_of);
        let (resume, lock, mut report) = match &cfg.delivery {
            Delivery::ExactlyOnce(c) => {
                let (mut resume, lock, report) = prepare_commits(client, &cfg, c, &routes).await?;
                source.start_epoch = resume.state_start;
                source.replay = std::mem::take(&mut resume.replay);
                (Some(Arc::new(resume)), Some(lock), report)
            }
            Delivery::AtLeastOnce { .. } => (
                None,
                None,
                StartReport::Uncommitted {
                    offsets: BTreeMap::new(),
                },
            ),
        };
        let offsets = match &mut report {
            StartReport::Fresh { offsets, .. }
            | StartReport::Resumed { offsets, .. }
            | StartReport::Uncommitted { offsets } => offsets,
        };
        if cfg.start_at == StartAt::Latest && offsets.is_empty() {
            *offsets = topics::describe_topic(client, &cfg.input)
                .await?
                .into_iter()
                .map(|p| (p.partition, p.high_watermark))
                .collect();
        }
        source.start_offsets = offsets.clone();
        Ok(Self {
            cfg,
            routes,
            source,
            controls,
            resume,
            report,
            _lock: lock,
        })
    }

    pub fn report(&self) -> &StartReport {
        &self.report
    }

    /// The generation this run commits under (exactly once only).
    pub fn generation(&self) -> Option<u64> {
        self.resume.as_ref().map(|r| r.cfg.generation)
    }

    /// Where Parquet files go, if anywhere.
    pub fn parquet_dir(&self) -> Option<&Path> {
        match &self.cfg.delivery {
            Delivery::ExactlyOnce(c) => Some(&c.parquet_dir),
            Delivery::AtLeastOnce { parquet_dir } => parquet_dir.as_deref(),
        }
    }

    /// Runs the dataflow to its end on this thread (blocking): the input's
    /// end, a drain, a stop, or the first error of any source or sink.
    pub fn run(self) -> Result<(), RuntimeError> {
        let timely_config = self
            .cfg
            .parallelism
            .timely_config()
            .map_err(|e| RuntimeError::Timely(e.to_string()))?;
        let source_err: FailureSlot = Arc::default();
        let sink_err: FailureSlot = Arc::default();
        let plan = Arc::new(WorkerPlan {
            cfg: self.cfg.clone(),
            routes: self.routes.clone(),
            source: self.source.clone(),
            controls: self.controls.clone(),
            resume: self.resume.clone(),
            source_err: Arc::clone(&source_err),
            sink_err: Arc::clone(&sink_err),
        });
        let guards = timely::execute(timely_config, move |worker| {
            worker.dataflow::<Epoch, _, _>(|scope| plan.build(scope));
            while worker.step_or_park(Some(Duration::from_millis(50))) {}
        })
        .map_err(|e| RuntimeError::Timely(format!("starting timely: {e}")))?;
        for joined in guards.join() {
            joined.map_err(|e| RuntimeError::Timely(format!("a worker failed: {e}")))?;
        }
        let failure = [&source_err, &sink_err]
            .into_iter()
            .find_map(|slot| slot.lock().ok().and_then(|mut s| s.take()));
        if let Some(e) = failure {
            return Err(RuntimeError::Failed(e));
        }
        if self.controls.stop.load(Relaxed) && !self.controls.interrupted.load(Relaxed) {
            return Err(RuntimeError::StoppedElsewhere);
        }
        Ok(())
    }
}

/// Locks the state directory, plans recovery and finishes publishing.
async fn prepare_commits(
    client: &Client,
    cfg: &LiveJobConfig,
    c: &Committing,
    routes: &Routes,
) -> Result<(Resume, File, StartReport), RuntimeError> {
    let spec = topics::default_topics(1, 1)
        .into_iter()
        .find(|t| t.name == topics::PROGRESS)
        .map(|t| TopicSpec {
            name: c.progress_topic.clone(),
            ..t
        })
        .unwrap_or_else(|| TopicSpec::new(c.progress_topic.as_str(), 1));
    if topics::partitions_of(client, &c.progress_topic)
        .await?
        .is_none()
    {
        topics::create_topics(client, &cfg.bootstrap, &[spec]).await?;
    }
    crate::job_shape::check(&c.state_dir, cfg)?;
    let log = ProgressLog::open(client, &c.progress_topic)
        .await
        .map_err(SinkError::from)?;
    let mut eo = ExactlyOnceConfig {
        job: cfg.name.clone(),
        generation: 0,
        state_dir: c.state_dir.clone(),
        parquet_dir: c.parquet_dir.clone(),
        bootstrap: cfg.bootstrap.clone(),
        progress_topic: c.progress_topic.clone(),
        outputs: routes.topics.clone(),
        datasets: routes.datasets.clone(),
        roll: c.roll,
        closing: cfg.dataflow.window_rules(),
        fold_bytes: c.fold_bytes,
        checkpoint_every: c.checkpoint_every,
        depth: c.depth,
        max_unpublished_bytes: c.max_unpublished_bytes,
        fresh: false,
    };
    let p = &cfg.parallelism;
    let workers = (p.workers * p.processes) as u32;
    let start: RunStart = recovery::prepare(&log, &mut eo, workers, p.process).await?;
    let report = match start.history.last() {
        None => StartReport::Fresh {
            generation: eo.generation,
            offsets: start.offsets.clone(),
        },
        Some((from, _)) => StartReport::Resumed {
            after: from.epoch,
            generation: eo.generation,
            offsets: start.offsets.clone(),
            skipped: start.skipped.clone(),
            replayed: {
                let mut skipped = start.replay.iter().filter(|c| c.epoch >= start.epoch);
                let first = skipped.next().map(|c| c.epoch);
                first.map(|f| (f, skipped.next_back().map_or(f, |c| c.epoch)))
            },
            checkpoint: (start.state_epoch < start.epoch).then(|| start.state_epoch - 1),
            rescaled_from: (from.workers != workers).then_some(from.workers),
            discarded: start.discarded,
        },
    };
    let resume = Resume {
        cfg: Arc::new(eo),
        start: start.epoch,
        state_start: start.state_epoch,
        snapshots: start.snapshots,
        pending: start.pending,
        history: start.history,
        held: Arc::default(),
        max_unpublished_bytes: c.max_unpublished_bytes,
        replay: start.replay,
    };
    Ok((resume, start.lock, report))
}

/// What every worker builds its dataflow from.
struct WorkerPlan {
    cfg: LiveJobConfig,
    routes: Routes,
    source: KafkaSourceConfig,
    controls: Controls,
    resume: Option<Arc<Resume>>,
    source_err: FailureSlot,
    sink_err: FailureSlot,
}

impl WorkerPlan {
    fn build(&self, scope: timely::dataflow::Scope<'_, Epoch>) {
        let Controls { metrics, stop, .. } = &self.controls;
        let gate = job::Backpressure::new(Arc::clone(metrics));
        let source = kafka_source(
            scope,
            self.source.clone(),
            Arc::clone(&self.source_err),
            Arc::clone(stop),
            gate.clone(),
            Arc::clone(metrics),
        );
        let captures: Captures = Rc::default();
        let index = scope.index();
        let hooks = match &self.resume {
            Some(r) => StateHooks {
                start: r.state_start,
                restore: r.snapshots.get(index).cloned(),
                capture: Some(Rc::clone(&captures)),
                plan: CapturePlan {
                    first: r.start,
                    checkpoint_every: r.cfg.checkpoint_every,
                },
            },
            None => StateHooks::default(),
        };
        let streams = job::build_with_state(
            source,
            self.cfg.dataflow.clone(),
            Arc::clone(metrics),
            Arc::clone(stop),
            &gate,
            hooks,
        );
        let Some(r) = &self.resume else {
            self.at_least_once(streams);
            return;
        };
        let (error, stop_agg) = (Arc::clone(&self.sink_err), Arc::clone(stop));
        let routes = self.routes.clone();
        let aggregates = with_epoch(
            streams.results.clone(),
            "EncodeAggregates",
            r.start,
            move |w, epoch| {
                let (id, shape) = routes.aggregations.get(usize::from(w.aggregation))?;
                let id = (*id)?;
                // Encoding an aggregate fails only on a bug; the job stops with it.
                aggregate_outgoing(w, epoch, id, routes.partitions(id), shape)
                    .map_err(|e| record_failure(&error, &stop_agg, e.to_string()))
                    .ok()
            },
        );
        let source_topic = self.cfg.input.clone();
        let (dlq, dlq_partitions) = (
            self.routes.dead_letters,
            self.routes.partitions(self.routes.dead_letters),
        );
        let dead = with_epoch(streams.dead, "EncodeDeadLetters", r.start, move |d, _| {
            Some(dead_outgoing(d.clone(), &source_topic, dlq, dlq_partitions))
        });
        let (error, stop_alert) = (Arc::clone(&self.sink_err), Arc::clone(stop));
        let routes = self.routes.clone();
        let alerts = with_epoch(
            streams.alerts.clone(),
            "EncodeAlerts",
            r.start,
            move |e, epoch| {
                let (id, shape) = &routes.alerts;
                let id = (*id)?;
                alert_outgoing(e, epoch, id, routes.partitions(id), shape)
                    .map_err(|err| record_failure(&error, &stop_alert, err.to_string()))
                    .ok()
            },
        );
        let finals = self
            .routes
            .datasets
            .iter()
            .map(|d| match d.shape {
                DatasetShape::Windows(_) => {
                    let aggregation = d.aggregation;
                    with_epoch(
                        streams.results.clone(),
                        "FinalRows",
                        r.start,
                        move |w, epoch| {
                            (w.is_final && w.aggregation == aggregation)
                                .then(|| Row::Window(AggregateRow::of(w, epoch)))
                        },
                    )
                }
                DatasetShape::Alerts(_) => with_epoch(
                    streams.alerts.clone(),
                    "AlertRows",
                    r.start,
                    move |e, epoch| {
                        Some(Row::Alert(AlertRow {
                            event: e.clone(),
                            epoch,
                        }))
                    },
                ),
            })
            .collect();
        let acks = commit_outputs(
            aggregates.concat(dead).concat(alerts),
            finals,
            captures,
            WorkerSinks {
                cfg: Arc::clone(&r.cfg),
                start: r.start,
                history: r.history.clone(),
                restored: r.pending.get(index).cloned().unwrap_or_default(),
                held: Arc::clone(&r.held),
                metrics: Arc::clone(metrics),
                error: Arc::clone(&self.sink_err),
                stop: Arc::clone(stop),
            },
        );
        gate.also_wait_for(acks);
        gate.also_bound(ByteBound {
            held: r.held.bytes(),
            limit: r.max_unpublished_bytes,
        });
    }

    fn at_least_once(&self, streams: job::JobStreams<'_>) {
        let Controls { stop, .. } = &self.controls;
        let sink = |output: OutputId, shape: Option<AggregateShape>| {
            let topic = &self.routes.topics[usize::from(output.0)];
            KafkaSinkConfig {
                bootstrap: self.cfg.bootstrap.clone(),
                topic: topic.name.clone(),
                partitions: topic.partitions,
                source_topic: self.cfg.input.clone(),
                job: self.cfg.name.clone(),
                shape,
            }
        };
        if let Delivery::AtLeastOnce {
            parquet_dir: Some(dir),
        } = &self.cfg.delivery
        {
            for d in &self.routes.datasets {
                let aggregation = d.aggregation;
                let rows = with_epoch(streams.results.clone(), "FinalRows", 0, move |w, epoch| {
                    (w.is_final && w.aggregation == aggregation)
                        .then(|| Row::Window(AggregateRow::of(w, epoch)))
                });
                write_dataset(
                    rows,
                    dir.clone(),
                    d.clone(),
                    Arc::clone(&self.sink_err),
                    Arc::clone(stop),
                );
            }
        }
        for (i, (id, shape)) in self.routes.aggregations.iter().enumerate() {
            let Some(id) = id else { continue };
            let mine = streams
                .results
                .clone()
                .filter(move |r| usize::from(r.aggregation) == i);
            publish_aggregates(
                mine,
                sink(*id, Some(shape.clone())),
                Arc::clone(&self.sink_err),
                Arc::clone(stop),
            );
        }
        publish_dead_letters(
            streams.dead,
            sink(self.routes.dead_letters, None),
            Arc::clone(&self.sink_err),
            Arc::clone(stop),
        );
    }
}
