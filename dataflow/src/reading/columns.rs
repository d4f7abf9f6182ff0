//! Arrow rows read as records without rendering them as JSON: each cell
//! becomes the [`Scalar`] the JSON parser would have read from its rendering
//! (`parquet_file`), set under the same key with the same field rules, and
//! validated by the same [`RawRecord::into_readings`].
//!
//! ```text
//!   RecordBatch ──Columns::of (per batch: keys, kinds; nested or too wide? None)──▶
//!     row ──cells as Scalars──▶ RawRecord ──into_readings──▶ [Reading]   accepted
//!                                                        └─▶ None: render the row, parse it
//! ```
//!
//! It answers only for rows it accepts; for anything else (a rejected row, a
//! null, a non-finite float) the row is rendered and parsed as JSON, which
//! decides the reason. The property test in `parquet_file` holds it to that.

use std::borrow::Cow;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;

use super::{
    Field, ParseLimits, PlainRecord, RawRecord, Reading, Scalar, TsKey, int_to_ms, valid_name,
};
use crate::parquet_file::{json_key, timestamp_ms};

/// A batch's columns, ready to read rows from.
#[derive(Debug)]
pub struct Columns<'a> {
    cols: Vec<Column<'a>>,
    /// Set when the columns are exactly the long shape's, plainly typed.
    long: Option<Long>,
}

/// Where the long shape's fields are: `device_id`, `sensor`/`metric` (text),
/// a time (Int64), `value` (Float64) and an optional `seq` (Int64). Its rows
/// are read straight into a [`PlainRecord`], without a [`RawRecord`].
#[derive(Debug, Clone, Copy)]
struct Long {
    device: usize,
    metric: usize,
    ts: (usize, TsKey),
    value: usize,
    seq: Option<usize>,
}

#[derive(Debug)]
struct Column<'a> {
    key: &'a str,
    field: Field,
    cells: Cells<'a>,
}

/// A column's cells, its type resolved once per batch: reading a cell is an
/// index, not a downcast.
#[derive(Debug)]
pub(super) enum Cells<'a> {
    /// Read through [`cell`] (rare types).
    Any(&'a dyn Array),
    Int64(&'a arrow_array::Int64Array),
    Float64(&'a arrow_array::Float64Array),
    Utf8(&'a arrow_array::StringArray),
    LargeUtf8(&'a arrow_array::LargeStringArray),
}

impl<'a> Cells<'a> {
    /// Whether the cell is null (JSON `null`).
    pub(super) fn is_null(&self, row: usize) -> bool {
        match self {
            Cells::Any(a) => a.is_null(row),
            Cells::Int64(a) => a.is_null(row),
            Cells::Float64(a) => a.is_null(row),
            Cells::Utf8(a) => a.is_null(row),
            Cells::LargeUtf8(a) => a.is_null(row),
        }
    }

    pub(super) fn of(array: &'a dyn Array) -> Self {
        match array.data_type() {
            DataType::Int64 => Cells::Int64(array.as_primitive::<Int64Type>()),
            DataType::Float64 => Cells::Float64(array.as_primitive::<Float64Type>()),
            DataType::Utf8 => Cells::Utf8(array.as_string::<i32>()),
            DataType::LargeUtf8 => Cells::LargeUtf8(array.as_string::<i64>()),
            _ => Cells::Any(array),
        }
    }

    /// The cell as the parser reads its rendering; `None` for cells the
    /// JSON path must judge.
    pub(super) fn scalar(&self, row: usize) -> Option<Scalar<'a>> {
        match self {
            Cells::Any(a) => cell(*a, row),
            Cells::Int64(a) if a.is_valid(row) => Some(Scalar::Int(a.value(row).into())),
            Cells::Float64(a) if a.is_valid(row) => float(a.value(row)),
            Cells::Utf8(a) if a.is_valid(row) => Some(Scalar::Str(Cow::Borrowed(a.value(row)))),
            Cells::LargeUtf8(a) if a.is_valid(row) => {
                Some(Scalar::Str(Cow::Borrowed(a.value(row))))
            }
            _ => Some(Scalar::Other),
        }
    }
}

/// Widest rendering of one non-text cell: `-1.7976931348623157e308`.
const NUMBER_WIDTH: usize = 24;

/// A batch's columns as (JSON key, cells): `None` when a row must be
/// rendered (nested or other columns, or rows whose rendering could pass the
/// size limit). With `structs`, struct columns of such columns are taken
/// too (as [`Cells::Any`]: a path into them is resolved by the caller).
pub(super) fn plain_cells<'a>(
    batch: &'a RecordBatch,
    limits: &ParseLimits,
    structs: bool,
) -> Option<Vec<(&'a str, Cells<'a>)>> {
    let schema = batch.schema_ref();
    let mut width = 2usize;
    let mut cols = Vec::with_capacity(schema.fields().len());
    for (f, array) in schema.fields().iter().zip(batch.columns()) {
        let key = json_key(f.name(), array.data_type());
        width += 6 * key.len() + 4 + rendered_width(array.as_ref(), structs)?;
        cols.push((key, Cells::of(array.as_ref())));
    }
    (width <= limits.max_bytes).then_some(cols)
}

/// The widest rendering of any cell of `array`; `None` for types rows are
/// not read from.
fn rendered_width(array: &dyn Array, structs: bool) -> Option<usize> {
    match array.data_type() {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Float32
        | DataType::Float64
        | DataType::Boolean
        | DataType::Timestamp(..)
        | DataType::Date32
        | DataType::Date64 => Some(NUMBER_WIDTH),
        // Escaping can make a character six bytes.
        DataType::Utf8 => Some(6 * longest(array, array.as_string::<i32>().value_offsets())),
        DataType::LargeUtf8 => Some(6 * longest(array, array.as_string::<i64>().value_offsets())),
        DataType::Struct(fields) if structs => {
            let children = array.as_struct().columns();
            fields.iter().zip(children).try_fold(2, |w, (f, child)| {
                Some(w + 6 * f.name().len() + 4 + rendered_width(child.as_ref(), true)?)
            })
        }
        _ => None,
    }
}

impl<'a> Columns<'a> {
    /// `None` when the batch's rows must be rendered ([`plain_cells`]).
    pub fn of(batch: &'a RecordBatch, limits: &ParseLimits) -> Option<Self> {
        let mut cols = Vec::new();
        for (key, cells) in plain_cells(batch, limits, false)? {
            let field = Field::of(key);
            if field == Field::Metrics {
                // A `metrics` column that is not an object: the parser's verdict.
                return None;
            }
            cols.push(Column { key, field, cells });
        }
        let long = Long::of(&cols);
        Some(Self { cols, long })
    }

    /// Row `row` of a long-shaped batch as the fast path's record, if the
    /// JSON parser would accept it with one reading; `None` otherwise (and
    /// for any other batch): [`Self::readings`] then decides.
    pub fn plain_row(&self, row: usize, limits: &ParseLimits) -> Option<PlainRecord<'a>> {
        let l = self.long?;
        let text = |i: usize| match &self.cols[i].cells {
            Cells::Utf8(a) if a.is_valid(row) => Some(a.value(row)),
            Cells::LargeUtf8(a) if a.is_valid(row) => Some(a.value(row)),
            _ => None,
        };
        let int = |i: usize| match &self.cols[i].cells {
            Cells::Int64(a) if a.is_valid(row) => Some(a.value(row)),
            _ => None,
        };
        let (device, metric) = (text(l.device)?, text(l.metric)?);
        if !valid_name(device, limits.max_id_len) || !valid_name(metric, limits.max_id_len) {
            return None;
        }
        let ts_ms = i64::try_from(int_to_ms(l.ts.1, int(l.ts.0)?.into())).ok()?;
        if ts_ms < limits.min_ts_ms || ts_ms >= limits.max_ts_ms {
            return None;
        }
        let value = match &self.cols[l.value].cells {
            Cells::Float64(a) if a.is_valid(row) => a.value(row),
            _ => return None,
        };
        let seq = match l.seq {
            Some(i) => Some(u64::try_from(int(i)?).ok()?),
            None => None,
        };
        value
            .is_finite()
            .then(|| PlainRecord::long(device, ts_ms, seq, metric, value))
    }

    /// Row `row`'s readings, appended to `out`, if the JSON parser would
    /// accept it; `None` (nothing appended) otherwise.
    pub fn readings(&self, row: usize, limits: &ParseLimits, out: &mut Vec<Reading>) -> Option<()> {
        let mut raw = RawRecord::default();
        for c in &self.cols {
            raw.set_field(c.field, Cow::Borrowed(c.key), c.cells.scalar(row)?);
        }
        raw.into_readings(limits, out).ok()
    }
}

impl Long {
    /// The long layout of `cols`, if that is what they are: each of its
    /// fields once, nothing else.
    fn of(cols: &[Column<'_>]) -> Option<Self> {
        let (mut device, mut metric, mut ts, mut value, mut seq) = (None, None, None, None, None);
        for (i, c) in cols.iter().enumerate() {
            let text = matches!(c.cells, Cells::Utf8(_) | Cells::LargeUtf8(_));
            let int = matches!(c.cells, Cells::Int64(_));
            let slot = match c.field {
                Field::DeviceId if text => &mut device,
                Field::MetricName if text => &mut metric,
                Field::Ts(key) if int => {
                    ts.replace((i, key)).map_or(Some(()), |_| None)?;
                    continue;
                }
                Field::Value if matches!(c.cells, Cells::Float64(_)) => &mut value,
                Field::Seq if int => &mut seq,
                _ => return None,
            };
            slot.replace(i).map_or(Some(()), |_| None)?;
        }
        Some(Self {
            device: device?,
            metric: metric?,
            ts: ts?,
            value: value?,
            seq,
        })
    }
}

/// The longest rendering of a text array's values (a null is `null`), from
/// its offsets: no pass over the text.
fn longest<O: arrow_array::OffsetSizeTrait>(array: &dyn Array, offsets: &[O]) -> usize {
    let text = offsets
        .windows(2)
        .map(|w| (w[1] - w[0]).as_usize())
        .max()
        .unwrap_or(0);
    text.max(if array.null_count() > 0 { 4 } else { 0 })
}

/// The scalar the parser reads from a cell's rendering; `None` for cells
/// the JSON path must judge (a bare `NaN` fails the whole record).
fn cell<'a>(col: &'a dyn Array, row: usize) -> Option<Scalar<'a>> {
    if col.is_null(row) {
        return Some(Scalar::Other);
    }
    let int = |v: i128| Some(Scalar::Int(v));
    match col.data_type() {
        DataType::Boolean => Some(Scalar::Other),
        DataType::Int8 => int(col.as_primitive::<Int8Type>().value(row).into()),
        DataType::Int16 => int(col.as_primitive::<Int16Type>().value(row).into()),
        DataType::Int32 => int(col.as_primitive::<Int32Type>().value(row).into()),
        DataType::Int64 => int(col.as_primitive::<Int64Type>().value(row).into()),
        DataType::UInt8 => int(col.as_primitive::<UInt8Type>().value(row).into()),
        DataType::UInt16 => int(col.as_primitive::<UInt16Type>().value(row).into()),
        DataType::UInt32 => int(col.as_primitive::<UInt32Type>().value(row).into()),
        DataType::UInt64 => int(col.as_primitive::<UInt64Type>().value(row).into()),
        DataType::Float32 => float(f64::from(col.as_primitive::<Float32Type>().value(row))),
        DataType::Float64 => float(col.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => Some(Scalar::Str(Cow::Borrowed(
            col.as_string::<i32>().value(row),
        ))),
        DataType::LargeUtf8 => Some(Scalar::Str(Cow::Borrowed(
            col.as_string::<i64>().value(row),
        ))),
        DataType::Timestamp(unit, _) => int(timestamp_ms(col, *unit, row).into()),
        DataType::Date32 => {
            int(i128::from(col.as_primitive::<Date32Type>().value(row)) * 86_400_000)
        }
        DataType::Date64 => int(col.as_primitive::<Date64Type>().value(row).into()),
        _ => None,
    }
}

/// A finite float as the parser reads its shortest rendering (exactly: the
/// parser rounds correctly); JSON has no non-finite numbers.
fn float<'a>(v: f64) -> Option<Scalar<'a>> {
    v.is_finite().then_some(Scalar::Num(v))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::builder::{Float64Builder, Int64Builder, LargeStringBuilder};
    use arrow_array::{ArrayRef, RecordBatch};
    use proptest::prelude::*;

    use super::*;
    use crate::parquet_file::RowBatch;
    use crate::reading::parse_record;

    /// The peers' long layout with every kind of trouble in its cells.
    fn long_batch(rows: &[(u8, u8, i64, f64, i64)], time_key: &str) -> RecordBatch {
        let (mut device, mut sensor) = (LargeStringBuilder::new(), LargeStringBuilder::new());
        let (mut ts, mut value, mut seq) = (
            Int64Builder::new(),
            Float64Builder::new(),
            Int64Builder::new(),
        );
        for &(d, k, t, v, q) in rows {
            match d % 8 {
                0 => device.append_null(),
                1 => device.append_value("bad|name"),
                2 => device.append_value(""),
                _ => device.append_value(format!("dev-{d}")),
            }
            match k % 6 {
                0 => sensor.append_null(),
                1 => sensor.append_value("x\u{1}y"),
                _ => sensor.append_value(["t", "h", "p"][usize::from(k % 3)]),
            }
            if k % 7 == 0 {
                ts.append_null()
            } else {
                ts.append_value(t)
            }
            if k % 11 == 0 {
                value.append_null()
            } else {
                value.append_value(v)
            }
            if d % 13 == 0 {
                seq.append_null()
            } else {
                seq.append_value(q)
            }
        }
        let cols: Vec<(&str, ArrayRef)> = vec![
            ("device_id", Arc::new(device.finish())),
            ("sensor", Arc::new(sensor.finish())),
            (time_key, Arc::new(ts.finish())),
            ("value", Arc::new(value.finish())),
            ("seq", Arc::new(seq.finish())),
        ];
        RecordBatch::try_from_iter(cols).unwrap()
    }

    proptest! {
        /// The long fast path answers only for rows the JSON parser accepts,
        /// with the same reading, and for every one of them.
        #[test]
        fn long_rows_read_as_their_json_lines_parse(
            spec in prop::collection::vec(
                (
                    0u8..40,
                    0u8..40,
                    prop_oneof![Just(1_700_000_000_000i64), 0i64..2_000_000_000_000_000, -5i64..5, Just(1_700_000_000)],
                    prop_oneof![-1e6f64..1e6, Just(f64::NAN), Just(f64::NEG_INFINITY), Just(3.0)],
                    -3i64..1_000,
                ),
                1..60,
            ),
            time_key in prop_oneof![Just("ts_ms"), Just("ts"), Just("timestamp")],
        ) {
            let batch = long_batch(&spec, time_key);
            let limits = ParseLimits::default();
            let cols = Columns::of(&batch, &limits).unwrap();
            let rows = RowBatch { partition: 0, base: 0, batch: batch.clone() };
            for i in 0..rows.len() {
                let mut theirs = Vec::new();
                let parsed = parse_record(&rows.record(i).value, &limits, &mut theirs);
                match cols.plain_row(i, &limits) {
                    Some(p) => {
                        prop_assert_eq!(parsed, Ok(()), "row {}", i);
                        let ours: Vec<Reading> = p
                            .metrics()
                            .iter()
                            .map(|&(metric, value)| Reading {
                                device_id: p.device_id.into(),
                                metric: metric.into(),
                                ts_ms: p.ts_ms,
                                value,
                                seq: p.seq,
                            })
                            .collect();
                        prop_assert_eq!(ours, theirs, "row {}", i);
                    }
                    None => prop_assert!(parsed.is_err(), "row {}: the parser took it", i),
                }
            }
        }
    }

    #[test]
    fn only_the_long_layout_takes_the_fast_path() {
        let limits = ParseLimits::default();
        let row = [(5u8, 2u8, 1_700_000_000_000i64, 1.5f64, 1i64)];
        let long = long_batch(&row, "ts_ms");
        assert!(
            Columns::of(&long, &limits)
                .unwrap()
                .plain_row(0, &limits)
                .is_some()
        );
        // One more column: the general path.
        let extra: ArrayRef = Arc::new(arrow_array::Float64Array::from(vec![2.0]));
        let mut cols: Vec<(String, ArrayRef)> = long
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .zip(long.columns().iter().cloned())
            .collect();
        cols.push(("extra".into(), extra));
        let wider = RecordBatch::try_from_iter(cols).unwrap();
        assert!(
            Columns::of(&wider, &limits)
                .unwrap()
                .plain_row(0, &limits)
                .is_none()
        );
    }
}
