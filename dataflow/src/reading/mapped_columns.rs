//! Arrow rows read through a job file's input mapping without rendering
//! them as JSON: each role of the mapping (device, time, seq, metrics,
//! dimensions) is resolved to a column once per batch (a dotted path to a
//! leaf of struct columns), and a row's cells become the [`Scalar`]s
//! [`super::mapped`] would have read from its rendering, validated by the
//! same [`RawRecord::into_readings`].
//!
//! ```text
//!   RecordBatch + InputMapping ──MappedColumns::of (per batch: roles → columns;
//!       a struct with nulls on a path, a map or list column, a duplicate key? None)──▶
//!     row ──finite floats? dimensions, RawRecord──into_readings──▶ [Reading] + Dims   accepted
//!                                                            └─▶ None: render the row, parse it
//! ```
//!
//! Like [`super::Columns`] it answers only for rows it accepts; anything
//! else (a refused row, a non-finite float anywhere in it, an invalid
//! dimension) is rendered and parsed, which decides the reason. The
//! property test (`tests.rs`) holds it to that.

use std::borrow::Cow;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use compact_str::CompactString;
use iotflow_jobfile::{FieldPath, Mapping, MetricField, MetricFields, Preset, TimeUnit};

use super::columns::{Cells, plain_cells};
use super::mapped::ts_key;
use super::{Dims, Field, InputMapping, ParseLimits, RawRecord, Reading, Scalar, valid_name};

/// A batch's columns with the mapping's roles resolved.
#[derive(Debug)]
pub struct MappedColumns<'a> {
    keys: Vec<&'a str>,
    cells: Vec<Cells<'a>>,
    /// Per dimension, its column (none: always missing).
    dims: Vec<Option<usize>>,
    roles: Roles,
    /// Every float column, nested ones too, with the structs around it: a
    /// non-finite value anywhere a row renders makes the rendering fail to
    /// parse, read or not (a null struct renders none of its fields).
    floats: Vec<(&'a dyn Array, Vec<&'a dyn Array>)>,
}

#[derive(Debug)]
enum Roles {
    /// Today's shapes over the columns that are not dimensions.
    Preset(Preset, Vec<(usize, Field)>),
    Fields {
        device: Option<usize>,
        time: Option<usize>,
        unit: TimeUnit,
        seq: Option<usize>,
        metrics: Metrics,
    },
}

#[derive(Debug)]
enum Metrics {
    /// (reading's metric name, column), in the order listed.
    Listed(Vec<usize>),
    Long {
        name: Option<usize>,
        value: Option<usize>,
    },
    /// Every column that is neither a dimension nor device, time or seq.
    EveryOther(Vec<usize>),
}

/// Resolves the mapping's paths to columns: a top-level column, or a leaf
/// of struct columns (appended as a column of its own).
struct Resolver<'a> {
    keys: Vec<&'a str>,
    cells: Vec<Cells<'a>>,
    arrays: &'a [ArrayRef],
    /// How many of `keys` are top-level columns.
    top: usize,
    /// Leaves resolved so far, by path: one path, one column.
    leaves: Vec<(&'a [String], usize)>,
}

impl<'a> Resolver<'a> {
    /// The column at `path`: `Some(None)` when the record has no such field
    /// (as the parser would find it absent); `None` when the batch must be
    /// rendered (a struct on the way holds nulls, the leaf is not plain).
    fn column(&mut self, path: &'a FieldPath) -> Option<Option<usize>> {
        let (first, rest) = path.0.split_first()?;
        let Some(top) = self.keys[..self.top].iter().position(|k| k == first) else {
            return Some(None);
        };
        if rest.is_empty() {
            return Some(Some(top));
        }
        if let Some(&(_, i)) = self.leaves.iter().find(|(p, _)| *p == path.0.as_slice()) {
            return Some(Some(i));
        }
        let mut array: &'a dyn Array = self.arrays[top].as_ref();
        for segment in rest {
            // A null object hides its fields: the parser decides such rows.
            if array.null_count() > 0 {
                return None;
            }
            let DataType::Struct(fields) = array.data_type() else {
                return Some(None);
            };
            let mut named = fields
                .iter()
                .enumerate()
                .filter(|(_, f)| f.name() == segment);
            let Some((i, _)) = named.next() else {
                return Some(None);
            };
            if named.next().is_some() {
                return None;
            }
            array = array.as_struct().column(i).as_ref();
        }
        // An object where a value should be: what it means depends on the role.
        if matches!(array.data_type(), DataType::Struct(_)) {
            return None;
        }
        let leaf = self.keys.len();
        self.keys.push(path.last());
        self.cells.push(Cells::of(array));
        self.leaves.push((path.0.as_slice(), leaf));
        Some(Some(leaf))
    }
}

impl<'a> MappedColumns<'a> {
    /// `None` when the batch's rows must be rendered: plain and struct
    /// columns only ([`plain_cells`]), no two with one key, no nulls in a
    /// struct a path goes through.
    pub fn of(
        batch: &'a RecordBatch,
        input: &'a InputMapping,
        limits: &ParseLimits,
    ) -> Option<Self> {
        let (mapping, dimensions) = input.parts()?;
        let (keys, cells): (Vec<&str>, Vec<Cells<'_>>) =
            plain_cells(batch, limits, true)?.into_iter().unzip();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return None;
        }
        let top = keys.len();
        let is_struct = |i: usize| matches!(batch.column(i).data_type(), DataType::Struct(_));
        let mut r = Resolver {
            keys,
            cells,
            arrays: batch.columns(),
            top,
            leaves: Vec::new(),
        };
        let dims: Vec<Option<usize>> = dimensions
            .iter()
            .map(|p| r.column(p))
            .collect::<Option<_>>()?;
        let is_dim = |i: usize| dims.contains(&Some(i));
        let roles = match mapping {
            Mapping::Preset(preset) => {
                let mut cols = Vec::new();
                for i in (0..top).filter(|&i| !is_dim(i)) {
                    let field = Field::of(r.keys[i]);
                    if field == Field::Metrics {
                        return None;
                    }
                    cols.push((i, field));
                }
                Roles::Preset(*preset, cols)
            }
            Mapping::Fields(f) => {
                let (device, time) = (r.column(&f.device)?, r.column(&f.time)?);
                let seq = match &f.seq {
                    Some(p) => r.column(p)?,
                    None => None,
                };
                let named = [device, time, seq];
                let metrics = match &f.metrics {
                    MetricFields::Listed(listed) => Metrics::Listed(
                        listed
                            .iter()
                            .map(|m| match m {
                                MetricField::One(p) => r.column(p),
                                MetricField::EveryIn(_) => None,
                            })
                            .collect::<Option<Vec<_>>>()?
                            .into_iter()
                            .flatten()
                            .collect(),
                    ),
                    MetricFields::Long { name, value } => Metrics::Long {
                        name: r.column(name)?,
                        value: r.column(value)?,
                    },
                    MetricFields::EveryOtherNumeric => {
                        // Top-level numbers only: an object is no metric.
                        let mut every: Vec<usize> = (0..top)
                            .filter(|&i| !is_dim(i) && !named.contains(&Some(i)) && !is_struct(i))
                            .collect();
                        // In the order the parsed object holds its keys.
                        every.sort_unstable_by_key(|&i| r.keys[i]);
                        Metrics::EveryOther(every)
                    }
                };
                // A dimension is taken out of the record before any field is read.
                let read = match &metrics {
                    Metrics::Listed(cols) => cols.clone(),
                    Metrics::Long { name, value } => name.iter().chain(value).copied().collect(),
                    Metrics::EveryOther(_) => Vec::new(),
                };
                if named.iter().flatten().chain(&read).any(|&i| is_dim(i)) {
                    return None;
                }
                Roles::Fields {
                    device,
                    time,
                    unit: f.time_unit,
                    seq,
                    metrics,
                }
            }
        };
        let mut floats = Vec::new();
        batch
            .columns()
            .iter()
            .for_each(|c| float_leaves(c.as_ref(), &mut Vec::new(), &mut floats));
        Some(Self {
            keys: r.keys,
            cells: r.cells,
            dims,
            roles,
            floats,
        })
    }

    /// Row `row`'s readings, appended to `out`, and its dimensions into
    /// `dims`, if the mapped JSON parser would accept it; `None` (nothing
    /// appended) otherwise.
    pub fn readings(
        &self,
        row: usize,
        limits: &ParseLimits,
        out: &mut Vec<Reading>,
        dims: &mut Dims,
    ) -> Option<()> {
        let finite = |(a, around): &(&dyn Array, Vec<&dyn Array>)| {
            a.is_null(row)
                || around.iter().any(|s| s.is_null(row))
                || match a.data_type() {
                    DataType::Float64 => a.as_primitive::<Float64Type>().value(row).is_finite(),
                    _ => a.as_primitive::<Float32Type>().value(row).is_finite(),
                }
        };
        if !self.floats.iter().all(finite) {
            return None;
        }
        dims.clear();
        for d in &self.dims {
            dims.push(self.dimension(*d, row, limits)?);
        }
        let cell = |i: usize| self.cells[i].scalar(row);
        // An absent column is an absent field; `None` still means "render it".
        let at = |c: Option<usize>| match c {
            None => Some(None),
            Some(i) => cell(i).map(Some),
        };
        let mut raw = RawRecord::default();
        match &self.roles {
            Roles::Preset(preset, cols) => {
                for &(i, field) in cols {
                    raw.set_field(field, Cow::Borrowed(self.keys[i]), cell(i)?);
                }
                let fits = match preset {
                    Preset::Auto => true,
                    Preset::Canonical => false,
                    Preset::Long => raw.value.is_some(),
                    Preset::Flat => raw.value.is_none(),
                };
                if !fits {
                    return None;
                }
            }
            Roles::Fields {
                device,
                time,
                unit,
                seq,
                metrics,
            } => {
                raw.device_id = at(*device)?;
                raw.ts = at(*time)?.map(|t| (ts_key(*unit), t));
                raw.seq = at(*seq)?;
                match metrics {
                    Metrics::Listed(cols) => {
                        for &i in cols.iter().filter(|&&i| !self.cells[i].is_null(row)) {
                            raw.metrics.push((Cow::Borrowed(self.keys[i]), cell(i)?));
                        }
                    }
                    Metrics::Long { name, value } => {
                        raw.metric_name = at(*name)?;
                        raw.value = Some(at(*value)??);
                    }
                    Metrics::EveryOther(cols) => {
                        for &i in cols {
                            let v = cell(i)?;
                            if matches!(v, Scalar::Int(_) | Scalar::Num(_)) {
                                raw.metrics.push((Cow::Borrowed(self.keys[i]), v));
                            }
                        }
                    }
                }
            }
        }
        raw.into_readings(limits, out).ok()
    }

    /// A dimension's value as [`super::mapped`] takes it: text or an
    /// integer, anything else missing; an invalid one is the parser's to refuse.
    fn dimension(
        &self,
        column: Option<usize>,
        row: usize,
        limits: &ParseLimits,
    ) -> Option<Option<CompactString>> {
        let Some(i) = column else {
            return Some(None);
        };
        let value = match self.cells[i].scalar(row)? {
            Scalar::Str(s) => CompactString::from(s.as_ref()),
            Scalar::Int(n) => CompactString::from(n.to_string()),
            _ => return Some(None),
        };
        valid_name(&value, limits.max_id_len).then_some(Some(value))
    }
}

/// The float arrays of `array`, itself or within its structs, each with
/// the structs around it (`around`: those around `array`).
fn float_leaves<'a>(
    array: &'a dyn Array,
    around: &mut Vec<&'a dyn Array>,
    out: &mut Vec<(&'a dyn Array, Vec<&'a dyn Array>)>,
) {
    match array.data_type() {
        DataType::Float64 | DataType::Float32 => out.push((array, around.clone())),
        DataType::Struct(_) => {
            around.push(array);
            for c in array.as_struct().columns() {
                float_leaves(c.as_ref(), around, out);
            }
            around.pop();
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
