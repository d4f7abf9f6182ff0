//! Arrow rows read through a job file's input mapping without rendering
//! them as JSON: each role of the mapping (device, time, seq, metrics,
//! dimensions) is resolved to a column once per batch, and a row's cells
//! become the [`Scalar`]s [`super::mapped`] would have read from its
//! rendering, validated by the same [`RawRecord::into_readings`].
//!
//! ```text
//!   RecordBatch + InputMapping ──MappedColumns::of (per batch: roles → columns;
//!       a nested path, a struct column, a duplicate key? None)──▶
//!     row ──dimensions, RawRecord──into_readings──▶ [Reading] + Dims   accepted
//!                                               └─▶ None: render the row, parse it
//! ```
//!
//! Like [`super::Columns`] it answers only for rows it accepts; anything
//! else (a refused row, a non-finite float, an invalid dimension) is
//! rendered and parsed, which decides the reason. The property test in
//! `parquet_file` holds it to that.

use std::borrow::Cow;

use arrow_array::RecordBatch;
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

impl<'a> MappedColumns<'a> {
    /// `None` when the batch's rows must be rendered: plain columns only
    /// ([`plain_cells`]), no two with one key, every path one segment.
    pub fn of(batch: &'a RecordBatch, input: &InputMapping, limits: &ParseLimits) -> Option<Self> {
        let (mapping, dimensions) = input.parts()?;
        let (keys, cells): (Vec<&str>, Vec<Cells<'_>>) =
            plain_cells(batch, limits)?.into_iter().unzip();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return None;
        }
        let column = |path: &FieldPath| -> Option<Option<usize>> {
            match path.0.as_slice() {
                [key] => Some(keys.iter().position(|k| k == key)),
                _ => None,
            }
        };
        let dims: Vec<Option<usize>> = dimensions.iter().map(column).collect::<Option<_>>()?;
        let is_dim = |i: usize| dims.contains(&Some(i));
        let roles = match mapping {
            Mapping::Preset(preset) => {
                let mut cols = Vec::new();
                for i in (0..keys.len()).filter(|&i| !is_dim(i)) {
                    let field = Field::of(keys[i]);
                    if field == Field::Metrics {
                        return None;
                    }
                    cols.push((i, field));
                }
                Roles::Preset(*preset, cols)
            }
            Mapping::Fields(f) => {
                let (device, time) = (column(&f.device)?, column(&f.time)?);
                let seq = match &f.seq {
                    Some(p) => column(p)?,
                    None => None,
                };
                let named = [device, time, seq];
                let metrics = match &f.metrics {
                    MetricFields::Listed(listed) => Metrics::Listed(
                        listed
                            .iter()
                            .map(|m| match m {
                                MetricField::One(p) => column(p),
                                MetricField::EveryIn(_) => None,
                            })
                            .collect::<Option<Vec<_>>>()?
                            .into_iter()
                            .flatten()
                            .collect(),
                    ),
                    MetricFields::Long { name, value } => Metrics::Long {
                        name: column(name)?,
                        value: column(value)?,
                    },
                    MetricFields::EveryOtherNumeric => {
                        let mut every: Vec<usize> = (0..keys.len())
                            .filter(|&i| !is_dim(i) && !named.contains(&Some(i)))
                            .collect();
                        // In the order the parsed object holds its keys.
                        every.sort_unstable_by_key(|&i| keys[i]);
                        Metrics::EveryOther(every)
                    }
                };
                // A dimension is taken out of the record before any field is read.
                if named.iter().flatten().any(|&i| is_dim(i)) {
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
        Some(Self {
            keys,
            cells,
            dims,
            roles,
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::builder::{
        BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
    };
    use arrow_array::{ArrayRef, RecordBatch};
    use iotflow_jobfile::FieldMapping;
    use proptest::prelude::*;

    use super::*;
    use crate::parquet_file::RowBatch;

    fn path(p: &str) -> FieldPath {
        FieldPath::parse(p).unwrap()
    }

    fn fields(metrics: MetricFields, time: &str) -> Mapping {
        Mapping::Fields(FieldMapping {
            device: path("machine"),
            time: path(time),
            time_unit: TimeUnit::Auto,
            seq: Some(path("n")),
            metrics,
        })
    }

    /// Plant rows with every kind of trouble: missing or bad devices and
    /// dimensions, nulls, NaN, booleans and text among the numbers.
    /// With `today_s_names`, the device, time and seq columns are named as
    /// today's shapes name them, and there are only numbers besides the site.
    fn plant_batch(rows: &[(u8, u8, i64, f64, u8)], today_s_names: bool) -> RecordBatch {
        let (mut machine, mut site, mut note) = (
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        let (mut at, mut n, mut line) = (
            Int64Builder::new(),
            Int64Builder::new(),
            Int64Builder::new(),
        );
        let (mut temperature, mut vibration) = (Float64Builder::new(), Float64Builder::new());
        let (mut stamp, mut flag) = (TimestampMillisecondBuilder::new(), BooleanBuilder::new());
        for &(d, k, t, v, q) in rows {
            match d % 7 {
                0 => machine.append_null(),
                1 => machine.append_value("bad|name"),
                _ => machine.append_value(format!("press-{d}")),
            }
            match k % 5 {
                0 => site.append_null(),
                1 => site.append_value("bad|site"),
                _ => site.append_value(["lyon", "oslo", "kyiv"][usize::from(k % 3)]),
            }
            if k % 4 == 0 {
                line.append_null()
            } else {
                line.append_value(i64::from(k % 3))
            }
            at.append_value(t);
            stamp.append_value(t);
            n.append_value(i64::from(q % 50));
            if q % 9 == 0 {
                temperature.append_null()
            } else {
                temperature.append_value(v)
            }
            if k % 6 == 0 {
                vibration.append_null()
            } else {
                vibration.append_value(v / 7.0)
            }
            flag.append_value(q % 2 == 0);
            note.append_value("ok");
        }
        let [device, time, seq] = match today_s_names {
            true => ["device_id", "ts_ms", "seq"],
            false => ["machine", "at", "n"],
        };
        let mut cols: Vec<(&str, ArrayRef)> = vec![
            (device, Arc::new(machine.finish())),
            (time, Arc::new(at.finish())),
            (seq, Arc::new(n.finish())),
            ("site", Arc::new(site.finish())),
            ("line", Arc::new(line.finish())),
            ("temperature", Arc::new(temperature.finish())),
            ("vibration", Arc::new(vibration.finish())),
        ];
        if !today_s_names {
            cols.push(("flag", Arc::new(flag.finish())));
            cols.push(("note", Arc::new(note.finish())));
            cols.push(("timestamp", Arc::new(stamp.finish())));
        }
        RecordBatch::try_from_iter(cols).unwrap()
    }

    fn mappings() -> Vec<InputMapping> {
        let dims = || vec![path("site"), path("line")];
        let listed = MetricFields::Listed(vec![
            MetricField::One(path("temperature")),
            MetricField::One(path("vibration")),
            MetricField::One(path("absent")),
        ]);
        vec![
            InputMapping::new(fields(listed, "at"), dims()),
            InputMapping::new(fields(MetricFields::EveryOtherNumeric, "at"), dims()),
            // A timestamp column named like a time is `ts_ms` in the rendering.
            InputMapping::new(
                fields(MetricFields::EveryOtherNumeric, "ts_ms"),
                vec![path("site")],
            ),
            InputMapping::new(
                fields(
                    MetricFields::Long {
                        name: path("note"),
                        value: path("temperature"),
                    },
                    "at",
                ),
                vec![],
            ),
        ]
    }

    /// Today's shapes with dimensions, over columns named today's way.
    fn presets() -> Vec<InputMapping> {
        [Preset::Auto, Preset::Flat, Preset::Long, Preset::Canonical]
            .into_iter()
            .map(|p| InputMapping::new(Mapping::Preset(p), vec![path("site"), path("line")]))
            .collect()
    }

    proptest! {
        /// The mapped column reader answers only for rows the mapped JSON
        /// parser accepts, with the same readings and dimensions, and it
        /// answers for every one of them.
        #[test]
        fn mapped_columns_read_rows_as_their_json_lines_parse(
            spec in prop::collection::vec(
                (
                    0u8..20,
                    0u8..30,
                    prop_oneof![Just(1_700_000_000_000i64), 0i64..2_000_000_000_000_000, -5i64..5],
                    prop_oneof![-1e6f64..1e6, Just(f64::NAN), Just(3.0), Just(0.1)],
                    0u8..200,
                ),
                1..50,
            ),
        ) {
            let limits = ParseLimits::default();
            for (m, (mapping, today_s_names)) in mappings()
                .into_iter()
                .map(|m| (m, false))
                .chain(presets().into_iter().map(|m| (m, true)))
                .enumerate()
            {
                let batch = plant_batch(&spec, today_s_names);
                let rows = RowBatch { partition: 0, base: 0, batch: batch.clone() };
                let mapping = &mapping;
                let cols = MappedColumns::of(&batch, mapping, &limits).unwrap();
                for i in 0..rows.len() {
                    let (mut ours, mut our_dims) = (Vec::new(), Vec::new());
                    let (mut theirs, mut their_dims) = (Vec::new(), Vec::new());
                    let parsed = mapping.parse(&rows.record(i).value, &limits, &mut theirs, &mut their_dims);
                    match cols.readings(i, &limits, &mut ours, &mut our_dims) {
                        Some(()) => {
                            prop_assert_eq!(parsed, Ok(()), "mapping {} row {}", m, i);
                            prop_assert_eq!(&ours, &theirs, "mapping {} row {}", m, i);
                            prop_assert_eq!(&our_dims, &their_dims, "mapping {} row {}", m, i);
                        }
                        None => {
                            prop_assert!(ours.is_empty());
                            prop_assert!(parsed.is_err(), "mapping {} row {}: the parser took it", m, i);
                        }
                    }
                }
            }
        }
    }

    /// Clean rows are all read from their columns: the reader does not just decline.
    #[test]
    fn clean_rows_are_read_from_their_columns() {
        let spec: Vec<(u8, u8, i64, f64, u8)> = (0..40u8)
            .map(|i| {
                (
                    2 + i % 5,
                    2 + i % 3,
                    1_700_000_000_000 + i64::from(i),
                    f64::from(i) + 0.5,
                    1 + i % 8,
                )
            })
            .collect();
        let limits = ParseLimits::default();
        let takes = |mapping: &InputMapping, today_s_names| {
            let batch = plant_batch(&spec, today_s_names);
            let cols = MappedColumns::of(&batch, mapping, &limits).unwrap();
            (0..batch.num_rows())
                .filter(|&i| {
                    cols.readings(i, &limits, &mut Vec::new(), &mut Vec::new())
                        .is_some()
                })
                .count()
        };
        for (m, mapping) in mappings().iter().enumerate() {
            assert_eq!(takes(mapping, false), spec.len(), "mapping {m}");
        }
        for mapping in &presets()[..2] {
            assert_eq!(takes(mapping, true), spec.len(), "{mapping:?}");
        }
    }

    #[test]
    fn nested_paths_and_struct_columns_are_rendered() {
        let batch = plant_batch(&[(3, 3, 1_700_000_000_000, 1.0, 1)], false);
        let limits = ParseLimits::default();
        let nested = InputMapping::new(
            fields(
                MetricFields::Listed(vec![MetricField::One(path("env.t"))]),
                "at",
            ),
            vec![],
        );
        assert!(MappedColumns::of(&batch, &nested, &limits).is_none());
        let every_in = InputMapping::new(
            fields(
                MetricFields::Listed(vec![MetricField::EveryIn(path("env"))]),
                "at",
            ),
            vec![],
        );
        assert!(MappedColumns::of(&batch, &every_in, &limits).is_none());
        let dim_is_device = InputMapping::new(
            fields(MetricFields::EveryOtherNumeric, "at"),
            vec![path("machine")],
        );
        assert!(MappedColumns::of(&batch, &dim_is_device, &limits).is_none());
    }
}
