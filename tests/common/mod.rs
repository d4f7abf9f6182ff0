//! Helpers for tests that run a real local broker.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use iotflow_dataflow::job::{EmitMode, JobConfig};
use iotflow_dataflow::{ParseLimits, WatermarkConfig, WindowSpec};
use iotflow_redpanda::rskafka::client::partition::UnknownTopicHandling;
use iotflow_redpanda::rskafka::record::RecordAndOffset;
use iotflow_redpanda::{LocalBroker, Storage, scan, topics};

pub mod fault_proxy;
pub mod registry;

/// A private broker that every client reaches through a fault-injecting
/// proxy (the broker advertises it), its log under `dir`.
pub async fn broker_behind_proxy(dir: &std::path::Path) -> (LocalBroker, fault_proxy::FaultProxy) {
    let port = iotflow_redpanda::local::free_port().unwrap();
    // The proxy first: the broker's readiness is judged through it.
    let proxy = fault_proxy::FaultProxy::start(format!("127.0.0.1:{port}")).await;
    let broker = LocalBroker::builder()
        .port(port)
        .advertise(proxy.addr.clone())
        .log_path(dir.join("broker.log"))
        .start()
        .await
        .unwrap();
    (broker, proxy)
}

/// Starts a private broker for one test (memory storage unless told otherwise).
/// The tansu binary comes from the cache that `make test` fills.
pub async fn broker(storage: Storage) -> LocalBroker {
    let log = std::env::temp_dir().join(format!("iotflow-test-{}.log", unique("broker")));
    LocalBroker::builder()
        .storage(storage)
        .log_path(log)
        .start()
        .await
        .expect("local broker starts (run `make tansu` if it is not installed)")
}

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs the iotflow binary with `args`; panics with its output if it fails.
pub fn iotflow(args: &[&str]) -> Output {
    let out = iotflow_unchecked(args);
    assert!(
        out.status.success(),
        "iotflow {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn iotflow_unchecked(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_iotflow"))
        .args(args)
        .env_remove("IOTFLOW_BROKERS")
        .output()
        .expect("run iotflow")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Final-mode windows with 2 s out-of-orderness and 1 s lateness: what the
/// seeded-input tests use, and `run_args` passes to the CLI.
pub fn final_job(window: WindowSpec) -> JobConfig {
    JobConfig::single(
        window,
        1_000,
        WatermarkConfig {
            max_out_of_order_ms: 2_000,
            idle_timeout_ms: 0,
            outliers: 1,
        },
        EmitMode::Final,
        ParseLimits::default(),
    )
}

/// Every record of every partition of `topic`, earliest to the high watermark.
pub async fn read_topic(bootstrap: &[String], topic: &str) -> BTreeMap<i32, Vec<RecordAndOffset>> {
    let client = iotflow_redpanda::connect(bootstrap, Duration::from_secs(30))
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for p in topics::describe_topic(&client, topic).await.unwrap() {
        let pc = client
            .partition_client(topic, p.partition, UnknownTopicHandling::Retry)
            .await
            .unwrap();
        let records = scan::read_range(&pc, p.earliest, p.high_watermark)
            .await
            .unwrap();
        out.insert(p.partition, records);
    }
    out
}

/// Each partition's records as (key, value, headers), in offset order.
pub type Partitions =
    BTreeMap<i32, Vec<(Option<Vec<u8>>, Option<Vec<u8>>, BTreeMap<String, Vec<u8>>)>>;

/// [`read_topic`] without the job header: runs compared in tests are
/// different jobs, and the header names them.
pub async fn outputs(bootstrap: &[String], topic: &str) -> Partitions {
    read_topic(bootstrap, topic)
        .await
        .into_iter()
        .map(|(p, records)| {
            let records = records
                .into_iter()
                .map(|mut r| {
                    let job = r.record.headers.remove(iotflow_sink::records::JOB_HEADER);
                    assert!(job.is_some(), "{topic}/{p}: a record without a job header");
                    (r.record.key, r.record.value, r.record.headers)
                })
                .collect();
            (p, records)
        })
        .collect()
}

/// Run `name`'s outputs — its `aggregates` and `dlq` topics (without the job
/// header) and the Parquet files under `got` — are run `reference`'s (under
/// `want`), which are not empty.
pub async fn assert_runs_match(
    bootstrap: &[String],
    (reference, want): (&str, &std::path::Path),
    (name, got): (&str, &std::path::Path),
) {
    for kind in ["aggregates", "dlq"] {
        let (w, g) = (
            outputs(bootstrap, &format!("{reference}.{kind}")).await,
            outputs(bootstrap, &format!("{name}.{kind}")).await,
        );
        assert!(
            w.values().any(|p| !p.is_empty()),
            "{reference}.{kind} is empty"
        );
        assert!(g == w, "{name}.{kind} differs from {reference}.{kind}");
    }
    let (w, g) = (files(want), files(got));
    assert!(!w.is_empty(), "{reference}: no Parquet files");
    assert_eq!(
        g.keys().collect::<Vec<_>>(),
        w.keys().collect::<Vec<_>>(),
        "{name}: Parquet files"
    );
    assert!(g == w, "{name}'s Parquet bytes differ from {reference}'s");
}

/// (device|metric|window_start key, count, sum bits) of a window.
pub type Row = (String, u64, u64);

/// Every Parquet file under `root/aggregates/`, as (path, its rows).
pub fn parquet_rows(root: &std::path::Path) -> Vec<(String, Vec<Row>)> {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, TimestampMillisecondType, UInt64Type};
    let mut files = Vec::new();
    for day in std::fs::read_dir(root.join("aggregates")).unwrap() {
        for f in std::fs::read_dir(day.unwrap().path()).unwrap() {
            let path = f.unwrap().path();
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(&path).unwrap(),
            )
            .unwrap()
            .build()
            .unwrap();
            let mut rows = Vec::new();
            for batch in reader {
                let b = batch.unwrap();
                let (dev, met) = (
                    b.column(0).as_string::<i32>(),
                    b.column(1).as_string::<i32>(),
                );
                let start = b.column(2).as_primitive::<TimestampMillisecondType>();
                let (count, sum) = (
                    b.column(4).as_primitive::<UInt64Type>(),
                    b.column(5).as_primitive::<Float64Type>(),
                );
                for i in 0..b.num_rows() {
                    rows.push((
                        format!("{}|{}|{}", dev.value(i), met.value(i), start.value(i)),
                        count.value(i),
                        sum.value(i).to_bits(),
                    ));
                }
                assert_eq!(start.timezone(), Some("UTC"));
                assert!(!count.is_nullable() || count.null_count() == 0);
            }
            files.push((path.display().to_string(), rows));
        }
    }
    files
}

/// A new input topic of two partitions holding `count` records of the
/// simulator `sim` (40 devices at 5 Hz with a little of every trouble, unless
/// `sim` says otherwise), for the crash and job-file tests.
pub async fn seeded_input(
    bootstrap: &[String],
    prefix: &str,
    sim: iotflow_ingest::simulator::SimConfig,
    count: u64,
) -> String {
    let client = iotflow_redpanda::connect(bootstrap, Duration::from_secs(30))
        .await
        .unwrap();
    let input = unique(prefix);
    topics::create_topics(
        &client,
        bootstrap,
        &[iotflow_redpanda::TopicSpec::new(input.as_str(), 2)],
    )
    .await
    .unwrap();
    produce_sim(&client, &input, sim, count).await;
    input
}

/// The crash tests' simulator: 40 devices at 5 Hz, 2 % duplicates, 1 % bad,
/// 1 % late by `late_by_ms`.
pub fn troubled_sim(seed: u64, late_by_ms: i64) -> iotflow_ingest::simulator::SimConfig {
    iotflow_ingest::simulator::SimConfig {
        devices: 40,
        interval_ms: 200,
        seed,
        duplicate_ratio: 0.02,
        bad_ratio: 0.01,
        late_ratio: 0.01,
        late_by_ms,
        ..iotflow_ingest::simulator::SimConfig::default()
    }
}

/// Writes `count` records of the simulator `sim` to `topic`, in order.
pub async fn produce_sim(
    client: &iotflow_redpanda::rskafka::client::Client,
    topic: &str,
    sim: iotflow_ingest::simulator::SimConfig,
    count: u64,
) -> iotflow_ingest::producer::ProduceSummary {
    use iotflow_ingest::producer::{Counters, Pace, ProducerConfig, produce};
    let pace = Pace {
        count: Some(count),
        ..Pace::default()
    };
    produce(
        client,
        topic,
        iotflow_ingest::simulator::Simulator::new(sim).unwrap(),
        pace,
        ProducerConfig::default(),
        std::sync::Arc::new(Counters::default()),
    )
    .await
    .unwrap()
}

/// How long one run of a job may take before a test calls it stalled.
pub const RUN_BOUND: std::time::Duration = std::time::Duration::from_secs(120);

/// Every file under `root` (relative path → bytes), staging excluded.
pub fn files(root: &std::path::Path) -> BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            // Staging, and the pipeline log (wall-clock samples, not output).
            if path
                .file_name()
                .is_some_and(|n| n == ".staging" || n == "_pipeline")
            {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// Waits for `child` at most [`RUN_BOUND`]: a stalled job fails the test.
pub fn wait_bounded(mut child: std::process::Child, what: &str) -> Output {
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > RUN_BOUND {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} did not finish in {RUN_BOUND:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Runs `child` to a successful end.
pub fn finish(child: std::process::Child, what: &str) -> Output {
    let out = wait_bounded(child, what);
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Starts the job `spawn` gives until one run finishes, SIGKILLing each of
/// the first `max_kills` runs still going `first_ms` + `step_ms` × (kills
/// so far) after its start: (kills that landed, runs). Panics past 40 runs.
pub fn run_through_kills(
    mut spawn: impl FnMut() -> std::process::Child,
    max_kills: u64,
    (first_ms, step_ms): (u64, u64),
) -> (u64, u64) {
    let (mut kills, mut runs) = (0, 0);
    loop {
        runs += 1;
        assert!(runs < 40, "the killed job never finished");
        let mut child = spawn();
        if kills < max_kills {
            std::thread::sleep(std::time::Duration::from_millis(first_ms + step_ms * kills));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
                continue;
            }
        }
        finish(child, "the last run");
        return (kills, runs);
    }
}
