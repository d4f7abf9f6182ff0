//! The shape of one aggregation's records, written once for every output:
//! the Kafka key and JSON value, and the Parquet schema and columns.
//!
//! ```text
//!   Aggregation (group fields, measures, name)
//!     ──▶ key   "v1|v2|…|window_start"            (group values in group_by order)
//!     ──▶ JSON  {group fields…, window_start, window_end, measures…, final, epoch, aggregation}
//!     ──▶ Arrow group fields Utf8, window bounds and *_ts Timestamp(ms, UTC),
//!               count UInt64, other measures Float64, final, epoch
//! ```
//!
//! The default job's shape (per device and metric, today's measures) writes
//! exactly the bytes iotflow always wrote, plus the `aggregation` field.

use std::io::Write as _;
use std::sync::Arc;

use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray,
    UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use iotflow_dataflow::Measured;
use iotflow_dataflow::aggregate::MeasureValue;
use iotflow_dataflow::aggregation::{Aggregation, KEY_SEPARATOR};
use iotflow_dataflow::job::{Epoch, WindowResult};
use iotflow_jobfile::Measure;
use serde::{Deserialize, Serialize};

/// How one aggregation's results are written.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateShape {
    pub aggregation: String,
    /// Output names of the group fields (the device is `device_id`).
    pub group_fields: Vec<String>,
    pub measures: Vec<Measure>,
    /// Kafka values in Avro under this registered schema, instead of JSON.
    pub avro: Option<crate::AvroValues>,
}

/// One window's aggregate as a dataset keeps it until it is written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggregateRow {
    /// Group values joined by `|`.
    pub group: String,
    pub window_start: i64,
    pub window_end: i64,
    pub measured: Measured,
    #[serde(rename = "final")]
    pub is_final: bool,
    pub epoch: u64,
}

impl AggregateRow {
    pub fn of(r: &WindowResult, epoch: Epoch) -> Self {
        Self {
            group: r.group.to_string(),
            window_start: r.window_start,
            window_end: r.window_end,
            measured: r.measured.clone(),
            is_final: r.is_final,
            epoch,
        }
    }

    fn values(&self) -> impl Iterator<Item = &str> + '_ {
        let fleet = self.group.is_empty();
        self.group.split(KEY_SEPARATOR).filter(move |_| !fleet)
    }
}

/// A row of any dataset: a window's aggregate or an alert event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Row {
    Window(AggregateRow),
    Alert(crate::alert_shape::AlertRow),
}

impl Row {
    /// Whether it belongs in a dataset (a window's update does not).
    pub fn is_final(&self) -> bool {
        match self {
            Row::Window(r) => r.is_final,
            Row::Alert(_) => true,
        }
    }

    /// The event time that dates it: files are per UTC day of it.
    pub fn window_start(&self) -> i64 {
        match self {
            Row::Window(r) => r.window_start,
            Row::Alert(a) => a.event.window_start,
        }
    }

    /// Its place in a file: by group key and window start; an alert key's
    /// events by rule, firing before resolved.
    pub fn order(&self) -> (&str, i64, u16, bool) {
        match self {
            Row::Window(r) => (&r.group, r.window_start, 0, false),
            Row::Alert(a) => (
                &a.event.group,
                a.event.window_start,
                a.event.rule,
                !a.event.firing,
            ),
        }
    }

    /// Its group key.
    pub fn group(&self) -> &str {
        match self {
            Row::Window(r) => &r.group,
            Row::Alert(a) => &a.event.group,
        }
    }
}

/// How a dataset's rows are written.
#[derive(Debug, Clone, PartialEq)]
pub enum DatasetShape {
    Windows(AggregateShape),
    Alerts(crate::alert_shape::AlertShape),
}

impl DatasetShape {
    pub fn schema(&self) -> SchemaRef {
        match self {
            DatasetShape::Windows(s) => s.schema(),
            DatasetShape::Alerts(_) => crate::alert_shape::AlertShape::schema(),
        }
    }

    /// `rows` (of this dataset's kind) as one Arrow batch.
    pub fn batch(&self, rows: &[&Row]) -> Result<RecordBatch, arrow_schema::ArrowError> {
        match self {
            DatasetShape::Windows(s) => {
                let rows: Vec<&AggregateRow> = rows
                    .iter()
                    .filter_map(|r| match r {
                        Row::Window(w) => Some(w),
                        Row::Alert(_) => None,
                    })
                    .collect();
                s.batch(&rows)
            }
            DatasetShape::Alerts(s) => {
                let rows: Vec<&crate::alert_shape::AlertRow> = rows
                    .iter()
                    .filter_map(|r| match r {
                        Row::Alert(a) => Some(a),
                        Row::Window(_) => None,
                    })
                    .collect();
                s.batch(&rows)
            }
        }
    }
}

impl AggregateShape {
    pub fn of(a: &Aggregation) -> Self {
        Self {
            aggregation: a.name.to_string(),
            group_fields: a.group_names.iter().map(ToString::to_string).collect(),
            measures: a.measures.clone(),
            avro: None,
        }
    }

    /// Values in Avro under `avro` (a schema registered for [`Self::avro_schema`]).
    pub fn with_avro(mut self, avro: Option<crate::AvroValues>) -> Self {
        self.avro = avro;
        self
    }

    /// The Kafka value of `r` emitted at `epoch`: Avro when the shape has a
    /// registered schema, else JSON.
    pub fn value(&self, r: &WindowResult, epoch: Epoch) -> Result<Vec<u8>, String> {
        match &self.avro {
            Some(avro) => self.avro(avro, r, epoch),
            None => self.json(r, epoch).map_err(|e| e.to_string()),
        }
    }

    /// The Kafka key: the group values and the window start joined by `|`.
    pub fn key(group: &str, window_start: i64) -> String {
        match group.is_empty() {
            true => window_start.to_string(),
            false => format!("{group}{KEY_SEPARATOR}{window_start}"),
        }
    }

    /// The JSON value of `r` emitted at `epoch`.
    pub fn json(&self, r: &WindowResult, epoch: Epoch) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = Vec::with_capacity(256);
        out.push(b'{');
        let field = |out: &mut Vec<u8>, name: &str| -> Result<(), serde_json::Error> {
            if out.len() > 1 {
                out.push(b',');
            }
            serde_json::to_writer(&mut *out, name)?;
            out.push(b':');
            Ok(())
        };
        for (name, value) in self.group_fields.iter().zip(r.group_values()) {
            field(&mut out, name)?;
            serde_json::to_writer(&mut out, value)?;
        }
        field(&mut out, "window_start")?;
        serde_json::to_writer(&mut out, &r.window_start)?;
        field(&mut out, "window_end")?;
        serde_json::to_writer(&mut out, &r.window_end)?;
        let mut p = 0;
        for m in &self.measures {
            field(&mut out, &m.name())?;
            match r.measured.value_of(m, &mut p) {
                MeasureValue::Count(v) => serde_json::to_writer(&mut out, &v)?,
                MeasureValue::Time(v) => serde_json::to_writer(&mut out, &v)?,
                MeasureValue::Float(v) => serde_json::to_writer(&mut out, &v)?,
            }
        }
        field(&mut out, "final")?;
        serde_json::to_writer(&mut out, &r.is_final)?;
        field(&mut out, "epoch")?;
        serde_json::to_writer(&mut out, &epoch)?;
        field(&mut out, "aggregation")?;
        serde_json::to_writer(&mut out, &self.aggregation)?;
        out.write_all(b"}").map_err(serde_json::Error::io)?;
        Ok(out)
    }

    /// The CSV header of its rows: the group fields, the window, the measures.
    pub fn csv_header(&self) -> String {
        let mut fields: Vec<String> = self.group_fields.clone();
        fields.extend(["window_start".to_owned(), "window_end".to_owned()]);
        fields.extend(self.measures.iter().map(Measure::column));
        fields.join(",")
    }

    /// `r` as a CSV line (a text with `,` or `"` quoted); floats in their
    /// shortest round-tripping form.
    pub fn csv(&self, r: &WindowResult, out: &mut Vec<u8>) {
        let (mut ints, mut floats) = (itoa::Buffer::new(), zmij::Buffer::new());
        let mut first = true;
        let mut sep = |out: &mut Vec<u8>| {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
        };
        for v in r.group_values() {
            sep(out);
            if v.contains([',', '"']) {
                out.push(b'"');
                out.extend_from_slice(v.replace('"', "\"\"").as_bytes());
                out.push(b'"');
            } else {
                out.extend_from_slice(v.as_bytes());
            }
        }
        for t in [r.window_start, r.window_end] {
            sep(out);
            out.extend_from_slice(ints.format(t).as_bytes());
        }
        let mut p = 0;
        for m in &self.measures {
            sep(out);
            let text = match r.measured.value_of(m, &mut p) {
                MeasureValue::Count(v) => ints.format(v),
                MeasureValue::Time(v) => ints.format(v),
                MeasureValue::Float(v) => floats.format(v),
            };
            out.extend_from_slice(text.as_bytes());
        }
        out.push(b'\n');
    }

    /// The dataset's Arrow schema.
    pub fn schema(&self) -> SchemaRef {
        let ts = |name: &str| {
            Field::new(
                name,
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            )
        };
        let mut fields: Vec<Field> = self
            .group_fields
            .iter()
            .map(|g| Field::new(g, DataType::Utf8, false))
            .collect();
        fields.extend([ts("window_start"), ts("window_end")]);
        fields.extend(self.measures.iter().map(|m| match m {
            Measure::Count => Field::new(m.column(), DataType::UInt64, false),
            Measure::FirstTs | Measure::LastTs => ts(&m.column()),
            _ => Field::new(m.column(), DataType::Float64, false),
        }));
        fields.push(Field::new("final", DataType::Boolean, false));
        fields.push(Field::new("epoch", DataType::UInt64, false));
        Arc::new(Schema::new(fields))
    }

    /// `rows` as one Arrow batch, in the order given.
    pub fn batch(&self, rows: &[&AggregateRow]) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let ts = |values: Vec<i64>| -> ArrayRef {
            Arc::new(TimestampMillisecondArray::from(values).with_timezone("UTC"))
        };
        let mut columns: Vec<ArrayRef> = Vec::new();
        for i in 0..self.group_fields.len() {
            columns.push(Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.values().nth(i).unwrap_or_default()),
            )));
        }
        columns.push(ts(rows.iter().map(|r| r.window_start).collect()));
        columns.push(ts(rows.iter().map(|r| r.window_end).collect()));
        let mut p = 0;
        for m in &self.measures {
            let at = p;
            let values: Vec<MeasureValue> = rows
                .iter()
                .map(|r| {
                    let mut q = at;
                    r.measured.value_of(m, &mut q)
                })
                .collect();
            if m.is_percentile() {
                p += 1;
            }
            columns.push(match m {
                Measure::Count => {
                    Arc::new(UInt64Array::from_iter_values(values.iter().map(
                        |v| match v {
                            MeasureValue::Count(c) => *c,
                            _ => 0,
                        },
                    )))
                }
                Measure::FirstTs | Measure::LastTs => ts(values
                    .iter()
                    .map(|v| match v {
                        MeasureValue::Time(t) => *t,
                        _ => 0,
                    })
                    .collect()),
                _ => Arc::new(Float64Array::from_iter_values(values.iter().map(
                    |v| match v {
                        MeasureValue::Float(f) => *f,
                        _ => f64::NAN,
                    },
                ))),
            });
        }
        columns.push(Arc::new(BooleanArray::from_iter(
            rows.iter().map(|r| Some(r.is_final)),
        )));
        columns.push(Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.epoch),
        )));
        RecordBatch::try_new(self.schema(), columns)
    }
}

#[cfg(test)]
mod tests {
    use iotflow_dataflow::job::EmitMode;
    use iotflow_dataflow::{Stats, WindowSpec};

    use super::*;
    use crate::records::AggregateRecord;

    fn stats() -> Stats {
        Stats {
            count: 3,
            sum: 6.5,
            min: 1.0,
            max: 3.25,
            mean: 6.5 / 3.0,
            stddev: 0.1,
            first_ts: 1_000,
            last_ts: 1_900,
        }
    }

    /// The default job's records are today's, byte for byte, plus `aggregation`.
    #[test]
    fn the_default_shape_writes_today_s_bytes_plus_the_aggregation() {
        let agg = Aggregation::per_device(
            "aggregates",
            WindowSpec::tumbling(1_000).unwrap(),
            EmitMode::Final,
        );
        let shape = AggregateShape::of(&agg);
        let r = WindowResult::new("dev-1", "temp", 1_000, 2_000, stats(), true);
        let today = AggregateRecord {
            device_id: "dev-1".into(),
            metric: "temp".into(),
            window_start: 1_000,
            window_end: 2_000,
            count: 3,
            sum: 6.5,
            min: 1.0,
            max: 3.25,
            mean: 6.5 / 3.0,
            stddev: 0.1,
            first_ts: 1_000,
            last_ts: 1_900,
            is_final: true,
            epoch: 7,
            aggregation: "aggregates".into(),
        };
        assert_eq!(shape.json(&r, 7).unwrap(), today.to_json().unwrap());
        let mut without = serde_json::to_vec(&today).unwrap();
        let tail = br#","aggregation":"aggregates"}"#;
        assert!(without.ends_with(tail));
        without.truncate(without.len() - tail.len());
        let json = String::from_utf8(shape.json(&r, 7).unwrap()).unwrap();
        assert!(
            json.starts_with(std::str::from_utf8(&without).unwrap()),
            "{json}"
        );
        assert_eq!(AggregateShape::key(&r.group, r.window_start), today.key());
    }

    #[test]
    fn any_shape_names_its_group_fields_and_measures() {
        let mut agg = Aggregation::per_device(
            "site_1m",
            WindowSpec::tumbling(60_000).unwrap(),
            EmitMode::Final,
        );
        agg.group_by = vec![iotflow_jobfile::GroupField::Dimension(0)];
        agg.group_names = vec!["site".into()];
        let p95 = iotflow_jobfile::Percentile {
            name: "p99.9".into(),
            q: 0.999,
        };
        agg.measures = vec![Measure::Count, Measure::Percentile(p95), Measure::LastValue];
        let shape = AggregateShape::of(&agg);
        let mut r = WindowResult::new("x", "y", 0, 60_000, stats(), false);
        r.group = "lyon".into();
        r.measured.percentiles = vec![3.5];
        r.measured.last_value = 2.0;
        r.aggregation = 1;
        assert_eq!(
            String::from_utf8(shape.json(&r, 3).unwrap()).unwrap(),
            r#"{"site":"lyon","window_start":0,"window_end":60000,"count":3,"p99.9":3.5,"last_value":2.0,"final":false,"epoch":3,"aggregation":"site_1m"}"#
        );
        assert_eq!(AggregateShape::key("lyon", 0), "lyon|0");
        assert_eq!(AggregateShape::key("", 60_000), "60000");
        let names: Vec<String> = shape
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            names,
            [
                "site",
                "window_start",
                "window_end",
                "count",
                "p99_9",
                "last_value",
                "final",
                "epoch"
            ]
        );
        let batch = shape.batch(&[&AggregateRow::of(&r, 3)]).unwrap();
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(
            shape.csv_header(),
            "site,window_start,window_end,count,p99_9,last_value"
        );
        let mut line = Vec::new();
        r.group = "a,\"b\"".into();
        shape.csv(&r, &mut line);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "\"a,\"\"b\"\"\",0,60000,3,3.5,2.0\n"
        );
    }
}
