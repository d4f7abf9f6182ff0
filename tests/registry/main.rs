//! Registry-encoded records end to end, against a real broker and a test
//! schema registry (`common::registry`): Avro and Protobuf readings written
//! by `iotflow produce --encoding`, Avro written by hand with a schema that
//! evolves mid-stream, and Avro, Protobuf and JSON Schema records written by
//! confluent-kafka's own serializers, all aggregate to the bytes the same
//! readings in JSON do; bad bytes, unknown ids and schemas without the mapped
//! fields are dead letters with exact counts; a registry that does not answer
//! pauses the job and dead-letters nothing. `serializers`: confluent-kafka's
//! own; `output`: Avro aggregates and alert events; `bench`: `make bench-avro`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bench;
#[path = "../common/mod.rs"]
mod common;
mod output;
mod serializers;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::registry::TestRegistry;
use iotflow_redpanda::Storage;
use iotflow_redpanda::rskafka::record::Record;
use iotflow_schema::avro::AvroSchema;
use iotflow_schema::wire;
use serde_json::{Value, json};

/// The simulator's flags for both encodings of one input.
const SIM: [&str; 14] = [
    "--count",
    "6000",
    "--devices",
    "40",
    "--interval",
    "200ms",
    "--seed",
    "17",
    "--bad",
    "0.01",
    "--duplicates",
    "0.02",
    "--late",
    "0.01",
];

fn run(addr: &str, dir: &Path, name: &str, input: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_iotflow"));
    c.args(["run", "--brokers", addr, "--input", input, "--job", name])
        .args([
            "--output-topic",
            &format!("{name}.aggregates"),
            "--dlq",
            &format!("{name}.dlq"),
        ])
        .args(["--until-end", "--epoch-records", "100", "-w", "2"])
        .arg("--state-dir")
        .arg(dir.join(name).join("state"))
        .arg("--parquet-dir")
        .arg(dir.join(name).join("parquet"))
        .args(extra)
        .env_remove(iotflow_sink::failpoint::ENV)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// `iotflow run` of the job file `file` as job `name`, bounded, its state and
/// Parquet under `dir/name`, with `extra` flags.
fn run_file(addr: &str, dir: &Path, name: &str, file: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_iotflow"));
    c.args(["run", "--brokers", addr, "--job-file"])
        .arg(file)
        .arg("--until-end")
        .args(extra)
        .arg("--state-dir")
        .arg(dir.join(name).join("state"))
        .arg("--parquet-dir")
        .arg(dir.join(name).join("parquet"))
        .env_remove(iotflow_sink::failpoint::ENV)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Dead letters of `topic` by reason.
async fn reasons(addr: &str, topic: &str) -> BTreeMap<String, u64> {
    let mut by = BTreeMap::new();
    for (_, records) in common::outputs(&[addr.to_owned()], topic).await {
        for (_, _, headers) in records {
            let reason = headers
                .get(iotflow_sink::records::REASON_HEADER)
                .map(|r| String::from_utf8_lossy(r).into_owned())
                .unwrap_or_default();
            *by.entry(reason).or_default() += 1;
        }
    }
    by
}

fn wait_for_text(path: &Path, text: &str, bound: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < bound {
        if std::fs::read_to_string(path).is_ok_and(|s| s.contains(text)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn simulated_avro_and_protobuf_readings_aggregate_as_their_json_and_a_silent_registry_pauses_the_job()
 {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::broker(Storage::Memory).await;
    let registry = TestRegistry::start(Some(("iot", "s3cret"))).await;
    let addr = broker.addr().to_owned();
    let (json_in, avro_in) = (common::unique("json-in"), common::unique("avro-in"));
    let produce = |topic: &str, extra: &[&str]| {
        let mut args = vec![
            "produce",
            "--brokers",
            &addr,
            "--topic",
            topic,
            "--partitions",
            "2",
        ];
        args.extend(SIM);
        args.extend(extra);
        common::iotflow(&args)
    };
    produce(&json_in, &[]);
    let produced = produce(
        &avro_in,
        &[
            "--encoding",
            "avro",
            "--schema-registry",
            &registry.url,
            "--schema-registry-username",
            "iot",
            "--schema-registry-password",
            "s3cret",
        ],
    );
    let _ = produced;
    let registry_flags = [
        "--input-format",
        "avro",
        "--schema-registry",
        &registry.url,
        "--schema-registry-username",
        "iot",
    ];

    let (json_job, avro_job) = (common::unique("json"), common::unique("avro"));
    common::finish(
        run(&addr, dir.path(), &json_job, &json_in, &[])
            .spawn()
            .unwrap(),
        "json run",
    );
    let avro_run = run(&addr, dir.path(), &avro_job, &avro_in, &registry_flags)
        .env("IOTFLOW_SCHEMA_REGISTRY_PASSWORD", "s3cret")
        .spawn()
        .unwrap();
    common::finish(avro_run, "avro run");

    // Aggregates: the same bytes in Kafka and Parquet.
    let bootstrap = [addr.clone()];
    let want = common::outputs(&bootstrap, &format!("{json_job}.aggregates")).await;
    let windows: usize = want.values().map(Vec::len).sum();
    assert!(windows > 200, "{windows} windows");
    assert!(common::outputs(&bootstrap, &format!("{avro_job}.aggregates")).await == want);
    let parquet = |job: &str| common::files(&dir.path().join(job).join("parquet"));
    assert!(!parquet(&json_job).is_empty());
    assert!(
        parquet(&avro_job) == parquet(&json_job),
        "Parquet bytes differ"
    );
    // Dead letters: the simulator's bad records fit no Avro schema and went
    // as they were (undecodable; too long ones are oversized before anything
    // is read); late ones are late in both.
    let (j, a) = (
        reasons(&addr, &format!("{json_job}.dlq")).await,
        reasons(&addr, &format!("{avro_job}.dlq")).await,
    );
    let as_is = ["late", "oversized"];
    let bad: u64 = j
        .iter()
        .filter(|(r, _)| !as_is.contains(&r.as_str()))
        .map(|(_, n)| n)
        .sum();
    assert!(bad > 20 && j.contains_key("oversized"), "{j:?}");
    let mut dead = BTreeMap::from([("undecodable".to_owned(), bad)]);
    dead.extend(
        j.iter()
            .filter(|(r, _)| as_is.contains(&r.as_str()))
            .map(|(r, n)| (r.clone(), *n)),
    );
    assert_eq!(a, dead, "{j:?}");
    // Fetched once per id and process, not per record (two workers may both miss first).
    assert!(
        (1..=2).contains(&registry.asked("/schemas/ids/1")),
        "{}",
        registry.asked("/schemas/ids/1")
    );

    // The same readings in Protobuf: the same aggregates, the same dead letters.
    let proto_in = common::unique("proto-in");
    let credentials = [
        "--schema-registry-username",
        "iot",
        "--schema-registry-password",
        "s3cret",
    ];
    let mut flags = vec!["--encoding", "protobuf", "--schema-registry", &registry.url];
    flags.extend(credentials);
    produce(&proto_in, &flags);
    let proto_job = common::unique("proto");
    let mut flags = vec![
        "--input-format",
        "protobuf",
        "--schema-registry",
        &registry.url,
    ];
    flags.extend(credentials);
    common::finish(
        run(&addr, dir.path(), &proto_job, &proto_in, &flags)
            .spawn()
            .unwrap(),
        "protobuf run",
    );
    assert!(common::outputs(&bootstrap, &format!("{proto_job}.aggregates")).await == want);
    assert!(
        parquet(&proto_job) == parquet(&json_job),
        "Parquet bytes differ"
    );
    // A proto3 string is never missing, only empty: a record without its
    // device encodes, and is refused for it as in JSON.
    let missing = j.get("missing_device_id").copied().unwrap_or_default();
    assert!(missing > 0, "{j:?}");
    let mut proto_dead = dead.clone();
    proto_dead.insert("missing_device_id".into(), missing);
    *proto_dead.get_mut("undecodable").unwrap() -= missing;
    assert_eq!(
        reasons(&addr, &format!("{proto_job}.dlq")).await,
        proto_dead
    );

    output::avro_output_reads_as_the_json_output(
        &addr,
        dir.path(),
        &registry,
        &avro_in,
        (&json_job, &want),
    )
    .await;

    // A registry that does not answer: the job waits, says so, dead-letters nothing.
    registry.set_down(true);
    let paused_job = common::unique("paused");
    let log = dir.path().join("paused.log");
    let mut paused = run(&addr, dir.path(), &paused_job, &avro_in, &registry_flags);
    paused.args(["--http", "127.0.0.1:0"]);
    paused
        .env("IOTFLOW_SCHEMA_REGISTRY_PASSWORD", "s3cret")
        .stderr(std::fs::File::create(&log).unwrap());
    let child = paused.spawn().unwrap();
    assert!(
        wait_for_text(
            &log,
            "waiting for the schema registry (the job is paused)",
            Duration::from_secs(60)
        ),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(std::fs::read_to_string(&log).unwrap().contains("HTTP 503"));
    // The status page and /metrics say so too.
    let text = std::fs::read_to_string(&log).unwrap();
    let status = text
        .split("status page: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_owned();
    let get = |path: &str| {
        ureq::get(format!("{status}{path}"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    };
    let page = get("");
    assert!(
        page.contains("<b>paused for") && page.contains("HTTP 503"),
        "{page}"
    );
    let waiting: f64 = get("metrics")
        .lines()
        .find_map(|l| l.strip_prefix("iotflow_schema_registry_waiting_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(waiting > 0.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dlq = format!("{paused_job}.dlq");
    assert_eq!(
        reasons(&addr, &dlq).await.values().sum::<u64>(),
        0,
        "dead letters while the registry was down"
    );
    registry.set_down(false);
    common::finish(child, "paused run");
    assert!(common::outputs(&bootstrap, &format!("{paused_job}.aggregates")).await == want);
    assert_eq!(reasons(&addr, &dlq).await, a);
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("answers again after")
    );
}

/// Version 1 of the readings' schema; version 2 adds `site` with a default.
const V1: &str = r#"{"type":"record","name":"Reading","namespace":"plant","fields":[
    {"name":"machine","type":"string"},{"name":"at","type":"long"},
    {"name":"temp","type":"double"},{"name":"hum","type":["null","double"],"default":null}]}"#;
const V2: &str = r#"{"type":"record","name":"Reading","namespace":"plant","fields":[
    {"name":"machine","type":"string"},{"name":"at","type":"long"},
    {"name":"temp","type":"double"},{"name":"hum","type":["null","double"],"default":null},
    {"name":"site","type":"string","default":"none"}]}"#;
/// The readings of [`V2`] as a JSON Schema.
const JSON_SCHEMA: &str = r#"{"type":"object","properties":{"machine":{"type":"string"},
    "at":{"type":"integer"},"temp":{"type":"number"},"hum":{"type":["number","null"]},
    "site":{"type":"string"}},"required":["machine","at","temp"]}"#;
/// Lacks `hum`, which the job maps.
const NO_HUM: &str = r#"{"type":"record","name":"Reading","namespace":"plant","fields":[
    {"name":"machine","type":"string"},{"name":"at","type":"long"},{"name":"temp","type":"double"}]}"#;

/// The plant job over `input`, in `format` (and its registry's URL), else JSON.
fn job_file(dir: &Path, name: &str, input: &str, format: Option<(&str, &str)>) -> PathBuf {
    let format = match format {
        Some((format, url)) => format!("format = \"{format}\"\nschema_registry = \"{url}\"\n"),
        None => String::new(),
    };
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"name = "{name}"
[input]
topic = "{input}"
{format}device = "machine"
time = "at"
time_unit = "ms"
metrics = ["temp", "hum"]
dimensions = ["site"]
[output]
dead_letter_topic = "{name}.dlq"

[[aggregation]]
name = "per_machine"
window = "tumbling 10s"
measures = ["count", "mean", "max", "p95"]
topic = "{name}.out"
parquet = "per_machine"

[[aggregation]]
name = "per_site"
group_by = ["site", "metric"]
window = "tumbling 30s"
measures = ["count", "min", "max"]
topic = "{name}.sites"
"#
        ),
    )
    .unwrap();
    path
}

/// What goes into one record of each topic: a reading, or a fault.
enum Slot {
    Reading {
        v2: bool,
        value: Value,
    },
    /// Framed under an id the registry does not have.
    UnknownId(Value),
    /// Framed under version 1, body cut short.
    BadBytes(Value),
    /// JSON text on the Avro topic.
    NotFramed(Value),
    /// Framed under a schema without `hum`.
    NoHum(Value),
}

#[tokio::test(flavor = "multi_thread")]
async fn an_evolving_schema_reads_as_json_and_each_bad_record_has_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::broker(Storage::Memory).await;
    let registry = TestRegistry::start(None).await;
    let addr = broker.addr().to_owned();
    let avro = |s: &str| json!({"schema": s});
    let (v1, v2, no_hum) = (
        registry.register("plant-value", avro(V1)),
        registry.register("plant-value", avro(V2)),
        registry.register("other-value", avro(NO_HUM)),
    );
    let base = 1_763_787_600_000i64;
    let mut slots = Vec::new();
    for i in 0..3_000i64 {
        let mut value = json!({"machine": format!("m{}", i % 7), "at": base + i * 100, "temp": 20.0 + (i % 13) as f64 * 0.25, "hum": null});
        if i % 3 != 0 {
            value["hum"] = json!(40.0 + (i % 11) as f64);
        }
        let v2_now = i >= 1_500;
        if v2_now {
            value["site"] = json!(format!("s{}", i % 2));
        }
        slots.push(match i {
            _ if i % 401 == 5 => Slot::UnknownId(value),
            _ if i % 331 == 7 => Slot::BadBytes(value),
            _ if i % 503 == 11 => Slot::NotFramed(value),
            _ if i % 613 == 13 => Slot::NoHum(value),
            _ => Slot::Reading { v2: v2_now, value },
        });
    }
    let count = |f: fn(&Slot) -> bool| slots.iter().filter(|s| f(s)).count() as u64;
    let unknown = count(|s| matches!(s, Slot::UnknownId(_)));
    let undecodable = count(|s| matches!(s, Slot::BadBytes(_) | Slot::NotFramed(_)));
    let mismatched = count(|s| matches!(s, Slot::NoHum(_)));
    assert!(unknown > 3 && undecodable > 8 && mismatched > 3);

    let (s1, s2, s3) = (
        AvroSchema::parse(V1, &[]).unwrap(),
        AvroSchema::parse(V2, &[]).unwrap(),
        AvroSchema::parse(NO_HUM, &[]).unwrap(),
    );
    let (mut as_json, mut as_avro) = (Vec::new(), Vec::new());
    for slot in &slots {
        let (j, a) = match slot {
            Slot::Reading { v2: false, value } => (
                value.to_string().into_bytes(),
                wire::frame(v1, &s1.encode(value).unwrap()),
            ),
            Slot::Reading { v2: true, value } => (
                value.to_string().into_bytes(),
                wire::frame(v2, &s2.encode(value).unwrap()),
            ),
            // The JSON topic holds a refused record at the same offset, so epochs line up.
            Slot::UnknownId(value) => (
                b"{".to_vec(),
                wire::frame(9_999, &s1.encode(&strip(value)).unwrap()),
            ),
            Slot::BadBytes(value) => {
                let body = s1.encode(&strip(value)).unwrap();
                (b"{".to_vec(), wire::frame(v1, &body[..body.len() / 2]))
            }
            Slot::NotFramed(value) => (b"{".to_vec(), value.to_string().into_bytes()),
            Slot::NoHum(value) => {
                let mut v = strip(value);
                v.as_object_mut().unwrap().remove("hum");
                (b"{".to_vec(), wire::frame(no_hum, &s3.encode(&v).unwrap()))
            }
        };
        as_json.push(j);
        as_avro.push(a);
    }
    let (json_in, avro_in) = (common::unique("plant-json"), common::unique("plant-avro"));
    write(&addr, &json_in, &as_json).await;
    write(&addr, &avro_in, &as_avro).await;

    let (json_job, avro_job) = (common::unique("pj"), common::unique("pa"));
    for (job, input, url) in [
        (&json_job, &json_in, None),
        (&avro_job, &avro_in, Some(("avro", registry.url.as_str()))),
    ] {
        let file = job_file(dir.path(), job, input, url);
        let c = run_file(
            &addr,
            dir.path(),
            job.as_str(),
            &file,
            &["--epoch-records", "200", "-w", "2"],
        )
        .spawn();
        common::finish(c.unwrap(), job);
    }
    let bootstrap = [addr.clone()];
    for out in ["out", "sites"] {
        let want = common::outputs(&bootstrap, &format!("{json_job}.{out}")).await;
        assert!(want.values().map(Vec::len).sum::<usize>() > 8, "{out}");
        assert!(
            common::outputs(&bootstrap, &format!("{avro_job}.{out}")).await == want,
            "{out} differs"
        );
    }
    let parquet = |job: &str| common::files(&dir.path().join(job).join("parquet"));
    assert!(!parquet(&json_job).is_empty());
    assert!(
        parquet(&avro_job) == parquet(&json_job),
        "Parquet bytes differ"
    );
    let got = reasons(&addr, &format!("{avro_job}.dlq")).await;
    let want: BTreeMap<String, u64> = [
        ("unknown_schema".to_owned(), unknown),
        ("undecodable".to_owned(), undecodable),
        ("schema_mismatch".to_owned(), mismatched),
    ]
    .into();
    assert_eq!(got, want);
    assert_eq!(
        reasons(&addr, &format!("{json_job}.dlq"))
            .await
            .get("malformed_json"),
        Some(&(unknown + undecodable + mismatched))
    );
}

/// A reading as version 1 holds it (no `site`).
fn strip(value: &Value) -> Value {
    let mut v = value.clone();
    v.as_object_mut().unwrap().remove("site");
    v
}

/// `values` as the records of a new one-partition topic, in order.
async fn write(addr: &str, topic: &str, values: &[Vec<u8>]) {
    use iotflow_redpanda::rskafka::client::partition::{Compression, UnknownTopicHandling};
    let bootstrap = [addr.to_owned()];
    let client = iotflow_redpanda::connect(&bootstrap, Duration::from_secs(30))
        .await
        .unwrap();
    iotflow_redpanda::topics::create_topics(
        &client,
        &bootstrap,
        &[iotflow_redpanda::TopicSpec::new(topic, 1)],
    )
    .await
    .unwrap();
    let pc = client
        .partition_client(topic, 0, UnknownTopicHandling::Retry)
        .await
        .unwrap();
    for chunk in values.chunks(500) {
        let records = chunk
            .iter()
            .map(|v| Record {
                key: None,
                value: Some(v.clone()),
                headers: BTreeMap::new(),
                timestamp: chrono::DateTime::from_timestamp_millis(1_763_787_600_000).unwrap(),
            })
            .collect();
        pc.produce(records, Compression::NoCompression)
            .await
            .unwrap();
    }
}
