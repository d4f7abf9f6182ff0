//! The records iotflow writes: window aggregates and dead letters.
//!
//! ```text
//!   AggregateRecord: the default job's records as readers see them
//!                   ──key()──▶ "device|metric|window_start"
//!                   ──to_json()──▶ value of `iot.aggregates` (epoch also in a header)
//!   (any aggregation's records are written by `shape::AggregateShape`)
//!   DeadLetter ──▶ value = the original bytes, untouched
//!              ──▶ headers iotflow.reason / .source.topic / .source.partition / .source.offset
//! ```
//!
//! Field names are a contract read by external checks and notebooks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Header carrying the epoch of an aggregate.
pub const EPOCH_HEADER: &str = "iotflow.epoch";
/// Position of a record among its epoch's records in its partition (0-based):
/// with the epoch, where a partition's tail stands (`protocol::TailMark`).
pub const INDEX_HEADER: &str = "iotflow.index";
/// The job that published a record: a partition's tail is read for this
/// job's records only, so jobs that take turns on a topic never mistake each
/// other's records for their own.
pub const JOB_HEADER: &str = "iotflow.job";
pub const REASON_HEADER: &str = "iotflow.reason";
pub const SOURCE_TOPIC_HEADER: &str = "iotflow.source.topic";
pub const SOURCE_PARTITION_HEADER: &str = "iotflow.source.partition";
pub const SOURCE_OFFSET_HEADER: &str = "iotflow.source.offset";

/// One window's aggregate for one (device, metric): a record of the default
/// job's shape, as tests, `tail` and notebooks read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateRecord {
    pub device_id: String,
    pub metric: String,
    /// Window bounds, epoch ms, aligned to the Unix epoch; end exclusive.
    pub window_start: i64,
    pub window_end: i64,
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Population standard deviation.
    pub stddev: f64,
    /// Earliest and latest event time in the window, epoch ms.
    pub first_ts: i64,
    pub last_ts: i64,
    /// False for `--emit updates` intermediate results.
    #[serde(rename = "final")]
    pub is_final: bool,
    pub epoch: u64,
    /// The aggregation's name.
    pub aggregation: String,
}

impl AggregateRecord {
    /// The Kafka key: `device|metric|window_start`.
    pub fn key(&self) -> String {
        aggregate_key(&self.device_id, &self.metric, self.window_start)
    }

    /// The Kafka value: one JSON object.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// The key of an aggregate: `device|metric|window_start` (names never hold `|`).
pub fn aggregate_key(device: &str, metric: &str, window_start: i64) -> String {
    format!("{device}|{metric}|{window_start}")
}

/// The partition of a keyed record (aggregates): Kafka's default
/// partitioner, so other producers and consumers agree.
pub fn key_partition(key: &[u8], partitions: usize) -> i32 {
    iotflow_redpanda::partitioner::partition_for(key, partitions.max(1)) as i32
}

/// The partition of a dead letter: its source partition's, modulo the
/// dead-letter topic's partitions, so each source partition's rejects keep
/// their order.
pub fn dead_letter_partition(source_partition: i32, partitions: usize) -> i32 {
    (source_partition.unsigned_abs() as usize % partitions.max(1)) as i32
}

/// A rejected input record on its way to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub reason: &'static str,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub key: Option<Vec<u8>>,
    /// The original bytes, never re-encoded.
    pub payload: Vec<u8>,
}

impl DeadLetter {
    /// Headers describing where the record came from and why it was rejected.
    pub fn headers(&self) -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([
            (REASON_HEADER.to_owned(), self.reason.as_bytes().to_vec()),
            (
                SOURCE_TOPIC_HEADER.to_owned(),
                self.source_topic.as_bytes().to_vec(),
            ),
            (
                SOURCE_PARTITION_HEADER.to_owned(),
                self.source_partition.to_string().into_bytes(),
            ),
            (
                SOURCE_OFFSET_HEADER.to_owned(),
                self.source_offset.to_string().into_bytes(),
            ),
        ])
    }

    /// Rebuilds a dead letter from a DLQ record's parts, if its headers are complete.
    pub fn from_parts(
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        headers: &BTreeMap<String, Vec<u8>>,
        reasons: &[&'static str],
    ) -> Option<Self> {
        let text = |h: &str| headers.get(h).and_then(|v| std::str::from_utf8(v).ok());
        let reason = reasons
            .iter()
            .copied()
            .find(|r| Some(*r) == text(REASON_HEADER))?;
        Some(Self {
            reason,
            source_topic: text(SOURCE_TOPIC_HEADER)?.to_owned(),
            source_partition: text(SOURCE_PARTITION_HEADER)?.parse().ok()?,
            source_offset: text(SOURCE_OFFSET_HEADER)?.parse().ok()?,
            key,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg() -> AggregateRecord {
        AggregateRecord {
            device_id: "dev-00042".into(),
            metric: "temperature".into(),
            window_start: 1_763_787_600_000,
            window_end: 1_763_787_610_000,
            count: 3,
            sum: 63.0,
            min: 20.5,
            max: 21.5,
            mean: 21.0,
            stddev: 0.408_248_290_463_863,
            first_ts: 1_763_787_600_100,
            last_ts: 1_763_787_609_900,
            is_final: true,
            epoch: 7,
            aggregation: "aggregates".into(),
        }
    }

    #[test]
    fn aggregate_key_and_json_use_the_contract_names() {
        let a = agg();
        assert_eq!(a.key(), "dev-00042|temperature|1763787600000");
        let json = String::from_utf8(a.to_json().unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"device_id":"dev-00042","metric":"temperature","window_start":1763787600000,"window_end":1763787610000,"count":3,"sum":63.0,"min":20.5,"max":21.5,"mean":21.0,"stddev":0.408248290463863,"first_ts":1763787600100,"last_ts":1763787609900,"final":true,"epoch":7,"aggregation":"aggregates"}"#
        );
        let back: AggregateRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn routing_rules() {
        assert_eq!(dead_letter_partition(-3, 2), 1);
        assert_eq!(dead_letter_partition(5, 0), 0);
        assert_eq!(
            key_partition(b"dev-1|t|0", 4),
            iotflow_redpanda::partitioner::partition_for(b"dev-1|t|0", 4) as i32
        );
    }

    #[test]
    fn dead_letters_round_trip_through_headers_with_original_bytes() {
        let d = DeadLetter {
            reason: "malformed_json",
            source_topic: "iot.readings".into(),
            source_partition: 3,
            source_offset: 12_345,
            key: Some(b"dev-1".to_vec()),
            payload: b"{\"device_id\":\xff".to_vec(),
        };
        let back = DeadLetter::from_parts(
            d.key.clone(),
            d.payload.clone(),
            &d.headers(),
            &["late", "malformed_json"],
        );
        assert_eq!(back, Some(d.clone()));
        let mut broken = d.headers();
        broken.insert(SOURCE_OFFSET_HEADER.into(), b"x".to_vec());
        assert_eq!(
            DeadLetter::from_parts(None, vec![], &broken, &["malformed_json"]),
            None
        );
        assert_eq!(
            DeadLetter::from_parts(None, vec![], &d.headers(), &["late"]),
            None
        );
    }
}
