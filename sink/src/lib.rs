//! Everything that leaves the dataflow.
//!
//! ```text
//!   aggregates, dead letters ──records──▶ Kafka records (keys, JSON values, headers)
//!   [issue 4] stage ▶ commit (`iot.progress`) ▶ publish (Kafka, Parquet) ▶ recover
//! ```
//!
//! Today: the output record formats and the commit protocol's pure core
//! (`protocol`); its Kafka, Parquet and state-dir adapters land here next.

pub mod exactly_once;
pub mod kafka;
pub mod parquet;
pub mod progress;
pub mod protocol;
pub mod records;

pub use records::{AggregateRecord, DeadLetter};
