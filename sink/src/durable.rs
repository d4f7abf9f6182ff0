//! Durable names. A file's fsync makes its bytes durable, not the name it is
//! found by: that is an entry in its directory, made durable by the
//! directory's fsync. A directory created for the file is itself an entry
//! in its parent, so each directory a write creates needs its parent synced
//! too. Otherwise a power loss can take a whole epoch directory, with the
//! files a commit record on the broker names, even though every file in it
//! was synced. (A SIGKILL loses nothing either way: the page cache survives
//! the process.)

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// Syncs directory `dir`: the names of the files and directories in it.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and its missing ancestors durably: each directory created
/// is synced in its parent. Says which it created, shallowest first.
/// Concurrent callers may both create (and sync) a directory; a caller that
/// finds it made is not told: whoever made it syncs it before they go on.
pub fn create_dir_all(dir: &Path) -> io::Result<Vec<PathBuf>> {
    create_dir_all_syncing(dir, sync_dir)
}

/// [`create_dir_all`], syncing each new directory's parent with `sync`.
fn create_dir_all_syncing(
    dir: &Path,
    mut sync: impl FnMut(&Path) -> io::Result<()>,
) -> io::Result<Vec<PathBuf>> {
    let mut missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.is_dir())
        .map(Path::to_path_buf)
        .collect();
    missing.reverse();
    fs::create_dir_all(dir)?;
    for created in &missing {
        sync(parent_of(created))?;
    }
    Ok(missing)
}

/// `path` whole or not at all: what `write` writes goes to `tmp`, is
/// fsynced and renamed over `path`, in a directory created durably. The
/// name is durable once the caller syncs `path`'s directory ([`sync_dir`]).
/// Writers that may race for one `path` each need a `tmp` of their own.
pub fn write_replacing(
    path: &Path,
    tmp: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    create_dir_all(parent_of(path))?;
    let mut f = File::create(tmp)?;
    write(&mut f)?;
    f.sync_all()?;
    fs::rename(tmp, path)
}

/// The directory holding `path`'s entry (`.` for a bare relative name).
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_directory_created_has_its_parent_synced_and_existing_ones_do_not() {
        let tmp = tempfile::tempdir().unwrap();
        let mut synced: Vec<PathBuf> = Vec::new();
        let mut create = |dir: &Path| {
            create_dir_all_syncing(dir, |d| {
                synced.push(d.to_path_buf());
                sync_dir(d)
            })
            .unwrap()
        };
        let at = |p: &str| tmp.path().join(p);
        assert_eq!(create(&at("a/b/c")), [at("a"), at("a/b"), at("a/b/c")]);
        assert!(at("a/b/c").is_dir());
        assert_eq!(create(&at("a/b/d")), [at("a/b/d")]);
        assert_eq!(create(&at("a/b/d")), Vec::<PathBuf>::new());
        assert_eq!(
            synced,
            [tmp.path().to_path_buf(), at("a"), at("a/b"), at("a/b")]
        );
    }

    #[test]
    fn a_relative_path_s_first_directory_syncs_the_working_directory() {
        assert_eq!(parent_of(Path::new("state")), Path::new("."));
        assert_eq!(parent_of(Path::new("state/epochs")), Path::new("state"));
        assert_eq!(parent_of(Path::new("/")), Path::new("."));
    }

    #[test]
    fn a_file_in_the_way_is_an_error_not_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, b"x").unwrap();
        assert!(create_dir_all(&file.join("d")).is_err());
    }
}
