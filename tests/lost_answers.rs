//! Faults between the job and the broker, through a fault-injecting proxy
//! the broker advertises (`common::fault_proxy`): an answer lost after the
//! broker acted on the request — to a Produce of output records, to the
//! commit record's append, to a Fetch — and a delayed answer. The criterion
//! is the crash tests': the outputs (Kafka records and Parquet bytes) are
//! those of a run never faulted. `tail` through lost fetch answers shows the
//! same epochs as without them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::fault_proxy::{Fault, FaultProxy, Kind};
use iotflow_redpanda::LocalBroker;

struct Fixture {
    _broker: LocalBroker,
    proxy: FaultProxy,
    input: String,
    dir: tempfile::TempDir,
}

/// A fault for the n-th request of a kind.
type Injected = (Kind, usize, Fault);

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (broker, proxy) = common::broker_behind_proxy(dir.path()).await;
        let input = common::seeded_input(
            std::slice::from_ref(&proxy.addr),
            "lost",
            common::troubled_sim(5, 30_000),
            8_000,
        )
        .await;
        Self {
            _broker: broker,
            proxy,
            input,
            dir,
        }
    }

    fn parquet_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name).join("parquet")
    }

    /// Job `name`, bounded, deterministic epochs, its own progress topic
    /// (so a rule counts its commit appends only), through the proxy.
    fn run(&self, name: &str) {
        let mut c = Command::new(env!("CARGO_BIN_EXE_iotflow"));
        c.args(["run", "--brokers", &self.proxy.addr, "--input", &self.input])
            .args(["--output-topic", &format!("{name}.aggregates")])
            .args(["--dlq", &format!("{name}.dlq")])
            .args(["--progress-topic", &format!("{name}.progress")])
            .args(["--epoch-records", "100", "-w", "2", "--until-end"])
            .args(["--parquet-roll-rows", "300"])
            .arg("--state-dir")
            .arg(self.dir.path().join(name).join("state"))
            .arg("--parquet-dir")
            .arg(self.parquet_dir(name))
            .env_remove(iotflow_sink::failpoint::ENV)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        common::finish(c.spawn().unwrap(), name);
    }

    async fn assert_matches(&self, name: &str, reference: &str) {
        common::assert_runs_match(
            std::slice::from_ref(&self.proxy.addr),
            (reference, &self.parquet_dir(reference)),
            (name, &self.parquet_dir(name)),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_and_late_answers_leave_the_output_of_a_run_never_faulted() {
    let fx = Fixture::new().await;
    fx.run("reference");
    let cases: [(&str, Vec<Injected>); 4] = [
        (
            "publish",
            vec![
                (
                    Kind::ProduceTo("publish.aggregates".into()),
                    2,
                    Fault::DropAnswer,
                ),
                (
                    Kind::ProduceTo("publish.aggregates".into()),
                    7,
                    Fault::DropAnswer,
                ),
                (Kind::ProduceTo("publish.dlq".into()), 1, Fault::DropAnswer),
            ],
        ),
        (
            "commit",
            vec![
                (
                    Kind::ProduceTo("commit.progress".into()),
                    2,
                    Fault::DropAnswer,
                ),
                (
                    Kind::ProduceTo("commit.progress".into()),
                    5,
                    Fault::DropAnswer,
                ),
            ],
        ),
        (
            "fetch",
            vec![
                (Kind::Fetch, 2, Fault::DropAnswer),
                (Kind::Fetch, 3, Fault::Reset),
            ],
        ),
        (
            "slow",
            vec![
                (
                    Kind::ProduceTo("slow.progress".into()),
                    3,
                    Fault::Delay(Duration::from_secs(2)),
                ),
                (
                    Kind::ProduceTo("slow.aggregates".into()),
                    4,
                    Fault::Delay(Duration::from_secs(2)),
                ),
            ],
        ),
    ];
    for (name, faults) in cases {
        let before = fx.proxy.fired().len();
        for (kind, nth, fault) in faults.clone() {
            fx.proxy.inject(kind, nth, fault);
        }
        fx.run(name);
        let fired = fx.proxy.fired().len() - before;
        assert_eq!(
            fired,
            faults.len(),
            "{name}: not every fault met its request"
        );
        fx.assert_matches(name, "reference").await;
    }
    // `tail` (read-committed) through lost fetch answers shows what it shows without them.
    let tail = || {
        let out = Command::new(env!("CARGO_BIN_EXE_iotflow"))
            .args([
                "tail",
                "--brokers",
                &fx.proxy.addr,
                "--topic",
                "reference.aggregates",
            ])
            .args([
                "--progress-topic",
                "reference.progress",
                "--from-beginning",
                "--json",
            ])
            .args(["--exit-when-idle", "3s"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let clean = tail();
    assert!(!clean.is_empty());
    let before = fx.proxy.fired().len();
    fx.proxy.inject(Kind::Fetch, 2, Fault::DropAnswer);
    fx.proxy.inject(Kind::Fetch, 4, Fault::Reset);
    assert!(
        tail() == clean,
        "tail through lost answers showed something else"
    );
    assert_eq!(
        fx.proxy.fired().len() - before,
        2,
        "tail: not every fault met its request"
    );
}
