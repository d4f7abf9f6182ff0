//! One worker's staging of one epoch: everything the commit will name,
//! written durably before the worker says it staged. Runs on the worker's
//! stage thread, epochs in order.
//!
//! ```text
//!   StageJob(e) ─▶ outputs ─▶ <state>/epochs/e/w.out (StagedOutputs, fsync)
//!               ─▶ final rows per dataset ─▶ pending segment (fsync); roll due? ─▶ .staging/*.parquet
//!               ─▶ snapshot, less what its watermark closed: delta linked to e−1, or
//!                  whole (first of a run, folded, or nothing before it still open)
//!                  ─▶ <state>/epochs/e/w.snap (fsync; mid-snapshot failpoint halfway)
//!               ─▶ Staged { publish targets, files, snapshot, pending, source offsets }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use iotflow_dataflow::job::Epoch;
use iotflow_dataflow::snapshot::{Capture, CapturePlan, Link, WorkerSnapshot};

use crate::error::SinkError;
use crate::failpoint::{self, Site};
use crate::parquet;
use crate::protocol::{PublishTarget, SnapshotEntry, Staged};
use crate::shape::Row;

use super::ExactlyOnceConfig;
use super::chain::{Chain, load_whole};
use super::outgoing::{Outgoing, StagedOutputs};
use super::pending::PendingRows;
use super::state_dir::{epoch_dir, outputs_path, snapshot_path, write_synced};
use crate::durable;

/// What a worker hands its stage thread for one epoch.
#[derive(Debug)]
pub struct StageJob {
    pub epoch: Epoch,
    pub records: Vec<Outgoing>,
    /// Final rows of each dataset (in the config's order).
    pub finals: Vec<Vec<Row>>,
    pub snapshot: WorkerSnapshot,
    /// The input ended: nothing follows, roll whatever is pending.
    pub last: bool,
}

/// What staging wrote: for the committer, and the records for the publisher.
#[derive(Debug)]
pub struct StagedEpoch {
    pub epoch: Epoch,
    pub staged: Staged,
    pub outputs: StagedOutputs,
}

/// A worker's staging state across epochs.
#[derive(Debug)]
pub struct Stager {
    cfg: Arc<ExactlyOnceConfig>,
    plan: CapturePlan,
    worker: u32,
    chain: Chain,
    /// Per dataset, in the config's order.
    pending: Vec<PendingRows>,
}

impl Stager {
    /// `restored`: each dataset's pending rows from recovery (missing ones are empty).
    pub fn new(
        cfg: Arc<ExactlyOnceConfig>,
        plan: CapturePlan,
        worker: u32,
        mut restored: Vec<PendingRows>,
    ) -> Self {
        restored.resize_with(cfg.datasets.len(), PendingRows::default);
        Self {
            cfg,
            plan,
            worker,
            chain: Chain::default(),
            pending: restored,
        }
    }

    /// Writes epoch `job.epoch` durably and says what it wrote.
    pub fn stage(&mut self, job: StageJob) -> Result<StagedEpoch, SinkError> {
        let StageJob {
            epoch,
            records,
            finals,
            snapshot,
            last,
        } = job;
        let mut staged = Staged::default();
        for r in &snapshot.reports {
            staged.source_offsets.insert(r.partition, r.next_offset);
            staged.source_states.insert(r.partition, r.state);
        }
        let outputs = StagedOutputs::of(records, &self.cfg.outputs)?;
        let mut wrote = false;
        if !outputs.is_empty() {
            outputs.store(&outputs_path(&self.cfg.state_dir, epoch, self.worker))?;
            staged.publish = publish_targets(&outputs);
            wrote = true;
        }
        self.stage_rows(epoch, finals, last, &mut staged)?;
        // Between checkpoints no snapshot: the commit names the last one's.
        if self.plan.at(epoch) != Capture::Nothing {
            staged.snapshot = Some(self.stage_snapshot(epoch, snapshot)?);
            wrote = true;
        }
        if wrote {
            // One sync for the epoch directory's outputs and snapshot names.
            let dir = epoch_dir(&self.cfg.state_dir, epoch);
            durable::sync_dir(&dir).map_err(SinkError::io("syncing", &dir))?;
        }
        failpoint::hit(Site::AfterStage);
        Ok(StagedEpoch {
            epoch,
            staged,
            outputs,
        })
    }

    /// Appends each dataset's final rows to its segment, rolling what is due.
    fn stage_rows(
        &mut self,
        epoch: Epoch,
        finals: Vec<Vec<Row>>,
        last: bool,
        staged: &mut Staged,
    ) -> Result<(), SinkError> {
        let cfg = Arc::clone(&self.cfg);
        let mut finals = finals.into_iter();
        for (dataset, pending) in cfg.datasets.iter().zip(&mut self.pending) {
            let rows: Vec<Row> = finals
                .next()
                .unwrap_or_default()
                .into_iter()
                .filter(Row::is_final)
                .collect();
            pending.append(&cfg.state_dir, &dataset.name, self.worker, epoch, &rows)?;
            if cfg.roll.due(pending, epoch, last) {
                let since = pending.since.unwrap_or(epoch);
                let rows = pending.take(&cfg.state_dir, &dataset.name, self.worker)?;
                let staging = cfg.parquet_dir.join(parquet::STAGING);
                staged.files.extend(parquet::stage_rows(
                    &staging,
                    dataset,
                    epoch,
                    since,
                    self.worker,
                    &rows,
                )?);
            }
            staged
                .pending
                .extend(pending.entry(&dataset.name, self.worker));
        }
        staged.files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(())
    }

    /// Writes the epoch's snapshot: a delta linked to the previous epoch's,
    /// or whole (the first of a run, the chain folded, or a delta whose
    /// watermark closed everything before it).
    fn stage_snapshot(
        &mut self,
        epoch: Epoch,
        mut snapshot: WorkerSnapshot,
    ) -> Result<SnapshotEntry, SinkError> {
        let worker = self.worker;
        let rel = snapshot_path(epoch, worker);
        let path = self.cfg.state_dir.join(&rel);
        snapshot.drop_closed(&self.cfg.closing);
        if snapshot.previous.is_some() {
            snapshot = self.link_or_whole(epoch, snapshot)?;
        }
        let bytes = snapshot.encode().map_err(|source| SinkError::Snapshot {
            path: path.clone(),
            source,
        })?;
        let link = Link {
            epoch,
            bytes: bytes.len() as u64,
            checksum: crc32fast::hash(&bytes),
        };
        write_synced(&path, &bytes, Some(Site::MidSnapshot))?;
        let final_at = snapshot.final_at(&self.cfg.closing);
        tracing::debug!(
            epoch,
            worker,
            bytes = link.bytes,
            whole = snapshot.previous.is_none(),
            watermark = snapshot.watermark,
            final_at,
            "snapshot staged"
        );
        let base = self
            .chain
            .wrote(link, snapshot.previous.is_none(), final_at);
        Ok(SnapshotEntry {
            worker,
            path: rel,
            bytes: link.bytes,
            checksum: link.checksum,
            base,
        })
    }

    /// A delta (less what its watermark closed) linked to the epoch before;
    /// the whole state when its watermark closed everything before it, or
    /// folded with the chain's links still open once the deltas outweigh
    /// the last whole snapshot.
    fn link_or_whole(
        &self,
        epoch: Epoch,
        mut snapshot: WorkerSnapshot,
    ) -> Result<WorkerSnapshot, SinkError> {
        let worker = self.worker;
        let Some(last) = self.chain.last().filter(|l| l.epoch + 1 == epoch) else {
            return Err(SinkError::Inconsistent {
                epoch,
                problem: format!("worker {worker}: no snapshot of the epoch before to chain to"),
            });
        };
        match self.chain.oldest_open(snapshot.watermark) {
            None => {
                // Nothing before it is still open (a backlog read in epochs
                // longer than its windows): alone, it is the whole state.
                // Every reader puts a chain together with `materialize`, so
                // it is written as it is, not put in canonical form first.
                snapshot.previous = None;
            }
            Some(from) => {
                snapshot.previous = Some(last);
                if self.chain.should_fold(self.cfg.fold_bytes) {
                    snapshot = load_whole(
                        &self.cfg.state_dir,
                        worker,
                        last,
                        Some(from.epoch),
                        Some(snapshot),
                        &self.cfg.closing,
                    )?;
                }
            }
        }
        Ok(snapshot)
    }
}

/// Per partition: how many records, and a CRC-32 of their values in publish order.
fn publish_targets(outputs: &StagedOutputs) -> Vec<PublishTarget> {
    let mut by_partition: BTreeMap<(&str, i32), (u64, crc32fast::Hasher)> = BTreeMap::new();
    for part in &outputs.parts {
        let (n, h) = by_partition
            .entry((part.topic.as_str(), part.partition))
            .or_default();
        for r in &part.records {
            *n += 1;
            h.update(&r.value);
        }
    }
    by_partition
        .into_iter()
        .map(|((topic, partition), (records, h))| PublishTarget {
            topic: topic.to_owned(),
            partition,
            records,
            checksum: h.finalize(),
        })
        .collect()
}
