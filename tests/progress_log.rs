//! The progress topic on a real broker: commit records go in, come back in
//! log order, and whatever is torn or foreign is reported, never trusted;
//! recovery planning over what was read resumes from the newest commit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use iotflow_redpanda::Storage;
use iotflow_redpanda::topics::{self, TopicSpec};
use iotflow_sink::progress::ProgressLog;
use iotflow_sink::protocol::{
    CommitRecord, EpochStaging, Plan, ProtocolError, PublishTarget, Staged, plan_recovery,
};
use rskafka::client::Client;
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::record::Record;

fn commit(job: &str, epoch: u64, generation: u64) -> CommitRecord {
    let mut s = EpochStaging::new(epoch, 1);
    s.stage(
        0,
        Staged {
            publish: vec![PublishTarget {
                topic: "iot.aggregates".into(),
                partition: 0,
                records: epoch * 10,
                checksum: 0,
            }],
            source_offsets: BTreeMap::from([(0, epoch as i64 * 100)]),
            ..Staged::default()
        },
    )
    .unwrap();
    s.commit(job, generation).unwrap()
}

/// A local broker with a fresh one-partition progress topic.
async fn progress_topic() -> (iotflow_redpanda::LocalBroker, Client, String, ProgressLog) {
    let broker = common::broker(Storage::Memory).await;
    let bootstrap = broker.bootstrap();
    let client = iotflow_redpanda::connect(&bootstrap, Duration::from_secs(30))
        .await
        .unwrap();
    let topic = common::unique("progress");
    topics::create_topics(&client, &bootstrap, &[TopicSpec::new(topic.as_str(), 1)])
        .await
        .unwrap();
    let log = ProgressLog::open(&client, &topic).await.unwrap();
    (broker, client, topic, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_round_trip_and_untrusted_records_are_reported() {
    let (_broker, client, topic, log) = progress_topic().await;

    let mut written = Vec::new();
    for epoch in 0..5 {
        let c = commit("a", epoch, 1 + epoch / 3);
        log.append(&c).await.unwrap();
        written.push(c);
        if epoch == 2 {
            let other = commit("b", 0, 9);
            log.append(&other).await.unwrap();
            written.push(other);
        }
    }
    // A torn commit record and a stranger's bytes.
    let pc = client
        .partition_client(topic.as_str(), 0, UnknownTopicHandling::Error)
        .await
        .unwrap();
    let torn = commit("a", 5, 2).encode().unwrap();
    let raw = |value: Vec<u8>| Record {
        key: Some(b"a/2".to_vec()),
        value: Some(value),
        headers: Default::default(),
        timestamp: chrono::Utc::now(),
    };
    pc.produce(
        vec![raw(torn[..torn.len() / 2].to_vec()), raw(b"hello".to_vec())],
        Compression::NoCompression,
    )
    .await
    .unwrap();

    let (commits, untrusted) = log.read_all().await.unwrap();
    assert_eq!(commits, written);
    assert_eq!(untrusted.len(), 2);
    assert!(matches!(
        untrusted[0].error,
        ProtocolError::Sealed(iotflow_dataflow::sealed::Unsealed::Checksum { .. })
    ));
    assert!(untrusted[0].offset < untrusted[1].offset);

    match plan_recovery("a", &commits, &BTreeSet::from([5]), |_| true) {
        Plan::Resume {
            generation,
            from,
            discard,
            ..
        } => {
            assert_eq!((generation, from.epoch, discard), (3, 4, vec![5]));
            assert_eq!(from.source_offsets[&0], 400);
        }
        other => panic!("{other:?}"),
    }
}

/// A follower polls the progress topic: one fetch brings what follows its
/// offset and says whether it reached the end; at the end, a poll waits for
/// the next record (or its wait) and then brings it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_brings_what_follows_and_says_when_it_reached_the_end() {
    let (_broker, client, topic, log) = progress_topic().await;
    let mut offsets = Vec::new();
    for epoch in 0..4 {
        offsets.push(log.append(&commit("a", epoch, 1)).await.unwrap());
    }
    let mut read = Vec::new();
    let mut next = offsets[1];
    loop {
        let poll = log.poll_from(next, 50).await.unwrap();
        assert!(poll.untrusted.is_empty());
        read.extend(poll.commits.into_iter().map(|c| c.epoch));
        next = poll.next;
        if poll.at_end {
            break;
        }
    }
    assert_eq!(read, [1, 2, 3]);
    assert_eq!(next, offsets[3] + 1);

    let quiet = log.poll_from(next, 50).await.unwrap();
    assert!(quiet.commits.is_empty() && quiet.at_end);
    assert_eq!(quiet.next, next);

    let waiting = tokio::spawn(async move {
        for _ in 0..200 {
            let poll = log.poll_from(next, 50).await.unwrap();
            if let Some(c) = poll.commits.first() {
                return (c.epoch, poll.next);
            }
        }
        panic!("the appended record never came");
    });
    let writer = ProgressLog::open(&client, &topic).await.unwrap();
    let at = writer.append(&commit("a", 4, 1)).await.unwrap();
    assert_eq!(waiting.await.unwrap(), (4, at + 1));
}

/// A job's history is read from the end of the progress topic: back to its
/// newest record, then forward from the offset that record names. Appends
/// answer with the record's own offset, which `log_from` is built from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_history_is_read_from_the_end_as_far_as_its_newest_record_says() {
    let (_broker, client, topic, log) = progress_topic().await;
    let mut offsets = Vec::new();
    for epoch in 0..40 {
        let mut a = commit("a", epoch, 1);
        // As the committer does: the oldest of the two commits before.
        a.log_from = offsets.iter().rev().take(2).min().copied();
        offsets.push(log.append(&a).await.unwrap());
        log.append(&commit("b", epoch, 1)).await.unwrap();
    }
    let (all, _) = log.read_all().await.unwrap();
    assert_eq!(all.len(), 80);
    let pc = client
        .partition_client(topic.as_str(), 0, UnknownTopicHandling::Error)
        .await
        .unwrap();
    let read = iotflow_redpanda::scan::read_range(&pc, 0, 80)
        .await
        .unwrap();
    let a_offsets: Vec<i64> = read
        .iter()
        .filter(|r| {
            r.record
                .key
                .as_deref()
                .is_some_and(|k| k.starts_with(b"a/"))
        })
        .map(|r| r.offset)
        .collect();
    assert_eq!(
        offsets, a_offsets,
        "appends answer with their records' offsets"
    );

    let history = log.read_history("a").await.unwrap();
    let epochs: Vec<u64> = history.commits.iter().map(|(_, c)| c.epoch).collect();
    assert_eq!(epochs, vec![37, 38, 39]);
    assert_eq!(history.read_from, offsets[37]);
    assert!(
        history.records_read < 30,
        "read {} of 80 records",
        history.records_read
    );
    assert!(log.read_history("nobody").await.unwrap().commits.is_empty());
}
