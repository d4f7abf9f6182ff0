//! Records written by confluent-kafka's own serializers (Avro, Protobuf,
//! JSON Schema), each registering its schema in the test registry: the job
//! reads them into the aggregates of the same readings in JSON.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use iotflow_redpanda::Storage;
use serde_json::{Value, json};

use super::common::registry::TestRegistry;
use super::{JSON_SCHEMA, V2, common, job_file, reasons, run_file};

/// Writes each JSON line of stdin to the Avro topic through confluent-kafka's
/// AvroSerializer, to the Protobuf topic through its ProtobufSerializer (a
/// message built from a descriptor, the second of its file: indexes `[1]`),
/// to the JSON Schema topic through its JSONSerializer, each registering its
/// own schema, and to the JSON topic as text.
const CONFLUENT_PRODUCER: &str = r#"
import json, sys
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
bootstrap, registry, avro_topic, proto_topic, jsonschema_topic, json_topic, schema, json_schema = sys.argv[1:9]
F = descriptor_pb2.FieldDescriptorProto
file = descriptor_pb2.FileDescriptorProto(name="plant/readings.proto", package="plant", syntax="proto3")
file.message_type.add(name="Status").field.add(name="machine", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
r = file.message_type.add(name="Reading")
r.field.add(name="machine", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
r.field.add(name="at", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
r.field.add(name="temp", number=3, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
r.oneof_decl.add(name="_hum")
r.field.add(name="hum", number=4, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL, oneof_index=0, proto3_optional=True)
r.field.add(name="site", number=5, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
pool = descriptor_pool.DescriptorPool()
pool.Add(file)
Reading = message_factory.GetMessageClass(pool.FindMessageTypeByName("plant.Reading"))
client = SchemaRegistryClient({"url": registry})
to_avro = AvroSerializer(client, schema)
to_proto = ProtobufSerializer(Reading, client)
to_json = JSONSerializer(json_schema, client)
json_ctx = SerializationContext(jsonschema_topic, MessageField.VALUE)
avro_ctx = SerializationContext(avro_topic, MessageField.VALUE)
proto_ctx = SerializationContext(proto_topic, MessageField.VALUE)
producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": False})
n = 0
for line in sys.stdin:
    value = json.loads(line)
    message = Reading(machine=value["machine"], at=value["at"], temp=value["temp"], site=value["site"])
    if value["hum"] is not None:
        message.hum = value["hum"]
    producer.produce(avro_topic, to_avro(value, avro_ctx), partition=0)
    producer.produce(proto_topic, to_proto(message, proto_ctx), partition=0)
    producer.produce(jsonschema_topic, to_json(value, json_ctx), partition=0)
    producer.produce(json_topic, json.dumps(value).encode(), partition=0)
    n += 1
    if n % 1000 == 0:
        producer.flush()
if producer.flush(30) != 0:
    raise SystemExit("records left unsent")
print(n)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn readings_serialized_by_confluent_kafka_aggregate_as_their_json() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let broker = common::broker(Storage::Memory).await;
    let registry = TestRegistry::start(None).await;
    let addr = broker.addr().to_owned();
    let [json_in, avro_in, proto_in, schema_in] =
        ["cf-json", "cf-avro", "cf-proto", "cf-jsonschema"].map(common::unique);
    let bootstrap = [addr.clone()];
    let client = iotflow_redpanda::connect(&bootstrap, Duration::from_secs(30))
        .await
        .unwrap();
    for t in [&json_in, &avro_in, &proto_in, &schema_in] {
        iotflow_redpanda::topics::create_topics(
            &client,
            &bootstrap,
            &[iotflow_redpanda::TopicSpec::new(t.as_str(), 1)],
        )
        .await
        .unwrap();
    }
    let mut lines = String::new();
    for i in 0..2_000i64 {
        let hum = if i % 4 == 0 {
            Value::Null
        } else {
            json!(35.5 + (i % 9) as f64 * 1.25)
        };
        let value = json!({"machine": format!("m{}", i % 5), "at": 1_763_787_600_000i64 + i * 150,
            "temp": 18.0 + (i % 17) as f64 * 0.375, "hum": hum, "site": format!("s{}", i % 3)});
        lines.push_str(&format!("{value}\n"));
    }
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let mut child = Command::new(&python)
        .args(["-c", CONFLUENT_PRODUCER, &addr, &registry.url])
        .args([&avro_in, &proto_in, &schema_in, &json_in])
        .args([V2, JSON_SCHEMA])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{} (run `make venv`): {e}", python.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = common::wait_bounded(child, "confluent-kafka producer");
    assert!(
        out.status.success(),
        "confluent-kafka: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2000");
    for topic in [&avro_in, &proto_in, &schema_in] {
        assert_eq!(
            registry.asked(&format!("/subjects/{topic}-value/versions")),
            1,
            "the serializer registered its schema for {topic}"
        );
    }

    let [json_job, avro_job, proto_job, schema_job] = ["cj", "ca", "cp", "cs"].map(common::unique);
    for (job, input, format) in [
        (&json_job, &json_in, None),
        (&avro_job, &avro_in, Some(("avro", registry.url.as_str()))),
        (
            &proto_job,
            &proto_in,
            Some(("protobuf", registry.url.as_str())),
        ),
        (
            &schema_job,
            &schema_in,
            Some(("json-schema", registry.url.as_str())),
        ),
    ] {
        let file = job_file(dir.path(), job, input, format);
        let c = run_file(
            &addr,
            dir.path(),
            job.as_str(),
            &file,
            &["--epoch-records", "150"],
        )
        .spawn();
        common::finish(c.unwrap(), job);
    }
    let parquet = |job: &str| common::files(&dir.path().join(job).join("parquet"));
    for job in [&avro_job, &proto_job, &schema_job] {
        for out in ["out", "sites"] {
            let want = common::outputs(&bootstrap, &format!("{json_job}.{out}")).await;
            assert!(want.values().map(Vec::len).sum::<usize>() > 8, "{out}");
            assert!(
                common::outputs(&bootstrap, &format!("{job}.{out}")).await == want,
                "{job}: {out} differs"
            );
        }
        assert_eq!(reasons(&addr, &format!("{job}.dlq")).await, BTreeMap::new());
        assert!(
            parquet(job) == parquet(&json_job),
            "{job}: Parquet bytes differ"
        );
    }
}
