//! Exactly once under `kill -9`: a job SIGKILLed at random moments and
//! restarted until it finishes leaves the same Kafka output (per partition, in
//! order, headers included) and the same Parquet bytes as a run never killed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iotflow_ingest::producer::{Counters, Pace, ProducerConfig, produce};
use iotflow_ingest::simulator::{SimConfig, Simulator};
use iotflow_redpanda::{Storage, TopicSpec, topics};

/// Kills in `make test`; `IOTFLOW_CHAOS_KILLS` raises it (`make chaos`).
fn kills_wanted() -> u32 {
    std::env::var("IOTFLOW_CHAOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
}

/// Each partition's records as (key, value, headers), in offset order.
type Partitions = BTreeMap<i32, Vec<(Option<Vec<u8>>, Option<Vec<u8>>, BTreeMap<String, Vec<u8>>)>>;

async fn partitions(bootstrap: &[String], topic: &str) -> Partitions {
    common::read_topic(bootstrap, topic)
        .await
        .into_iter()
        .map(|(p, records)| {
            let records = records
                .into_iter()
                .map(|r| (r.record.key, r.record.value, r.record.headers))
                .collect();
            (p, records)
        })
        .collect()
}

/// Every file under `root` (relative path → bytes), staging excluded.
fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.file_name().is_some_and(|n| n == ".staging") {
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

/// A small xorshift: the kill moments, reproducible from the printed seed.
struct Moments(u64);

impl Moments {
    fn next_ms(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_leaves_the_output_of_a_run_never_killed() {
    let broker = common::broker(Storage::Memory).await;
    let bootstrap = broker.bootstrap();
    let addr = broker.addr().to_owned();
    let client = iotflow_redpanda::connect(&bootstrap, Duration::from_secs(30))
        .await
        .unwrap();
    let input = common::unique("in");
    topics::create_topics(&client, &bootstrap, &[TopicSpec::new(input.as_str(), 2)])
        .await
        .unwrap();
    let sim = SimConfig {
        devices: 40,
        interval_ms: 200,
        seed: 11,
        duplicate_ratio: 0.02,
        bad_ratio: 0.01,
        late_ratio: 0.01,
        late_by_ms: 30_000,
        ..SimConfig::default()
    };
    let pace = Pace {
        count: Some(12_000),
        ..Pace::default()
    };
    produce(
        &client,
        &input,
        Simulator::new(sim).unwrap(),
        pace,
        ProducerConfig::default(),
        Arc::new(Counters::default()),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (root, addr, input) = (dir.path().to_path_buf(), addr.clone(), input.clone());
    let run = move |name: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_iotflow"));
        c.args([
            "run",
            "--brokers",
            &addr,
            "--input",
            &input,
            "--output-topic",
            &format!("{name}.aggregates"),
            "--dlq",
            &format!("{name}.dlq"),
            "--until-end",
            "--epoch-records",
            "100",
            "-w",
            "2",
            "--state-dir",
            root.join(name).join("state").to_str().unwrap(),
            "--parquet-dir",
            root.join(name).join("parquet").to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        c
    };

    let reference = run("reference").output().unwrap();
    assert!(
        reference.status.success(),
        "{}",
        String::from_utf8_lossy(&reference.stderr)
    );

    let seed = std::env::var("IOTFLOW_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            nanos ^ (u64::from(std::process::id()) << 32) | 1
        });
    eprintln!("kill moments seed: {seed} (IOTFLOW_CHAOS_SEED to replay)");
    let mut moments = Moments(seed);
    let (wanted, mut kills, mut runs) = (kills_wanted(), 0u32, 0u32);
    let chaos = run.clone();
    let finished = tokio::task::spawn_blocking(move || {
        loop {
            runs += 1;
            assert!(runs <= wanted + 50, "the job never finished");
            let mut child = chaos("chaos").spawn().unwrap();
            if kills < wanted {
                // From right after start (recovery, staging) to well into a run.
                let at = Duration::from_millis(20 + moments.next_ms(900));
                let started = Instant::now();
                while started.elapsed() < at {
                    if child.try_wait().unwrap().is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                if child.try_wait().unwrap().is_none() {
                    child.kill().unwrap(); // SIGKILL
                    child.wait().unwrap();
                    kills += 1;
                    continue;
                }
            }
            // Bounded: a resumed job that stalls must fail the test, not hang it.
            let started = Instant::now();
            while child.try_wait().unwrap().is_none() {
                if started.elapsed() > Duration::from_secs(120) {
                    child.kill().unwrap();
                    let out = child.wait_with_output().unwrap();
                    panic!(
                        "run {runs} after {kills} kills did not finish in 120 s: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "run {runs} after {kills} kills failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return (kills, runs);
        }
    })
    .await
    .unwrap();
    let (kills, runs) = finished;
    eprintln!("{kills} kills, {runs} runs");
    assert!(kills >= wanted, "only {kills} kills landed");

    for (a, b) in [
        ("reference.aggregates", "chaos.aggregates"),
        ("reference.dlq", "chaos.dlq"),
    ] {
        let (want, got) = (
            partitions(&bootstrap, a).await,
            partitions(&bootstrap, b).await,
        );
        assert!(want.values().any(|p| !p.is_empty()), "{a} is empty");
        for (p, records) in &want {
            let other = got.get(p).map(Vec::as_slice).unwrap_or_default();
            assert_eq!(
                other.len(),
                records.len(),
                "{b} partition {p}: {} records, the reference has {}",
                other.len(),
                records.len()
            );
            assert!(other == records.as_slice(), "{b} partition {p} differs");
        }
    }
    let (want, got) = (
        files(&dir.path().join("reference/parquet")),
        files(&dir.path().join("chaos/parquet")),
    );
    assert!(!want.is_empty());
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    assert!(got == want, "Parquet bytes differ");
}
