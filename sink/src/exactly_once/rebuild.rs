//! A damaged pending segment rebuilt from the output topic. A segment's
//! rows are final windows that were also published, in the same epochs, to
//! the aggregation's topic (when it has one): its rows are that topic's
//! final records of the job, epochs `since..=committed`, whose key the
//! segment's worker owns. The count the commit names is the check: the
//! rebuild is used only when it finds exactly that many rows.
//!
//! ```text
//!   read_segment(entry) ──damaged──▶ dataset has a topic? ──no──▶ stop, naming the file
//!        │ yes: after the last commits' publishing is finished
//!        ▼
//!   every partition, earliest → end: job header ours, epoch in since..=committed,
//!   "final": true, key owned by the entry's worker ──parse──▶ rows (count == entry.rows)
//! ```
//!
//! Parquet columns hold only the job's measures, and a roll sorts its rows,
//! so rows parsed back from the JSON write the same file bytes.

use std::time::{Duration, Instant};

use iotflow_dataflow::Measured;
use iotflow_dataflow::aggregate::Stats;
use iotflow_dataflow::aggregation::KEY_SEPARATOR;
use iotflow_dataflow::job::Epoch;
use iotflow_dataflow::snapshot::WindowRules;
use iotflow_jobfile::Measure;
use iotflow_redpanda::rskafka::client::partition::UnknownTopicHandling;
use serde_json::Value;

use crate::error::SinkError;
use crate::parquet::Dataset;
use crate::protocol::PendingEntry;
use crate::records::{EPOCH_HEADER, JOB_HEADER};
use crate::shape::{AggregateRow, AggregateShape, DatasetShape, Row};

/// How long a rebuild waits for the topic to hold every row: process 0
/// finishes publishing the last commits while the other processes recover.
const WAIT_FOR_PUBLISHING: Duration = Duration::from_secs(60);

/// The window row a record of `shape`'s topic holds (key and value as
/// [`AggregateShape::key`] and [`AggregateShape::value`] write them). Measures
/// the shape does not write stay zero: no column reads them.
pub fn aggregate_row(
    shape: &AggregateShape,
    key: &[u8],
    value: &[u8],
) -> Result<AggregateRow, String> {
    let key = std::str::from_utf8(key).map_err(|e| format!("key: {e}"))?;
    let group = match key.rsplit_once(KEY_SEPARATOR) {
        Some((group, _)) => group,
        None => "",
    };
    let json = shape.value_as_json(value)?;
    let int = |name: &str| {
        json.get(name)
            .and_then(Value::as_i64)
            .ok_or(format!("no integer {name}"))
    };
    // serde_json writes a non-finite float as null.
    let float = |name: &str| match json.get(name) {
        Some(Value::Null) => Ok(f64::NAN),
        Some(v) => v.as_f64().ok_or(format!("{name} is not a number")),
        None => Err(format!("no {name}")),
    };
    let mut m = Measured {
        stats: Stats {
            count: 0,
            sum: 0.0,
            min: 0.0,
            max: 0.0,
            mean: 0.0,
            stddev: 0.0,
            first_ts: 0,
            last_ts: 0,
        },
        first_value: 0.0,
        last_value: 0.0,
        percentiles: Vec::new(),
    };
    for measure in &shape.measures {
        let name = measure.name();
        match measure {
            Measure::Count => {
                m.stats.count = json.get(&name).and_then(Value::as_u64).ok_or("no count")?
            }
            Measure::Sum => m.stats.sum = float(&name)?,
            Measure::Min => m.stats.min = float(&name)?,
            Measure::Max => m.stats.max = float(&name)?,
            Measure::Mean => m.stats.mean = float(&name)?,
            Measure::Stddev => m.stats.stddev = float(&name)?,
            Measure::FirstTs => m.stats.first_ts = int(&name)?,
            Measure::LastTs => m.stats.last_ts = int(&name)?,
            Measure::FirstValue => m.first_value = float(&name)?,
            Measure::LastValue => m.last_value = float(&name)?,
            Measure::Percentile(_) => m.percentiles.push(float(&name)?),
        }
    }
    Ok(AggregateRow {
        group: group.to_owned(),
        window_start: int("window_start")?,
        window_end: int("window_end")?,
        measured: m,
        is_final: json
            .get("final")
            .and_then(Value::as_bool)
            .ok_or("no final")?,
        epoch: json
            .get("epoch")
            .and_then(Value::as_u64)
            .ok_or("no epoch")?,
    })
}

/// The dataset's topic and window shape, when its segments can be rebuilt.
pub fn rebuildable<'a>(
    datasets: &'a [Dataset],
    entry: &PendingEntry,
) -> Option<(&'a Dataset, &'a str)> {
    let d = datasets.iter().find(|d| d.name == entry.dataset)?;
    match (&d.shape, d.topic.as_deref()) {
        (DatasetShape::Windows(_), Some(topic)) => Some((d, topic)),
        _ => None,
    }
}

/// What to rebuild and from where.
#[derive(Debug, Clone, Copy)]
pub struct Rebuild<'a> {
    pub bootstrap: &'a iotflow_redpanda::Brokers,
    pub job: &'a str,
    /// The damaged segment's entry in the commit resumed from.
    pub entry: &'a PendingEntry,
    /// That commit's epoch and worker count.
    pub committed: Epoch,
    pub workers: u32,
    pub rules: &'a WindowRules,
}

/// The rows of `r.entry`'s segment, from `dataset`'s `topic`.
pub async fn rebuild(
    r: Rebuild<'_>,
    dataset: &Dataset,
    topic: &str,
) -> Result<Vec<Row>, SinkError> {
    let DatasetShape::Windows(shape) = &dataset.shape else {
        return Err(broker(topic, "only window datasets are rebuilt".into()));
    };
    let started = Instant::now();
    loop {
        let rows = read_rows(&r, dataset, shape, topic).await?;
        let found = rows.len() as u64;
        if found == r.entry.rows {
            return Ok(rows);
        }
        if found > r.entry.rows || started.elapsed() > WAIT_FOR_PUBLISHING {
            return Err(SinkError::Inconsistent {
                epoch: r.committed,
                problem: format!(
                    "{}: rebuilding it from {topic} found {found} rows, the commit names {}",
                    r.entry.path, r.entry.rows
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn broker(topic: &str, detail: String) -> SinkError {
    SinkError::Broker {
        topic: topic.to_owned(),
        partition: -1,
        detail,
    }
}

async fn read_rows(
    r: &Rebuild<'_>,
    dataset: &Dataset,
    shape: &AggregateShape,
    topic: &str,
) -> Result<Vec<Row>, SinkError> {
    let client = iotflow_redpanda::connect(r.bootstrap, Duration::from_secs(30))
        .await
        .map_err(|e| broker(topic, e.to_string()))?;
    let partitions = iotflow_redpanda::topics::describe_topic(&client, topic)
        .await
        .map_err(|e| broker(topic, e.to_string()))?;
    let aggregation = r.rules.aggregations.get(dataset.aggregation as usize);
    let epochs = r.entry.since..=r.committed;
    let mut rows = Vec::new();
    for p in partitions {
        let pc = client
            .partition_client(topic, p.partition, UnknownTopicHandling::Retry)
            .await
            .map_err(|e| broker(topic, e.to_string()))?;
        let records = iotflow_redpanda::scan::read_range(&pc, p.earliest, p.high_watermark)
            .await
            .map_err(|e| broker(topic, e.to_string()))?;
        for record in records.into_iter().map(|r| r.record) {
            let header = |name: &str| record.headers.get(name).map(Vec::as_slice);
            let epoch = header(EPOCH_HEADER)
                .and_then(|e| std::str::from_utf8(e).ok()?.parse::<Epoch>().ok());
            if header(JOB_HEADER) != Some(r.job.as_bytes())
                || !epoch.is_some_and(|e| epochs.contains(&e))
            {
                continue;
            }
            let (Some(key), Some(value)) = (&record.key, &record.value) else {
                continue;
            };
            let row = aggregate_row(shape, key, value).map_err(|problem| SinkError::Damaged {
                path: format!("{topic}/{}", p.partition).into(),
                problem,
            })?;
            let owner = aggregation.map_or(0, |a| a.key_owner(&row.group, r.workers));
            if row.is_final && owner == r.entry.worker {
                rows.push(Row::Window(row));
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use iotflow_dataflow::job::WindowResult;

    use super::*;

    #[test]
    fn a_window_record_parses_back_into_the_row_it_was_written_from() {
        let p = |name: &str, q| {
            Measure::Percentile(iotflow_jobfile::Percentile {
                name: name.into(),
                q,
            })
        };
        let percentiles = [p("p50", 0.5), p("p99.9", 0.999)];
        let measures: Vec<Measure> = iotflow_jobfile::SIMPLE_MEASURES
            .iter()
            .map(|(_, m)| m.clone())
            .chain(percentiles)
            .collect();
        let readings = [
            (1_000, 0.1),
            (2_000, 1.0 / 3.0),
            (2_500, -7.25e-9),
            (9_999, 6.02e23),
        ];
        let measured = Measured::of_sorted(&readings, &[0.5, 0.999], &mut Vec::new()).unwrap();
        for (group_fields, group) in [
            (
                vec!["device_id".to_owned(), "metric".to_owned()],
                "d-1|temp",
            ),
            (vec![], ""),
        ] {
            let json = AggregateShape {
                aggregation: "a".into(),
                group_fields,
                measures: measures.clone(),
                avro: None,
            };
            // The same shape with Avro values (`p99.9` is the field `p99_9`).
            let schema = iotflow_schema::avro::AvroSchema::parse(&json.avro_schema(), &[]).unwrap();
            let avro = json.clone().with_avro(Some(crate::AvroValues {
                id: 5,
                schema: std::sync::Arc::new(schema),
            }));
            let result = WindowResult {
                aggregation: 0,
                group: group.into(),
                window_start: 0,
                window_end: 10_000,
                measured: measured.clone(),
                is_final: true,
            };
            let key = AggregateShape::key(group, 0);
            for shape in [&json, &avro] {
                let value = shape.value(&result, 7).unwrap();
                let row = aggregate_row(shape, key.as_bytes(), &value).unwrap();
                assert_eq!(row, AggregateRow::of(&result, 7), "{group:?}");
            }
            let framed = avro.value(&result, 7).unwrap();
            assert_eq!(iotflow_schema::wire::split(&framed).unwrap().0, 5);
            // A JSON value on an Avro shape's topic, or another schema's id, is refused.
            let other = json.value(&result, 7).unwrap();
            assert!(aggregate_row(&avro, key.as_bytes(), &other).is_err());
            let mut wrong_id = framed.clone();
            wrong_id[4] = 6;
            assert!(
                aggregate_row(&avro, key.as_bytes(), &wrong_id)
                    .unwrap_err()
                    .contains("schema id 6")
            );
        }
    }

    #[test]
    fn a_record_without_what_the_shape_writes_is_refused() {
        let shape = AggregateShape {
            aggregation: "a".into(),
            group_fields: vec!["site".into()],
            measures: vec![Measure::Count, Measure::Mean],
            avro: None,
        };
        let good = br#"{"site":"s","window_start":0,"window_end":10,"count":2,"mean":1.5,"final":true,"epoch":3,"aggregation":"a"}"#;
        assert!(aggregate_row(&shape, b"s|0", good).is_ok());
        for (bad, why) in [
            (&br#"{"site":"s","window_start":0,"window_end":10,"count":2,"final":true,"epoch":3}"#[..], "no mean"),
            (br#"{"site":"s","window_start":0,"window_end":10,"count":-2,"mean":1.5,"final":true,"epoch":3}"#, "no count"),
            (b"not json", "value"),
        ] {
            let e = aggregate_row(&shape, b"s|0", bad).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}
