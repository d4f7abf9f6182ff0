//! The live job, assembled: what `iotflow run`, the demo and the tests start.
//!
//! ```text
//!   LiveJobConfig ──prepare──▶ topics created, recovery planned (exactly once) ──▶ LiveJob
//!   LiveJob::run: timely workers, each:
//!     kafka_source ─▶ dataflow (Classify, Assign, Emit) ─▶ exactly-once sinks (Stage ▶ Commit ▶ Publish)
//!                         ▲ gate: epochs in flight, unpublished bytes ◀──────────┘
//!                                                        or at-least-once publishers (+ Parquet)
//!   errors of any source or sink, or a stop elsewhere ─▶ RuntimeError
//! ```

pub mod broker_watch;
mod job_shape;
mod live;
pub mod peers;
mod summary;

pub use live::{
    AggregationOutput, Committing, Controls, Delivery, LiveJob, LiveJobConfig, RuntimeError,
    StartAt, StartReport,
};
pub use summary::RunSummary;
