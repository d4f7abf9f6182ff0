//! The start of a committing run: lock the state directory, read the job's
//! recent history from the end of the progress topic, plan
//! ([`plan_recovery`]), finish publishing what the plan names, discard later
//! staging, and hand each worker its state.
//!
//! ```text
//!   LOCK-p<process> ─▶ progress topic: newest record of the job ─log_from─▶ read to the end
//!     ─▶ plan: newest commit C whose snapshots and pending rows verify
//!     ─▶ finish publishing every valid commit in C.unpublished_from..=C.epoch (process 0)
//!     ─▶ discard staged epochs after C ─▶ re-shard snapshots and pending rows to the workers
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use iotflow_dataflow::job::Epoch;
use iotflow_dataflow::replay::Cut;
use iotflow_dataflow::snapshot::{Link, WindowRules, WorkerSnapshot, reshard};

use crate::error::SinkError;
use crate::parquet::Dataset;
use crate::progress::{History, ProgressLog};
use crate::protocol::{CommitRecord, PendingEntry, Plan, plan_recovery, valid_history};
use crate::shape::Row;

use super::ExactlyOnceConfig;
use super::chain::load_whole;
use super::outgoing::StagedOutputs;
use super::pending::{PendingRows, read_segment};
use super::publisher::{Publisher, publish_files};
use super::rebuild;
use super::state_dir::{discard_epoch, outputs_path, snapshot_epoch, staged_epochs};

/// Where a run starts.
#[derive(Debug)]
pub struct RunStart {
    /// The first epoch the run stages.
    pub epoch: Epoch,
    /// The first epoch the dataflow runs: after the restored state's. Before
    /// `epoch` when the state is a checkpoint's: the epochs between are
    /// replayed (cut as `replay` says), not staged.
    pub state_epoch: Epoch,
    /// Where the dataflow starts reading, per input partition.
    pub offsets: BTreeMap<i32, i64>,
    /// Per worker (global index); empty when starting fresh.
    pub snapshots: Vec<WorkerSnapshot>,
    /// Per worker (global index), per dataset: final rows not yet in a Parquet file.
    pub pending: Vec<Vec<PendingRows>>,
    /// The kept commits before `epoch`, oldest first, with their offsets.
    pub history: Vec<(CommitRecord, i64)>,
    /// What starting did, for the log: discarded staged epochs, skipped commits.
    pub discarded: usize,
    pub skipped: Vec<Epoch>,
    /// How the skipped commits' epochs were cut: the run cuts them again so.
    pub replay: Vec<Cut>,
    /// Held for the whole run: one live instance per state directory.
    pub lock: File,
}

/// What a commit left for recovery, read back and checked.
#[derive(Debug)]
pub struct CommitState {
    /// Each worker's whole state (its chain put together), by worker.
    pub snapshots: Vec<WorkerSnapshot>,
    /// Each worker's final rows waiting for a Parquet roll, per dataset.
    pub pending: Vec<(PendingEntry, Vec<Row>)>,
    /// Segments found damaged that can be rebuilt from their dataset's
    /// topic (see [`rebuild`]), and what was wrong with each.
    pub damaged: Vec<(PendingEntry, String)>,
}

/// The state `commit` names: every worker's snapshot chain (each file's size
/// and checksum as its successor names, put together) and pending rows. An
/// error means the commit cannot be resumed from.
pub fn load_state(
    cfg: &ExactlyOnceConfig,
    commit: &CommitRecord,
) -> Result<CommitState, SinkError> {
    if commit.snapshots.len() != commit.workers as usize {
        return Err(SinkError::Inconsistent {
            epoch: commit.epoch,
            problem: format!(
                "{} snapshots for {} workers",
                commit.snapshots.len(),
                commit.workers
            ),
        });
    }
    let mut snapshots = Vec::with_capacity(commit.snapshots.len());
    for entry in &commit.snapshots {
        let head = Link {
            epoch: snapshot_epoch(&entry.path).ok_or_else(|| SinkError::Damaged {
                path: PathBuf::from(&entry.path),
                problem: "not a snapshot path".into(),
            })?,
            bytes: entry.bytes,
            checksum: entry.checksum,
        };
        snapshots.push(load_whole(
            &cfg.state_dir,
            entry.worker,
            head,
            None,
            None,
            &cfg.closing,
        )?);
    }
    snapshots.sort_by_key(|s| s.worker);
    let (mut pending, mut damaged) = (Vec::new(), Vec::new());
    for e in &commit.pending {
        match read_segment(&cfg.state_dir, e) {
            Ok(rows) => pending.push((e.clone(), rows)),
            Err(err) if rebuild::rebuildable(&cfg.datasets, e).is_some() => {
                damaged.push((e.clone(), err.to_string()));
            }
            Err(err) => return Err(err),
        }
    }
    Ok(CommitState {
        snapshots,
        pending,
        damaged,
    })
}

/// Takes the state directory's lock, or says who holds it.
fn lock(state_dir: &Path, process: usize) -> Result<File, SinkError> {
    crate::durable::create_dir_all(state_dir).map_err(SinkError::io("creating", state_dir))?;
    let path = state_dir.join(format!("LOCK-p{process}"));
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(SinkError::io("opening", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(SinkError::Locked {
            state_dir: state_dir.to_owned(),
            lock: path,
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(SinkError::io("locking", &path)(e)),
    }
}

/// Plans and prepares the start of a committing run with `workers` workers
/// in all, as process `process`; sets `cfg.generation` and `cfg.fresh`.
pub async fn prepare(
    log: &ProgressLog,
    cfg: &mut ExactlyOnceConfig,
    workers: u32,
    process: usize,
) -> Result<RunStart, SinkError> {
    let lock = lock(&cfg.state_dir, process)?;
    let History {
        commits, untrusted, ..
    } = log.read_history(&cfg.job).await?;
    crate::progress::report_untrusted(&untrusted);
    let read = commits;
    let commits: Vec<CommitRecord> = read.iter().map(|(_, c)| c.clone()).collect();
    let staged = staged_epochs(&cfg.state_dir)?;
    let (plan, loaded, damage) = plan_and_load(cfg, &commits, &staged);
    let discard = match &plan {
        Plan::Fresh { discard, .. } | Plan::Resume { discard, .. } => discard.clone(),
    };
    for &e in &discard {
        discard_epoch(&cfg.state_dir, &cfg.parquet_dir, e)?;
    }
    match plan {
        Plan::Fresh { generation, .. } => {
            if commits.iter().any(|c| c.job == cfg.job) {
                return Err(SinkError::NoIntactState {
                    job: cfg.job.clone(),
                    topic: cfg.progress_topic.clone(),
                    state_dir: cfg.state_dir.clone(),
                    damage: damage.join("; "),
                });
            }
            cfg.generation = generation;
            cfg.fresh = true;
            Ok(RunStart::fresh(discard.len(), lock))
        }
        Plan::Resume {
            generation,
            from,
            finish,
            skipped,
            replay,
            ..
        } => {
            cfg.generation = generation;
            let state = match loaded {
                Some((epoch, state)) if epoch == from.epoch => state,
                _ => {
                    return Err(SinkError::Inconsistent {
                        epoch: from.epoch,
                        problem: "its state was not loaded".into(),
                    });
                }
            };
            let resumed = Resumed {
                history: valid_history(&read, &cfg.job, from.epoch),
                from: *from,
                finish,
                state,
            };
            let mut start = resume(cfg, resumed, workers, process, lock).await?;
            (start.discarded, start.skipped) = (discard.len(), skipped);
            start.replay.extend(replay);
            Ok(start)
        }
    }
}

/// The recovery plan, with the state of the commit it resumes from (checking
/// a commit means reading its state: the plan's pick is kept) and what made
/// newer commits unusable, once per distinct damage (a shared segment spoils
/// every commit the same way).
fn plan_and_load(
    cfg: &ExactlyOnceConfig,
    commits: &[CommitRecord],
    staged: &BTreeSet<Epoch>,
) -> (Plan, Option<(Epoch, CommitState)>, Vec<String>) {
    let mut loaded: Option<(Epoch, CommitState)> = None;
    let mut damage: Vec<String> = Vec::new();
    let plan = plan_recovery(&cfg.job, commits, staged, |c| match load_state(cfg, c) {
        Ok(state) => {
            loaded = Some((c.epoch, state));
            true
        }
        Err(e) => {
            tracing::warn!(epoch = c.epoch, error = %e, "commit's state not usable");
            let e = e.to_string();
            if !damage.contains(&e) {
                damage.push(e);
            }
            false
        }
    });
    (plan, loaded, damage)
}

impl RunStart {
    /// A run with no commit to resume from, after discarding `discarded` staged epochs.
    fn fresh(discarded: usize, lock: File) -> Self {
        Self {
            epoch: 0,
            state_epoch: 0,
            offsets: BTreeMap::new(),
            snapshots: Vec::new(),
            pending: Vec::new(),
            history: Vec::new(),
            discarded,
            skipped: Vec::new(),
            replay: Vec::new(),
            lock,
        }
    }
}

/// What recovery resumes from.
struct Resumed {
    from: CommitRecord,
    finish: Vec<CommitRecord>,
    state: CommitState,
    history: Vec<(CommitRecord, i64)>,
}

/// Re-shards the resumed state over `workers` and (process 0) finishes the
/// publishing of the commits that may be unfinished.
async fn resume(
    cfg: &ExactlyOnceConfig,
    r: Resumed,
    workers: u32,
    process: usize,
    lock: File,
) -> Result<RunStart, SinkError> {
    let snapshots = reshard(&r.state.snapshots, workers, &cfg.closing).map_err(|source| {
        SinkError::Snapshot {
            path: cfg.state_dir.clone(),
            source,
        }
    })?;
    if process == 0 {
        tracing::info!(
            from = r.from.epoch,
            unpublished_from = ?r.from.unpublished_from,
            finishing = ?r.finish.iter().map(|c| c.epoch).collect::<Vec<_>>(),
            "finishing the publishing of the last commits"
        );
        finish_publishing(cfg, &r.finish).await?;
    }
    // After the publishing: the rows of the last commits are on the topics then.
    let mut entries = r.state.pending;
    for (entry, problem) in &r.state.damaged {
        entries.push((entry.clone(), rebuilt(cfg, &r.from, entry, problem).await?));
    }
    let pending = regroup_pending(
        entries,
        r.from.workers,
        workers,
        &cfg.datasets,
        &cfg.closing,
    );
    // A commit between checkpoints: its state is the checkpoint's, and the
    // epochs since are cut again as they were.
    let (state_epoch, offsets, replay) = match r.from.checkpoint {
        Some(c) => (c.epoch + 1, c.source_offsets, c.cuts),
        None => (r.from.epoch + 1, r.from.source_offsets, Vec::new()),
    };
    Ok(RunStart {
        epoch: r.from.epoch + 1,
        state_epoch,
        offsets,
        snapshots,
        pending,
        history: r.history,
        discarded: 0,
        skipped: Vec::new(),
        replay,
        lock,
    })
}

/// The rows of `entry`'s damaged segment, rebuilt from its dataset's topic.
async fn rebuilt(
    cfg: &ExactlyOnceConfig,
    from: &CommitRecord,
    entry: &PendingEntry,
    problem: &str,
) -> Result<Vec<Row>, SinkError> {
    let Some((dataset, topic)) = rebuild::rebuildable(&cfg.datasets, entry) else {
        return Err(SinkError::Inconsistent {
            epoch: from.epoch,
            problem: format!("{}: no topic to rebuild it from", entry.path),
        });
    };
    let r = rebuild::Rebuild {
        bootstrap: &cfg.bootstrap,
        job: &cfg.job,
        entry,
        committed: from.epoch,
        workers: from.workers,
        rules: &cfg.closing,
    };
    let rows = rebuild::rebuild(r, dataset, topic).await?;
    tracing::warn!(
        segment = %entry.path,
        %problem,
        rows = rows.len(),
        %topic,
        "damaged pending segment rebuilt from the output topic"
    );
    Ok(rows)
}

/// Publishes every commit of `finish` again, oldest first: its staged
/// records (each partition skips what its tail shows) and its Parquet files.
/// The publishing clients block: they run on a thread of their own.
pub async fn finish_publishing(
    cfg: &ExactlyOnceConfig,
    finish: &[CommitRecord],
) -> Result<(), SinkError> {
    let (cfg, finish) = (cfg.clone(), finish.to_vec());
    tokio::task::spawn_blocking(move || {
        let mut publisher: Option<Publisher> = None;
        for commit in &finish {
            let outputs = staged_outputs(&cfg, commit)?;
            if outputs.iter().any(|o| !o.is_empty()) {
                if publisher.is_none() {
                    publisher = Some(Publisher::connect(&cfg.bootstrap, &cfg.job, false)?);
                }
                if let Some(p) = publisher.as_mut() {
                    for o in &outputs {
                        p.publish(commit.epoch, o)?;
                    }
                }
            }
            let staging = cfg.parquet_dir.join(crate::parquet::STAGING);
            publish_files(&staging, &cfg.parquet_dir, commit)?;
        }
        Ok(())
    })
    .await
    .map_err(|_| SinkError::ThreadGone("recovery publishing"))?
}

/// The staged outputs of every worker of `commit`, checked against the counts it names.
fn staged_outputs(
    cfg: &ExactlyOnceConfig,
    commit: &CommitRecord,
) -> Result<Vec<StagedOutputs>, SinkError> {
    let mut all = Vec::new();
    for w in 0..commit.workers {
        // A worker with nothing to publish in that epoch wrote no file.
        all.extend(StagedOutputs::load(&outputs_path(
            &cfg.state_dir,
            commit.epoch,
            w,
        ))?);
    }
    let staged: u64 = all
        .iter()
        .flat_map(|o| &o.parts)
        .map(|p| p.records.len() as u64)
        .sum();
    let expected: u64 = commit.publish.iter().map(|t| t.records).sum();
    if staged != expected {
        return Err(SinkError::Inconsistent {
            epoch: commit.epoch,
            problem: format!("{staged} staged records on disk, the commit names {expected}"),
        });
    }
    Ok(all)
}

/// Each worker's pending rows per dataset for `workers` workers: as they were
/// when the count is unchanged, else regrouped by key owner like the window state.
fn regroup_pending(
    entries: Vec<(PendingEntry, Vec<Row>)>,
    was: u32,
    workers: u32,
    datasets: &[Dataset],
    rules: &WindowRules,
) -> Vec<Vec<PendingRows>> {
    let mut out = vec![vec![PendingRows::default(); datasets.len()]; workers as usize];
    let slot = |dataset: &str| datasets.iter().position(|d| d.name == dataset);
    if was == workers {
        for (entry, rows) in entries {
            if let (Some(d), Some(w)) = (slot(&entry.dataset), out.get_mut(entry.worker as usize)) {
                w[d] = PendingRows::restored(entry.since, rows);
            }
        }
        return out;
    }
    for (d, dataset) in datasets.iter().enumerate() {
        let mine: Vec<&(PendingEntry, Vec<Row>)> = entries
            .iter()
            .filter(|(e, _)| e.dataset == dataset.name)
            .collect();
        let since = mine.iter().map(|(e, _)| e.since).min().unwrap_or_default();
        let mut rows: Vec<Vec<Row>> = vec![Vec::new(); workers as usize];
        let owner = |r: &Row| match rules.aggregations.get(dataset.aggregation_of(r) as usize) {
            Some(a) => a.key_owner(r.group(), workers),
            None => 0,
        };
        for r in mine.into_iter().flat_map(|(_, rows)| rows) {
            rows[owner(r) as usize].push(r.clone());
        }
        for (w, rows) in rows.into_iter().enumerate() {
            out[w][d] = PendingRows::restored(since, rows);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use iotflow_dataflow::snapshot::device_owner;

    use super::*;
    use crate::exactly_once::pending::tests::row;

    #[test]
    fn pending_rows_regroup_by_device_when_the_worker_count_changes() {
        let entry = |worker, since| PendingEntry {
            dataset: "aggregates".into(),
            worker,
            since,
            rows: 1,
            path: String::new(),
            bytes: 0,
        };
        let datasets = [crate::parquet::tests::aggregates()];
        let rules = WindowRules {
            aggregations: vec![iotflow_dataflow::Aggregation::per_device(
                "aggregates",
                iotflow_dataflow::WindowSpec::tumbling(10_000).unwrap(),
                iotflow_dataflow::EmitMode::Final,
            )]
            .into(),
            lateness_ms: 0,
        };
        let entries = vec![
            (entry(0, 4), vec![row("a"), row("b")]),
            (entry(1, 6), vec![row("c")]),
        ];
        let same = regroup_pending(entries.clone(), 2, 2, &datasets, &rules);
        assert_eq!(same[1][0], PendingRows::restored(6, vec![row("c")]));
        let three = regroup_pending(entries, 2, 3, &datasets, &rules);
        let mut all = Vec::new();
        for (w, per_dataset) in three.iter().enumerate() {
            let mut p = per_dataset[0].clone();
            let rows = p
                .take(Path::new("/nonexistent"), "aggregates", w as u32)
                .unwrap();
            for r in &rows {
                let device = r.group().split('|').next().unwrap_or_default();
                assert_eq!(device_owner(device, 3), w as u32);
            }
            all.extend(rows);
        }
        all.sort_by(|a, b| a.group().cmp(b.group()));
        assert_eq!(all, vec![row("a"), row("b"), row("c")]);
    }
}
