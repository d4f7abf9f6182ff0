//! `make bench-avro`: records/s of the same readings in JSON, Avro and Protobuf.

use std::collections::BTreeMap;
use std::process::Command;

use iotflow_redpanda::Storage;
use serde_json::Value;

use super::common;
use super::common::registry::TestRegistry;

/// `make bench-avro`: the default job over the same simulated records in
/// JSON, Avro and Protobuf, on a private broker, three runs of each
/// interleaved; prints records/s, the ratios and the decode cost they imply.
/// A benchmark, not a test: ignored unless asked for, asserts nothing about
/// speed (only that every run read the same readings).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: make bench-avro"]
async fn bench_avro_against_json() {
    let bin = std::env::var("IOTFLOW_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_iotflow").to_owned());
    let count = std::env::var("BENCH_RECORDS").unwrap_or_else(|_| "400000".into());
    let dir = tempfile::tempdir().unwrap();
    let broker = common::broker(Storage::Memory).await;
    let registry = TestRegistry::start(None).await;
    let addr = broker.addr().to_owned();
    let formats = ["json", "avro", "protobuf"];
    let sim = [
        "--count",
        &count,
        "--devices",
        "1000",
        "--partitions",
        "2",
        "--seed",
        "7",
    ];
    let mut inputs = BTreeMap::new();
    for format in formats {
        let topic = common::unique(&format!("bench-{format}"));
        let out = Command::new(&bin)
            .args(["produce", "--brokers", &addr, "--topic", &topic])
            .args(sim)
            .args(["--encoding", format, "--schema-registry", &registry.url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        inputs.insert(format, topic);
    }
    let mut rates: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut readings = BTreeMap::new();
    for round in 0..3 {
        for format in formats {
            let job = format!("bench-{format}-{round}");
            let out = Command::new(&bin)
                .args([
                    "run",
                    "--brokers",
                    &addr,
                    "--input",
                    &inputs[format],
                    "--job",
                    &job,
                    "--json",
                ])
                .args([
                    "--output-topic",
                    &format!("{job}.aggregates"),
                    "--dlq",
                    &format!("{job}.dlq"),
                ])
                .args(["--until-end", "-w", "2", "--progress-interval", "0"])
                .args(["--input-format", format, "--schema-registry", &registry.url])
                .arg("--state-dir")
                .arg(dir.path().join(&job).join("state"))
                .arg("--parquet-dir")
                .arg(dir.path().join(&job).join("parquet"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let s: Value = serde_json::from_slice(&out.stdout).unwrap();
            let rate = s["records"].as_f64().unwrap() / s["seconds"].as_f64().unwrap();
            rates.entry(format).or_default().push(rate);
            // Every run read every record into the same readings.
            let accepted = s["readings_accepted"].as_u64().unwrap();
            assert_eq!(
                *readings.entry(round).or_insert(accepted),
                accepted,
                "{format} run {round}"
            );
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "records: {count} per input (1000 devices, canonical shape), exactly once, -w 2, tansu memory"
    );
    let json = median(&rates["json"]);
    for format in formats {
        let rate = median(&rates[format]);
        let runs: Vec<f64> = rates[format].iter().map(|r| r.round()).collect();
        println!("{format}: {rate:.0} records/s (runs {runs:?})");
        if format != "json" {
            // Two workers decode in parallel: the extra worker time per record.
            println!(
                "  {format} / json: {:.2}; decode cost {:.2} µs more worker time per record than JSON",
                rate / json,
                (1.0 / rate - 1.0 / json) * 2.0 * 1e6
            );
        }
    }
}
