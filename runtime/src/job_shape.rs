//! What the state of a job depends on, kept in its state directory as
//! `JOB-SHAPE`: a job whose shape differs is refused there instead of
//! reading another job's state as its own.
//!
//! ```text
//!   aggregations (keys, windows, measures, filters, in order: snapshots name them by index)
//!   lateness, the watermark (max out of order, outliers: a restart replays
//!     the epochs since its checkpoint and must compute the same watermarks)
//!   alert rules (by index too), the topics written in Avro (staged epochs publish as encoded)
//! ```
//!
//! Shape 1 (before the watermark was part of it) is still accepted once and
//! rewritten as shape 2: the binaries that wrote it did not say.

use std::path::Path;

use iotflow_dataflow::job::JobConfig;
use iotflow_sink::durable;

use crate::live::{LiveJobConfig, RuntimeError};

const HEADER_1: &str = "iotflow job shape 1\n";
const HEADER_2: &str = "iotflow job shape 2\n";

/// The shape of `job` (writing Avro to `avro_topics`) as shape 1
/// (`watermark` false) or 2 spells it out.
fn render(job: &JobConfig, avro_topics: &[&str], watermark: bool) -> String {
    let mut shape = String::from(if watermark { HEADER_2 } else { HEADER_1 });
    for a in job.aggregations.iter() {
        shape.push_str(&a.shape());
        shape.push('\n');
    }
    shape.push_str(&format!("lateness_ms {}\n", job.lateness_ms));
    if watermark {
        let w = &job.watermark;
        shape.push_str(&format!(
            "watermark max_out_of_order_ms {} outliers {}\n",
            w.max_out_of_order_ms, w.outliers
        ));
    }
    // Snapshots name alert rules by index too; a job without rules keeps its old shape.
    for r in job.alerts.rules.iter() {
        shape.push_str(&format!("alert {} on {} {:?}\n", r.name, r.on, r.kind));
    }
    // JSON outputs add nothing: a job that writes JSON keeps its old shape.
    for topic in avro_topics {
        shape.push_str(&format!("output {topic} avro\n"));
    }
    shape
}

/// Writes `cfg`'s shape into `state_dir` the first time; refuses a job
/// whose shape differs from the one kept there.
pub(crate) fn check(state_dir: &Path, cfg: &LiveJobConfig) -> Result<(), RuntimeError> {
    let avro_topics: Vec<&str> = cfg
        .outputs
        .iter()
        .chain(&cfg.alert_output)
        .filter(|out| out.avro.is_some())
        .filter_map(|out| out.topic.as_deref())
        .collect();
    check_shape(state_dir, &cfg.dataflow, &avro_topics)
}

fn check_shape(
    state_dir: &Path,
    job: &JobConfig,
    avro_topics: &[&str],
) -> Result<(), RuntimeError> {
    let path = state_dir.join("JOB-SHAPE");
    let shape = render(job, avro_topics, true);
    let io = |source| RuntimeError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(kept) if kept == shape => Ok(()),
        Ok(kept) if kept == render(job, avro_topics, false) => {
            tracing::info!(path = %path.display(), "job shape 1 kept: rewritten as shape 2, with the watermark");
            write_whole(&path, &shape).map_err(io)
        }
        Ok(_) => Err(RuntimeError::JobChanged { path }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_whole(&path, &shape).map_err(io)
        }
        Err(e) => Err(io(e)),
    }
}

/// `shape` into `path` whole or not at all (a temporary file renamed over
/// it, synced): the processes of one job share its state directory and
/// start together, and none may read another's half-written shape, nor a
/// restart one torn by a crash, as another job's.
fn write_whole(path: &Path, shape: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".tmp-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    durable::write_replacing(path, Path::new(&tmp), |f| f.write_all(shape.as_bytes()))?;
    durable::sync_dir(durable::parent_of(path))
}

#[cfg(test)]
mod tests {
    use iotflow_dataflow::job::EmitMode;
    use iotflow_dataflow::watermark::WatermarkConfig;
    use iotflow_dataflow::{ParseLimits, WindowSpec};

    use super::*;

    fn job(max_out_of_order_ms: i64, lateness_ms: i64) -> JobConfig {
        let watermark = WatermarkConfig {
            max_out_of_order_ms,
            ..WatermarkConfig::default()
        };
        let window = WindowSpec::tumbling(10_000).unwrap();
        JobConfig::single(
            window,
            lateness_ms,
            watermark,
            EmitMode::Final,
            ParseLimits::default(),
        )
    }

    #[test]
    fn a_job_is_refused_on_the_state_of_one_with_another_watermark_or_lateness() {
        let dir = tempfile::tempdir().unwrap();
        check_shape(dir.path(), &job(2_000, 0), &[]).unwrap();
        check_shape(dir.path(), &job(2_000, 0), &[]).unwrap();
        for other in [job(5_000, 0), job(2_000, 1_000)] {
            assert!(matches!(
                check_shape(dir.path(), &other, &[]),
                Err(RuntimeError::JobChanged { .. })
            ));
        }
        assert!(matches!(
            check_shape(dir.path(), &job(2_000, 0), &["out"]),
            Err(RuntimeError::JobChanged { .. })
        ));
    }

    /// The processes of one job share its state directory and start
    /// together: none may read another's half-written shape as a changed job.
    #[test]
    fn processes_starting_together_all_take_the_shape_they_write() {
        for _ in 0..100 {
            let dir = tempfile::tempdir().unwrap();
            let refused = std::thread::scope(|s| {
                let checks: Vec<_> = (0..4)
                    .map(|_| s.spawn(|| check_shape(dir.path(), &job(2_000, 0), &[])))
                    .collect();
                checks
                    .into_iter()
                    .map(|c| c.join())
                    .filter(|c| !matches!(c, Ok(Ok(()))))
                    .count()
            });
            assert_eq!(refused, 0, "a process read another's half-written shape");
        }
    }

    #[test]
    fn shape_1_is_taken_once_and_kept_as_shape_2() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("JOB-SHAPE");
        std::fs::write(&path, render(&job(5_000, 0), &[], false)).unwrap();
        check_shape(dir.path(), &job(5_000, 0), &[]).unwrap();
        let kept = std::fs::read_to_string(&path).unwrap();
        assert!(kept.starts_with(HEADER_2), "{kept}");
        assert!(kept.contains("max_out_of_order_ms 5000"), "{kept}");
        assert!(matches!(
            check_shape(dir.path(), &job(2_000, 0), &[]),
            Err(RuntimeError::JobChanged { .. })
        ));
    }
}
