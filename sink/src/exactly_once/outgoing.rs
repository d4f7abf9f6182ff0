//! Output records on their way through the commit protocol, and the staged
//! file that holds one worker's records of one epoch until they are published.
//!
//! ```text
//!   WindowResult ──aggregate_outgoing──▶ Outgoing { output, partition (murmur2 of the key) }
//!   DeadRecord   ──dead_outgoing──────▶ Outgoing { output, partition (source partition % n) }
//!        ──exchange to the partition's publisher──▶ sorted into publish order
//!        ──▶ StagedOutputs: per (topic, partition) its records, bincode, LZ4 + CRC-32, fsynced
//! ```
//!
//! Binary, not JSON: JSON writes each payload byte as a decimal number, about
//! four times the bytes and most of the staging CPU on an output-heavy job.
//! Packed with LZ4: the file is synced before the commit, and the sync's
//! write-back of a backlog's outputs (about 90 MB for the 1.5M-record bench)
//! cost more than packing them to a third (31.6 MB).

use std::path::Path;

use chrono::{DateTime, TimeZone, Utc};
use rskafka::record::Record;
use serde::{Deserialize, Serialize};

use iotflow_dataflow::job::{DeadRecord, Epoch, WindowResult};
use iotflow_dataflow::sealed::{checked_body, codec, unpacked, write_packed_with_checksum};

use crate::error::SinkError;
use crate::records::{DeadLetter, dead_letter_partition, key_partition};
use crate::shape::AggregateShape;

use super::state_dir::write_synced_with;

/// An output topic of the job and its partition count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputTopic {
    pub name: String,
    pub partitions: usize,
}

/// Which of the job's output topics (its index in the job's list) a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OutputId(pub u16);

/// Where a record stands among its partition's records of an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Order {
    /// By the record's key (aggregates).
    Key,
    /// By source position (dead letters keep their input's order).
    Source { partition: i32, offset: i64 },
}

/// One record as the broker will get it, minus the protocol's headers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedRecord {
    #[serde(serialize_with = "opt_bytes")]
    pub key: Option<Vec<u8>>,
    #[serde(serialize_with = "bytes")]
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub timestamp_ms: i64,
}

/// Payloads as one byte string (a copy in bincode), not a sequence of
/// numbers; bincode reads both the same way, so deserializing needs nothing.
fn bytes<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(v)
}

fn opt_bytes<S: serde::Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_some(&serde_bytes_ref(v)),
        None => s.serialize_none(),
    }
}

/// A byte slice that serializes as bytes.
fn serde_bytes_ref(v: &[u8]) -> impl Serialize + '_ {
    struct Bytes<'a>(&'a [u8]);
    impl Serialize for Bytes<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }
    Bytes(v)
}

/// One output record inside the dataflow, routed to its partition's publisher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    pub output: OutputId,
    pub partition: i32,
    pub order: Order,
    pub record: StagedRecord,
}

impl Outgoing {
    /// The worker that publishes this record's partition: partition p of
    /// every topic is published by worker p % workers (the exchange takes the
    /// value modulo the worker count), so each partition has one writer.
    pub fn publisher(&self) -> u64 {
        u64::from(self.partition.unsigned_abs())
    }

    /// Publish order within one (output, partition).
    fn publish_order(a: &Self, b: &Self) -> std::cmp::Ordering {
        (a.output, a.partition, a.order)
            .cmp(&(b.output, b.partition, b.order))
            .then_with(|| a.record.key.cmp(&b.record.key))
            // An alert's firing and resolved events can share a key: "firing" < "resolved".
            .then_with(|| a.record.value.cmp(&b.record.value))
    }
}

impl StagedRecord {
    /// Window result `r` emitted at `epoch` as a record of `shape`, with its
    /// key: the one place an aggregate becomes a Kafka record, for both
    /// delivery paths.
    pub fn aggregate(
        r: &WindowResult,
        epoch: Epoch,
        shape: &AggregateShape,
    ) -> Result<(String, Self), SinkError> {
        let key = AggregateShape::key(&r.group, r.window_start);
        let value = shape.value(r, epoch);
        Self::keyed("aggregate", key, value, r.window_end)
    }

    /// A keyed output record (aggregates, alerts) stamped with its event
    /// time; `what` names it if its value failed to encode. The publishers
    /// add the protocol's headers (job, epoch, index).
    fn keyed(
        what: &str,
        key: String,
        value: Result<Vec<u8>, String>,
        timestamp_ms: i64,
    ) -> Result<(String, Self), SinkError> {
        let value = value.map_err(|e| SinkError::Encode {
            what: format!("{what} {key}"),
            detail: e,
        })?;
        let record = Self {
            key: Some(key.clone().into_bytes()),
            value,
            headers: Vec::new(),
            timestamp_ms,
        };
        Ok((key, record))
    }

    /// Alert event `e` emitted at `epoch` as a record of `shape`, with its key.
    pub fn alert(
        e: &iotflow_dataflow::alert::AlertEvent,
        epoch: Epoch,
        shape: &crate::alert_shape::AlertShape,
    ) -> Result<(String, Self), SinkError> {
        Self::keyed("alert", shape.key(e), shape.value(e, epoch), e.window_end)
    }

    /// A rejected input record as a dead letter, stamped with its source
    /// record's own timestamp (never the wall clock: a replay writes the same
    /// record, and retention counts from the source's time).
    pub fn dead_letter(d: DeadRecord, source_topic: &str) -> Self {
        let letter = DeadLetter {
            reason: d.reason.code(),
            source_topic: source_topic.to_owned(),
            source_partition: d.record.partition,
            source_offset: d.record.offset,
            key: d.record.key,
            payload: d.record.value.to_vec(),
        };
        Self {
            headers: letter.headers().into_iter().collect(),
            key: letter.key,
            value: letter.payload,
            timestamp_ms: d.record.timestamp_ms,
        }
    }

    /// The broker's record: these fields, copied (the exactly-once
    /// publisher keeps the staged record for a retry).
    pub fn to_record(&self) -> Record {
        self.clone().into_record()
    }

    /// The broker's record: these fields, moved.
    pub fn into_record(self) -> Record {
        Record {
            key: self.key,
            value: Some(self.value),
            headers: self.headers.into_iter().collect(),
            timestamp: broker_time(self.timestamp_ms),
        }
    }
}

/// A record timestamp as the client's type holds it. Beyond its range
/// (±262,000 years: only a foreign producer's record, carried on in a dead
/// letter, can be) it is clamped to the range's end on that side.
fn broker_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or(if ms < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

/// An aggregate of `shape` as an outgoing record of `output`.
pub fn aggregate_outgoing(
    r: &WindowResult,
    epoch: Epoch,
    output: OutputId,
    partitions: usize,
    shape: &AggregateShape,
) -> Result<Outgoing, SinkError> {
    let (key, record) = StagedRecord::aggregate(r, epoch, shape)?;
    Ok(Outgoing {
        output,
        partition: key_partition(key.as_bytes(), partitions),
        order: Order::Key,
        record,
    })
}

/// An alert event as an outgoing record of `output`.
pub fn alert_outgoing(
    e: &iotflow_dataflow::alert::AlertEvent,
    epoch: Epoch,
    output: OutputId,
    partitions: usize,
    shape: &crate::alert_shape::AlertShape,
) -> Result<Outgoing, SinkError> {
    let (key, record) = StagedRecord::alert(e, epoch, shape)?;
    Ok(Outgoing {
        output,
        partition: key_partition(key.as_bytes(), partitions),
        order: Order::Key,
        record,
    })
}

/// A rejected input record as an outgoing dead letter of `output`.
pub fn dead_outgoing(
    d: DeadRecord,
    source_topic: &str,
    output: OutputId,
    partitions: usize,
) -> Outgoing {
    let (partition, offset) = (d.record.partition, d.record.offset);
    Outgoing {
        output,
        partition: dead_letter_partition(partition, partitions),
        order: Order::Source { partition, offset },
        record: StagedRecord::dead_letter(d, source_topic),
    }
}

/// `f` over each item with its epoch (aggregates carry the epoch they were
/// emitted at); `None` drops the item. Items of epochs before `from` are
/// dropped unread: replayed epochs, committed before.
pub fn with_epoch<'scope, T, U, F>(
    stream: timely::dataflow::Stream<'scope, Epoch, Vec<T>>,
    name: &str,
    from: Epoch,
    mut f: F,
) -> timely::dataflow::Stream<'scope, Epoch, Vec<U>>
where
    T: Clone + 'static,
    U: Clone + 'static,
    F: FnMut(&T, Epoch) -> Option<U> + 'static,
{
    use timely::dataflow::channels::pact::Pipeline;
    use timely::dataflow::operators::generic::Operator;
    type Builder<U> = timely::container::CapacityContainerBuilder<Vec<U>>;
    stream.unary::<Builder<U>, _, _, _>(Pipeline, name, move |_, _| {
        move |input, output| {
            input.for_each(|time, data| {
                let epoch = iotflow_dataflow::job::epoch_of(&time);
                if epoch < from {
                    return;
                }
                let mut session = output.session(&time);
                for item in data.iter() {
                    if let Some(u) = f(item, epoch) {
                        session.give(u);
                    }
                }
            });
        }
    })
}

/// Plain bytes of staged outputs per LZ4 block.
const WRITE_BUFFER: usize = 256 * 1024;

/// One partition's records of an epoch, in publish order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedPart {
    pub topic: String,
    pub partition: i32,
    pub records: Vec<StagedRecord>,
}

/// One worker's outputs of one epoch: what its publisher sends once the
/// epoch commits, and what recovery sends again if it crashed before that.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedOutputs {
    pub parts: Vec<StagedPart>,
}

impl StagedOutputs {
    /// `records` in publish order, grouped by partition; `topics` names the outputs.
    pub fn of(mut records: Vec<Outgoing>, topics: &[OutputTopic]) -> Result<Self, SinkError> {
        // Records that compare equal are the same record (an aggregate's or
        // alert's key and value decide the rest; dead letters differ by
        // source offset), so an unstable sort gives the one publish order.
        // Indices are sorted, not the records: a record is over 100 bytes,
        // and a sort moves each of them many times.
        let mut order: Vec<usize> = (0..records.len()).collect();
        order.sort_unstable_by(|&a, &b| Outgoing::publish_order(&records[a], &records[b]));
        let mut parts: Vec<StagedPart> = Vec::new();
        let mut current: Option<(OutputId, i32)> = None;
        for i in order {
            let r = &mut records[i];
            if current != Some((r.output, r.partition)) {
                let topic =
                    topics
                        .get(usize::from(r.output.0))
                        .ok_or_else(|| SinkError::Encode {
                            what: "an output record".into(),
                            detail: format!("no output topic {}", r.output.0),
                        })?;
                parts.push(StagedPart {
                    topic: topic.name.clone(),
                    partition: r.partition,
                    records: Vec::new(),
                });
                current = Some((r.output, r.partition));
            }
            if let Some(part) = parts.last_mut() {
                part.records.push(std::mem::take(&mut r.record));
            }
        }
        Ok(Self { parts })
    }

    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(|p| p.records.is_empty())
    }

    /// Payload bytes held (keys, values, headers): what the unpublished bound counts.
    pub fn bytes(&self) -> u64 {
        self.parts
            .iter()
            .flat_map(|p| &p.records)
            .map(|r| {
                let headers: usize = r.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
                (r.key.as_ref().map_or(0, Vec::len) + r.value.len() + headers) as u64
            })
            .sum()
    }

    /// Writes the stored form to `path`, fsynced: bincode packed with LZ4,
    /// then a CRC-32, streamed (an epoch's outputs run to megabytes; a
    /// buffer of them would be faulted in and copied only to be written once).
    /// A failure to encode is an [`SinkError::Encode`] (a bug, not retried),
    /// one to write an [`SinkError::Io`].
    pub fn store(&self, path: &Path) -> Result<(), SinkError> {
        let mut unencodable = None;
        let stored = write_synced_with(path, |w| {
            match write_packed_with_checksum(w, self, WRITE_BUFFER).map_err(|e| *e) {
                Ok(_packed) => Ok(()),
                Err(bincode::ErrorKind::Io(e)) => Err(e),
                Err(e) => {
                    unencodable = Some(e.to_string());
                    Err(std::io::Error::other("staged outputs not encodable"))
                }
            }
        });
        match unencodable {
            Some(detail) => Err(SinkError::Encode {
                what: "staged outputs".into(),
                detail,
            }),
            None => stored,
        }
    }

    /// What [`Self::store`] wrote at `path` (or an older binary, unpacked);
    /// `None` if there is no file (a worker with nothing to publish in an
    /// epoch writes none).
    pub fn load(path: &Path) -> Result<Option<Self>, SinkError> {
        use bincode::Options;
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SinkError::io("reading", path)(e)),
        };
        let damaged = |problem: String| SinkError::Damaged {
            path: path.to_owned(),
            problem,
        };
        let body = checked_body(&bytes)
            .and_then(unpacked)
            .map_err(|e| damaged(e.to_string()))?;
        let outputs = codec()
            .deserialize(&body)
            .map_err(|e| damaged(e.to_string()))?;
        Ok(Some(outputs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(output: u16, partition: i32, order: Order, key: &str) -> Outgoing {
        Outgoing {
            output: OutputId(output),
            partition,
            order,
            record: StagedRecord {
                key: Some(key.as_bytes().to_vec()),
                value: vec![0, 255, b'{'],
                headers: vec![("h".into(), b"v".to_vec())],
                timestamp_ms: 7,
            },
        }
    }

    #[test]
    fn record_times_beyond_the_client_s_range_are_clamped_not_zeroed() {
        let at = |ms| out(0, 0, Order::Key, "k").record.with_time(ms);
        assert_eq!(
            at(1_700_000_000_123)
                .into_record()
                .timestamp
                .timestamp_millis(),
            1_700_000_000_123
        );
        assert_eq!(at(i64::MAX).to_record().timestamp, DateTime::<Utc>::MAX_UTC);
        assert_eq!(
            at(i64::MIN).into_record().timestamp,
            DateTime::<Utc>::MIN_UTC
        );
        let r = at(-1);
        assert_eq!(
            r.to_record(),
            r.clone().into_record(),
            "copied or moved, the same record"
        );
    }

    impl StagedRecord {
        fn with_time(mut self, ms: i64) -> Self {
            self.timestamp_ms = ms;
            self
        }
    }

    #[test]
    fn staged_outputs_group_by_partition_in_publish_order_and_round_trip() {
        let topics = [
            OutputTopic {
                name: "aggs".into(),
                partitions: 2,
            },
            OutputTopic {
                name: "dlq".into(),
                partitions: 2,
            },
        ];
        let src = |offset| Order::Source {
            partition: 0,
            offset,
        };
        let staged = StagedOutputs::of(
            vec![
                out(1, 0, src(9), "x"),
                out(0, 1, Order::Key, "b"),
                out(0, 1, Order::Key, "a"),
                out(1, 0, src(3), "y"),
            ],
            &topics,
        )
        .unwrap();
        let layout: Vec<(&str, i32, Vec<&[u8]>)> = staged
            .parts
            .iter()
            .map(|p| {
                let keys = p.records.iter().filter_map(|r| r.key.as_deref()).collect();
                (p.topic.as_str(), p.partition, keys)
            })
            .collect();
        assert_eq!(
            layout,
            vec![
                ("aggs", 1, vec![&b"a"[..], b"b"]),
                ("dlq", 0, vec![&b"y"[..], b"x"])
            ]
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e").join("w0.out");
        assert_eq!(
            StagedOutputs::load(&path).unwrap(),
            None,
            "no file, nothing staged"
        );
        staged.store(&path).unwrap();
        assert_eq!(StagedOutputs::load(&path).unwrap(), Some(staged.clone()));
        let packed = std::fs::read(&path).unwrap();
        // An older binary's file: plain bincode, not packed.
        let plain = iotflow_dataflow::sealed::bincode_with_checksum(&staged).unwrap();
        assert_ne!(packed, plain);
        std::fs::write(&path, plain).unwrap();
        assert_eq!(StagedOutputs::load(&path).unwrap(), Some(staged.clone()));
        let mut flipped = std::fs::read(&path).unwrap();
        flipped[3] ^= 1;
        std::fs::write(&path, flipped).unwrap();
        assert!(matches!(
            StagedOutputs::load(&path),
            Err(SinkError::Damaged { .. })
        ));
        assert!(StagedOutputs::of(vec![out(5, 0, Order::Key, "z")], &topics).is_err());
    }
}
