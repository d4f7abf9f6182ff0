//! `iotflow aggregate-file`: the dataflow over a JSON-lines or Parquet file,
//! results as CSV. This is the hook the peer benchmarks call (`RUST_BIN`): the same
//! operators as `run`, with a file source instead of Kafka.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use iotflow_dataflow::job::{EmitMode, JobConfig};
use iotflow_dataflow::parquet_file::{ParquetInputError, parquet_share};
use iotflow_dataflow::runner::{Parallelism, run_bounded};
use iotflow_dataflow::source::{InputError, jsonl_share};
use iotflow_dataflow::{JobMetrics, ParseLimits, WatermarkConfig, WindowSpec};

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

/// The CSV lines of `rows`.
fn csv_rows(rows: &[iotflow_dataflow::WindowResult]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(rows.len() * 96);
    for r in rows {
        // `{:?}` prints the shortest round-tripping form of a float. Writing to a
        // Vec cannot fail.
        let _ = writeln!(
            buf,
            "{},{},{},{},{},{:?},{:?},{:?},{:?}",
            r.device_id,
            r.metric,
            r.window_start,
            r.window_end,
            r.stats.count,
            r.stats.sum,
            r.stats.min,
            r.stats.max,
            r.stats.mean
        );
    }
    buf
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
    let out = run_bounded(&parallelism, cfg, Arc::clone(&metrics), move |w, peers| {
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
    })?;
    if let Some((path, e)) = error.lock().ok().and_then(|mut s| s.take()) {
        return Err(e).with_context(|| format!("reading {}", path.display()));
    }
    let mut rows: Vec<_> = out
        .results
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| r.is_final)
        .collect();
    // Keys are unique, so an unstable sort gives the one order.
    rows.sort_unstable_by(|a, b| {
        (&a.device_id, &a.metric, a.window_start).cmp(&(&b.device_id, &b.metric, b.window_start))
    });
    let file = std::fs::File::create(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    writeln!(
        w,
        "device_id,sensor,window_start,window_end,count,sum,min,max,mean"
    )?;
    // Formatting floats is most of the writing: one slice of the rows per worker thread.
    let slice = rows.len().div_ceil(args.workers.max(1)).max(1);
    let chunks: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = rows
            .chunks(slice)
            .map(|part| s.spawn(move || csv_rows(part)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    for chunk in &chunks {
        w.write_all(chunk)?;
    }
    w.flush()
        .with_context(|| format!("writing {}", args.output.display()))?;
    let m = &metrics;
    use std::sync::atomic::Ordering::Relaxed;
    eprintln!(
        "{} records, {} readings accepted, {} windows, rejected {:?}, duplicates {}",
        m.records_in.load(Relaxed),
        m.readings_accepted.load(Relaxed),
        rows.len(),
        m.rejected(),
        m.duplicates.load(Relaxed)
    );
    println!("PROC_SECONDS={:.4}", started.elapsed().as_secs_f64());
    Ok(())
}
