//! The dataflow against a naive recomputation of the same semantics: random
//! partitions (disorder, exact duplicates, bad records, absurd timestamps),
//! random epoch sizes, windows and lateness, 1 to 3 workers. Windows, their
//! epochs and every dead letter must match exactly (floats bit for bit).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use iotflow_dataflow::aggregation::Window;
use iotflow_dataflow::job::{DeadRecord, EmitMode, Epoch, JobConfig, RawRecord, WindowResult};
use iotflow_dataflow::reading::{Dims, ParseLimits, Reading, RejectReason, parse_record};
use iotflow_dataflow::runner::{Parallelism, RunOutput, run_bounded};
use iotflow_dataflow::source::memory_inputs;
use iotflow_dataflow::{JobMetrics, Measured, Stats, TopK, WatermarkConfig, WindowSpec};
use proptest::prelude::*;

type Partitions = Vec<(i32, Vec<RawRecord>)>;
type Outputs = (Vec<(Epoch, WindowResult)>, Vec<(Epoch, DeadRecord)>);
/// (kind, device, event-time delta ms, value, metric) per record.
type RecordSpec = (u8, u8, i64, i32, u8);
type OpenWindows = BTreeMap<(u16, String, i64), (Vec<(i64, f64)>, bool)>;

/// The semantics, written the slow and obvious way.
fn oracle(parts: &Partitions, cfg: &JobConfig, n: u64) -> Outputs {
    let chunk = |recs: &Vec<RawRecord>, e: u64| -> Vec<RawRecord> {
        recs.iter()
            .skip((e * n) as usize)
            .take(n as usize)
            .cloned()
            .collect()
    };
    let last_epoch = parts
        .iter()
        .map(|(_, r)| {
            if r.is_empty() {
                0
            } else {
                (r.len() as u64 - 1) / n
            }
        })
        .max()
        .unwrap_or(0);
    let k = cfg.watermark.outliers + 1;
    let mut tops: BTreeMap<i32, TopK> = BTreeMap::new();
    let mut wm: Option<i64> = None;
    // Dedupe keys, remembered until every window of the kept copy is final everywhere.
    let mut seen: BTreeMap<(String, u64, String), i64> = BTreeMap::new();
    let mut windows = OpenWindows::new();
    let (mut results, mut dead) = (Vec::new(), Vec::new());
    for e in 0..=last_epoch {
        let mut readings: Vec<(Reading, Dims)> = Vec::new();
        for (p, recs) in parts {
            for rec in chunk(recs, e) {
                let (mut out, mut dims) = (Vec::new(), Dims::new());
                let parsed = match cfg.input.is_default() {
                    true => parse_record(&rec.value, &cfg.limits, &mut out),
                    false => cfg
                        .input
                        .parse(&rec.value, &cfg.limits, &mut out, &mut dims),
                };
                let verdict = parsed.and_then(|()| {
                    let ts = out[0].ts_ms;
                    tops.entry(*p).or_insert_with(|| TopK::new(k)).observe(ts);
                    let late = cfg.aggregations.iter().all(|a| match a.window {
                        Window::Grid(g) => g
                            .windows_of(ts)
                            .all(|s| g.end(s) + cfg.lateness_ms <= wm.unwrap_or(i64::MIN)),
                        Window::Session { gap_ms } => {
                            ts + gap_ms + cfg.lateness_ms <= wm.unwrap_or(i64::MIN)
                        }
                    });
                    if late && wm.is_some() {
                        Err(RejectReason::Late)
                    } else if cfg.aggregations.iter().all(|a| !a.has_dimensions(&dims)) {
                        Err(RejectReason::MissingDimension)
                    } else {
                        Ok(())
                    }
                });
                match verdict {
                    Ok(()) => readings.extend(out.into_iter().map(|r| (r, dims.clone()))),
                    Err(reason) => dead.push((
                        e,
                        DeadRecord {
                            reason,
                            record: rec,
                        },
                    )),
                }
            }
        }
        // Dedupe: an earlier epoch's copy wins; within the epoch the smallest (ts, value).
        let mut chosen: BTreeMap<(String, u64, String), (i64, u64, usize)> = BTreeMap::new();
        let mut kept: Vec<bool> = vec![true; readings.len()];
        for (i, (r, _)) in readings.iter().enumerate() {
            let Some(seq) = r.seq else { continue };
            let key = (r.device_id.to_string(), seq, r.metric.to_string());
            if seen.contains_key(&key) {
                kept[i] = false;
                continue;
            }
            let rank = (r.ts_ms, r.value.to_bits(), i);
            match chosen.get(&key) {
                Some(best) if *best <= rank => kept[i] = false,
                Some(best) => {
                    kept[best.2] = false;
                    chosen.insert(key, rank);
                }
                None => {
                    chosen.insert(key, rank);
                }
            }
        }
        for (key, (ts, _, _)) in chosen {
            let until = cfg
                .aggregations
                .iter()
                .map(|a| match a.window {
                    Window::Grid(g) => g.end(g.windows_of(ts).last().unwrap()) + cfg.lateness_ms,
                    Window::Session { gap_ms } => ts + gap_ms + cfg.lateness_ms,
                })
                .max()
                .unwrap();
            seen.insert(key, until);
        }
        for ((r, dims), _) in readings.into_iter().zip(kept).filter(|(_, k)| *k) {
            for (ai, a) in cfg.aggregations.iter().enumerate() {
                let Some(key) = a.group_key(&r.device_id, &r.metric, &dims) else {
                    continue;
                };
                if !a.keeps(&r.device_id, &r.metric, r.value, &dims) {
                    continue;
                }
                let slots: Vec<(i64, i64)> = match a.window {
                    Window::Grid(g) => g.windows_of(r.ts_ms).map(|s| (s, g.end(s))).collect(),
                    // A session key's open readings, all in one slot.
                    Window::Session { gap_ms } => vec![(0, r.ts_ms + gap_ms)],
                };
                for (s, end) in slots {
                    if wm.is_none_or(|w| end + cfg.lateness_ms > w) {
                        let w = windows.entry((ai as u16, key.to_string(), s)).or_default();
                        w.0.push((r.ts_ms, r.value));
                        w.1 = true;
                    }
                }
            }
        }
        // W_e: min over unfinished partitions (k-th largest − ooo); +∞ when all finished.
        let mut blocked = false;
        let mut min: Option<i64> = None;
        let mut any_active = false;
        for (p, recs) in parts {
            let finished = (recs.len() as u64) <= (e + 1) * n;
            if finished {
                continue;
            }
            any_active = true;
            match tops.get(p).and_then(TopK::kth) {
                Some(t) => {
                    let w = t - cfg.watermark.max_out_of_order_ms;
                    min = Some(min.map_or(w, |m: i64| m.min(w)));
                }
                None => blocked = true,
            }
        }
        let candidate = if blocked {
            None
        } else if !any_active {
            Some(i64::MAX)
        } else {
            min
        };
        if let Some(c) = candidate {
            wm = Some(wm.map_or(c, |w| w.max(c)));
        }
        if let Some(w) = wm {
            seen.retain(|_, expiry| *expiry > w);
        }
        let result = |key: &(u16, String, i64),
                      values: &[(i64, f64)],
                      start: i64,
                      end: i64,
                      is_final: bool| {
            let a = &cfg.aggregations[key.0 as usize];
            WindowResult {
                aggregation: key.0,
                group: key.1.as_str().into(),
                window_start: start,
                window_end: end,
                measured: naive_measures(values, &a.percentile_ranks()),
                is_final,
            }
        };
        let keys: Vec<(u16, String, i64)> = windows.keys().cloned().collect();
        for key in keys {
            let a = &cfg.aggregations[key.0 as usize];
            let (mut values, changed) = windows.remove(&key).unwrap();
            let updates = changed && a.emit == EmitMode::Updates;
            match a.window {
                Window::Grid(g) => {
                    let end = g.end(key.2);
                    if wm.is_some_and(|w| end + cfg.lateness_ms <= w) {
                        results.push((e, result(&key, &values, key.2, end, true)));
                        continue;
                    }
                    if updates {
                        results.push((e, result(&key, &values, key.2, end, false)));
                    }
                    windows.insert(key, (values, false));
                }
                Window::Session { gap_ms } => {
                    // The sessions: runs of the sorted readings closer than the gap.
                    values.sort_by_key(|v| v.0);
                    let mut spans: Vec<Vec<(i64, f64)>> = Vec::new();
                    for v in values {
                        match spans.last_mut() {
                            Some(span) if v.0 < span[span.len() - 1].0 + gap_ms => span.push(v),
                            _ => spans.push(vec![v]),
                        }
                    }
                    let mut open = Vec::new();
                    for span in spans {
                        let (first, last) = (span[0].0, span[span.len() - 1].0);
                        let closed = wm.is_some_and(|w| last + gap_ms + cfg.lateness_ms <= w);
                        if closed || updates {
                            results.push((e, result(&key, &span, first, last + gap_ms, closed)));
                        }
                        if !closed {
                            open.extend(span);
                        }
                    }
                    if !open.is_empty() {
                        windows.insert(key, (open, false));
                    }
                }
            }
        }
    }
    let sorted = RunOutput { results, dead }.sorted();
    (sorted.results, sorted.dead)
}

/// Every measure, naively: stats over the canonical order, first/last by
/// (time, value), percentiles by interpolating the sorted values.
fn naive_measures(values: &[(i64, f64)], qs: &[f64]) -> Measured {
    let mut sorted = values.to_vec();
    let stats = Stats::of(&mut sorted).unwrap();
    let mut v: Vec<f64> = values.iter().map(|x| x.1).collect();
    v.sort_by(f64::total_cmp);
    let percentiles = qs
        .iter()
        .map(|q| {
            let rank = q * (v.len() - 1) as f64;
            let (lo, hi) = (v[rank.floor() as usize], v[rank.ceil() as usize]);
            if lo == hi {
                lo
            } else {
                lo + (rank - rank.floor()) * (hi - lo)
            }
        })
        .collect();
    Measured {
        stats,
        first_value: sorted[0].1,
        last_value: sorted[sorted.len() - 1].1,
        percentiles,
    }
}

const T0: i64 = 1_763_787_600_000;

/// One record: a valid reading (possibly disordered), an exact duplicate of an
/// earlier one, or a bad payload.
fn arb_partition() -> impl Strategy<Value = Vec<RecordSpec>> {
    // (kind, device, delta ms, value, metric)
    prop::collection::vec(
        (0u8..20, 0u8..4, -3_000i64..1_500, -500i32..500, 0u8..2),
        0..60,
    )
}

fn build_partitions(spec: Vec<Vec<RecordSpec>>) -> Partitions {
    build_partitions_with(spec, false)
}

/// With `sites`, valid records of devices 0–2 carry a `site` (s0 or s1); device 3's never do.
fn build_partitions_with(spec: Vec<Vec<RecordSpec>>, sites: bool) -> Partitions {
    let mut seq = [0u64; 4];
    spec.into_iter()
        .enumerate()
        .map(|(p, recs)| {
            let mut clock = T0;
            let mut out: Vec<RawRecord> = Vec::new();
            for (i, (kind, dev, delta, value, metric)) in recs.into_iter().enumerate() {
                clock += 700;
                let d = usize::from(dev);
                let payload = match kind {
                    0 => b"{\"device_id\":\"d0\",\"ts\":17".to_vec(),
                    1 => format!(r#"{{"device_id":"d{dev}","ts_ms":5000,"v":1}}"#).into_bytes(),
                    2 => format!(r#"{{"device_id":"d{dev}","ts":{},"seq":{},"m":"x"}}"#, clock, seq[d]).into_bytes(),
                    // An absurd but in-range future timestamp.
                    3 => format!(r#"{{"device_id":"d{dev}","ts":{},"seq":{},"m":1}}"#, clock + 86_400_000 * 365, seq[d]).into_bytes(),
                    4 if !out.is_empty() => {
                        let j = (i * 7 + usize::from(dev)) % out.len();
                        out[j].value.to_vec()
                    }
                    _ => {
                        seq[d] += 1;
                        let ts = clock + delta;
                        let v = f64::from(value) / 8.0;
                        let site = match (sites, dev) {
                            (true, 0..=2) => format!(r#""site":"s{}","#, dev % 2),
                            _ => String::new(),
                        };
                        if metric == 0 {
                            format!(r#"{{"device_id":"d{dev}",{site}"ts":{ts},"seq":{},"metrics":{{"t":{v},"h":{}}}}}"#, seq[d], v * 2.0)
                        } else {
                            format!(r#"{{"device_id":"d{dev}",{site}"sensor":"p","ts_ms":{ts},"value":{v},"seq":{}}}"#, seq[d])
                        }
                        .into_bytes()
                    }
                };
                out.push(RawRecord { partition: p as i32, offset: i as i64, key: None, value: payload.into(), timestamp_ms: 0 });
            }
            (p as i32, out)
        })
        .collect()
}

proptest! {
    // 48 cases in `make test`; PROPTEST_CASES=N for a longer hunt.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn dataflow_equals_the_naive_oracle(
        spec in prop::collection::vec(arb_partition(), 1..4),
        epoch_records in 1u64..25,
        size in prop::sample::select(vec![2_000i64, 5_000, 10_000]),
        hop in any::<bool>(),
        ooo in prop::sample::select(vec![0i64, 1_000, 2_500]),
        lateness in prop::sample::select(vec![0i64, 1_500]),
        updates in any::<bool>(),
        workers in 1usize..4,
    ) {
        let parts = build_partitions(spec);
        let window = if hop { WindowSpec::hopping(size, size / 2).unwrap() } else { WindowSpec::tumbling(size).unwrap() };
        let cfg = JobConfig::single(
            window,
            lateness,
            WatermarkConfig { max_out_of_order_ms: ooo, idle_timeout_ms: 0, outliers: 1 },
            if updates { EmitMode::Updates } else { EmitMode::Final },
            ParseLimits::default(),
        );
        let (want_results, want_dead) = oracle(&parts, &cfg, epoch_records);
        let shared = Arc::new(parts.clone());
        let par = Parallelism { workers, ..Parallelism::default() };
        let out = run_bounded(&par, cfg.clone(), Arc::new(JobMetrics::default()), move |w, peers| {
            memory_inputs(&shared, epoch_records, w, peers)
        }).unwrap().sorted();
        prop_assert_eq!(out.dead, want_dead);
        prop_assert_eq!(out.results, want_results);
    }
}

/// Aggregations a job file can state, for the multi-aggregation oracle: (group_by, measures, where).
const AGGREGATIONS: [(&str, &str, &str); 6] = [
    (
        r#"["device", "metric"]"#,
        r#"["count", "sum", "mean", "stddev", "first_ts", "last_ts"]"#,
        "",
    ),
    (
        r#"["site", "metric"]"#,
        r#"["count", "mean", "p50", "p95"]"#,
        "value > -20",
    ),
    (
        "[]",
        r#"["count", "min", "max", "first_value", "last_value", "p99", "p0.1"]"#,
        "",
    ),
    (
        r#"["metric"]"#,
        r#"["count", "p50", "p99.9"]"#,
        "metric != 'h' and (value < 30 or value >= 50)",
    ),
    (
        r#"["site"]"#,
        r#"["count", "max"]"#,
        "site == 's1' or metric in ['p']",
    ),
    (
        r#"["device"]"#,
        r#"["count", "first_ts", "last_ts", "mean", "p95"]"#,
        "value > 0",
    ),
];

/// A job file of the picked aggregations, each with its own window and emit mode.
fn job_file(picks: &[(usize, i64, bool, bool)], ooo: i64, lateness: i64) -> JobConfig {
    let mut toml = format!(
        "name = \"oracle\"\n[input]\ndimensions = [\"site\"]\n[watermark]\nmax_out_of_order = \"{ooo}ms\"\nlateness = \"{lateness}ms\"\n"
    );
    for (i, &(which, size, hop, updates)) in picks.iter().enumerate() {
        let (group_by, measures, filter) = AGGREGATIONS[which];
        // Sessions (gap: a fifth of the size): always the last template (per
        // device), the one before when not hopping (per site).
        let last = AGGREGATIONS.len() - 1;
        let window = match (which == last || (which == last - 1 && !hop), hop) {
            (true, _) => format!("session {}ms", size / 5),
            (false, true) => format!("hopping {size}ms every {}ms", size / 2),
            (false, false) => format!("tumbling {size}ms"),
        };
        let emit = if updates { "updates" } else { "final" };
        toml.push_str(&format!(
            "[[aggregation]]\nname = \"a{i}\"\ngroup_by = {group_by}\nwindow = \"{window}\"\nmeasures = {measures}\nemit = \"{emit}\"\ntopic = \"t{i}\"\n"
        ));
        if !filter.is_empty() {
            toml.push_str(&format!("where = \"{filter}\"\n"));
        }
    }
    let plan = iotflow_jobfile::parse(std::path::Path::new("oracle.toml"), &toml).unwrap();
    let mut cfg = JobConfig::from_plan(&plan, ParseLimits::default()).unwrap();
    cfg.watermark.idle_timeout_ms = 0;
    cfg
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32),
        ..ProptestConfig::default()
    })]

    /// Several aggregations over one source, parse and dedupe: group keys of
    /// device, metric and a dimension (missing for one device), fleet-wide,
    /// filters, exact percentiles, first/last values; 1 to 3 workers.
    #[test]
    fn several_aggregations_equal_the_naive_oracle(
        spec in prop::collection::vec(arb_partition(), 1..4),
        epoch_records in 1u64..25,
        picks in prop::collection::vec(
            (0usize..AGGREGATIONS.len(), prop::sample::select(vec![2_000i64, 5_000, 10_000]), any::<bool>(), any::<bool>()),
            1..4,
        ),
        ooo in prop::sample::select(vec![0i64, 1_000, 2_500]),
        lateness in prop::sample::select(vec![0i64, 1_500]),
        workers in 1usize..4,
    ) {
        let parts = build_partitions_with(spec, true);
        let cfg = job_file(&picks, ooo, lateness);
        let (want_results, want_dead) = oracle(&parts, &cfg, epoch_records);
        let shared = Arc::new(parts.clone());
        let par = Parallelism { workers, ..Parallelism::default() };
        let out = run_bounded(&par, cfg.clone(), Arc::new(JobMetrics::default()), move |w, peers| {
            memory_inputs(&shared, epoch_records, w, peers)
        }).unwrap().sorted();
        prop_assert_eq!(out.dead, want_dead);
        prop_assert_eq!(out.results, want_results);
    }
}

/// Readings no aggregation can use for a missing dimension are dead letters
/// `missing_dimension`; those another aggregation uses are not.
#[test]
fn a_missing_dimension_is_a_dead_letter_only_when_no_aggregation_can_use_the_reading() {
    let spec: Vec<Vec<RecordSpec>> = vec![
        (0..40u32)
            .map(|i| (10, (i % 4) as u8, 0, i as i32, 0))
            .collect(),
    ];
    let parts = build_partitions_with(spec, true);
    let by_site = job_file(&[(4, 2_000, false, false)], 0, 0);
    let (_, dead) = oracle(&parts, &by_site, 5);
    let missing = dead
        .iter()
        .filter(|d| d.1.reason == RejectReason::MissingDimension)
        .count();
    assert_eq!(missing, 10, "device 3's records");
    let both = job_file(&[(4, 2_000, false, false), (0, 2_000, false, false)], 0, 0);
    let (results, dead) = oracle(&parts, &both, 5);
    assert!(
        dead.iter()
            .all(|d| d.1.reason != RejectReason::MissingDimension)
    );
    assert!(results.iter().any(|(_, r)| r.group.starts_with("d3|")));
    let shared = Arc::new(parts);
    let out = run_bounded(
        &Parallelism {
            workers: 2,
            ..Parallelism::default()
        },
        both,
        Arc::new(JobMetrics::default()),
        move |w, p| memory_inputs(&shared, 5, w, p),
    )
    .unwrap()
    .sorted();
    assert_eq!(out.results, results);
}

/// The generator produces what the oracle is about: windows, late and bad records, duplicates.
#[test]
fn the_generated_inputs_exercise_every_path() {
    let spec: Vec<Vec<RecordSpec>> = (0..3)
        .map(|p: u32| {
            (0..60u32)
                .map(|i| {
                    (
                        ((i * 7 + p) % 20) as u8,
                        (i % 4) as u8,
                        if i % 9 == 0 { -2_900 } else { 0 },
                        i as i32,
                        (i % 2) as u8,
                    )
                })
                .collect()
        })
        .collect();
    let parts = build_partitions(spec);
    let cfg = tumbling_final(2_000, 0);
    let (results, dead) = oracle(&parts, &cfg, 5);
    let reasons: HashSet<RejectReason> = dead.iter().map(|d| d.1.reason).collect();
    assert!(results.len() > 20, "{}", results.len());
    for r in [
        RejectReason::Late,
        RejectReason::MalformedJson,
        RejectReason::AbsurdTimestamp,
        RejectReason::NonNumericValue,
    ] {
        assert!(reasons.contains(&r), "{r:?} missing from {reasons:?}");
    }
    let metrics = Arc::new(JobMetrics::default());
    let shared = Arc::new(parts);
    let par = Parallelism {
        workers: 2,
        ..Parallelism::default()
    };
    let out = run_bounded(&par, cfg.clone(), Arc::clone(&metrics), move |w, p| {
        memory_inputs(&shared, 5, w, p)
    })
    .unwrap()
    .sorted();
    assert_eq!(out.results, results);
    assert!(
        metrics
            .duplicates
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "duplicates exercised"
    );
}

/// Tumbling windows of `size_ms`, final mode, no out-of-order slack, one outlier guard.
fn tumbling_final(size_ms: i64, lateness_ms: i64) -> JobConfig {
    JobConfig::single(
        WindowSpec::tumbling(size_ms).unwrap(),
        lateness_ms,
        WatermarkConfig {
            max_out_of_order_ms: 0,
            idle_timeout_ms: 0,
            outliers: 1,
        },
        EmitMode::Final,
        ParseLimits::default(),
    )
}

fn reading(device: &str, ts: i64, seq: u64, value: f64) -> Vec<u8> {
    format!(r#"{{"device_id":"{device}","ts":{ts},"seq":{seq},"metrics":{{"t":{value}}}}}"#)
        .into_bytes()
}

/// The lateness boundary, exactly: a window is final when end + lateness ≤ W,
/// and a reading is late only when every window it belongs to is final.
#[test]
fn finality_and_lateness_at_the_exact_boundary() {
    // One partition, epochs of one record, tumbling 10 s, no out-of-order slack, lateness 1 s.
    // Partition watermark = 2nd largest event time (outlier guard).
    let recs = [
        reading("a", T0 + 1_000, 1, 1.0),  // window [T0, T0+10s)
        reading("a", T0 + 11_000, 2, 2.0), // W = T0 + 1_000
        reading("a", T0 + 11_000, 3, 3.0), // W = T0 + 11_000 = end + lateness: [T0, T0+10s) final
        reading("a", T0 + 9_999, 4, 4.0),  // its only window is final: late
        reading("a", T0 + 10_000, 5, 5.0), // next window, open
    ];
    let parts: Partitions = vec![(
        0,
        recs.iter()
            .enumerate()
            .map(|(i, v)| RawRecord {
                partition: 0,
                offset: i as i64,
                key: None,
                value: v.clone().into(),
                timestamp_ms: 0,
            })
            .collect(),
    )];
    let cfg = tumbling_final(10_000, 1_000);
    let shared = Arc::new(parts);
    let out = run_bounded(
        &Parallelism::default(),
        cfg,
        Arc::new(JobMetrics::default()),
        move |w, p| memory_inputs(&shared, 1, w, p),
    )
    .unwrap()
    .sorted();
    let summary: Vec<(Epoch, i64, u64, f64)> = out
        .results
        .iter()
        .map(|(e, r)| (*e, r.window_start - T0, r.stats().count, r.stats().sum))
        .collect();
    // [T0, T0+10s) is final at epoch 2 with the first reading only; the last window at the end.
    assert_eq!(summary, vec![(2, 0, 1, 1.0), (4, 10_000, 3, 10.0)]);
    assert_eq!(out.dead.len(), 1);
    assert_eq!(
        (
            out.dead[0].0,
            out.dead[0].1.reason,
            out.dead[0].1.record.offset
        ),
        (3, RejectReason::Late, 3)
    );
}

/// Closed windows leave the arrangement: over a long stream the window state
/// stays near what the open windows hold instead of growing with the input.
#[test]
fn window_state_forgets_closed_windows_and_the_source_waits_for_the_dataflow() {
    const WINDOWS: i64 = 200;
    const PER_WINDOW: i64 = 50;
    let recs: Vec<RawRecord> = (0..WINDOWS * PER_WINDOW)
        .map(|i| RawRecord {
            partition: 0,
            offset: i,
            key: None,
            // 10 s windows, PER_WINDOW readings each, in event-time order.
            value: reading("a", T0 + i * (10_000 / PER_WINDOW), i as u64, i as f64).into(),
            timestamp_ms: 0,
        })
        .collect();
    let shared = Arc::new(vec![(0, recs)]);
    let metrics = Arc::new(JobMetrics::default());
    let cfg = tumbling_final(10_000, 0);
    let out = run_bounded(
        &Parallelism::default(),
        cfg,
        Arc::clone(&metrics),
        move |w, p| memory_inputs(&shared, 10, w, p),
    )
    .unwrap();
    assert_eq!(out.results.len(), WINDOWS as usize);
    assert!(
        out.results
            .iter()
            .all(|(_, r)| r.stats().count == PER_WINDOW as u64)
    );
    let peak = metrics
        .window_state_peak
        .load(std::sync::atomic::Ordering::Relaxed);
    // Everything at once would be WINDOWS × PER_WINDOW = 10,000 updates.
    assert!(peak > 0, "the gauge is fed");
    assert!(
        peak <= 4 * PER_WINDOW as u64,
        "window state peaked at {peak} updates"
    );
    // Backpressure: the source never ran more than the allowed epochs ahead.
    let ahead = metrics
        .epochs_in_flight_peak
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        (1..=iotflow_dataflow::job::MAX_EPOCHS_IN_FLIGHT).contains(&ahead),
        "source ran {ahead} epochs ahead"
    );
}
