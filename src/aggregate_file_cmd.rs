//! `iotflow aggregate-file`: the dataflow over a JSON-lines or Parquet file,
//! results as CSV. This is the hook the peer benchmarks call (`RUST_BIN`): the same
//! operators as `run`, with a file source instead of Kafka.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use iotflow_dataflow::job::{EmitMode, JobConfig};
use iotflow_dataflow::parquet_file::{ParquetInputError, parquet_share};
use iotflow_dataflow::runner::{Parallelism, run_bounded_then};
use iotflow_dataflow::source::{InputError, jsonl_share};
use iotflow_dataflow::{JobMetrics, ParseLimits, WatermarkConfig, WindowResult, WindowSpec};

#[derive(Debug, Args)]
pub struct AggregateFileArgs {
    /// Readings as JSON lines, or Parquet if the name ends in `.parquet` (canonical,
    /// flat or long shape; in Parquet a `metrics` struct or map column is the canonical shape).
    input: PathBuf,
    /// Where to write the CSV: device_id,sensor,window_start,window_end,count,sum,min,max,mean.
    output: PathBuf,
    /// Timely worker threads.
    #[arg(short = 'w', long, env = "IOTFLOW_WORKERS", default_value_t = 1)]
    workers: usize,
    /// Tumbling window size.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    window: Duration,
    /// Bounded out-of-orderness of the watermark.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    max_out_of_order: Duration,
    /// Bytes of JSON-lines input per epoch (Parquet: one epoch per row group): epochs, and
    /// so results, do not depend on the worker count.
    #[arg(long, default_value_t = 8 << 20)]
    epoch_bytes: u64,
}

/// One worker's final windows and their CSV lines, in (device, metric,
/// window start) order.
struct SortedCsv {
    rows: Vec<WindowResult>,
    /// `rows` indices in key order.
    order: Vec<usize>,
    /// The CSV lines in key order, one after the other; line i ends at `ends[i]`.
    lines: Vec<u8>,
    ends: Vec<usize>,
}

impl SortedCsv {
    fn of(results: impl Iterator<Item = WindowResult>) -> Self {
        let rows: Vec<WindowResult> = results.filter(|r| r.is_final).collect();
        // Group by series first: the strings are compared once per series
        // (a few thousand), not once per comparison of a row sort.
        let mut series: HashMap<(&str, &str), Vec<(i64, usize)>> = HashMap::new();
        for (i, r) in rows.iter().enumerate() {
            series
                .entry((&r.device_id, &r.metric))
                .or_default()
                .push((r.window_start, i));
        }
        let mut series: Vec<_> = series.into_iter().collect();
        series.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut order = Vec::with_capacity(rows.len());
        for (_, mut windows) in series {
            // Keys are unique, so an unstable sort gives the one order.
            windows.sort_unstable();
            order.extend(windows.into_iter().map(|(_, i)| i));
        }
        let mut lines = Vec::with_capacity(rows.len() * 96);
        let mut ends = Vec::with_capacity(rows.len());
        for &i in &order {
            csv_row(&mut lines, &rows[i]);
            ends.push(lines.len());
        }
        Self {
            rows,
            order,
            lines,
            ends,
        }
    }

    /// The row at position `k` of the key order.
    fn row(&self, k: usize) -> &WindowResult {
        &self.rows[self.order[k]]
    }

    fn line(&self, k: usize) -> &[u8] {
        let start = if k == 0 { 0 } else { self.ends[k - 1] };
        &self.lines[start..self.ends[k]]
    }
}

fn key(r: &WindowResult) -> (&str, &str, i64) {
    (&r.device_id, &r.metric, r.window_start)
}

/// Hands every part's lines to `write` in key order; how many there were.
fn merge_sorted(
    parts: &[SortedCsv],
    mut write: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<usize> {
    let mut next = vec![0usize; parts.len()];
    let mut written = 0;
    loop {
        // Few parts (one per worker): a linear scan for the smallest head.
        let smallest = parts
            .iter()
            .enumerate()
            .filter(|(p, part)| next[*p] < part.rows.len())
            .min_by(|(p, a), (q, b)| key(a.row(next[*p])).cmp(&key(b.row(next[*q]))))
            .map(|(p, _)| p);
        let Some(p) = smallest else {
            return Ok(written);
        };
        write(parts[p].line(next[p]))?;
        next[p] += 1;
        written += 1;
    }
}

/// Appends the CSV line of `r`; floats in their shortest round-tripping form.
fn csv_row(buf: &mut Vec<u8>, r: &WindowResult) {
    let (mut ints, mut floats) = (itoa::Buffer::new(), zmij::Buffer::new());
    buf.extend_from_slice(r.device_id.as_bytes());
    buf.push(b',');
    buf.extend_from_slice(r.metric.as_bytes());
    for i in [r.window_start, r.window_end] {
        buf.push(b',');
        buf.extend_from_slice(ints.format(i).as_bytes());
    }
    buf.push(b',');
    buf.extend_from_slice(ints.format(r.stats.count).as_bytes());
    for f in [r.stats.sum, r.stats.min, r.stats.max, r.stats.mean] {
        buf.push(b',');
        buf.extend_from_slice(floats.format(f).as_bytes());
    }
    buf.push(b'\n');
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub fn run(args: AggregateFileArgs) -> Result<()> {
    let started = Instant::now();
    if !args.input.is_file() {
        bail!("input {} is not a file", args.input.display());
    }
    let parquet = args.input.extension().is_some_and(|e| e == "parquet");
    let cfg = JobConfig {
        window: WindowSpec::tumbling(millis(args.window))?,
        lateness_ms: 0,
        watermark: WatermarkConfig {
            max_out_of_order_ms: millis(args.max_out_of_order),
            idle_timeout_ms: 0,
            outliers: 1,
        },
        emit: EmitMode::Final,
        limits: ParseLimits::default(),
    };
    let metrics = Arc::new(JobMetrics::default());
    let error: InputError = Arc::default();
    let (input, err_slot) = (args.input.clone(), Arc::clone(&error));
    let parallelism = Parallelism {
        workers: args.workers,
        ..Parallelism::default()
    };
    let epoch_bytes = args.epoch_bytes;
    // Each worker sorts and formats its own windows; the main thread merges.
    let parts = run_bounded_then(
        &parallelism,
        cfg,
        Arc::clone(&metrics),
        move |w, peers| {
            let (share, shares, slot) = (w as u32, peers as u32, Arc::clone(&err_slot));
            let opened = if parquet {
                parquet_share(&input, share, shares, slot).map_err(|e| match e {
                    ParquetInputError::Io(e) => e,
                    other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
                })
            } else {
                jsonl_share(&input, share, shares, epoch_bytes, slot)
            };
            match opened {
                Ok(i) => vec![i],
                Err(e) => {
                    if let Ok(mut slot) = err_slot.lock() {
                        slot.get_or_insert((input.clone(), e));
                    }
                    Vec::new()
                }
            }
        },
        |out| SortedCsv::of(out.results.into_iter().map(|(_, r)| r)),
    )?;
    if let Some((path, e)) = error.lock().ok().and_then(|mut s| s.take()) {
        return Err(e).with_context(|| format!("reading {}", path.display()));
    }
    let file = std::fs::File::create(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    writeln!(
        w,
        "device_id,sensor,window_start,window_end,count,sum,min,max,mean"
    )?;
    let windows = merge_sorted(&parts, |line| w.write_all(line))
        .with_context(|| format!("writing {}", args.output.display()))?;
    w.flush()
        .with_context(|| format!("writing {}", args.output.display()))?;
    let m = &metrics;
    use std::sync::atomic::Ordering::Relaxed;
    eprintln!(
        "{} records, {} readings accepted, {} windows, rejected {:?}, duplicates {}",
        m.records_in.load(Relaxed),
        m.readings_accepted.load(Relaxed),
        windows,
        m.rejected(),
        m.duplicates.load(Relaxed)
    );
    println!("PROC_SECONDS={:.4}", started.elapsed().as_secs_f64());
    Ok(())
}
