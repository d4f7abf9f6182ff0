//! The iotflow dataflow: from raw Kafka records to windowed aggregates.
//!
//! ```text
//!   record bytes ──reading::parse_record──▶ Reading* | Reject(reason → DLQ)
//!   audit: the same input counted naively in batch (read-back checks, `iotflow scan`)
//! ```
//!
//! Pure. Windows, watermarks and the Timely/Differential operators come next.

pub mod audit;
pub mod reading;

pub use audit::{Audit, AuditCounts};
pub use reading::{ParseLimits, Reading, RejectReason, parse_record};
