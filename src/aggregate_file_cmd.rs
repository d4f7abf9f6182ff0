//! `iotflow aggregate-file`: the dataflow over a JSON-lines or Parquet file,
//! results as CSV. This is the hook the peer benchmarks call (`RUST_BIN`): the same
//! operators as `run`, with a file source instead of Kafka.

use std::io::{BufWriter, Write};
use std::ops::Range;
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
use iotflow_sink::AggregateShape;
use rustc_hash::FxHashMap;

#[derive(Debug, Args)]
pub struct AggregateFileArgs {
    /// Readings as JSON lines, or Parquet if the name ends in `.parquet` (canonical,
    /// flat or long shape; in Parquet a `metrics` struct or map column is the canonical shape).
    input: PathBuf,
    /// Where to write the CSV: device_id,sensor,window_start,window_end,count,sum,min,max,mean.
    /// With --job-file, a directory: one <aggregation>.csv per aggregation.
    output: PathBuf,
    /// A job file (TOML): its input mapping and aggregations instead of the default job
    /// (`--window` and `--max-out-of-order` then come from the file).
    #[arg(long, env = "IOTFLOW_JOB_FILE")]
    job_file: Option<PathBuf>,
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

/// One worker's final windows as CSV lines in (device, metric, window start)
/// order, and where each series' lines are.
struct SortedCsv {
    /// The lines one after the other; line i ends at `ends[i]`.
    lines: Vec<u8>,
    ends: Vec<usize>,
    /// Each line's window start, for the rare series two parts share.
    starts: Vec<i64>,
    /// In key order.
    series: Vec<SeriesLines>,
}

/// A (device, metric) series and the indices of its lines.
struct SeriesLines {
    device: String,
    metric: String,
    lines: Range<usize>,
}

impl SeriesLines {
    fn key(&self) -> (&str, &str) {
        (&self.device, &self.metric)
    }
}

impl SortedCsv {
    fn of(results: impl Iterator<Item = WindowResult>) -> Self {
        let rows: Vec<WindowResult> = results.filter(|r| r.is_final).collect();
        // What a line needs, in arrival order: lines are written series by
        // series, and a compact row is one cache line where a result is three.
        let lines: Vec<CsvRow> = rows.iter().map(CsvRow::of).collect();
        // Group by series first: the strings are compared once per series
        // (a few thousand), not once per comparison of a row sort.
        let mut by_series: FxHashMap<&str, Vec<(i64, usize)>> = FxHashMap::default();
        for (i, r) in rows.iter().enumerate() {
            by_series
                .entry(&r.group)
                .or_default()
                .push((r.window_start, i));
        }
        // `device|metric` split once per series: ordered as (device, metric).
        let mut by_series: Vec<_> = by_series
            .into_iter()
            .map(|(group, windows)| (group.split_once('|').unwrap_or((group, "")), windows))
            .collect();
        by_series.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut csv = Self {
            lines: Vec::with_capacity(rows.len() * 96),
            ends: Vec::with_capacity(rows.len()),
            starts: Vec::with_capacity(rows.len()),
            series: Vec::with_capacity(by_series.len()),
        };
        for ((device, metric), mut windows) in by_series {
            // Keys are unique, so an unstable sort gives the one order.
            windows.sort_unstable();
            let first = csv.ends.len();
            for (start, i) in windows {
                lines[i].write(&mut csv.lines, (device, metric));
                csv.ends.push(csv.lines.len());
                csv.starts.push(start);
            }
            csv.series.push(SeriesLines {
                device: device.to_owned(),
                metric: metric.to_owned(),
                lines: first..csv.ends.len(),
            });
        }
        csv
    }

    /// The bytes of lines `lines`, one after the other.
    fn span(&self, lines: Range<usize>) -> &[u8] {
        let from = match lines.start {
            0 => 0,
            k => self.ends[k - 1],
        };
        let to = match lines.end {
            0 => 0,
            k => self.ends[k - 1],
        };
        &self.lines[from..to]
    }
}

/// Hands every part's lines to `write` in key order; how many there were.
/// A device's series are all on its worker's part, so whole series are
/// written at once; a series in several parts is merged line by line.
fn merge_sorted(
    parts: &[SortedCsv],
    mut write: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<usize> {
    let mut next = vec![0usize; parts.len()];
    let mut written = 0;
    loop {
        let head = |p: usize, next: &[usize]| parts[p].series.get(next[p]);
        // Few parts (one per worker): linear scans for the smallest head.
        let Some(smallest) = (0..parts.len())
            .filter_map(|p| head(p, &next).map(SeriesLines::key))
            .min()
        else {
            return Ok(written);
        };
        let sharing: Vec<usize> = (0..parts.len())
            .filter(|&p| head(p, &next).is_some_and(|s| s.key() == smallest))
            .collect();
        let mut ranges: Vec<Range<usize>> = sharing
            .iter()
            .map(|&p| parts[p].series[next[p]].lines.clone())
            .collect();
        if let [p] = sharing[..] {
            write(parts[p].span(ranges[0].clone()))?;
            written += ranges[0].len();
        } else {
            // By window start; a start in two parts keeps part order.
            while let Some(i) = (0..ranges.len())
                .filter(|&i| !ranges[i].is_empty())
                .min_by_key(|&i| parts[sharing[i]].starts[ranges[i].start])
            {
                let k = ranges[i].start;
                write(parts[sharing[i]].span(k..k + 1))?;
                ranges[i].start += 1;
                written += 1;
            }
        }
        for p in sharing {
            next[p] += 1;
        }
    }
}

/// One final window as a CSV line needs it.
struct CsvRow {
    window_start: i64,
    window_end: i64,
    count: u64,
    /// sum, min, max, mean.
    floats: [f64; 4],
}

impl CsvRow {
    fn of(r: &WindowResult) -> Self {
        let s = r.stats();
        Self {
            window_start: r.window_start,
            window_end: r.window_end,
            count: s.count,
            floats: [s.sum, s.min, s.max, s.mean],
        }
    }

    /// Appends the line of this window of (`device`, `metric`); floats in
    /// their shortest round-tripping form.
    fn write(&self, buf: &mut Vec<u8>, (device, metric): (&str, &str)) {
        let (mut ints, mut floats) = (itoa::Buffer::new(), zmij::Buffer::new());
        buf.extend_from_slice(device.as_bytes());
        buf.push(b',');
        buf.extend_from_slice(metric.as_bytes());
        for i in [self.window_start, self.window_end] {
            buf.push(b',');
            buf.extend_from_slice(ints.format(i).as_bytes());
        }
        buf.push(b',');
        buf.extend_from_slice(ints.format(self.count).as_bytes());
        for f in self.floats {
            buf.push(b',');
            buf.extend_from_slice(floats.format(f).as_bytes());
        }
        buf.push(b'\n');
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The worker inputs of `input` (JSON lines, or Parquet by its name).
fn file_inputs(
    input: PathBuf,
    epoch_bytes: u64,
    error: InputError,
) -> impl Fn(usize, usize) -> Vec<iotflow_dataflow::source::OwnedInput> + Send + Sync + 'static {
    let parquet = input.extension().is_some_and(|e| e == "parquet");
    move |w, peers| {
        let (share, shares, slot) = (w as u32, peers as u32, Arc::clone(&error));
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
                if let Ok(mut slot) = error.lock() {
                    slot.get_or_insert((input.clone(), e));
                }
                Vec::new()
            }
        }
    }
}

/// `aggregate-file --job-file`: every aggregation's final windows, each
/// into `<output>/<aggregation>.csv` in (group values, window start) order.
fn run_job(args: &AggregateFileArgs, job_file: &std::path::Path, started: Instant) -> Result<()> {
    let plan = iotflow_jobfile::load(job_file)?;
    if !plan.alerts.is_empty() {
        anyhow::bail!(
            "{}: aggregate-file writes aggregations only; its alert rules need `run` (alert events go through the commit protocol)",
            job_file.display()
        );
    }
    if plan.input.format.needs_registry() {
        anyhow::bail!(
            "{}: input format {} is for topics (values in the Confluent wire format); aggregate-file reads JSON lines and Parquet",
            job_file.display(),
            plan.input.format
        );
    }
    let mut cfg = JobConfig::from_plan(&plan, ParseLimits::default())?;
    // A file is read to its end: no partition is ever idle.
    cfg.watermark.idle_timeout_ms = 0;
    let shapes: Vec<AggregateShape> = cfg.aggregations.iter().map(AggregateShape::of).collect();
    let metrics = Arc::new(JobMetrics::default());
    let error: InputError = Arc::default();
    let parallelism = Parallelism {
        workers: args.workers,
        ..Parallelism::default()
    };
    let inputs = file_inputs(args.input.clone(), args.epoch_bytes, Arc::clone(&error));
    let parts = run_bounded_then(&parallelism, cfg, Arc::clone(&metrics), inputs, |part| {
        part.results
            .into_iter()
            .filter(|(_, r)| r.is_final)
            .map(|(_, r)| r)
            .collect::<Vec<WindowResult>>()
    })?;
    if let Some((path, e)) = error.lock().ok().and_then(|mut s| s.take()) {
        return Err(e).with_context(|| format!("reading {}", path.display()));
    }
    let mut by_aggregation: Vec<Vec<WindowResult>> = vec![Vec::new(); shapes.len()];
    for r in parts.into_iter().flatten() {
        if let Some(rows) = by_aggregation.get_mut(usize::from(r.aggregation)) {
            rows.push(r);
        }
    }
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let mut windows = 0;
    for (shape, mut rows) in shapes.iter().zip(by_aggregation) {
        // By group values, then start. Values hold no `|` and no control
        // character, so the separator read as 0 orders keys as value tuples.
        let tuple = |r: &WindowResult| -> Vec<u8> {
            r.group
                .bytes()
                .map(|b| if b == b'|' { 0 } else { b })
                .collect()
        };
        rows.sort_by_cached_key(|r| (tuple(r), r.window_start));
        let mut out = format!("{}\n", shape.csv_header()).into_bytes();
        for r in &rows {
            shape.csv(r, &mut out);
        }
        let path = args.output.join(format!("{}.csv", shape.aggregation));
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
        windows += rows.len();
    }
    eprintln!(
        "{} windows of {} aggregations in {}",
        windows,
        shapes.len(),
        args.output.display()
    );
    println!("PROC_SECONDS={:.4}", started.elapsed().as_secs_f64());
    Ok(())
}

pub fn run(args: AggregateFileArgs) -> Result<()> {
    let started = Instant::now();
    if !args.input.is_file() {
        bail!("input {} is not a file", args.input.display());
    }
    if let Some(job_file) = &args.job_file {
        return run_job(&args, job_file, started);
    }
    let cfg = JobConfig::single(
        WindowSpec::tumbling(millis(args.window))?,
        0,
        WatermarkConfig {
            max_out_of_order_ms: millis(args.max_out_of_order),
            idle_timeout_ms: 0,
            outliers: 1,
        },
        EmitMode::Final,
        ParseLimits::default(),
    );
    let metrics = Arc::new(JobMetrics::default());
    let error: InputError = Arc::default();
    let parallelism = Parallelism {
        workers: args.workers,
        ..Parallelism::default()
    };
    // Each worker sorts and formats its own windows; the main thread merges.
    let parts = run_bounded_then(
        &parallelism,
        cfg,
        Arc::clone(&metrics),
        file_inputs(args.input.clone(), args.epoch_bytes, Arc::clone(&error)),
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

#[cfg(test)]
mod tests {
    use iotflow_dataflow::Stats;

    use super::*;

    fn window(device: &str, metric: &str, start: i64, value: f64) -> WindowResult {
        let stats = Stats::of(&mut [(start, value)]).unwrap_or_else(|| unreachable!());
        WindowResult::new(device, metric, start, start + 10, stats, true)
    }

    fn merged(parts: &[SortedCsv]) -> Vec<String> {
        let mut out = Vec::new();
        let n = merge_sorted(parts, |line| {
            out.extend_from_slice(line);
            Ok(())
        })
        .unwrap_or_else(|e| unreachable!("{e}"));
        let lines: Vec<String> = String::from_utf8_lossy(&out)
            .lines()
            .map(|l| l.split(',').take(3).collect::<Vec<_>>().join(","))
            .collect();
        assert_eq!(n, lines.len());
        lines
    }

    #[test]
    fn parts_merge_in_key_order_whole_series_or_shared() {
        let a = SortedCsv::of(
            [
                window("d2", "t", 20, 1.0),
                window("d1", "t", 10, 1.0),
                window("d3", "h", 0, 1.0),
                window("d1", "t", 0, 1.0),
                window("d3", "h", 30, 1.0),
            ]
            .into_iter(),
        );
        let b = SortedCsv::of(
            [
                window("d1", "h", 0, 1.0),
                window("d3", "h", 10, 1.0),
                window("d4", "t", 0, 1.0),
            ]
            .into_iter(),
        );
        assert_eq!(
            merged(&[a, b]),
            [
                "d1,h,0", "d1,t,0", "d1,t,10", "d2,t,20", "d3,h,0", "d3,h,10", "d3,h,30", "d4,t,0",
            ]
        );
    }
}
