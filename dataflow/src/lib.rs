//! The iotflow dataflow: from raw Kafka records to windowed aggregates.
//!
//! ```text
//!   record bytes ──reading::parse_record──▶ Reading* | Reject(reason → DLQ)
//!   audit: the same input counted naively in batch (read-back checks, `iotflow scan`)
//!   window::WindowSpec ──▶ which windows a reading belongs to (tumbling, hopping)
//!   watermark::WatermarkCombiner ──▶ how far event time has certainly progressed
//!   aggregate::Stats ──▶ one window's statistics, bit-identical in any order
//!   digest::Digest ──▶ an approx aggregation's window: sketch bins, exact sums, extremes
//! ```
//!
//! All pure. The Timely/Differential operators that wire them together come next.

pub mod aggregate;
pub mod aggregation;
pub mod alert;
pub mod alert_board;
pub mod audit;
pub mod digest;
pub mod job;
pub mod kafka;
pub mod metrics;
pub mod operators;
pub mod parquet_file;
pub mod reading;
pub mod replay;
pub mod runner;
pub mod sealed;
pub mod session;
pub mod snapshot;
pub mod source;
pub mod watermark;
pub mod window;

pub use aggregate::{Measured, Stats};
pub use aggregation::Aggregation;
pub use audit::{Audit, AuditCounts};
pub use job::{EmitMode, JobConfig, RawRecord, WindowResult};
pub use metrics::JobMetrics;
pub use reading::{ParseLimits, Reading, RejectReason, parse_record};
pub use watermark::{ShareReport, ShareState, TopK, WatermarkCombiner, WatermarkConfig};
pub use window::{WindowError, WindowSpec};
