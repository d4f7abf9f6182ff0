//! Finding or installing the tansu broker binary.
//!
//! ```text
//!   $IOTFLOW_TANSU_BIN ──set?──▶ use it
//!   <cache>/tools/bin/tansu ──exists?──▶ use it
//!   otherwise: lock <cache>/tools/install.lock, `cargo install tansu --locked`, unlock
//! ```
//!
//! The cache lives outside the checkout (`$IOTFLOW_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/iotflow`, else `~/.cache/iotflow`) because a cold build of
//! tansu takes ~25 minutes on two cores and must survive fresh clones.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// The tansu release line we test against (memory + SQLite storage).
pub const TANSU_VERSION: &str = "~0.6";
/// dynostore = `memory://` storage, libsql = `sqlite://` storage.
pub const TANSU_FEATURES: &str = "dynostore,libsql";

/// The directory holding cached tools and their build logs.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("IOTFLOW_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("iotflow");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache").join("iotflow"),
        None => PathBuf::from(".cache").join("iotflow"),
    }
}

/// Where `ensure_tansu` installs the binary under `cache`.
pub fn cached_tansu(cache: &Path) -> PathBuf {
    cache.join("tools").join("bin").join("tansu")
}

/// The tansu binary to use, if one is present already.
pub fn find_tansu() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("IOTFLOW_TANSU_BIN").filter(|b| !b.is_empty()) {
        return Some(PathBuf::from(bin));
    }
    let cached = cached_tansu(&cache_dir());
    cached.is_file().then_some(cached)
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { what, path, source }
}

/// Returns the tansu binary, installing it with `cargo install --locked` first
/// if needed. Blocking (minutes on a cold cache); `announce` is told before a
/// build starts. Concurrent callers wait on a file lock and share one build.
pub fn ensure_tansu(announce: impl FnOnce(&Path)) -> Result<PathBuf> {
    if let Some(bin) = find_tansu() {
        return Ok(bin);
    }
    let cache = cache_dir();
    let root = cache.join("tools");
    let logs = cache.join("logs");
    fs::create_dir_all(&root).map_err(io("create tool cache", &root))?;
    fs::create_dir_all(&logs).map_err(io("create log dir", &logs))?;
    let lock_path = root.join("install.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io("open install lock", &lock_path))?;
    lock.lock().map_err(io("lock install lock", &lock_path))?;
    let bin = cached_tansu(&cache);
    if bin.is_file() {
        return Ok(bin); // another process finished the build while we waited
    }
    let log = logs.join("tansu-install.log");
    announce(&log);
    let log_file = File::create(&log).map_err(io("create install log", &log))?;
    let log_err = log_file
        .try_clone()
        .map_err(io("create install log", &log))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .args(["install", "tansu", "--version", TANSU_VERSION, "--locked"])
        .args(["--features", TANSU_FEATURES, "--root"])
        .arg(&root)
        .env("CARGO_TARGET_DIR", cache.join("tansu-build"))
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .status()
        .map_err(io("run cargo install", Path::new(&cargo)))?;
    if !status.success() || !bin.is_file() {
        return Err(Error::InstallFailed {
            root,
            status: status.to_string(),
            log,
        });
    }
    // The build directory is ~2 GB of intermediates nobody reuses.
    let _ = fs::remove_dir_all(cache.join("tansu-build"));
    Ok(bin)
}
