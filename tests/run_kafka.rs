//! `iotflow run` against a real local broker: bounded mode with deterministic
//! epochs gives the same aggregates and dead letters for 1 worker, 2 workers
//! and 2 processes on loopback; they equal the in-memory run of the same
//! records; dead letters match what the simulator injected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iotflow_dataflow::job::RawRecord;
use iotflow_dataflow::runner::{Parallelism, run_bounded};
use iotflow_dataflow::source::memory_inputs;
use iotflow_dataflow::{JobMetrics, WindowSpec};
use iotflow_ingest::producer::ProduceSummary;
use iotflow_ingest::producer::class_name;
use iotflow_ingest::simulator::SimConfig;
use iotflow_redpanda::rskafka::client::Client;
use iotflow_redpanda::rskafka::client::partition::UnknownTopicHandling;
use iotflow_redpanda::{LocalBroker, Storage, TopicSpec, topics};
use iotflow_sink::records::{AggregateRecord, REASON_HEADER};

const COUNT: u64 = 30_000;
/// Records per partition per epoch. Epoch e is judged against the watermark of
/// epoch e−1, so the watermark trails arrivals by up to one epoch of event time
/// (~15 devices × 5 readings/s per partition: 200 records ≈ 2.7 s). That keeps
/// every record the simulator sends 30 s behind truly late for 10 s windows +
/// 1 s lateness; with 1,500-record epochs (≈ 20 s) some of them would still
/// land in open windows, correctly.
const EPOCH_RECORDS: &str = "200";

fn sim() -> SimConfig {
    SimConfig {
        devices: 60,
        interval_ms: 200,
        seed: 5,
        duplicate_ratio: 0.02,
        bad_ratio: 0.01,
        late_ratio: 0.01,
        late_by_ms: 30_000,
        ..SimConfig::default()
    }
}

/// Aggregates as sorted (key, JSON) and dead letters as sorted (reason, source partition, offset).
async fn outputs(
    bootstrap: &[String],
    out: &str,
    dlq: &str,
) -> (Vec<(String, String)>, Vec<(String, String)>) {
    let mut aggs: Vec<(String, String)> = common::read_topic(bootstrap, out)
        .await
        .into_values()
        .flatten()
        .map(|r| {
            (
                String::from_utf8(r.record.key.unwrap()).unwrap(),
                String::from_utf8(r.record.value.unwrap()).unwrap(),
            )
        })
        .collect();
    aggs.sort();
    let mut dead: Vec<(String, String)> = common::read_topic(bootstrap, dlq)
        .await
        .into_values()
        .flatten()
        .map(|r| {
            let h = &r.record.headers;
            let reason = String::from_utf8(h[REASON_HEADER].clone()).unwrap();
            let src = format!(
                "{}/{}",
                String::from_utf8(h["iotflow.source.partition"].clone()).unwrap(),
                String::from_utf8(h["iotflow.source.offset"].clone()).unwrap()
            );
            (reason, src)
        })
        .collect();
    dead.sort();
    (aggs, dead)
}

/// Every dead letter on `dlq` carries its source record's own Kafka timestamp
/// (never the wall clock, never 0): retention counts from it, and a replay
/// writes the same record.
async fn assert_source_timestamps(bootstrap: &[String], input: &str, dlq: &str) {
    let source: BTreeMap<(String, String), i64> = common::read_topic(bootstrap, input)
        .await
        .into_iter()
        .flat_map(|(p, records)| {
            records.into_iter().map(move |r| {
                let at = (p.to_string(), r.offset.to_string());
                (at, r.record.timestamp.timestamp_millis())
            })
        })
        .collect();
    let dead: Vec<_> = common::read_topic(bootstrap, dlq)
        .await
        .into_values()
        .flatten()
        .collect();
    assert!(!dead.is_empty(), "{dlq} is empty");
    for r in dead {
        let h = |name: &str| String::from_utf8(r.record.headers[name].clone()).unwrap();
        let at = (h("iotflow.source.partition"), h("iotflow.source.offset"));
        assert_eq!(
            r.record.timestamp.timestamp_millis(),
            source[&at],
            "{dlq}: the dead letter of {at:?}"
        );
    }
}

/// `run` with its broker, input and outputs: what every job in these tests shares.
/// The job's state and Parquet directories live in the temp dir, named after
/// the (unique) output topic, so every process of one job shares them.
fn job<'a>(addr: &'a str, input: &'a str, out: &'a str, dlq: &'a str) -> [&'a str; 13] {
    let dir = |kind: &str| -> &'static str {
        let path = std::env::temp_dir().join(format!("iotflow-test-{out}-{kind}"));
        Box::leak(path.to_string_lossy().into_owned().into_boxed_str())
    };
    [
        "run",
        "--brokers",
        addr,
        "--input",
        input,
        "--output-topic",
        out,
        "--dlq",
        dlq,
        "--state-dir",
        dir("state"),
        "--parquet-dir",
        dir("parquet"),
    ]
}

/// A bounded job with deterministic epochs.
fn run_args<'a>(addr: &'a str, input: &'a str, out: &'a str, dlq: &'a str) -> Vec<&'a str> {
    let mut args = job(addr, input, out, dlq).to_vec();
    args.extend([
        "--until-end",
        "--epoch-records",
        EPOCH_RECORDS,
        "--window",
        "10s",
        "--max-out-of-order",
        "2s",
        "--lateness",
        "1s",
        "--json",
    ]);
    args
}

/// A job without `--until-end`, cutting 100 ms epochs: it runs until stopped.
fn live_run(addr: &str, input: &str, out: &str, dlq: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_iotflow"));
    c.args(job(addr, input, out, dlq))
        .args(["--epoch-interval", "100ms"]);
    c
}

/// A hostfile for two processes on free loopback ports, in `dir`.
fn loopback_hostfile(dir: &std::path::Path) -> std::path::PathBuf {
    let hostfile = dir.join("hosts");
    let ports = [
        iotflow_redpanda::local::free_port().unwrap(),
        iotflow_redpanda::local::free_port().unwrap(),
    ];
    std::fs::write(
        &hostfile,
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", ports[0], ports[1]),
    )
    .unwrap();
    hostfile
}

/// A private broker with an input topic of `partitions` holding `count` simulated records.
async fn broker_with_input(
    partitions: i32,
    sim: SimConfig,
    count: u64,
) -> (LocalBroker, Client, String, ProduceSummary) {
    let broker = common::broker(Storage::Memory).await;
    let bootstrap = broker.bootstrap();
    let client = iotflow_redpanda::connect(&bootstrap, Duration::from_secs(30))
        .await
        .unwrap();
    let input = common::unique("in");
    topics::create_topics(
        &client,
        &bootstrap,
        &[TopicSpec::new(input.as_str(), partitions)],
    )
    .await
    .unwrap();
    let summary = common::produce_sim(&client, &input, sim, count).await;
    (broker, client, input, summary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_runs_agree_across_workers_processes_and_the_memory_source() {
    let (broker, _, input, summary) = broker_with_input(4, sim(), COUNT).await;
    let addr = broker.addr().to_owned();
    let bootstrap = broker.bootstrap();

    // 1 worker and 2 workers.
    let mut results = Vec::new();
    for workers in ["1", "2"] {
        let (out, dlq) = (common::unique("out"), common::unique("dlq"));
        let mut args = run_args(&addr, &input, &out, &dlq);
        args.extend(["-w", workers]);
        let s: serde_json::Value = serde_json::from_slice(&common::iotflow(&args).stdout).unwrap();
        assert_eq!(s["records"], COUNT);
        results.push(outputs(&bootstrap, &out, &dlq).await);
        assert_source_timestamps(&bootstrap, &input, &dlq).await;
    }
    assert_eq!(results[0], results[1], "1 vs 2 workers");
    {
        // At least once: the same records, dead letters stamped the same way.
        let (out, dlq) = (common::unique("out"), common::unique("dlq"));
        let mut args = run_args(&addr, &input, &out, &dlq);
        args.extend(["-w", "2", "--at-least-once"]);
        common::iotflow(&args);
        assert_eq!(
            outputs(&bootstrap, &out, &dlq).await,
            results[0],
            "at least once"
        );
        assert_source_timestamps(&bootstrap, &input, &dlq).await;
    }

    // 2 processes on loopback, one worker each.
    let (out, dlq) = (common::unique("out"), common::unique("dlq"));
    let dir = tempfile::tempdir().unwrap();
    let hostfile = loopback_hostfile(dir.path());
    let children: Vec<_> = ["0", "1"]
        .iter()
        .map(|p| {
            let mut args = run_args(&addr, &input, &out, &dlq);
            args.extend(["-n", "2", "-p", p, "--hostfile", hostfile.to_str().unwrap()]);
            Command::new(env!("CARGO_BIN_EXE_iotflow"))
                .args(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(
        outputs(&bootstrap, &out, &dlq).await,
        results[0],
        "2 processes vs 1 worker"
    );

    // Updates mode: interim results with final=false, then exactly the final-mode records.
    let (out, dlq) = (common::unique("out"), common::unique("dlq"));
    let mut args = run_args(&addr, &input, &out, &dlq);
    args.extend(["-w", "2", "--emit", "updates"]);
    common::iotflow(&args);
    let (updates, _) = outputs(&bootstrap, &out, &dlq).await;
    let is_final = |v: &str| serde_json::from_str::<AggregateRecord>(v).unwrap().is_final;
    let finals: Vec<(String, String)> = updates
        .iter()
        .filter(|(_, v)| is_final(v))
        .cloned()
        .collect();
    assert_eq!(
        finals, results[0].0,
        "final records of updates mode = final mode"
    );
    let mut last_final_epoch: BTreeMap<&str, u64> = BTreeMap::new();
    for (k, v) in &updates {
        let a: AggregateRecord = serde_json::from_str(v).unwrap();
        if a.is_final {
            last_final_epoch.insert(k, a.epoch);
        }
    }
    let interim: Vec<AggregateRecord> = updates
        .iter()
        .map(|(_, v)| serde_json::from_str::<AggregateRecord>(v).unwrap())
        .filter(|a| !a.is_final)
        .collect();
    assert!(
        interim.len() > 100,
        "updates mode emitted {} interim results",
        interim.len()
    );
    for a in &interim {
        let key = a.key();
        let final_epoch = last_final_epoch.get(key.as_str()).copied();
        assert!(
            final_epoch.is_some_and(|e| e >= a.epoch),
            "{key}: update at epoch {} without a later final",
            a.epoch
        );
    }

    // The Kafka path equals the same operators over the same records in memory.
    let parts: Vec<(i32, Vec<RawRecord>)> = common::read_topic(&bootstrap, &input)
        .await
        .into_iter()
        .map(|(p, recs)| {
            let raw = recs
                .into_iter()
                .map(|r| RawRecord {
                    partition: p,
                    offset: r.offset,
                    key: r.record.key,
                    value: r.record.value.unwrap_or_default().into(),
                    timestamp_ms: r.record.timestamp.timestamp_millis(),
                })
                .collect();
            (p, raw)
        })
        .collect();
    let cfg = common::final_job(WindowSpec::tumbling(10_000).unwrap());
    let shape = iotflow_sink::AggregateShape::of(&cfg.aggregations[0]);
    let shared = Arc::new(parts);
    let mem = run_bounded(
        &Parallelism::default(),
        cfg,
        Arc::new(JobMetrics::default()),
        move |w, p| memory_inputs(&shared, EPOCH_RECORDS.parse().unwrap(), w, p),
    )
    .unwrap();
    let mut from_memory: Vec<(String, String)> = mem
        .results
        .iter()
        .map(|(e, r)| {
            let (key, rec) = iotflow_sink::kafka::aggregate_record(r, *e, &shape).unwrap();
            (key, String::from_utf8(rec.value.unwrap()).unwrap())
        })
        .collect();
    from_memory.sort();
    assert_eq!(results[0].0, from_memory, "Kafka path vs memory path");
    let agg: AggregateRecord = serde_json::from_str(&results[0].0[0].1).unwrap();
    assert!(agg.is_final && agg.count > 0);

    // Dead letters: exactly the injected bad classes, and the late records.
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    for (reason, _) in &results[0].1 {
        *by_reason.entry(reason.clone()).or_default() += 1;
    }
    let mut injected: BTreeMap<String, u64> = BTreeMap::new();
    for (class, n) in &summary.by_class {
        if let Some(reason) = class.strip_prefix("bad:") {
            injected.insert(reason.to_owned(), *n);
        } else if class == &class_name(iotflow_ingest::RecordClass::Late) {
            injected.insert("late".to_owned(), *n);
        }
    }
    assert_eq!(by_reason, injected);
}

/// A live run (time epochs): an empty partition goes idle and stops holding the
/// watermark back, so windows are emitted; Ctrl-C then stops the job cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_partition_does_not_block_a_live_job_and_ctrl_c_stops_it() {
    use rustix::process::{Pid, Signal, kill_process};

    // One device: every record lands in one partition, the other stays empty.
    let one_device = SimConfig {
        devices: 1,
        interval_ms: 100,
        ..SimConfig::default()
    };
    let (broker, client, input, _) = broker_with_input(2, one_device, 2_000).await;
    let addr = broker.addr().to_owned();
    let bootstrap = broker.bootstrap();

    let (out, dlq) = (common::unique("out"), common::unique("dlq"));
    let mut child = live_run(&addr, &input, &out, &dlq)
        .args(["--idle-timeout", "1s", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut emitted = 0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let listed = topics::list_topics(&client).await.unwrap();
        if listed.iter().any(|t| t.name == out) {
            emitted = common::read_topic(&bootstrap, &out)
                .await
                .values()
                .map(Vec::len)
                .sum::<usize>();
            if emitted > 0 {
                break;
            }
        }
    }
    kill_process(Pid::from_child(&child), Signal::INT).unwrap();
    let output = tokio::task::spawn_blocking(move || {
        for _ in 0..150 {
            if let Ok(Some(_)) = child.try_wait() {
                return child.wait_with_output();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        child.wait_with_output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        emitted > 0,
        "no window was emitted: the empty partition held the watermark back"
    );
    assert!(output.status.success(), "{:?}", output.status);
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["records"], 2_000);
    assert!(summary["windows_final"].as_u64().unwrap() > 0);
}

/// Two live processes: Ctrl-C in one stops the other too (a peer that stops
/// must never leave the rest of the job waiting for it forever), and the
/// other says why with a non-zero exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_stopping_stops_the_whole_job() {
    use rustix::process::{Pid, Signal, kill_process};

    let (broker, _, input, _) = broker_with_input(2, sim(), 2_000).await;
    let addr = broker.addr().to_owned();
    let (out, dlq) = (common::unique("out"), common::unique("dlq"));
    let dir = tempfile::tempdir().unwrap();
    let hostfile = loopback_hostfile(dir.path());
    let mut children: Vec<_> = ["0", "1"]
        .iter()
        .map(|p| {
            live_run(&addr, &input, &out, &dlq)
                .args(["-n", "2", "-p", p, "--hostfile", hostfile.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Live and caught up: without --until-end neither would ever finish by itself.
    tokio::time::sleep(Duration::from_secs(4)).await;
    if children
        .iter_mut()
        .any(|c| !matches!(c.try_wait(), Ok(None)))
    {
        let said: Vec<_> = children
            .into_iter()
            .map(|mut c| {
                let _ = c.kill();
                let out = c.wait_with_output().unwrap();
                format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr))
            })
            .collect();
        panic!("a live job exited early:\n{}", said.join("\n"));
    }
    kill_process(Pid::from_child(&children[1]), Signal::INT).unwrap();
    let outputs = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|mut child| {
                for _ in 0..300 {
                    if let Ok(Some(_)) = child.try_wait() {
                        return (true, child.wait_with_output().unwrap());
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = child.kill();
                (false, child.wait_with_output().unwrap())
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let stderr = |i: usize| String::from_utf8_lossy(&outputs[i].1.stderr).into_owned();
    assert!(
        outputs[0].0,
        "process 0 kept running after process 1 stopped"
    );
    assert!(
        outputs[1].0,
        "process 1 did not stop on Ctrl-C: {}",
        stderr(1)
    );
    assert!(outputs[1].1.status.success(), "{}", stderr(1));
    assert!(!outputs[0].1.status.success());
    assert!(
        stderr(0).contains("another process stopped"),
        "{}",
        stderr(0)
    );
}

/// Two live processes, one SIGSTOPped (a frozen peer never closes its
/// connections, so timely alone would wait for it forever): the other
/// notices the missing heartbeats within the peer timeout, names the peer
/// and exits 3 (a crash as far as the commit protocol goes: a restart of
/// every process resumes from the last commit, as the crash tests show).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_peer_is_named_and_stops_the_job_within_the_peer_timeout() {
    use rustix::process::{Pid, Signal, kill_process};

    let (broker, _, input, _) = broker_with_input(2, sim(), 2_000).await;
    let addr = broker.addr().to_owned();
    let (out, dlq) = (common::unique("out"), common::unique("dlq"));
    let dir = tempfile::tempdir().unwrap();
    let hostfile = loopback_hostfile(dir.path());
    let start = |p: &str| {
        live_run(&addr, &input, &out, &dlq)
            .args(["-n", "2", "-p", p, "--hostfile", hostfile.to_str().unwrap()])
            .args(["--peer-timeout", "2s"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (mut p0, mut p1) = (start("0"), start("1"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(p0.try_wait().unwrap().is_none() && p1.try_wait().unwrap().is_none());
    kill_process(Pid::from_child(&p1), Signal::STOP).unwrap();
    let stopped = Instant::now();
    let noticed = loop {
        if p0.try_wait().unwrap().is_some() {
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(30),
            "process 0 never noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out0 = p0.wait_with_output().unwrap();
    let err0 = String::from_utf8_lossy(&out0.stderr);
    let peer = std::fs::read_to_string(&hostfile)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_owned();
    assert_eq!(out0.status.code(), Some(3), "{err0}");
    assert!(
        err0.contains(&format!("process 1 ({peer}) has not been heard from")),
        "{err0}"
    );
    eprintln!("the SIGSTOPped peer was named after {noticed:?} (timeout 2 s)");
    assert!(
        noticed < Duration::from_secs(6),
        "noticed only after {noticed:?}"
    );
    let _ = p1.kill();
    let _ = p1.wait();
}

/// One HTTP/1.1 request over a fresh connection; (status line, body).
fn http(addr: &str, request_line: &str) -> Option<(String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "{request_line} HTTP/1.1\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_owned(), body.to_owned()))
}

/// `run --http`: real HTTP requests to /metrics (Prometheus text with the
/// job's numbers) and / (the status page), while the job runs live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_server_reports_the_running_job() {
    use rustix::process::{Pid, Signal, kill_process};

    let (broker, _, input, summary) = broker_with_input(2, sim(), 3_000).await;
    let addr = broker.addr().to_owned();
    let (out, dlq) = (common::unique("out"), common::unique("dlq"));
    let http_addr = format!(
        "127.0.0.1:{}",
        iotflow_redpanda::local::free_port().unwrap()
    );
    let mut child = live_run(&addr, &input, &out, &dlq)
        .args(["--idle-timeout", "500ms", "--http", &http_addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let records = summary.records;
    let metrics = tokio::task::spawn_blocking({
        let http_addr = http_addr.clone();
        move || {
            // Until every record is in and every partition caught up.
            let mut last = String::new();
            for _ in 0..100 {
                std::thread::sleep(Duration::from_millis(200));
                if let Some((status, body)) = http(&http_addr, "GET /metrics") {
                    assert_eq!(status, "HTTP/1.1 200 OK");
                    let done = body.contains(&format!("iotflow_records_in_total {records}\n"))
                        && body.contains("iotflow_partition_lag_records{partition=\"0\"} 0\n")
                        && body.contains("iotflow_partition_lag_records{partition=\"1\"} 0\n");
                    last = body;
                    if done {
                        break;
                    }
                }
            }
            last
        }
    })
    .await
    .unwrap();
    let (page_status, page) = http(&http_addr, "GET /").unwrap();
    let missing = http(&http_addr, "GET /nope").unwrap().0;
    let post = http(&http_addr, "POST /metrics").unwrap().0;
    let (dom, shot) = tokio::task::spawn_blocking({
        let url = format!("http://{http_addr}/");
        move || in_chromium(&url)
    })
    .await
    .unwrap();
    kill_process(Pid::from_child(&child), Signal::INT).unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();

    assert!(
        metrics.contains(&format!("iotflow_records_in_total {records}\n")),
        "{metrics}"
    );
    assert!(metrics.contains("iotflow_watermark_ms "), "{metrics}");
    assert!(metrics.contains("# TYPE iotflow_dead_letters_total counter"));
    assert_eq!(page_status, "HTTP/1.1 200 OK");
    assert!(page.contains("http-equiv=\"refresh\""), "{page}");
    assert!(
        page.contains(&format!("<td id=\"records-in\">{records}</td>")),
        "{page}"
    );
    // Rendered by a real browser: the numbers are on the page it shows.
    assert!(
        dom.contains(&format!("<td id=\"records-in\">{records}</td>")),
        "{dom}"
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        shot.display()
    );
    eprintln!("status page screenshot: {}", shot.display());
    assert_eq!(missing, "HTTP/1.1 404 Not Found");
    assert_eq!(post, "HTTP/1.1 405 Method Not Allowed");
    assert!(status.success(), "{status:?}");
}

/// Headless Chromium (Debian's; `make test` installs it): the DOM it renders
/// for `url`, and a screenshot of it under the test's temporary directory.
fn in_chromium(url: &str) -> (String, std::path::PathBuf) {
    let profile = tempfile::tempdir().unwrap();
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let chromium = |extra: &[&str]| {
        // `timeout` bounds a browser that hangs instead of failing.
        let out = Command::new("timeout")
            .args(["60", "chromium"])
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
            ])
            .args(["--no-first-run", "--disable-background-networking"])
            .args([
                "--disable-component-update",
                "--disable-sync",
                "--window-size=800,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(url)
            .output()
            .expect("chromium runs (make test installs Debian's chromium)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = chromium(&["--dump-dom"]);
    chromium(&[&format!("--screenshot={}", shot.display())]);
    (dom, shot)
}

/// `run --parquet-dir`: the dataset holds exactly the final windows that
/// went to Kafka, each once, in files under the date of their window, and
/// nothing is left staged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parquet_dataset_holds_each_final_window_once() {
    let (broker, _, input, _) = broker_with_input(2, sim(), 6_000).await;
    let addr = broker.addr().to_owned();
    let bootstrap = broker.bootstrap();
    let (out, dlq) = (common::unique("out"), common::unique("dlq"));
    // `job` puts the Parquet dataset under the temp dir, named after the output topic.
    let dir = std::env::temp_dir().join(format!("iotflow-test-{out}-parquet"));
    let mut args = run_args(&addr, &input, &out, &dlq);
    args.extend(["-w", "2"]);
    common::iotflow(&args);

    let (aggs, _) = outputs(&bootstrap, &out, &dlq).await;
    let mut expected: Vec<common::Row> = aggs
        .iter()
        .map(|(k, v)| {
            let a: AggregateRecord = serde_json::from_str(v).unwrap();
            (k.clone(), a.count, a.sum.to_bits())
        })
        .collect();
    expected.sort();
    let files = common::parquet_rows(&dir);
    // Rolled, not one file per epoch: below the default roll limits, each
    // worker writes one file per date, at the end of the input.
    let mut per_worker_and_date = std::collections::BTreeSet::new();
    for (path, _) in &files {
        let (date, name) = path.rsplit_once('/').unwrap();
        let worker = name.rsplit_once("-w").unwrap().1;
        assert!(
            per_worker_and_date.insert((date.to_owned(), worker.to_owned())),
            "a second file of worker {worker} in {date}"
        );
    }
    assert!(files.len() > 1, "both workers wrote files");
    for (path, rows) in &files {
        let date = path
            .split("date=")
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap();
        for (key, _, _) in rows {
            let start: i64 = key.rsplit('|').next().unwrap().parse().unwrap();
            assert_eq!(
                iotflow_sink::parquet::date_of(start),
                date,
                "{key} in {path}"
            );
        }
    }
    let mut got: Vec<common::Row> = files.into_iter().flat_map(|(_, r)| r).collect();
    got.sort();
    let missing: Vec<_> = expected
        .iter()
        .filter(|e| !got.contains(e))
        .take(3)
        .collect();
    let extra: Vec<_> = got
        .iter()
        .filter(|g| !expected.contains(g))
        .take(3)
        .collect();
    assert!(
        got == expected,
        "{} rows in Parquet, {} in Kafka; missing {missing:?}, extra {extra:?}",
        got.len(),
        expected.len()
    );
    let staged: Vec<_> = walk(&dir.join(iotflow_sink::parquet::STAGING));
    assert!(staged.is_empty(), "left staged: {staged:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flat_map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() { walk(&p) } else { vec![p] }
        })
        .collect()
}

/// Every published record carries its epoch and its index among that epoch's
/// records in its partition: indexes run 0..n without gaps, epochs never go
/// back, and `tail_mark` reads where each partition stands (and refuses a
/// partition someone else wrote last).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_records_are_indexed_per_epoch_and_partition() {
    use iotflow_sink::kafka::tail_mark;
    use iotflow_sink::protocol::TailMark;
    use iotflow_sink::records::{EPOCH_HEADER, INDEX_HEADER, JOB_HEADER};

    let (broker, client, input, _) = broker_with_input(2, sim(), 6_000).await;
    let addr = broker.addr().to_owned();
    let bootstrap = broker.bootstrap();
    let (out, dlq) = (common::unique("out"), common::unique("dlq"));
    let mut args = run_args(&addr, &input, &out, &dlq);
    args.extend(["-w", "2"]);
    common::iotflow(&args);
    let job = format!("{input}-to-{out}");

    for topic in [&out, &dlq] {
        for (partition, records) in common::read_topic(&bootstrap, topic).await {
            assert!(!records.is_empty(), "{topic}/{partition} is empty");
            let marks: Vec<TailMark> = records
                .iter()
                .map(|r| {
                    let h = |n: &str| -> u64 {
                        String::from_utf8(r.record.headers[n].clone())
                            .unwrap()
                            .parse()
                            .unwrap()
                    };
                    TailMark {
                        epoch: h(EPOCH_HEADER),
                        index: h(INDEX_HEADER),
                    }
                })
                .collect();
            for pair in marks.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                let next_in_epoch = b.epoch == a.epoch && b.index == a.index + 1;
                let new_epoch = b.epoch > a.epoch && b.index == 0;
                assert!(
                    next_in_epoch || new_epoch,
                    "{topic}/{partition}: {a:?} then {b:?}"
                );
            }
            assert_eq!(marks[0].index, 0);
            let pc = client
                .partition_client(topic.as_str(), partition, UnknownTopicHandling::Error)
                .await
                .unwrap();
            assert!(
                records
                    .iter()
                    .all(|r| r.record.headers[JOB_HEADER] == job.as_bytes()),
                "every record names its job"
            );
            assert_eq!(tail_mark(&pc, &job).await.unwrap(), marks.last().copied());
            assert_eq!(tail_mark(&pc, "another-job").await.unwrap(), None);
        }
    }

    // Another job's records after ours are stepped over: each job finds its own tail.
    let pc = client
        .partition_client(out.as_str(), 0, UnknownTopicHandling::Error)
        .await
        .unwrap();
    let ours = tail_mark(&pc, &job).await.unwrap();
    let theirs: Vec<_> = (0..3u64)
        .map(|i| iotflow_redpanda::rskafka::record::Record {
            key: None,
            value: Some(b"{}".to_vec()),
            headers: [
                (JOB_HEADER, "another-job".to_owned()),
                (EPOCH_HEADER, "900".to_owned()),
                (INDEX_HEADER, i.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into_bytes()))
            .collect(),
            timestamp: chrono::Utc::now(),
        })
        .collect();
    pc.produce(
        theirs,
        iotflow_redpanda::rskafka::client::partition::Compression::NoCompression,
    )
    .await
    .unwrap();
    assert_eq!(tail_mark(&pc, &job).await.unwrap(), ours);
    assert_eq!(
        tail_mark(&pc, "another-job").await.unwrap(),
        Some(TailMark {
            epoch: 900,
            index: 2
        })
    );

    // An empty partition has no tail; one another writer wrote last is refused.
    let other = common::unique("other");
    topics::create_topics(&client, &bootstrap, &[TopicSpec::new(other.as_str(), 1)])
        .await
        .unwrap();
    let pc = client
        .partition_client(other.as_str(), 0, UnknownTopicHandling::Error)
        .await
        .unwrap();
    assert_eq!(tail_mark(&pc, &job).await.unwrap(), None);
    let foreign = iotflow_redpanda::rskafka::record::Record {
        key: None,
        value: Some(b"x".to_vec()),
        headers: Default::default(),
        timestamp: chrono::Utc::now(),
    };
    pc.produce(
        vec![foreign],
        iotflow_redpanda::rskafka::client::partition::Compression::NoCompression,
    )
    .await
    .unwrap();
    assert!(tail_mark(&pc, &job).await.is_err());
}
