//! A batch audit of raw input: what the streaming job will see, counted naively.
//!
//! ```text
//!   records of one partition, in offset order
//!     ──parse_record──▶ rejected by reason
//!     ──(device, seq, metric) seen before?──▶ duplicate
//!     ──event time ≥ `behind_ms` behind the partition's max so far?──▶ behind
//!     ──▶ accepted readings
//! ```
//!
//! `behind` is not the job's `late` (that needs the job-wide watermark and the
//! window end); it flags records far older than their partition's frontier.

use std::collections::{BTreeMap, HashSet};

use compact_str::CompactString;
use serde::Serialize;

use crate::reading::{ParseLimits, Reading, RejectReason, parse_record};

/// Counts of an audit, over any number of partitions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditCounts {
    pub records: u64,
    /// Records that parsed and were neither duplicates nor behind.
    pub accepted_records: u64,
    pub accepted_readings: u64,
    pub duplicates: u64,
    pub behind: u64,
    pub rejected: BTreeMap<String, u64>,
    /// Accepted readings per metric.
    pub metrics: BTreeMap<String, u64>,
    pub devices: u64,
    pub min_ts_ms: Option<i64>,
    pub max_ts_ms: Option<i64>,
}

/// Audits partitions one at a time; duplicates are found across partitions
/// too (a device's records normally share one partition, but need not).
#[derive(Debug)]
pub struct Audit {
    limits: ParseLimits,
    behind_ms: i64,
    seen: HashSet<(CompactString, u64, CompactString)>,
    devices: HashSet<CompactString>,
    counts: AuditCounts,
    scratch: Vec<Reading>,
}

impl Audit {
    pub fn new(limits: ParseLimits, behind_ms: i64) -> Self {
        Self {
            limits,
            behind_ms,
            seen: HashSet::new(),
            devices: HashSet::new(),
            counts: AuditCounts::default(),
            scratch: Vec::new(),
        }
    }

    /// Audits one partition's record values, in offset order.
    pub fn partition<'a>(&mut self, values: impl IntoIterator<Item = &'a [u8]>) {
        let mut frontier = i64::MIN;
        for value in values {
            self.counts.records += 1;
            self.scratch.clear();
            if let Err(reason) = parse_record(value, &self.limits, &mut self.scratch) {
                *self.counts.rejected.entry(reason_code(reason)).or_default() += 1;
                continue;
            }
            let first = &self.scratch[0];
            let fresh = match first.seq {
                Some(seq) => self
                    .seen
                    .insert((first.device_id.clone(), seq, first.metric.clone())),
                None => true,
            };
            if !fresh {
                self.counts.duplicates += 1;
                continue;
            }
            let ts = first.ts_ms;
            if frontier != i64::MIN && ts < frontier.saturating_sub(self.behind_ms) {
                self.counts.behind += 1;
                continue;
            }
            frontier = frontier.max(ts);
            self.counts.accepted_records += 1;
            self.counts.accepted_readings += self.scratch.len() as u64;
            self.counts.min_ts_ms = Some(self.counts.min_ts_ms.map_or(ts, |m| m.min(ts)));
            self.counts.max_ts_ms = Some(self.counts.max_ts_ms.map_or(ts, |m| m.max(ts)));
            if !self.devices.contains(&first.device_id) {
                self.devices.insert(first.device_id.clone());
            }
            for r in &self.scratch {
                *self.counts.metrics.entry(r.metric.to_string()).or_default() += 1;
            }
        }
        self.counts.devices = self.devices.len() as u64;
    }

    pub fn counts(&self) -> &AuditCounts {
        &self.counts
    }
}

fn reason_code(reason: RejectReason) -> String {
    reason.code().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_rejects_duplicates_and_far_behind_records() {
        let recs: Vec<&[u8]> = vec![
            br#"{"device_id":"a","ts":1763787600000,"seq":0,"metrics":{"t":1,"h":2}}"#,
            br#"{"device_id":"a","ts":1763787600000,"seq":0,"metrics":{"t":1,"h":2}}"#,
            br#"{"device_id":"b","ts":1763787700000,"seq":0,"metrics":{"t":1}}"#,
            br#"{"device_id":"a","ts":1763787609000,"seq":1,"metrics":{"t":1}}"#,
            br#"{"device_id":"a","ts":1763787630000,"seq":2,"metrics":{"t":1}}"#,
            br#"{"device_id":"a""#,
        ];
        let mut audit = Audit::new(ParseLimits::default(), 60_000);
        audit.partition(recs);
        let c = audit.counts();
        assert_eq!(c.records, 6);
        assert_eq!(c.duplicates, 1);
        // 1763787609000 is 91 s behind b's record: behind; 1763787630000 is 70 s behind: behind.
        assert_eq!(c.behind, 2);
        assert_eq!(c.accepted_records, 2);
        assert_eq!(c.accepted_readings, 3);
        assert_eq!(c.rejected.get("malformed_json"), Some(&1));
        assert_eq!(c.devices, 2);
        assert_eq!(c.metrics.get("t"), Some(&2));
    }
}
