//! The simulator's readings for a schema registry, in Avro or Protobuf: the
//! schema of each JSON shape, and valid records re-encoded under it in the
//! Confluent wire format.
//!
//! A record that does not fit the schema (the simulator's bad records:
//! malformed JSON, a missing device, a value `"n/a"`…) is sent as the bytes
//! it was: what a broken device writes into such a topic, and what the job
//! dead-letters as `undecodable`.

use iotflow_schema::avro::AvroSchema;
use iotflow_schema::protobuf::ProtoSchema;
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

/// The Protobuf schema (`.proto` text, one message) of the valid records `cfg` writes.
pub fn reading_proto(cfg: &SimConfig) -> String {
    let mut fields = vec!["string device_id = 1;".to_owned()];
    if cfg.sites > 0 {
        fields.push("optional string site = 2;".into());
    }
    match cfg.format {
        Format::Canonical => fields.extend([
            "int64 ts = 3;".into(),
            "int64 seq = 4;".into(),
            "map<string, double> metrics = 5;".into(),
        ]),
        Format::Flat => {
            fields.extend(["double timestamp = 3;".into(), "int64 seq = 4;".into()]);
            fields.extend(
                cfg.metrics
                    .iter()
                    .enumerate()
                    .map(|(i, m)| format!("optional double {} = {};", m.name, 10 + i)),
            );
        }
        Format::Long => fields.extend([
            "string sensor = 3;".into(),
            "int64 ts_ms = 4;".into(),
            "double value = 5;".into(),
            "int64 seq = 6;".into(),
        ]),
    }
    format!(
        "syntax = \"proto3\";\npackage iotflow;\n\nmessage Reading {{\n  {}\n}}\n",
        fields.join("\n  ")
    )
}

/// How records are re-encoded: which schema, registered as which id.
#[derive(Debug)]
pub enum Encoding {
    Avro {
        id: u32,
        schema: AvroSchema,
    },
    /// The schema's first message.
    Protobuf {
        id: u32,
        schema: ProtoSchema,
    },
}

impl Encoding {
    /// Avro under `schema` (text), registered as `id`.
    pub fn avro(id: u32, schema: &str) -> Result<Self, String> {
        Ok(Encoding::Avro {
            id,
            schema: AvroSchema::parse(schema, &[])?,
        })
    }

    /// Protobuf under `proto` (text), registered as `id`.
    pub fn protobuf(id: u32, proto: &str) -> Result<Self, String> {
        Ok(Encoding::Protobuf {
            id,
            schema: ProtoSchema::compile("reading.proto", proto, &[])?,
        })
    }

    /// `record` with its value in the wire format, if it fits the schema.
    pub fn encode(&self, mut record: SimRecord) -> SimRecord {
        let Some(value) = serde_json::from_slice::<Value>(&record.value)
            .ok()
            .filter(Value::is_object)
        else {
            return record;
        };
        let framed = match self {
            Encoding::Avro { id, schema } => {
                schema.encode(&value).ok().map(|b| wire::frame(*id, &b))
            }
            Encoding::Protobuf { id, schema } => schema.encode(&[0], &value).ok().map(|b| {
                let mut body = wire::indexes(&[0]);
                body.extend_from_slice(&b);
                wire::frame(*id, &body)
            }),
        };
        if let Some(framed) = framed {
            record.value = framed;
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
            let (avro, proto) = (reading_schema(&cfg), reading_proto(&cfg));
            let encodings = [
                Encoding::avro(9, &avro).unwrap(),
                Encoding::protobuf(10, &proto).unwrap(),
            ];
            let reader = AvroSchema::parse(&avro, &[]).unwrap();
            let message = ProtoSchema::compile("r.proto", &proto, &[])
                .unwrap()
                .message(&[0])
                .unwrap();
            let (mut valid, mut bad) = (0, 0);
            for rec in Simulator::new(cfg).unwrap().take(2_000) {
                // Bad records go as they are unless they happen to fit (an
                // absurd time is still a long).
                if matches!(rec.class, RecordClass::Bad(_)) {
                    bad += 1;
                    continue;
                }
                valid += 1;
                let want: Value = serde_json::from_slice(&rec.value).unwrap();
                for e in &encodings {
                    let framed = e.encode(rec.clone()).value;
                    let (id, body) = wire::split(&framed).unwrap();
                    let got = match id {
                        9 => reader.decode(body).unwrap(),
                        _ => {
                            let (path, body) = wire::split_indexes(body).unwrap();
                            assert_eq!(path, [0]);
                            ProtoSchema::decode(&message, body, false).unwrap()
                        }
                    };
                    // Optional fields the record left out read as null (Avro) or absent.
                    let got = got.as_object().unwrap();
                    let want = want.as_object().unwrap();
                    for (k, v) in want {
                        assert!(same(v, &got[k]), "{format:?} {id} {k}: {v} vs {}", got[k]);
                    }
                    for (k, v) in got {
                        assert!(
                            want.contains_key(k) || v.is_null(),
                            "{format:?} {id}: {k} = {v}"
                        );
                    }
                }
            }
            assert!(
                valid > 1_000 && bad > 100,
                "{format:?}: {valid} valid, {bad} bad"
            );
        }
    }
}
