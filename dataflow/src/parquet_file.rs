//! A Parquet file of readings as a source: each row stands for the JSON record
//! of its columns, so Parquet input meets exactly the parser, validation and
//! dead-letter rules of Kafka input.
//!
//! ```text
//!   row group g = epoch g ──share w of shares: rows [w·n/s, (w+1)·n/s)──▶ RecordBatch
//!     ──▶ RowBatch@g: Classify reads plain columns straight into readings
//!         (`reading::columns`, the JSON parser's own field rules), and renders a
//!         row as its JSON line only when that row is rejected or unusual:
//!     row ──columns as JSON fields (struct/map columns as objects)──▶ a line
//! ```
//!
//! Epochs follow the file's row groups, so they depend only on the file, not
//! on the worker count. A record's offset is its row number in the file.
//! Timestamp columns become `ts_ms` (epoch milliseconds); non-finite floats
//! are written as the bare `NaN`/`Infinity` the parser reports as
//! `non_finite_value`.

use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use bytes::Bytes;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};

use crate::job::RawRecord;
use crate::source::{InputError, OwnedInput, Piece};

/// Rows of a Parquet file (a decoded Arrow batch) on their way to Classify.
#[derive(Debug, Clone)]
pub struct RowBatch {
    pub partition: i32,
    /// The offset (row number in the file) of row 0.
    pub base: i64,
    pub batch: RecordBatch,
}

impl RowBatch {
    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.num_rows() == 0
    }

    /// Row `row` as the record it stands for (its JSON line).
    pub fn record(&self, row: usize) -> RawRecord {
        let value = render_rows(&self.batch, row..row + 1)
            .map(|(buf, _)| buf)
            .unwrap_or_default();
        RawRecord {
            partition: self.partition,
            offset: self.base + row as i64,
            key: None,
            value: Bytes::from(value),
            timestamp_ms: 0,
        }
    }
}

/// Rows decoded per Arrow batch.
const BATCH_ROWS: usize = 8192;
/// Ordinal = row group · this + row within it: one epoch per row group.
const GROUP_STRIDE: u64 = 1 << 40;

/// What can go wrong opening a Parquet input.
#[derive(Debug, thiserror::Error)]
pub enum ParquetInputError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("not a readable Parquet file: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
}

/// This worker's share of a Parquet file, as partition 0; see the module docs.
/// Decoding errors end the iterator and land in `error`.
pub fn parquet_share(
    path: &Path,
    share: u32,
    shares: u32,
    error: InputError,
) -> Result<OwnedInput, ParquetInputError> {
    let file = File::open(path)?;
    let meta = ArrowReaderMetadata::load(&file, Default::default())?;
    let groups: Vec<(u64, u64)> = {
        let mut first = 0u64;
        meta.metadata()
            .row_groups()
            .iter()
            .map(|g| {
                let n = u64::try_from(g.num_rows()).unwrap_or(0);
                first += n;
                (first - n, n)
            })
            .collect()
    };
    let (share, shares) = (u64::from(share), u64::from(shares.max(1)));
    let path_buf = path.to_owned();
    let mut group = 0usize;
    let mut pending: Option<(u64, RowBatch)> = None;
    let mut reader: Option<(
        usize,
        u64,
        parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    )> = None;
    let fail = move |e: ParquetInputError| {
        if let Ok(mut slot) = error.lock() {
            let io = match e {
                ParquetInputError::Io(e) => e,
                other => std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
            };
            slot.get_or_insert((path_buf.clone(), io));
        }
    };
    let iter = std::iter::from_fn(move || {
        loop {
            if let Some(next) = pending.take() {
                return Some(next);
            }
            if let Some((g, row, r)) = reader.as_mut() {
                match r.next() {
                    Some(Ok(batch)) => {
                        let (g, first_row) = (*g, *row);
                        *row += batch.num_rows() as u64;
                        let base = groups.get(g).map_or(0, |x| x.0);
                        if batch.num_rows() > 0 {
                            let rows = RowBatch {
                                partition: 0,
                                base: i64::try_from(base + first_row).unwrap_or(i64::MAX),
                                batch,
                            };
                            pending = Some((g as u64 * GROUP_STRIDE + first_row, rows));
                        }
                        continue;
                    }
                    Some(Err(e)) => {
                        fail(ParquetInputError::Parquet(e.into()));
                        return None;
                    }
                    None => reader = None,
                }
            }
            // The next row group with rows in this share.
            let &(_, n) = groups.get(group)?;
            let g = group;
            group += 1;
            let (from, to) = (n * share / shares, n * (share + 1) / shares);
            if from >= to {
                continue;
            }
            let built = file
                .try_clone()
                .map_err(ParquetInputError::from)
                .and_then(|f| {
                    let selection = RowSelection::from(vec![
                        RowSelector::skip(from as usize),
                        RowSelector::select((to - from) as usize),
                    ]);
                    Ok(
                        ParquetRecordBatchReaderBuilder::new_with_metadata(f, meta.clone())
                            .with_row_groups(vec![g])
                            .with_row_selection(selection)
                            .with_batch_size(BATCH_ROWS)
                            .build()?,
                    )
                });
            match built {
                Ok(r) => reader = Some((g, from, r)),
                Err(e) => {
                    fail(e);
                    return None;
                }
            }
        }
    });
    Ok(OwnedInput {
        partition: 0,
        share: share as u32,
        shares: shares as u32,
        per_epoch: GROUP_STRIDE,
        records: Box::new(iter.map(|(ord, rows)| (ord, Piece::Rows(rows)))),
    })
}

/// JSON lines in one buffer, and each one's (start, end) in it.
type Rendered = (Vec<u8>, Vec<(u32, u32)>);

/// Rows `rows` of `batch` as JSON lines sharing one buffer, and each one's span.
fn render_rows(
    batch: &RecordBatch,
    rows: std::ops::Range<usize>,
) -> Result<Rendered, ParquetInputError> {
    let mut buf: Vec<u8> = Vec::with_capacity(rows.len() * 128);
    let mut spans = Vec::with_capacity(rows.len());
    let schema = batch.schema();
    for row in rows {
        let start = buf.len();
        buf.push(b'{');
        let mut first = true;
        for (field, col) in schema.fields().iter().zip(batch.columns()) {
            if !first {
                buf.push(b',');
            }
            first = false;
            write_str(&mut buf, json_key(field.name(), col.data_type()));
            buf.push(b':');
            write_value(&mut buf, col.as_ref(), row);
        }
        buf.push(b'}');
        spans.push((
            u32::try_from(start).map_err(|_| too_long())?,
            u32::try_from(buf.len()).map_err(|_| too_long())?,
        ));
    }
    Ok((buf, spans))
}

/// A column's key in the JSON record a row stands for: time-typed columns
/// with a time's name are `ts_ms` (their values are written in milliseconds).
pub(crate) fn json_key<'a>(name: &'a str, data_type: &DataType) -> &'a str {
    match data_type {
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 if is_time_name(name) => {
            "ts_ms"
        }
        _ => name,
    }
}

/// A timestamp's value in milliseconds, as the JSON line writes it.
pub(crate) fn timestamp_ms(col: &dyn Array, unit: TimeUnit, row: usize) -> i64 {
    match unit {
        TimeUnit::Second => col
            .as_primitive::<TimestampSecondType>()
            .value(row)
            .saturating_mul(1000),
        TimeUnit::Millisecond => col.as_primitive::<TimestampMillisecondType>().value(row),
        TimeUnit::Microsecond => round_div(
            col.as_primitive::<TimestampMicrosecondType>().value(row),
            1000,
        ),
        TimeUnit::Nanosecond => round_div(
            col.as_primitive::<TimestampNanosecondType>().value(row),
            1_000_000,
        ),
    }
}

/// Spans index a batch's buffer with 32 bits.
fn too_long() -> ParquetInputError {
    ParquetInputError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{BATCH_ROWS} rows make more than 4 GiB of JSON"),
    ))
}

fn is_time_name(name: &str) -> bool {
    matches!(name, "ts" | "ts_ms" | "timestamp" | "time" | "event_time")
}

fn write_str(buf: &mut Vec<u8>, s: &str) {
    // What serde_json escapes; names nearly never hold any, and then the
    // text goes as it is.
    if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buf, s);
    } else {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    }
}

fn write_f64(buf: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        let _ = serde_json::to_writer(&mut *buf, &v);
    } else if v.is_nan() {
        buf.extend_from_slice(b"NaN");
    } else if v > 0.0 {
        buf.extend_from_slice(b"Infinity");
    } else {
        buf.extend_from_slice(b"-Infinity");
    }
}

fn write_int(buf: &mut Vec<u8>, v: impl itoa::Integer) {
    buf.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// One cell as JSON. Types a reading cannot hold become `null`, which the
/// parser rejects with the reason that fits the field.
fn write_value(buf: &mut Vec<u8>, col: &dyn Array, row: usize) {
    if col.is_null(row) {
        buf.extend_from_slice(b"null");
        return;
    }
    match col.data_type() {
        DataType::Boolean => {
            let v = col.as_boolean().value(row);
            buf.extend_from_slice(if v { b"true" } else { b"false" });
        }
        DataType::Int8 => write_int(buf, col.as_primitive::<Int8Type>().value(row)),
        DataType::Int16 => write_int(buf, col.as_primitive::<Int16Type>().value(row)),
        DataType::Int32 => write_int(buf, col.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => write_int(buf, col.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => write_int(buf, col.as_primitive::<UInt8Type>().value(row)),
        DataType::UInt16 => write_int(buf, col.as_primitive::<UInt16Type>().value(row)),
        DataType::UInt32 => write_int(buf, col.as_primitive::<UInt32Type>().value(row)),
        DataType::UInt64 => write_int(buf, col.as_primitive::<UInt64Type>().value(row)),
        DataType::Float32 => {
            write_f64(buf, f64::from(col.as_primitive::<Float32Type>().value(row)))
        }
        DataType::Float64 => write_f64(buf, col.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => write_str(buf, col.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => write_str(buf, col.as_string::<i64>().value(row)),
        DataType::Utf8View => write_str(buf, col.as_string_view().value(row)),
        DataType::Timestamp(unit, _) => write_int(buf, timestamp_ms(col, *unit, row)),
        DataType::Date32 => write_int(
            buf,
            i64::from(col.as_primitive::<Date32Type>().value(row)) * 86_400_000,
        ),
        DataType::Date64 => write_int(buf, col.as_primitive::<Date64Type>().value(row)),
        DataType::Struct(fields) => {
            let s = col.as_struct();
            buf.push(b'{');
            for (i, (f, child)) in fields.iter().zip(s.columns()).enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                write_str(buf, f.name());
                buf.push(b':');
                write_value(buf, child.as_ref(), row);
            }
            buf.push(b'}');
        }
        DataType::Map(..) => {
            let m = col.as_map();
            let (from, to) = (
                m.value_offsets()[row] as usize,
                m.value_offsets()[row + 1] as usize,
            );
            let (keys, values) = (m.keys(), m.values());
            buf.push(b'{');
            for i in from..to {
                if i > from {
                    buf.push(b',');
                }
                // Keys must be strings in JSON: other key types are written as their JSON text, quoted.
                let mut key = Vec::new();
                write_value(&mut key, keys.as_ref(), i);
                match std::str::from_utf8(&key) {
                    Ok(k) if k.starts_with('"') => buf.extend_from_slice(&key),
                    Ok(k) => write_str(buf, k),
                    Err(_) => write_str(buf, ""),
                }
                buf.push(b':');
                write_value(buf, values.as_ref(), i);
            }
            buf.push(b'}');
        }
        _ => buf.extend_from_slice(b"null"),
    }
}

/// Division rounding half away from zero, like the JSON parser's unit conversions.
fn round_div(v: i64, d: i64) -> i64 {
    (v + v.signum() * d / 2) / d
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::builder::{Float64Builder, MapBuilder, StringBuilder};
    use arrow_array::{
        ArrayRef, Float64Array, Int64Array, LargeStringArray, StructArray,
        TimestampMicrosecondArray,
    };
    use arrow_schema::{Field, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    use super::*;
    use crate::job::RawRecord;
    use crate::reading::{ParseLimits, Reading, RejectReason, parse_record};

    fn parse(rec: &RawRecord) -> Result<Vec<Reading>, RejectReason> {
        let mut out = Vec::new();
        parse_record(&rec.value, &ParseLimits::default(), &mut out).map(|()| out)
    }

    fn write(path: &Path, batch: &RecordBatch, rows_per_group: usize) {
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(rows_per_group))
            .build();
        let mut w =
            ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), Some(props)).unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
    }

    fn read_all(path: &Path, shares: u32) -> Vec<(u64, RawRecord)> {
        let mut all: Vec<(u64, RawRecord)> = (0..shares)
            .flat_map(|s| {
                let err = InputError::default();
                parquet_share(path, s, shares, Arc::clone(&err))
                    .unwrap()
                    .records
                    .flat_map(|(ord, piece)| match piece {
                        Piece::Rows(rows) => (0..rows.len())
                            .map(|i| (ord + i as u64, rows.record(i)))
                            .collect::<Vec<_>>(),
                        Piece::Record(_) | Piece::Lines(_) => panic!("Parquet rows come as rows"),
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_by_key(|(ord, _)| *ord);
        all
    }

    /// A batch of the columns that matter, with every kind of trouble.
    fn troubled_batch(rows: &[(u8, u8, i64, f64, i64, bool)]) -> RecordBatch {
        use arrow_array::builder::{Int64Builder, TimestampMillisecondBuilder};
        let (mut device, mut sensor, mut value) = (
            StringBuilder::new(),
            StringBuilder::new(),
            Float64Builder::new(),
        );
        let (mut ts, mut seq, mut stamp) = (
            Int64Builder::new(),
            Int64Builder::new(),
            TimestampMillisecondBuilder::new(),
        );
        let mut extra = Float64Builder::new();
        for &(d, kind, t, v, q, null) in rows {
            match d % 6 {
                0 => device.append_null(),
                1 => device.append_value("bad|name"),
                _ => device.append_value(format!("dev-{d}")),
            }
            match kind % 4 {
                0 => sensor.append_null(),
                _ => sensor.append_value(["t", "h", "p"][usize::from(kind % 3)]),
            }
            if null {
                value.append_null()
            } else {
                value.append_value(v)
            }
            ts.append_value(t);
            seq.append_value(q);
            stamp.append_value(t);
            if kind % 5 == 0 {
                extra.append_null()
            } else {
                extra.append_value(v * 2.0)
            }
        }
        let cols: Vec<(&str, ArrayRef)> = vec![
            ("device_id", Arc::new(device.finish())),
            ("sensor", Arc::new(sensor.finish())),
            ("ts_ms", Arc::new(ts.finish())),
            ("value", Arc::new(value.finish())),
            ("seq", Arc::new(seq.finish())),
            ("extra", Arc::new(extra.finish())),
            ("time", Arc::new(stamp.finish())),
        ];
        RecordBatch::try_from_iter(cols).unwrap()
    }

    proptest::proptest! {
        /// The column reader answers only for rows the JSON parser accepts,
        /// and then with the same readings; it takes the plain ones.
        #[test]
        fn columns_read_rows_as_their_json_lines_parse(
            spec in proptest::collection::vec(
                (
                    0u8..12,
                    0u8..12,
                    proptest::prop_oneof![proptest::strategy::Just(1_700_000_000_000i64), 0i64..2_000_000_000_000_000, -5i64..5],
                    proptest::prop_oneof![-1e6f64..1e6, proptest::strategy::Just(f64::NAN), proptest::strategy::Just(f64::INFINITY), proptest::strategy::Just(0.1)],
                    -2i64..1_000,
                    proptest::bool::weighted(0.1),
                ),
                1..60,
            ),
        ) {
            let batch = troubled_batch(&spec);
            let limits = ParseLimits::default();
            let cols = crate::reading::Columns::of(&batch, &limits).unwrap();
            let rows = RowBatch { partition: 0, base: 0, batch: batch.clone() };
            let mut taken = 0;
            for i in 0..rows.len() {
                let mut ours = Vec::new();
                if cols.readings(i, &limits, &mut ours).is_some() {
                    taken += 1;
                    proptest::prop_assert_eq!(Ok(ours), parse(&rows.record(i)), "row {}", i);
                } else {
                    proptest::prop_assert!(ours.is_empty());
                }
            }
            let plain = (0..rows.len()).filter(|&i| parse(&rows.record(i)).is_ok()).count();
            proptest::prop_assert_eq!(taken, plain, "every row the parser accepts is read from its columns");
        }
    }

    proptest::proptest! {
        #[test]
        fn strings_and_integers_are_written_as_serde_json_writes_them(
            text in "(\\PC|[\"\\\\\u{0}-\u{1f}\u{7f}])*",
            int in proptest::num::i64::ANY,
            uint in proptest::num::u64::ANY,
        ) {
            let mut ours = Vec::new();
            write_str(&mut ours, &text);
            write_int(&mut ours, int);
            write_int(&mut ours, uint);
            let mut theirs = serde_json::to_vec(&text).unwrap();
            theirs.extend_from_slice(int.to_string().as_bytes());
            theirs.extend_from_slice(uint.to_string().as_bytes());
            proptest::prop_assert_eq!(ours, theirs);
        }
    }

    /// The peers' long format: one reading per row, large strings, ms integers.
    #[test]
    fn long_rows_parse_like_their_json_and_shares_split_every_group_exactly_once() {
        let n = 1000;
        let schema = Arc::new(Schema::new(vec![
            Field::new("device_id", DataType::LargeUtf8, false),
            Field::new("sensor", DataType::LargeUtf8, false),
            Field::new("ts_ms", DataType::Int64, false),
            Field::new("value", DataType::Float64, true),
            Field::new("seq", DataType::Int64, false),
        ]));
        let cols: Vec<ArrayRef> = vec![
            Arc::new(LargeStringArray::from_iter_values(
                (0..n).map(|i| format!("dev-{}", i % 7)),
            )),
            Arc::new(LargeStringArray::from_iter_values(
                (0..n).map(|i| ["t", "h"][i % 2]),
            )),
            Arc::new(Int64Array::from_iter_values(
                (0..n).map(|i| 1_700_000_000_000 + i as i64),
            )),
            Arc::new(Float64Array::from_iter((0..n).map(|i| match i {
                5 => None,
                6 => Some(f64::NAN),
                _ => Some(i as f64 / 4.0),
            }))),
            Arc::new(Int64Array::from_iter_values(0..n as i64)),
        ];
        let batch = RecordBatch::try_new(schema, cols).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long.parquet");
        write(&path, &batch, 300);
        let one = read_all(&path, 1);
        assert_eq!(one.len(), n);
        // Row groups of 300 rows are epochs 0..=3.
        let epochs: Vec<u64> = one.iter().map(|(o, _)| o / GROUP_STRIDE).collect();
        assert_eq!((epochs[299], epochs[300], epochs[999]), (0, 1, 3));
        for shares in [2, 3] {
            let split = read_all(&path, shares);
            assert_eq!(
                split
                    .iter()
                    .map(|(o, r)| (*o, r.offset, r.value.clone()))
                    .collect::<Vec<_>>(),
                one.iter()
                    .map(|(o, r)| (*o, r.offset, r.value.clone()))
                    .collect::<Vec<_>>(),
            );
        }
        assert_eq!(one[7].1.offset, 7);
        let r = parse(&one[7].1).unwrap();
        assert_eq!(
            (
                r[0].device_id.as_str(),
                r[0].metric.as_str(),
                r[0].ts_ms,
                r[0].value,
                r[0].seq
            ),
            ("dev-0", "h", 1_700_000_000_007, 1.75, Some(7))
        );
        assert_eq!(parse(&one[5].1), Err(RejectReason::NonNumericValue));
        assert_eq!(parse(&one[6].1), Err(RejectReason::NonFiniteValue));
    }

    /// Canonical (metrics as a struct) and flat-with-map shapes, real timestamp types.
    #[test]
    fn struct_and_map_metrics_and_timestamp_columns() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("device_id", DataType::Utf8, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new(
                "metrics",
                DataType::Struct(
                    vec![
                        Field::new("temperature", DataType::Float64, true),
                        Field::new("humidity", DataType::Float64, true),
                    ]
                    .into(),
                ),
                false,
            ),
        ]));
        let metrics = StructArray::from(vec![
            (
                Arc::new(Field::new("temperature", DataType::Float64, true)),
                Arc::new(Float64Array::from(vec![21.5, 22.0])) as ArrayRef,
            ),
            (
                Arc::new(Field::new("humidity", DataType::Float64, true)),
                Arc::new(Float64Array::from(vec![40.0, 41.0])) as ArrayRef,
            ),
        ]);
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(arrow_array::StringArray::from(vec!["a", "b"])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![
                        1_700_000_000_123_400,
                        1_700_000_000_123_600,
                    ])
                    .with_timezone("UTC"),
                ),
                Arc::new(metrics),
            ],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("canonical.parquet");
        write(&path, &batch, 1024);
        let rows = read_all(&path, 1);
        let a = parse(&rows[0].1).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(
            (a[0].metric.as_str(), a[0].value, a[0].ts_ms),
            ("temperature", 21.5, 1_700_000_000_123)
        );
        // Microseconds round half away from zero, like JSON input.
        assert_eq!(parse(&rows[1].1).unwrap()[1].ts_ms, 1_700_000_000_124);

        let mut map = MapBuilder::new(None, StringBuilder::new(), Float64Builder::new());
        map.keys().append_value("pressure");
        map.values().append_value(1013.0);
        map.append(true).unwrap();
        let batch = RecordBatch::try_from_iter(vec![
            (
                "device_id",
                Arc::new(arrow_array::StringArray::from(vec!["c"])) as ArrayRef,
            ),
            (
                "timestamp",
                Arc::new(Float64Array::from(vec![1_763_787_600.5])) as ArrayRef,
            ),
            ("metrics", Arc::new(map.finish()) as ArrayRef),
        ])
        .unwrap();
        let path = dir.path().join("map.parquet");
        write(&path, &batch, 1024);
        let rows = read_all(&path, 1);
        let c = parse(&rows[0].1).unwrap();
        assert_eq!(
            (c[0].metric.as_str(), c[0].value, c[0].ts_ms),
            ("pressure", 1013.0, 1_763_787_600_500)
        );
    }

    #[test]
    fn a_file_that_is_not_parquet_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        std::fs::write(&path, b"{\"not\":\"parquet\"}\n").unwrap();
        assert!(matches!(
            parquet_share(&path, 0, 1, InputError::default()),
            Err(ParquetInputError::Parquet(_))
        ));
    }
}
