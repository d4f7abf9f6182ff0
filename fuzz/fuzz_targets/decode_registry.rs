//! Registry-encoded values over any bytes, through the decoders and the job's
//! input mapping: an Avro, a Protobuf (nested message, map, enum, timestamp)
//! and a JSON Schema schema (the first byte picks which frames the rest):
//! never a panic; a record is taken whole or refused whole; a refused
//! record's identity, when found, is a valid device and time.
#![no_main]

use std::sync::{Arc, OnceLock};

use iotflow_dataflow::ParseLimits;
use iotflow_dataflow::reading::{Dims, InputMapping};
use iotflow_schema::{Decoder, Registered, SchemaKind, StaticSource, wire};
use libfuzzer_sys::fuzz_target;

const AVRO: &str = r#"{"type":"record","name":"R","fields":[{"name":"device","type":"string"},
  {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"temperature","type":["null","double"]},{"name":"site","type":["null","string"],"default":null},
  {"name":"extra","type":{"type":"map","values":"double"}},{"name":"mode","type":{"type":"enum","name":"M","symbols":["A","B"]}}]}"#;
const PROTO: &str = r#"syntax = "proto3";
import "google/protobuf/timestamp.proto";
message Other { string x = 1; }
message R {
  message Meta { string line = 1; }
  enum Mode { A = 0; B = 1; }
  string device = 1; int64 at = 2; optional double temperature = 3; string site = 4;
  map<string, double> extra = 5; Meta meta = 6; Mode mode = 7; google.protobuf.Timestamp when = 8;
  repeated sint32 codes = 9;
}
"#;
const JSON: &str = r#"{"type":"object","properties":{"device":{"type":"string"},"at":{"type":"integer"},
  "temperature":{"type":["number","null"]},"site":{"type":"string"}},"required":["device","at"]}"#;

fn mappings() -> &'static [InputMapping; 3] {
    static MAPPINGS: OnceLock<[InputMapping; 3]> = OnceLock::new();
    MAPPINGS.get_or_init(|| {
        let plan = iotflow_jobfile::parse(
            std::path::Path::new("fuzz.toml"),
            "name = \"fuzz\"\n[input]\ntopic = \"t\"\ndevice = \"device\"\ntime = \"at\"\n\
             time_unit = \"ms\"\ndimensions = [\"site\"]\nmetrics = [\"temperature\", \"extra.*\"]\n\
             [[aggregation]]\nname = \"a\"\nwindow = \"tumbling 1m\"\ntopic = \"a\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let required = InputMapping::required_paths(&plan.input.mapping);
        [(SchemaKind::Avro, AVRO), (SchemaKind::Protobuf, PROTO), (SchemaKind::Json, JSON)].map(
            |(kind, text)| {
                let source = StaticSource {
                    ids: [(7, Registered { schema_type: kind, schema: text.into(), references: vec![] })].into(),
                    ..StaticSource::default()
                };
                let decoder = Decoder::new(Box::new(source), kind, required.clone());
                InputMapping::new(
                    plan.input.mapping.clone(),
                    plan.input.dimensions.iter().map(|d| d.path.clone()).collect(),
                )
                .decoded_by(Arc::new(decoder))
            },
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    let mapping = &mappings()[usize::from(pick % 3)];
    // Mostly framed under the known id; now and then the bytes as they come.
    let framed = if pick >= 3 { wire::frame(7, body) } else { body.to_vec() };
    let limits = ParseLimits::default();
    let (mut out, mut dims): (Vec<_>, Dims) = (Vec::new(), Vec::new());
    match mapping.parse(&framed, &limits, &mut out, &mut dims) {
        Ok(()) => assert!(!out.is_empty() && out.iter().all(|r| r.value.is_finite())),
        Err(_) => assert!(out.is_empty()),
    }
    if let Some(id) = mapping.identity(&framed, &limits) {
        assert!(!id.device_id.is_empty());
        assert!((limits.min_ts_ms..limits.max_ts_ms).contains(&id.ts_ms));
    }
});
