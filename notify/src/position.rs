//! The notifier's position, in a file of its own: written after every
//! delivery (temporary file, fsync, rename, fsync of the directory), so a
//! restart resumes with the first alert not yet delivered and a crash
//! re-sends at most the one in flight — with the same idempotency key.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::NotifyError;

fn io(path: &Path) -> impl Fn(std::io::Error) -> NotifyError + '_ {
    move |source| NotifyError::PositionIo {
        path: path.to_owned(),
        source,
    }
}

/// The saved position; `None` when there is none yet. A file that is not a
/// position is an error, never a silent fresh start (that would skip or
/// repeat alerts).
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, NotifyError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| NotifyError::PositionFormat {
            path: path.to_owned(),
            source,
        })
}

/// Replaces the saved position with `position`, durably.
pub fn save<T: Serialize>(path: &Path, position: &T) -> Result<(), NotifyError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let bytes =
        serde_json::to_vec_pretty(position).map_err(|source| NotifyError::PositionFormat {
            path: path.to_owned(),
            source,
        })?;
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(&bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io(&dir))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_position_survives_a_save_and_a_load_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("notify.position");
        assert_eq!(load::<Vec<u64>>(&path).unwrap(), None);
        save(&path, &vec![3u64, 4]).unwrap();
        save(&path, &vec![5u64]).unwrap();
        assert_eq!(load::<Vec<u64>>(&path).unwrap(), Some(vec![5]));
        std::fs::write(&path, b"{truncated").unwrap();
        let err = load::<Vec<u64>>(&path).unwrap_err().to_string();
        assert!(err.contains("remove it to start afresh"), "{err}");
    }
}
