//! The job file as TOML states it, before validation: every key known
//! (`deny_unknown_fields`), every value with its span for line-precise errors.

use serde::Deserialize;
use toml::Spanned;

pub(crate) type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJob {
    pub name: Option<S<String>>,
    pub input: Option<S<RawInput>>,
    pub watermark: Option<RawWatermark>,
    pub output: Option<RawOutput>,
    pub kafka: Option<RawKafka>,
    #[serde(default)]
    pub aggregation: Vec<S<RawAggregation>>,
    #[serde(default)]
    pub alert: Vec<S<RawAlert>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInput {
    pub topic: Option<S<String>>,
    pub format: Option<S<String>>,
    pub schema_registry: Option<S<String>>,
    pub schema_registry_username: Option<S<String>>,
    pub schema_registry_password_env: Option<S<String>>,
    /// Refused (no passwords in job files), read only to say so.
    pub schema_registry_password: Option<S<String>>,
    pub preset: Option<S<String>>,
    pub device: Option<S<String>>,
    pub time: Option<S<String>>,
    pub time_unit: Option<S<String>>,
    pub seq: Option<S<String>>,
    pub dimensions: Option<Vec<S<String>>>,
    pub metrics: Option<S<Vec<S<String>>>>,
    pub metric_field: Option<S<String>>,
    pub value_field: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWatermark {
    pub max_out_of_order: Option<S<String>>,
    pub lateness: Option<S<String>>,
    pub idle_timeout: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutput {
    pub dead_letter_topic: Option<S<String>>,
    pub alerts_topic: Option<S<String>>,
    pub alerts_format: Option<S<String>>,
    pub alerts_parquet: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKafka {
    pub security_protocol: Option<S<String>>,
    pub ssl_ca_location: Option<S<String>>,
    pub ssl_certificate_location: Option<S<String>>,
    pub ssl_key_location: Option<S<String>>,
    pub sasl_mechanism: Option<S<String>>,
    pub sasl_username: Option<S<String>>,
    pub sasl_password_env: Option<S<String>>,
    /// Refused with a hint: passwords do not belong in job files.
    pub sasl_password: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAggregation {
    pub name: S<String>,
    pub group_by: Option<S<Vec<S<String>>>>,
    pub window: S<String>,
    pub measures: Option<S<Vec<S<String>>>>,
    pub percentiles: Option<S<String>>,
    #[serde(rename = "where")]
    pub filter: Option<S<String>>,
    pub emit: Option<S<String>>,
    pub topic: Option<S<String>>,
    pub format: Option<S<String>>,
    pub parquet: Option<S<String>>,
}

/// A number as TOML writes it: `3` or `3.5`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub(crate) enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    pub fn get(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAlert {
    pub name: S<String>,
    pub on: S<String>,
    pub severity: Option<S<String>>,
    pub when: Option<S<String>>,
    pub clear: Option<S<String>>,
    #[serde(rename = "for")]
    pub streak: Option<S<i64>>,
    pub change_of: Option<S<String>>,
    pub anomaly_of: Option<S<String>>,
    pub deviations: Option<S<Number>>,
    pub clear_deviations: Option<S<Number>>,
    pub alpha: Option<S<Number>>,
    pub warmup: Option<S<i64>>,
    pub absent_for: Option<S<String>>,
    pub bad_share: Option<S<Number>>,
    pub clear_share: Option<S<Number>>,
    pub min_records: Option<S<i64>>,
}
