//! Everything that leaves the dataflow.
//!
//! ```text
//!   aggregates, dead letters ──records──▶ Kafka records (keys, JSON values, headers)
//!   exactly once: stage ▶ commit (`iot.progress`) ▶ publish (Kafka, Parquet) ▶ recover
//! ```
//!
//! The commit protocol's pure core is `protocol`; `exactly_once` drives it
//! from the dataflow's frontiers with its I/O in `kafka`, `parquet`,
//! `progress` and the state directory; `failpoint` holds its crash sites.

pub mod committed;
pub mod exactly_once;
pub mod failpoint;
pub mod kafka;
pub mod parquet;
pub mod progress;
pub mod protocol;
pub mod records;

pub use records::{AggregateRecord, DeadLetter};
