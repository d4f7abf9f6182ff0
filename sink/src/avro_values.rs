//! Aggregates in Avro: the record schema of an aggregation's shape (the
//! Parquet columns' names and types, plus `final`, `epoch`, `aggregation`),
//! and a window's datum framed under the id the registry gave that schema.
//!
//! Field names are the Parquet column names (`p99_9`: Avro names have no
//! dots); the JSON value's `p99.9` is the same measure.

use std::sync::Arc;

use iotflow_dataflow::aggregate::MeasureValue;
use iotflow_dataflow::job::{Epoch, WindowResult};
use iotflow_jobfile::Measure;
use iotflow_schema::Datum;
use iotflow_schema::avro::AvroSchema;
use serde_json::{Value, json};

use crate::shape::AggregateShape;

/// A shape's values written in Avro under schema `id`.
#[derive(Debug, Clone)]
pub struct AvroValues {
    pub id: u32,
    pub schema: Arc<AvroSchema>,
}

/// Equal when registered under the same id: the registry gives one schema one id.
impl PartialEq for AvroValues {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for AvroValues {}

/// An Avro name from free text: letters, digits and `_`, not starting with a digit.
fn avro_name(text: &str) -> String {
    let mut name: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        name.insert(0, '_');
    }
    name
}

impl AggregateShape {
    /// The Avro record schema (JSON text) of this shape's values.
    pub fn avro_schema(&self) -> String {
        let millis = json!({"type": "long", "logicalType": "timestamp-millis"});
        let mut fields: Vec<Value> = self
            .group_fields
            .iter()
            .map(|g| json!({"name": avro_name(g), "type": "string"}))
            .collect();
        fields.push(json!({"name": "window_start", "type": millis}));
        fields.push(json!({"name": "window_end", "type": millis}));
        fields.extend(self.measures.iter().map(|m| {
            let ty = match m {
                Measure::Count => json!("long"),
                Measure::FirstTs | Measure::LastTs => millis.clone(),
                _ => json!("double"),
            };
            json!({"name": avro_name(&m.column()), "type": ty})
        }));
        fields.push(json!({"name": "final", "type": "boolean"}));
        fields.push(json!({"name": "epoch", "type": "long"}));
        fields.push(json!({"name": "aggregation", "type": "string"}));
        json!({
            "type": "record",
            "name": avro_name(&self.aggregation),
            "namespace": "iotflow.aggregates",
            "fields": fields,
        })
        .to_string()
    }

    /// `r` emitted at `epoch` as a framed Avro value of `avro`'s schema.
    pub(crate) fn avro(
        &self,
        avro: &AvroValues,
        r: &WindowResult,
        epoch: Epoch,
    ) -> Result<Vec<u8>, String> {
        let mut fields: Vec<(String, Datum)> = self
            .group_fields
            .iter()
            .zip(r.group_values())
            .map(|(name, v)| (avro_name(name), Datum::String(v.to_owned())))
            .collect();
        fields.push((
            "window_start".into(),
            Datum::TimestampMillis(r.window_start),
        ));
        fields.push(("window_end".into(), Datum::TimestampMillis(r.window_end)));
        let mut p = 0;
        for m in &self.measures {
            let value = match r.measured.value_of(m, &mut p) {
                MeasureValue::Count(c) => {
                    Datum::Long(i64::try_from(c).map_err(|_| format!("count {c}"))?)
                }
                MeasureValue::Time(t) => Datum::TimestampMillis(t),
                MeasureValue::Float(f) => Datum::Double(f),
            };
            fields.push((avro_name(&m.column()), value));
        }
        fields.push(("final".into(), Datum::Boolean(r.is_final)));
        let epoch = i64::try_from(epoch).map_err(|_| format!("epoch {epoch}"))?;
        fields.push(("epoch".into(), Datum::Long(epoch)));
        fields.push((
            "aggregation".into(),
            Datum::String(self.aggregation.clone()),
        ));
        let body = avro.schema.encode_datum(Datum::Record(fields))?;
        Ok(iotflow_schema::wire::frame(avro.id, &body))
    }

    /// A value of this shape's topic as the JSON object its fields make,
    /// keyed as the JSON value is (`p99.9`, not `p99_9`): what a damaged
    /// Parquet segment is rebuilt from. JSON values are parsed as they are.
    pub(crate) fn value_as_json(
        &self,
        value: &[u8],
    ) -> Result<serde_json::Map<String, Value>, String> {
        let Some(avro) = &self.avro else {
            return serde_json::from_slice(value).map_err(|e| format!("value: {e}"));
        };
        let (id, body) = iotflow_schema::wire::split(value)
            .map_err(|_| "value: not in the Avro wire format".to_owned())?;
        if id != avro.id {
            return Err(format!("value: schema id {id}, not {}", avro.id));
        }
        let Value::Object(mut object) = avro
            .schema
            .decode_nulling_non_finite(body)
            .map_err(|e| format!("value: {e:?}"))?
        else {
            return Err("value: not a record".into());
        };
        for m in &self.measures {
            let (column, name) = (avro_name(&m.column()), m.name());
            if column != name
                && let Some(v) = object.remove(&column)
            {
                object.insert(name, v);
            }
        }
        Ok(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_text_becomes_an_avro_name() {
        assert_eq!(avro_name("site_1m"), "site_1m");
        assert_eq!(avro_name("p99.9"), "p99_9");
        assert_eq!(avro_name("1m-sites"), "_1m_sites");
    }
}
