//! The iotflow dataflow: from raw Kafka records to windowed aggregates.
//!
//! ```text
//!   record bytes ──reading::parse_record──▶ Reading* | Reject(reason → DLQ)
//!   audit: the same input counted naively in batch (read-back checks, `iotflow scan`)
//!   window::WindowSpec ──▶ which windows a reading belongs to (tumbling, hopping)
//!   watermark::Watermarks ──▶ how far event time has certainly progressed
//!   aggregate::Stats ──▶ one window's statistics, bit-identical in any order
//! ```
//!
//! All pure. The Timely/Differential operators that wire them together come next.

pub mod aggregate;
pub mod audit;
pub mod reading;
pub mod watermark;
pub mod window;

pub use aggregate::Stats;
pub use audit::{Audit, AuditCounts};
pub use reading::{ParseLimits, Reading, RejectReason, parse_record};
pub use watermark::{WatermarkConfig, Watermarks};
pub use window::{WindowError, WindowSpec};
