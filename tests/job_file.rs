//! Jobs stated in a job file, end to end against a real broker: four
//! aggregations over one source (per device, per site and metric with a
//! filter and percentiles on hopping windows, fleet-wide with updates and
//! approximate percentiles (digests as state), and
//! sessions of each device's warm spells), each into its own topic (three
//! into Parquet datasets), exactly once through SIGKILLs and a 1 → 2 worker
//! rescale with open sessions: byte-identical to a run never killed. Four
//! alert rules ride along (threshold, rate of change, anomaly, absence):
//! their topic and dataset are held to the same bar, and two of them are
//! recomputed from the job's own windows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iotflow_ingest::simulator::SimConfig;
use iotflow_redpanda::{LocalBroker, Storage};

/// Each run's outputs: (suffix of its topic, dataset if any).
const OUTPUTS: [(&str, Option<&str>); 6] = [
    ("aggregates", Some("aggregates")),
    ("site_1m", Some("site_1m")),
    ("fleet", None),
    ("warm", Some("warm")),
    ("alerts", Some("alerts")),
    ("dlq", None),
];

struct Fixture {
    _broker: LocalBroker,
    addr: String,
    input: String,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let broker = common::broker(Storage::Memory).await;
        let sim = SimConfig {
            sites: 3,
            ..common::troubled_sim(17, 90_000)
        };
        let input = common::seeded_input(&broker.bootstrap(), "jobin", sim, 12_000).await;
        Self {
            addr: broker.addr().to_owned(),
            _broker: broker,
            input,
            dir,
        }
    }

    /// Job `name`'s file: its outputs are named after it.
    fn job_file(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.toml"));
        let input = &self.input;
        std::fs::write(
            &path,
            format!(
                r#"name = "{name}"
[input]
topic = "{input}"
dimensions = ["site"]
[watermark]
max_out_of_order = "2s"
lateness = "1s"
[output]
dead_letter_topic = "{name}.dlq"
alerts_topic = "{name}.alerts"

[[aggregation]]
name = "aggregates"
window = "tumbling 10s"
topic = "{name}.aggregates"
parquet = "aggregates"

[[aggregation]]
name = "site_1m"
group_by = ["site", "metric"]
window = "hopping 1m every 20s"
measures = ["count", "mean", "p50", "p95", "first_value", "last_value"]
where = "metric != 'pressure' and value > -1000"
topic = "{name}.site_1m"
parquet = "site_1m"

[[aggregation]]
name = "fleet"
group_by = []
window = "tumbling 30s"
measures = ["count", "min", "max", "mean", "p99"]
percentiles = "approx"
emit = "updates"
topic = "{name}.fleet"

[[aggregation]]
name = "warm"
group_by = ["device"]
window = "session 3s"
where = "metric == 'temperature' and value > 21.5"
measures = ["count", "first_ts", "last_ts", "max"]
topic = "{name}.warm"
parquet = "warm"

[[alert]]
name = "overheat"
on = "aggregates"
when = "mean > 21.5 and metric == 'temperature'"
for = 2
clear = "mean < 21.3"
severity = "critical"

[[alert]]
name = "jump"
on = "aggregates"
change_of = "mean"
when = "rate > 0.02 and metric == 'humidity'"

[[alert]]
name = "odd"
on = "site_1m"
anomaly_of = "p95"
warmup = 2
deviations = 1.5

[[alert]]
name = "silent"
on = "aggregates"
absent_for = "30s"

[[alert]]
name = "garbage"
on = "aggregates"
bad_share = 0.015
"#
            ),
        )
        .unwrap();
        path
    }

    fn parquet_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name).join("parquet")
    }

    fn command(&self, name: &str, workers: u32) -> Command {
        self.command_of(name, &self.job_file(name), workers)
    }

    /// Job `name` of the job file at `file`.
    fn command_of(&self, name: &str, file: &Path, workers: u32) -> Command {
        let mut c = self.command_rolling(name, file, workers, ("100", "25"));
        c.arg("--until-end");
        c
    }

    /// Job `name` of the job file at `file`, unbounded, rolling Parquet files
    /// at `rolls` (rows, epochs).
    fn command_rolling(
        &self,
        name: &str,
        file: &Path,
        workers: u32,
        (rows, epochs): (&str, &str),
    ) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_iotflow"));
        let state = self.dir.path().join(name).join("state");
        c.args(["run", "--brokers", &self.addr, "--job-file"])
            .arg(file)
            .args(["--epoch-records", "100", "-w", &workers.to_string()])
            .arg("--state-dir")
            .arg(&state)
            .arg("--parquet-dir")
            .arg(self.parquet_dir(name))
            .args(["--parquet-roll-rows", rows, "--parquet-roll-epochs", epochs])
            .args(["--snapshot-fold-bytes", "20000"])
            .env_remove(iotflow_sink::failpoint::ENV)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Each output topic's records per partition as (key, value, epoch header), and
    /// every dataset file's bytes.
    async fn outputs(
        &self,
        name: &str,
    ) -> (
        BTreeMap<String, Vec<Vec<(Vec<u8>, Vec<u8>)>>>,
        BTreeMap<PathBuf, Vec<u8>>,
    ) {
        let mut topics = BTreeMap::new();
        for (suffix, _) in OUTPUTS {
            let parts = common::read_topic(
                std::slice::from_ref(&self.addr),
                &format!("{name}.{suffix}"),
            )
            .await;
            let records = parts
                .into_values()
                .map(|records| {
                    records
                        .into_iter()
                        .map(|r| {
                            (
                                r.record.key.unwrap_or_default(),
                                r.record.value.unwrap_or_default(),
                            )
                        })
                        .collect()
                })
                .collect();
            topics.insert(suffix.to_owned(), records);
        }
        (topics, common::files(&self.parquet_dir(name)))
    }
}

/// The commits of job `name` (on the default progress topic), in log order.
async fn commits(addr: &str, name: &str) -> Vec<iotflow_sink::protocol::CommitRecord> {
    let client = iotflow_redpanda::connect(&[addr.to_owned()], Duration::from_secs(30))
        .await
        .unwrap();
    let log = iotflow_sink::progress::ProgressLog::open(&client, "iot.progress")
        .await
        .unwrap();
    let (commits, _) = log.read_all().await.unwrap();
    commits.into_iter().filter(|c| c.job == name).collect()
}

/// A damaged pending segment (a flipped byte) of a dataset whose rows are
/// also on a topic (`site_1m`: dimensions, percentiles, hopping windows) is
/// rebuilt from that topic, and the job ends as if nothing was damaged; one
/// of a dataset that is not read back (the alert events') makes the resumed
/// job fall back to a commit the damage does not touch (and end the same),
/// or, when every kept commit shares it, stop with an error naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_pending_segment_is_rebuilt_from_its_topic_or_named() {
    let fx = Fixture::new().await;
    // Unbounded: the end of the input would roll the pending rows away.
    let live = |name: &str| fx.command_rolling(name, &fx.job_file(name), 2, ("1000000", "1000000"));
    let pending = |name: &str| {
        let mut c = live(name);
        c.arg("--until-end");
        c
    };
    common::finish(pending("reference").spawn().unwrap(), "the reference run");
    for (dataset, name) in [("site_1m", "rebuilt"), ("alerts", "named")] {
        // Killed once its latest commit keeps rows of `dataset` pending.
        let mut child = live(name).spawn().unwrap();
        let started = Instant::now();
        loop {
            let commits = commits(&fx.addr, name).await;
            let latest = commits.iter().max_by_key(|c| c.epoch);
            if latest.is_some_and(|c| c.pending.iter().any(|p| p.dataset == dataset && p.rows > 0))
            {
                break;
            }
            assert!(child.try_wait().unwrap().is_none(), "{name} ended first");
            assert!(started.elapsed() < common::RUN_BOUND, "{name}: no commit");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let commits = commits(&fx.addr, name).await;
        let latest = commits.iter().max_by_key(|c| c.epoch).unwrap();
        let entry = latest
            .pending
            .iter()
            .find(|p| p.dataset == dataset && p.rows > 0)
            .unwrap();
        let file = fx.dir.path().join(name).join("state").join(&entry.path);
        let mut bytes = std::fs::read(&file).unwrap();
        // In the first frame: every commit that names this segment shares it.
        let at = 8.min(entry.bytes as usize - 1);
        bytes[at] ^= 0x04;
        std::fs::write(&file, bytes).unwrap();
        let out = common::wait_bounded(pending(name).spawn().unwrap(), name);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let fell_back = (0..latest.epoch)
            .any(|e| stderr.contains(&format!("resuming after committed epoch {e} ")));
        if dataset == "alerts" && !out.status.success() {
            // No kept commit is intact: the error names the file.
            let named = file.file_name().unwrap().to_str().unwrap();
            let error = stderr.lines().rev().find(|l| l.contains("error")).unwrap();
            assert!(error.contains(named), "{named} not named: {stderr}");
            eprintln!("alerts segment damaged: stopped, naming it");
            continue;
        }
        assert!(out.status.success(), "{stderr}");
        match dataset {
            // Not read back from a topic: only an earlier commit can do.
            "alerts" => assert!(fell_back, "{stderr}"),
            _ => assert!(
                stderr.contains("damaged pending segment rebuilt from the output topic"),
                "{stderr}"
            ),
        }
        let (want, got) = (fx.outputs("reference").await, fx.outputs(name).await);
        for (topic, parts) in &want.0 {
            assert!(got.0[topic] == *parts, "{topic} differs from the reference");
        }
        assert!(!want.1.is_empty());
        assert_eq!(
            got.1.keys().collect::<Vec<_>>(),
            want.1.keys().collect::<Vec<_>>()
        );
        assert!(got.1 == want.1, "Parquet bytes differ");
    }
}

fn json(value: &[u8]) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_slice(value).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_aggregation_writes_its_own_shape_and_the_default_one_today_s() {
    let fx = Fixture::new().await;
    let out = common::finish(
        fx.command("shapes", 2).arg("--json").spawn().unwrap(),
        "the run",
    );
    let summary: iotflow_runtime::RunSummary = serde_json::from_slice(&out.stdout).unwrap();
    let (topics, parquet) = fx.outputs("shapes").await;
    // Each aggregation's own counts: its final windows are its topic's final records.
    for (name, counts) in &summary.aggregations {
        let finals = topics[name.as_str()]
            .iter()
            .flatten()
            .filter(|(_, v)| json(v)["final"] == true)
            .count() as u64;
        assert_eq!(counts.windows, finals, "{name}: {counts:?}");
    }
    assert!(
        summary.aggregations["site_1m"].filtered > 0,
        "pressure is filtered out"
    );
    assert_eq!(summary.aggregations["aggregates"].filtered, 0);
    assert!(summary.aggregations["warm"].filtered > summary.aggregations["site_1m"].filtered);
    let first = |t: &str| -> (Vec<u8>, Vec<u8>) {
        topics[t]
            .iter()
            .flatten()
            .next()
            .unwrap_or_else(|| panic!("{t} is empty"))
            .clone()
    };
    // The default shape: today's record (its reader refuses unknown fields) plus the name.
    let (key, value) = first("aggregates");
    let agg: iotflow_sink::AggregateRecord = serde_json::from_slice(&value).unwrap();
    assert_eq!(agg.aggregation, "aggregates");
    assert_eq!(String::from_utf8(key).unwrap(), agg.key());
    let (key, value) = first("site_1m");
    let site = json(&value);
    let fields: Vec<&str> = site.keys().map(String::as_str).collect();
    let mut want = vec![
        "site",
        "metric",
        "window_start",
        "window_end",
        "count",
        "mean",
        "p50",
        "p95",
    ];
    want.extend(["first_value", "last_value", "final", "epoch", "aggregation"]);
    want.sort_unstable();
    assert_eq!(fields, want, "serde_json's map is sorted");
    assert_eq!(site["aggregation"], "site_1m");
    assert_ne!(site["metric"], "pressure", "filtered out");
    let key = String::from_utf8(key).unwrap();
    assert_eq!(
        key,
        format!(
            "{}|{}|{}",
            site["site"].as_str().unwrap(),
            site["metric"].as_str().unwrap(),
            site["window_start"]
        )
    );
    assert_eq!(
        site["window_end"].as_i64().unwrap() - site["window_start"].as_i64().unwrap(),
        60_000
    );
    // Fleet-wide: the key is the window start; updates before the final record.
    let fleet: Vec<_> = topics["fleet"]
        .iter()
        .flatten()
        .map(|(k, v)| (String::from_utf8(k.clone()).unwrap(), json(v)))
        .collect();
    assert!(fleet.iter().all(|(k, v)| {
        v["window_start"]
            .as_i64()
            .is_some_and(|s| *k == s.to_string())
            && !v.contains_key("metric")
    }));
    assert!(
        fleet.iter().any(|(_, v)| v["final"] == false)
            && fleet.iter().any(|(_, v)| v["final"] == true)
    );
    // Every reading but the filtered metric's ends up in some site window: the
    // final counts per (site, metric) add up the same in every window position.
    // Sessions: [first, last + gap), closed by 3 s without a warm reading.
    let warm: Vec<_> = topics["warm"]
        .iter()
        .flatten()
        .map(|(_, v)| json(v))
        .collect();
    assert!(warm.len() > 40, "{} sessions", warm.len());
    for s in &warm {
        let (start, end) = (
            s["window_start"].as_i64().unwrap(),
            s["window_end"].as_i64().unwrap(),
        );
        assert_eq!(
            (
                s["first_ts"].as_i64().unwrap(),
                s["last_ts"].as_i64().unwrap() + 3_000
            ),
            (start, end)
        );
        assert!(s["max"].as_f64().unwrap() > 21.5 && s["final"] == true);
    }
    let datasets: Vec<String> = parquet
        .keys()
        .map(|p| p.iter().next().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        datasets.contains(&"aggregates".to_owned()) && datasets.contains(&"site_1m".to_owned())
    );
    assert!(
        !datasets.iter().any(|d| d == "fleet"),
        "fleet has no dataset"
    );
}

#[test]
fn flags_of_the_default_job_are_refused_with_a_job_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.toml");
    std::fs::write(
        &path,
        "name = \"x\"\n[[aggregation]]\nname = \"a\"\nwindow = \"tumbling 1m\"\ntopic = \"t\"\n",
    )
    .unwrap();
    let out = common::iotflow_unchecked(&[
        "run",
        "--job-file",
        path.to_str().unwrap(),
        "--window",
        "5s",
        "--brokers",
        "127.0.0.1:1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--window describes the default job"), "{err}");
    std::fs::write(
        &path,
        "name = \"x\"\n[[aggregation]]\nname = \"a\"\nwindow = \"tumbling 1x\"\ntopic = \"t\"\n",
    )
    .unwrap();
    let out = common::iotflow_unchecked(&[
        "run",
        "--job-file",
        path.to_str().unwrap(),
        "--brokers",
        "127.0.0.1:1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("job.toml:4:10: `1x`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_file_job_under_sigkills_equals_a_run_never_killed() {
    let fx = Fixture::new().await;
    common::finish(
        fx.command("reference", 2).spawn().unwrap(),
        "the reference run",
    );
    let wanted: u32 = std::env::var("IOTFLOW_CHAOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let (mut kills, mut runs, mut x) = (
        0u32,
        0u32,
        0x9E37_79B9_7F4A_7C15u64 ^ u64::from(std::process::id()),
    );
    loop {
        runs += 1;
        assert!(runs <= wanted + 50, "the job never finished");
        let mut child = fx.command("chaos", 2).spawn().unwrap();
        if kills < wanted {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = Duration::from_millis(20 + x % 1_200);
            let started = Instant::now();
            while started.elapsed() < at && child.try_wait().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(5));
            }
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
                continue;
            }
        }
        common::finish(child, &format!("run {runs} after {kills} kills"));
        break;
    }
    eprintln!("{kills} kills, {runs} runs");
    assert!(kills >= wanted.min(5), "only {kills} kills landed");
    let (want, got) = (fx.outputs("reference").await, fx.outputs("chaos").await);
    for (topic, parts) in &want.0 {
        assert!(parts.iter().any(|p| !p.is_empty()), "{topic} is empty");
        assert!(got.0[topic] == *parts, "{topic} differs from the reference");
    }
    assert_eq!(
        got.1.keys().collect::<Vec<_>>(),
        want.1.keys().collect::<Vec<_>>()
    );
    assert!(got.1 == want.1, "Parquet bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_file_job_killed_with_one_worker_resumes_with_two() {
    let fx = Fixture::new().await;
    common::finish(
        fx.command("reference", 2).spawn().unwrap(),
        "the reference run",
    );
    // One worker, killed mid-run with windows of every aggregation open.
    let mut child = fx.command("rescale", 1).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the one-worker run ended too soon to be killed"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let out = common::finish(fx.command("rescale", 2).spawn().unwrap(), "the resumed run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("resuming"), "{stderr}");
    let (want, got) = (fx.outputs("reference").await, fx.outputs("rescale").await);
    for (topic, parts) in &want.0 {
        assert!(got.0[topic] == *parts, "{topic} differs from the reference");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_job_is_refused_on_the_state_of_the_old_one() {
    let fx = Fixture::new().await;
    common::finish(fx.command("shape", 1).spawn().unwrap(), "the first run");
    let file = fx.job_file("shape");
    let text = std::fs::read_to_string(&file).unwrap();
    let changed = fx.dir.path().join("changed.toml");
    std::fs::write(&changed, text.replace("tumbling 10s", "tumbling 20s")).unwrap();
    let out = fx.command_of("shape", &changed, 1).output().unwrap();
    assert!(!out.status.success(), "a changed job ran on the old state");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("written by a job with other aggregations"),
        "{err}"
    );
    // The same job again is welcome: nothing left to do.
    common::finish(
        fx.command_of("shape", &file, 1).spawn().unwrap(),
        "the same job again",
    );
}

/// A threshold with hysteresis over one series' windows, computed naively
/// from the aggregates the job itself wrote: (state, window_start, since).
fn naive_hysteresis(
    windows: &[(i64, f64)],
    step: i64,
    fires: impl Fn(f64, Option<f64>) -> Option<bool>,
    clears: impl Fn(f64, Option<f64>) -> bool,
    streak: usize,
) -> Vec<(String, i64, i64)> {
    let mut out = Vec::new();
    let mut firing: Option<i64> = None;
    let mut run: Vec<i64> = Vec::new();
    for (i, &(start, x)) in windows.iter().enumerate() {
        let previous = i
            .checked_sub(1)
            .map(|j| windows[j])
            .filter(|(s, _)| s + step == start)
            .map(|(_, v)| v);
        if let Some(since) = firing {
            if clears(x, previous) {
                out.push(("resolved".to_owned(), start, since));
                firing = None;
            }
            continue;
        }
        match fires(x, previous) {
            Some(true) => {
                if run.last().is_some_and(|s| s + step != start) {
                    run.clear();
                }
                run.push(start);
                if run.len() >= streak {
                    out.push(("firing".to_owned(), start, run[0]));
                    firing = Some(run[0]);
                    run.clear();
                }
            }
            _ => run.clear(),
        }
    }
    out
}

/// The bad-data rule recomputed: per device and 10 s window, its records
/// (the temperature readings the job counted: every valid record has one)
/// and its dead letters of a reason that keeps the device and time, read
/// back from the dead-letter topic.
async fn bad_data_oracle(
    fx: &Fixture,
    name: &str,
    aggregates: &[Vec<(Vec<u8>, Vec<u8>)>],
    share: f64,
) -> BTreeMap<&'static str, Vec<(String, String, i64, i64)>> {
    let mut windows: BTreeMap<String, BTreeMap<i64, (u64, u64)>> = BTreeMap::new();
    for (_, v) in aggregates.iter().flatten() {
        let r = json(v);
        if r["metric"] == "temperature" {
            let w = windows
                .entry(r["device_id"].as_str().unwrap().to_owned())
                .or_default();
            w.entry(r["window_start"].as_i64().unwrap()).or_default().0 +=
                r["count"].as_u64().unwrap();
        }
    }
    let dlq = common::read_topic(std::slice::from_ref(&fx.addr), &format!("{name}.dlq")).await;
    let mut counted = 0;
    for r in dlq.into_values().flatten() {
        let reason =
            String::from_utf8(r.record.headers[iotflow_sink::records::REASON_HEADER].clone())
                .unwrap();
        if !iotflow_jobfile::alert::BAD_DATA_REASONS.contains(&reason.as_str()) {
            continue;
        }
        let text = String::from_utf8(r.record.value.unwrap())
            .unwrap()
            .replace("NaN", "null");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let ts = v["ts_ms"].as_i64().unwrap();
        let w = windows
            .entry(v["device_id"].as_str().unwrap().to_owned())
            .or_default();
        let e = w.entry(ts - ts.rem_euclid(10_000)).or_default();
        (e.0, e.1) = (e.0 + 1, e.1 + 1);
        counted += 1;
    }
    assert!(
        counted > 5,
        "{counted} countable dead letters: the rule proves little"
    );
    let mut out: Vec<(String, String, i64, i64)> = Vec::new();
    for (device, w) in windows {
        let shares: Vec<(i64, f64)> = w
            .into_iter()
            .map(|(s, (n, bad))| (s, bad as f64 / n as f64))
            .collect();
        let events = naive_hysteresis(
            &shares,
            10_000,
            |x, _| Some(x > share),
            |x, _| x <= share,
            1,
        );
        out.extend(
            events
                .into_iter()
                .map(|(st, w, since)| (st, device.clone(), w, since)),
        );
    }
    BTreeMap::from([("garbage", out)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_events_follow_the_rules_over_the_job_s_own_windows() {
    let fx = Fixture::new().await;
    common::finish(fx.command("alerting", 2).spawn().unwrap(), "the run");
    let (topics, parquet) = fx.outputs("alerting").await;
    // Each series' final windows, by (device, metric), as the job wrote them.
    let mut series: BTreeMap<(String, String), Vec<(i64, f64)>> = BTreeMap::new();
    for (_, v) in topics["aggregates"].iter().flatten() {
        let r = json(v);
        let key = (
            r["device_id"].as_str().unwrap().to_owned(),
            r["metric"].as_str().unwrap().to_owned(),
        );
        series.entry(key).or_default().push((
            r["window_start"].as_i64().unwrap(),
            r["mean"].as_f64().unwrap(),
        ));
    }
    let mut want: BTreeMap<&str, Vec<(String, String, i64, i64)>> = BTreeMap::new();
    for ((device, metric), windows) in &mut series {
        windows.sort_by_key(|w| w.0);
        let tag = |events: Vec<(String, i64, i64)>| {
            events
                .into_iter()
                .map(|(s, w, since)| (s, device.clone(), w, since))
                .collect::<Vec<_>>()
        };
        if metric == "temperature" {
            let events =
                naive_hysteresis(windows, 10_000, |x, _| Some(x > 21.5), |x, _| x < 21.3, 2);
            want.entry("overheat").or_default().extend(tag(events));
        }
        if metric == "humidity" {
            let rate = |x: f64, p: Option<f64>| p.map(|p| (x - p) / 10.0 > 0.02);
            let events =
                naive_hysteresis(windows, 10_000, rate, |x, p| rate(x, p) == Some(false), 1);
            want.entry("jump").or_default().extend(tag(events));
        }
    }
    let mut got: BTreeMap<String, Vec<(String, String, i64, i64)>> = BTreeMap::new();
    for (k, v) in topics["alerts"].iter().flatten() {
        let e = json(v);
        for field in [
            "alert",
            "state",
            "severity",
            "window_start",
            "window_end",
            "value",
            "threshold",
            "since",
            "epoch",
        ] {
            assert!(e.contains_key(field), "{field} missing from {e:?}");
        }
        let (rule, state) = (e["alert"].as_str().unwrap(), e["state"].as_str().unwrap());
        let since = e["since"].as_i64().unwrap();
        if rule == "garbage" {
            let device = e["device_id"].as_str().unwrap();
            assert_eq!(
                String::from_utf8_lossy(k),
                format!("{rule}|{device}|{since}")
            );
            assert!(!e.contains_key("metric"), "{e:?}");
            got.entry(rule.to_owned()).or_default().push((
                state.to_owned(),
                device.to_owned(),
                e["window_start"].as_i64().unwrap(),
                since,
            ));
        } else if rule != "odd" {
            let device = e["device_id"].as_str().unwrap();
            let metric = e["metric"].as_str().unwrap();
            assert_eq!(
                String::from_utf8_lossy(k),
                format!("{rule}|{device}|{metric}|{since}")
            );
            got.entry(rule.to_owned()).or_default().push((
                state.to_owned(),
                device.to_owned(),
                e["window_start"].as_i64().unwrap(),
                since,
            ));
        }
        if rule == "overheat" && state == "firing" {
            assert_eq!(
                (e["severity"].as_str(), e["threshold"].as_f64()),
                (Some("critical"), Some(21.5))
            );
            assert!(e["value"].as_f64().unwrap() > 21.5, "{e:?}");
        }
    }
    want.extend(bad_data_oracle(&fx, "alerting", &topics["aggregates"], 0.015).await);
    for rule in ["overheat", "jump", "garbage"] {
        let (mut w, mut g) = (
            want.remove(rule).unwrap_or_default(),
            got.remove(rule).unwrap_or_default(),
        );
        w.sort();
        g.sort();
        assert!(
            !w.is_empty(),
            "{rule} never fires on this data: the test proves nothing"
        );
        assert_eq!(g, w, "{rule}");
    }
    // The dataset holds the same events.
    let mut rows = 0;
    for (path, bytes) in parquet.iter().filter(|(p, _)| p.starts_with("alerts")) {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes::Bytes::from(bytes.clone()),
        )
        .unwrap()
        .build()
        .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            assert_eq!(
                batch.schema(),
                iotflow_sink::alert_shape::AlertShape::schema(),
                "{path:?}"
            );
            rows += batch.num_rows();
        }
    }
    assert_eq!(rows, topics["alerts"].iter().flatten().count());
}

/// A live job's status page lists exactly the alerts whose latest committed
/// event is a firing, and its metrics count the committed events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_alerts_firing_as_committed() {
    let fx = Fixture::new().await;
    let name = "paged";
    let http = format!(
        "127.0.0.1:{}",
        iotflow_redpanda::local::free_port().unwrap()
    );
    let mut c = Command::new(env!("CARGO_BIN_EXE_iotflow"));
    c.args(["run", "--brokers", &fx.addr, "--job-file"])
        .arg(fx.job_file(name))
        .args(["-w", "2", "--epoch-interval", "100ms", "--http", &http])
        .arg("--state-dir")
        .arg(fx.dir.path().join(name).join("state"))
        .arg("--parquet-dir")
        .arg(fx.parquet_dir(name))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let job = c.spawn().unwrap();
    let get = |path: &str| {
        ureq::get(&format!("http://{http}{path}"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
    };
    let counted = |metrics: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("iotflow_alert_events_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    // Live: wait until what the page counted is what the topic holds, twice in a row.
    let started = Instant::now();
    let (mut topic, mut stable) = (Vec::new(), 0);
    while stable < 2 {
        assert!(
            started.elapsed() < common::RUN_BOUND,
            "the page never caught up"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(metrics) = get("/metrics") else {
            continue;
        };
        let now: Vec<_> = fx.outputs(name).await.0["alerts"]
            .iter()
            .flatten()
            .map(|(_, v)| json(v))
            .collect();
        stable =
            if counted(&metrics) == now.len() as u64 && now.len() == topic.len() && !now.is_empty()
            {
                stable + 1
            } else {
                0
            };
        topic = now;
    }
    let page = get("/").unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(job.id() as i32).unwrap(),
        rustix::process::Signal::USR1,
    )
    .unwrap();
    common::wait_bounded(job, "the drained job");
    // Latest event per (rule, group values): open when it is a firing.
    let mut latest: BTreeMap<(String, String), (i64, bool)> = BTreeMap::new();
    for e in &topic {
        let group: Vec<String> = e
            .iter()
            .filter(|(k, _)| ["device_id", "metric", "site"].contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
            .collect();
        let key = (e["alert"].as_str().unwrap().to_owned(), group.join(" "));
        let at = e["window_end"].as_i64().unwrap();
        let firing = e["state"] == "firing";
        let entry = latest.entry(key).or_insert((at, firing));
        if (at, !firing) >= (entry.0, !entry.1) {
            *entry = (at, firing);
        }
    }
    let open: BTreeSet<&(String, String)> =
        latest.iter().filter(|(_, v)| v.1).map(|(k, _)| k).collect();
    assert!(!open.is_empty(), "nothing firing: the test proves little");
    // The page's rows: (rule, group labels sorted), from its <td>s.
    let shown: BTreeSet<(String, String)> = page
        .split("<tr class=")
        .skip(1)
        .map(|row| {
            let cells: Vec<&str> = row
                .split("<td>")
                .skip(1)
                .map(|c| c.split("</td>").next().unwrap())
                .collect();
            let mut labels: Vec<&str> = cells[2].split(' ').collect();
            labels.sort_unstable();
            (cells[1].to_owned(), labels.join(" "))
        })
        .collect();
    assert_eq!(shown, open.into_iter().cloned().collect(), "{page}");
}
