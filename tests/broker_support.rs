//! What the local broker (tansu 0.6) supports through rskafka, pinned as tests
//! so that docs/brokers.md stays true. Our own code must not depend on the
//! differences found here (it must stay correct on Kafka and Redpanda).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use iotflow_redpanda::rskafka::client::partition::{
    Compression, OffsetAt, PartitionClient, UnknownTopicHandling,
};
use iotflow_redpanda::rskafka::record::Record;
use iotflow_redpanda::{LocalBroker, Storage, TopicSpec, scan, topics};

fn record(i: usize) -> Record {
    Record {
        key: Some(format!("dev-{i:05}").into_bytes()),
        value: Some(
            format!(r#"{{"device_id":"dev-{i:05}","ts":1763787600000,"v":{i}}}"#).into_bytes(),
        ),
        headers: BTreeMap::from([("epoch".to_owned(), i.to_string().into_bytes())]),
        timestamp: Utc
            .timestamp_millis_opt(1_763_787_600_000 + i as i64)
            .unwrap(),
    }
}

async fn partition(broker: &LocalBroker, topic: &str, partitions: i32) -> PartitionClient {
    let client = iotflow_redpanda::connect(&broker.bootstrap(), Duration::from_secs(30))
        .await
        .unwrap();
    topics::create_topics(
        &client,
        &broker.bootstrap(),
        &[TopicSpec::new(topic, partitions)],
    )
    .await
    .unwrap();
    client
        .partition_client(topic, 0, UnknownTopicHandling::Retry)
        .await
        .unwrap()
}

async fn produce_batches(
    pc: &PartitionClient,
    batches: usize,
    per_batch: usize,
    compression: Compression,
) {
    for b in 0..batches {
        let recs = (0..per_batch).map(|i| record(b * per_batch + i)).collect();
        pc.produce(recs, compression).await.unwrap();
    }
}

/// `scan::fetch_from` answers with exactly the records from any offset of a
/// partition holding records `0..n` in batches, inside a batch included.
async fn fetch_from_answers_from_every_offset(pc: &PartitionClient, n: usize) {
    for offset in 0..=n as i64 {
        let (got, high_watermark) = scan::fetch_from(pc, offset, scan::FETCH_MAX_BYTES, 0)
            .await
            .unwrap();
        assert_eq!(high_watermark, n as i64);
        let offsets: Vec<i64> = got.iter().map(|r| r.offset).collect();
        assert_eq!(
            offsets,
            (offset..n as i64).collect::<Vec<_>>(),
            "fetch from {offset}"
        );
        assert!(
            got.iter().all(|r| r.record == record(r.offset as usize)),
            "fetch from {offset}: records differ"
        );
    }
    let middle = scan::read_range(pc, 7, 13).await.unwrap();
    assert_eq!(
        middle.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (7..13).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_storage_capabilities() {
    let broker = common::broker(Storage::Memory).await;

    // Produce with headers, fetch them back unchanged, in every codec we build.
    for (name, codec) in [
        ("none", Compression::NoCompression),
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
    ] {
        let pc = partition(&broker, &common::unique(name), 1).await;
        produce_batches(&pc, 3, 5, codec).await;
        let got = scan::read_range(&pc, 0, 15).await.unwrap();
        let want: Vec<Record> = (0..15).map(record).collect();
        assert_eq!(
            got.iter().map(|r| r.record.clone()).collect::<Vec<_>>(),
            want,
            "{name}"
        );
    }

    // Offsets: the high watermark from Fetch is right; ListOffsets(latest) is not.
    let pc = partition(&broker, &common::unique("offsets"), 1).await;
    produce_batches(&pc, 3, 5, Compression::NoCompression).await;
    assert_eq!(pc.get_offset(OffsetAt::Earliest).await.unwrap(), 0);
    let observed_latest = pc.get_offset(OffsetAt::Latest).await.unwrap();
    assert_eq!(
        scan::offsets(&pc).await.unwrap(),
        (0, 15),
        "our end offset comes from Fetch"
    );
    // Known tansu 0.6 memory-storage bug: base offset of the last batch + 1.
    // If this starts failing because it returns 15, tansu fixed it: update docs/brokers.md.
    assert_eq!(
        observed_latest, 11,
        "ListOffsets(latest) on tansu memory storage"
    );

    // Known tansu 0.6 memory-storage bug: a fetch from inside a batch answers
    // from the next batch (skipping the rest of this one), or nothing inside the
    // last batch. Kafka answers with the batch that holds the offset.
    let first_offset = |records: Vec<iotflow_redpanda::rskafka::record::RecordAndOffset>| {
        records.first().map(|r| r.offset)
    };
    let (inside_first, _) = pc.fetch_records(2, 1..1_000_000, 0).await.unwrap();
    assert_eq!(
        first_offset(inside_first),
        Some(5),
        "fetch from inside batch 0..5"
    );
    let (inside_last, _) = pc.fetch_records(12, 1..1_000_000, 0).await.unwrap();
    assert_eq!(
        first_offset(inside_last),
        None,
        "fetch from inside the last batch"
    );
    fetch_from_answers_from_every_offset(&pc, 15).await;

    // DeleteRecords is not supported: tansu closes the connection. A short
    // client deadline keeps rskafka from retrying it for the default 30 s.
    let impatient = iotflow_redpanda::connect(&broker.bootstrap(), Duration::from_secs(2))
        .await
        .unwrap();
    let pc2 = impatient
        .partition_client(pc.topic(), 0, UnknownTopicHandling::Error)
        .await
        .unwrap();
    assert!(
        pc2.delete_records(10, 1_000).await.is_err(),
        "DeleteRecords on tansu"
    );
    assert_eq!(
        pc.get_offset(OffsetAt::Earliest).await.unwrap(),
        0,
        "nothing was deleted"
    );
    assert_eq!(scan::read_range(&pc, 0, 15).await.unwrap().len(), 15);

    // Topic configs (compaction, retention) are accepted at creation.
    let client = iotflow_redpanda::connect(&broker.bootstrap(), Duration::from_secs(30))
        .await
        .unwrap();
    let spec = TopicSpec::new(common::unique("progress"), 1)
        .config("cleanup.policy", "compact")
        .config("retention.ms", "-1");
    let outcome = topics::create_topics(&client, &broker.bootstrap(), &[spec])
        .await
        .unwrap();
    assert_eq!(outcome[0].1, topics::CreateOutcome::Created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_storage_survives_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tansu.db");
    let topic = common::unique("durable");
    let port = iotflow_redpanda::local::free_port().unwrap();
    {
        let mut broker = LocalBroker::builder()
            .storage(Storage::Sqlite(db.clone()))
            .port(port)
            .log_path(dir.path().join("tansu.log"))
            .start()
            .await
            .unwrap();
        let pc = partition(&broker, &topic, 1).await;
        produce_batches(&pc, 4, 50, Compression::NoCompression).await;
        fetch_from_answers_from_every_offset(&pc, 200).await;
        // SQLite storage answers ListOffsets(latest) correctly.
        assert_eq!(pc.get_offset(OffsetAt::Latest).await.unwrap(), 200);
        broker.stop(Duration::from_secs(10));
    }
    let broker = LocalBroker::builder()
        .storage(Storage::Sqlite(db))
        .port(port)
        .log_path(dir.path().join("tansu.log"))
        .start()
        .await
        .unwrap();
    let client = iotflow_redpanda::connect(&broker.bootstrap(), Duration::from_secs(30))
        .await
        .unwrap();
    let pc = client
        .partition_client(topic.as_str(), 0, UnknownTopicHandling::Retry)
        .await
        .unwrap();
    assert_eq!(scan::offsets(&pc).await.unwrap(), (0, 200));
    let got = scan::read_range(&pc, 0, 200).await.unwrap();
    assert_eq!(got.len(), 200);
    assert_eq!(got[199].record, record(199));
}
