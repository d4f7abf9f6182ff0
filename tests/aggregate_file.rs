//! `iotflow aggregate-file`, the peers' benchmark hook, end to end: the same
//! readings as JSON lines and as Parquet give the same CSV for 1 and 2
//! workers, equal to a naive recomputation (approximate percentiles within
//! their 1 % bound of it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, LargeStringArray, RecordBatch};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

const SENSORS: [&str; 3] = ["temperature", "humidity", "pressure"];

struct Row {
    device: String,
    sensor: &'static str,
    ts_ms: i64,
    value: f64,
    seq: i64,
}

/// Like `peers/gen.py`: arrival order, 15 % of events up to 1999 ms older than their arrival.
fn rows(n: usize) -> Vec<Row> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut seqs: BTreeMap<u64, i64> = BTreeMap::new();
    (0..n)
        .map(|i| {
            let dev = next() % 40;
            let delay = if next() % 100 < 15 {
                (next() % 1999 + 1) as i64
            } else {
                0
            };
            let seq = seqs.entry(dev).or_default();
            *seq += 1;
            Row {
                device: format!("dev-{dev:05}"),
                sensor: SENSORS[(next() % 3) as usize],
                ts_ms: 1_700_000_000_000 + (i as i64 * 1000) / 300 - delay,
                value: (next() % 100_000) as f64 / 997.0,
                seq: *seq,
            }
        })
        .collect()
}

fn write_jsonl(path: &Path, rows: &[Row]) {
    let text: String = rows
        .iter()
        .map(|r| {
            format!(
                "{{\"device_id\":\"{}\",\"sensor\":\"{}\",\"ts_ms\":{},\"value\":{:?},\"seq\":{}}}\n",
                r.device, r.sensor, r.ts_ms, r.value, r.seq
            )
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

fn write_parquet(path: &Path, rows: &[Row]) {
    let batch = RecordBatch::try_from_iter(vec![
        (
            "device_id",
            Arc::new(LargeStringArray::from_iter_values(
                rows.iter().map(|r| &r.device),
            )) as ArrayRef,
        ),
        (
            "sensor",
            Arc::new(LargeStringArray::from_iter_values(
                rows.iter().map(|r| r.sensor),
            )) as ArrayRef,
        ),
        (
            "ts_ms",
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.ts_ms))) as ArrayRef,
        ),
        (
            "value",
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.value))) as ArrayRef,
        ),
        (
            "seq",
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.seq))) as ArrayRef,
        ),
    ])
    .unwrap();
    write_batch(path, &batch);
}

/// `batch` as a Parquet file of 4,000-row groups.
fn write_batch(path: &Path, batch: &RecordBatch) {
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(4_000))
        .build();
    let mut w =
        ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), Some(props)).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// `aggregate-file --job-file job` of `input` into `out`: a reader of its CSVs by name.
fn aggregate_job(
    job: &Path,
    input: &Path,
    out: &Path,
    workers: &str,
) -> impl Fn(&str) -> String + use<> {
    let status = Command::new(env!("CARGO_BIN_EXE_iotflow"))
        .args([
            "aggregate-file",
            "--epoch-bytes",
            "65536",
            "-w",
            workers,
            "--job-file",
        ])
        .arg(job)
        .arg(input)
        .arg(out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let out = out.to_owned();
    move |name: &str| std::fs::read_to_string(out.join(name)).unwrap()
}

fn aggregate_file(input: &Path, output: &Path, workers: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_iotflow"))
        .args(["aggregate-file", "--epoch-bytes", "65536", "-w", workers])
        .arg(input)
        .arg(output)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("PROC_SECONDS="), "{stdout}");
    std::fs::read_to_string(output).unwrap()
}

#[test]
fn jsonl_and_parquet_agree_for_1_and_2_workers_and_match_a_naive_recomputation() {
    let rows = rows(20_000);
    let dir = tempfile::tempdir().unwrap();
    let (jsonl, parquet) = (dir.path().join("r.jsonl"), dir.path().join("r.parquet"));
    write_jsonl(&jsonl, &rows);
    write_parquet(&parquet, &rows);

    let reference = aggregate_file(&jsonl, &dir.path().join("j1.csv"), "1");
    for (input, workers) in [(&jsonl, "2"), (&parquet, "1"), (&parquet, "2")] {
        let got = aggregate_file(input, &dir.path().join("x.csv"), workers);
        assert!(
            got == reference,
            "{} with {workers} workers differs",
            input.display()
        );
    }

    // The disorder stays within the 2 s watermark slack, so every reading counts.
    let mut naive: BTreeMap<(String, &str, i64), Vec<f64>> = BTreeMap::new();
    for r in &rows {
        naive
            .entry((
                r.device.clone(),
                r.sensor,
                r.ts_ms.div_euclid(10_000) * 10_000,
            ))
            .or_default()
            .push(r.value);
    }
    let lines: Vec<&str> = reference.lines().collect();
    assert_eq!(
        lines[0],
        "device_id,sensor,window_start,window_end,count,sum,min,max,mean"
    );
    assert_eq!(lines.len() - 1, naive.len());
    for (line, ((device, sensor, start), values)) in lines[1..].iter().zip(&naive) {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(
            (f[0], f[1], f[2]),
            (device.as_str(), *sensor, start.to_string().as_str())
        );
        assert_eq!(f[3], (start + 10_000).to_string());
        assert_eq!(f[4], values.len().to_string());
        let sum: f64 = values.iter().sum();
        let close = |a: &str, b: f64| {
            let a: f64 = a.parse().unwrap();
            (a - b).abs() <= 1e-9 * b.abs().max(1.0)
        };
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert!(
            close(f[5], sum) && close(f[8], sum / values.len() as f64),
            "{line}"
        );
        assert!(close(f[6], min) && close(f[7], max), "{line}");
    }
}

/// `--job-file`: every aggregation into `<dir>/<name>.csv`. The per-device
/// one equals the default CSV column for column; the fleet's percentiles
/// per metric and minute equal a naive recomputation; JSON lines and
/// Parquet, 1 and 2 workers, agree byte for byte.
#[test]
fn a_job_file_writes_each_aggregation_and_its_percentiles_match_a_naive_recomputation() {
    let rows = rows(20_000);
    let dir = tempfile::tempdir().unwrap();
    let (jsonl, parquet) = (dir.path().join("r.jsonl"), dir.path().join("r.parquet"));
    write_jsonl(&jsonl, &rows);
    write_parquet(&parquet, &rows);
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        r#"name = "file"
[watermark]
max_out_of_order = "2s"
[[aggregation]]
name = "aggregates"
window = "tumbling 10s"
topic = "unused.aggregates"
[[aggregation]]
name = "fleet"
group_by = ["metric"]
window = "tumbling 1m"
measures = ["count", "p50", "p95"]
parquet = "fleet"
[[aggregation]]
name = "fleet_approx"
group_by = ["metric"]
window = "tumbling 1m"
measures = ["count", "min", "max", "mean", "stddev", "p50", "p95", "p99.9"]
percentiles = "approx"
parquet = "fleet_approx"
"#,
    )
    .unwrap();
    let run = |input: &Path, out: &str, workers: &str| -> (String, String, String) {
        let read = aggregate_job(&job, input, &dir.path().join(out), workers);
        (
            read("aggregates.csv"),
            read("fleet.csv"),
            read("fleet_approx.csv"),
        )
    };
    let (per_device, fleet, approx) = run(&jsonl, "j1", "1");
    for (input, workers, name) in [
        (&jsonl, "2", "j2"),
        (&parquet, "1", "p1"),
        (&parquet, "2", "p2"),
    ] {
        assert!(
            run(input, name, workers) == (per_device.clone(), fleet.clone(), approx.clone()),
            "{name} differs"
        );
    }
    let default = aggregate_file(&jsonl, &dir.path().join("default.csv"), "1");
    let head = first_nine_columns;
    assert_eq!(
        per_device.lines().next(),
        Some(
            "device_id,metric,window_start,window_end,count,sum,min,max,mean,stddev,first_ts,last_ts"
        )
    );
    assert_eq!(head(&per_device), head(&default));

    let mut naive: BTreeMap<(&str, i64), Vec<f64>> = BTreeMap::new();
    for r in &rows {
        naive
            .entry((r.sensor, r.ts_ms.div_euclid(60_000) * 60_000))
            .or_default()
            .push(r.value);
    }
    let lines: Vec<&str> = fleet.lines().collect();
    assert_eq!(lines[0], "metric,window_start,window_end,count,p50,p95");
    assert_eq!(lines.len() - 1, naive.len());
    let quantile = |v: &[f64], q: f64| {
        let rank = q * (v.len() - 1) as f64;
        let (lo, hi) = (v[rank.floor() as usize], v[rank.ceil() as usize]);
        lo + (hi - lo) * (rank - rank.floor())
    };
    let mut by_key: BTreeMap<(String, i64), Vec<String>> = BTreeMap::new();
    for l in &lines[1..] {
        let f: Vec<String> = l.split(',').map(str::to_owned).collect();
        by_key.insert((f[0].clone(), f[1].parse().unwrap()), f);
    }
    let approx_lines: Vec<&str> = approx.lines().collect();
    assert_eq!(
        approx_lines[0],
        "metric,window_start,window_end,count,min,max,mean,stddev,p50,p95,p99_9"
    );
    assert_eq!(approx_lines.len(), lines.len());
    let approx_by_key: BTreeMap<(String, i64), Vec<f64>> = approx_lines[1..]
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let numbers = f[3..].iter().map(|v| v.parse().unwrap()).collect();
            ((f[0].to_owned(), f[1].parse().unwrap()), numbers)
        })
        .collect();
    for ((metric, start), mut values) in naive {
        let f = &by_key[&(metric.to_owned(), start)];
        values.sort_by(f64::total_cmp);
        assert_eq!(f[3], values.len().to_string());
        for (got, q) in [(&f[4], 0.5), (&f[5], 0.95)] {
            let want = quantile(&values, q);
            let got: f64 = got.parse().unwrap();
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{metric} {start} p{q}: {got} vs {want}"
            );
        }
        // The approximate aggregation: exact count, extremes and moments;
        // percentiles within 1 % of the exact ones (the values are positive).
        let a = &approx_by_key[&(metric.to_owned(), start)];
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        assert_eq!(a[..3], [n, values[0], values[values.len() - 1]]);
        assert!(
            (a[3] - mean).abs() <= 1e-12 * mean,
            "{metric} {start} mean {} vs {mean}",
            a[3]
        );
        assert!(
            (a[4] - var.sqrt()).abs() <= 1e-9 * var.sqrt(),
            "{metric} {start} stddev"
        );
        for (got, q) in [(a[5], 0.5), (a[6], 0.95), (a[7], 0.999)] {
            let want = quantile(&values, q);
            assert!(
                (got - want).abs() <= 0.01 * want.abs(),
                "{metric} {start} approx p{q}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn a_job_file_with_alert_rules_is_refused_by_aggregate_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{}\n").unwrap();
    let job = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/plant-alerts.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_iotflow"))
        .arg("aggregate-file")
        .arg(&input)
        .arg(dir.path().join("out"))
        .arg("--job-file")
        .arg(&job)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("alert rules need `run`"), "{err}");
}

/// The same rows under the plant's own names, with a `site`, as JSON lines and Parquet.
fn write_plant(jsonl: &Path, parquet: &Path, rows: &[Row]) {
    let site = |r: &Row| format!("site-{}", r.device.as_bytes()[8] % 3);
    let text: String = rows
        .iter()
        .map(|r| {
            format!(
                "{{\"machine\":\"{}\",\"site\":\"{}\",\"kind\":\"{}\",\"at\":{},\"reading\":{:?},\"n\":{}}}\n",
                r.device, site(r), r.sensor, r.ts_ms, r.value, r.seq
            )
        })
        .collect();
    std::fs::write(jsonl, text).unwrap();
    let strings = |f: &dyn Fn(&Row) -> String| {
        Arc::new(arrow_array::StringArray::from_iter_values(
            rows.iter().map(f),
        )) as ArrayRef
    };
    let batch = RecordBatch::try_from_iter(vec![
        ("machine", strings(&|r| r.device.clone())),
        ("site", strings(&site)),
        ("kind", strings(&|r| r.sensor.to_owned())),
        (
            "at",
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.ts_ms))) as ArrayRef,
        ),
        (
            "reading",
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.value))) as ArrayRef,
        ),
        (
            "n",
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.seq))) as ArrayRef,
        ),
    ])
    .unwrap();
    write_batch(parquet, &batch);
}

/// A job file's own mapping (field names, a dimension, the long shape) reads
/// Parquet from its columns: the same aggregates as its JSON lines, for 1
/// and 2 workers, and the same as the default job's per device.
#[test]
fn a_job_file_mapping_reads_parquet_columns_as_it_reads_json_lines() {
    let rows = rows(12_000);
    let dir = tempfile::tempdir().unwrap();
    let (jsonl, parquet) = (dir.path().join("p.jsonl"), dir.path().join("p.parquet"));
    write_plant(&jsonl, &parquet, &rows);
    let job = dir.path().join("plant.toml");
    std::fs::write(
        &job,
        r#"name = "plant"
[input]
device = "machine"
time = "at"
seq = "n"
metric_field = "kind"
value_field = "reading"
dimensions = ["site"]
[watermark]
max_out_of_order = "2s"
[[aggregation]]
name = "aggregates"
window = "tumbling 10s"
parquet = "aggregates"
[[aggregation]]
name = "site_1m"
group_by = ["site", "metric"]
window = "tumbling 1m"
measures = ["count", "mean", "p95"]
parquet = "site_1m"
"#,
    )
    .unwrap();
    let run = |input: &Path, name: &str, workers: &str| -> (String, String) {
        let read = aggregate_job(&job, input, &dir.path().join(name), workers);
        (read("aggregates.csv"), read("site_1m.csv"))
    };
    let want = run(&jsonl, "j1", "1");
    // Three sites by three metrics, all in the one minute the rows span.
    assert_eq!(want.1.lines().count(), 1 + 9, "{}", want.1);
    for (input, name, workers) in [
        (&jsonl, "j2", "2"),
        (&parquet, "p1", "1"),
        (&parquet, "p2", "2"),
    ] {
        assert!(run(input, name, workers) == want, "{name} differs");
    }
    let default_jsonl = dir.path().join("d.jsonl");
    write_jsonl(&default_jsonl, &rows);
    let default = aggregate_file(&default_jsonl, &dir.path().join("default.csv"), "1");
    assert!(
        first_nine_columns(&want.0) == first_nine_columns(&default),
        "per device, the mapped job is not the default job"
    );
}

/// A CSV's rows (header skipped) cut to the default job's first nine
/// columns, which the peers' output shares.
fn first_nine_columns(csv: &str) -> Vec<String> {
    csv.lines()
        .skip(1)
        .map(|l| l.split(',').take(9).collect::<Vec<_>>().join(","))
        .collect()
}
