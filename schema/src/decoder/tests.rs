use super::*;
use crate::protobuf::ProtoSchema;
use crate::registry::Reference;
use std::sync::atomic::{AtomicUsize, Ordering};

const V1: &str = r#"{"type":"record","name":"Reading","fields":[
    {"name":"device_id","type":"string"},{"name":"ts","type":"long"},
    {"name":"temperature","type":"double"}]}"#;
/// V1 with a field added with a default: the evolution a producer makes.
const V2: &str = r#"{"type":"record","name":"Reading","fields":[
    {"name":"device_id","type":"string"},{"name":"ts","type":"long"},
    {"name":"temperature","type":"double"},{"name":"site","type":"string","default":"none"}]}"#;

fn avro(schema: &str) -> Registered {
    Registered {
        schema_type: SchemaKind::Avro,
        schema: schema.to_owned(),
        references: Vec::new(),
    }
}

fn path(p: &str) -> Vec<String> {
    p.split('.').map(str::to_owned).collect()
}

fn encoded(id: u32, schema: &str, value: Value) -> Vec<u8> {
    let s = AvroSchema::parse(schema, &[]).unwrap();
    wire::frame(id, &s.encode(&value).unwrap())
}

fn decoder(ids: &[(u32, Registered)], required: &[&str]) -> Decoder {
    let source = StaticSource {
        ids: ids.iter().cloned().collect(),
        versions: HashMap::new(),
    };
    Decoder::new(
        Box::new(source),
        SchemaKind::Avro,
        required.iter().map(|p| path(p)).collect(),
    )
}

#[test]
fn values_of_each_schema_version_decode_under_their_own_schema() {
    let d = decoder(&[(1, avro(V1)), (2, avro(V2))], &["device_id", "ts"]);
    let one = serde_json::json!({"device_id":"d","ts":5,"temperature":20.5});
    let two = serde_json::json!({"device_id":"d","ts":6,"temperature":21.0,"site":"s"});
    assert_eq!(d.decode(&encoded(1, V1, one.clone())), Ok(one));
    assert_eq!(d.decode(&encoded(2, V2, two.clone())), Ok(two));
}

#[test]
fn each_way_a_value_fails_has_its_own_reason() {
    let d = decoder(&[(1, avro(V1)), (3, avro(V2))], &["device_id", "site"]);
    let good = encoded(
        3,
        V2,
        serde_json::json!({"device_id":"d","ts":1,"temperature":1.0,"site":"s"}),
    );
    assert!(d.decode(&good).is_ok());
    assert_eq!(
        d.decode(br#"{"device_id":"d"}"#),
        Err(DecodeError::NotFramed)
    );
    let mut unknown = good.clone();
    unknown[4] = 9;
    assert_eq!(d.decode(&unknown), Err(DecodeError::UnknownSchema));
    // V1 has no `site`, which the job maps.
    let v1 = encoded(
        1,
        V1,
        serde_json::json!({"device_id":"d","ts":1,"temperature":1.0}),
    );
    assert_eq!(d.decode(&v1), Err(DecodeError::SchemaMismatch));
    assert_eq!(
        d.decode(&good[..good.len() - 2]),
        Err(DecodeError::Undecodable)
    );
    let protobuf = Registered {
        schema_type: SchemaKind::Protobuf,
        ..avro("syntax = \"proto3\";")
    };
    let d = decoder(&[(4, protobuf), (5, avro("{not avro"))], &[]);
    assert_eq!(
        d.decode(&wire::frame(4, b"")),
        Err(DecodeError::SchemaMismatch)
    );
    assert_eq!(
        d.decode(&wire::frame(5, b"")),
        Err(DecodeError::SchemaMismatch)
    );
}

#[test]
fn references_are_fetched_by_subject_and_version() {
    let meta = r#"{"type":"record","name":"Meta","namespace":"iot","fields":[{"name":"line","type":"string"}]}"#;
    let main = r#"{"type":"record","name":"R","namespace":"iot","fields":[{"name":"device_id","type":"string"},{"name":"meta","type":"iot.Meta"}]}"#;
    let mut registered = avro(main);
    registered.references.push(Reference {
        name: "iot.Meta".into(),
        subject: "meta".into(),
        version: 3,
    });
    let source = StaticSource {
        ids: [(7, registered.clone())].into(),
        versions: [(("meta".to_owned(), 3), avro(meta))].into(),
    };
    let d = Decoder::new(Box::new(source), SchemaKind::Avro, vec![path("meta.line")]);
    let value = serde_json::json!({"device_id":"d","meta":{"line":"L"}});
    let s = AvroSchema::parse(main, &[meta.to_owned()]).unwrap();
    assert_eq!(
        d.decode(&wire::frame(7, &s.encode(&value).unwrap())),
        Ok(value)
    );
    // A reference the registry lacks.
    let d = decoder(&[(7, registered)], &[]);
    assert_eq!(
        d.decode(&wire::frame(7, b"")),
        Err(DecodeError::SchemaMismatch)
    );
}

#[test]
fn protobuf_values_name_their_message_and_import_their_references() {
    let common = "syntax = \"proto3\"; package c; message Meta { string line = 1; }";
    let main = "syntax = \"proto3\"; import \"c.proto\"; message Other { string x = 1; } \
                message Reading { string machine = 1; int64 at = 2; double temp = 3; c.Meta meta = 4; }";
    let proto = |text: &str| Registered {
        schema_type: SchemaKind::Protobuf,
        schema: text.to_owned(),
        references: Vec::new(),
    };
    let mut registered = proto(main);
    registered.references.push(Reference {
        name: "c.proto".into(),
        subject: "common".into(),
        version: 1,
    });
    let source = StaticSource {
        ids: [(4, registered)].into(),
        versions: [(("common".to_owned(), 1), proto(common))].into(),
    };
    let d = Decoder::new(
        Box::new(source),
        SchemaKind::Protobuf,
        vec![path("machine"), path("meta.line")],
    );
    let schema =
        ProtoSchema::compile("m.proto", main, &[("c.proto".into(), common.into())]).unwrap();
    let value = serde_json::json!({"machine":"m1","at":5,"temp":1.5,"meta":{"line":"L"}});
    let framed = |indexes: &[usize], body: &[u8]| {
        let mut b = wire::indexes(indexes);
        b.extend_from_slice(body);
        wire::frame(4, &b)
    };
    let body = schema.encode(&[1], &value).unwrap();
    assert_eq!(d.decode(&framed(&[1], &body)), Ok(value));
    // `Other` lacks the mapped fields; there is no third message.
    assert_eq!(
        d.decode(&framed(&[0], &body)),
        Err(DecodeError::SchemaMismatch)
    );
    assert_eq!(
        d.decode(&framed(&[2], &body)),
        Err(DecodeError::SchemaMismatch)
    );
    assert_eq!(
        d.decode(&framed(&[1], &[0xff, 0xff])),
        Err(DecodeError::Undecodable)
    );
    // Index paths come from the records: hostile ones are judged, a bounded number kept.
    for i in 0..MAX_MESSAGE_PATHS + 50 {
        assert_eq!(
            d.decode(&framed(&[3, i], &body)),
            Err(DecodeError::SchemaMismatch)
        );
    }
    {
        let cache = d.cache.read().unwrap();
        let Entry::Protobuf(p) = &*cache[&4] else {
            panic!("not protobuf")
        };
        assert!(p.messages.read().unwrap().len() <= MAX_MESSAGE_PATHS);
    }
    assert_eq!(
        d.decode(&wire::frame(4, &[9])),
        Err(DecodeError::Undecodable)
    );
}

#[test]
fn json_values_are_validated_and_their_schema_must_hold_the_mapped_fields() {
    let json = |text: &str| Registered {
        schema_type: SchemaKind::Json,
        schema: text.to_owned(),
        references: Vec::new(),
    };
    let reading = r#"{"type":"object","properties":{"machine":{"type":"string"},"at":{"type":"integer"}},"required":["machine"]}"#;
    let source = StaticSource {
        ids: [
            (1, json(reading)),
            (2, json(r#"{"type":"object","properties":{"x":{}}}"#)),
            (3, avro(V1)),
        ]
        .into(),
        ..StaticSource::default()
    };
    let d = Decoder::new(
        Box::new(source),
        SchemaKind::Json,
        vec![path("machine"), path("at")],
    );
    let value = serde_json::json!({"machine":"m","at":5});
    assert_eq!(
        d.decode(&wire::frame(1, value.to_string().as_bytes())),
        Ok(value)
    );
    assert_eq!(
        d.decode(&wire::frame(1, br#"{"at":5}"#)),
        Err(DecodeError::Undecodable)
    );
    assert_eq!(
        d.decode(&wire::frame(1, b"{")),
        Err(DecodeError::Undecodable)
    );
    assert_eq!(
        d.decode(&wire::frame(2, b"{}")),
        Err(DecodeError::SchemaMismatch)
    );
    assert_eq!(
        d.decode(&wire::frame(3, b"{}")),
        Err(DecodeError::SchemaMismatch)
    );
}

#[test]
fn unknown_ids_are_remembered_within_a_bound_and_known_schemas_always() {
    let d = decoder(&[(1, avro(V1))], &[]);
    let one = encoded(
        1,
        V1,
        serde_json::json!({"device_id":"d","ts":5,"temperature":1.0}),
    );
    assert!(d.decode(&one).is_ok());
    for id in 100..100 + MAX_UNKNOWN_IDS as u32 + 10 {
        assert_eq!(
            d.decode(&wire::frame(id, b"")),
            Err(DecodeError::UnknownSchema)
        );
    }
    let cache = d.cache.read().unwrap();
    let unknown = cache
        .values()
        .filter(|e| matches!(***e, Entry::Unknown))
        .count();
    assert!(unknown <= MAX_UNKNOWN_IDS, "{unknown}");
    assert!(matches!(*cache[&1], Entry::Avro(_)));
}

/// Unavailable for the first `failures` questions, then a table.
#[derive(Debug)]
struct Flaky {
    failures: usize,
    asked: AtomicUsize,
    table: StaticSource,
}

impl SchemaSource for Flaky {
    fn schema(&self, id: u32) -> Result<Registered, FetchError> {
        if self.asked.fetch_add(1, Ordering::SeqCst) < self.failures {
            return Err(FetchError::Unavailable {
                url: "flaky".into(),
                what: format!("schema id {id}"),
                reason: "connection refused".into(),
            });
        }
        self.table.schema(id)
    }
    fn version(&self, s: &str, v: i32) -> Result<Registered, FetchError> {
        self.table.version(s, v)
    }
    fn url(&self) -> &str {
        "flaky"
    }
}

#[test]
fn a_registry_that_does_not_answer_pauses_and_good_values_still_decode() {
    let source = Flaky {
        failures: 3,
        asked: AtomicUsize::new(0),
        table: StaticSource {
            ids: [(1, avro(V1))].into(),
            versions: HashMap::new(),
        },
    };
    let d = Arc::new(
        Decoder::new(Box::new(source), SchemaKind::Avro, vec![])
            .with_max_backoff(Duration::from_millis(200)),
    );
    let status = d.status();
    let value = serde_json::json!({"device_id":"d","ts":5,"temperature":20.5});
    let bytes = encoded(1, V1, value.clone());
    let worker = {
        let d = Arc::clone(&d);
        std::thread::spawn(move || d.decode(&bytes))
    };
    // The status says why while the worker waits (100 + 200 ms of backoff at least).
    let mut seen = None;
    for _ in 0..200 {
        if let Some((_, why)) = status.waiting() {
            seen = Some(why);
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(seen.is_some_and(|w| w.contains("connection refused")));
    assert_eq!(worker.join().unwrap(), Ok(value));
    assert!(status.waiting().is_none());
}
