//! Everything that leaves the dataflow.
//!
//! ```text
//!   aggregates, dead letters ──records──▶ Kafka records (keys, JSON or Avro values, headers)
//!   exactly once: stage ▶ commit (`iot.progress`) ▶ publish (Kafka, Parquet) ▶ recover
//! ```
//!
//! The commit protocol's pure core is `protocol` (records, recovery plan)
//! and `committer` (the order of its steps, sans I/O); `exactly_once` drives
//! it from the dataflow's frontiers with its I/O in `parquet`, `progress`
//! and the state directory; `failpoint` holds its crash sites; `error` the
//! typed errors.

pub mod alert_shape;
pub mod avro_values;
pub mod committed;
pub mod committer;
pub mod durable;
pub mod error;
pub mod exactly_once;
pub mod failpoint;
pub mod kafka;
pub mod parquet;
pub mod progress;
pub mod protocol;
pub mod records;
pub mod shape;

pub use avro_values::AvroValues;
pub use error::{Fault, SinkError};
pub use records::{AggregateRecord, DeadLetter};
pub use shape::{AggregateRow, AggregateShape};
