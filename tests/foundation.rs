//! The foundation end to end: a real local broker, `iotflow topics create`,
//! `iotflow produce` of ≥100k records with duplicates, bad and late records,
//! then every partition read back and checked against the simulator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use iotflow_dataflow::{Audit, ParseLimits};
use iotflow_ingest::producer::{ProduceSummary, partition_for};
use iotflow_ingest::simulator::{Format, RecordClass, SimConfig, Simulator};
use iotflow_redpanda::{Storage, topics};

const COUNT: usize = 120_000;

/// The simulator config that the CLI flags below must produce.
fn expected_config() -> SimConfig {
    SimConfig {
        devices: 150,
        interval_ms: 250,
        seed: 7,
        start_ms: 1_763_787_600_000,
        format: Format::Canonical,
        duplicate_ratio: 0.02,
        bad_ratio: 0.01,
        late_ratio: 0.01,
        late_by_ms: 60_000,
        ..SimConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_then_read_back_every_partition_exactly() {
    let broker = common::broker(Storage::Memory).await;
    let addr = broker.addr().to_owned();
    let topic = common::unique("readings");

    // Topics through the CLI: the defaults, then ours; a second create is a no-op.
    let created = common::stdout(&common::iotflow(&[
        "topics",
        "create",
        "--brokers",
        &addr,
        "--partitions",
        "4",
    ]));
    assert_eq!(created.matches("created").count(), 4, "{created}");
    let again = common::stdout(&common::iotflow(&["topics", "create", "--brokers", &addr]));
    assert_eq!(again.matches("already exists").count(), 4, "{again}");
    let listed: serde_json::Value = serde_json::from_str(&common::stdout(&common::iotflow(&[
        "topics",
        "list",
        "--brokers",
        &addr,
        "--json",
    ])))
    .unwrap();
    let partitions_of = |name: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .map(|t| t["partitions"].as_array().unwrap().len())
    };
    assert_eq!(partitions_of(topics::PROGRESS), Some(1));
    assert_eq!(partitions_of(topics::READINGS), Some(4));

    let count = COUNT.to_string();
    let out = common::iotflow(&[
        "produce",
        "--brokers",
        &addr,
        "--topic",
        &topic,
        "--partitions",
        "4",
        "--count",
        &count,
        "--devices",
        "150",
        "--interval",
        "250ms",
        "--seed",
        "7",
        "--start",
        "2025-11-22T05:00:00Z",
        "--duplicates",
        "0.02",
        "--bad",
        "0.01",
        "--late",
        "0.01",
        "--json",
    ]);
    let summary: ProduceSummary = {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        ProduceSummary {
            records: v["records"].as_u64().unwrap(),
            readings: v["readings"].as_u64().unwrap(),
            bytes: v["bytes"].as_u64().unwrap(),
            seconds: 0.0,
            disordered: v["disordered"].as_u64().unwrap(),
            by_class: serde_json::from_value(v["by_class"].clone()).unwrap(),
            by_partition: serde_json::from_value(v["by_partition"].clone()).unwrap(),
        }
    };
    assert_eq!(summary.records, COUNT as u64);

    // What the broker holds, partition by partition, byte for byte, equals the
    // simulator's records routed by Kafka's partitioner, in order.
    let expected: Vec<_> = Simulator::new(expected_config())
        .unwrap()
        .take(COUNT)
        .collect();
    let mut expected_by_partition: BTreeMap<i32, Vec<&iotflow_ingest::SimRecord>> = BTreeMap::new();
    for rec in &expected {
        expected_by_partition
            .entry(partition_for(rec.key.as_bytes(), 4) as i32)
            .or_default()
            .push(rec);
    }
    let actual = common::read_topic(&broker.bootstrap(), &topic).await;
    assert_eq!(actual.len(), 4);
    for (p, records) in &actual {
        let want = &expected_by_partition[p];
        assert_eq!(records.len(), want.len(), "partition {p} record count");
        assert_eq!(summary.by_partition[p], want.len() as u64);
        for (got, want) in records.iter().zip(want) {
            assert_eq!(got.record.key.as_deref(), Some(want.key.as_bytes()));
            assert_eq!(
                got.record.value.as_deref(),
                Some(want.value.as_slice()),
                "partition {p} offset {}",
                got.offset
            );
            assert_eq!(got.record.timestamp.timestamp_millis(), want.arrival_ms);
        }
        // Offsets are dense: no gaps, no repeats.
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.offset, i as i64);
        }
    }

    // Exact counts per class: the simulator's intent, the CLI summary and an
    // independent audit of the bytes read back all agree.
    let mut intended: BTreeMap<String, u64> = BTreeMap::new();
    for rec in &expected {
        *intended
            .entry(iotflow_ingest::producer::class_name(rec.class))
            .or_default() += 1;
    }
    assert_eq!(summary.by_class, intended);
    let mut audit = Audit::new(ParseLimits::default(), 30_000);
    for records in actual.values() {
        audit.partition(records.iter().map(|r| r.record.value.as_deref().unwrap()));
    }
    let c = audit.counts();
    let n = |class: &str| intended.get(class).copied().unwrap_or(0);
    assert_eq!(c.records, COUNT as u64);
    assert_eq!(c.duplicates, n("duplicate"));
    assert_eq!(c.behind, n("late"));
    assert_eq!(c.accepted_records, n("valid"));
    for (class, count) in &intended {
        if let Some(reason) = class.strip_prefix("bad:") {
            assert_eq!(
                c.rejected.get(reason).copied().unwrap_or(0),
                *count,
                "{reason}"
            );
        }
    }
    assert!(n("duplicate") > 1000 && n("late") > 500, "{intended:?}");
    assert_eq!(
        intended.keys().filter(|k| k.starts_with("bad:")).count(),
        8,
        "every bad class injected"
    );
    let valid_readings: u64 = expected
        .iter()
        .filter(|r| r.class == RecordClass::Valid)
        .map(|r| u64::from(r.readings))
        .sum();
    assert_eq!(c.accepted_readings, valid_readings);

    // A readable sample of exactly what was written: the first records of partition 0.
    let mut table = String::from("offset | key       | value\n");
    for r in actual[&0].iter().take(12) {
        let value = r.record.value.as_deref().unwrap();
        let shown = if value.len() > 160 {
            format!("<{} bytes>", value.len())
        } else {
            String::from_utf8_lossy(value).into_owned()
        };
        let key = String::from_utf8_lossy(r.record.key.as_deref().unwrap()).into_owned();
        writeln!(table, "{:>6} | {key} | {shown}", r.offset).unwrap();
    }
    // And the first record of every class in partition 0, from the bytes read back.
    table.push_str("\nclass                        | offset | value\n");
    let mut shown_classes = std::collections::BTreeSet::new();
    for (r, want) in actual[&0].iter().zip(&expected_by_partition[&0]) {
        let class = iotflow_ingest::producer::class_name(want.class);
        if shown_classes.insert(class.clone()) {
            let value = r.record.value.as_deref().unwrap();
            let shown = if value.len() > 160 {
                format!("<{} bytes>", value.len())
            } else {
                String::from_utf8_lossy(value).into_owned()
            };
            writeln!(table, "{class:<28} | {:>6} | {shown}", r.offset).unwrap();
        }
    }
    insta::assert_snapshot!("partition0_head", table);
}
