//! Aggregates of seeded simulator input through the real operators (no broker),
//! as readable snapshot tables: tumbling and hopping windows, with disorder,
//! duplicates, late and bad records.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use iotflow_dataflow::job::RawRecord;
use iotflow_dataflow::runner::{Parallelism, RunOutput, run_bounded};
use iotflow_dataflow::source::memory_inputs;
use iotflow_dataflow::{JobMetrics, WindowResult, WindowSpec};
use iotflow_ingest::producer::partition_for;
use iotflow_ingest::simulator::{SimConfig, Simulator};

/// 12 devices, 2 metrics, 250 ms apart; some of every kind of trouble.
fn seeded_partitions() -> Vec<(i32, Vec<RawRecord>)> {
    let sim = Simulator::new(SimConfig {
        devices: 12,
        metrics: iotflow_ingest::simulator::default_metrics()
            .into_iter()
            .take(2)
            .collect(),
        interval_ms: 250,
        seed: 11,
        duplicate_ratio: 0.05,
        bad_ratio: 0.02,
        late_ratio: 0.02,
        late_by_ms: 30_000,
        ..SimConfig::default()
    })
    .unwrap();
    let mut parts: BTreeMap<i32, Vec<RawRecord>> = (0..3).map(|p| (p, Vec::new())).collect();
    for rec in sim.take(6_000) {
        let p = partition_for(rec.key.as_bytes(), 3) as i32;
        let list = parts.entry(p).or_default();
        let offset = list.len() as i64;
        list.push(RawRecord {
            partition: p,
            offset,
            key: Some(rec.key.into_bytes()),
            value: rec.value.into(),
            timestamp_ms: 0,
        });
    }
    parts.into_iter().collect()
}

fn run(window: WindowSpec, workers: usize) -> (RunOutput, Arc<JobMetrics>) {
    let cfg = common::final_job(window);
    let parts = Arc::new(seeded_partitions());
    let metrics = Arc::new(JobMetrics::default());
    let par = Parallelism {
        workers,
        ..Parallelism::default()
    };
    let out = run_bounded(&par, cfg, Arc::clone(&metrics), move |w, p| {
        memory_inputs(&parts, 500, w, p)
    })
    .unwrap()
    .sorted();
    (out, metrics)
}

/// A sorted, readable table: totals, dead letters by reason, then the windows of two devices.
fn table(out: &RunOutput, metrics: &JobMetrics) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut t = String::new();
    writeln!(
        t,
        "records {} | readings accepted {} | duplicates {} | windows {}",
        metrics.records_in.load(Relaxed),
        metrics.readings_accepted.load(Relaxed),
        metrics.duplicates.load(Relaxed),
        out.results.len()
    )
    .unwrap();
    let mut dead: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, d) in &out.dead {
        *dead.entry(d.reason.code()).or_default() += 1;
    }
    writeln!(t, "dead letters {dead:?}").unwrap();
    writeln!(t, "device    | metric      | window (s from start) | n  | mean      | min    | max    | stddev   | epoch").unwrap();
    let names = |r: &WindowResult| -> (String, String) {
        let (d, m) = r.group.split_once('|').unwrap_or_default();
        (d.to_owned(), m.to_owned())
    };
    let mut rows: Vec<_> = out
        .results
        .iter()
        .filter(|(_, r)| ["dev-00000", "dev-00007"].contains(&names(r).0.as_str()))
        .collect();
    rows.sort_by_key(|(_, r)| (names(r), r.window_start));
    for (epoch, r) in rows.iter().take(40) {
        let (device, metric) = names(r);
        let start = SimConfig::default().start_ms;
        writeln!(
            t,
            "{} | {:<11} | {:>9} .. {:<9} | {:>2} | {:>9.4} | {:>6.2} | {:>6.2} | {:>8.5} | {}",
            device,
            metric,
            (r.window_start - start) as f64 / 1000.0,
            (r.window_end - start) as f64 / 1000.0,
            r.stats().count,
            r.stats().mean,
            r.stats().min,
            r.stats().max,
            r.stats().stddev,
            epoch
        )
        .unwrap();
    }
    t
}

#[test]
fn tumbling_10s_aggregates() {
    let (out, metrics) = run(WindowSpec::tumbling(10_000).unwrap(), 1);
    insta::assert_snapshot!("tumbling_10s", table(&out, &metrics));
}

#[test]
fn hopping_10s_every_5s_aggregates() {
    let (out, metrics) = run(WindowSpec::hopping(10_000, 5_000).unwrap(), 1);
    insta::assert_snapshot!("hopping_10s_5s", table(&out, &metrics));
}

#[test]
fn the_same_results_for_1_2_and_4_workers() {
    let (one, _) = run(WindowSpec::hopping(10_000, 5_000).unwrap(), 1);
    for workers in [2, 4] {
        let (many, _) = run(WindowSpec::hopping(10_000, 5_000).unwrap(), workers);
        assert_eq!(many.results, one.results, "{workers} workers");
        assert_eq!(many.dead, one.dead, "{workers} workers");
    }
}
