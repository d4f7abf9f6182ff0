//! iotflow job files: the TOML in which a user states their own job (input
//! mapping, dimensions, aggregations with their keys, windows, measures,
//! filters and outputs), validated into a [`JobPlan`].
//!
//! ```text
//!   job.toml ──toml (spans)──▶ raw ──validate──▶ JobPlan ──▶ `iotflow check` prints it
//!                                      │                   └▶ `iotflow run` builds it
//!                                      └─ refused: file:line:column, message, hint
//! ```
//!
//! Today's flags describe the default job ([`JobPlan::default_job`]); a job
//! file describes any other. Pure: no I/O beyond reading the file.

pub mod alert;
mod describe;
mod error;
pub mod expr;
pub mod kafka;
pub mod plan;
mod raw;
pub mod registry;
mod validate;

use std::path::Path;

pub use alert::*;
pub use error::{JobFileError, Located, ReadError};
pub use kafka::KafkaSettings;
pub use plan::*;
pub use registry::{InputFormat, OutputFormat, RegistrySettings};
pub use validate::{
    DEFAULT_DEAD_LETTER_TOPIC, DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_INPUT_TOPIC,
    DEFAULT_MAX_OUT_OF_ORDER_MS, MAX_HOLD_MS,
};

use crate::error::Problem;

/// Reads and validates the job file at `path`.
pub fn load(path: &Path) -> Result<JobPlan, JobFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| JobFileError::Read {
        path: path.to_owned(),
        source: ReadError(e.to_string()),
    })?;
    parse(path, &text)
}

/// Validates `text`, the job file at `path` (named in errors).
pub fn parse(path: &Path, text: &str) -> Result<JobPlan, JobFileError> {
    let raw: raw::RawJob = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        Problem::new(span, e.message().trim_end().to_owned()).locate(path, text)
    })?;
    validate::job(raw, 0..text.len()).map_err(|p| p.locate(path, text))
}

/// What today's flags of `iotflow run` say about the job.
#[derive(Debug, Clone)]
pub struct DefaultJob {
    pub name: String,
    pub input_topic: String,
    pub output_topic: String,
    pub dead_letter_topic: String,
    pub window: WindowKind,
    pub watermark: WatermarkPlan,
    pub emit: EmitMode,
}

/// The default job's one aggregation: its name, and its dataset's.
pub const DEFAULT_AGGREGATION: &str = "aggregates";

impl JobPlan {
    /// The job today's flags describe: per (device, metric), today's
    /// measures, the three shapes recognised per record, dataset `aggregates`.
    pub fn default_job(d: DefaultJob) -> Self {
        JobPlan {
            name: d.name,
            kafka: KafkaSettings::default(),
            input: InputPlan {
                topic: d.input_topic,
                format: InputFormat::Json,
                registry: RegistrySettings::default(),
                mapping: Mapping::Preset(Preset::Auto),
                dimensions: Vec::new(),
            },
            watermark: d.watermark,
            dead_letter_topic: d.dead_letter_topic,
            aggregations: vec![AggregationPlan {
                name: DEFAULT_AGGREGATION.to_owned(),
                group_by: vec![GroupField::Device, GroupField::Metric],
                window: d.window,
                measures: DEFAULT_MEASURES.to_vec(),
                percentiles: PercentileMode::Exact,
                filter: None,
                emit: d.emit,
                topic: Some(d.output_topic),
                format: OutputFormat::Json,
                parquet: Some(DEFAULT_AGGREGATION.to_owned()),
            }],
            alerts: Vec::new(),
            alert_outputs: AlertOutputs {
                topic: DEFAULT_ALERTS_TOPIC.to_owned(),
                format: OutputFormat::Json,
                parquet: DEFAULT_ALERTS_DATASET.to_owned(),
            },
        }
    }
}
