//! Helpers for tests that run a real local broker.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use iotflow_redpanda::{LocalBroker, Storage};

/// Starts a private broker for one test (memory storage unless told otherwise).
/// The tansu binary comes from the cache that `make test` fills.
pub async fn broker(storage: Storage) -> LocalBroker {
    let log = std::env::temp_dir().join(format!("iotflow-test-{}.log", unique("broker")));
    LocalBroker::builder()
        .storage(storage)
        .log_path(log)
        .start()
        .await
        .expect("local broker starts (run `make tansu` if it is not installed)")
}

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs the iotflow binary with `args`; panics with its output if it fails.
pub fn iotflow(args: &[&str]) -> Output {
    let out = iotflow_unchecked(args);
    assert!(
        out.status.success(),
        "iotflow {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn iotflow_unchecked(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_iotflow"))
        .args(args)
        .env_remove("IOTFLOW_BROKERS")
        .output()
        .expect("run iotflow")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
