//! `iotflow demo` end to end against a kept cluster (`--brokers`, as with
//! Redpanda), twice in a row: each run reads only its own devices' records,
//! and its self-checks (dead letters against the simulator, the windows of
//! both aggregations of `jobs/demo.toml` against their topics and Parquet
//! datasets, an alert for each kind of the devices' spells, alert events on
//! the topic against the dataset) pass. The demo exits non-zero when a check fails, so the exit
//! status is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use iotflow_redpanda::Storage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_twice_in_a_row_on_a_kept_cluster_and_its_checks_pass() {
    let broker = common::broker(Storage::Memory).await;
    let dir = tempfile::tempdir().unwrap();
    for run in 1..=2 {
        let out = common::iotflow(&[
            "demo",
            "--brokers",
            broker.addr(),
            "--dir",
            dir.path().to_str().unwrap(),
            "--devices",
            "50",
            "--count",
            "20000",
            "--rate",
            "20000",
            // 400 s of event time: spells often enough that every kind happens.
            "--episode-every",
            "2m",
            "--episode-length",
            "90s",
            "--episode-share",
            "0.4",
        ]);
        let text = common::stdout(&out);
        let line = |start: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(start))
                .unwrap_or_else(|| panic!("run {run}: no `{start}` line:\n{text}"))
        };
        let read = line("the job read");
        assert!(
            read.contains(" 20000 records") && read.ends_with("[ok]"),
            "run {run}: {read}"
        );
        for start in [
            "on iot.readings.dlq",
            "on the topics",
            "in Parquet",
            "on iot.alerts",
            "overheat spells raise overheat",
            "stuck spells raise stuck_sensor",
            "silent spells raise silent",
        ] {
            let l = line(start);
            assert!(
                l.ends_with("[ok]") || l.ends_with(": ok"),
                "run {run}:\n{text}"
            );
        }
        let alerts = dataset_rows(&dir.path().join("parquet").join("alerts"));
        assert!(
            line("on iot.alerts").contains(&format!("in Parquet {alerts} rows")),
            "run {run}: {alerts} alert rows on disk:\n{text}"
        );
        assert!(!text.contains("MISMATCH"), "run {run}:\n{text}");
        let parquet = common::parquet_rows(&dir.path().join("parquet"));
        let per_device: usize = parquet.iter().map(|(_, r)| r.len()).sum();
        let per_site = dataset_rows(&dir.path().join("parquet").join("site_1m"));
        assert!(
            per_device > 0 && per_site > 0,
            "run {run}: {per_device} + {per_site} Parquet rows"
        );
        let rows = per_device + per_site;
        assert!(
            text.contains(&format!("in Parquet         {rows:>10} rows")),
            "run {run}: the summary does not show the {rows} rows on disk:\n{text}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("| lag "), "no progress lines:\n{stderr}");
    }
}

/// Rows of every Parquet file of a dataset, from the files' footers.
fn dataset_rows(dir: &std::path::Path) -> usize {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let mut rows = 0;
    for day in std::fs::read_dir(dir).unwrap() {
        for f in std::fs::read_dir(day.unwrap().path()).unwrap() {
            let reader =
                SerializedFileReader::new(std::fs::File::open(f.unwrap().path()).unwrap()).unwrap();
            rows += reader.metadata().file_metadata().num_rows() as usize;
        }
    }
    rows
}
