//! The Parquet datasets of final windows, one per aggregation: files are
//! written into a staging directory outside the datasets, and enter one only
//! by an atomic rename once their epoch is committed, so readers never see a
//! partial or uncommitted file.
//!
//! ```text
//!   final AggregateRows of epoch e on worker w
//!     ──group by UTC date of window_start, sort by (group key, start)──▶
//!   <staging>/e<e>-w<w>-<dataset>-<date>.parquet (written, fsynced)   stage_rows
//!     ──commit record lists them (path, bytes, CRC)──▶
//!   <parquet dir>/<dataset>/date=<date>/part-<e>-<w>.parquet          publish
//!     (rename, then fsync of the date directory; idempotent)
//! ```
//!
//! The schema ([`AggregateShape::schema`]) uses real types: timestamps are
//! `Timestamp(ms, "UTC")`, the count is `UInt64`, the other measures `Float64`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use iotflow_dataflow::job::Epoch;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use crate::durable;
use crate::failpoint::{self, Site};
use crate::kafka::FailureSlot;
use crate::protocol::FileEntry;
use crate::shape::{DatasetShape, Row};

/// The default job's dataset under the Parquet directory.
pub const DATASET: &str = "aggregates";

/// A Parquet dataset of the job: its directory, and the aggregation whose
/// final windows it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub name: String,
    /// Index of its aggregation in the job's list (the alert dataset: of
    /// none; each row names its own).
    pub aggregation: u16,
    pub shape: DatasetShape,
    /// The topic the same rows are published to, if any: a damaged pending
    /// segment of a window dataset is rebuilt from it.
    pub topic: Option<String>,
}

impl Dataset {
    /// The aggregation whose key owner keeps `row` pending (rescaling regroups by it).
    pub fn aggregation_of(&self, row: &Row) -> u16 {
        match (&self.shape, row) {
            (DatasetShape::Alerts(s), Row::Alert(a)) => s.aggregation_of(&a.event),
            _ => self.aggregation,
        }
    }
}
/// Staged files, outside the dataset (readers glob `aggregates/`).
pub const STAGING: &str = ".staging";

/// What can go wrong writing or publishing Parquet files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParquetSinkError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("encoding Parquet: {0}")]
    Encode(String),
    #[error("{path}: staged file missing and not yet published")]
    Lost { path: PathBuf },
    #[error("{path}: size or checksum differs from its commit record")]
    Damaged { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ParquetSinkError + '_ {
    move |source| ParquetSinkError::Io {
        path: path.to_owned(),
        source,
    }
}

const DAY_MS: i64 = 86_400_000;

/// The UTC date (`YYYY-MM-DD`) of an epoch-millisecond time.
pub fn date_of(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "invalid".into())
}

/// Writes `rows`, final windows of `dataset` gathered since epoch `first`
/// and staged at epoch `epoch` on `worker`, into `staging`: one file per UTC
/// date, each sorted by (group key, window start) and fsynced. The dataset
/// file is named after `first`, so it is the same whichever epoch happens to
/// stage it (a roll); the staging file after `epoch`, so discarding that
/// epoch's staging removes it. Returns the entries for the commit record
/// (paths relative to the Parquet directory).
pub fn stage_rows(
    staging: &Path,
    dataset: &Dataset,
    epoch: u64,
    first: u64,
    worker: u32,
    records: &[Row],
) -> Result<Vec<FileEntry>, ParquetSinkError> {
    let (shape, dataset) = (&dataset.shape, dataset.name.as_str());
    let mut finals: Vec<&Row> = records.iter().filter(|r| r.is_final()).collect();
    finals.sort_by(|a, b| a.order().cmp(&b.order()));
    // Grouped by UTC day first: formatting a date per row cost more than the rest.
    let mut by_day: std::collections::BTreeMap<i64, Vec<&Row>> = std::collections::BTreeMap::new();
    for r in finals {
        by_day
            .entry(r.window_start().div_euclid(DAY_MS))
            .or_default()
            .push(r);
    }
    let by_date = by_day
        .into_values()
        .filter_map(|rows| Some((date_of(rows.first()?.window_start()), rows)));
    durable::create_dir_all(staging).map_err(io_err(staging))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut entries = Vec::new();
    for (date, rows) in by_date {
        let name = format!("e{epoch:012}-w{worker:04}-{dataset}-{date}.parquet");
        let part = format!("part-e{first:012}-w{worker:04}.parquet");
        let staged = staging.join(&name);
        let mut bytes = Vec::new();
        {
            let mut w = ArrowWriter::try_new(&mut bytes, shape.schema(), Some(props.clone()))
                .map_err(|e| ParquetSinkError::Encode(e.to_string()))?;
            let batch = shape
                .batch(&rows)
                .map_err(|e| ParquetSinkError::Encode(e.to_string()))?;
            w.write(&batch)
                .map_err(|e| ParquetSinkError::Encode(e.to_string()))?;
            w.close()
                .map_err(|e| ParquetSinkError::Encode(e.to_string()))?;
        }
        let mut f = File::create(&staged).map_err(io_err(&staged))?;
        f.write_all(&bytes).map_err(io_err(&staged))?;
        f.sync_all().map_err(io_err(&staged))?;
        failpoint::hit(Site::ParquetTemp);
        entries.push(FileEntry {
            staged: name,
            path: format!("{dataset}/date={date}/{part}"),
            bytes: bytes.len() as u64,
            checksum: crc32fast::hash(&bytes),
        });
    }
    sync_dir(staging)?;
    Ok(entries)
}

/// Moves a committed file from `staging` into the dataset under `root`:
/// rename, then fsync of its directory. The file must have the size and
/// checksum its commit record names, staged or (published before) in place.
/// Publishing again is a no-op, so recovery can simply publish every file of
/// the commits it finishes.
pub fn publish(staging: &Path, root: &Path, entry: &FileEntry) -> Result<(), ParquetSinkError> {
    let from = staging.join(&entry.staged);
    let to = root.join(&entry.path);
    if !from.exists() {
        return match verify(&to, entry)? {
            Check::Intact => Ok(()),
            Check::Missing => Err(ParquetSinkError::Lost { path: from }),
            Check::Differs => Err(ParquetSinkError::Damaged { path: to }),
        };
    }
    if verify(&from, entry)? != Check::Intact {
        return Err(ParquetSinkError::Damaged { path: from });
    }
    let dir = to.parent().unwrap_or(root);
    durable::create_dir_all(dir).map_err(io_err(dir))?;
    fs::rename(&from, &to).map_err(io_err(&to))?;
    failpoint::hit(Site::BeforeDirSync);
    sync_dir(dir)
}

/// What a file is against its commit record's size and checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Intact,
    Missing,
    Differs,
}

/// Whether a staged or published file still has the bytes the commit record says.
pub fn verify(path: &Path, entry: &FileEntry) -> Result<Check, ParquetSinkError> {
    match fs::read(path) {
        Ok(bytes) => Ok(
            if bytes.len() as u64 == entry.bytes && crc32fast::hash(&bytes) == entry.checksum {
                Check::Intact
            } else {
                Check::Differs
            },
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Check::Missing),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Writes each completed epoch's rows of `dataset` (each worker its own
/// files) under `root`. At least once: a crash can replay an epoch's files;
/// the exactly-once sinks put the commit protocol between staging and
/// publishing.
pub fn write_dataset(
    stream: Stream<'_, Epoch, Vec<Row>>,
    root: PathBuf,
    dataset: Dataset,
    error: FailureSlot,
    stop: Arc<AtomicBool>,
) {
    let worker = stream.scope().index() as u32;
    let staging = root.join(STAGING).join(format!("w{worker:04}"));
    let mut pending: BTreeMap<Epoch, Vec<Row>> = BTreeMap::new();
    stream.sink(Pipeline, "WriteParquet", move |(input, frontier)| {
        input.for_each(|time, data| iotflow_dataflow::job::stash(&mut pending, &time, data));
        while let Some(entry) = pending.first_entry() {
            if frontier.less_equal(entry.key()) || stop.load(Ordering::Relaxed) {
                break;
            }
            let epoch = *entry.key();
            let rows = entry.remove();
            let written = stage_rows(&staging, &dataset, epoch, epoch, worker, &rows)
                .and_then(|entries| entries.iter().try_for_each(|e| publish(&staging, &root, e)));
            if let Err(e) = written {
                return crate::kafka::record_failure(&error, &stop, e.to_string());
            }
        }
    });
}

fn sync_dir(dir: &Path) -> Result<(), ParquetSinkError> {
    durable::sync_dir(dir).map_err(io_err(dir))
}

#[cfg(test)]
pub(crate) mod tests {
    use arrow_array::cast::AsArray;
    use arrow_array::types::TimestampMillisecondType;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;
    use crate::shape::{AggregateRow, AggregateShape};
    use iotflow_dataflow::job::WindowResult;

    fn record(device: &str, start: i64, is_final: bool) -> Row {
        let stats = iotflow_dataflow::Stats {
            count: 3,
            sum: 63.0,
            min: 20.0,
            max: 22.0,
            mean: 21.0,
            stddev: 0.816_496_580_927_726,
            first_ts: start + 1,
            last_ts: start + 9_999,
        };
        let r = WindowResult::new(
            device,
            "temperature",
            start,
            start + 10_000,
            stats,
            is_final,
        );
        Row::Window(AggregateRow::of(&r, 4))
    }

    /// The default job's dataset.
    pub(crate) fn aggregates() -> Dataset {
        let agg = iotflow_dataflow::Aggregation::per_device(
            DATASET,
            iotflow_dataflow::WindowSpec::tumbling(10_000).unwrap(),
            iotflow_dataflow::EmitMode::Final,
        );
        Dataset {
            name: DATASET.into(),
            aggregation: 0,
            shape: DatasetShape::Windows(AggregateShape::of(&agg)),
            topic: None,
        }
    }

    fn stage_epoch(
        staging: &Path,
        epoch: u64,
        worker: u32,
        rows: &[Row],
    ) -> Result<Vec<FileEntry>, ParquetSinkError> {
        stage_rows(staging, &aggregates(), epoch, epoch, worker, rows)
    }

    /// The schema every dataset of the default job has had, column for column.
    #[test]
    fn the_default_dataset_keeps_today_s_schema() {
        use arrow_schema::{DataType, Field, TimeUnit};
        let ts = |n: &str| {
            Field::new(
                n,
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            )
        };
        let float = |n: &str| Field::new(n, DataType::Float64, false);
        let want = arrow_schema::Schema::new(vec![
            Field::new("device_id", DataType::Utf8, false),
            Field::new("metric", DataType::Utf8, false),
            ts("window_start"),
            ts("window_end"),
            Field::new("count", DataType::UInt64, false),
            float("sum"),
            float("min"),
            float("max"),
            float("mean"),
            float("stddev"),
            ts("first_ts"),
            ts("last_ts"),
            Field::new("final", DataType::Boolean, false),
            Field::new("epoch", DataType::UInt64, false),
        ]);
        assert_eq!(aggregates().shape.schema().as_ref(), &want);
    }

    #[test]
    fn staged_files_are_per_date_sorted_typed_and_enter_the_dataset_only_on_publish() {
        let dir = tempfile::tempdir().unwrap();
        let (staging, root) = (dir.path().join("staging"), dir.path().join("parquet"));
        let day = 1_763_769_600_000; // 2025-11-22T00:00:00Z
        let records = vec![
            record("b", day + 20_000, true),
            record("a", day - 10_000, true), // the day before
            record("a", day + 20_000, true),
            record("c", day, false), // not final: never in the dataset
        ];
        let entries = stage_epoch(&staging, 4, 1, &records).unwrap();
        assert_eq!(
            entries.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            [
                "aggregates/date=2025-11-21/part-e000000000004-w0001.parquet",
                "aggregates/date=2025-11-22/part-e000000000004-w0001.parquet"
            ]
        );
        assert!(!root.exists(), "nothing is visible before publishing");
        for e in &entries {
            assert_eq!(verify(&staging.join(&e.staged), e).unwrap(), Check::Intact);
            publish(&staging, &root, e).unwrap();
            publish(&staging, &root, e).unwrap(); // again: a no-op
            assert_eq!(verify(&root.join(&e.path), e).unwrap(), Check::Intact);
        }
        let file = File::open(root.join(&entries[1].path)).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        assert_eq!(
            reader.schema().as_ref(),
            aggregates().shape.schema().as_ref()
        );
        let batch = reader.build().unwrap().next().unwrap().unwrap();
        let devices: Vec<&str> = batch
            .column(0)
            .as_string::<i32>()
            .iter()
            .flatten()
            .collect();
        assert_eq!(devices, ["a", "b"]);
        let starts = batch.column(2).as_primitive::<TimestampMillisecondType>();
        assert_eq!(starts.value(0), day + 20_000);
        assert_eq!(starts.timezone(), Some("UTC"));

        // A staged file that vanished before it was published is an error, not silence.
        let mut lost = entries[0].clone();
        lost.staged = "gone.parquet".into();
        lost.path = "aggregates/date=2025-11-20/x.parquet".into();
        assert!(matches!(
            publish(&staging, &root, &lost),
            Err(ParquetSinkError::Lost { .. })
        ));
        // A changed byte is caught, in place and when publishing again.
        let p = root.join(&entries[0].path);
        let mut bytes = fs::read(&p).unwrap();
        bytes[10] ^= 1;
        fs::write(&p, bytes).unwrap();
        assert_eq!(verify(&p, &entries[0]).unwrap(), Check::Differs);
        assert!(matches!(
            publish(&staging, &root, &entries[0]),
            Err(ParquetSinkError::Damaged { .. })
        ));
        // A staged file damaged before its rename is refused, not published.
        let again = stage_epoch(&staging, 5, 1, &records).unwrap();
        let staged = staging.join(&again[0].staged);
        let mut bytes = fs::read(&staged).unwrap();
        bytes[20] ^= 1;
        fs::write(&staged, bytes).unwrap();
        assert!(matches!(
            publish(&staging, &root, &again[0]),
            Err(ParquetSinkError::Damaged { .. })
        ));
    }

    #[test]
    fn an_epoch_without_final_windows_stages_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let entries = stage_epoch(dir.path(), 1, 0, &[record("a", 0, false)]).unwrap();
        assert!(entries.is_empty());
    }
}
