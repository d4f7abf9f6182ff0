//! Everything that leaves the dataflow.
//!
//! ```text
//!   aggregates, dead letters ──records──▶ Kafka records (keys, JSON values, headers)
//!   [issue 4] stage ▶ commit (`iot.progress`) ▶ publish (Kafka, Parquet) ▶ recover
//! ```
//!
//! Today: the output record formats. The exactly-once commit protocol (a pure
//! state machine plus Kafka, Parquet and state-dir adapters) lands here next.

pub mod kafka;
pub mod records;

pub use records::{AggregateRecord, DeadLetter};
