//! The job these flags describe: the job file (or the default job) with the
//! flags given explicitly on top, and the `LiveJobConfig` it becomes —
//! directories, delivery, parallelism, each output's encoding (an Avro
//! topic's schema registered here, before the job starts).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use iotflow_dataflow::ParseLimits;
use iotflow_dataflow::job::{EmitMode, JobConfig};
use iotflow_dataflow::kafka::EpochMode;
use iotflow_dataflow::runner::Parallelism;
use iotflow_jobfile::{DefaultJob, JobPlan, OutputFormat, WatermarkPlan, WindowKind};
use iotflow_redpanda::{Brokers, topics};
use iotflow_runtime::{AggregationOutput, Committing, Delivery, LiveJobConfig};
use iotflow_schema::{Decoder, Registry};
use iotflow_sink::AvroValues;
use iotflow_sink::alert_shape::AlertShape;
use iotflow_sink::exactly_once::Roll;

use super::{EmitArg, RunArgs, StartAt};
use crate::registry_args;

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

/// A file-system-safe job name for default directories.
fn dir_name(job: &str) -> String {
    job.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl RunArgs {
    /// The job: the job file's with the flags given explicitly on top, or the
    /// default job the flags describe.
    pub(super) fn plan(&self) -> Result<JobPlan> {
        let ms = |d: Option<Duration>| d.map(millis);
        let mut plan = match &self.job_file {
            Some(path) => {
                let given = [
                    ("--output-topic", self.output_topic.is_some()),
                    ("--window", self.window.is_some()),
                    ("--slide", self.slide.is_some()),
                    ("--emit", self.emit.is_some()),
                ];
                if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
                    bail!(
                        "{flag} describes the default job; with --job-file each [[aggregation]] states its own"
                    );
                }
                iotflow_jobfile::load(path)?
            }
            None => {
                let input = self
                    .input
                    .clone()
                    .unwrap_or_else(|| topics::READINGS.to_owned());
                let output = self
                    .output_topic
                    .clone()
                    .unwrap_or_else(|| topics::AGGREGATES.to_owned());
                let size = ms(self.window).unwrap_or(10_000);
                JobPlan::default_job(DefaultJob {
                    name: format!("{input}-to-{output}"),
                    input_topic: input,
                    output_topic: output,
                    dead_letter_topic: topics::DLQ.to_owned(),
                    window: WindowKind::Hopping {
                        size_ms: size,
                        slide_ms: ms(self.slide).unwrap_or(size),
                    },
                    watermark: WatermarkPlan {
                        max_out_of_order_ms: iotflow_jobfile::DEFAULT_MAX_OUT_OF_ORDER_MS,
                        lateness_ms: 0,
                        idle_timeout_ms: iotflow_jobfile::DEFAULT_IDLE_TIMEOUT_MS,
                    },
                    emit: match self.emit {
                        Some(EmitArg::Updates) => EmitMode::Updates,
                        _ => EmitMode::Final,
                    },
                })
            }
        };
        if let Some(input) = &self.input {
            plan.input.topic = input.clone();
        }
        if let Some(format) = self.input_format {
            plan.input.format = format;
        }
        if let Some(format) = self.output_format {
            for a in &mut plan.aggregations {
                a.format = format;
            }
            plan.alert_outputs.format = format;
        }
        if let Some(dlq) = &self.dlq {
            plan.dead_letter_topic = dlq.clone();
        }
        if let Some(name) = &self.job {
            plan.name = name.clone();
        }
        let wm = &mut plan.watermark;
        wm.max_out_of_order_ms = ms(self.max_out_of_order).unwrap_or(wm.max_out_of_order_ms);
        wm.lateness_ms = ms(self.lateness).unwrap_or(wm.lateness_ms);
        wm.idle_timeout_ms = ms(self.idle_timeout).unwrap_or(wm.idle_timeout_ms);
        Ok(plan)
    }

    /// The job these flags (and the job file) describe.
    pub(super) fn job_config(
        &self,
        plan: &JobPlan,
        bootstrap: Brokers,
        registry: Option<&Registry>,
        decoder: Option<Arc<Decoder>>,
    ) -> Result<LiveJobConfig> {
        let under = |root: &str| PathBuf::from(root).join(dir_name(&plan.name));
        let delivery = if self.at_least_once {
            Delivery::AtLeastOnce {
                parquet_dir: self.parquet_dir.clone(),
            }
        } else {
            Delivery::ExactlyOnce(Committing {
                state_dir: self
                    .state_dir
                    .clone()
                    .unwrap_or_else(|| under("data/state")),
                parquet_dir: self
                    .parquet_dir
                    .clone()
                    .unwrap_or_else(|| under("data/parquet")),
                progress_topic: self.progress_topic.clone(),
                roll: Roll {
                    rows: self.parquet_roll_rows,
                    bytes: self.parquet_roll_bytes,
                    epochs: self.parquet_roll_epochs,
                },
                fold_bytes: self.snapshot_fold_bytes,
                checkpoint_every: std::num::NonZeroU64::new(self.checkpoint_every),
                depth: self.commit_depth,
                max_unpublished_bytes: self.max_unpublished_bytes,
            })
        };
        let idle = Duration::from_millis(plan.watermark.idle_timeout_ms.max(0) as u64);
        let dataflow = dataflow(plan, decoder)?;
        Ok(LiveJobConfig {
            bootstrap,
            input: plan.input.topic.clone(),
            outputs: outputs(plan, &dataflow, registry)?,
            alert_output: alert_output(plan, registry)?,
            dlq_topic: plan.dead_letter_topic.clone(),
            name: plan.name.clone(),
            dataflow,
            epochs: match self.epoch_records {
                Some(n) if n > 0 => EpochMode::Records(n),
                _ => EpochMode::Time(self.epoch_interval),
            },
            max_epoch_records: self.epoch_max_records,
            fetch_buffer_bytes: self.fetch_buffer_bytes,
            until_end: self.until_end,
            idle_timeout: idle,
            start_at: match self.start_at {
                StartAt::Earliest => iotflow_runtime::StartAt::Earliest,
                StartAt::Latest => iotflow_runtime::StartAt::Latest,
            },
            parallelism: Parallelism {
                workers: self.workers,
                processes: self.processes,
                process: self.process,
                hosts: match &self.hostfile {
                    Some(f) => read_hostfile(f)?,
                    None if self.processes > 1 => bail!("--processes > 1 needs --hostfile"),
                    None => Vec::new(),
                },
            },
            delivery,
        })
    }
}

/// Each aggregation's outputs; an Avro topic's schema registered under `<topic>-value`.
fn outputs(
    plan: &JobPlan,
    dataflow: &JobConfig,
    registry: Option<&Registry>,
) -> Result<Vec<AggregationOutput>> {
    let mut outputs = Vec::with_capacity(plan.aggregations.len());
    for (a, agg) in plan.aggregations.iter().zip(dataflow.aggregations.iter()) {
        let avro = match (&a.topic, a.format) {
            (Some(topic), OutputFormat::Avro) => {
                let registry =
                    avro_registry(registry, &format!("aggregation {} writes Avro", a.name))?;
                let schema = iotflow_sink::AggregateShape::of(agg).avro_schema();
                Some(avro_values(registry, topic, &schema)?)
            }
            _ => None,
        };
        outputs.push(AggregationOutput {
            topic: a.topic.clone(),
            parquet: a.parquet.clone(),
            avro,
        });
    }
    Ok(outputs)
}

/// The alert events' outputs, when the job has rules; an Avro topic's
/// schema registered under `<topic>-value`.
fn alert_output(plan: &JobPlan, registry: Option<&Registry>) -> Result<Option<AggregationOutput>> {
    if plan.alerts.is_empty() {
        return Ok(None);
    }
    let o = &plan.alert_outputs;
    let avro = match o.format {
        OutputFormat::Avro => {
            let registry = avro_registry(registry, "alert events in Avro")?;
            Some(avro_values(registry, &o.topic, &AlertShape::avro_schema())?)
        }
        OutputFormat::Json => None,
    };
    Ok(Some(AggregationOutput {
        topic: Some(o.topic.clone()),
        parquet: Some(o.parquet.clone()),
        avro,
    }))
}

/// The registry an Avro output (`what` writes Avro) registers its schema
/// in, or why there is none.
fn avro_registry<'r>(registry: Option<&'r Registry>, what: &str) -> Result<&'r Registry> {
    registry.ok_or_else(|| {
        anyhow::anyhow!("{what}: add --schema-registry URL (or schema_registry in [input])")
    })
}

/// `schema` registered under `<topic>-value`: the values' encoding.
fn avro_values(registry: &Registry, topic: &str, schema: &str) -> Result<AvroValues> {
    let (id, schema) = registry_args::register_avro(registry, &format!("{topic}-value"), schema)?;
    Ok(AvroValues {
        id,
        schema: Arc::new(schema),
    })
}

/// The dataflow's configuration, with the decoder of a registry-encoded input.
fn dataflow(plan: &JobPlan, decoder: Option<Arc<Decoder>>) -> Result<JobConfig> {
    let mut cfg = JobConfig::from_plan(plan, ParseLimits::default())?;
    if let Some(decoder) = decoder {
        cfg.input = Arc::new(cfg.input.as_ref().clone().decoded_by(decoder));
    }
    Ok(cfg)
}

/// Refuses Avro outputs without a registry, before any broker is reached.
pub(super) fn check_registry(plan: &JobPlan, registry: Option<&Registry>) -> Result<()> {
    if let Some(a) = plan
        .aggregations
        .iter()
        .find(|a| a.topic.is_some() && a.format == OutputFormat::Avro)
    {
        avro_registry(registry, &format!("aggregation {} writes Avro", a.name))?;
    }
    if !plan.alerts.is_empty() && plan.alert_outputs.format == OutputFormat::Avro {
        avro_registry(registry, "alert events in Avro")?;
    }
    Ok(())
}
