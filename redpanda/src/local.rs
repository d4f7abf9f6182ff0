//! The embedded local broker: tansu as a child process on a loopback port.
//!
//! ```text
//!   LocalBroker::builder().storage(..).start()
//!     ensure_tansu ──▶ spawn `tansu broker` (stdout/stderr → log file)
//!       ──▶ poll Metadata until it answers (or the child dies: show the log tail)
//!   drop / stop ──▶ SIGTERM, wait, SIGKILL if it hangs
//! ```
//!
//! Two lifetimes: an owned [`LocalBroker`] dies with its owner (tests, `iotflow
//! broker`, `iotflow demo`); a *detached* broker started by [`start_detached`]
//! outlives the command that started it so that `produce` and `run` can share it,
//! and is found again through its state file (`<home>/broker/local-broker.json`).

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use rskafka::BackoffConfig;
use rskafka::client::ClientBuilder;
use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::install;

mod port;
pub use port::free_port;

/// Where the local broker keeps its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Storage {
    /// In memory: fastest, gone when the broker stops.
    Memory,
    /// A SQLite file: survives broker restarts, ~30× slower to produce.
    Sqlite(PathBuf),
}

impl FromStr for Storage {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "memory" => Ok(Storage::Memory),
            _ => match s.strip_prefix("sqlite:") {
                Some(path) if !path.is_empty() => Ok(Storage::Sqlite(PathBuf::from(path))),
                _ => Err(format!(
                    "storage must be `memory` or `sqlite:PATH`, not `{s}`"
                )),
            },
        }
    }
}

impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Storage::Memory => f.write_str("memory"),
            Storage::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
        }
    }
}

/// Builder for a [`LocalBroker`].
#[derive(Debug, Clone)]
pub struct LocalBrokerBuilder {
    port: Option<u16>,
    storage: Storage,
    log_path: Option<PathBuf>,
    tansu: Option<PathBuf>,
    ready_timeout: Duration,
    advertise: Option<String>,
}

impl Default for LocalBrokerBuilder {
    fn default() -> Self {
        Self {
            port: None,
            storage: Storage::Memory,
            log_path: None,
            tansu: None,
            ready_timeout: Duration::from_secs(30),
            advertise: None,
        }
    }
}

impl LocalBrokerBuilder {
    /// Port on 127.0.0.1 (default: a free one).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }
    /// Storage (default: memory).
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }
    /// Log file of the broker process (default: a file in the temp dir, kept).
    pub fn log_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.log_path = Some(path.into());
        self
    }
    /// tansu binary (default: [`install::ensure_tansu`]).
    pub fn tansu(mut self, bin: impl Into<PathBuf>) -> Self {
        self.tansu = Some(bin.into());
        self
    }
    /// The `host:port` the broker tells clients to connect to (default: its
    /// own): a proxy or TLS terminator in front of it, which clients must
    /// not go around after their first Metadata answer. Readiness is then
    /// judged through that address, so it must already be listening.
    pub fn advertise(mut self, addr: impl Into<String>) -> Self {
        self.advertise = Some(addr.into());
        self
    }
    /// How long to wait for the broker to answer Metadata (default 30 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Starts the broker and waits until it answers Metadata.
    pub async fn start(self) -> Result<LocalBroker> {
        let tansu = match self.tansu.clone() {
            Some(bin) => bin,
            None => tansu_binary().await?,
        };
        // A free port can be taken between our probe and tansu's bind; retry then.
        let attempts = if self.port.is_some() { 1 } else { 3 };
        let mut last = None;
        for _ in 0..attempts {
            let port = match self.port {
                Some(p) => p,
                None => free_port()?,
            };
            let addr = format!("127.0.0.1:{port}");
            let log_path = self
                .log_path
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join(format!("iotflow-tansu-{port}.log")));
            let advertised = self.advertise.clone().unwrap_or_else(|| addr.clone());
            let child = spawn_tansu(&tansu, port, &advertised, &self.storage, &log_path, false)?;
            let mut broker = LocalBroker {
                child: Some(child),
                addr,
                log_path,
                storage: self.storage.clone(),
            };
            match wait_ready(&advertised, Some(&mut broker), self.ready_timeout).await {
                Ok(()) => {
                    tracing::info!(addr = %broker.addr, storage = %broker.storage, log = %broker.log_path.display(), "local broker ready");
                    return Ok(broker);
                }
                Err(e @ Error::BrokerExited { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::NotReady {
            addr: String::new(),
            waited: self.ready_timeout,
            last_error: "no attempt made".into(),
            log: PathBuf::new(),
        }))
    }
}

/// The tansu binary, installed first if needed (off the async threads: a cold
/// install is a ~25-minute build).
async fn tansu_binary() -> Result<PathBuf> {
    tokio::task::spawn_blocking(|| {
        install::ensure_tansu(|log| {
            tracing::warn!(log = %log.display(), "installing the tansu broker (one-time, ~25 min on 2 cores)");
        })
    })
    .await
    .map_err(|e| Error::Io {
        what: "join installer",
        path: PathBuf::new(),
        source: std::io::Error::other(e),
    })?
}

/// A tansu broker owned by this process; stopped when dropped.
pub struct LocalBroker {
    child: Option<Child>,
    addr: String,
    log_path: PathBuf,
    storage: Storage,
}

impl fmt::Debug for LocalBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalBroker")
            .field("addr", &self.addr)
            .field("pid", &self.child.as_ref().map(Child::id))
            .field("storage", &self.storage)
            .field("log", &self.log_path)
            .finish()
    }
}

impl LocalBroker {
    /// A builder with documented defaults.
    pub fn builder() -> LocalBrokerBuilder {
        LocalBrokerBuilder::default()
    }

    /// `127.0.0.1:PORT`, for `--brokers`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The bootstrap list for rskafka.
    pub fn bootstrap(&self) -> Vec<String> {
        vec![self.addr.clone()]
    }

    /// The broker's log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the broker with SIGKILL, as a crash would (for failure tests).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, grace);
        }
    }

    fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

fn terminate(child: &mut Child, grace: Duration) {
    let _ = rustix::process::kill_process(Pid::from_child(child), Signal::TERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Env vars tansu reads as flag fallbacks; a user's shell must not change our broker.
const TANSU_ENV: &[&str] = &[
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "DATA_LAKE",
];

fn spawn_tansu(
    tansu: &Path,
    port: u16,
    advertised: &str,
    storage: &Storage,
    log_path: &Path,
    detach: bool,
) -> Result<Child> {
    if let Some(dir) = log_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|source| Error::Io {
            what: "create broker log dir",
            path: dir.to_owned(),
            source,
        })?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|source| Error::Io {
            what: "open broker log",
            path: log_path.to_owned(),
            source,
        })?;
    let log_err = log.try_clone().map_err(|source| Error::Io {
        what: "open broker log",
        path: log_path.to_owned(),
        source,
    })?;
    let url = format!("tcp://127.0.0.1:{port}");
    let mut cmd = Command::new(tansu);
    cmd.arg("broker")
        .args(["--cluster-id", "iotflow"])
        .args(["--listener-url", &url])
        .args(["--advertised-listener-url", &format!("tcp://{advertised}")]);
    for var in TANSU_ENV {
        cmd.env_remove(var);
    }
    cmd.env(
        "RUST_LOG",
        std::env::var("IOTFLOW_BROKER_LOG").unwrap_or_else(|_| "warn".into()),
    );
    match storage {
        Storage::Memory => {
            cmd.args(["--storage-engine", "memory://tansu/"]);
        }
        Storage::Sqlite(path) => {
            // tansu resolves sqlite URLs against its working directory.
            let (dir, file) = sqlite_location(path)?;
            fs::create_dir_all(&dir).map_err(|source| Error::Io {
                what: "create SQLite dir",
                path: dir.clone(),
                source,
            })?;
            cmd.current_dir(dir)
                .args(["--storage-engine", &format!("sqlite:///{file}")]);
        }
    }
    if detach {
        // Its own process group: Ctrl-C in the starting terminal must not reach it.
        cmd.process_group(0);
    }
    cmd.stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|source| Error::Io {
            what: "start tansu",
            path: tansu.to_owned(),
            source,
        })
}

fn sqlite_location(path: &Path) -> Result<(PathBuf, String)> {
    let abs = std::path::absolute(path).map_err(|source| Error::Io {
        what: "resolve SQLite path",
        path: path.to_owned(),
        source,
    })?;
    let file = abs
        .file_name()
        .and_then(|f| f.to_str())
        .filter(|f| {
            f.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        })
        .ok_or_else(|| Error::Io {
            what: "SQLite file name must be plain ASCII letters, digits, '.', '_' or '-'",
            path: path.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?
        .to_owned();
    let dir = abs
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("/"));
    Ok((dir, file))
}

/// Polls Metadata on `addr` until it answers; fails early if `broker` exits.
async fn wait_ready(
    addr: &str,
    mut broker: Option<&mut LocalBroker>,
    timeout: Duration,
) -> Result<()> {
    let started = Instant::now();
    let mut last_error = String::from("not tried");
    while started.elapsed() < timeout {
        if let Some(b) = broker.as_deref_mut()
            && let Some(status) = b.exited()
        {
            return Err(Error::BrokerExited {
                status,
                log: b.log_path.clone(),
                tail: log_tail(&b.log_path, 2000),
            });
        }
        match answers_metadata(addr).await {
            Ok(()) => return Ok(()),
            Err(e) => last_error = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::NotReady {
        addr: addr.to_owned(),
        waited: timeout,
        last_error,
        log: broker.map(|b| b.log_path.clone()).unwrap_or_default(),
    })
}

/// Whether a Kafka broker at `addr` answers a Metadata request now.
pub async fn answers_metadata(addr: &str) -> std::result::Result<(), String> {
    let probe = async {
        let client = ClientBuilder::new(vec![addr.to_owned()])
            .backoff_config(BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(200),
                base: 2.0,
                deadline: Some(Duration::from_secs(1)),
            })
            .build()
            .await
            .map_err(|e| e.to_string())?;
        client
            .list_topics()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .map_err(|_| "metadata timed out".to_owned())?
}

/// The last `max` bytes of a log file, for error messages.
pub fn log_tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// What a detached broker's state file records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetachedBroker {
    pub pid: u32,
    pub addr: String,
    pub storage: Storage,
    pub log: PathBuf,
}

fn state_path(home: &Path) -> PathBuf {
    home.join("broker").join("local-broker.json")
}

/// The detached broker recorded under `home`, if it is alive and answers.
pub async fn find_detached(home: &Path) -> Result<Option<DetachedBroker>> {
    let path = state_path(home);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                what: "read broker state",
                path,
                source,
            });
        }
    };
    let state: DetachedBroker = serde_json::from_str(&text).map_err(|e| Error::StateFile {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    if is_our_tansu(state.pid) && answers_metadata(&state.addr).await.is_ok() {
        Ok(Some(state))
    } else {
        Ok(None)
    }
}

/// Whether `pid` is alive and is a tansu process (so we never signal a
/// process that merely reused a recorded pid).
fn is_our_tansu(pid: u32) -> bool {
    let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    if rustix::process::test_kill_process(p).is_err() {
        return false;
    }
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("tansu"))
        .unwrap_or(false)
}

/// Starts a broker that outlives this process and records it under `home`.
/// Returns the running one instead if there already is one.
pub async fn start_detached(
    home: &Path,
    storage: Storage,
    port: Option<u16>,
) -> Result<DetachedBroker> {
    if let Some(running) = find_detached(home).await? {
        return Ok(running);
    }
    let tansu = tansu_binary().await?;
    let port = match port {
        Some(p) => p,
        None => free_port()?,
    };
    let log = home.join("broker").join("tansu.log");
    let storage = match storage {
        Storage::Sqlite(p) => Storage::Sqlite(std::path::absolute(&p).unwrap_or(p)),
        s => s,
    };
    let child = spawn_tansu(
        &tansu,
        port,
        &format!("127.0.0.1:{port}"),
        &storage,
        &log,
        true,
    )?;
    let state = DetachedBroker {
        pid: child.id(),
        addr: format!("127.0.0.1:{port}"),
        storage,
        log: std::path::absolute(&log).unwrap_or(log),
    };
    // Until it is ready the broker is ours to clean up, like an owned one.
    let mut owned = LocalBroker {
        child: Some(child),
        addr: state.addr.clone(),
        log_path: state.log.clone(),
        storage: state.storage.clone(),
    };
    wait_ready(&state.addr, Some(&mut owned), Duration::from_secs(30)).await?;
    // Ready: let it go. Dropping a `Child` neither kills nor waits; `stop_detached`
    // signals it by pid later.
    drop(owned.child.take());
    let path = state_path(home);
    let json = serde_json::to_string_pretty(&state).map_err(|e| Error::StateFile {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    fs::write(&path, json).map_err(|source| Error::Io {
        what: "write broker state",
        path,
        source,
    })?;
    Ok(state)
}

/// Stops the detached broker recorded under `home`. Returns it if one ran.
pub fn stop_detached(home: &Path) -> Result<Option<DetachedBroker>> {
    let path = state_path(home);
    let Ok(text) = fs::read_to_string(&path) else {
        return Ok(None);
    };
    let state: DetachedBroker = serde_json::from_str(&text).map_err(|e| Error::StateFile {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    let _ = fs::remove_file(&path);
    if !is_our_tansu(state.pid) {
        return Ok(None);
    }
    if let Some(pid) = i32::try_from(state.pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && is_our_tansu(state.pid) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if is_our_tansu(state.pid) {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
    }
    Ok(Some(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_parses_both_forms_and_rejects_others() {
        assert_eq!("memory".parse::<Storage>(), Ok(Storage::Memory));
        assert_eq!(
            "sqlite:data/b.db".parse::<Storage>(),
            Ok(Storage::Sqlite(PathBuf::from("data/b.db")))
        );
        assert!("sqlite:".parse::<Storage>().is_err());
        assert!("postgres://x".parse::<Storage>().is_err());
        assert_eq!(Storage::Sqlite("a.db".into()).to_string(), "sqlite:a.db");
    }

    #[test]
    fn sqlite_location_splits_dir_and_plain_file_name() {
        let (dir, file) = sqlite_location(Path::new("/tmp/x/tansu.db")).unwrap();
        assert_eq!((dir, file.as_str()), (PathBuf::from("/tmp/x"), "tansu.db"));
        assert!(sqlite_location(Path::new("/tmp/has space.db")).is_err());
    }
}
