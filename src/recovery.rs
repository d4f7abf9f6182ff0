//! What `iotflow run` does before the dataflow starts when it commits
//! exactly once: lock the state directory, read the progress topic, plan
//! (protocol::plan_recovery), finish publishing the last commit, discard later
//! staging, and hand each worker its snapshot.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result, bail};
use iotflow_dataflow::job::Epoch;
use iotflow_dataflow::operators::windows::device_hash;
use iotflow_dataflow::snapshot::{WorkerSnapshot, reshard};
use iotflow_redpanda::topics::{self, TopicSpec};
use iotflow_sink::exactly_once::{
    CommitState, ExactlyOnceConfig, PendingRows, discard_epoch, finish_publishing, load_state,
    staged_epochs,
};
use iotflow_sink::progress::ProgressLog;
use iotflow_sink::protocol::{Plan, plan_recovery};
use rskafka::client::Client;

/// Where the job starts.
#[derive(Debug)]
pub struct Start {
    pub epoch: Epoch,
    pub offsets: BTreeMap<i32, i64>,
    /// Per worker (global index); empty when starting fresh.
    pub snapshots: Vec<WorkerSnapshot>,
    /// Final windows not yet in a Parquet file, per worker (global index).
    pub pending: Vec<PendingRows>,
    /// Held for the whole run: one live instance per state directory.
    pub _lock: File,
}

/// A file-system-safe job name for default directories.
pub fn dir_name(job: &str) -> String {
    job.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Takes the state directory's lock, or says who holds it.
fn lock(state_dir: &Path, process: usize) -> Result<File> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating state directory {}", state_dir.display()))?;
    let path = state_dir.join(format!("LOCK-p{process}"));
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another iotflow instance is running on state directory {} (lock {})",
            state_dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// Plans and prepares the start of a committing job with `workers` workers in all.
pub async fn prepare(
    client: &Client,
    bootstrap: &[String],
    cfg: &mut ExactlyOnceConfig,
    workers: u32,
    process: usize,
) -> Result<Start> {
    let lock = lock(&cfg.state_dir, process)?;
    let spec = topics::default_topics(1, 1)
        .into_iter()
        .find(|t| t.name == topics::PROGRESS)
        .map(|t| TopicSpec {
            name: cfg.progress_topic.clone(),
            ..t
        })
        .context("the progress topic's spec")?;
    if topics::partitions_of(client, &cfg.progress_topic)
        .await?
        .is_none()
    {
        topics::create_topics(client, bootstrap, &[spec]).await?;
    }
    let log = ProgressLog::open(client, &cfg.progress_topic).await?;
    let (commits, untrusted) = log.read_all().await?;
    iotflow_sink::progress::report_untrusted(&untrusted);
    let staged = staged_epochs(&cfg.state_dir)
        .with_context(|| format!("listing {}", cfg.state_dir.display()))?;
    // Checking a commit means reading its state: keep what the plan picks.
    let loaded: RefCell<Option<(Epoch, CommitState)>> = RefCell::new(None);
    let plan = plan_recovery(&cfg.job, &commits, &staged, |c| match load_state(cfg, c) {
        Ok(state) => {
            *loaded.borrow_mut() = Some((c.epoch, state));
            true
        }
        Err(e) => {
            tracing::warn!(epoch = c.epoch, error = %e, "commit's state not usable");
            false
        }
    });
    let discard = match &plan {
        Plan::Fresh { discard, .. } | Plan::Resume { discard, .. } => discard.clone(),
    };
    for &e in &discard {
        discard_epoch(&cfg.state_dir, &cfg.parquet_dir, e)
            .with_context(|| format!("discarding staged epoch {e}"))?;
    }
    match plan {
        Plan::Fresh { generation, .. } => {
            if commits.iter().any(|c| c.job == cfg.job) {
                bail!(
                    "job {} has commits on {} but none of their snapshots in {} is intact; \
                     refusing to start from scratch (move the state directory away to do that)",
                    cfg.job,
                    cfg.progress_topic,
                    cfg.state_dir.display()
                );
            }
            cfg.generation = generation;
            cfg.fresh = true;
            Ok(Start {
                epoch: 0,
                offsets: BTreeMap::new(),
                snapshots: Vec::new(),
                pending: Vec::new(),
                _lock: lock,
            })
        }
        Plan::Resume {
            generation,
            from,
            skipped,
            ..
        } => {
            cfg.generation = generation;
            if !skipped.is_empty() {
                eprintln!(
                    "snapshots of epochs {skipped:?} are damaged or missing: resuming from epoch {}",
                    from.epoch
                );
            }
            let state = match loaded.into_inner() {
                Some((epoch, state)) if epoch == from.epoch => state,
                _ => bail!("the state of epoch {} was not loaded", from.epoch),
            };
            let snapshots = state.snapshots;
            if snapshots.len() != workers as usize {
                eprintln!(
                    "rescaling: epoch {} was committed by {} workers, resuming with {workers}",
                    from.epoch,
                    snapshots.len()
                );
            }
            let snapshots = reshard(&snapshots, workers).context("re-sharding the snapshots")?;
            let pending = regroup_pending(state.pending, from.workers, workers);
            if process == 0 {
                // The publishing clients block on a runtime of their own.
                let (eo, commit) = (cfg.clone(), (*from).clone());
                tokio::task::spawn_blocking(move || finish_publishing(&eo, &commit))
                    .await
                    .context("publishing thread")?
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("finishing the publishing of epoch {}", from.epoch))?;
            }
            eprintln!(
                "resuming after committed epoch {} (generation {generation}) at input offsets {:?}; \
                 {} staged epochs discarded",
                from.epoch,
                from.source_offsets,
                discard.len()
            );
            Ok(Start {
                epoch: from.epoch + 1,
                offsets: from.source_offsets.clone(),
                snapshots,
                pending,
                _lock: lock,
            })
        }
    }
}

/// Each worker's pending Parquet rows for `workers` workers: as they were when
/// the count is unchanged, else regrouped by device like the window state.
fn regroup_pending(
    entries: Vec<(
        iotflow_sink::protocol::PendingEntry,
        Vec<iotflow_sink::AggregateRecord>,
    )>,
    was: u32,
    workers: u32,
) -> Vec<PendingRows> {
    let mut out: Vec<PendingRows> = vec![PendingRows::default(); workers as usize];
    if was == workers {
        for (entry, rows) in entries {
            if let Some(slot) = out.get_mut(entry.worker as usize) {
                *slot = PendingRows::restored(entry.since, rows);
            }
        }
        return out;
    }
    let since = entries
        .iter()
        .map(|(e, _)| e.since)
        .min()
        .unwrap_or_default();
    let mut rows: Vec<Vec<iotflow_sink::AggregateRecord>> = vec![Vec::new(); workers as usize];
    for r in entries.into_iter().flat_map(|(_, rows)| rows) {
        let w = (device_hash(&r.device_id) % u64::from(workers.max(1))) as usize;
        rows[w].push(r);
    }
    for (slot, rows) in out.iter_mut().zip(rows) {
        *slot = PendingRows::restored(since, rows);
    }
    out
}
