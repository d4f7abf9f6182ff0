//! The crash tests' fixture: a broker with a seeded input topic, the jobs
//! that read it, and what they are checked against.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iotflow_redpanda::{LocalBroker, Storage};
use iotflow_sink::failpoint;
use iotflow_sink::progress::ProgressLog;
use iotflow_sink::protocol::CommitRecord;

use crate::common::{self, RUN_BOUND, outputs as partitions};

/// Kills in `make test`; `IOTFLOW_CHAOS_KILLS` raises it (`make chaos`).
pub fn kills_wanted() -> u32 {
    std::env::var("IOTFLOW_CHAOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
}

/// A broker with a seeded input topic, and the jobs that read it.
pub struct Fixture {
    pub broker: std::sync::Mutex<LocalBroker>,
    pub addr: String,
    pub storage: Storage,
    pub input: String,
    pub dir: tempfile::TempDir,
    /// `--parquet-roll-rows` of every run.
    pub roll_rows: u32,
    /// `--parquet-roll-epochs` of every run.
    pub roll_epochs: u32,
    /// `--checkpoint-every` of every run but the reference (0: a snapshot
    /// delta every epoch).
    pub checkpoint_every: u32,
}

impl Fixture {
    pub async fn new() -> Self {
        Self::on(Storage::Memory, tempfile::tempdir().unwrap()).await
    }

    /// A broker storing in SQLite under the fixture's directory: it can be restarted.
    pub async fn durable() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::on(Storage::Sqlite(dir.path().join("broker.db")), dir).await
    }

    pub async fn on(storage: Storage, dir: tempfile::TempDir) -> Self {
        let broker = LocalBroker::builder()
            .storage(storage.clone())
            .log_path(dir.path().join("broker.log"))
            .start()
            .await
            .expect("local broker starts (run `make tansu` if it is not installed)");
        let input = common::seeded_input(
            &broker.bootstrap(),
            "in",
            common::troubled_sim(11, 30_000),
            12_000,
        )
        .await;
        Self {
            addr: broker.addr().to_owned(),
            broker: std::sync::Mutex::new(broker),
            storage,
            input,
            dir,
            roll_rows: 100,
            roll_epochs: 25,
            checkpoint_every: 0,
        }
    }

    /// Runs that snapshot the whole state every `k` epochs and replay the
    /// epochs since on a restart.
    pub fn with_checkpoints(self, k: u32) -> Self {
        Self {
            checkpoint_every: k,
            ..self
        }
    }

    /// Runs that keep final windows pending (in segments) instead of rolling them.
    pub fn keeping_rows_pending(self) -> Self {
        Self {
            roll_rows: 1_000_000,
            roll_epochs: 1_000_000,
            ..self
        }
    }

    pub fn bootstrap(&self) -> Vec<String> {
        vec![self.addr.clone()]
    }

    /// SIGKILLs the broker, as a crash would.
    pub fn kill_broker(&self) {
        self.broker.lock().unwrap().kill();
    }

    /// Starts the broker again on its port and storage.
    pub async fn start_broker(&self) {
        let port: u16 = self.addr.rsplit(':').next().unwrap().parse().unwrap();
        let broker = LocalBroker::builder()
            .storage(self.storage.clone())
            .port(port)
            .log_path(self.dir.path().join("broker.log"))
            .start()
            .await
            .unwrap();
        *self.broker.lock().unwrap() = broker;
    }

    pub fn state_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name).join("state")
    }

    pub fn parquet_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name).join("parquet")
    }

    /// The bounded, deterministic job `name` (its own outputs and directories).
    pub fn command(&self, name: &str, workers: u32) -> Command {
        self.command_with(name, workers, 100)
    }

    /// [`Self::command`] with epochs of `epoch_records` records per partition.
    pub fn command_with(&self, name: &str, workers: u32, epoch_records: u32) -> Command {
        let mut c = self.command_epochs(name, workers, &self.input, epoch_records);
        c.arg("--until-end");
        c
    }

    /// Job `name` on `input`, deterministic epochs, unbounded.
    pub fn command_on(&self, name: &str, workers: u32, input: &str) -> Command {
        self.command_epochs(name, workers, input, 100)
    }

    pub fn command_epochs(
        &self,
        name: &str,
        workers: u32,
        input: &str,
        epoch_records: u32,
    ) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_iotflow"));
        c.args([
            "run",
            "--brokers",
            &self.addr,
            "--input",
            input,
            "--output-topic",
            &format!("{name}.aggregates"),
            "--dlq",
            &format!("{name}.dlq"),
            "--epoch-records",
            &epoch_records.to_string(),
            "-w",
            &workers.to_string(),
            "--state-dir",
            self.state_dir(name).to_str().unwrap(),
            "--parquet-dir",
            self.parquet_dir(name).to_str().unwrap(),
            // Several rolls per run, by rows and by age, so crashes meet them.
            "--parquet-roll-rows",
            &self.roll_rows.to_string(),
            "--parquet-roll-epochs",
            &self.roll_epochs.to_string(),
            // Snapshot deltas fold into whole ones every few epochs.
            "--snapshot-fold-bytes",
            "20000",
        ])
        .env_remove(failpoint::ENV)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        // The reference never checkpoints: the output must not depend on it.
        let k = if name == "reference" {
            0
        } else {
            self.checkpoint_every
        };
        c.args(["--checkpoint-every", &k.to_string()]);
        c
    }

    /// The crash-free run everything is compared with.
    pub fn reference(&self) {
        common::finish(
            self.command("reference", 2).spawn().unwrap(),
            "the reference run",
        );
    }

    /// `name`'s Kafka output is the reference's, record for record.
    pub async fn assert_kafka_matches(&self, name: &str) {
        self.assert_kafka_matches_run(name, "reference").await;
    }

    /// `name`'s Kafka output is run `reference`'s, record for record.
    pub async fn assert_kafka_matches_run(&self, name: &str, reference: &str) {
        let bootstrap = self.bootstrap();
        for kind in ["aggregates", "dlq"] {
            let (a, b) = (format!("{reference}.{kind}"), format!("{name}.{kind}"));
            let (want, got) = (
                partitions(&bootstrap, &a).await,
                partitions(&bootstrap, &b).await,
            );
            assert!(want.values().any(|p| !p.is_empty()), "{a} is empty");
            for (p, records) in &want {
                let other = got.get(p).map(Vec::as_slice).unwrap_or_default();
                assert_eq!(
                    other.len(),
                    records.len(),
                    "{b} partition {p}: {} records, the reference has {}",
                    other.len(),
                    records.len()
                );
                assert!(other == records.as_slice(), "{b} partition {p} differs");
            }
        }
    }

    /// `name`'s output is the reference's: Kafka records and Parquet bytes.
    pub async fn assert_matches(&self, name: &str) {
        self.assert_matches_run(name, "reference").await;
    }

    /// `name`'s output is run `reference`'s: Kafka records and Parquet bytes.
    pub async fn assert_matches_run(&self, name: &str, reference: &str) {
        self.assert_kafka_matches_run(name, reference).await;
        let (want, got) = (
            common::files(&self.parquet_dir(reference)),
            common::files(&self.parquet_dir(name)),
        );
        assert!(!want.is_empty());
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{name}: Parquet files"
        );
        assert!(got == want, "{name}: Parquet bytes differ");
    }

    /// The reference's aggregate values in read-committed order: by epoch,
    /// then partition, then offset (what `iotflow tail --json` prints).
    pub async fn reference_in_commit_order(&self) -> Vec<Vec<u8>> {
        let mut by_epoch: BTreeMap<(u64, i32), Vec<Vec<u8>>> = BTreeMap::new();
        for (p, records) in common::read_topic(&self.bootstrap(), "reference.aggregates").await {
            for r in records {
                let epoch: u64 = std::str::from_utf8(&r.record.headers["iotflow.epoch"])
                    .unwrap()
                    .parse()
                    .unwrap();
                by_epoch
                    .entry((epoch, p))
                    .or_default()
                    .push(r.record.value.unwrap());
            }
        }
        by_epoch.into_values().flatten().collect()
    }

    /// The commits of job `name` on the progress topic, in log order.
    pub async fn commits(&self, name: &str) -> Vec<CommitRecord> {
        let client = iotflow_redpanda::connect(&self.bootstrap(), Duration::from_secs(30))
            .await
            .unwrap();
        let log = ProgressLog::open(&client, "iot.progress").await.unwrap();
        let job = format!("{}-to-{name}.aggregates", self.input);
        let (commits, _) = log.read_all().await.unwrap();
        commits.into_iter().filter(|c| c.job == job).collect()
    }

    /// Starts job `name` and SIGKILLs it once it has committed `n` epochs.
    pub async fn kill_after_commits(&self, name: &str, workers: u32, n: usize) {
        self.kill_once(self.command(name, workers), name, |c| c.len() >= n)
            .await;
    }

    /// Starts `job` (job `name`) and SIGKILLs it once its commits satisfy `enough`.
    pub async fn kill_once(
        &self,
        mut job: Command,
        name: &str,
        enough: impl Fn(&[CommitRecord]) -> bool,
    ) {
        let mut child = job.spawn().unwrap();
        let started = Instant::now();
        while !enough(&self.commits(name).await) {
            assert!(
                child.try_wait().unwrap().is_none(),
                "{name} ended before its commits were as wanted"
            );
            assert!(started.elapsed() < RUN_BOUND, "{name} did not commit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// A small xorshift: the kill moments, reproducible from the printed seed.
pub struct Moments(pub u64);

impl Moments {
    pub fn next_ms(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}
