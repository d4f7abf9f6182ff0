//! Crash sites of the commit protocol, for the crash tests.
//!
//! `IOTFLOW_FAILPOINT=<site>@<n>` makes the n-th pass through `<site>` in
//! this process SIGKILL itself on the spot: `kill -9` exactly there. Debug
//! builds only; release binaries never read the variable.
//!
//! ```text
//!   Stage:   out file ─▶ parquet-temp ─▶ snapshot (mid-snapshot halfway) ─▶ after-stage
//!   Commit:  before-commit ─▶ append ─▶ after-commit ─▶ rename ─▶ before-dir-sync ─▶ fsync
//!            commit-ahead: an append while an earlier commit is still publishing
//!            collect: before each staged epoch garbage collection removes
//!   Publish: produce ─▶ publish-batch (after each batch, also in recovery)
//! ```

/// Where a crash can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// A worker wrote everything of an epoch, before telling the committer.
    AfterStage,
    /// Half of a snapshot's bytes are in its temporary file.
    MidSnapshot,
    /// A staged Parquet file is written and synced, before the rest of the epoch.
    ParquetTemp,
    /// Every worker staged, before the commit record is appended.
    BeforeCommit,
    /// The commit record is appended, before anything is published.
    AfterCommit,
    /// One produce request of a publisher returned, before the next one.
    PublishBatch,
    /// A Parquet file was renamed into the dataset, before its directory's fsync.
    BeforeDirSync,
    /// A commit record is appended while an earlier epoch is still being
    /// published (pipelining), before the append.
    CommitAhead,
    /// Garbage collection is about to remove a staged epoch.
    Collect,
}

impl Site {
    pub const ALL: [Site; 9] = [
        Site::AfterStage,
        Site::MidSnapshot,
        Site::ParquetTemp,
        Site::BeforeCommit,
        Site::AfterCommit,
        Site::PublishBatch,
        Site::BeforeDirSync,
        Site::CommitAhead,
        Site::Collect,
    ];

    /// The name `IOTFLOW_FAILPOINT` uses.
    pub fn name(self) -> &'static str {
        match self {
            Site::AfterStage => "after-stage",
            Site::MidSnapshot => "mid-snapshot",
            Site::ParquetTemp => "parquet-temp",
            Site::BeforeCommit => "before-commit",
            Site::AfterCommit => "after-commit",
            Site::PublishBatch => "publish-batch",
            Site::BeforeDirSync => "before-dir-sync",
            Site::CommitAhead => "commit-ahead",
            Site::Collect => "collect",
        }
    }
}

/// The environment variable that arms a failpoint.
pub const ENV: &str = "IOTFLOW_FAILPOINT";

/// `"<site>@<n>"` as (site name, n ≥ 1).
pub fn parse(spec: &str) -> Option<(&str, u64)> {
    let (site, n) = spec.split_once('@')?;
    let n: u64 = n.parse().ok()?;
    (n >= 1 && Site::ALL.iter().any(|s| s.name() == site)).then_some((site, n))
}

/// Passes through `site`: kills the process if this is the armed pass.
#[cfg(debug_assertions)]
pub fn hit(site: Site) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static PASSES: AtomicU64 = AtomicU64::new(0);
    let armed = ARMED.get_or_init(|| {
        let spec = std::env::var(ENV).ok()?;
        match parse(&spec) {
            Some((name, n)) => Some((name.to_owned(), n)),
            None => {
                eprintln!("{ENV}={spec} is not <site>@<n> with a known site; ignored");
                None
            }
        }
    });
    if let Some((name, n)) = armed
        && name == site.name()
        && PASSES.fetch_add(1, Ordering::SeqCst) + 1 == *n
    {
        eprintln!("failpoint {name}@{n}: SIGKILL");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort(); // not reached
    }
}

/// Release builds have no failpoints.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_site: Site) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_a_known_site_and_a_positive_pass() {
        assert_eq!(parse("after-commit@3"), Some(("after-commit", 3)));
        assert_eq!(parse("publish-batch@1"), Some(("publish-batch", 1)));
        assert_eq!(parse("after-commit@0"), None);
        assert_eq!(parse("after-commit"), None);
        assert_eq!(parse("nowhere@2"), None);
        let names: std::collections::BTreeSet<_> = Site::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names.len(), Site::ALL.len(), "names are unique");
    }
}
