//! Recovery that resumes before commits it has records of (their state is
//! damaged) cuts their epochs again as they were committed. A live job cuts
//! epochs by wall-clock time and marks partitions idle by wall-clock quiet,
//! and those epochs' outputs may be published already: publishing skips
//! what a partition's tail holds by (epoch, index), so a different cut would
//! leave one epoch's start under another's marks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use iotflow_ingest::producer::{Counters, Pace, ProducerConfig, produce};
use iotflow_ingest::simulator::Simulator;
use iotflow_redpanda::{Storage, TopicSpec, topics};
use iotflow_sink::failpoint;
use iotflow_sink::progress::ProgressLog;
use iotflow_sink::protocol::{CommitRecord, JobCommits};
use iotflow_sink::records::{EPOCH_HEADER, INDEX_HEADER};

fn header(r: &iotflow_redpanda::rskafka::record::RecordAndOffset, name: &str) -> u64 {
    std::str::from_utf8(&r.record.headers[name])
        .unwrap()
        .parse()
        .unwrap()
}

/// The job's valid commits, by epoch: what the last run left standing.
fn valid(commits: &[CommitRecord]) -> BTreeMap<u64, CommitRecord> {
    let mut valid = JobCommits::default();
    for c in commits {
        valid.push(c.clone());
    }
    valid.newest_first().map(|c| (c.epoch, c.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epochs_of_skipped_commits_are_cut_again_as_they_were_committed() {
    let broker = common::broker(Storage::Memory).await;
    let bootstrap = broker.bootstrap();
    let client = iotflow_redpanda::connect(&bootstrap, Duration::from_secs(30))
        .await
        .unwrap();
    let input = common::unique("recut");
    let (output, dlq) = (format!("{input}.aggregates"), format!("{input}.dlq"));
    topics::create_topics(&client, &bootstrap, &[TopicSpec::new(input.as_str(), 2)])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (state, parquet) = (dir.path().join("state"), dir.path().join("parquet"));
    let job = |live: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_iotflow"));
        c.args(["run", "--brokers", broker.addr(), "--input", &input])
            .args(["--output-topic", &output, "--dlq", &dlq, "-w", "2"])
            .args(["--state-dir", state.to_str().unwrap()])
            .args(["--parquet-dir", parquet.to_str().unwrap()])
            .args(["--epoch-interval", "40ms", "--idle-timeout", "200ms"])
            // A snapshot every epoch: each commit has state of its own to fall back past.
            .args(["--checkpoint-every", "0"])
            .env_remove(failpoint::ENV)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if live {
            // Killed while publishing some epochs after the first outputs;
            // no commit runs ahead of the epoch being published.
            c.env(failpoint::ENV, "publish-batch@8");
            c.args(["--commit-depth", "1"]);
        } else {
            c.arg("--until-end");
        }
        c
    };

    // The input arrives while the job runs, so time cuts its epochs.
    let first = job(true).spawn().unwrap();
    let pace = Pace {
        count: Some(12_000),
        rate: Some(3_000.0),
        ..Pace::default()
    };
    let sim = Simulator::new(common::troubled_sim(7, 2_000)).unwrap();
    let counters = std::sync::Arc::new(Counters::default());
    let cfg = ProducerConfig::default();
    let produced = produce(&client, &input, sim, pace, cfg, counters);
    let (first, produced) = tokio::join!(
        tokio::task::spawn_blocking(move || common::wait_bounded(first, "the live run")),
        produced
    );
    produced.unwrap();
    let first = first.unwrap();
    assert!(!first.status.success(), "the failpoint killed the live run");

    let log = ProgressLog::open(&client, "iot.progress").await.unwrap();
    let commits_of_job = || async {
        let (commits, _) = log.read_all().await.unwrap();
        let job = format!("{input}-to-{output}");
        commits
            .into_iter()
            .filter(|c| c.job == job)
            .collect::<Vec<_>>()
    };
    let before = valid(&commits_of_job().await);
    assert!(before.len() >= 4, "too few commits: {:?}", before.keys());
    // The two newest commits' snapshots damaged: recovery resumes before them.
    let skipped: Vec<&CommitRecord> = before.values().rev().take(2).collect();
    for c in &skipped {
        for s in &c.snapshots {
            std::fs::write(state.join(&s.path), b"damaged").unwrap();
        }
    }
    let (newest, resumed_after) = (skipped[0].epoch, skipped[1].epoch - 1);
    // The newest commit is the one its publishing was killed in: the
    // resumed run must publish the rest of what it began.
    assert!(!skipped[0].publish.is_empty());
    let mut published = Vec::new();
    for topic in [&output, &dlq] {
        for records in common::read_topic(&bootstrap, topic).await.values() {
            published.extend(records.iter().map(|r| header(r, EPOCH_HEADER)));
        }
    }
    assert_eq!(
        published.iter().max(),
        Some(&newest),
        "killed while publishing"
    );

    let second = common::finish(job(false).spawn().unwrap(), "the resumed run");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains(&format!("resuming after committed epoch {resumed_after} ")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "epochs {}..={newest} are cut again as they were committed",
            resumed_after + 1
        )),
        "{stderr}"
    );

    // The skipped epochs committed again with the same cuts and outputs.
    let after = valid(&commits_of_job().await);
    for old in &skipped {
        let new = &after[&old.epoch];
        assert!(new.generation > old.generation, "epoch {}", old.epoch);
        assert_eq!(
            (&new.source_offsets, &new.source_states, &new.publish),
            (&old.source_offsets, &old.source_states, &old.publish),
            "epoch {} cut differently",
            old.epoch
        );
    }
    // Every partition holds each epoch's records once, in order, as the
    // commits that stand name them: count and checksum.
    let mut checked = 0;
    for topic in [&output, &dlq] {
        for (partition, records) in common::read_topic(&bootstrap, topic).await {
            let mut by_epoch: BTreeMap<u64, (u64, crc32fast::Hasher)> = BTreeMap::new();
            for r in &records {
                let (epoch, index) = (header(r, EPOCH_HEADER), header(r, INDEX_HEADER));
                let (n, crc) = by_epoch.entry(epoch).or_default();
                assert_eq!(index, *n, "{topic}/{partition}: epoch {epoch} out of order");
                *n += 1;
                crc.update(r.record.value.as_deref().unwrap_or_default());
            }
            for (epoch, (n, crc)) in by_epoch {
                let Some(target) = after[&epoch]
                    .publish
                    .iter()
                    .find(|t| &t.topic == topic && t.partition == partition)
                else {
                    panic!(
                        "{topic}/{partition}: epoch {epoch}'s records, which its commit does not name"
                    );
                };
                assert_eq!(
                    (n, crc.finalize()),
                    (target.records, target.checksum),
                    "{topic}/{partition}: epoch {epoch} is not what its commit names"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 10, "too few epochs published: {checked}");
}
