//! The pipeline log: what `pipeline_health.ipynb` reads. Every interval the
//! job appends a sample of its counters to `samples-p<process>.jsonl`, and each
//! commit since the last sample to `commits-p<process>.jsonl`, under
//! `<parquet dir>/_pipeline/` (a leading `_` keeps Parquet readers out of it).
//!
//! Counters are cumulative per run (`run` = its start, epoch ms); a reader
//! takes differences between samples of one run. It is an observation log,
//! not part of the exactly-once output: a crash loses at most the last
//! interval, and a replayed epoch's commit appears in both runs.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

use anyhow::{Context, Result};
use iotflow_dataflow::JobMetrics;
use iotflow_dataflow::metrics::{CommitSample, LATENESS_BUCKETS_MS};
use iotflow_dataflow::reading::RejectReason;
use serde::Serialize;

/// How a run ended, in its last sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunEnd {
    /// Still running (every sample but the last).
    Running,
    /// `--until-end`, or every partition finished.
    InputEnd,
    /// SIGUSR1: read to the end of that moment and closed every window.
    Drained,
    /// Ctrl-C: stopped after an epoch, windows left open for the next run.
    Interrupted,
    Failed,
}

#[derive(Debug, Serialize)]
struct Sample<'a> {
    job: &'a str,
    process: usize,
    run: i64,
    generation: Option<u64>,
    at_ms: i64,
    end: RunEnd,
    records_in: u64,
    records_accepted: u64,
    readings_accepted: u64,
    duplicates: u64,
    windows_emitted: u64,
    window_updates: u64,
    watermark_ms: Option<i64>,
    last_epoch: u64,
    last_committed_epoch: Option<u64>,
    commits: u64,
    commit_latency_ms_sum: f64,
    snapshot_bytes: u64,
    window_state_updates: i64,
    /// Every reason, zeros included, so each sample has the same fields.
    dead_letters: BTreeMap<&'static str, u64>,
    /// Keys are partition numbers.
    lag: BTreeMap<String, i64>,
    /// Bucket upper bounds; the last bucket (`null`) has none.
    lateness_le_ms: Vec<Option<i64>>,
    lateness_counts: Vec<u64>,
    lateness_sum_ms: u64,
}

#[derive(Debug, Serialize)]
struct Commit<'a> {
    job: &'a str,
    process: usize,
    run: i64,
    generation: Option<u64>,
    #[serde(flatten)]
    commit: CommitSample,
}

pub struct PipelineLog {
    job: String,
    process: usize,
    run: i64,
    generation: Option<u64>,
    samples: BufWriter<File>,
    commits: BufWriter<File>,
    dir: PathBuf,
}

impl PipelineLog {
    pub fn open(dir: &Path, job: &str, process: usize, generation: Option<u64>) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let append = |name: String| -> Result<BufWriter<File>> {
            let path = dir.join(name);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            Ok(BufWriter::new(file))
        };
        Ok(Self {
            job: job.to_owned(),
            process,
            run: chrono::Utc::now().timestamp_millis(),
            generation,
            samples: append(format!("samples-p{process}.jsonl"))?,
            commits: append(format!("commits-p{process}.jsonl"))?,
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends the commits since the last call and a sample of `m`.
    pub fn write(&mut self, m: &JobMetrics, end: RunEnd) -> Result<()> {
        for commit in m.take_commits() {
            let line = Commit {
                job: &self.job,
                process: self.process,
                run: self.run,
                generation: self.generation,
                commit,
            };
            serde_json::to_writer(&mut self.commits, &line)?;
            self.commits.write_all(b"\n")?;
        }
        self.commits.flush()?;
        let mut line = serde_json::to_vec(&self.sample(m, end))?;
        line.push(b'\n');
        self.samples.write_all(&line)?;
        self.samples.flush()?;
        Ok(())
    }

    fn sample(&self, m: &JobMetrics, end: RunEnd) -> Sample<'_> {
        let seen = m.rejected();
        let (counts, lateness_sum_ms) = m.lateness();
        let wm = m.watermark_ms.load(Relaxed);
        Sample {
            job: &self.job,
            process: self.process,
            run: self.run,
            generation: self.generation,
            at_ms: chrono::Utc::now().timestamp_millis(),
            end,
            records_in: m.records_in.load(Relaxed),
            records_accepted: m.records_accepted.load(Relaxed),
            readings_accepted: m.readings_accepted.load(Relaxed),
            duplicates: m.duplicates.load(Relaxed),
            windows_emitted: m.windows_emitted.load(Relaxed),
            window_updates: m.updates_emitted.load(Relaxed),
            watermark_ms: (wm != i64::MIN).then_some(wm),
            last_epoch: m.last_epoch.load(Relaxed),
            last_committed_epoch: u64::try_from(m.last_committed_epoch.load(Relaxed)).ok(),
            commits: m.commits.load(Relaxed),
            commit_latency_ms_sum: m.commit_latency_micros_sum.load(Relaxed) as f64 / 1e3,
            snapshot_bytes: m.snapshot_bytes_last.load(Relaxed),
            window_state_updates: m.window_state_updates.load(Relaxed),
            dead_letters: RejectReason::ALL
                .iter()
                .map(|r| (r.code(), seen.get(r.code()).copied().unwrap_or(0)))
                .collect(),
            lag: m
                .lag()
                .into_iter()
                .map(|(p, n)| (p.to_string(), n))
                .collect(),
            lateness_le_ms: LATENESS_BUCKETS_MS
                .iter()
                .map(|&ms| Some(ms))
                .chain([None])
                .collect(),
            lateness_counts: counts.to_vec(),
            lateness_sum_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn samples_and_commits_are_json_lines_with_every_reason() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let m = JobMetrics::default();
        let mut log = PipelineLog::open(dir.path(), "j", 1, Some(3))?;
        m.records_in.fetch_add(10, Relaxed);
        m.reject(RejectReason::Late, 2);
        m.set_end_offset(3, 50);
        m.set_next_offset(3, 10);
        m.observe_commit(7, Duration::from_millis(12));
        log.write(&m, RunEnd::Running)?;
        m.observe_commit(8, Duration::from_millis(5));
        log.write(&m, RunEnd::Drained)?;

        let samples = std::fs::read_to_string(dir.path().join("samples-p1.jsonl"))?;
        let samples: Vec<serde_json::Value> = samples
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0]["end"], "running");
        assert_eq!(samples[1]["end"], "drained");
        assert_eq!(samples[1]["records_in"], 10);
        assert_eq!(samples[1]["generation"], 3);
        assert_eq!(samples[1]["lag"]["3"], 40);
        assert_eq!(samples[1]["dead_letters"]["late"], 2);
        assert_eq!(
            samples[1]["dead_letters"]
                .as_object()
                .map(|o| o.len())
                .unwrap_or(0),
            RejectReason::ALL.len()
        );
        assert_eq!(
            samples[1]["lateness_counts"].as_array().map(Vec::len),
            Some(LATENESS_BUCKETS_MS.len() + 1)
        );

        let commits = std::fs::read_to_string(dir.path().join("commits-p1.jsonl"))?;
        let epochs: Vec<u64> = commits
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).map(|v| v["epoch"].as_u64()))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(epochs, vec![7, 8], "each commit once, in order");
        Ok(())
    }
}
