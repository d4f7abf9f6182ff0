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
        cols.push(("env", env(rows)));
        cols.push(("timestamp", Arc::new(stamp.finish())));
    }
    RecordBatch::try_from_iter(cols).unwrap()
}

/// A struct column `env` {humidity, line}: nulls inside it, and a null
/// `env` itself in some batches (the parser decides those).
fn env(rows: &[(u8, u8, i64, f64, u8)]) -> ArrayRef {
    use arrow_array::builder::StructBuilder;
    use arrow_schema::{DataType, Field};
    let fields = vec![
        Field::new("humidity", DataType::Float64, true),
        Field::new("line", DataType::Utf8, true),
    ];
    let mut env = StructBuilder::from_fields(fields, rows.len());
    let with_nulls = rows.first().is_some_and(|r| r.0 % 4 == 0);
    for &(_, k, _, v, q) in rows {
        let humidity = env.field_builder::<Float64Builder>(0).unwrap();
        if q % 5 == 0 {
            humidity.append_null()
        } else {
            humidity.append_value(v / 3.0)
        }
        let line = env.field_builder::<StringBuilder>(1).unwrap();
        match k % 7 {
            0 => line.append_null(),
            1 => line.append_value("L|1"),
            _ => line.append_value(["L1", "L2"][usize::from(k % 2)]),
        }
        env.append(!(with_nulls && q % 3 == 0));
    }
    Arc::new(env.finish())
}

fn mappings() -> Vec<InputMapping> {
    let dims = || vec![path("site"), path("line")];
    let listed = MetricFields::Listed(vec![
        MetricField::One(path("temperature")),
        MetricField::One(path("vibration")),
        MetricField::One(path("absent")),
    ]);
    let nested = MetricFields::Listed(vec![
        MetricField::One(path("temperature")),
        MetricField::One(path("env.humidity")),
        MetricField::One(path("env.absent")),
        MetricField::One(path("note.absent")),
    ]);
    vec![
        InputMapping::new(fields(listed, "at"), dims()),
        InputMapping::new(fields(nested, "at"), vec![path("site"), path("env.line")]),
        InputMapping::new(
            fields(MetricFields::EveryOtherNumeric, "at"),
            vec![path("env.line")],
        ),
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
            let Some(cols) = MappedColumns::of(&batch, mapping, &limits) else {
                // Only a path through a struct with nulls renders the whole batch.
                let env = batch.column_by_name("env");
                prop_assert!(env.is_some_and(|e| e.null_count() > 0), "mapping {}", m);
                continue;
            };
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
fn struct_paths_are_read_unless_a_struct_holds_nulls() {
    let batch = plant_batch(&[(3, 3, 1_700_000_000_000, 1.0, 1)], false);
    let limits = ParseLimits::default();
    // A path into a struct is read; through a struct with nulls, rendered.
    let nested = InputMapping::new(
        fields(
            MetricFields::Listed(vec![MetricField::One(path("env.humidity"))]),
            "at",
        ),
        vec![],
    );
    assert!(MappedColumns::of(&batch, &nested, &limits).is_some());
    let with_null_env = plant_batch(&[(4, 3, 1_700_000_000_000, 1.0, 3)], false);
    assert_eq!(with_null_env.column_by_name("env").unwrap().null_count(), 1);
    assert!(MappedColumns::of(&with_null_env, &nested, &limits).is_none());
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
