//! The simulator's readings in Avro, framed for a schema registry: the
//! schema of each JSON shape, and valid records re-encoded under it.
//!
//! A record that does not fit the schema (the simulator's bad records:
//! malformed JSON, a missing device, a value `"n/a"`…) is sent as the bytes
//! it was: what a broken device writes into an Avro topic, and what the job
//! dead-letters as `undecodable`.

use iotflow_schema::avro::AvroSchema;
use iotflow_schema::wire;
use serde_json::{Value, json};

use crate::simulator::{Format, SimConfig, SimRecord};

/// The Avro schema (JSON text) of the valid records `cfg` writes.
pub fn reading_schema(cfg: &SimConfig) -> String {
    let optional =
        |name: &str, ty: &str| json!({"name": name, "type": ["null", ty], "default": null});
    let mut fields = vec![json!({"name": "device_id", "type": "string"})];
    if cfg.sites > 0 {
        fields.push(optional("site", "string"));
    }
    match cfg.format {
        Format::Canonical => {
            fields.push(
                json!({"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}),
            );
            fields.push(json!({"name": "seq", "type": "long"}));
            fields.push(json!({"name": "metrics", "type": {"type": "map", "values": "double"}}));
        }
        Format::Flat => {
            fields.push(json!({"name": "timestamp", "type": "double"}));
            fields.push(json!({"name": "seq", "type": "long"}));
            fields.extend(cfg.metrics.iter().map(|m| optional(&m.name, "double")));
        }
        Format::Long => {
            fields.push(json!({"name": "sensor", "type": "string"}));
            fields.push(json!({"name": "ts_ms", "type": {"type": "long", "logicalType": "timestamp-millis"}}));
            fields.push(json!({"name": "value", "type": "double"}));
            fields.push(json!({"name": "seq", "type": "long"}));
        }
    }
    json!({"type": "record", "name": "Reading", "namespace": "iotflow", "fields": fields})
        .to_string()
}

/// Re-encodes records as Avro under a registered schema.
#[derive(Debug)]
pub struct AvroEncoding {
    id: u32,
    schema: AvroSchema,
}

impl AvroEncoding {
    /// Records encoded under `schema` (text), registered as `id`.
    pub fn new(id: u32, schema: &str) -> Result<Self, String> {
        Ok(Self {
            id,
            schema: AvroSchema::parse(schema, &[])?,
        })
    }

    /// `record` with its value in the wire format, if it fits the schema.
    pub fn encode(&self, mut record: SimRecord) -> SimRecord {
        let encoded = serde_json::from_slice::<Value>(&record.value)
            .ok()
            .filter(Value::is_object)
            .and_then(|v| self.schema.encode(&v).ok());
        if let Some(body) = encoded {
            record.value = wire::frame(self.id, &body);
        }
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::{RecordClass, Simulator};

    /// Equal, numbers by value (JSON's `1011` is Avro's double `1011.0`).
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
            }
            _ => a == b,
        }
    }

    #[test]
    fn every_valid_record_of_every_shape_decodes_to_its_json() {
        for format in [Format::Canonical, Format::Flat, Format::Long] {
            let cfg = SimConfig {
                format,
                sites: 3,
                bad_ratio: 0.2,
                ..SimConfig::default()
            };
            let schema = reading_schema(&cfg);
            let enc = AvroEncoding::new(9, &schema).unwrap();
            let reader = AvroSchema::parse(&schema, &[]).unwrap();
            let (mut valid, mut bad) = (0, 0);
            for rec in Simulator::new(cfg).unwrap().take(2_000) {
                let json = rec.value.clone();
                let framed = enc.encode(rec.clone());
                if rec.class != RecordClass::Valid {
                    bad += 1;
                    continue;
                }
                valid += 1;
                let (id, body) = wire::split(&framed.value).unwrap();
                assert_eq!(id, 9);
                let mut want: Value = serde_json::from_slice(&json).unwrap();
                // Optional fields the record left out read as null.
                let got = reader.decode(body).unwrap();
                for (k, v) in got.as_object().unwrap() {
                    want.as_object_mut()
                        .unwrap()
                        .entry(k.clone())
                        .or_insert(Value::Null);
                    assert!(same(&want[k], v), "{format:?} {k}: {} vs {v}", want[k]);
                }
            }
            assert!(
                valid > 1_000 && bad > 100,
                "{format:?}: {valid} valid, {bad} bad"
            );
        }
    }
}
