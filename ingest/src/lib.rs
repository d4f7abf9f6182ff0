//! Getting readings into the broker.
//!
//! ```text
//!   Simulator (pure, seeded iterator of SimRecord)
//!       ──▶ producer::produce (murmur2 partitioning, batches, bounded in-flight, retries)
//!       ──▶ rskafka ──▶ `iot.readings`
//! ```

pub mod encoding;
pub mod episodes;
pub mod producer;
mod rng;
pub mod simulator;

pub use producer::{Counters, Pace, ProduceError, ProduceSummary, ProducerConfig, produce};
pub use simulator::{BadKind, Format, MetricSpec, RecordClass, SimConfig, SimRecord, Simulator};
