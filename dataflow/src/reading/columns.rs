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

use super::{Field, ParseLimits, RawRecord, Reading, Scalar};
use crate::parquet_file::{json_key, timestamp_ms};

/// A batch's columns, ready to read rows from.
#[derive(Debug)]
pub struct Columns<'a> {
    cols: Vec<Column<'a>>,
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
}

impl<'a> Cells<'a> {
    /// Whether the cell is null (JSON `null`).
    pub(super) fn is_null(&self, row: usize) -> bool {
        match self {
            Cells::Any(a) => a.is_null(row),
            Cells::Int64(a) => a.is_null(row),
            Cells::Float64(a) => a.is_null(row),
            Cells::Utf8(a) => a.is_null(row),
        }
    }

    fn of(array: &'a dyn Array) -> Self {
        match array.data_type() {
            DataType::Int64 => Cells::Int64(array.as_primitive::<Int64Type>()),
            DataType::Float64 => Cells::Float64(array.as_primitive::<Float64Type>()),
            DataType::Utf8 => Cells::Utf8(array.as_string::<i32>()),
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
            _ => Some(Scalar::Other),
        }
    }
}

/// Widest rendering of one non-text cell: `-1.7976931348623157e308`.
const NUMBER_WIDTH: usize = 24;

/// A batch's columns as (JSON key, cells): `None` when a row must be
/// rendered (nested or other columns, or rows whose rendering could pass the
/// size limit).
pub(super) fn plain_cells<'a>(
    batch: &'a RecordBatch,
    limits: &ParseLimits,
) -> Option<Vec<(&'a str, Cells<'a>)>> {
    let schema = batch.schema_ref();
    let mut width = 2usize;
    let mut cols = Vec::with_capacity(schema.fields().len());
    for (f, array) in schema.fields().iter().zip(batch.columns()) {
        let plain = match array.data_type() {
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
            DataType::Utf8 => Some(6 * longest(array.as_string::<i32>().iter())),
            DataType::LargeUtf8 => Some(6 * longest(array.as_string::<i64>().iter())),
            _ => None,
        }?;
        let key = json_key(f.name(), array.data_type());
        width += 6 * key.len() + 4 + plain;
        cols.push((key, Cells::of(array.as_ref())));
    }
    (width <= limits.max_bytes).then_some(cols)
}

impl<'a> Columns<'a> {
    /// `None` when the batch's rows must be rendered ([`plain_cells`]).
    pub fn of(batch: &'a RecordBatch, limits: &ParseLimits) -> Option<Self> {
        let mut cols = Vec::new();
        for (key, cells) in plain_cells(batch, limits)? {
            let field = Field::of(key);
            if field == Field::Metrics {
                // A `metrics` column that is not an object: the parser's verdict.
                return None;
            }
            cols.push(Column { key, field, cells });
        }
        Some(Self { cols })
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

fn longest<'s>(values: impl Iterator<Item = Option<&'s str>>) -> usize {
    values.map(|v| v.map_or(4, str::len)).max().unwrap_or(0)
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
