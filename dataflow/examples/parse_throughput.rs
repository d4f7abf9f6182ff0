//! Parse throughput of the reading parser on a JSON-lines file, without the
//! dataflow: the ceiling for the file-source job.
//!
//!     cargo run --release -p iotflow-dataflow --example parse_throughput -- FILE

use std::io::{BufRead, BufReader};
use std::time::Instant;

use iotflow_dataflow::{ParseLimits, parse_record};

fn main() -> std::io::Result<()> {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: parse_throughput FILE.jsonl");
        std::process::exit(2);
    };
    let t0 = Instant::now();
    let mut lines = Vec::new();
    for line in BufReader::new(std::fs::File::open(&path)?).split(b'\n') {
        lines.push(line?);
    }
    let read = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let (mut ok, mut bad, mut out) = (0u64, 0u64, Vec::new());
    let limits = ParseLimits::default();
    for l in &lines {
        out.clear();
        match parse_record(l, &limits, &mut out) {
            Ok(()) => ok += out.len() as u64,
            Err(_) => bad += 1,
        }
    }
    let parse = t1.elapsed().as_secs_f64();
    println!(
        "{} lines: read {:.3} s ({:.2} M lines/s), parse {:.3} s ({:.2} M lines/s); {ok} readings, {bad} rejected",
        lines.len(),
        read,
        lines.len() as f64 / read / 1e6,
        parse,
        lines.len() as f64 / parse / 1e6
    );
    Ok(())
}
