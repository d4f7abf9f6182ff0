//! The state directory's layout, durable writes, and what garbage collection
//! removes.
//!
//! ```text
//!   <state>/epochs/<e>/w<w>.out    staged outputs of epoch e (StagedOutputs)
//!   <state>/epochs/<e>/w<w>.snap   snapshot of epoch e (whole, or a delta linked to e−1's)
//!   <state>/parquet-pending/<dataset>/w<w>-e<first>.rows   final rows waiting for a roll
//!   <parquet>/.staging/e<e>-w<w>-<dataset>-<date>.parquet  rolled, not yet committed
//!   <state>/LOCK-p<process>        one live instance per process index
//! ```

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use iotflow_dataflow::job::Epoch;

use crate::committer::Collect;
use crate::durable;
use crate::error::SinkError;
use crate::failpoint::{self, Site};
use crate::parquet;

use super::pending::{PENDING, segment_epoch};

/// Epoch directories under the state directory.
pub const EPOCHS: &str = "epochs";

pub fn epoch_dir(state_dir: &Path, epoch: Epoch) -> PathBuf {
    state_dir.join(EPOCHS).join(format!("{epoch:012}"))
}

/// Where worker `worker`'s staged outputs of `epoch` live.
pub fn outputs_path(state_dir: &Path, epoch: Epoch, worker: u32) -> PathBuf {
    epoch_dir(state_dir, epoch).join(format!("w{worker:04}.out"))
}

/// Where worker `worker`'s snapshot of `epoch` lives, relative to the state directory.
pub fn snapshot_path(epoch: Epoch, worker: u32) -> String {
    format!("{EPOCHS}/{epoch:012}/w{worker:04}.snap")
}

/// The epoch in a snapshot path (`epochs/<epoch>/w<worker>.snap`).
pub fn snapshot_epoch(path: &str) -> Option<Epoch> {
    path.split('/').nth(1)?.parse().ok()
}

/// Epochs with a directory under `<state>/epochs`.
pub fn staged_epochs(state_dir: &Path) -> Result<BTreeSet<Epoch>, SinkError> {
    let dir = state_dir.join(EPOCHS);
    let mut out = BTreeSet::new();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(SinkError::io("listing", &dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(SinkError::io("listing", &dir))?;
        if let Some(e) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            out.insert(e);
        }
    }
    Ok(out)
}

/// Removes what an epoch staged: its directory and its Parquet staging files.
pub fn discard_epoch(state_dir: &Path, parquet_dir: &Path, epoch: Epoch) -> Result<(), SinkError> {
    let dir = epoch_dir(state_dir, epoch);
    match fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(SinkError::io("removing", dir)(e));
        }
        _ => {}
    }
    let staging = parquet_dir.join(parquet::STAGING);
    let prefix = format!("e{epoch:012}-");
    if let Ok(entries) = fs::read_dir(&staging) {
        for entry in entries {
            let entry = entry.map_err(SinkError::io("listing", &staging))?;
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                fs::remove_file(entry.path()).map_err(SinkError::io("removing", entry.path()))?;
            }
        }
    }
    Ok(())
}

/// Removes an epoch's staged outputs (published), keeping its snapshots;
/// the directory goes once nothing is left in it (between checkpoints).
fn discard_outputs(state_dir: &Path, epoch: Epoch) -> Result<(), SinkError> {
    let dir = epoch_dir(state_dir, epoch);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(());
    };
    let mut left = 0;
    for entry in entries {
        let entry = entry.map_err(SinkError::io("listing", &dir))?;
        if entry.file_name().to_string_lossy().ends_with(".out") {
            fs::remove_file(entry.path()).map_err(SinkError::io("removing", entry.path()))?;
        } else {
            left += 1;
        }
    }
    if left == 0 {
        match fs::remove_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(SinkError::io("removing", dir)(e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary name, fsynced, in a
/// directory created durably, passing `halfway` once half of the bytes are
/// written. The name is durable once the caller syncs the directory
/// ([`durable::sync_dir`]): once for all the files of an epoch.
pub fn write_synced(path: &Path, bytes: &[u8], halfway: Option<Site>) -> Result<(), SinkError> {
    write_synced_with(path, |f| {
        let (first, rest) = bytes.split_at(bytes.len() / 2);
        f.write_all(first)?;
        if let Some(site) = halfway {
            f.flush()?;
            failpoint::hit(site);
        }
        f.write_all(rest)
    })
}

/// [`write_synced`] of what `write` writes to the file.
pub fn write_synced_with(
    path: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<(), SinkError> {
    durable::write_replacing(path, &path.with_extension("tmp"), write)
        .map_err(SinkError::io("writing", path))
}

/// Removes what `collect` allows: staged epochs below its bound, and pending
/// segments up to its epoch that no kept commit names.
pub fn collect(state_dir: &Path, parquet_dir: &Path, collect: &Collect) -> Result<(), SinkError> {
    let staged = staged_epochs(state_dir)?;
    for e in staged.range(..collect.epochs_below) {
        failpoint::hit(Site::Collect);
        discard_epoch(state_dir, parquet_dir, *e)?;
    }
    for e in staged.range(collect.epochs_below..collect.outputs_below.max(collect.epochs_below)) {
        discard_outputs(state_dir, *e)?;
    }
    let root = state_dir.join(PENDING);
    let Ok(datasets) = fs::read_dir(&root) else {
        return Ok(());
    };
    for dataset in datasets {
        let dataset = dataset.map_err(SinkError::io("listing", &root))?;
        let dir = dataset.path();
        let Ok(segments) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in segments {
            let entry = entry.map_err(SinkError::io("listing", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = format!("{PENDING}/{}/{name}", dataset.file_name().to_string_lossy());
            if segment_epoch(&name).is_some_and(|e| e <= collect.segments_upto)
                && !collect.segments_kept.contains(&rel)
            {
                fs::remove_file(entry.path()).map_err(SinkError::io("removing", entry.path()))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_removes_only_what_no_kept_commit_needs() {
        let dir = tempfile::tempdir().unwrap();
        let (state, parquet_dir) = (dir.path().join("state"), dir.path().join("parquet"));
        for e in [3, 4, 5, 6] {
            write_synced(&outputs_path(&state, e, 0), b"x", None).unwrap();
            write_synced(
                &parquet_dir
                    .join(parquet::STAGING)
                    .join(format!("e{e:012}-w0000-aggregates-2026-01-01.parquet")),
                b"p",
                None,
            )
            .unwrap();
        }
        let segment = |e: u64| format!("{PENDING}/aggregates/w0000-e{e:012}.rows");
        for e in [2, 4, 6] {
            write_synced(&state.join(segment(e)), b"s", None).unwrap();
        }
        collect(
            &state,
            &parquet_dir,
            &Collect {
                epochs_below: 5,
                outputs_below: 5,
                segments_upto: 5,
                segments_kept: BTreeSet::from([segment(4)]),
            },
        )
        .unwrap();
        assert_eq!(staged_epochs(&state).unwrap(), BTreeSet::from([5, 6]));
        let staged: Vec<String> = fs::read_dir(parquet_dir.join(parquet::STAGING))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy()[..13].to_owned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(staged, ["e000000000005", "e000000000006"]);
        assert!(!state.join(segment(2)).exists(), "old and unnamed");
        assert!(state.join(segment(4)).exists(), "named by a kept commit");
        assert!(
            state.join(segment(6)).exists(),
            "newer than the newest commit"
        );
    }

    #[test]
    fn published_outputs_go_and_a_kept_checkpoint_s_snapshot_stays() {
        let dir = tempfile::tempdir().unwrap();
        let (state, parquet_dir) = (dir.path().join("state"), dir.path().join("parquet"));
        for e in [4, 5, 6, 7] {
            write_synced(&outputs_path(&state, e, 0), b"x", None).unwrap();
        }
        write_synced(&state.join(snapshot_path(4, 0)), b"s", None).unwrap();
        let collect_ = Collect {
            epochs_below: 4,
            outputs_below: 7,
            segments_upto: 3,
            segments_kept: BTreeSet::new(),
        };
        collect(&state, &parquet_dir, &collect_).unwrap();
        assert_eq!(staged_epochs(&state).unwrap(), BTreeSet::from([4, 7]));
        assert!(state.join(snapshot_path(4, 0)).exists(), "the checkpoint");
        assert!(!outputs_path(&state, 4, 0).exists(), "published");
        assert!(outputs_path(&state, 7, 0).exists(), "not yet published");
    }

    #[test]
    fn snapshot_paths_carry_their_epoch() {
        assert_eq!(snapshot_epoch(&snapshot_path(42, 3)), Some(42));
        assert_eq!(snapshot_epoch("nonsense"), None);
    }
}
