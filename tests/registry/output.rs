//! Registry-encoded outputs: aggregates in Avro read back by confluent-kafka's
//! `AvroDeserializer` and `tail`, alert events in Avro delivered by `notify`
//! as the same Alertmanager payloads as their JSON.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use iotflow_redpanda::Storage;
use serde_json::Value;

use super::common::registry::TestRegistry;
use super::{common, run, run_file};

/// Reads an Avro topic with confluent-kafka's `AvroDeserializer` (schemas
/// from the registry): one JSON object per line, timestamps as epoch ms.
const CONFLUENT_CONSUMER: &str = r#"
import datetime, json, sys
from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
bootstrap, registry, user, password, topic, want = sys.argv[1:7]
deserialize = AvroDeserializer(SchemaRegistryClient({"url": registry, "basic.auth.user.info": f"{user}:{password}"}))
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "check", "auto.offset.reset": "earliest"})
c.subscribe([topic])
epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
ms = lambda v: (v - epoch) // datetime.timedelta(milliseconds=1) if isinstance(v, datetime.datetime) else v
n, empty = 0, 0
while n < int(want) and empty < 30:
    m = c.poll(1.0)
    if m is None:
        empty += 1
        continue
    if m.error():
        raise SystemExit(f"librdkafka: {m.error()}")
    value = deserialize(m.value(), SerializationContext(topic, MessageField.VALUE))
    print(json.dumps({"key": m.key().decode(), "value": {k: ms(v) for k, v in value.items()}}))
    n += 1
c.close()
"#;

/// Each record's key and value (JSON) of `topic`, from every partition.
async fn json_values(addr: &str, topic: &str) -> BTreeMap<String, Value> {
    common::outputs(&[addr.to_owned()], topic)
        .await
        .into_values()
        .flatten()
        .map(|(k, v, _)| {
            let key = String::from_utf8(k.unwrap()).unwrap();
            (key, serde_json::from_slice(&v.unwrap()).unwrap())
        })
        .collect()
}

/// Equal, numbers by value (Avro's long `3` and JSON's `3` alike).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// `--output-format avro`: the aggregates' topic holds Avro under a schema
/// registered as `<topic>-value`; confluent-kafka's AvroDeserializer and
/// `tail --schema-registry` read back the JSON run's values; Parquet is the
/// JSON run's byte for byte.
pub(crate) async fn avro_output_reads_as_the_json_output(
    addr: &str,
    dir: &Path,
    registry: &TestRegistry,
    input: &str,
    (json_job, json_out): (&str, &common::Partitions),
) {
    let job = common::unique("avro-out");
    let flags = [
        "--input-format",
        "avro",
        "--output-format",
        "avro",
        "--schema-registry",
        &registry.url,
        "--schema-registry-username",
        "iot",
    ];
    let out = run(addr, dir, &job, input, &flags)
        .env("IOTFLOW_SCHEMA_REGISTRY_PASSWORD", "s3cret")
        .spawn()
        .unwrap();
    common::finish(out, "avro output run");
    let topic = format!("{job}.aggregates");
    let got = common::outputs(&[addr.to_owned()], &topic).await;
    // Same keys and partitions, values framed under the registered schema.
    let keys = |p: &common::Partitions| -> Vec<(i32, Option<Vec<u8>>)> {
        p.iter()
            .flat_map(|(n, rs)| rs.iter().map(move |r| (*n, r.0.clone())))
            .collect()
    };
    assert_eq!(keys(&got), keys(json_out));
    assert_eq!(
        registry.asked(&format!("/subjects/{topic}-value/versions")),
        1
    );
    let first = got.values().flatten().next().unwrap().1.clone().unwrap();
    assert_eq!(first[0], 0, "not in the wire format");
    let parquet = |job: &str| common::files(&dir.join(job).join("parquet"));
    assert!(parquet(&job) == parquet(json_job), "Parquet bytes differ");

    let want = json_values(addr, &format!("{json_job}.aggregates")).await;
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let read = Command::new(&python)
        .args([
            "-c",
            CONFLUENT_CONSUMER,
            addr,
            &registry.url,
            "iot",
            "s3cret",
            &topic,
        ])
        .arg(want.len().to_string())
        .output()
        .unwrap();
    assert!(
        read.status.success(),
        "AvroDeserializer: {}",
        String::from_utf8_lossy(&read.stderr)
    );
    let decoded: BTreeMap<String, Value> = String::from_utf8(read.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["key"].as_str().unwrap().to_owned(), v["value"].clone())
        })
        .collect();
    assert_eq!(decoded.len(), want.len());
    for (key, value) in &want {
        assert!(
            same(&decoded[key], value),
            "{key}: {} vs {value}",
            decoded[key]
        );
    }

    // The same job on its state, writing JSON now: refused, the staged
    // epochs were encoded in Avro.
    let json_flags: Vec<&str> = flags[..2].iter().chain(&flags[4..]).copied().collect();
    let again = run(addr, dir, &job, input, &json_flags)
        .env("IOTFLOW_SCHEMA_REGISTRY_PASSWORD", "s3cret")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && err.contains("output formats"),
        "{err}"
    );

    // Killed again and again (each restart registers the schema again and
    // gets its id back): the Avro output of a run never killed.
    let killed = common::unique("avro-killed");
    let (kills, runs) = common::run_through_kills(
        || {
            run(addr, dir, &killed, input, &flags)
                .env("IOTFLOW_SCHEMA_REGISTRY_PASSWORD", "s3cret")
                .spawn()
                .unwrap()
        },
        5,
        (300, 113),
    );
    assert!(kills >= 2, "only {kills} kills landed");
    let killed_out = common::outputs(&[addr.to_owned()], &format!("{killed}.aggregates")).await;
    assert!(
        killed_out == got,
        "{kills} SIGKILLs: the Avro output differs from the run never killed"
    );
    assert!(
        parquet(&killed) == parquet(json_job),
        "{kills} SIGKILLs: Parquet differs"
    );
    eprintln!("avro in and out: {kills} SIGKILLs in {runs} runs, output identical");

    // tail shows the committed Avro values as the JSON run's.
    let tail = common::iotflow(&[
        "tail",
        "--brokers",
        addr,
        "--topic",
        &topic,
        "--job",
        &job,
        "--from-beginning",
        "--json",
        "--exit-when-idle",
        "3s",
        "--schema-registry",
        &registry.url,
        "--schema-registry-username",
        "iot",
        "--schema-registry-password",
        "s3cret",
    ]);
    let shown: Vec<Value> = String::from_utf8(tail.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(shown.len(), want.len());
    let mut wanted: Vec<&Value> = want.values().collect();
    let key = |v: &Value| format!("{}|{}|{}", v["device_id"], v["metric"], v["window_start"]);
    wanted.sort_by_key(|v| key(v));
    let mut shown_sorted: Vec<&Value> = shown.iter().collect();
    shown_sorted.sort_by_key(|v| key(v));
    for (s, w) in shown_sorted.iter().zip(wanted) {
        assert!(same(s, w), "tail: {s} vs {w}");
    }
}

/// Webhook bodies received, in order: a receiver that takes everything.
fn receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let taken = std::sync::Arc::clone(&bodies);
    // Lives as long as the test process; it only ever accepts.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok() {
                taken
                    .lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap());
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (url, bodies)
}

#[tokio::test(flavor = "multi_thread")]
async fn alert_events_in_avro_notify_as_the_same_events_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::broker(Storage::Memory).await;
    let registry = TestRegistry::start(None).await;
    let addr = broker.addr().to_owned();
    let input = common::unique("alerts-in");
    common::iotflow(&[
        "produce",
        "--brokers",
        &addr,
        "--topic",
        &input,
        "--partitions",
        "2",
        "--count",
        "8000",
        "--devices",
        "20",
        "--interval",
        "500ms",
        "--seed",
        "5",
        "--episodes",
        "overheat",
        "--episode-every",
        "2m",
        "--episode-length",
        "40s",
        "--episode-share",
        "0.3",
    ]);
    let job_file = |name: &str, avro: bool| {
        let path = dir.path().join(format!("{name}.toml"));
        let (format, registry) = match avro {
            true => (
                "alerts_format = \"avro\"\n",
                format!("schema_registry = \"{}\"\n", registry.url),
            ),
            false => ("", String::new()),
        };
        std::fs::write(
            &path,
            format!(
                r#"name = "{name}"
[input]
topic = "{input}"
{registry}[output]
dead_letter_topic = "{name}.dlq"
alerts_topic = "{name}.alerts"
alerts_parquet = "alerts"
{format}
[[aggregation]]
name = "aggregates"
window = "tumbling 10s"
topic = "{name}.aggregates"

[[alert]]
name = "warm"
on = "aggregates"
when = "mean > 40 and metric == 'temperature'"
clear = "mean < 30"
severity = "critical"
"#
            ),
        )
        .unwrap();
        path
    };
    let (url, bodies) = receiver();
    let mut payloads = Vec::new();
    let mut parquet = Vec::new();
    for (name, avro) in [
        (common::unique("alerts-json"), false),
        (common::unique("alerts-avro"), true),
    ] {
        let file = job_file(&name, avro);
        let c = run_file(
            &addr,
            dir.path(),
            &name,
            &file,
            &["--epoch-records", "200", "-w", "2"],
        )
        .spawn();
        common::finish(c.unwrap(), &name);
        let topic = format!("{name}.alerts");
        let values = common::outputs(std::slice::from_ref(&addr), &topic).await;
        let first = values
            .values()
            .flatten()
            .next()
            .expect("alert events")
            .1
            .clone()
            .unwrap();
        assert_eq!(first[0] == 0, avro, "{name}: wire format");
        let mut notify = vec![
            "notify",
            "--brokers",
            &addr,
            "--webhook",
            &url,
            "--topic",
            &topic,
            "--from-beginning",
            "--exit-when-idle",
            "3s",
            "--external-url",
            "http://status/",
        ];
        let position = dir.path().join(format!("{name}.position"));
        let position = position.to_string_lossy().into_owned();
        notify.extend(["--position", &position]);
        if avro {
            notify.extend(["--schema-registry", &registry.url]);
        }
        common::iotflow(&notify);
        payloads.push(std::mem::take(&mut *bodies.lock().unwrap()));
        parquet.push(common::files(
            &dir.path().join(&name).join("parquet").join("alerts"),
        ));
    }
    assert!(
        payloads[0].len() > 5,
        "{} alert deliveries",
        payloads[0].len()
    );
    assert_eq!(payloads[1], payloads[0], "Alertmanager payloads differ");
    assert!(
        !parquet[0].is_empty() && parquet[1] == parquet[0],
        "the alerts dataset differs"
    );
}
